"""Specification of the fast timing model (asp_lang/timing.py): invariants every report keeps.

* simulated time is never below the physical roofline bound;
* fusing moves fewer HBM bytes than the split form of the same computation;
* more ``par`` is never slower while the program fits the chip in one section, and stops
  helping once HBM bandwidth is the bottleneck;
* the same program gives the same numbers (timing and values) every time;
* timing needs only types: a huge problem profiles fast without allocating its data;
* a program bigger than the chip is time-multiplexed in sections (and pays for it); one
  buffer bigger than the chip's SRAM is a ResourceError;
* the bottleneck named is the operator with the most busy cycles, or a memory channel;
* DDR-tier tensors are slower than HBM ones for a memory-bound kernel.
"""

from __future__ import annotations

import math
import re
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import asp_lang
from asp_lang.errors import ResourceError
from asp_lang.machine import load_machine
from asp_lang.timing import allocate, node_units, node_work, roofline

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.asp"))
MACHINES = ("rdu-mini", "sn40l")
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much,
                                                                          HealthCheck.too_slow])


def source(name: str) -> str:
    return (EXAMPLES / f"{name}.asp").read_text()


def compile_src(src: str, machine: str = "sn40l", sizes: dict | None = None, name: str = "k.asp"):
    return asp_lang.compile(src, machine=machine, sizes=sizes, filename=name)


def profile_src(src: str, machine: str = "sn40l", sizes: dict | None = None):
    return asp_lang.profile(compile_src(src, machine, sizes))


def set_par(src: str, stmt: str, par: int) -> str:
    """Set ``par=`` on the statement line starting with ``stmt`` (added when absent)."""
    out, hits = [], 0
    for line in src.splitlines(keepends=True):
        if line.strip().startswith(stmt):
            hits += 1
            code, sep, comment = line.rstrip("\n").partition("  #")
            if "par=" in code:
                code = re.sub(r"par=\d+", f"par={par}", code)
            else:
                assert code.endswith(")"), code
                code = code[:-1] + f", par={par})"
            line = code + (sep + comment if sep else "") + "\n"
        out.append(line)
    assert hits == 1, (stmt, hits)
    return "".join(out)


def line_no(src: str, stmt: str) -> int:
    """The 1-based line of the statement starting with ``stmt``."""
    return next(i for i, s in enumerate(src.splitlines(), 1) if s.strip().startswith(stmt))


def pars_in(src: str) -> list[str]:
    """Statements of the body that take par= (load/store/map/accum/...)."""
    stmts = []
    for line in src.splitlines():
        m = re.match(r"\s*(?:[\w, ]+=\s*)?(load|store|map|accum|scan|flatmap|gather|scatter)\(", line)
        if m and not line.strip().startswith("fn"):
            stmts.append(line.strip().split("(")[0] + "(")
    return stmts


def compulsory_hbm_bytes(prog) -> float:
    """Every parameter read once and every result written once (all examples read every parameter)."""
    return sum(t.nbytes for t in prog.tensors.values() if t.tier == "hbm")


def matmul_flops(prog) -> float:
    return sum(n.fn.cost.mm32 * n.in_types[0].count for n in prog.nodes if n.fn) + \
        sum(n.fn.cost.mm * n.in_types[0].count for n in prog.nodes if n.fn)


def assert_within_roofline(prog, rep):
    m = prog.machine
    assert rep.cycles >= rep.roofline_cycles * (1 - 1e-12)
    assert 0 < rep.roofline_fraction <= 1
    assert rep.roofline_fraction == pytest.approx(rep.roofline_cycles / rep.cycles)
    assert rep.roofline_limit in ("compute", "hbm", "ddr")
    # bounds computed here, independently of timing.roofline: compulsory traffic at full
    # bandwidth, and the matmul flops at the peak rate of every PCU
    assert rep.cycles >= compulsory_hbm_bytes(prog) / m.bytes_per_cycle("hbm") * (1 - 1e-12)
    assert rep.roofline_cycles >= compulsory_hbm_bytes(prog) / m.bytes_per_cycle("hbm") * (1 - 1e-12)
    peak = m.mm_flops_per_cycle("bf16") * m.pcu.count
    assert rep.cycles >= matmul_flops(prog) / peak * (1 - 1e-12)
    # the report is self-consistent
    assert rep.seconds == pytest.approx(rep.cycles / (m.clock_ghz * 1e9))
    assert rep.roofline_seconds == pytest.approx(rep.roofline_cycles / (m.clock_ghz * 1e9))
    assert rep.hbm_bytes >= compulsory_hbm_bytes(prog) * (1 - 1e-12)
    assert rep.hbm_bandwidth_fraction <= 1 + 1e-9  # nothing moves faster than the channel
    assert all(math.isfinite(v) and v >= 0 for v in (rep.cycles, rep.hbm_bytes, rep.ddr_bytes, rep.flops))


