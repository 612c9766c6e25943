"""Specification of the event-level timing model (asp_lang/event.py) and of its agreement with
the fast model (asp_lang/timing.py).

* the two models agree within 15% of total simulated time on every example in docs/examples
  (both presets) and on every kernel of the bundled suite's op-by-op baseline at small sizes;
* neither model ever beats the roofline (bytes at full bandwidth, flops at peak);
* both show back-pressure: a cheap producer feeding an expensive map finishes when the map
  lets it, not at its own pace;
* a FIFO too shallow for the credit round trip (producer's service and latency, the send, the
  consumer's read, the credit's way back) limits its producer in both models, as Little's law
  says, and the event model's chunks never hide it: cutting streams of 10^4 elements into 256
  chunks gives the element-level simulation's time within 2%;
* the event model's bottleneck is measured (its critical path), not copied from the formula;
* the event model honours the allocator's sections and is deterministic, and reachable as
  ``asp profile --model event``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import statistics
from pathlib import Path

import pytest

import asp_lang
from asp_lang import cli
from asp_lang.event import EMULATOR_VERSION, LATENCY, MODELS, profile, run_events, simulate

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.asp"))
TIMING_ONLY = sorted((ROOT / "docs" / "examples" / "timing_only").glob("*.asp"))
MACHINES = ("sn40l", "rdu-mini")
AGREEMENT = 0.15


def disagreement(prog) -> float:
    """|fast / event - 1| for one program."""
    return abs(asp_lang.profile(prog).cycles / simulate(prog).cycles - 1)


# ------------------------------------------------------------------ agreement

@pytest.mark.parametrize("machine", MACHINES)
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_models_agree_on_every_example(path, machine):
    prog = asp_lang.compile_file(path, machine=machine)
    assert disagreement(prog) <= AGREEMENT


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("path", TIMING_ONLY, ids=lambda p: p.stem)
def test_models_agree_on_the_decoder_layer(path, batch):
    prog = asp_lang.compile_file(path, machine="sn40l", sizes={"B": batch})
    assert disagreement(prog) <= AGREEMENT


def test_there_is_a_timing_only_decoder_example():
    assert any(p.stem.startswith("decoder_") for p in TIMING_ONLY)


@functools.cache
def _suite_programs() -> list[tuple[str, object]]:
    """Every kernel of the op-by-op baseline of every bundled task, at its first (small) size set."""
    from agentforge.baseline import build_baseline
    from agentforge.capture import capture_at
    from agentforge.lowering import OpKernel
    from agentforge.tasks import load_suite

    out = []
    for task in load_suite(ROOT / "evals" / "suite"):
        baseline = build_baseline(capture_at(task, task.resolved_size_sets()[0], meta=True), "sn40l")
        for i, step in enumerate(baseline.steps):
            if isinstance(step, OpKernel):
                out.append((f"{task.name}/{step.node}", baseline.program(i, step)))
    return out


@pytest.mark.slow
def test_models_agree_on_every_suite_baseline_kernel():
    programs = _suite_programs()
    assert len(programs) > 100
    off = {name: disagreement(prog) for name, prog in programs}
    worst = max(off, key=off.get)
    assert off[worst] <= AGREEMENT, f"{worst}: {off[worst]:.1%}"
    assert statistics.median(off.values()) <= 0.05


# ------------------------------------------------------------------ physical bounds

@pytest.mark.parametrize("machine", MACHINES)
@pytest.mark.parametrize("path", EXAMPLES + TIMING_ONLY, ids=lambda p: p.stem)
def test_neither_model_beats_the_roofline(path, machine):
    prog = asp_lang.compile_file(path, machine=machine)
    m = prog.machine
    hbm_params = sum(t.nbytes for t in prog.tensors.values() if t.tier == "hbm")
    mm = sum((n.fn.cost.mm + n.fn.cost.mm32) * n.in_types[0].count for n in prog.nodes if n.fn)
    for rep in (asp_lang.profile(prog), simulate(prog)):
        assert rep.cycles >= hbm_params / m.bytes_per_cycle("hbm") * (1 - 1e-9)
        assert rep.cycles >= mm / (m.mm_flops_per_cycle("bf16") * m.pcu.count) * (1 - 1e-9)
        assert rep.cycles >= rep.roofline_cycles * (1 - 1e-9)
        assert rep.hbm_bandwidth_fraction <= 1 + 1e-9
        assert 0 < rep.roofline_fraction <= 1


# ------------------------------------------------------------------ back-pressure

SLOW_CONSUMER = """
kernel slow_consumer(x: f32[N]) -> (y: f32[N]) {
  sizes N = 4194304
  fn heavy(t) = exp(sin(cos(exp(tanh(sigmoid(t))))))
  xs = load(x, tile=[1024], par=8)
  ys = map(xs, fn=heavy)
  store(y, ys, par=8)
}
"""


@pytest.mark.parametrize("model", sorted(MODELS))
def test_a_slow_consumer_paces_its_producer(model):
    prog = asp_lang.compile(SLOW_CONSUMER, machine="sn40l", filename="slow.asp")
    rep = profile(prog, model)
    load, mapped, _ = rep.ops
    assert mapped.busy_cycles > 20 * load.busy_cycles  # the load alone would be done early
    # ... but it can run ahead of the map by no more than the FIFO between them and the
    # reads in flight (4096 tiles here, against a few hundred in flight)
    assert load.finish_cycles >= 0.9 * mapped.finish_cycles
    assert load.finish_cycles > 10 * load.busy_cycles
    assert rep.cycles >= mapped.busy_cycles


def test_without_a_slow_consumer_the_producer_finishes_early():
    """The same load feeding a cheap map is not held back (the test above can fail)."""
    src = SLOW_CONSUMER.replace("exp(sin(cos(exp(tanh(sigmoid(t))))))", "t + 1")
    rep = simulate(asp_lang.compile(src, machine="sn40l", filename="fast.asp"))
    load, mapped, store = rep.ops
    assert load.finish_cycles < store.finish_cycles


# ------------------------------------------------------------------ the simulator itself

def test_event_report_has_the_fast_reports_fields():
    prog = asp_lang.compile_file(ROOT / "docs" / "examples" / "softmax_online.asp")
    fast, event = asp_lang.profile(prog), simulate(prog)
    assert fast.to_dict().keys() == event.to_dict().keys()
    assert event.emulator == EMULATOR_VERSION != fast.emulator
    assert event.hbm_bytes == pytest.approx(fast.hbm_bytes)
    assert event.flops == fast.flops


def test_event_model_is_deterministic():
    prog = asp_lang.compile_file(ROOT / "docs" / "examples" / "moe_top1.asp")
    assert simulate(prog).to_dict() == simulate(prog).to_dict()


# ------------------------------------------------------------------ chunks and credits

VECTOR_ADD = """
kernel va(a: f32[N], b: f32[N]) -> (c: f32[N]) {
  sizes N = 4194304
  fn add(x, y) = x + y
  xa = load(a, tile=[256], par=2)
  xb = load(b, tile=[256], par=2)
  xc = map(xa, xb, fn=add, par=4)
  store(c, xc, par=2)
}
"""
ELEMENT_LEVEL = 10**9  # max_chunks: one chunk per stream element, as DAM simulates


def _big_programs():
    """Programs whose streams have 10^4 elements or more (256 chunks of 64 or more)."""
    ex = ROOT / "docs" / "examples"
    yield "vector_add_tile256", asp_lang.compile(VECTOR_ADD, machine="sn40l")
    yield "softmax_online", asp_lang.compile_file(ex / "softmax_online.asp", machine="sn40l", sizes={"M": 16384})
    yield "layernorm", asp_lang.compile_file(ex / "layernorm.asp", machine="sn40l", sizes={"M": 65536})
    yield "rope_neox", asp_lang.compile_file(ex / "rope_neox.asp", machine="sn40l", sizes={"S": 16384})
    yield "softmax_3pass_rdu_mini", asp_lang.compile_file(ex / "softmax_3pass.asp", machine="rdu-mini", sizes={"M": 16384})


BIG = dict(_big_programs())


@pytest.mark.parametrize("name", sorted(BIG))
def test_chunks_keep_the_element_level_time(name):
    """256 chunks of 64 or more elements give what simulating every element gives: a chunk
    carries no FIFO room the machine does not have."""
    prog = BIG[name]
    assert max(t.count for t in prog.streams.values()) >= 64 * 256  # coarse and fine really differ
    chunked, element = simulate(prog).cycles, simulate(prog, max_chunks=ELEMENT_LEVEL).cycles
    assert chunked == pytest.approx(element, rel=0.02)
    assert simulate(prog, max_chunks=64).cycles == pytest.approx(element, rel=0.03)
    assert asp_lang.profile(prog).cycles == pytest.approx(element, rel=AGREEMENT)


# the op-by-op baseline's `cat` of rope_neox at 16k rows as it was lowered before the yardstick fix
# (issue 17: the baseline now moves 64 KiB tiles): 128-byte tiles, many more than any chunk budget
SMALL_TILE_CAT = """
kernel k_cat(in0: f32[16384, 32, 1], in1: f32[16384, 32, 1]) -> (out0: f32[16384, 64, 1]) {
  fn f0(x0, x1) = concat(x0, x1, axis=0)
  s1 = load(in0, tile=[1, 32, 1], par=4)
  s2 = load(in1, tile=[1, 32, 1], par=4)
  s3 = map(s1, s2, fn=f0, par=8)
  store(out0, s3, par=4)
}
"""


@pytest.mark.slow
def test_chunks_keep_the_element_level_time_on_a_suite_cat_kernel():
    """A `cat` of 16k rows in 128-byte tiles (the op-by-op baseline's of rope_neox before issue
    17): the map's FIFO to the store too shallow for the round trip."""
    prog = asp_lang.compile(SMALL_TILE_CAT, asp_lang.load_machine("sn40l"), filename="k_cat.asp")
    assert max(t.count for t in prog.streams.values()) >= 64 * 256
    element = simulate(prog, max_chunks=ELEMENT_LEVEL).cycles
    assert simulate(prog).cycles == pytest.approx(element, rel=0.02)
    assert asp_lang.profile(prog).cycles == pytest.approx(element, rel=AGREEMENT)


