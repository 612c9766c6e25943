"""The verifier against kernels that try to pass without doing the task (evals/adversarial/).

Every ``evals/adversarial/<task>__<trick>.asp`` must be REJECTED for the bundled task
``evals/suite/<task>.py`` with exactly the reason code on its first line
(``# expect: <code> -- why``). Every kernel under ``controls/`` must VERIFY, so the tests
show the verifier rejects the tricks and not everything.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import asp_lang
from agentforge.solution import KernelSolution
from agentforge.capture import capture_at
from agentforge.tasks import load_task
from agentforge.check_sizes import configured_sets
from agentforge.verify import REASON_CODES, VerifyConfig, evaluate, run_checks

ROOT = Path(__file__).resolve().parents[2]
ADV = ROOT / "evals" / "adversarial"
SUITE = ROOT / "evals" / "suite"
CFG = VerifyConfig(machine="sn40l")

_EXPECT = re.compile(r"^# expect: (\w+) -- (.+)$")


def _kernels(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.asp"))


def _expect(path: Path) -> tuple[str, str]:
    first = path.read_text().splitlines()[0]
    m = _EXPECT.match(first)
    assert m, f"{path.name}: the first line must be '# expect: <reason_code> -- <the trick>', got {first!r}"
    return m.group(1), m.group(2)


def _task(path: Path) -> Path:
    return SUITE / f"{path.stem.split('__')[0]}.py"


def _evaluate(path: Path, cfg: VerifyConfig = CFG):
    return evaluate(_task(path), {"kind": "kernel", "source": path.read_text(), "filename": str(path)}, cfg)


ADVERSARIAL = _kernels(ADV)
CONTROLS = _kernels(ADV / "controls")


# ------------------------------------------------------------------ the collection itself

def test_collection_is_well_formed():
    assert len(ADVERSARIAL) >= 15 and len(CONTROLS) >= 2
    for path in ADVERSARIAL + CONTROLS:
        assert "__" in path.stem, f"{path.name}: name it <task>__<trick>.asp"
        assert _task(path).is_file(), f"{path.name}: no bundled task {_task(path).name}"
        code, why = _expect(path)
        assert len(why) > 20, f"{path.name}: explain the trick after '--'"
        if path in CONTROLS:
            assert code == "verified", f"{path.name}: a control must expect 'verified'"
        else:
            assert code in REASON_CODES, f"{path.name}: unknown reason code {code!r}"


def test_collection_covers_the_documented_tricks():
    codes = {_expect(p)[0] for p in ADVERSARIAL}
    # zeros/constant, echo/poly/bf16-inside, unwritten rows/NaN, result shape, bf16 params, param
    # order/count, parse/affine errors, interpreter limits
    assert {"constant", "mismatch", "nonfinite", "shape", "dtype", "interface", "compile", "limit"} <= codes
    tricks = {p.stem.split("__")[1] for p in ADVERSARIAL}
    for needed in ("zeros", "echo_input", "first_rows_only", "wrong_shape", "nan_everywhere", "poly_exp",
                   "bf16_interface", "bf16_inside", "ignores_weight", "swapped_params", "syntax_error"):
        assert needed in tricks, f"no adversarial kernel for the '{needed}' trick"


# ------------------------------------------------------------------ rejections

@pytest.mark.parametrize("path", ADVERSARIAL, ids=[p.stem for p in ADVERSARIAL])
def test_adversarial_kernel_is_rejected(path: Path):
    code, _ = _expect(path)
    ev = _evaluate(path)
    assert not ev.verified, f"{path.name} VERIFIED but must be rejected ({code})"
    assert ev.reason_code == code, f"{path.name}: rejected as {ev.reason_code!r} ({ev.reason}), expected {code!r}"
    assert ev.reason and ev.reason_code in REASON_CODES
    # a rejected kernel is never scored: no time, no speedup to report
    assert ev.simulated_seconds is None and ev.speedup is None and ev.roofline_fraction is None
    if ev.checks:  # rejected at a check (not before the first one): it is the last check run
        assert not ev.checks[-1].passed and ev.checks[-1].code == code
        assert all(c.passed for c in ev.checks[:-1])


@pytest.mark.parametrize("path", CONTROLS, ids=[p.stem for p in CONTROLS])
def test_control_kernel_verifies(path: Path):
    ev = _evaluate(path)
    assert ev.verified, f"{path.name}: {ev.reason_code}: {ev.reason}"
    assert ev.reason is None and ev.reason_code is None
    assert len(ev.checks) >= 6 and all(c.passed for c in ev.checks)
    assert ev.simulated_seconds > 0 and ev.baseline_seconds > 0 and ev.speedup > 0
    assert 0 < ev.roofline_fraction <= 1


# ------------------------------------------------------------------ why several distributions

class _OnlyDistribution(VerifyConfig):
    """The default plan with every check's inputs drawn from one distribution."""

    def checks(self, task, sets=None, extra=()):
        return [(sizes, seed, self.only) for sizes, seed, _ in super().checks(task, sets)]