# ------------------------------------------------------------------ roofline

@pytest.mark.parametrize("machine", MACHINES)
@pytest.mark.parametrize("name", NAMES)
def test_examples_never_beat_the_roofline(name, machine):
    prog = asp_lang.compile_file(EXAMPLES / f"{name}.asp", machine=machine)
    rep = asp_lang.profile(prog)
    assert_within_roofline(prog, rep)
    roof, limit = roofline(prog)
    assert (roof, limit) == (rep.roofline_cycles, rep.roofline_limit)


def p2(lo: int, hi: int):
    return st.integers(lo, hi).map(lambda e: 2 ** e)


@st.composite
def example_sizes(draw, name: str) -> dict:
    """Sizes at which the example is well formed: tiles divide and leave every tiled axis >= 2."""
    g = lambda lo=1, hi=3: draw(p2(lo, hi))  # a grid count  # noqa: E731
    if name == "vector_add":
        return {"N": 1024 * g(1, 7)}
    if name in ("softmax_3pass", "softmax_online"):
        R, T = draw(p2(0, 3)), draw(p2(4, 9))
        return {"R": R, "T": T, "M": R * g(1, 5), "N": T * g(1, 4)}
    if name in ("layernorm", "rmsnorm"):
        R = draw(p2(0, 3))
        return {"R": R, "M": R * g(1, 5), "N": draw(p2(4, 11))}
    if name in ("gemm", "bmm"):
        TM, TN, TK = draw(p2(3, 7)), draw(p2(3, 7)), draw(p2(3, 7))
        s = {"TM": TM, "TN": TN, "TK": TK, "M": TM * g(1, 2), "N": TN * g(1, 2), "K": TK * g(1, 2)}
        if name == "bmm":
            s["BATCH"] = g(1, 3)
        return s
    if name == "flash_attention":
        BQ, BK = draw(p2(3, 6)), draw(p2(3, 6))
        return {"B": draw(p2(0, 1)), "H": g(1, 2), "BQ": BQ, "BK": BK, "S": max(BQ, BK) * g(1, 2),
                "D": draw(p2(3, 6))}
    if name == "rope_neox":
        return {"S": g(1, 7), "H": draw(p2(0, 3)), "D": draw(p2(1, 6))}
    if name == "moe_top1":
        return {"T": g(1, 6), "D": draw(p2(2, 5)), "E": g(1, 3), "F": draw(p2(2, 6))}
    raise AssertionError(name)


@st.composite
def example_programs(draw):
    """(name, machine, source with random par values, sizes)."""
    name = draw(st.sampled_from(NAMES))
    machine = draw(st.sampled_from(MACHINES))
    src = source(name)
    for stmt in pars_in(src):
        if draw(st.booleans()):
            src = set_par(src, stmt, draw(p2(0, 6)))
    return name, machine, src, draw(example_sizes(name))


def compile_or_reject(src, machine, sizes):
    try:
        return compile_src(src, machine, sizes)
    except ResourceError:
        assume(False)  # does not fit this machine at all: nothing to time


@SETTINGS
@given(example_programs())
def test_generated_programs_never_beat_the_roofline(case):
    name, machine, src, sizes = case
    prog = compile_or_reject(src, machine, sizes)
    assert_within_roofline(prog, asp_lang.profile(prog))


def test_example_sizes_strategy_gives_well_formed_programs():
    """The generator above only produces programs the checker accepts (or that do not fit)."""
    @settings(max_examples=30, deadline=None)
    @given(st.sampled_from(NAMES).flatmap(lambda n: st.tuples(st.just(n), example_sizes(n))))
    def check(case):
        name, sizes = case
        try:
            compile_src(source(name), "sn40l", sizes)
        except ResourceError:
            pass
    check()


