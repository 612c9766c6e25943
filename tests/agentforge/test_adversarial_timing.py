"""The referee against timing tricks (issue 14, holes 3-5 and the task-level roofline).

Every ``evals/adversarial/timing/<task>__<trick>.asp`` is a kernel that is *correct* for the bundled
task ``evals/suite/<task>.py`` but was credited a speed the machine cannot reach. Its first line
says ``# expect: charged -- <the trick>`` (verified, but timed for what it uses) or
``# expect: verified -- control: ...`` (the honest form of a trick). Each is evaluated at the
task's real sizes, as ``agentforge eval`` does, and its charge is checked against the rule that
closes the hole. Tricks that are rejected outright live in evals/adversarial/ with the other
adversarial kernels (``matmul__accum_replicas.asp``).

Last, the task-level bound: a verified kernel timed faster than the task's own roofline is an
emulator bug, never a score; roofline_fraction is measured against the task's roofline.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import asp_lang
from agentforge.capture import capture_at
from agentforge.scoring import task_roofline, task_roofline_fraction
from agentforge.tasks import load_task
from agentforge.verify import VerifyConfig, evaluate
from asp_lang import timing
from asp_lang.machine import Machine

ROOT = Path(__file__).resolve().parents[2]
ADV = ROOT / "evals" / "adversarial"
TIMING = ADV / "timing"
SUITE = ROOT / "evals" / "suite"
CFG = VerifyConfig(machine="sn40l")
_EXPECT = re.compile(r"^# expect: (charged|verified) -- (.+)$")

KERNELS = sorted(TIMING.glob("*.asp"))


def _task(path: Path) -> Path:
    return SUITE / f"{path.stem.split('__')[0]}.py"


def _evaluate(path: Path):
    return evaluate(_task(path), {"kind": "kernel", "source": path.read_text(), "filename": str(path)}, CFG)


_CACHE: dict[str, object] = {}


def evaluated(name: str):
    """One evaluation per kernel for the whole module (each takes seconds)."""
    if name not in _CACHE:
        _CACHE[name] = _evaluate(TIMING / f"{name}.asp")
    return _CACHE[name]


def test_collection_is_well_formed():
    assert len(KERNELS) >= 4
    for path in KERNELS:
        assert "__" in path.stem and _task(path).is_file(), f"{path.name}: name it <task>__<trick>.asp"
        m = _EXPECT.match(path.read_text().splitlines()[0])
        assert m and len(m.group(2)) > 20, f"{path.name}: first line '# expect: charged|verified -- why'"


@pytest.mark.parametrize("path", KERNELS, ids=[p.stem for p in KERNELS])
def test_every_timing_trick_verifies_and_stays_under_the_task_roofline(path: Path):
    ev = evaluated(path.stem)
    assert ev.verified, ev.reason
    assert 0 < ev.roofline_fraction <= 1
    graph = capture_at(load_task(_task(path)), meta=True)
    roof = task_roofline(graph, asp_lang.load_machine("sn40l"))
    assert ev.roofline_fraction == pytest.approx(roof.seconds / ev.simulated_seconds)


# ------------------------------------------------------------------ hole 3

def test_buffers_across_a_cut_pay_their_hbm_round_trip():
    ev = evaluated("softmax__buffer_across_cut")
    x_bytes = 4096 * 4096 * 4
    # x read once and y written once, plus every buffered row written out and read back
    assert ev.hbm_bytes >= 4 * x_bytes
    control = _evaluate(ADV / "controls" / "softmax__online.asp")
    assert ev.hbm_bytes > control.hbm_bytes + 2 * x_bytes * 0.99


# ------------------------------------------------------------------ hole 4

def test_f32_simd_matmul_is_timed_at_the_f32_peak():
    ev = evaluated("matmul__simd_f32_matmul")
    m = asp_lang.load_machine("sn40l")
    replicas = 500  # its accum's par
    assert ev.flops / ev.simulated_seconds <= m.peak_tflops("f32") * 1e12 * replicas / m.pcu.count * (1 + 1e-9)


# ------------------------------------------------------------------ hole 5

def test_streamify_par_above_the_buffers_ports_buys_nothing():
    trick, banked = evaluated("mul_broadcast__streamify_ports"), evaluated("mul_broadcast__banked")
    # one PMU's ports: ~4.4x slower than the same buffer banked over 16 PMUs (was credited the same)
    assert trick.simulated_seconds > 4 * banked.simulated_seconds
    assert trick.bottleneck.startswith("streamify")
    assert banked.roofline_fraction > 0.95


def test_accumulator_replicas_beyond_the_chip_are_rejected_for_their_sram():
    ev = _evaluate(ADV / "matmul__accum_replicas.asp")
    assert not ev.verified and ev.reason_code == "compile"
    assert "2008 PMUs" in ev.reason and "SRAM" in ev.reason
    assert "matmul__accum_replicas.asp:9:" in ev.error["message"]


# ------------------------------------------------------------------ the task-level bound

def test_the_task_roofline_is_its_io_at_bandwidth_or_its_flops_at_the_best_peak():
    m = asp_lang.load_machine("sn40l")
    mm = task_roofline(capture_at(load_task(SUITE / "matmul.py"), meta=True), m)
    assert mm.limit == "compute" and mm.peak_tflops == pytest.approx(m.peak_tflops("f32"))
    assert mm.flops == 2 * 4096**3
    assert mm.seconds == pytest.approx(mm.flops / (m.peak_tflops("f32") * 1e12))
    bf = task_roofline(capture_at(load_task(SUITE / "gemm_bf16.py"), meta=True), m)
    assert bf.peak_tflops == pytest.approx(m.peak_tflops("bf16"))
    add = task_roofline(capture_at(load_task(SUITE / "add.py"), meta=True), m)
    assert add.limit == "hbm" and add.seconds == pytest.approx(add.hbm_bytes / (m.hbm.bandwidth_gbs * 1e9))


def test_a_time_below_the_task_roofline_is_an_emulator_bug():
    m = asp_lang.load_machine("sn40l")
    graph = capture_at(load_task(SUITE / "matmul.py"), meta=True)
    roof = task_roofline(graph, m).seconds
    assert task_roofline_fraction(graph, m, 2 * roof) == pytest.approx(0.5)
    with pytest.raises(timing.EmulatorError, match="faster than the task's own roofline"):
        task_roofline_fraction(graph, m, 0.9 * roof)


def test_a_timing_model_that_credits_more_than_the_chip_is_caught_by_the_task_bound(monkeypatch):
    """Put holes 4 and 5 back into the emulator (SIMD f32 at the full SIMD rate, one accumulator
    charged for 1000 replicas): the referee still refuses the 1000-replica f32 SIMD matmul, which
    the broken model times below the task's f32 roofline, as an emulator bug."""
    monkeypatch.setattr(Machine, "simd_ops_per_cycle_for", lambda self, dtype: self.simd_ops_per_cycle)
    monkeypatch.setattr(timing, "accumulator_bytes", lambda node, w: 0.0)
    ev = _evaluate(ADV / "matmul__accum_replicas.asp")
    assert not ev.verified and ev.reason_code == "emulator_bug", ev.reason
    assert "faster than the task's own roofline" in ev.reason


