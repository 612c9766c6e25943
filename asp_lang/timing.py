"""The fast (analytic) timing model of the emulated RDU.

A checked program is placed on the chip (``allocate``): each operator takes PCUs, PMUs or
AGCUs; a program that needs more than the chip has is cut, in program order, into sections
that run one after another with a reconfiguration in between, streams crossing a cut going
through HBM (a buffer with its whole contents, reloaded into PMUs of the section that reads it).
Nothing is free: every section fits the machine, every compute path runs at most at the
machine's peak for its dtype, a buffer is read through the PMU ports it has, and every replica
of an ``accum`` holds its own accumulator. Within a section every operator streams
concurrently (double-buffered), so the section takes as long as its slowest resource, an
operator or a shared memory channel, plus the latency to fill the pipeline along its longest
path. Only types are needed, never data: timing a full-size problem allocates nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .errors import AspError, ResourceError
from .machine import Machine
from .ops import OPS, Node, OpWork
from .types import BufT, Dyn

EMULATOR_VERSION = "asp-emu 0.1 (fast model)"


@dataclass
class Units:
    pcus: int = 0
    pmus: int = 0
    agcus: int = 0
    sram_bytes: float = 0.0

    def add(self, o: "Units") -> "Units":
        return Units(self.pcus + o.pcus, self.pmus + o.pmus, self.agcus + o.agcus, self.sram_bytes + o.sram_bytes)

    def fits(self, m: Machine) -> bool:
        return (self.pcus <= m.pcu.count and self.pmus <= m.pmu.count and self.agcus <= m.agcu.count
                and self.sram_bytes <= m.sram_bytes)


def node_work(node: Node) -> OpWork:
    return OPS[node.op].work(node)


def node_units(node: Node, w: OpWork, m: Machine) -> Units:
    """Units one operator occupies. Routing and shape operators live in the switches."""
    pmu_bytes = m.pmu_bytes
    edge_bytes = sum(element_bytes(t.elem) for t in node.out_types) * m.network.fifo_depth
    fifo_pmus = sum(math.ceil(element_bytes(t.elem) * m.network.fifo_depth / pmu_bytes)
                    for t in node.out_types)
    u = Units(pmus=fifo_pmus, sram_bytes=edge_bytes)
    if w.kind == "compute":
        stages = max(1, math.ceil((w.fn.ops if w.fn else 1) / m.pcu.stages))
        u.pcus += node.par * stages
    elif w.kind == "mem":
        u.agcus += node.par
    elif node.op in ("partition", "merge"):
        u.pcus += 1
    acc = accumulator_bytes(node, w)
    if acc:
        # every replica (par=P) keeps its own accumulator in its own PMU(s)
        u.pmus += node.par * math.ceil(acc / pmu_bytes)
        u.sram_bytes += node.par * acc
    elif w.sram_bytes:
        u.pmus += max(math.ceil(w.sram_bytes / pmu_bytes), node.par if w.kind == "buffer" else 0)
        u.sram_bytes += w.sram_bytes
    return u


def accumulator_bytes(node: Node, w: OpWork) -> float:
    """Bytes of one replica's accumulator: an ``accum`` or ``scan`` holds its running value."""
    if node.op == "accum":
        return w.sram_bytes
    if node.op == "scan":
        return float(sum(t.elem.nbytes for t in node.out_types))
    return 0.0


def spill_bytes(t) -> float:
    """HBM bytes per element of a stream that crosses a section cut. A tile goes out and comes
    back as itself; a buffer reference stands for the whole buffer it points to, whose PMUs are
    reconfigured away: its contents make the round trip, not the 4-byte reference."""
    return float(t.elem.nbytes) if isinstance(t.elem, BufT) else element_bytes(t.elem)


def spill_requests(t) -> float:
    """HBM requests per element of a stream crossing a cut: one per tile (a buffer: its tiles)."""
    return float(math.prod(t.elem.dims)) if isinstance(t.elem, BufT) else 1.0


def spill_tile_bytes(t) -> float:
    """Bytes of one HBM request of a spilled stream (a buffer is moved tile by tile)."""
    return float(t.elem.elem.nbytes) if isinstance(t.elem, BufT) else element_bytes(t.elem)