def _with_network(machine: str, **changes):
    m = asp_lang.load_machine(machine)
    return dataclasses.replace(m, network=dataclasses.replace(m.network, **changes))


@pytest.mark.parametrize("model", sorted(MODELS))
def test_a_fifo_too_shallow_for_the_round_trip_limits_its_producer(model):
    """The map issues a 1 KiB tile every 4 cycles (par=4, PMU-bound), but each tile holds one of
    the FIFO's 4 credits for 4 (its service) + 16 (pipeline) + 1 (send) + 2 (the store reads it)
    + 1 (the credit back) = 24 cycles: 4 tiles per 24 cycles, not per 16 (Little's law). Twice the
    FIFO depth covers the round trip."""
    shallow = asp_lang.compile(VECTOR_ADD, _with_network("sn40l"))
    m = shallow.machine
    tiles, rtt = 16384, 4 + m.pcu.latency_cycles + 2 * m.network.send_latency_cycles + 2
    rep = profile(shallow, model)
    assert rep.cycles == pytest.approx(tiles * rtt / m.network.fifo_depth, rel=0.03)
    assert rep.bottleneck == "map@7"
    deep = profile(asp_lang.compile(VECTOR_ADD, _with_network("sn40l", fifo_depth=8)), model)
    assert deep.cycles == pytest.approx(tiles * 4, rel=0.03)  # the map's own pace
    slow_wires = profile(asp_lang.compile(VECTOR_ADD, _with_network("sn40l", send_latency_cycles=5)), model)
    assert slow_wires.cycles == pytest.approx(tiles * (rtt + 8) / m.network.fifo_depth, rel=0.03)