# ------------------------------------------------------------------ fusion moves fewer bytes

LAYERNORM_SPLIT = """\
# LayerNorm in two passes: the first computes each row's mean and variance and writes them
# to HBM (an extra result), the second re-reads x and normalises with them.
kernel layernorm_split(x: f32[M, N], w: f32[N], b: f32[N]) -> (y: f32[M, N], stats: f32[M, 2]) {
  sizes M = 256
  sizes N = 1024
  sizes R = 4
  fn moments(t) {
    let mu = mean(t, axis=1)
    let d = t - mu
    return concat(mu, mean(d * d, axis=1), axis=1)
  }
  fn apply(t, s, g, c) {
    let mu = slice(s, axis=1, start=0, stop=1)
    let var = slice(s, axis=1, start=1, stop=2)
    return (t - mu) * rsqrt(var + 1e-05) * g + c
  }
  x1 = load(x, tile=[R, N], par=4)
  st = map(x1, fn=moments, par=8)
  st_a, st_b = copy(st)
  store(stats, st_a)
  x2 = load(x, tile=[R, N], par=4)
  ws = load(w, tile=[N])
  bs = load(b, tile=[N])
  wr = repeat(ws, M / R)
  br = repeat(bs, M / R)
  ys = map(x2, st_b, wr, br, fn=apply, par=8)
  store(y, ys, par=4)
}
"""

GEMM_REUSE = """\
# C = A @ B holding A's row panel on chip: each panel is read from HBM once and streamed
# again for every output tile of its row (bufferize + streamify repeat) instead of re-read.
kernel gemm_reuse(a: f32[M, K], b: f32[K, N]) -> (c: f32[M, N]) {
  sizes M = 512
  sizes N = 512
  sizes K = 512
  sizes TM = 128
  sizes TN = 128
  sizes TK = 128
  fn mac(acc, x, y) = acc + matmul(x, y)
  xa0 = load(a, tile=[TM, TK], par=4)  # [M/TM, K/TK]
  panels = bufferize(xa0, rank=1)  # [M/TM] of buf[K/TK]
  xa = streamify(panels, repeat=N / TN)  # [M/TM, N/TN, K/TK]
  xb = load(b, tile=[TK, TN], order=[1, 0], repeat=M / TM, at=0, par=4)
  cs = accum(xa, xb, rank=1, init=zeros([TM, TN]), fn=mac, par=16)
  store(c, cs, par=4)
}
"""


def _same_results(src_a, src_b, result, sizes=None):
    pa, pb = compile_src(src_a, "sn40l", sizes), compile_src(src_b, "sn40l", sizes)
    inputs = asp_lang.random_inputs(pa, seed=3)
    np.testing.assert_allclose(asp_lang.run(pa, inputs)[result], asp_lang.run(pb, inputs)[result],
                               rtol=1e-5, atol=1e-5)


def test_split_forms_compute_the_same_values():
    _same_results(LAYERNORM_SPLIT, source("layernorm"), "y")
    _same_results(GEMM_REUSE, source("gemm"), "c")
    _same_results(source("softmax_online"), source("softmax_3pass"), "y")


@pytest.mark.parametrize("machine", MACHINES)
def test_softmax_online_moves_fewer_bytes_than_three_passes(machine):
    on = profile_src(source("softmax_online"), machine)
    three = profile_src(source("softmax_3pass"), machine)
    assert on.hbm_bytes < three.hbm_bytes
    if machine == "sn40l":  # one section each: exactly 1 read + 1 write against 3 reads + 1 write
        x = on.sizes["M"] * on.sizes["N"] * 4
        assert on.hbm_bytes == 2 * x
        assert three.hbm_bytes == 4 * x


@SETTINGS
@given(example_sizes("softmax_online"), st.sampled_from(MACHINES))
def test_softmax_online_moves_fewer_bytes_at_any_size(sizes, machine):
    try:
        on = profile_src(source("softmax_online"), machine, sizes)
        three = profile_src(source("softmax_3pass"), machine, sizes)
    except ResourceError:
        assume(False)
    assert on.hbm_bytes < three.hbm_bytes
    assert on.roofline_cycles == three.roofline_cycles  # same compulsory traffic