def element_bytes(e) -> float:
    """Bytes one stream element takes on an edge (a buffer reference: 4). Public because the
    event simulator sizes its channels and requests the same way."""
    return 4.0 if isinstance(e, BufT) else float(e.nbytes)


def buffer_sources(prog) -> dict[str, int]:
    """For every stream of buffer references, the ``bufferize`` (node index) whose buffer it
    points to, followed through the routing operators that pass references on (copy, expand,
    repeat, partition, merge...)."""
    src: dict[str, int] = {}
    for i, node in enumerate(prog.nodes):
        if node.op == "bufferize":
            for n in node.outputs:
                src[n] = i
            continue
        froms = {src[n] for n in node.inputs if n in src}
        if len(froms) == 1:
            (b,) = froms
            for n, t in zip(node.outputs, node.out_types):
                if n != "_" and isinstance(t.elem, BufT):
                    src[n] = b
    return src


def buffer_banks(node: Node, w: OpWork, m: Machine) -> int:
    """PMUs one buffer of a ``bufferize`` is spread or banked over: its read (and write) ports."""
    return max(node.par, math.ceil(w.buffer_bytes / m.pmu_bytes), 1)


def _buffer_units(node: Node, w: OpWork, m: Machine) -> Units:
    """The PMUs and SRAM a ``bufferize``'s buffers hold (without its FIFOs)."""
    return Units(pmus=max(math.ceil(w.sram_bytes / m.pmu_bytes), node.par), sram_bytes=w.sram_bytes)


def allocate(prog) -> None:
    """Place ``prog`` on its machine: units per operator and the sections it runs in.

    A section holds at most the chip's PCUs, PMUs, AGCUs and SRAM. A buffer is state: when an
    operator reads buffer references made in an earlier section, the buffer has been spilled to
    HBM at the cut (``spill_bytes``) and is reloaded into PMUs of this section, which it holds
    here too. ``streamify`` reads a buffer through the PMU ports its ``bufferize`` banked it over,
    shared by every ``streamify`` of this section that reads the same buffer: recorded as
    ``node.attrs["read_ports"]`` for both timing models."""
    m = prog.machine
    works = [node_work(n) for n in prog.nodes]
    src = buffer_sources(prog)
    sections: list[list[int]] = [[]]
    per_section: list[Units] = [Units()]
    section_of: dict[int, int] = {}
    reloaded: set[int] = set()
    reloads = 0
    total = Units()

    def reload(node: Node, s: int) -> tuple[Units, set[int]]:
        extra, keys = Units(), set()
        for n, t in zip(node.inputs, node.in_types):
            b = src.get(n)
            if isinstance(t.elem, BufT) and b is not None and section_of[b] != s and b not in reloaded | keys:
                extra = extra.add(_buffer_units(prog.nodes[b], works[b], m))
                keys.add(b)
        return extra, keys

    for i, node in enumerate(prog.nodes):
        u = node_units(node, works[i], m)
        if not u.fits(m):
            raise ResourceError(
                f"{node.op} alone needs {u.pcus} PCUs, {u.pmus} PMUs, {u.agcus} AGCUs and "
                f"{u.sram_bytes / 2**20:.1f} MiB of SRAM; {m.name} has {m.pcu.count}, {m.pmu.count}, "
                f"{m.agcu.count} and {m.sram_bytes / 2**20:.1f} MiB (lower par or use smaller tiles)",
                node.call.span)
        extra, keys = reload(node, len(sections) - 1)
        if not per_section[-1].add(u).add(extra).fits(m):
            sections.append([])
            per_section.append(Units())
            reloaded = set()
            extra, keys = reload(node, len(sections) - 1)
            if not u.add(extra).fits(m):
                lines = ", ".join(str(prog.nodes[b].call.span.line) for b in sorted(keys))
                raise ResourceError(
                    f"{node.op} reads a buffer (bufferize at line {lines}) made before a section cut: "
                    f"reloaded from HBM it needs {extra.pmus} PMUs and {extra.sram_bytes / 2**20:.1f} MiB "
                    f"beside the operator's own {u.pmus} PMUs; {m.name} has {m.pmu.count} PMUs and "
                    f"{m.sram_bytes / 2**20:.1f} MiB (use smaller buffers, or fewer units so that the "
                    f"bufferize and its readers share a section)", node.call.span)
        reloaded |= keys
        reloads += len(keys)
        sections[-1].append(i)
        section_of[i] = len(sections) - 1
        per_section[-1] = per_section[-1].add(u).add(extra)
        total = total.add(u).add(extra)
    # streamify: the read ports of its buffer, shared with the section's other readers of it
    readers: dict[tuple[int, int], int] = {}
    for i, node in enumerate(prog.nodes):
        b = src.get(node.inputs[0]) if node.op == "streamify" and node.inputs else None
        if b is not None:
            readers[(b, section_of[i])] = readers.get((b, section_of[i]), 0) + 1
    for i, node in enumerate(prog.nodes):
        b = src.get(node.inputs[0]) if node.op == "streamify" and node.inputs else None
        if b is not None:
            banks = buffer_banks(prog.nodes[b], works[b], m)
            node.attrs["read_ports"] = banks / readers[(b, section_of[i])]
    prog.sections = sections
    prog.units = asdict(total)
    prog.section_units = [asdict(u) for u in per_section]
    if len(sections) > 1:
        prog.notes.append(
            f"the program needs {total.pcus} PCUs, {total.pmus} PMUs and {total.agcus} AGCUs; {m.name} has "
            f"{m.pcu.count}, {m.pmu.count} and {m.agcu.count}: it is time-multiplexed in {len(sections)} "
            f"sections, with {len(sections) - 1} reconfiguration(s) charged and the streams between "
            f"sections spilled to HBM" + (" (a buffer with its whole contents, reloaded into PMUs "
                                          "after the cut)" if reloads else ""))