# ------------------------------------------------------------------ measured, not copied

def _cases():
    ex = ROOT / "docs" / "examples"
    return {
        "gemm": (asp_lang.compile_file(ex / "gemm.asp", machine="sn40l"), "accum@13"),
        "moe_top1": (asp_lang.compile_file(ex / "moe_top1.asp", machine="rdu-mini"), "map@32"),
        "vector_add_rdu_mini": (asp_lang.compile_file(ex / "vector_add.asp", machine="rdu-mini"), "hbm"),
        "softmax_online_rdu_mini": (asp_lang.compile_file(ex / "softmax_online.asp", machine="rdu-mini"), "hbm"),
        "decoder_b16": (asp_lang.compile_file(TIMING_ONLY[0], machine="sn40l", sizes={"B": 16}), "hbm"),
        "vector_add_tile256": (asp_lang.compile(VECTOR_ADD, machine="sn40l"), "map@7"),
    }


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_both_models_name_a_clear_bottleneck(name):
    prog, expected = CASES[name]
    assert simulate(prog).bottleneck == expected
    assert asp_lang.profile(prog).bottleneck == expected


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_event_bottleneck_is_its_critical_paths_largest_share(name):
    """The event report's bottleneck and PCU utilisation come from the simulation: the critical
    path (walked back from the last result) adds up to each section's time, and the bottleneck is
    where it spent longest; PCU busy is the service of the compute steps that ran."""
    prog, _ = CASES[name]
    r = run_events(prog)
    for crit, cycles in zip(r.critical, r.section_cycles):
        assert sum(crit.values()) == pytest.approx(cycles, rel=1e-6)
    shares = {k: v for crit in r.critical for k, v in crit.items() if k != LATENCY}
    rep = simulate(prog)
    assert rep.bottleneck == max(shares, key=shares.get)
    pcus = {o.index: o.pcus for o in rep.ops}
    busy = sum(t.busy * pcus[t.index] for t in r.traces if t.index is not None)
    assert rep.pcu_utilisation == pytest.approx(busy / (r.cycles * prog.machine.pcu.count))


