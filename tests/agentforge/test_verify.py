"""Unit tests of agentforge.verify: comparison, the check plan, input mutation, scoring fields,
the JSON schema and how an emulator bug is reported."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import asp_lang
from agentforge.check_sizes import configured_sets, covers
from agentforge.solution import KernelSolution
from agentforge.capture import capture_at
from agentforge.tasks import load_suite, load_task
from agentforge.verify import (
    DISTRIBUTIONS,
    targeted_distributions,
    REASON_CODES,
    SUSPICIOUS_SPEEDUP,
    Check,
    Evaluation,
    Mismatch,
    VerifyConfig,
    check_output,
    evaluate,
    run_checks,
)

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "evals" / "suite"
SOFTMAX = SUITE / "softmax.py"
CONTROL = ROOT / "evals" / "adversarial" / "controls" / "softmax__online.asp"
CFG = VerifyConfig(machine="sn40l")


def _code(out, ref, atol=1e-4, rtol=1e-4) -> str | None:
    try:
        check_output(out, ref, atol, rtol)
    except Mismatch as m:
        return m.code
    return None


def _kernel(path: Path) -> dict:
    return {"kind": "kernel", "source": path.read_text(), "filename": str(path)}


# ------------------------------------------------------------------ check_output

def test_equal_outputs_pass_with_zero_error():
    r = torch.randn(4, 8, dtype=torch.float64)
    assert check_output(r.float(), r, 1e-4, 1e-4)[0] < 1e-6
    assert check_output(r.clone(), r, 1e-4, 1e-4) == (0.0, 0.0)


def test_shape_is_checked_first():
    r = torch.randn(4, 8, dtype=torch.float64)
    assert _code(torch.zeros(8, 4), r) == "shape"
    assert _code(r.reshape(32), r) == "shape"       # same values, other shape
    assert _code(r[:, :1], r) == "shape"
    with pytest.raises(Mismatch, match="shape"):
        check_output(torch.zeros(8, 4), r, 1e-4, 1e-4)


def test_integer_outputs_must_be_exact_and_of_the_same_dtype():
    r = torch.tensor([[0, 3, 1], [2, 2, 0]], dtype=torch.int64)
    assert check_output(r.clone(), r, 1e-4, 1e-4) == (0.0, 0.0)
    off = r.clone()
    off[1, 2] += 1  # an index off by one: no tolerance for integers
    with pytest.raises(Mismatch) as e:
        check_output(off, r, 1.0, 1.0)
    assert e.value.code == "mismatch" and "[1, 2]" in e.value.message
    assert _code(r.to(torch.int32), r) == "dtype"
    assert _code(r.double(), r) == "dtype"  # a float answer to an index task


def test_nan_and_inf_must_be_at_the_reference_positions():
    r = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 2.0], dtype=torch.float64)
    assert _code(r.clone(), r) is None  # same non-finite positions: fine
    for i, v in [(0, float("nan")), (4, float("inf")), (0, -float("inf")), (1, 0.0), (2, 1e30), (3, float("inf"))]:
        o = r.clone()
        o[i] = v
        assert _code(o, r) == "nonfinite", (i, v)


def test_unwritten_output_is_reported_as_such():
    r = torch.randn(6, 8, dtype=torch.float64)
    o = r.clone()
    o[3:] = float("nan")  # rows never written keep the interpreter's NaN poison
    with pytest.raises(Mismatch) as e:
        check_output(o, r, 1e-4, 1e-4)
    assert e.value.code == "nonfinite" and "never written" in e.value.message and "[3, 0]" in e.value.message


def test_nan_everywhere_fails_even_with_a_huge_tolerance():
    r = torch.randn(4, 8, dtype=torch.float64)
    assert _code(torch.full_like(r, float("nan")), r, atol=1e9, rtol=1e9) == "nonfinite"


def test_constant_output_is_rejected_where_the_reference_varies():
    r = torch.softmax(torch.randn(8, 64, dtype=torch.float64), -1)
    # softmax values are ~1/64: zeros are within a loose absolute tolerance, but constant
    assert _code(torch.zeros_like(r), r, atol=0.5, rtol=0.5) == "constant"
    assert _code(torch.full_like(r, 1 / 64), r, atol=0.5, rtol=0.5) == "constant"
    # a reference that is itself constant may be matched by a constant
    c = torch.full((4, 4), 0.25, dtype=torch.float64)
    assert _code(c.clone(), c) is None
    # one element is never "constant"
    assert _code(torch.tensor([0.0]), torch.tensor([1e-5], dtype=torch.float64)) is None


def test_tolerance_scales_with_the_largest_reference_magnitude():
    small = torch.linspace(-1, 1, 16, dtype=torch.float64)
    big = small * 1000  # max |ref| = 1000: atol is multiplied by it
    err = 0.05
    assert _code(small + err, small, atol=1e-4, rtol=1e-4) == "mismatch"
    assert _code(big + err, big, atol=1e-4, rtol=1e-4) is None
    assert _code(big + 0.2, big, atol=1e-4, rtol=1e-4) == "mismatch"  # 0.2 > 1e-4 * 1000 + 1e-4 * |r|
    # below 1, the scale stays 1 (not shrunk): tiny references are not held to a tinier atol
    tiny = small * 1e-3
    assert _code(tiny + 5e-5, tiny, atol=1e-4, rtol=0.0) is None
    # rtol is relative to each element
    r = torch.tensor([1.0, 100.0, -50.0], dtype=torch.float64)
    assert _code(r * (1 + 5e-5), r, atol=0.0, rtol=1e-4) is None
    assert _code(r * (1 + 5e-4), r, atol=0.0, rtol=1e-4) == "mismatch"


def test_reported_errors_are_the_max_abs_and_rel():
    r = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    o = torch.tensor([1.0, 2.001, 4.0], dtype=torch.float64)
    a, rel = check_output(o, r, 1e-2, 1e-2)
    assert a == pytest.approx(1e-3) and rel == pytest.approx(5e-4)


def test_reason_codes_are_documented_strings():
    for code, meaning in REASON_CODES.items():
        assert re.fullmatch(r"[a-z_]+", code) and meaning


# ------------------------------------------------------------------ the check plan

def test_default_plan_three_seeds_two_size_sets_three_distributions():
    cfg = VerifyConfig()
    assert len(cfg.seeds) >= 3 and cfg.size_sets >= 2
    assert "heavy" in DISTRIBUTIONS and "normal" in DISTRIBUTIONS and len(set(DISTRIBUTIONS)) >= 2
    task = load_task(SOFTMAX)
    plan = cfg.checks(task)
    assert len(plan) == len(cfg.seeds) * cfg.size_sets + len(task.distributions)
    assert [d for _, _, d in plan[len(plan) - len(task.distributions):]] == list(task.distributions)
    sizes = [s for s, _, _ in plan]
    assert {tuple(sorted(s.items())) for s in sizes} == {tuple(sorted(s.items())) for s in task.resolved_size_sets()[:2]}
    for s in task.resolved_size_sets()[:2]:
        row = [(seed, d) for z, seed, d in plan if z == s and d in DISTRIBUTIONS]
        assert {seed for seed, _ in row} == set(cfg.seeds)
        assert {d for _, d in row} >= {"normal", "heavy", "uniform"}


def test_every_bundled_task_gets_the_full_plan():
    cfg = VerifyConfig()
    for task in load_suite(SUITE):
        plan = cfg.checks(task)
        sets = {tuple(sorted(s.items())) for s, _, _ in plan}
        assert len(sets) >= 2, f"{task.name}: checked at {len(sets)} size set(s)"
        assert len({seed for _, seed, _ in plan}) >= 3, task.name
        assert {"normal", "heavy"} <= {d for _, _, d in plan}, task.name
        for s in sets:  # correctness runs are small, never the task's own (timing) sizes
            assert dict(s) != task.sizes or task.sizes == {}, task.name


def test_plan_follows_the_config():
    task = load_task(SOFTMAX)
    plan = VerifyConfig(seeds=(7, 8, 9, 10), size_sets=1).checks(task)
    assert [seed for _, seed, d in plan if d in DISTRIBUTIONS] == [7, 8, 9, 10]
    assert [seed for _, seed, d in plan if d not in DISTRIBUTIONS] == [11]  # softmax also asks for "large"
    assert [d for _, _, d in plan][:3] == list(DISTRIBUTIONS[:3])


# ------------------------------------------------------------------ fake candidates

class Honest:
    """Computes the task (softmax) in float32 with torch: what a correct kernel returns."""

    def run(self, graph, inputs, limits):
        return [torch.softmax(inputs[0], -1)]


class Mutator(Honest):
    """Right outputs, but scribbles on its input buffer (e.g. uses it as scratch)."""

    def run(self, graph, inputs, limits):
        out = super().run(graph, inputs, limits)
        inputs[0].mul_(0.5)
        return out


class Cacher(Honest):
    """Computes once and returns the cached result on every later call."""

    def __init__(self):
        self.cached = None

    def run(self, graph, inputs, limits):
        if self.cached is None:
            self.cached = super().run(graph, inputs, limits)
        return [t.clone() for t in self.cached]


class HalfPrecision(Honest):
    """Right values, returned as bf16 for an f32 task."""

    def run(self, graph, inputs, limits):
        return [t.to(torch.bfloat16) for t in super().run(graph, inputs, limits)]


class TooManyOutputs(Honest):
    def run(self, graph, inputs, limits):
        out = super().run(graph, inputs, limits)
        return out + out


@pytest.fixture(scope="module")
def softmax_task():
    return load_task(SOFTMAX)


def test_honest_fake_candidate_passes_every_check(softmax_task):
    checks = run_checks(softmax_task, Honest(), CFG)
    assert len(checks) == 6 + len(softmax_task.distributions) and all(c.passed for c in checks)
    assert all(c.max_abs_error is not None and c.max_abs_error < 1e-6 for c in checks)
    assert {c.distribution for c in checks} == {"normal", "heavy", "uniform", *softmax_task.distributions}


def test_modified_inputs_are_detected(softmax_task):
    checks = run_checks(softmax_task, Mutator(), CFG)
    assert len(checks) == 1 and not checks[0].passed  # the first failure decides
    assert checks[0].code == "inputs_modified"


def test_results_cached_across_calls_are_caught(softmax_task):
    checks = run_checks(softmax_task, Cacher(), CFG)
    assert checks[0].passed and not checks[-1].passed
    assert checks[-1].code == "mismatch" and len(checks) == 2  # the next seed's inputs differ


def test_lower_precision_output_dtype_is_rejected(softmax_task):
    checks = run_checks(softmax_task, HalfPrecision(), CFG)
    assert checks[-1].code == "dtype" and "bfloat16" in checks[-1].reason


def test_output_count_is_checked(softmax_task):
    assert run_checks(softmax_task, TooManyOutputs(), CFG)[-1].code == "interface"


# ------------------------------------------------------------------ a verified kernel's evaluation

@pytest.fixture(scope="module")
def verified():
    return evaluate(SOFTMAX, _kernel(CONTROL), CFG)


def test_verified_kernel_is_scored(verified, softmax_task):
    ev = verified
    assert ev.verified and ev.reason is None and ev.reason_code is None, ev.reason
    assert ev.task == "softmax" and ev.candidate == "kernel" and ev.machine == "sn40l"
    assert ev.emulator == asp_lang.EMULATOR_VERSION
    assert ev.own_sizes == softmax_task.sizes
    assert ev.simulated_seconds > 0 and ev.baseline_seconds > 0
    assert ev.speedup == pytest.approx(ev.baseline_seconds / ev.simulated_seconds)
    assert 0 < ev.roofline_fraction <= 1
    # timed at the task's own sizes: at least x read once and y written once
    b, d = softmax_task.sizes["BATCH"], softmax_task.sizes["DIM"]
    assert ev.hbm_bytes >= 2 * b * d * 4
    assert ev.flops > 0 and ev.bottleneck
    assert ev.kernel_sha256 and len(ev.kernel_sha256) == 64
    targeted = targeted_distributions(capture_at(softmax_task, meta=True))
    assert {"last_max", "offset", "zeros"} <= set(targeted)
    assert len(ev.checks) == 6 + len(set(softmax_task.distributions) | set(targeted))
    assert ev.bound_sizes == {"R": 4, "T": 256}  # the control's free tile sizes, as timed
    assert all(isinstance(c, Check) and c.passed for c in ev.checks)
    assert ev.eval_seconds > 0 and ev.error is None and ev.warnings == []


def test_evaluation_json_round_trip(verified):
    d = verified.to_dict()
    text = json.dumps(d)
    back = Evaluation.from_dict(json.loads(text))
    assert back == verified
    assert isinstance(back.checks[0], Check)
    for key in ("verified", "reason", "reason_code", "simulated_seconds", "baseline_seconds", "speedup",
                "roofline_fraction", "hbm_bytes", "checks", "schema_version"):
        assert key in d


def test_rejected_evaluation_json_round_trip():
    bad = ROOT / "evals" / "adversarial" / "softmax__syntax_error.asp"
    ev = evaluate(SOFTMAX, _kernel(bad), CFG)
    assert ev.reason_code == "compile" and ev.error["kind"] == "ParseError"
    assert Evaluation.from_dict(json.loads(json.dumps(ev.to_dict()))) == ev


def test_every_schema_field_and_reason_code_is_documented():
    doc = (ROOT / "docs" / "evaluation.md").read_text()
    for name in Evaluation.__dataclass_fields__:
        assert f"`{name}`" in doc, f"docs/evaluation.md does not document Evaluation.{name}"
    for name in Check.__dataclass_fields__:
        assert f"`{name}`" in doc, f"docs/evaluation.md does not document Check.{name}"
    for code in REASON_CODES:
        assert f"`{code}`" in doc, f"docs/evaluation.md does not document reason code {code}"


def test_implausible_speedup_is_flagged_not_hidden(verified):
    ev = evaluate(SOFTMAX, _kernel(CONTROL), CFG, baseline_seconds=verified.simulated_seconds * 100)
    assert ev.verified and ev.speedup == pytest.approx(100)
    assert any(f"{SUSPICIOUS_SPEEDUP:g}x" in w for w in ev.warnings)


def test_emulator_error_in_profiling_is_emulator_bug(monkeypatch):
    def broken(prog):
        raise asp_lang.timing.EmulatorError("section 0 finished in 10 cycles, below the roofline of 20")

    monkeypatch.setattr(asp_lang, "profile", broken)
    ev = evaluate(SOFTMAX, _kernel(CONTROL), CFG)
    assert not ev.verified and ev.reason_code == "emulator_bug"
    assert ev.reason.startswith("EMULATOR BUG") and "roofline" in ev.reason
    assert ev.error["kind"] == "EmulatorError"
    assert all(c.passed for c in ev.checks)  # the kernel was right: the model is to blame


def test_broken_task_is_a_task_result():
    ev = evaluate(ROOT / "tests" / "agentforge" / "fixtures" / "broken" / "raises_in_init.py",
                  _kernel(CONTROL), CFG)
    assert not ev.verified and ev.reason_code == "task" and "raises_in_init" in ev.reason


# ------------------------------------------------------------------ the checked configuration is the timed one

def _candidate(path: Path) -> KernelSolution:
    return KernelSolution(path.read_text(), str(path), asp_lang.load_machine("sn40l"))


def test_check_sizes_run_the_timed_tiles_at_least_three_tiles_long():
    """The control's free tile T = 256 would have been shrunk to the sidecar's 64/128 columns; now
    it stays 256 in every check and every tiled axis spans >= 3 tiles (or as many as timed)."""
    task = load_task(SOFTMAX)
    cand = _candidate(CONTROL)
    sets = configured_sets(task, cand, CFG, "test-control")
    assert cand.fixed == {"R": 4, "T": 256}
    timed = cand.structure(capture_at(task, meta=True))
    assert len(sets) == 2
    for sizes in sets:
        checked = cand.structure(capture_at(task, sizes, meta=True))
        assert covers(timed, checked) is None
        assert sizes["DIM"] % 256 == 0 and sizes["DIM"] // 256 >= 3 and sizes["BATCH"] // 4 >= 3
        assert sizes["BATCH"] * sizes["DIM"] * 2 <= CFG.check_elements
    # a set the timed tiles do not cover in 3 tiles is refused, with the reason
    small = cand.structure(capture_at(task, {"BATCH": 16, "DIM": 512}, meta=True))
    assert "spans 2 tile(s), needs 3" in covers(timed, small)


def test_sidecar_sets_are_kept_where_the_timed_tiles_cover_them():
    """A kernel whose only tile is 4 rows (whole rows otherwise) keeps the sidecar's second set
    (16 rows: 4 tiles); the first (8 rows: 2 tiles) is replaced by a derived one."""
    src = "\n".join(CONTROL.read_text().splitlines()[:1]) + """