@dataclass
class OpTiming:
    index: int
    op: str
    line: int
    outputs: list[str]
    elements: float
    busy_cycles: float
    limit: str                 # what bounds this operator: compute | onchip | memory | route | fifo | none
    par: int
    pcus: int
    pmus: int
    flops: float
    offchip_bytes: float
    section: int
    finish_cycles: float = 0.0  # when (from its section's start) it delivers its last result


@dataclass
class Report:
    """Everything the timing model says about one program on one machine."""
    kernel: str
    machine: str
    emulator: str
    cycles: float
    seconds: float
    flops: float
    hbm_bytes: float
    ddr_bytes: float
    hbm_bandwidth_gbs: float
    hbm_bandwidth_fraction: float
    pcu_allocated: int
    pmu_allocated: int
    agcu_allocated: int
    sram_bytes: float
    pcu_utilisation: float
    pmu_utilisation: float
    sram_utilisation: float
    bottleneck: str
    roofline_cycles: float
    roofline_seconds: float
    roofline_fraction: float
    roofline_limit: str
    sections: int
    reconfig_cycles: float
    sizes: dict
    notes: list[str]
    routing: dict
    ops: list[OpTiming] = field(default_factory=list)
    sockets: list[dict] = field(default_factory=list)  # a kernel on several sockets: each one's cycles (collectives.time_group)

    def to_dict(self) -> dict:
        return asdict(self)


class EmulatorError(AspError):
    """The timing model contradicted itself (e.g. beat the roofline): a bug, never a result."""
    kind = "EmulatorError"


def _skew(node: Node) -> float:
    """How much longer than the mean the busiest routed branch is (1 without routing)."""
    s = 1.0
    for t in node.in_types:
        for d in t.dims:
            if isinstance(d, Dyn):
                s = max(s, d.skew)
    return s


def operator_busy(node: Node, w: OpWork, m: Machine, units: Units) -> tuple[float, str]:
    """(cycles ``node`` keeps its units busy for its work ``w``, skew included; what limits it).
    Public because the event simulator charges each operator the same busy time."""
    b, limit = _busy_even(node, w, m, units)
    return b * _skew(node), limit