@pytest.mark.parametrize("machine", MACHINES)
def test_fused_layernorm_moves_fewer_bytes_than_its_split_form(machine):
    fused = profile_src(source("layernorm"), machine)
    split = profile_src(LAYERNORM_SPLIT, machine)
    assert fused.hbm_bytes < split.hbm_bytes
    if machine == "sn40l":
        M, N = fused.sizes["M"], fused.sizes["N"]
        assert split.hbm_bytes - fused.hbm_bytes == M * N * 4 + M * 2 * 4  # x re-read + stats written


@pytest.mark.parametrize("machine", MACHINES)
def test_gemm_with_on_chip_reuse_moves_fewer_bytes(machine):
    reread = profile_src(source("gemm"), machine)
    reuse = profile_src(GEMM_REUSE, machine)
    assert reuse.hbm_bytes < reread.hbm_bytes
    assert reuse.flops == reread.flops
    if machine == "sn40l":
        M, N, K, TM, TN = (reread.sizes[k] for k in ("M", "N", "K", "TM", "TN"))
        a, b, c = M * K * 4, K * N * 4, M * N * 4
        assert reread.hbm_bytes == a * (N // TN) + b * (M // TM) + c
        assert reuse.hbm_bytes == a + b * (M // TM) + c


@SETTINGS
@given(example_sizes("gemm"))
def test_gemm_reuse_moves_fewer_bytes_at_any_tiling(sizes):
    assume(sizes["N"] > sizes["TN"])  # with one column of tiles there is nothing to reuse
    reread = profile_src(source("gemm"), "sn40l", sizes)
    reuse = profile_src(GEMM_REUSE, "sn40l", sizes)
    assert reuse.hbm_bytes < reread.hbm_bytes


# ------------------------------------------------------------------ par

PAR_SWEEPS = [
    ("vector_add", "xc = map("), ("vector_add", "xa = load("), ("vector_add", "store("),
    ("softmax_online", "ys = map("), ("softmax_online", "m, l = accum("), ("softmax_online", "xs = load("),
    ("softmax_3pass", "l = accum("), ("layernorm", "ys = map("), ("rmsnorm", "xs = load("),
    ("gemm", "cs = accum("), ("bmm", "cs = accum("), ("flash_attention", "_, l, acc = accum("),
    ("rope_neox", "ys = map("), ("moe_top1", "h = map("),
]
PARS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


def fitting_source(name: str, machine: str, sizes=None) -> str:
    """The example, with every par lowered to 1 if its own pars need more than one section."""
    src = source(name)
    if len(compile_src(src, machine, sizes).sections) > 1:
        for s in pars_in(src):
            src = set_par(src, s, 1)
    return src


def sweep(name, stmt, machine, sizes=None):
    """(par, report) for par = 1, 2, 4, ... until the operator alone no longer fits."""
    out = []
    base = fitting_source(name, machine, sizes)
    for p in PARS:
        try:
            out.append((p, profile_src(set_par(base, stmt, p), machine, sizes)))
        except ResourceError:
            break
    return out


@pytest.mark.parametrize("machine", MACHINES)
@pytest.mark.parametrize("name,stmt", PAR_SWEEPS)
def test_more_par_is_never_slower_within_one_section(name, stmt, machine):
    runs = [(p, r) for p, r in sweep(name, stmt, machine) if r.sections == 1]
    assert runs, "the example does not fit in one section at any par"
    for (p0, r0), (p1, r1) in zip(runs, runs[1:]):
        assert r1.cycles <= r0.cycles * (1 + 1e-12), f"par {p0} -> {p1}: {r0.cycles} -> {r1.cycles}"
        # par changes how fast, never how much: same traffic and flops
        assert r1.hbm_bytes == r0.hbm_bytes and r1.flops == r0.flops
        # once HBM bandwidth is the bottleneck, more par helps little: it only shortens the
        # pipeline's fill and drain around the HBM-bound steady state
        if r0.bottleneck == "hbm":
            assert r1.bottleneck == "hbm"
            assert r1.cycles == pytest.approx(r0.cycles, rel=0.15)


@pytest.mark.parametrize("name,stmt,machine", [
    ("vector_add", "xc = map(", "sn40l"), ("layernorm", "ys = map(", "sn40l"),
    ("rmsnorm", "xs = load(", "sn40l"), ("softmax_3pass", "l = accum(", "sn40l"),
    ("softmax_online", "xs = load(", "rdu-mini"), ("vector_add", "xc = map(", "rdu-mini"),
])
def test_par_helps_until_hbm_saturates(name, stmt, machine):
    runs = [(p, r) for p, r in sweep(name, stmt, machine) if r.sections == 1]
    first, last = runs[0][1], runs[-1][1]
    assert first.bottleneck != "hbm" and last.bottleneck == "hbm"
    assert last.cycles < first.cycles
    m = load_machine(machine)
    plateau = [r for _, r in runs if r.bottleneck == "hbm"]
    for r in plateau:  # only the fill and drain around the HBM-bound steady state still shrink
        assert r.cycles == pytest.approx(plateau[0].cycles, rel=0.15)
        assert r.cycles >= r.hbm_bytes / m.bytes_per_cycle("hbm")
        assert r.hbm_bandwidth_fraction > 0.25


def test_compute_bound_gemm_scales_with_accum_par():
    """Far from any shared limit, doubling the accumulator's par nearly halves the time."""
    runs = [(p, r) for p, r in sweep("gemm", "cs = accum(", "sn40l") if p <= 64]
    for (p0, r0), (p1, r1) in zip(runs, runs[1:]):
        assert r0.bottleneck == r1.bottleneck == f"accum@{line_no(source('gemm'), 'cs = accum(')}"
        assert r1.cycles == pytest.approx(r0.cycles / 2, rel=0.05)


@SETTINGS
@given(st.sampled_from(PAR_SWEEPS), st.sampled_from(MACHINES), p2(0, 7), p2(0, 7), st.data())
def test_generated_par_increase_is_never_slower_in_one_section(sweep_case, machine, pa, pb, data):
    name, stmt = sweep_case
    sizes = data.draw(example_sizes(name))
    lo, hi = sorted((pa, pb))
    try:
        r_lo = profile_src(set_par(source(name), stmt, lo), machine, sizes)
        r_hi = profile_src(set_par(source(name), stmt, hi), machine, sizes)
    except ResourceError:
        assume(False)
    assume(r_lo.sections == 1 and r_hi.sections == 1)
    assert r_hi.cycles <= r_lo.cycles * (1 + 1e-12)


# ------------------------------------------------------------------ determinism

@pytest.mark.parametrize("name", NAMES)
def test_same_program_same_numbers(name):
    path = EXAMPLES / f"{name}.asp"
    a = asp_lang.compile_file(path, machine="sn40l")
    b = asp_lang.compile_file(path, machine="sn40l")
    ra, ra2, rb = asp_lang.profile(a), asp_lang.profile(a), asp_lang.profile(b)
    assert ra.to_dict() == ra2.to_dict() == rb.to_dict()
    inputs = asp_lang.random_inputs(a, seed=7)
    assert all(np.array_equal(inputs[k], asp_lang.random_inputs(b, seed=7)[k]) for k in inputs)
    out1, out2 = asp_lang.run(a, inputs), asp_lang.run(b, inputs)
    assert out1.keys() == out2.keys()
    for k in out1:
        assert out1[k].dtype == out2[k].dtype and out1[k].shape == out2[k].shape
        assert out1[k].tobytes() == out2[k].tobytes()  # bit-identical, NaNs included
    # running does not change what the timing model says
    assert asp_lang.profile(a).to_dict() == ra.to_dict()


def test_profile_does_not_depend_on_filename_or_comments():
    src = source("softmax_online")
    bare = "\n".join(line.split("  #")[0] for line in src.splitlines() if not line.startswith("#")) + "\n"
    r1 = asp_lang.profile(compile_src(src, name="a.asp")).to_dict()
    r2 = asp_lang.profile(compile_src(bare, name="b.asp")).to_dict()
    # op lines move when comment lines go away; everything else is equal
    for r in (r1, r2):
        r["bottleneck"] = re.sub(r"@\d+", "", r["bottleneck"])
        for o in r["ops"]:
            o["line"] = 0
    assert r1 == r2


# ------------------------------------------------------------------ timing only

def test_huge_softmax_profiles_fast_without_allocating():
    sizes = {"M": 4096, "N": 393216, "R": 4, "T": 2048}
    src = source("softmax_online")
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        prog = compile_src(src, "sn40l", sizes)
        rep = asp_lang.profile(prog)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    x_bytes = 4096 * 393216 * 4  # 6 GiB: allocating even one copy would show
    assert peak < 4 * 2**20, f"profiling allocated {peak / 2**20:.1f} MiB"
    assert elapsed < 2.0
    assert rep.hbm_bytes == 2 * x_bytes
    assert rep.sizes == sizes
    assert_within_roofline(prog, rep)
    assert rep.seconds > x_bytes * 2 / 1.8e12  # at least the time to stream x in and y out


# ------------------------------------------------------------------ sectioning

def test_program_bigger_than_the_chip_is_time_multiplexed():
    m = load_machine("rdu-mini")
    fits = compile_src(source("softmax_online"), "rdu-mini")
    big = compile_src(set_par(source("softmax_online"), "ys = map(", 64), "rdu-mini")
    rf, rb = asp_lang.profile(fits), asp_lang.profile(big)
    assert rf.sections == 1 and rf.reconfig_cycles == 0
    assert not any("time-multiplexed" in n for n in rf.notes)
    assert rb.pcu_allocated > m.pcu.count
    assert rb.sections > 1
    assert rb.reconfig_cycles == (rb.sections - 1) * m.reconfig.cycles > 0
    assert any("time-multiplexed" in n and f"{rb.sections} sections" in n for n in rb.notes)
    assert rb.cycles > rf.cycles
    assert rb.cycles >= rb.reconfig_cycles
    assert rb.hbm_bytes > rf.hbm_bytes  # streams crossing a cut go through HBM
    # every section fits the chip, sections follow program order, every operator is placed once
    assert sorted(i for sec in big.sections for i in sec) == list(range(len(big.nodes)))
    assert [o.section for o in rb.ops] == sorted(o.section for o in rb.ops)
    for sec in big.sections:
        units = [node_units(big.nodes[i], node_work(big.nodes[i]), m) for i in sec]
        assert sum(u.pcus for u in units) <= m.pcu.count
        assert sum(u.pmus for u in units) <= m.pmu.count
        assert sum(u.agcus for u in units) <= m.agcu.count
    assert_within_roofline(big, rb)


def test_sectioned_program_still_computes_the_same_values():
    fits = compile_src(source("softmax_online"), "rdu-mini")
    big = compile_src(set_par(source("softmax_online"), "ys = map(", 64), "rdu-mini")
    inputs = asp_lang.random_inputs(fits, seed=1)
    assert asp_lang.run(fits, inputs)["y"].tobytes() == asp_lang.run(big, inputs)["y"].tobytes()


def test_allocate_is_idempotent():
    prog = compile_src(set_par(source("softmax_online"), "ys = map(", 64), "rdu-mini")
    sections, units, notes = [list(s) for s in prog.sections], dict(prog.units), list(prog.notes)
    prog.notes.clear()
    allocate(prog)
    assert prog.sections == sections and prog.units == units and prog.notes == notes


def test_buffer_bigger_than_sram_is_a_resource_error():
    sizes = {"M": 8, "N": 262144, "R": 4, "T": 2048}  # one row block = 4 MiB, 8 MiB double-buffered
    src = source("softmax_online")
    with pytest.raises(ResourceError) as ei:
        compile_src(src, "rdu-mini", sizes)
    assert ei.value.span.line == line_no(src, "rows = bufferize(")
    assert "rdu-mini" in ei.value.message
    # the same buffer fits the bigger chip
    rep = profile_src(src, "sn40l", sizes)
    assert rep.sections == 1


def test_operator_that_alone_exceeds_the_chip_is_a_resource_error():
    with pytest.raises(ResourceError):
        compile_src(set_par(source("vector_add"), "xc = map(", 65), "rdu-mini")
    with pytest.raises(ResourceError):
        compile_src(set_par(source("vector_add"), "xa = load(", 9), "rdu-mini")


# ------------------------------------------------------------------ bottleneck

def assert_bottleneck_is_busiest(prog, rep):
    m = prog.machine
    busiest = max(o.busy_cycles for o in rep.ops)
    if rep.bottleneck in ("hbm", "ddr"):
        # a tier's time is its bytes at full bandwidth, or its requests (one per stream element
        # of its memory operators) through max_outstanding slots held for its latency
        tier = rep.bottleneck
        total = rep.hbm_bytes if tier == "hbm" else rep.ddr_bytes
        requests = sum(o.elements for o in rep.ops
                       if o.offchip_bytes and prog.nodes[o.index].tensor.tier == tier)
        if tier == "hbm":  # a stream crossing sections: one request per element each way (6.1)
            section = {o.index: o.section for o in rep.ops}
            producer = {out: i for i, n in enumerate(prog.nodes) for out in n.outputs}
            requests += sum(2 * t.count for i, n in enumerate(prog.nodes) for name, t in zip(n.inputs, n.in_types)
                            if section[producer[name]] != section[i])
        tier_time = max(total / m.bytes_per_cycle(tier),
                        requests * m.latency_cycles(tier) / m.mem(tier).max_outstanding)
        assert tier_time >= busiest * (1 - 1e-12)
    else:
        named = [o for o in rep.ops if f"{o.op}@{o.line}" == rep.bottleneck]
        assert named, rep.bottleneck
        assert max(o.busy_cycles for o in named) == pytest.approx(busiest, rel=1e-12)
        if rep.sections == 1:
            assert busiest >= rep.hbm_bytes / m.bytes_per_cycle("hbm") * (1 - 1e-12)
            assert busiest >= rep.ddr_bytes / m.bytes_per_cycle("ddr") * (1 - 1e-12)
    assert rep.cycles >= busiest


@pytest.mark.parametrize("machine", MACHINES)
@pytest.mark.parametrize("name", NAMES)
def test_bottleneck_is_the_busiest_operator_or_memory(name, machine):
    prog = asp_lang.compile_file(EXAMPLES / f"{name}.asp", machine=machine)
    assert_bottleneck_is_busiest(prog, asp_lang.profile(prog))


@SETTINGS
@given(example_programs())
def test_generated_bottleneck_is_the_busiest_operator_or_memory(case):
    name, machine, src, sizes = case
    prog = compile_or_reject(src, machine, sizes)
    assert_bottleneck_is_busiest(prog, asp_lang.profile(prog))


def test_bottleneck_moves_from_compute_to_hbm_with_par():
    slow = profile_src(set_par(source("vector_add"), "xc = map(", 1))
    fast = profile_src(set_par(source("vector_add"), "xc = map(", 64))
    assert slow.bottleneck == f"map@{line_no(source('vector_add'), 'xc = map(')}"
    assert fast.bottleneck == "hbm"


# ------------------------------------------------------------------ memory tiers

def to_ddr(src: str, names) -> str:
    for n in names:
        src = re.sub(rf"\b{n}: (\w+)\[([^\]]*)\]", rf"{n}: \1[\2] @ddr", src, count=1)
    return src


@pytest.mark.parametrize("machine", MACHINES)
@pytest.mark.parametrize("name,tensors", [("vector_add", ("a", "b", "c")), ("softmax_online", ("x", "y")),
                                          ("rmsnorm", ("x", "w", "y"))])
def test_ddr_tensors_are_slower_than_hbm_ones(name, tensors, machine):
    hbm = profile_src(source(name), machine)
    ddr_src = to_ddr(source(name), tensors)
    assert ddr_src.count("@ddr") == len(tensors)
    ddr_prog = compile_src(ddr_src, machine)
    ddr = asp_lang.profile(ddr_prog)
    assert all(t.tier == "ddr" for t in ddr_prog.tensors.values())
    assert ddr.cycles > hbm.cycles
    assert ddr.sections == hbm.sections  # the tier changes no placement
    assert ddr.ddr_bytes > 0
    assert ddr.ddr_bytes + ddr.hbm_bytes == hbm.hbm_bytes  # streams cut by sections still spill to HBM
    if ddr.sections == 1:
        assert ddr.hbm_bytes == 0
    assert ddr.roofline_limit == "ddr"
    assert ddr.roofline_cycles > hbm.roofline_cycles
    m = load_machine(machine)
    assert ddr.cycles >= ddr.ddr_bytes / m.bytes_per_cycle("ddr")
    assert ddr.cycles >= ddr.roofline_cycles


def test_one_ddr_input_slows_a_memory_bound_kernel_down():
    hbm = profile_src(source("vector_add"))
    mixed = profile_src(to_ddr(source("vector_add"), ("a",)))
    assert mixed.cycles > hbm.cycles
    assert mixed.ddr_bytes == 65536 * 4
    assert mixed.hbm_bytes == 2 * 65536 * 4
    assert mixed.bottleneck == "ddr"