class OnlyUniform(_OnlyDistribution):
    only = "uniform"


class OnlyNormal(_OnlyDistribution):
    only = "normal"


@pytest.mark.parametrize("name, fooled_by, caught_on", [
    ("softmax__poly_exp", OnlyUniform, {"normal", "heavy"}),
    ("rmsnorm__clamp_inputs", OnlyUniform, {"normal", "heavy"}),
    ("softmax__clamp_logits", OnlyNormal, {"heavy"}),
])
def test_single_distribution_plan_would_be_fooled(name, fooled_by, caught_on):
    """These kernels are only right for a range of inputs: a plan using only that distribution
    passes them (6 checks, 2 size sets), the real plan rejects them on another distribution."""
    path = ADV / f"{name}.asp"
    fooled = _evaluate(path, fooled_by(machine="sn40l"))
    assert fooled.verified, f"{name} should pass with {fooled_by.only} inputs only: {fooled.reason}"
    real = _evaluate(path)
    assert not real.verified and real.reason_code == "mismatch"
    assert real.checks[-1].distribution in caught_on


# ------------------------------------------------------------------ hole 1: checked small, timed large

#: kernels right only where one tile covers a dimension; each has a control with the same tiling
TILED_CHEATS = {
    "softmax__per_tile_norm": "softmax__tiles",
    "softmax__first_block_max": "softmax__tiles",
    "bias_add__first_tiles": "bias_add__tiles",
    "matmul__first_k_block": "matmul__gemm",
    "cumsum__no_carry": "cumsum__carry",
    "rmsnorm__per_tile": "rmsnorm__tiles",
}


def _candidate(path: Path) -> KernelSolution:
    return KernelSolution(path.read_text(), str(path), asp_lang.load_machine("sn40l"))


@pytest.mark.parametrize("name", sorted(TILED_CHEATS))
def test_tiled_cheat_passed_the_old_rule(name):
    """Under the old rule (the sidecar's sizes, free tile sizes halved until they divide them) each
    of these kernels passes every check: one tile covers the dimension it gets wrong."""
    path = ADV / f"{name}.asp"
    task = load_task(_task(path))
    cand = _candidate(path)  # never configured: binds as the old rule did
    checks = run_checks(task, cand, CFG)
    assert checks and all(c.passed for c in checks), [(c.sizes, c.distribution, c.reason) for c in checks]


@pytest.mark.parametrize("name", sorted(TILED_CHEATS))
def test_tiled_cheat_is_checked_in_its_timed_configuration(name):
    """The new rule checks the timed tile sizes, each tiled dimension at least 3 tiles long; the
    control with the same tiling verifies at the same sizes."""
    path = ADV / f"{name}.asp"
    task = load_task(_task(path))
    cand = _candidate(path)
    sets = configured_sets(task, cand, CFG, name)
    own = cand.structure(capture_at(task, meta=True))[0][1]
    for sizes in sets:
        checked = cand.structure(capture_at(task, sizes, meta=True))[0][1]
        for (i, ax, tile, timed_n), (_, _, tile_c, n) in zip(own, checked):
            assert tile_c == tile and n >= min(3, timed_n), (sizes, i, ax, tile_c, n)
    ev = _evaluate(path)
    assert not ev.verified and ev.bound_sizes == cand.fixed
    assert ev.checks[-1].sizes in sets
    control = _evaluate(ADV / "controls" / f"{TILED_CHEATS[name]}.asp")
    assert control.verified, control.reason


# ------------------------------------------------------------------ hole 2: inputs aimed at the cheats

@pytest.mark.parametrize("name, caught_by", [
    ("softmax__first_block_max", "last_max"),
    ("relu__sign_by_division", "zeros"),
    ("argmax_dim__bf16_compare", "near_ties"),
])
def test_targeted_distribution_catches_what_the_generic_ones_miss(name, caught_by):
    """At the very sizes and tiling of the real check, the three generic distributions (normal,
    heavy, uniform) miss these kernels' flaw (except by luck of a heavy tail), and the targeted
    distribution of the task's op class catches it every time."""
    path = ADV / f"{name}.asp"
    task = load_task(_task(path))
    cand = _candidate(path)
    sets = configured_sets(task, cand, CFG, name)
    normal = run_checks(task, cand, OnlyNormal(machine="sn40l"), sets)
    assert all(c.passed for c in normal)
    only = type("Only", (_OnlyDistribution,), {"only": caught_by})(machine="sn40l")
    caught = run_checks(task, cand, only, sets)
    assert not caught[0].passed and caught[0].code == _expect(path)[0]
    ev = _evaluate(path)
    assert ev.checks[-1].distribution in (caught_by, "heavy")