def _busy_even(node: Node, w: OpWork, m: Machine, units: Units) -> tuple[float, str]:
    par = max(1, node.par)
    if w.kind == "compute":
        compute = fn_cycles(w.fn, m) if w.fn else 0.0
        bw = m.pmu.bandwidth_bytes_per_cycle
        onchip = max(w.in_bytes, w.out_bytes) / bw
        ii = max(compute, onchip, 1.0)
        return w.elements * ii / par, ("compute" if compute >= onchip else "onchip")
    if w.kind == "mem":
        b = max(w.in_bytes, w.out_bytes)
        return w.elements * b / (m.agcu.bandwidth_bytes_per_cycle * par), "memory"
    if w.kind == "route":
        return w.elements * m.network.route_cycles_per_element, "route"
    if w.kind == "link":
        # a collective or send/recv: the bandwidth terms of its peer-link cost (collectives.py)
        return node.attrs["link_busy"], "link"
    if w.kind == "buffer":
        # a buffer spread (or banked, par=) over several PMUs is written and read through all their ports
        ports = max(par, math.ceil(w.buffer_bytes / m.pmu_bytes))
        if node.op == "streamify" and "read_ports" in node.attrs:
            # it reads through the ports its bufferize banked the buffer over, whatever its par
            ports = min(ports, node.attrs["read_ports"])
        bw = m.pmu.bandwidth_bytes_per_cycle * ports
        return w.elements * max(w.in_bytes, w.out_bytes) / bw, "onchip"
    return 0.0, "none"


def link_share(node: Node) -> float:
    """Cycles a collective or send/recv occupies its socket's peer link: its own transfer, not
    the time a recv waits for a slower sender (collectives.time_group)."""
    return node.attrs.get("link_busy_alone", node.attrs["link_busy"])


def fn_cycles(fn, m: Machine) -> float:
    """Cycles one PCU needs per call of a tile function: its SIMD element-ops (those on 32-bit
    operands at the machine's 32-bit peak), its tail ops, and its matmul flops at the systolic
    rate of their operands. Every path is bounded by the machine's peak for its dtype."""
    return ((fn.simd - fn.simd32) / m.simd_ops_per_cycle + fn.simd32 / m.simd_ops_per_cycle_for("f32")
            + fn.tail / m.tail_ops_per_cycle
            + fn.mm / m.mm_flops_per_cycle("bf16") + fn.mm32 / m.mm_flops_per_cycle("f32"))


def _latency(node: Node, w: OpWork, m: Machine) -> float:
    """Cycles from an operator taking an element to delivering its result (pipeline depth)."""
    if w.kind == "compute":
        return m.pcu.latency_cycles
    if w.kind == "mem":
        return m.latency_cycles(w.tier)
    if w.kind == "route":
        return m.network.route_cycles_per_element
    if w.kind == "link":
        return node.attrs["link_latency"]  # the latency terms of its peer-link cost
    return 0.0


def _reads(node: Node, w: OpWork, tier: str) -> bool:
    """An operator that reads tensor data from ``tier`` (load, gather)."""
    return w.kind == "mem" and w.tier == tier and node.op in ("load", "gather")


