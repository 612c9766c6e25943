"""The event-level timing model of the emulated RDU: a discrete-event simulation in the style
of DAM (each operator a process with its own local clock, talking over bounded FIFO channels).

Why a second model: the fast model (``timing.py``) is a formula. It is only as good as its
assumptions (every operator of a section streams at the bottleneck's pace, fill latency is a
sum along the longest path). This model makes none of them: operators block on empty input
channels and on full output channels (back-pressure), compute units issue at their initiation
interval and deliver after their pipeline depth, and HBM / DDR serve requests in time order at
their bandwidth, after their latency, with a cap on outstanding requests. Agreement between the
two (docs/fidelity.md) is what makes the fast model trustworthy.

Granularity. Simulating every tile would cost seconds per kernel at real sizes, so every
stream is cut into at most ``max_chunks`` chunks of consecutive elements, and a chunk is
treated as a *fluid*: it is described by the time its first and its last element arrive, and a
consumer may start on a chunk when its first element is there (cut-through), finishing no
earlier than one element after its last. Within an operator, the i-th output chunk needs its
inputs up to the same fraction of their length (an ``accum`` chunk needs whole groups, a
``repeat`` chunk re-reads a part of one input chunk). Channel capacity is the FIFO depth in
elements, but never less than two chunks (a chunk stands for many elements). A reconvergent
graph whose FIFOs are too shallow to hold a whole group would deadlock; the simulator then
deepens the blocked FIFO, as a compiler inserts a skew buffer, and says so in the notes.

Sections run one after another, as the allocator decided: a stream that crosses a section
boundary is written to HBM by the producing section and read back by the consuming one.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Callable

from .machine import Machine
from .ops import Node, OpWork
from .timing import (EmulatorError, OpTiming, Report, _busy, _edge_bytes, node_units, node_work,
                     profile as fast_profile, roofline)

EMULATOR_VERSION = "asp-emu 0.1 (event model)"
MAX_CHUNKS = 256          # chunks per stream: ~1% of a stream's time per chunk of fill error
SEND_LATENCY_CYCLES = 1   # assumption: one mesh hop between two units
_EPS = 1e-9


@dataclass
class _Chunk:
    first: float   # arrival of its first element at the consumer
    last: float    # arrival of its last element


@dataclass
class _Chan:
    """A bounded FIFO from one process to another, in chunks."""
    name: str
    count: float           # stream elements
    k: int                 # chunks
    cap: int               # capacity in chunks
    elem_bytes: float
    chunks: list[_Chunk] = field(default_factory=list)
    released: list[float] = field(default_factory=list)  # when the consumer let go of each chunk
    producer: "_Proc | None" = None
    consumer: "_Proc | None" = None
    grown: bool = False


@dataclass
class _Proc:
    """One operator (or a spill to / from HBM) as a process with its own clock."""
    name: str
    index: int | None      # node index in the program; None for a spill
    kind: str              # compute | route | buffer | shape | mem | spill_store | spill_load
    k: int                 # steps (output chunks; input chunks for a sink)
    busy: float            # busy cycles in all (the unit's initiation interval x elements)
    latency: float         # pipeline depth (cycles from issue to result)
    inputs: list[_Chan]
    outputs: list[_Chan]
    offchip_bytes: float = 0.0
    tier: str = "hbm"
    req_bytes: float = 0.0  # bytes of one memory request (a tile)
    inflight: int = 0       # chunks a memory reader may have requested beyond its FIFO's room
    step: int = 0
    free: float = 0.0      # when the unit can take the next step
    start: float = math.inf
    finish: float = 0.0    # its last result delivered
    pending: float | None = None

    @property
    def done(self) -> bool:
        return self.step >= self.k


@dataclass
class OpTrace:
    """When one operator ran in the event model (cycles from the start of its section)."""
    index: int | None
    op: str
    section: int
    start: float
    finish: float
    busy: float


@dataclass
class EventResult:
    """Everything one event simulation measured, before it is summarised as a Report."""
    cycles: float
    section_cycles: list[float]
    traces: list[OpTrace]
    hbm_bytes: float
    ddr_bytes: float
    tier_busy: list[dict[str, float]]
    notes: list[str]
    events: int


def _chunks(count: float, max_chunks: int) -> int:
    return max(1, min(max_chunks, int(round(count))))


class _Memory:
    """One off-chip tier, two fluid resources served in time order: its bandwidth (bytes per
    cycle) and its request slots (``max_outstanding`` requests, each held for the latency: at
    most ``max_outstanding / latency`` requests start per cycle, so small tiles cannot reach
    full bandwidth). Data is done when both have served it; it arrives a latency later."""

    def __init__(self, m: Machine, tier: str):
        mem = m.mem(tier)
        self.bytes_per_cycle = m.bytes_per_cycle(tier)
        self.latency = m.latency_cycles(tier)
        self.cycles_per_request = self.latency / mem.max_outstanding
        self.free = 0.0
        self.req_free = 0.0
        self.bytes = 0.0
        self.busy = 0.0

    def serve(self, issue: float, nbytes: float, req_bytes: float) -> tuple[float, float]:
        """(service start, data done) of a transfer of ``nbytes`` in requests of ``req_bytes``."""
        start = max(self.free, issue)
        self.free = start + nbytes / self.bytes_per_cycle
        done = self.free
        if req_bytes > 0 and self.cycles_per_request > 0:
            rstart = max(self.req_free, issue)
            self.req_free = rstart + nbytes / req_bytes * self.cycles_per_request
            done = max(done, self.req_free)
        self.bytes += nbytes
        self.busy += nbytes / self.bytes_per_cycle
        return start, done


class _Sim:
    """One section's processes and channels, and the event loop that runs them."""

    def __init__(self, procs: list[_Proc], chans: list[_Chan], m: Machine):
        self.procs = procs
        self.chans = chans
        self.m = m
        self.mem = {"hbm": _Memory(m, "hbm"), "ddr": _Memory(m, "ddr")}
        self.heap: list[tuple[float, int, int]] = []
        self.seq = 0
        self.events = 0
        self.notes: list[str] = []
        self._by_id = {id(p): p for p in procs}

    def wake(self, p: _Proc, t: float) -> None:
        if p.done or (p.pending is not None and p.pending <= t):
            return
        p.pending = t
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, id(p)))

    def run(self) -> float:
        for p in self.procs:
            self.wake(p, 0.0)
        now = 0.0
        while True:
            while self.heap:
                t, _, pid = heapq.heappop(self.heap)
                p = self._by_id[pid]
                if p.pending != t:
                    continue
                p.pending = None
                now = t
                self.events += 1
                self._advance(p, now)
            if all(p.done for p in self.procs):
                break
            if not self._unblock(now):
                stuck = ", ".join(f"{p.name} at step {p.step}/{p.k}" for p in self.procs if not p.done)
                raise EmulatorError(f"event model deadlocked ({stuck}): emulator bug")
        return max((p.finish for p in self.procs), default=0.0)

    def _unblock(self, now: float) -> bool:
        """Deepen the first full FIFO whose producer is stuck (a reconvergent path whose other
        branch waits for a whole group): what a compiler's skew buffer does."""
        for c in self.chans:
            p = c.producer
            if p is None or p.done or c.consumer is None:
                continue
            if p.step - c.cap >= len(c.released):
                c.cap = max(c.cap * 2, p.step - len(c.released) + 2)
                if not c.grown:
                    self.notes.append(f"stream '{c.name}': FIFO deepened to hold a whole group "
                                      f"(a reconvergent path would deadlock otherwise)")
                c.grown = True
                self.wake(p, now)
                return True
        return False

    # ----------------------------------------------------------------- one step of a process

    def _advance(self, p: _Proc, now: float) -> None:
        while not p.done:
            j = p.step
            begin = end = 0.0
            for c in p.inputs:
                hi = (j + 1) * c.k  # this step needs positions up to hi / p.k (in chunks)
                need = -(-hi // p.k) - 1
                if len(c.chunks) <= need:
                    self._consume_early(p, c, need, now)
                    return  # woken again when the chunk is produced
                begin = max(begin, _at(c, j * c.k, p.k, lo=True))
                end = max(end, _at(c, hi, p.k, lo=False))
            space = 0.0
            for c in p.outputs:
                free_idx = j - c.cap - p.inflight
                if c.consumer is not None and free_idx >= 0:
                    if len(c.released) <= free_idx:
                        return
                    space = max(space, c.released[free_idx])
            s = max(p.free, begin, space, now)
            if s > now + _EPS:
                self.wake(p, s)
                return
            self._fire(p, s, end)

    def _consume_early(self, p: _Proc, c: _Chan, need: int, now: float) -> None:
        """A step that needs many input chunks (a whole group) takes them as they come: free
        the ones already here, or the producer could never send the rest."""
        upto = min(len(c.chunks), need)
        if len(c.released) >= upto:
            return
        while len(c.released) < upto:
            ch = c.chunks[len(c.released)]
            c.released.append(max(ch.last, p.free, now))
        if c.producer is not None:
            self.wake(c.producer, now)

    def _fire(self, p: _Proc, s: float, end: float) -> None:
        j = p.step
        busy = p.busy / p.k
        per_elem = busy / max(1.0, _elems(p))
        out_elems = max(1.0, (p.outputs[0].count / p.k) if p.outputs else 1.0)
        if p.kind in ("mem", "spill_store", "spill_load"):
            nbytes = p.offchip_bytes / p.k
            mem = self.mem[p.tier]
            svc, data = mem.serve(s, nbytes, p.req_bytes)
            # the AGCU issues at its own pace (a store as its data arrives) and keeps issuing
            # while earlier requests are in flight; the data is done when the tier has served it
            f = s + busy
            if p.inputs:
                f = max(f, end + per_elem)
            p.free = f
            done = max(data, f)
            lat = mem.latency
            first = svc + (done - svc) / out_elems + lat
            last = done + lat
        else:
            f = max(s + busy, end + per_elem)
            p.free = f
            first = s + (f - s) / out_elems + p.latency
            last = f + p.latency
        p.start = min(p.start, s)
        for c in p.inputs:  # release the input chunks this step finished with
            lo, hi = j * c.k // p.k, (j + 1) * c.k // p.k - 1
            span = (j + 1) * c.k - j * c.k
            for ci in range(max(lo, len(c.released)), hi + 1):
                frac = ((ci + 1) * p.k - j * c.k) / span
                c.released.append(s + (f - s) * frac)
            if c.producer is not None:
                self.wake(c.producer, s)
        send = SEND_LATENCY_CYCLES if p.outputs else 0.0
        for c in p.outputs:
            c.chunks.append(_Chunk(first + send, last + send))
            if c.consumer is not None:
                self.wake(c.consumer, s)
            else:
                c.released.append(last)
        p.finish = max(p.finish, last + send)
        p.step += 1


def _at(c: _Chan, pos_num: int, den: int, lo: bool) -> float:
    """When position ``pos_num / den`` (in chunks) of channel ``c`` arrives: interpolated inside
    a chunk between its first and last element (a chunk is a fluid)."""
    if lo:
        ci = pos_num // den
        frac = (pos_num - ci * den) / den
    else:
        ci = -(-pos_num // den) - 1
        frac = (pos_num - ci * den) / den
    ch = c.chunks[ci]
    return ch.first + (ch.last - ch.first) * frac


def _elems(p: _Proc) -> float:
    """Elements one step works on (for the one-element-after-the-last-input bound)."""
    if p.inputs:
        return max(c.count for c in p.inputs) / p.k
    if p.outputs:
        return p.outputs[0].count / p.k
    return 1.0


# ---------------------------------------------------------------- building a section

def _proc_for(node: Node, w: OpWork, m: Machine, busy: float, ins: list[_Chan], outs: list[_Chan]) -> _Proc:
    if outs:
        k = outs[0].k
    else:
        k = max(c.k for c in ins)
    lat = {"compute": m.pcu.latency_cycles, "route": m.network.route_cycles_per_element}.get(w.kind, 0.0)
    p = _Proc(f"{node.op}@{node.call.span.line}", node.index, w.kind, k, busy, float(lat), ins, outs,
              offchip_bytes=w.offchip_bytes, tier=w.tier)
    if w.kind == "mem":
        t = node.out_types[0] if node.out_types else node.in_types[-1]
        p.req_bytes = _edge_bytes(t.elem)
        if outs:
            p.inflight = _inflight(m, w.tier, outs[0])
    return p


def _inflight(m: Machine, tier: str, c: _Chan) -> int:
    """Chunks a reader may have in flight beyond its FIFO: enough requests (one per element)
    to cover the tier's latency at full bandwidth, and never more than its request slots."""
    elems = min(m.mem(tier).max_outstanding,
                math.ceil(m.latency_cycles(tier) * m.bytes_per_cycle(tier) / max(c.elem_bytes, 1.0)))
    return math.ceil(elems * c.k / max(c.count, 1.0))


def _build_section(prog, sec: list[int], works: list[OpWork], units, max_chunks: int):
    m = prog.machine
    in_sec = set(sec)
    producer = {o: i for i, n in enumerate(prog.nodes) for o in n.outputs if o != "_"}
    consumer = {name: i for i, n in enumerate(prog.nodes) for name in n.inputs}
    chans: dict[str, _Chan] = {}
    procs: list[_Proc] = []

    def chan(name: str, t) -> _Chan:
        if name not in chans:
            k = _chunks(t.count, max_chunks)
            eb = _edge_bytes(t.elem)
            cap = max(2, math.ceil(m.network.fifo_depth * k / max(t.count, 1.0)))
            chans[name] = _Chan(name, t.count, k, cap, eb)
        return chans[name]

    node_procs: dict[int, _Proc] = {}
    for i in sec:
        node = prog.nodes[i]
        ins = [chan(n, t) for n, t in zip(node.inputs, node.in_types)]
        outs = [chan(f"{n}" if n != "_" else f"_{i}.{j}", t) for j, (n, t) in enumerate(zip(node.outputs, node.out_types))]
        busy, _ = _busy(node, works[i], m, units[i])
        p = _proc_for(node, works[i], m, busy, ins, outs)
        if node.op == "bufferize":
            for c in outs:
                c.cap = 2  # double-buffered: two buffers, whatever the FIFO depth
        node_procs[i] = p
        procs.append(p)
        for c in ins:
            c.consumer = p
        for c in outs:
            c.producer = p
    for name, c in chans.items():
        src = producer.get(name)
        if c.producer is None and src is not None and src not in in_sec:  # read back a spilled stream
            t = prog.streams[name]
            p = _Proc(f"spill-load {name}", None, "spill_load", c.k, 0.0, 0.0, [], [c],
                      offchip_bytes=t.count * _edge_bytes(t.elem), req_bytes=_edge_bytes(t.elem),
                      inflight=_inflight(m, "hbm", c))
            c.producer = p
            procs.append(p)
        dst = consumer.get(name)
        if c.consumer is None and dst is not None and dst not in in_sec:  # spill it to HBM
            t = prog.streams[name]
            p = _Proc(f"spill-store {name}", None, "spill_store", c.k, 0.0, 0.0, [c], [],
                      offchip_bytes=t.count * _edge_bytes(t.elem), req_bytes=_edge_bytes(t.elem))
            c.consumer = p
            procs.append(p)
    return procs, list(chans.values()), node_procs


def run_events(prog, max_chunks: int = MAX_CHUNKS) -> EventResult:
    """Simulate ``prog`` section by section; the raw measurements (see ``simulate``)."""
    if max_chunks < 1:
        raise ValueError(f"max_chunks must be positive, got {max_chunks}")
    m = prog.machine
    works = [node_work(n) for n in prog.nodes]
    units = [node_units(n, w, m) for n, w in zip(prog.nodes, works)]
    section_cycles: list[float] = []
    traces: list[OpTrace] = []
    tier_busy: list[dict[str, float]] = []
    hbm = ddr = 0.0
    notes: list[str] = []
    events = 0
    for s, sec in enumerate(prog.sections):
        procs, chans, _ = _build_section(prog, sec, works, units, max_chunks)
        sim = _Sim(procs, chans, m)
        t = sim.run()
        events += sim.events
        section_cycles.append(t)
        hbm += sim.mem["hbm"].bytes
        ddr += sim.mem["ddr"].bytes
        tier_busy.append({k: v.busy for k, v in sim.mem.items()})
        notes += [f"section {s}: {n}" if len(prog.sections) > 1 else n for n in sim.notes]
        for p in procs:
            op = prog.nodes[p.index].op if p.index is not None else p.name
            traces.append(OpTrace(p.index, op, s, 0.0 if p.start == math.inf else p.start, p.finish, p.busy))
    total = sum(section_cycles) + (len(prog.sections) - 1) * m.reconfig.cycles
    return EventResult(max(total, 1.0), section_cycles, traces, hbm, ddr, tier_busy, notes, events)


def simulate(prog, max_chunks: int = MAX_CHUNKS) -> Report:
    """Time ``prog`` with the event model: a Report with the same fields as the fast model's.

    Needs only the checked types (no data). ``max_chunks`` bounds the chunks per stream
    (more is finer and slower)."""
    m = prog.machine
    r = run_events(prog, max_chunks)
    works = [node_work(n) for n in prog.nodes]
    units = [node_units(n, w, m) for n, w in zip(prog.nodes, works)]
    section_of = {i: s for s, sec in enumerate(prog.sections) for i in sec}
    roof, roof_limit = roofline(prog)
    if r.cycles < roof * (1 - 1e-9):
        raise EmulatorError(f"simulated {r.cycles:.0f} cycles beat the roofline bound {roof:.0f}: emulator bug")
    ops: list[OpTiming] = []
    pcu_busy = 0.0
    busiest = ("", -1.0)
    for s, sec in enumerate(prog.sections):
        cands = {f"{tr.op}@{prog.nodes[tr.index].call.span.line}": tr.busy
                 for tr in r.traces if tr.section == s and tr.index is not None}
        cands.update(r.tier_busy[s])
        name = max(cands, key=cands.get)
        if cands[name] > busiest[1]:
            busiest = (name, cands[name])
    finish = {tr.index: tr.finish for tr in r.traces if tr.index is not None}
    for i, node in enumerate(prog.nodes):
        w = works[i]
        b, limit = _busy(node, w, m, units[i])
        pcu_busy += b * units[i].pcus
        ops.append(OpTiming(i, node.op, node.call.span.line, list(node.outputs), w.elements, b, limit,
                            node.par, units[i].pcus, units[i].pmus, w.flops, w.offchip_bytes, section_of[i],
                            finish[i]))
    seconds = r.cycles / (m.clock_ghz * 1e9)
    u = prog.units
    bw = r.hbm_bytes / seconds / 1e9
    nsec = len(prog.sections)
    return Report(
        kernel=prog.kernel.name, machine=m.name, emulator=EMULATOR_VERSION, cycles=r.cycles, seconds=seconds,
        flops=sum(w.flops for w in works), hbm_bytes=r.hbm_bytes, ddr_bytes=r.ddr_bytes, hbm_bandwidth_gbs=bw,
        hbm_bandwidth_fraction=bw / m.hbm.bandwidth_gbs,
        pcu_allocated=u["pcus"], pmu_allocated=u["pmus"], agcu_allocated=u["agcus"], sram_bytes=u["sram_bytes"],
        pcu_utilisation=pcu_busy / (r.cycles * m.pcu.count),
        pmu_utilisation=min(1.0, u["pmus"] / (m.pmu.count * nsec)),
        sram_utilisation=u["sram_bytes"] / (m.sram_bytes * nsec),
        bottleneck=busiest[0], roofline_cycles=roof, roofline_seconds=roof / (m.clock_ghz * 1e9),
        roofline_fraction=min(1.0, roof / r.cycles), roofline_limit=roof_limit, sections=nsec,
        reconfig_cycles=(nsec - 1) * m.reconfig.cycles, sizes=dict(prog.sizes),
        notes=list(prog.notes) + r.notes, routing=dict(prog.routing), ops=ops)


MODELS: dict[str, Callable] = {"fast": fast_profile, "event": simulate}


def profile(prog, model: str = "fast") -> Report:
    """Time ``prog`` with the named timing model (``fast``: the analytic default; ``event``)."""
    fn = MODELS.get(model)
    if fn is None:
        raise ValueError(f"unknown timing model '{model}' (models: {', '.join(MODELS)})")
    return fn(prog)
