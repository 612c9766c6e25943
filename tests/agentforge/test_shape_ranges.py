"""Shape-generic library kernels (issue 15): a kernel verified over a declared range of sizes
(edges, ragged and interior points) is dispatched at any size inside the range without verifying
at call time, and only there; the range and its evidence round-trip through the manifest."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from agentforge.library import Library, LibraryError, entry_from_dict
from agentforge.ranges import (Range, RangeError, checkable_point, main, parse_range, parse_ranges, range_covers,
                               sample_points, sidecar_ranges, symbolize_sources, tile_modulus,
                               verify_library_ranges)
from agentforge.verify import VerifyConfig

ROOT = Path(__file__).resolve().parents[2]
RMSNORM = ROOT / "tests" / "agentforge" / "fixtures" / "torch_tasks" / "rmsnorm_small.py"   # BATCH 1, SEQ 16, HIDDEN 64


# ---------------------------------------------------------------------- declaring a range

def test_a_range_is_lo_dot_dot_hi_and_bad_ones_say_what_to_write():
    assert parse_range("1..8192") == Range(1, 8192) and 8192 in Range(1, 8192) and 0 not in Range(1, 8192)
    for bad, words in (("8192", "not LO..HI"), ("0..4", "below 1"), ("9..3", "empty"), (64, "not a range"),
                       ("1..x", "not LO..HI")):
        with pytest.raises(RangeError, match=words) as e:
            parse_range(bad, "TOKENS", "t.toml")
        assert "how to fix" in str(e.value) and "t.toml" in str(e.value)
    sizes = {"TOKENS": 16, "HIDDEN": 64}
    assert parse_ranges({"TOKENS": "1..64"}, sizes) == {"TOKENS": Range(1, 64)}
    with pytest.raises(RangeError, match="(?s)'TOKEN' is not a size of the task.*TOKENS, HIDDEN"):
        parse_ranges({"TOKEN": "1..64"}, sizes)
    with pytest.raises(RangeError, match="does not hold the task's own TOKENS = 16"):
        parse_ranges({"TOKENS": "32..64"}, sizes)


def test_a_sidecar_ranges_table_is_read_and_checked(tmp_path):
    from agentforge.tasks import load_task

    shutil.copy(RMSNORM, tmp_path / "rms.py")
    task = load_task(tmp_path / "rms.py")
    (tmp_path / "rms.toml").write_text('[task]\ngroup = "norm"\n\n[ranges]\nSEQ = "1..8192"\n')
    assert sidecar_ranges(task) == {"SEQ": Range(1, 8192)}
    (tmp_path / "rms.toml").write_text('[ranges]\nSEQ = "1-8192"\n')
    with pytest.raises(RangeError, match="rms.toml.*not LO..HI"):
        sidecar_ranges(task)


# ---------------------------------------------------------------------- where it is verified

def test_sampled_points_hold_both_edges_ragged_and_aligned_tiles_and_interior_points():
    assert tile_modulus([((), ((0, 0, 32, 4), (1, 1, 48, 2)), 0.0, 0.0)]) == 96
    assert tile_modulus([((), (), 0.0, 0.0)]) == 1
    plan = {"regions": [{"template": "row", "params": {"rows": 16, "par": 48}},
                        {"template": "matmul", "params": {"tm": 64, "tn": 32, "tk": 128, "par_mem": 8}}]}
    assert tile_modulus([((), (), 0.0, 0.0)], plan) == 128        # tile parameters, not par
    pts = sample_points({"TOKENS": 16, "HIDDEN": 64}, {"TOKENS": Range(1, 8192)}, 64)
    vals = {s["TOKENS"]: why for s, why in pts}
    assert all(s["HIDDEN"] == 64 for s, _ in pts)                     # an unranged size stays as timed
    assert {1, 8192} <= set(vals) and "edge" in vals[1] and "edge" in vals[8192]
    assert {63, 65, 191} <= set(vals) and all("ragged" in vals[v] for v in (63, 65, 191))
    assert {64, 192} <= set(vals) and 16 in vals                      # whole tiles, the own size
    assert any(v % 64 and "interior" in why for v, why in vals.items())    # an interior point off the tile grid
    two = sample_points({"A": 8, "B": 8}, {"A": Range(1, 32), "B": Range(2, 16)}, 4)
    assert ({"A": 1, "B": 2}, "corner: every ranged size at its low edge") in two
    assert {"A": 32, "B": 16} in [s for s, _ in two]


class _Fixed:
    """A solution whose configuration is the same at every size (what checkable_point compares)."""

    def structure(self, graph):
        return [((("load", 1),), ((0, 1, 16, 1),), 0.0, 0.0)]


def test_a_point_over_the_check_budget_is_checked_at_the_largest_fitting_size_with_the_same_tile_remainder():
    from agentforge.tasks import load_task

    task = load_task(RMSNORM)
    at, how = checkable_point(task, _Fixed(), {"BATCH": 1, "SEQ": 40, "HIDDEN": 64}, ["SEQ"], 16, budget=3000)
    # 128 * SEQ + 64 elements must fit 3000: SEQ <= 22, and SEQ = 40 (mod 16): 8
    assert at == {"BATCH": 1, "SEQ": 8, "HIDDEN": 64} and "over the check budget" in how
    assert checkable_point(task, _Fixed(), {"BATCH": 1, "SEQ": 40, "HIDDEN": 64}, ["SEQ"], 16, 10**6)[0]["SEQ"] == 40
    assert checkable_point(task, _Fixed(), {"BATCH": 1, "SEQ": 40, "HIDDEN": 64}, ["SEQ"], 16, 100)[0] is None


# ---------------------------------------------------------------------- a ranged library

@pytest.fixture(scope="module")
def rms_only(torch_library, tmp_path_factory) -> Path:
    """The test library with its rmsnorm_small kernel only (verified at SEQ 16 and its sidecar sets):
    loading it into PyTorch captures one task, not six."""
    out = tmp_path_factory.mktemp("rms") / "library"
    shutil.copytree(torch_library, out)
    lib = Library.open(out)
    lib.entries = lib.get("rmsnorm_small")
    lib.save()
    return out


@pytest.fixture(scope="module")
def ranged(rms_only, tmp_path_factory) -> Path:
    """That kernel verified over SEQ 1..40 with the command line (one seed per point: a fast test)."""
    out = tmp_path_factory.mktemp("ranged") / "library"
    shutil.copytree(rms_only, out)
    assert main(["verify-ranges", str(out), "--range", "SEQ=1..40", "--seeds", "1"]) == 0
    return out


def test_verify_ranges_records_points_timing_and_provenance_in_the_manifest(ranged):
    (e,) = Library.open(ranged).get("rmsnorm_small")
    (rec,) = e.ranges
    assert rec["verified"] and rec["sizes"] == {"SEQ": [1, 40]} and rec["fixed"] == {"BATCH": 1, "HIDDEN": 64}
    seqs = {p["sizes"]["SEQ"] for p in rec["points"]}
    L = rec["tile_modulus"]                # the fused row kernel's rows per tile
    assert L > 1 and {1, 40, L - 1, L + 1} <= seqs and len(seqs) >= 5
    assert all(p["passed"] and p["checked_at"] == p["sizes"] and p["seconds"] > 0 and p["baseline_seconds"] > 0
               for p in rec["points"])
    assert {"date", "machine", "emulator_version", "agentforge_version", "seeds"} <= set(rec["provenance"])
    assert range_covers(rec, {"BATCH": 1, "SEQ": 23, "HIDDEN": 64})
    assert not range_covers(rec, {"BATCH": 1, "SEQ": 41, "HIDDEN": 64})
    assert not range_covers(rec, {"BATCH": 2, "SEQ": 23, "HIDDEN": 64})      # another size: not the range
    # round trip: what was saved loads back the same, and a malformed record is refused by name
    d = json.loads((ranged / "manifest.json").read_text())
    k = next(x for x in d["kernels"] if x["op"] == "rmsnorm_small")
    assert entry_from_dict(k, "k").ranges == e.ranges
    k["ranges"][0]["sizes"]["SEQ"] = [40, 1]
    with pytest.raises(LibraryError, match="ranges\\[0\\].sizes.SEQ must be \\[lo, hi\\]"):
        entry_from_dict(k, "k")


def test_verify_ranges_says_what_is_wrong_on_the_command_line(ranged, capsys):
    assert main(["verify-ranges", str(ranged), "--range", "SEQ=1-40"]) == 2
    assert "SEQ = '1-40' is not LO..HI" in capsys.readouterr().err
    assert main(["verify-ranges", str(ranged), "--range", "SEQ=32..40"]) == 2
    assert "does not hold the task's own SEQ = 16" in capsys.readouterr().err
    assert main(["verify-ranges", str(ranged), "--range", "SEQ=1..40", "--only", "rmsnorm"]) == 2
    assert "no kernel 'rmsnorm'" in capsys.readouterr().err


def test_agentforge_library_verify_ranges_is_the_same_command(ranged, capsys):
    from agentforge.cli import main as agentforge_main

    assert agentforge_main(["library", "verify-ranges", str(ranged), "--range", "SEQ=32..40"]) == 2
    assert "does not hold the task's own SEQ = 16" in capsys.readouterr().err


@pytest.fixture
def ran(monkeypatch):
    """(entry id, sizes, how) of every kernel run; verification at call time fails the test."""
    from agentforge.torch.ops import OpFamily

    calls: list[tuple[str, dict, str]] = []
    real = OpFamily._run

    def spy(self, v, args):
        calls.append((v.entry.id, dict(v.sizes), v.how))
        return real(self, v, args)

    def no_checks(*a, **k):
        raise AssertionError("a kernel was verified at call time")

    monkeypatch.setattr(OpFamily, "_run", spy)
    monkeypatch.setattr("agentforge.verify.run_checks", no_checks)
    return calls


def _poison(monkeypatch):
    """Every chain the emulator runs answers 7 (a wrong kernel): the output changes where it runs."""
    from agentforge import solution

    monkeypatch.setattr(solution._ChainBound, "run", lambda self, inputs, params, limits=None:
                        [torch.full(s.shape, 7.0) for s in self.graph.output_specs])


def test_a_call_inside_the_range_runs_the_kernel_without_checks_and_outside_is_refused(ranged, ran, monkeypatch):
    from agentforge.torch import UnverifiedProblemError, load_library

    tl = load_library(ranged, namespace="rdu_ranges")
    op, fam = tl.op("rmsnorm_small"), tl.families["rmsnorm_small"]
    x, w = torch.randn(1, 23, 64), torch.randn(64)
    want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    assert torch.allclose(op(x, w), want, atol=1e-4)
    assert ran[-1][1]["SEQ"] == 23 and ran[-1][2] == "verified range SEQ=1..40"
    assert "SEQ=1..40" in fam.describe_verified()
    assert fam.covered((((1, 40, 64), "f32"), ((64,), "f32")))
    assert not fam.covered((((1, 41, 64), "f32"), ((64,), "f32")))
    _poison(monkeypatch)
    assert torch.equal(op(torch.randn(1, 31, 64), w), torch.full((1, 31, 64), 7.0))    # the kernel's answer
    with pytest.raises(UnverifiedProblemError, match="verified ranges SEQ=1..40"):
        op(torch.randn(1, 41, 64), w)


def test_a_compiled_model_offloads_at_a_size_inside_the_range_and_not_outside(ranged, ran, monkeypatch):
    from agentforge.torch import load_library

    load_library(ranged)        # the backend's namespace points at this library
    m = Norm()
    _poison(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seq, inside in ((24, True), (48, False)):
            assert _compiled_is_poisoned(m, seq, {"library": str(ranged)}) == inside, seq
    assert [r[1]["SEQ"] for r in ran] == [24]


class Norm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(1.0 + 0.1 * torch.randn(64))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def _compiled_is_poisoned(m: torch.nn.Module, seq: int, options: dict) -> bool:
    torch._dynamo.reset()
    got = torch.compile(m, backend="agentforge", dynamic=False, options=options)(torch.randn(1, seq, 64))
    torch._dynamo.reset()
    return bool(torch.equal(got, torch.full_like(got, 7.0)))


def test_verify_new_sizes_in_a_compiled_model_finds_the_tasks_sizes_from_the_models_arguments(rms_only, monkeypatch):
    """A [1, S, H] match is keyed with rows flattened for the signature; its task's sizes are found
    from the arguments as the model has them (before: never, so verify_new_sizes offloaded nothing)."""
    from agentforge.torch.ops import OpFamily

    # the kernel's answer is poisoned where the model calls it, not where the task's checks run it
    monkeypatch.setattr(OpFamily, "_run", lambda self, v, args: [torch.full(s.shape, 7.0)
                                                                 for s in v.graph.output_specs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _compiled_is_poisoned(Norm(), 24, {"library": str(rms_only), "verify_new_sizes": True})


# ---------------------------------------------------------------------- symbolic tasks from literal ones

_REGION = '''"""generated"""
import torch


class Model(torch.nn.Module):
    def forward(self, x0):
        v0 = torch.ops.aten.view.default(x0, [{p}, 16])
        v1 = torch.ops.aten.view.default(v0, [1, {p4}, 4, 4])
        return torch.ops.aten.view.default(v1, [{pp}])


def get_inputs():
    return [torch.randn([1, {p}, 16], dtype=torch.float32)]


def get_init_inputs():
    return []
'''


def test_a_region_written_at_three_prompt_lengths_becomes_one_task_symbolic_in_tokens(tmp_path):
    from agentforge.capture import capture_at
    from agentforge.tasks import load_task

    srcs = {p: _REGION.format(p=p, p4=p, pp=p * 16) for p in (16, 17, 18)}
    sym = symbolize_sources(srcs, "TOKENS")
    assert sym is not None and "TOKENS = 16" in sym
    assert "[TOKENS, 16]" in sym and "[16 * TOKENS]" in sym     # the head dim, 16 at TOKENS 16 too, stays 16
    (tmp_path / "region.py").write_text(sym)
    task = load_task(tmp_path / "region.py")
    assert task.sizes == {"TOKENS": 16}
    assert capture_at(task, {"TOKENS": 40}, meta=True).inputs[0].shape == (1, 40, 16)
    assert symbolize_sources({p: _REGION.format(p=p, p4=p, pp=p * p) for p in (16, 17, 18)}) is not None
    assert symbolize_sources({16: srcs[16], 17: srcs[17], 18: srcs[18].replace("float32", "float16")}) is None
    assert symbolize_sources({p: srcs[16] for p in (16, 17, 18)}) is None       # nothing varies
    with pytest.raises(RangeError, match="3 or more"):
        symbolize_sources({16: srcs[16], 17: srcs[17]})


def test_a_models_suite_symbolic_in_tokens_declares_its_range_and_runs_at_other_prompt_lengths(tmp_path, capsys):
    pytest.importorskip("transformers")
    from agentforge.capture import capture_at
    from agentforge.tasks import load_suite

    cfg = tmp_path / "llama.json"
    cfg.write_text(json.dumps(dict(model_type="llama", vocab_size=32, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                   max_position_embeddings=48)))
    assert main(["model-suite", str(cfg), "--out", str(tmp_path / "run"), "--prompt-tokens", "8"]) == 0
    assert "symbolic in TOKENS (1..48)" in capsys.readouterr().out
    tasks = load_suite(tmp_path / "run" / "suite")       # the sidecars' [ranges] are accepted by the loader
    sym = [t for t in tasks if "TOKENS" in t.sizes]
    # own value 9, not 8: at 8 tokens (the head dimension) Q K^T and P V would be one problem
    assert sym and all(t.sizes["TOKENS"] == 9 and sidecar_ranges(t) == {"TOKENS": Range(1, 48)} for t in sym)
    mlp = next(t for t in sym if "mm" in t.name)
    assert capture_at(mlp, {"TOKENS": 37}, meta=True).inputs[0].shape[-2] == 37
    with pytest.raises(RangeError, match="below the prompt length"):
        from agentforge.ranges import symbolic_model_suite
        symbolic_model_suite(str(cfg), tmp_path / "r2", prompt=8, max_tokens=4)


def test_kernels_verified_in_parallel_get_the_records_one_at_a_time_gives(torch_library, ranged, tmp_path):
    """workers=2 verifies two kernels at once, each in a process of its own; the rows keep the
    library's order and the records (points, their outcome and timing) are those of verifying one
    after another (``ranged``: rmsnorm_small over SEQ 1..40 by the command line, one seed)."""
    out = tmp_path / "library"
    shutil.copytree(torch_library, out)
    lib = Library.open(out)
    lib.entries = lib.get("rmsnorm_small") + lib.get("add_rmsnorm_small")
    lib.save()
    rows = verify_library_ranges(Library.open(out), {"SEQ": Range(1, 40)}, workers=2,
                                 cfg=VerifyConfig(machine="sn40l", seeds=(0,)))
    assert [r["op"] for r in rows] == ["rmsnorm_small", "add_rmsnorm_small"] and all(r["verified"] for r in rows)

    def points(folder: Path) -> list:
        (e,) = Library.open(folder).get("rmsnorm_small")
        return [(p["sizes"], p["passed"], p["seconds"], p["seeds"]) for p in e.ranges[0]["points"]]

    assert points(out) == points(ranged)
    (e,) = Library.open(out).get("add_rmsnorm_small")
    assert e.ranges[0]["verified"] and e.ranges[0]["sizes"] == {"SEQ": [1, 40]}