def _section_cycles(prog, sec: list[int], works: list[OpWork], busy: dict[int, float],
                    candidates: dict[str, float], producer: dict[str, int],
                    consumer: dict[str, int]) -> tuple[float, dict[int, float]]:
    """A section's time: every operator streams concurrently, so each delivers its last result
    no earlier than its first input arrives plus its own busy time, and no earlier than its
    producers' last results; it adds its pipeline latency. First results flow down the graph
    after each latency and, for ``accum`` and ``bufferize``, after a whole group has come in
    at the pace of the slowest operator (or memory channel) upstream of it. Memory operators
    share their tier: each moves its own traffic, and the section is not done before the tier has
    moved all of it and a last latency has passed."""
    m = prog.machine
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    pace: dict[int, float] = {}
    # the section's reads share their tier: the last of them arrives no earlier than the tier
    # has moved them all (what follows the reads, a collective's latency say, comes after that)
    reads = {t: _tier_cycles(m, t, sum(works[i].offchip_bytes for i in sec if _reads(prog.nodes[i], works[i], t)),
                             sum(works[i].elements for i in sec if _reads(prog.nodes[i], works[i], t)))
             for t in ("hbm", "ddr")}
    for i in sec:
        node, w = prog.nodes[i], works[i]
        ins = [producer[n] for n in node.inputs]
        outside = candidates["hbm"]  # a stream from another section is read back from HBM
        own = _tier_cycles(m, w.tier, w.offchip_bytes, w.elements) if w.kind == "mem" else 0.0
        pace[i] = max([busy[i], own] + [pace.get(j, outside) for j in ins])
        lat = _latency(node, w, m)
        first_in = max((first.get(j, 0.0) for j in ins), default=0.0)
        wait = 0.0
        if node.op in ("accum", "bufferize"):
            # its first group comes in at the upstream pace; its results then spread over the
            # remaining groups only (one group: a single result, the upstream wait is behind it)
            groups = max(w.groups, 1.0)
            wait = pace[i] / groups
            pace[i] = max(busy[i], own, pace[i] * (1 - 1 / groups))
        first[i] = first_in + wait + lat
        last_in = max((last.get(j, outside) for j in ins), default=0.0)
        last[i] = max(first_in + max(busy[i], own), last_in) + lat
        if _reads(node, w, w.tier):
            last[i] = max(last[i], reads[w.tier] + lat)
    # the tiers serve the whole section's traffic from its start; the last transfer then takes
    # the tier's latency to complete
    tiers = [candidates[t] + m.latency_cycles(t) for t in ("hbm", "ddr") if candidates[t] > 0]
    if candidates.get("peer", 0.0) > 0:  # the socket's peer link, shared by its collectives
        tiers.append(candidates["peer"] + max(_latency(prog.nodes[i], works[i], m) for i in sec
                                              if works[i].kind == "link"))
    # back-pressure: a producer cannot run further ahead of a slower consumer than the FIFO
    # between them holds, so it finishes no earlier than the consumer takes its last elements
    done = dict(last)
    for i in reversed(sec):
        for n in prog.nodes[i].outputs:
            c = consumer.get(n)
            if c in done:
                per = busy[c] / max(works[c].elements, 1.0)
                lat = _latency(prog.nodes[c], works[c], m)
                done[i] = max(done[i], done[c] - lat - m.network.fifo_depth * per)
    return max(list(last.values()) + tiers, default=0.0), done


def inflight_elements(m: Machine, tier: str, elem_bytes: float) -> float:
    """Requests (stream elements) a memory reader keeps in flight beyond its output FIFO: enough
    to cover the tier's latency at full bandwidth, never more than its request slots. The data
    of a request in flight lands in the AGCU's response buffer, so these count as credits."""
    return float(min(m.mem(tier).max_outstanding,
                     math.ceil(m.latency_cycles(tier) * m.bytes_per_cycle(tier) / max(elem_bytes, 1.0))))


def request_interval(m: Machine, tier: str, elem_bytes: float, issue: float) -> float:
    """Cycles from a memory reader issuing one element's request to its data being done, when
    nothing else uses the tier: its AGCU issue time, the bytes at the tier's bandwidth, or its
    share of the request slots."""
    mem = m.mem(tier)
    return max(issue, elem_bytes / m.bytes_per_cycle(tier), m.latency_cycles(tier) / mem.max_outstanding)


def credit_cycles(m: Machine, count: float, depth: float, a_p: float, lat_p: float, a_c: float) -> float:
    """Cycles a producer needs to send ``count`` elements through a FIFO of ``depth`` elements
    (credits) when its consumer keeps up. An element holds its credit from the moment the
    producer issues it (a pipeline that cannot stall needs room for its result) until the
    consumer has read it and the credit is back: a round trip of the producer's service
    ``a_p``, its latency, one send latency, the consumer's service ``a_c`` and one send latency
    back. ``depth`` credits carry at most ``depth`` elements per round trip (Little's law), so a
    FIFO too shallow for the round trip slows the producer below its own rate."""
    if count <= depth or depth <= 0:
        return 0.0
    rtt = a_p + lat_p + 2 * m.network.send_latency_cycles + a_c
    return (count - depth) * rtt / depth + depth * a_p


def edge_depth(node: Node, w: OpWork, m: Machine, t) -> float:
    """Credits on one output stream of ``node``: the FIFO's depth (two buffers after a
    ``bufferize``, which double-buffers), plus the requests a memory reader has in flight."""
    d = 2.0 if node.op == "bufferize" else float(m.network.fifo_depth)
    if w.kind == "mem":
        d += inflight_elements(m, w.tier, element_bytes(t.elem))
    if w.kind == "link":  # the link holds what is in flight over its latency, as a memory reader does
        per = node.attrs["link_busy"] / max(t.count, 1.0)
        d += math.ceil(node.attrs["link_latency"] / max(per, 1.0))
    return d


