"""The event-level timing model of the emulated RDU: a discrete-event simulation in the style
of DAM (each operator a process with its own local clock, talking over bounded FIFO channels).

Why a second model: the fast model (``timing.py``) is a formula. It is only as good as its
assumptions (every operator of a section streams at the bottleneck's pace, fill latency is a
sum along the longest path). This model makes none of them: operators block on empty input
channels and on full output channels (back-pressure), compute units issue at their initiation
interval and deliver after their pipeline depth, and HBM / DDR serve requests in time order at
their bandwidth, after their latency, with a cap on outstanding requests. Agreement between the
two (docs/fidelity.md) is what makes the fast model trustworthy.

Channels, as in DAM. A stream is a FIFO of ``fifo_depth`` elements with a send latency
(``network.send_latency_cycles``). Flow control is by credits: a producer issues an element
only while it holds a credit for it (a pipeline that cannot stall needs room for its result),
the element holds the credit through the producer's pipeline, the send, and the consumer's
read of it, and the credit comes back one send latency after the consumer let go of the
element. A FIFO too shallow for that round trip limits the producer to ``depth`` elements per
round trip. A memory reader also holds the requests it has in flight (its response buffer).

Granularity. Simulating every tile would cost seconds per kernel at real sizes, so every
stream is cut into at most ``max_chunks`` chunks of consecutive elements, and a chunk is
treated as a *fluid*: it is described by the time its first and its last element arrive, and a
consumer may start on a chunk when its first element is there (cut-through), finishing no
earlier than one element after its last. Within an operator, the i-th output chunk needs its
inputs up to the same fraction of their length (an ``accum`` chunk needs whole groups, a
``repeat`` chunk re-reads a part of one input chunk). A chunk must not carry more FIFO room
than the machine has: credits are counted in *elements*, whatever the chunk size. A producer
starts chunk ``j`` only when the element ``depth`` places before its first has been released,
and the chunk is a pipelined batch: its elements whose credits come from earlier chunks wait for
those releases, and the others follow at one element per round trip / depth at best. With one
element per chunk this is exactly the element-level simulation; with more it agrees with it
within a few per cent (tests/asp_lang/test_event.py). A reconvergent graph whose FIFOs are too
shallow to hold a whole group would deadlock; the simulator then deepens the blocked FIFO, as a
compiler inserts a skew buffer, and says so in the notes.

What is measured. Besides every operator's start and finish, the simulation records, for every
step, what it waited for (its own previous step, an input, a credit, or the memory tier). Its
bottleneck is found by walking the critical path back from the section's last event: the
operator (or memory tier) whose own work, latency or memory service the path spends the longest
in. PCU utilisation is the service time of the compute steps the simulation fired, over the
simulated time.

Sections run one after another, as the allocator decided: a stream that crosses a section
boundary is written to HBM by the producing section and read back by the consuming one (a
stream of buffer references with the whole contents of its buffers, ``timing.spill_bytes``).

One module on purpose (about 800 lines, this description included): the processes, channels,
memory tiers and links of the simulation share its invariants (credits counted in elements,
chunks as fluids, the wait records the critical path is walked from); split apart they would
have to export that state to each other.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Callable

from .machine import Machine
from .ops import Node, OpWork
from .timing import (EmulatorError, OpTiming, Report, element_bytes, operator_busy, edge_depth, edge_service,
                     inflight_elements, link_share, node_units, node_work, profile as fast_profile, request_interval,
                     roofline, spill_bytes, spill_tile_bytes)

EMULATOR_VERSION = "asp-emu 0.1 (event model)"
MAX_CHUNKS = 256          # chunks per stream: ~1% of a stream's time per chunk of fill error
LATENCY = "latency"       # the critical path's latencies (pipelines, memory, sends): no unit's throughput
_EPS = 1e-9


@dataclass
class _Chunk:
    first: float   # arrival of its first element at the consumer
    last: float    # arrival of its last element


@dataclass
class _Chan:
    """A bounded FIFO from one process to another; data in chunks, credits in elements."""
    name: str
    count: float           # stream elements
    k: int                 # chunks
    depth: float           # credits, in elements: the FIFO's depth (plus a reader's requests in flight)
    elem_bytes: float
    chunks: list[_Chunk] = field(default_factory=list)
    rel_first: list[float] = field(default_factory=list)  # when the consumer let go of each chunk's first element
    rel_last: list[float] = field(default_factory=list)   # ... and of its last element
    rel_step: list = field(default_factory=list)    # why its last element was let go: the consumer's step, or ("in", chan, chunk) an arrival
    rel_fstep: list = field(default_factory=list)   # ... and its first
    producer: "_Proc | None" = None
    consumer: "_Proc | None" = None
    rtt: float = 0.0       # credit round trip of one element when the consumer keeps up
    grown: bool = False
    n: float = 1.0         # elements per chunk

    def __post_init__(self) -> None:
        self.n = self.count / self.k if self.count > 0 else 1.0


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
    step: int = 0
    free: float = 0.0      # when the unit can take the next step
    start: float = math.inf
    finish: float = 0.0    # its last result delivered
    work: float = 0.0      # service cycles of the steps it fired
    blocked: float = 0.0   # cycles it waited for credits
    pending: float | None = None
    per_elem: float | None = None  # service per input element of one step
    link_share: float = 0.0  # a collective's cycles of the socket's peer link, in all (kind "link")
    log: list = field(default_factory=list)  # per step: (s, f, lat, why s, why f), for the critical path

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
    busy: float            # service cycles of the steps it fired
    blocked: float = 0.0   # cycles it waited for credits (its output FIFOs full)
    consumer_busy: float = 0.0  # service cycles of its busiest consumer


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
    critical: list[dict[str, float]] = field(default_factory=list)  # per section: cycles of its critical path per operator / tier


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
        self.last = self.req_last = None  # the requests served last, for the critical path
        self.bytes = 0.0
        self.busy = 0.0

    def serve(self, issue: float, nbytes: float, req_bytes: float, who=None):
        """(service start, data done, (start of the service that bound it, the request it queued
        behind or None)) of a transfer of ``nbytes`` in requests of ``req_bytes``; ``who``
        names the request for the critical path."""
        start = max(self.free, issue)
        bound = (start, self.last if start > issue + _EPS else None)
        self.free = start + nbytes / self.bytes_per_cycle
        self.last = who
        done = self.free
        if req_bytes > 0 and self.cycles_per_request > 0:
            rstart = max(self.req_free, issue)
            self.req_free = rstart + nbytes / req_bytes * self.cycles_per_request
            if self.req_free > done:
                done = self.req_free
                bound = (rstart, self.req_last if rstart > issue + _EPS else None)
            self.req_last = who
        self.bytes += nbytes
        self.busy += nbytes / self.bytes_per_cycle
        return start, done, bound


class _Link:
    """A socket's peer link: one fluid resource, served in time order, in cycles of link time
    (a collective's busy cycles, collectives.py), shared by the section's collectives."""

    def __init__(self):
        self.free = 0.0
        self.last = None
        self.busy = 0.0

    def serve(self, issue: float, cycles: float, who=None):
        start = max(self.free, issue)
        bound = (start, self.last if start > issue + _EPS else None)
        self.free = start + cycles
        self.last = who
        self.busy += cycles
        return start, self.free, bound


class _Sim:
    """One section's processes and channels, and the event loop that runs them."""

    def __init__(self, procs: list[_Proc], chans: list[_Chan], m: Machine):
        self.procs = procs
        self.chans = chans
        self.m = m
        self.send = float(m.network.send_latency_cycles)
        self.mem = {"hbm": _Memory(m, "hbm"), "ddr": _Memory(m, "ddr")}
        self.peer = _Link()
        self.heap: list[tuple[float, int, int]] = []
        self.seq = 0
        self.now = 0.0
        self.events = 0
        self.notes: list[str] = []
        self._by_id = {id(p): p for p in procs}

    def wake(self, p: _Proc, t: float) -> None:
        t = max(t, self.now)  # events are handled in time order
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
                now = self.now = t
                self.events += 1
                self._advance(p, now)
            if all(p.done for p in self.procs):
                break
            if not self._unblock(now):
                stuck = ", ".join(f"{p.name} at step {p.step}/{p.k}" for p in self.procs if not p.done)
                raise EmulatorError(f"event model deadlocked ({stuck}): emulator bug")
        return max((p.finish for p in self.procs), default=0.0)

    def _unblock(self, now: float) -> bool:
        """Deepen the first FIFO whose producer is stuck for want of credits (a reconvergent path
        whose other branch waits for a whole group): what a compiler's skew buffer does."""
        for c in self.chans:
            p = c.producer
            if p is None or p.done or c.consumer is None:
                continue
            if self._gate(c, p.step) is None:
                released = len(c.rel_last)  # chunks wholly released
                c.depth = max(c.depth * 2, (p.step + 1 - released) * c.n + 1)
                if not c.grown:
                    self.notes.append(f"stream '{c.name}': FIFO deepened to hold a whole group "
                                      f"(a reconvergent path would deadlock otherwise)")
                c.grown = True
                self.wake(p, now)
                return True
        return False

    # ----------------------------------------------------------------- credits

    def _released(self, c: _Chan, pos: float) -> tuple[float, int] | None:
        """When the first ``pos`` chunks' worth of ``c`` had been let go by its consumer, and the
        consumer step that did it; None while that is not known yet. Inside a chunk, elements are
        let go evenly between its first and its last."""
        ci = max(0, math.ceil(pos - _EPS) - 1)
        off = pos - ci
        n = c.n
        if n <= 1 or off >= 1 - _EPS or off > 1 / n + _EPS:
            if len(c.rel_last) <= ci:
                return None
            rf, rl = c.rel_first[ci], c.rel_last[ci]
            t = rl if n <= 1 else rf + (rl - rf) * max(0.0, off - 1 / n) / (1 - 1 / n)
            return t, c.rel_step[ci]
        if len(c.rel_first) <= ci:
            return None
        return c.rel_first[ci], c.rel_fstep[ci]

    def _gate(self, c: _Chan, j: int):
        """Credits for output chunk ``j`` of ``c``: (earliest start, (bound on the issue of its
        last element, consumer step behind it), elements waiting on this chunk's own round
        trips) or None while a credit's release is not known yet."""
        n, d = c.n, c.depth
        t0, why0 = 0.0, None
        pos0 = j - (d - 1) / n  # element j*n needs the one d places before it let go
        if pos0 > _EPS:
            r = self._released(c, pos0)
            if r is None:
                return None
            t0, why0 = r[0] + self.send, r[1]
        if d >= n:  # every credit of this chunk comes from an earlier chunk
            pos1 = j + 1 - d / n
            if pos1 <= pos0 + _EPS:  # one element per chunk: the same credit
                return (t0, why0), (t0, why0), 0.0
            if pos1 > _EPS:
                r = self._released(c, pos1)
                if r is None:
                    return None
                return (t0, why0), (r[0] + self.send, r[1]), 0.0
            return (t0, why0), (0.0, None), 0.0
        # the first d elements' credits come from chunk j-1; the rest from this chunk's own
        tb, whyb = 0.0, None
        if j > 0:
            r = self._released(c, float(j))
            if r is None:
                return None
            tb, whyb = r[0] + self.send, r[1]
        return (t0, why0), (tb, whyb), n - d

    # ----------------------------------------------------------------- one step of a process

    def _advance(self, p: _Proc, now: float) -> None:
        while not p.done:
            j = p.step
            begin = end = 0.0
            why_begin = why_end = None
            for c in p.inputs:
                hi = (j + 1) * c.k  # this step needs positions up to hi / p.k (in chunks)
                need = -(-hi // p.k) - 1
                if len(c.chunks) <= need:
                    self._consume_early(p, now)
                    return  # woken again when the chunk is produced
                b = _at(c, j * c.k, p.k, lo=True)
                if b > begin:
                    begin, why_begin = b, (c, (j * c.k) // p.k)
                e = _at(c, hi, p.k, lo=False)
                if e > end:
                    end, why_end = e, (c, need)
            gates = []
            space, why_space = 0.0, None
            for c in p.outputs:
                if c.consumer is None:
                    continue
                g = self._gate(c, j)
                if g is None:
                    return  # woken again when the consumer lets go of an element
                if g[0][0] > space:
                    space, why_space = g[0][0], (c, g[0][1])
                gates.append((c, g))
            # a fluid step starts when its unit is free, its first input is there and it holds
            # a credit: for a step that waited for a whole group, earlier than the event that
            # completed the group (it took the group's elements as they came)
            s = max(p.free, begin, space)
            if s > now + _EPS:
                self.wake(p, s)
                return
            why_s = ("self",) if s <= p.free + _EPS and j > 0 else \
                ("in", *why_begin) if why_begin and s <= begin + _EPS else \
                ("credit", *why_space) if why_space and s <= space + _EPS else ("start",)
            self._fire(p, s, end, why_end, gates, why_s, begin)

    def _consume_early(self, p: _Proc, now: float) -> None:
        """A step that needs many input chunks (a whole group) takes them as they come: free
        the ones already here, or the producer could never send the rest. Its inputs are read
        together (element i of each), so an element is let go once the matching elements of all
        inputs have arrived."""
        have = min(len(c.chunks) / c.k for c in p.inputs)  # the fraction of every input that is here
        for c in p.inputs:
            upto = min(len(c.chunks), int(have * c.k + _EPS))
            if len(c.rel_last) >= upto:
                continue
            while len(c.rel_last) < upto:
                ci = len(c.rel_last)
                t, why = max(p.free, c.chunks[ci].last), ("in", c, ci)
                for c2 in p.inputs:
                    if c2 is not c:
                        t2 = _at(c2, (ci + 1) * c2.k, c.k, lo=False)
                        if t2 > t:
                            t, why = t2, ("in", c2, -(-(ci + 1) * c2.k // c.k) - 1)
                if len(c.rel_first) <= ci:
                    c.rel_first.append(min(t, max(c.chunks[ci].first, p.free)))
                    c.rel_fstep.append(why)
                c.rel_last.append(t)
                c.rel_step.append(why)
            if c.producer is not None:
                self.wake(c.producer, now)

    def _fire(self, p: _Proc, s: float, end: float, why_end, gates, why_s, begin: float) -> None:
        j = p.step
        busy = p.busy / p.k
        if p.per_elem is None:
            p.per_elem = busy / max(1.0, _elems(p))
        per_elem = p.per_elem
        out_elems = max(1.0, (p.outputs[0].count / p.k) if p.outputs else 1.0)
        f_why = ("self",)
        f = s + busy
        if p.inputs and end + per_elem > f:
            f, f_why = end + per_elem, ("in", *why_end)
        unblocked = f
        # credits: the chunk is a pipelined batch through a FIFO of c.depth elements
        for c, (_, (tb, whyb), rest) in gates:
            a = p.busy / max(c.count, 1.0)
            if rest > 0:
                last = max(tb, s + (c.depth - 1) * a) + rest * max(a, c.rtt / c.depth)
            else:
                last = tb
            if last + a > f + _EPS:
                f = last + a
                f_why = ("credit", c, whyb) if rest <= 0 or tb >= s + (c.depth - 1) * a else ("loop", c)
        p.blocked += f - unblocked
        if why_s[0] == "credit":
            p.blocked += s - max(p.free, begin)  # it waited for a credit to start
        lat = p.latency
        if p.kind in ("mem", "spill_store", "spill_load"):
            nbytes = p.offchip_bytes / p.k
            mem = self.mem[p.tier]
            svc, data, bound = mem.serve(s, nbytes, p.req_bytes, (p, j))
            # the AGCU issues at its own pace (a store as its data arrives) and keeps issuing
            # while earlier requests are in flight; the data is done when the tier has served it
            p.free = f
            done = max(data, f)
            tier_why = ("tier", p.tier, *bound)
            if data > f + _EPS:
                f_why = tier_why
            lat = mem.latency
            first = svc + (done - svc) / out_elems + lat
            last = done + lat
        elif p.kind == "link":
            # the socket's peer link serves its collectives in time order, as a tier its requests
            svc, data, bound = self.peer.serve(s, p.link_share / p.k, (p, j))
            p.free = f
            done = max(data, f)
            tier_why = ("tier", "peer", *bound)
            if data > f + _EPS:
                f_why = tier_why
            first = svc + (done - svc) / out_elems + lat
            last = done + lat
        else:
            tier_why = None
            p.free = f
            done = f
            first = s + (f - s) / out_elems + lat
            last = f + lat
        p.start = min(p.start, s)
        p.work += busy
        for c in p.inputs:  # let go of the input elements this step finished with
            span = c.k  # positions [j*c.k, (j+1)*c.k] / p.k of the input, in chunks
            t_at = lambda num: s + (f - s) * min(1.0, max(0.0, (num - j * c.k) / span))
            n = c.n
            while len(c.rel_first) < c.k:
                ci = len(c.rel_first)
                num = (ci + min(1.0, 1 / n)) * p.k  # its first element, in positions x p.k
                if num > (j + 1) * c.k + _EPS:
                    break
                c.rel_first.append(max(s, t_at(num)) if len(c.rel_last) <= ci else c.rel_last[ci])
                c.rel_fstep.append(j)
            while len(c.rel_last) < c.k:
                ci = len(c.rel_last)
                if (ci + 1) * p.k > (j + 1) * c.k:
                    break
                c.rel_last.append(t_at((ci + 1) * p.k))
                c.rel_step.append(j)
            if c.producer is not None:
                self.wake(c.producer, s)
        send = self.send if p.outputs else 0.0
        for c in p.outputs:
            c.chunks.append(_Chunk(first + send, last + send))
            if c.consumer is not None:
                self.wake(c.consumer, s)
            else:
                c.rel_first.append(last)
                c.rel_last.append(last)
                c.rel_step.append(j)
                c.rel_fstep.append(j)
        p.finish = max(p.finish, last + send)
        p.log.append((s, f, done, lat + send, why_s, f_why, tier_why))
        p.step += 1

    # ----------------------------------------------------------------- critical path

    def critical_path(self, name: Callable[[_Proc], str], trace: list | None = None) -> dict[str, float]:
        """Where the section's time went, along its critical path: walking back from the last
        result delivered, every step is charged to what it waited for (the operator's own
        service, the memory tier serving it, an input, a credit), until time 0. Cycles of service
        go to the operator, or to the tier when the tier (bandwidth or request slots) was slower
        than the operator's AGCUs; pipeline, memory and send latencies go to ``LATENCY``. The
        charges add up to the section's time."""
        out: dict[str, float] = {}
        live = [p for p in self.procs if p.log]
        if not live:
            return out

        def charge(key: str, t: float) -> None:
            if t > 0:
                out[key] = out.get(key, 0.0) + t
                if trace is not None:
                    trace.append((round(T), key, round(t), p.name, j, at))

        p = max(live, key=lambda q: q.finish)
        j, at = len(p.log) - 1, "out"
        T = p.finish
        guard = 6 * sum(len(q.log) for q in live) + 8
        while guard > 0 and T > _EPS:
            guard -= 1
            s, f, done, lat, why_s, why_f, tier = p.log[j]
            if at == "tier":  # the tier serving this request, after the one it queued behind
                t = min(T, tier[2])
                charge(tier[1], T - t)
                T = t
                prev = tier[3]
                if prev is not None and prev[1] < len(prev[0].log) and prev[0].log[prev[1]][6] is not None:
                    p, j = prev
                else:
                    at = "s"
                continue
            if at == "out":  # its result travelling: pipeline / memory latency and the send
                t = min(T, done)
                charge(LATENCY, T - t)
                T, at = t, "f"
                continue
            if at == "f":
                kind = why_f[0]
                nxt = None
                if kind == "in" and why_f[1].producer is not None and why_f[2] < len(why_f[1].producer.log):
                    q = why_f[1].producer
                    nxt = (q, why_f[2], "out", q.log[why_f[2]][2] + q.log[why_f[2]][3])
                elif kind == "credit":
                    nxt = _released_by(why_f[1], why_f[2], "f")
                if kind == "tier":
                    at = "tier"
                    continue
                if nxt is not None:
                    t = min(T, nxt[3])
                    charge(name(p), T - t)  # its service of the last element
                    p, j, at, T = nxt[0], nxt[1], nxt[2], t
                    continue
                t = min(T, s)
                charge(name(p), T - t)  # its own service (or its chunk's own credit round trips)
                T, at = t, "s"
                continue
            kind = why_s[0]  # at == "s"
            if kind == "self" and j > 0:
                t = min(T, p.log[j - 1][1])
                charge(name(p), T - t)
                j, at, T = j - 1, "f", t
            elif kind == "in" and why_s[1].producer is not None and why_s[2] < len(why_s[1].producer.log):
                q = why_s[1].producer
                qs, _, qdone, qlat, _, qwhy, qtier = q.log[why_s[2]]
                if q.outputs and q.outputs[0].count / q.k <= 1 + _EPS:  # its only element is its last
                    p, j, at, T = q, why_s[2], "out", min(T, qdone + qlat)
                    continue
                t = min(T, qs)
                charge(LATENCY, min(T - t, qlat))
                # its first element's service: the producer's, or the tier's when it waited for it
                charge(qtier[1] if qwhy[0] == "tier" else name(q), T - t - min(T - t, qlat))
                p, j, at, T = q, why_s[2], "s", t
            elif kind == "credit" and _released_by(why_s[1], why_s[2], "f") is not None:
                q, m, where, t = _released_by(why_s[1], why_s[2], "f")
                t = min(T, t)
                charge(LATENCY, T - t)  # the credit on its way back
                p, j, at, T = q, m, where, t
            else:
                charge(name(p), T)
                T = 0.0
        charge(LATENCY, T)
        return out


def _released_by(c: _Chan, why, at: str):
    """The critical path's next point behind a credit of ``c``: the consumer's step that let go
    of the element (its start, or its finish when ``at`` is "f"), or, for an element let go as it
    arrived, the producer's step that sent the matching element: (proc, step, point, time)."""
    if isinstance(why, tuple):
        q, ci = why[1].producer, why[2]
        if q is None or not 0 <= ci < len(q.log):
            return None
        return q, ci, "out", q.log[ci][2] + q.log[ci][3]
    q = c.consumer
    if why is None or q is None or not 0 <= why < len(q.log):
        return None
    return q, why, at, q.log[why][0 if at == "s" else 2]


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
    lat = {"compute": m.pcu.latency_cycles, "route": m.network.route_cycles_per_element,
           "link": node.attrs.get("link_latency", 0.0)}.get(w.kind, 0.0)
    p = _Proc(f"{node.op}@{node.call.span.line}", node.index, w.kind, k, busy, float(lat), ins, outs,
              offchip_bytes=w.offchip_bytes, tier=w.tier)
    if w.kind == "mem":
        t = node.out_types[0] if node.out_types else node.in_types[-1]
        p.req_bytes = element_bytes(t.elem)
    if w.kind == "link":
        p.link_share = link_share(node)
    return p


def _build_section(prog, sec: list[int], works: list[OpWork], units, max_chunks: int):
    m = prog.machine
    in_sec = set(sec)
    producer = {o: i for i, n in enumerate(prog.nodes) for o in n.outputs if o != "_"}
    consumer = {name: i for i, n in enumerate(prog.nodes) for name in n.inputs}
    chans: dict[str, _Chan] = {}
    procs: list[_Proc] = []
    service: dict[int, float] = {}   # id(chan) -> its producer's service per element (issue to done)
    lat_out: dict[int, float] = {}   # id(chan) -> its producer's latency

    def chan(name: str, t) -> _Chan:
        if name not in chans:
            k = _chunks(t.count, max_chunks)
            chans[name] = _Chan(name, t.count, k, float(m.network.fifo_depth), element_bytes(t.elem))
        return chans[name]

    node_procs: dict[int, _Proc] = {}
    for i in sec:
        node, w = prog.nodes[i], works[i]
        ins = [chan(n, t) for n, t in zip(node.inputs, node.in_types)]
        outs = [chan(f"{n}" if n != "_" else f"_{i}.{j}", t) for j, (n, t) in enumerate(zip(node.outputs, node.out_types))]
        busy, _ = operator_busy(node, w, m, units[i])
        p = _proc_for(node, w, m, busy, ins, outs)
        for c, t in zip(outs, node.out_types):
            # credits: the FIFO's depth in elements (two buffers after a bufferize), plus the
            # requests a memory reader has in flight
            c.depth = edge_depth(node, w, m, t)
            service[id(c)] = edge_service(node, w, m, busy, t)
            lat_out[id(c)] = m.latency_cycles(w.tier) if w.kind == "mem" else p.latency
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
            eb = spill_bytes(t)  # a buffer reference brings its whole buffer back (timing.spill_bytes)
            p = _Proc(f"spill-load {name}", None, "spill_load", c.k, 0.0, 0.0, [], [c],
                      offchip_bytes=t.count * eb, req_bytes=spill_tile_bytes(t))
            c.depth += inflight_elements(m, "hbm", eb)
            service[id(c)] = request_interval(m, "hbm", eb, 0.0)
            lat_out[id(c)] = m.latency_cycles("hbm")
            c.producer = p
            procs.append(p)
        dst = consumer.get(name)
        if c.consumer is None and dst is not None and dst not in in_sec:  # spill it to HBM
            t = prog.streams[name]
            p = _Proc(f"spill-store {name}", None, "spill_store", c.k, 0.0, 0.0, [c], [],
                      offchip_bytes=t.count * spill_bytes(t), req_bytes=spill_tile_bytes(t))
            c.consumer = p
            procs.append(p)
    send = m.network.send_latency_cycles
    for c in chans.values():
        a_c = c.consumer.busy / max(c.count, 1.0) if c.consumer is not None else 0.0
        c.rtt = service.get(id(c), 0.0) + lat_out.get(id(c), 0.0) + 2 * send + a_c
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
    critical: list[dict[str, float]] = []

    def name(p: _Proc) -> str:
        if p.index is None:
            return p.tier  # a spill is HBM traffic
        return f"{prog.nodes[p.index].op}@{prog.nodes[p.index].call.span.line}"

    for s, sec in enumerate(prog.sections):
        procs, chans, _ = _build_section(prog, sec, works, units, max_chunks)
        sim = _Sim(procs, chans, m)
        t = sim.run()
        critical.append(sim.critical_path(name))
        events += sim.events
        section_cycles.append(t)
        hbm += sim.mem["hbm"].bytes
        ddr += sim.mem["ddr"].bytes
        tier_busy.append({k: v.busy for k, v in sim.mem.items()})
        notes += [f"section {s}: {n}" if len(prog.sections) > 1 else n for n in sim.notes]
        for p in procs:
            op = prog.nodes[p.index].op if p.index is not None else p.name
            cons = max((c.consumer.work for c in p.outputs if c.consumer is not None), default=0.0)
            traces.append(OpTrace(p.index, op, s, 0.0 if p.start == math.inf else p.start, p.finish, p.work,
                                  p.blocked, cons))
    total = sum(section_cycles) + (len(prog.sections) - 1) * m.reconfig.cycles
    return EventResult(max(total, 1.0), section_cycles, traces, hbm, ddr, tier_busy, notes, events, critical)


def simulate(prog, max_chunks: int = MAX_CHUNKS) -> Report:
    """Time ``prog`` with the event model: a Report with the same fields as the fast model's.

    Needs only the checked types (no data). ``max_chunks`` bounds the chunks per stream
    (more is finer and slower)."""
    if hasattr(prog, "programs"):  # a kernel on several sockets (collectives.GroupProgram)
        return prog.time("event")
    m = prog.machine
    r = run_events(prog, max_chunks)
    works = [node_work(n) for n in prog.nodes]
    units = [node_units(n, w, m) for n, w in zip(prog.nodes, works)]
    section_of = {i: s for s, sec in enumerate(prog.sections) for i in sec}
    roof, roof_limit = roofline(prog)
    if r.cycles < roof * (1 - 1e-9):
        raise EmulatorError(f"simulated {r.cycles:.0f} cycles beat the roofline bound {roof:.0f}: emulator bug")
    ops: list[OpTiming] = []
    # the bottleneck is what the simulated critical path spent the longest in (any section)
    busiest = ("", -1.0)
    for crit in r.critical:
        for name, t in crit.items():
            if name != LATENCY and t > busiest[1]:
                busiest = (name, t)
    trace = {tr.index: tr for tr in r.traces if tr.index is not None}
    if busiest[1] <= 0:  # nothing but latency on the path: the operator that worked longest
        tr = max(trace.values(), key=lambda t: t.busy, default=None)
        busiest = (f"{tr.op}@{prog.nodes[tr.index].call.span.line}" if tr else "", 0.0)
    pcu_busy = 0.0
    for i, node in enumerate(prog.nodes):
        w = works[i]
        _, limit = operator_busy(node, w, m, units[i])
        tr = trace[i]
        pcu_busy += tr.busy * units[i].pcus
        busy = tr.busy
        if tr.blocked > tr.busy and tr.consumer_busy < tr.busy + tr.blocked:
            # it waited for credits longer than it worked, and not for a consumer busier than
            # itself (back-pressure): for the round trips of a FIFO too shallow for them
            limit, busy = "fifo", tr.busy + tr.blocked
        ops.append(OpTiming(i, node.op, node.call.span.line, list(node.outputs), w.elements, busy, limit,
                            node.par, units[i].pcus, units[i].pmus, w.flops, w.offchip_bytes, section_of[i],
                            tr.finish))
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