kernel softmax_rows(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes R = 4
  fn softmax(t) {
    let e = exp(t - max(t, axis=1))
    return e / sum(e, axis=1)
  }
  xs = load(x, tile=[R, N])
  ys = map(xs, fn=softmax)
  store(y, ys)
}
"""
    task = load_task(SOFTMAX)
    cand = KernelSolution(src, "rows.asp", asp_lang.load_machine("sn40l"))
    sets = configured_sets(task, cand, CFG, "test-rows")
    assert sets[0] == {"BATCH": 16, "DIM": 128}
    assert sets[1]["BATCH"] >= 12 and sets[1]["DIM"] >= 64  # never below the sidecar's smallest


def test_task_without_sidecar_gets_derived_check_sizes(tmp_path):
    """No sidecar: the check sizes are derived from the task's own (4096 x 4096) sizes, small
    enough to run and still covering the timed tiles; the timing stays at the own sizes."""
    (tmp_path / "softmax.py").write_text(SOFTMAX.read_text())
    ev = evaluate(tmp_path / "softmax.py", {"kind": "kernel", "source": CONTROL.read_text(),
                                             "filename": str(CONTROL)}, CFG)
    assert ev.verified, ev.reason
    assert ev.own_sizes == {"BATCH": 4096, "DIM": 4096}
    for c in ev.checks:
        assert c.sizes != ev.own_sizes and c.sizes["DIM"] % 256 == 0 and c.sizes["DIM"] >= 768
        assert c.sizes["BATCH"] * c.sizes["DIM"] * 2 <= CFG.check_elements


def test_kernel_that_cannot_be_checked_within_the_budget_is_rejected():
    """With a budget smaller than 3 tiles of the timed configuration, the kernel is rejected as
    'uncheckable' with the sizes it would need, and never timed."""
    cfg = VerifyConfig(machine="sn40l", check_elements=4096)
    ev = evaluate(SOFTMAX, {"kind": "kernel", "source": CONTROL.read_text(), "filename": str(CONTROL)}, cfg)
    assert not ev.verified and ev.reason_code == "uncheckable"
    assert "budget" in ev.reason and "4096" in ev.reason
    assert ev.simulated_seconds is None and ev.checks == []


def test_every_check_reproduces_from_its_sizes_seed_and_distribution():
    """The seed schedule is fixed: two evaluations run the same checks with the same errors."""
    kernel = {"kind": "kernel", "source": CONTROL.read_text(), "filename": str(CONTROL)}
    a, b = evaluate(SOFTMAX, kernel, CFG), evaluate(SOFTMAX, kernel, CFG)
    key = [(c.sizes, c.seed, c.distribution, c.max_abs_error) for c in a.checks]
    assert key == [(c.sizes, c.seed, c.distribution, c.max_abs_error) for c in b.checks]
    assert len({c.seed for c in a.checks}) >= 3


def test_targeted_distributions_follow_the_op_classes():
    by_task = {name: set(targeted_distributions(capture_at(load_task(SUITE / f"{name}.py"), meta=True)))
               for name in ("softmax", "argmax_dim", "layernorm", "relu", "attention")}
    assert {"last_max", "offset", "zeros"} <= by_task["softmax"]
    assert {"last_max", "near_ties"} <= by_task["argmax_dim"]
    assert "mixed_scale" in by_task["layernorm"]
    assert by_task["relu"] == {"zeros"}
    # attention's softmax reads computed scores (float32 ties may legitimately reorder): not targeted
    assert "last_max" not in by_task["attention"]


def test_correct_softmax_verifies_on_the_small_machine():
    """Hole 8: the baseline fits the machine it is timed on (rdu-mini has 64 PCUs; the baseline's
    par=256 choice is skipped there), so a correct kernel is not rejected as 'compile'."""
    ev = evaluate(SOFTMAX, {"kind": "kernel", "source": CONTROL.read_text(), "filename": str(CONTROL)},
                  VerifyConfig(machine="rdu-mini"))
    assert ev.verified, f"{ev.reason_code}: {ev.reason}"
    assert ev.machine == "rdu-mini" and ev.baseline_seconds > 0


def test_a_plans_one_op_regions_are_checked_like_the_baseline_and_its_fused_kernels_as_timed():
    """A 'single' region is the baseline's own lowering (tiles follow each graph); a fused
    kernel is the plan's code and is held to the tiles it was timed with."""
    from agentforge.capture import capture_at
    from agentforge.author import baseline_plan, author_plan
    from agentforge.tasks import load_task
    from agentforge.solution import plan_solution
    import asp_lang

    task = load_task(SUITE / "self_attention_proj.py")
    own = capture_at(task, meta=True)
    machine = asp_lang.load_machine("sn40l")
    chain = plan_solution(baseline_plan(own).to_dict(), machine)
    assert chain.structure(own) and chain.configure(own) == []          # nothing held: all trusted
    fused = plan_solution(author_plan(own, machine).plan.to_dict(), machine)
    flags = [t for t, _ in fused.structures(own)]
    assert False in flags                                                # its fused kernels are held
    assert len(fused.configure(own)) == flags.count(False)