def edge_service(node: Node, w: OpWork, m: Machine, busy: float, t) -> float:
    """The producer's service per element of its output stream ``t`` (issue to done)."""
    a = busy / max(t.count, 1.0)
    if w.kind == "mem":
        a = request_interval(m, w.tier, element_bytes(t.elem), a)
    return a


def _credit_busy(prog, i: int, w: OpWork, busy: dict[int, float], consumer: dict[str, int]) -> float:
    """The cycles operator ``i`` needs to send all its outputs through their FIFOs' credits."""
    m = prog.machine
    node = prog.nodes[i]
    out = 0.0
    for n, t in zip(node.outputs, node.out_types):
        c = consumer.get(n)
        if n == "_" or c is None:
            continue
        a_c = busy[c] / max(t.count, 1.0) if c in busy else 0.0  # a spill to HBM takes it at once
        out = max(out, credit_cycles(m, t.count, edge_depth(node, w, m, t), edge_service(node, w, m, busy[i], t),
                                     _latency(node, w, m), a_c))
    return out


def _tier_cycles(m: Machine, tier: str, nbytes: float, requests: float) -> float:
    """Cycles an off-chip tier needs for a section's traffic: its bandwidth, or its request slots
    (``max_outstanding`` requests of one stream element each, every one held for the latency)
    when the elements are too small to fill the bandwidth."""
    mem = m.mem(tier)
    return max(nbytes / m.bytes_per_cycle(tier), requests * m.latency_cycles(tier) / mem.max_outstanding)


def roofline(prog) -> tuple[float, str]:
    """The physical lower bound in cycles: the larger of compute at peak and compulsory traffic
    at full bandwidth (every parameter read and every result written once)."""
    m = prog.machine
    simd = simd32 = tail = mm = mm32 = 0.0
    traffic = {"hbm": 0.0, "ddr": 0.0}
    read_full: set[str] = set()
    for node in prog.nodes:
        w = node_work(node)
        if w.fn:
            simd += w.fn.simd * w.elements
            simd32 += w.fn.simd32 * w.elements
            tail += w.fn.tail * w.elements
            mm += w.fn.mm * w.elements
            mm32 += w.fn.mm32 * w.elements
        if node.op in ("load", "store"):
            read_full.add(node.tensor.name)
        elif node.op in ("gather", "scatter") and node.tensor.name not in read_full:
            traffic[node.tensor.tier] += min(w.offchip_bytes, node.tensor.nbytes)
    for name in read_full:
        t = prog.tensors[name]
        traffic[t.tier] += t.nbytes
    p = m.pcu.count
    terms = {
        "compute": max(((simd - simd32) / m.simd_ops_per_cycle + simd32 / m.simd_ops_per_cycle_for("f32")) / p,
                       tail / (m.tail_ops_per_cycle * p),
                       mm / (m.mm_flops_per_cycle("bf16") * p), mm32 / (m.mm_flops_per_cycle("f32") * p)),
        "hbm": traffic["hbm"] / m.bytes_per_cycle("hbm"),
        "ddr": traffic["ddr"] / m.bytes_per_cycle("ddr"),
    }
    limit = max(terms, key=terms.get)
    return terms[limit], limit