def test_a_routed_moe_declares_the_experts_it_may_skip_and_only_that_lowers_its_bound():
    """The dense-masked top-1 MoE multiplies all but one expert per token by a zero gate; its
    sidecar's ``active_fraction = "1/EXPERTS"`` lowers the compute bound to the routed work (so a
    routed kernel is not refused as an emulator bug) and nothing else: bytes stay compulsory."""
    m = asp_lang.load_machine("sn40l")
    task = load_task(SUITE / "moe_layer_top1.py")
    graph = capture_at(task, meta=True)
    assert task.work_fraction() == pytest.approx(1 / task.sizes["EXPERTS"])
    dense, routed = task_roofline(graph, m), task_roofline(graph, m, task.work_fraction())
    assert routed.flops == pytest.approx(dense.flops / task.sizes["EXPERTS"])
    assert routed.hbm_bytes == dense.hbm_bytes and routed.seconds < dense.seconds
    # a time between the two bounds is a fair routed kernel, not an emulator bug
    between = (routed.seconds + dense.seconds) / 2
    assert task_roofline_fraction(graph, m, between, task.work_fraction()) < 1
    with pytest.raises(timing.EmulatorError):
        task_roofline_fraction(graph, m, between)
    assert load_task(SUITE / "matmul.py").work_fraction() == 1.0