def test_the_event_bottleneck_can_differ_from_the_formula():
    """softmax_online on sn40l: the formula names HBM (its traffic is the largest term), but the
    loads prefetch the row in the shadow of latency and the simulated critical path runs through
    the load's AGCUs and latencies: the event model says what it measured."""
    prog = asp_lang.compile_file(ROOT / "docs" / "examples" / "softmax_online.asp", machine="sn40l")
    assert asp_lang.profile(prog).bottleneck == "hbm"
    assert simulate(prog).bottleneck != "hbm"


def test_sections_run_one_after_another_with_spills_through_hbm():
    prog = asp_lang.compile_file(ROOT / "docs" / "examples" / "gemm.asp", machine="rdu-mini")
    assert len(prog.sections) == 2
    r = run_events(prog)
    assert r.cycles == pytest.approx(sum(r.section_cycles) + prog.machine.reconfig.cycles)
    spills = [t for t in r.traces if t.index is None]
    assert {t.op.split()[0] for t in spills} == {"spill-store", "spill-load"}
    rep = simulate(prog)
    assert rep.sections == 2 and rep.hbm_bytes == pytest.approx(asp_lang.profile(prog).hbm_bytes)


def test_small_tiles_are_limited_by_outstanding_requests():
    """4-byte tiles cannot use HBM's bandwidth: each request holds a slot for the latency."""
    src = """
kernel tiny_tiles(x: f32[N]) -> (y: f32[N]) {
  sizes N = 16384
  xs = load(x, tile=[1], par=8)
  store(y, xs, par=8)
}
"""
    prog = asp_lang.compile(src, machine="sn40l")
    m = prog.machine
    slots = 2 * 16384 * m.latency_cycles("hbm") / m.hbm.max_outstanding
    for rep in (asp_lang.profile(prog), simulate(prog)):
        assert rep.cycles >= slots
        assert rep.hbm_bandwidth_fraction < 0.05


def test_unknown_model_is_a_clear_error():
    prog = asp_lang.compile_file(ROOT / "docs" / "examples" / "vector_add.asp")
    with pytest.raises(ValueError, match="unknown timing model 'gpu'.*fast, event"):
        profile(prog, "gpu")


# ------------------------------------------------------------------ the command line

def test_cli_profile_with_the_event_model(capsys):
    path = ROOT / "docs" / "examples" / "vector_add.asp"
    assert cli.main(["profile", str(path), "--timing-only", "--model", "event", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["emulator"] == EMULATOR_VERSION
    assert cli.main(["profile", str(path), "--timing-only", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["emulator"] != EMULATOR_VERSION


def test_cli_rejects_an_unknown_model(capsys):
    path = ROOT / "docs" / "examples" / "vector_add.asp"
    with pytest.raises(SystemExit) as e:
        cli.main(["profile", str(path), "--model", "gpu"])
    assert e.value.code == 2
    assert "invalid choice: 'gpu'" in capsys.readouterr().err