def profile(prog) -> Report:
    """Time ``prog`` with the fast model. Needs only the checked types (no data)."""
    if hasattr(prog, "programs"):  # a kernel on several sockets (collectives.GroupProgram)
        return prog.time("fast")
    m = prog.machine
    works = [node_work(n) for n in prog.nodes]
    units = [node_units(n, w, m) for n, w in zip(prog.nodes, works)]
    section_of = {i: s for s, sec in enumerate(prog.sections) for i in sec}
    producer = {o: i for i, n in enumerate(prog.nodes) for o in n.outputs if o != "_"}
    consumer = {n: i for i, node in enumerate(prog.nodes) for n in node.inputs}
    total = 0.0
    hbm = ddr = 0.0
    op_timings: list[OpTiming] = []
    busiest = ("", -1.0)
    pcu_busy = 0.0
    for s, sec in enumerate(prog.sections):
        # a stream crossing a cut is written to HBM by the section that makes it and read back
        # by the section that uses it: each pays for its own half
        traffic = {"hbm": 0.0, "ddr": 0.0}
        requests = {"hbm": 0.0, "ddr": 0.0}
        for i in sec:
            node = prog.nodes[i]
            crossing = [(n, t) for n, t in zip(node.inputs, node.in_types) if section_of[producer[n]] != s]
            crossing += [(n, t) for n, t in zip(node.outputs, node.out_types)
                         if n != "_" and section_of.get(consumer.get(n, i), s) != s]
            for _, t in crossing:
                traffic["hbm"] += t.count * spill_bytes(t)
                requests["hbm"] += t.count * spill_requests(t)
        busy = {}
        for i in sec:
            w = works[i]
            b, limit = operator_busy(prog.nodes[i], w, m, units[i])
            busy[i] = (b, limit)
            if w.offchip_bytes:
                traffic[w.tier] += w.offchip_bytes
                requests[w.tier] += w.elements
        # an operator whose output FIFO is too shallow for the round trip to its consumer runs
        # at the pace of the credits, not of its own unit
        own = {i: b for i, (b, _) in busy.items()}
        pace = {}
        for i in sec:
            credit = _credit_busy(prog, i, works[i], own, consumer)
            pace[i] = max(own[i], credit)
            if credit > own[i]:  # reported as the cycles its credits take
                busy[i] = (credit, "fifo")
        candidates = {f"{prog.nodes[i].op}@{prog.nodes[i].call.span.line}": pace[i] for i in sec}
        for tier in ("hbm", "ddr"):
            candidates[tier] = _tier_cycles(m, tier, traffic[tier], requests[tier])
        link = sum(link_share(prog.nodes[i]) for i in sec if works[i].kind == "link")
        if link > 0:
            candidates["peer"] = link
        sec_bottleneck = max(candidates, key=candidates.get)
        steady = candidates[sec_bottleneck]
        sec_time, done = _section_cycles(prog, sec, works, pace, candidates, producer, consumer)
        if steady > busiest[1]:
            busiest = (sec_bottleneck, steady)
        total += sec_time
        hbm += traffic["hbm"]
        ddr += traffic["ddr"]
        for i in sec:
            node, w = prog.nodes[i], works[i]
            pcu_busy += own[i] * units[i].pcus  # service, not credit waits
            op_timings.append(OpTiming(i, node.op, node.call.span.line, list(node.outputs), w.elements,
                                       busy[i][0], busy[i][1], node.par, units[i].pcus, units[i].pmus,
                                       w.flops, w.offchip_bytes, s, done[i]))
    reconfig = (len(prog.sections) - 1) * m.reconfig.cycles
    total += reconfig
    total = max(total, 1.0)
    roof, roof_limit = roofline(prog)
    if total < roof * (1 - 1e-9):
        raise EmulatorError(f"simulated {total:.0f} cycles beat the roofline bound {roof:.0f}: emulator bug")
    seconds = total / (m.clock_ghz * 1e9)
    flops = sum(w.flops for w in works)
    u = prog.units
    bw = hbm / seconds / 1e9 if seconds else 0.0
    return Report(
        kernel=prog.kernel.name, machine=m.name, emulator=EMULATOR_VERSION, cycles=total, seconds=seconds,
        flops=flops, hbm_bytes=hbm, ddr_bytes=ddr, hbm_bandwidth_gbs=bw,
        hbm_bandwidth_fraction=bw / m.hbm.bandwidth_gbs,
        pcu_allocated=u["pcus"], pmu_allocated=u["pmus"], agcu_allocated=u["agcus"], sram_bytes=u["sram_bytes"],
        pcu_utilisation=pcu_busy / (total * m.pcu.count) if total else 0.0,
        pmu_utilisation=min(1.0, u["pmus"] / (m.pmu.count * len(prog.sections))),
        sram_utilisation=u["sram_bytes"] / (m.sram_bytes * len(prog.sections)),
        bottleneck=busiest[0], roofline_cycles=roof, roofline_seconds=roof / (m.clock_ghz * 1e9),
        roofline_fraction=min(1.0, roof / total), roofline_limit=roof_limit, sections=len(prog.sections),
        reconfig_cycles=reconfig, sizes=dict(prog.sizes), notes=list(prog.notes), routing=dict(prog.routing),
        ops=op_timings)
