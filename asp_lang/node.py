"""Nodes of several sockets: N single-socket machines joined by peer links, plus a host link.

A :class:`Node` is what a model larger than one chip runs on. Each socket is an ordinary
:class:`asp_lang.machine.Machine` (its PCUs, PMUs, HBM and DDR are unchanged); the node adds
only what the sockets share: the peer links between them (bandwidth per link and direction,
latency per message hop, topology ``all_to_all`` or ``ring``) and the host link that loads
data into a socket (a PCIe-class link, also used for the GPU-style comparison in which the
host copies straight into HBM).

Communication is charged with the alpha-beta model: a message of ``n`` bytes over one link
costs ``alpha + n / beta`` (alpha = latency, beta = bandwidth). The collective functions below
are public and pure so that every timing model (the whole-model estimator, the ASP timing
models of sharded kernels) charges the same cost for the same collective.

Presets live in ``asp_lang/machines/nodes/``; ``load_node`` accepts a preset name or a TOML
file of the same form, and names the field of any mistake (``file.toml:LINE:COL``).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from .errors import MachineError
from .machine import FIELD_MESSAGES, Machine, load_description, load_machine

TOPOLOGIES = ("all_to_all", "ring")
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "send_recv")


@dataclass(frozen=True)
class PeerLinks:
    """The socket-to-socket fabric. ``bandwidth_gbs`` is one link, one direction."""
    bandwidth_gbs: float
    latency_ns: float
    topology: str


@dataclass(frozen=True)
class HostLink:
    """The link from host memory to one socket (each socket has its own)."""
    bandwidth_gbs: float
    latency_ns: float


# --------------------------------------------------------------------------------------------
# Collective costs (alpha-beta). ``nbytes`` is always the size of the full buffer one socket
# holds: the buffer being reduced (all_reduce), the gathered result (all_gather), the input that
# is reduced and scattered (reduce_scatter), the message (send_recv). ``p`` is the group size.
# Bandwidths are GB/s (1e9 bytes/s), latencies ns; results are seconds.
# --------------------------------------------------------------------------------------------

def _check(nbytes: float, p: int) -> None:
    if nbytes < 0:
        raise ValueError(f"collective size must be >= 0 bytes, got {nbytes}")
    if not isinstance(p, int) or p < 1:
        raise ValueError(f"collective group must have >= 1 socket, got {p!r}")


def ring_all_gather_s(nbytes: float, p: int, gbs: float, latency_ns: float) -> float:
    """Ring all-gather: p-1 steps, each moving one shard (n/p) over every link at once."""
    _check(nbytes, p)
    if p == 1:
        return 0.0
    return (p - 1) * (latency_ns * 1e-9 + nbytes / p / (gbs * 1e9))


def ring_reduce_scatter_s(nbytes: float, p: int, gbs: float, latency_ns: float) -> float:
    """Ring reduce-scatter: the mirror of the all-gather (p-1 steps of n/p bytes)."""
    return ring_all_gather_s(nbytes, p, gbs, latency_ns)


def ring_all_reduce_s(nbytes: float, p: int, gbs: float, latency_ns: float) -> float:
    """Ring all-reduce = reduce-scatter + all-gather: 2(p-1) alpha + 2 (p-1)/p n / beta
    (bandwidth-optimal; latency grows with p, which is what makes small decode messages costly)."""
    return ring_reduce_scatter_s(nbytes, p, gbs, latency_ns) + ring_all_gather_s(nbytes, p, gbs, latency_ns)


def a2a_all_gather_s(nbytes: float, p: int, gbs: float, latency_ns: float) -> float:
    """Fully connected all-gather: every socket sends its shard (n/p) to the p-1 others at once,
    each over its own link: one step, alpha + (n/p) / beta."""
    _check(nbytes, p)
    if p == 1:
        return 0.0
    return latency_ns * 1e-9 + nbytes / p / (gbs * 1e9)


def a2a_reduce_scatter_s(nbytes: float, p: int, gbs: float, latency_ns: float) -> float:
    """Fully connected reduce-scatter: each socket sends the p-1 shards it does not own, one per
    link, at once: alpha + (n/p) / beta."""
    return a2a_all_gather_s(nbytes, p, gbs, latency_ns)


def a2a_all_reduce_s(nbytes: float, p: int, gbs: float, latency_ns: float) -> float:
    """Fully connected all-reduce: the cheaper of one-shot (send the whole buffer to every peer
    at once and reduce locally: alpha + n/beta, best for small messages) and two-shot
    (reduce-scatter then all-gather: 2 alpha + 2 (n/p)/beta, best for large ones)."""
    _check(nbytes, p)
    if p == 1:
        return 0.0
    alpha, beta = latency_ns * 1e-9, gbs * 1e9
    return min(alpha + nbytes / beta, 2 * alpha + 2 * nbytes / p / beta)


def ring_hops(src: int, dst: int, p: int) -> int:
    """Links a message crosses on a bidirectional ring of p sockets (the shorter way round)."""
    d = abs(src - dst) % p
    return min(d, p - d)


def send_recv_s(nbytes: float, hops: int, gbs: float, latency_ns: float) -> float:
    """Point-to-point: cut-through over ``hops`` links (each adds alpha; the bytes stream once)."""
    _check(nbytes, 1)
    if hops == 0:
        return 0.0
    return hops * latency_ns * 1e-9 + nbytes / (gbs * 1e9)


def link_copy_s(nbytes: float, gbs: float, latency_ns: float = 0.0) -> float:
    """One bulk copy over a link or memory of ``gbs`` (model loads: host->DDR, DDR->HBM)."""
    if nbytes < 0:
        raise ValueError(f"copy size must be >= 0 bytes, got {nbytes}")
    return 0.0 if nbytes == 0 else latency_ns * 1e-9 + nbytes / (gbs * 1e9)


@dataclass(frozen=True)
class Node:
    """N identical sockets (``socket``), their peer links, and each socket's host link."""
    name: str
    description: str
    sockets: int
    socket: Machine
    peer: PeerLinks
    host: HostLink

    # ---- derived figures -------------------------------------------------------------------
    @property
    def hbm_gbs_total(self) -> float:
        return self.sockets * self.socket.hbm.bandwidth_gbs

    @property
    def hbm_bytes_total(self) -> float:
        return self.sockets * self.socket.hbm.capacity_gib * 2**30

    @property
    def ddr_bytes_total(self) -> float:
        return self.sockets * self.socket.ddr.capacity_gib * 2**30

    def with_sockets(self, n: int) -> "Node":
        """The same node with ``n`` sockets (for 1..N sweeps)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"sockets must be a positive integer, got {n!r}")
        return replace(self, sockets=n, name=f"{self.name}[{n}]" if n != self.sockets else self.name)

    def with_peer(self, **changes) -> "Node":
        """The same node with other peer-link settings (for sensitivity sweeps)."""
        return replace(self, peer=replace(self.peer, **changes))

    # ---- collectives -----------------------------------------------------------------------
    def _group(self, group: int | None) -> int:
        p = self.sockets if group is None else group
        if not isinstance(p, int) or p < 1 or p > self.sockets:
            raise ValueError(f"collective group of {p!r} sockets on a node of {self.sockets}")
        return p

    def all_reduce_s(self, nbytes: float, group: int | None = None) -> float:
        """Seconds to all-reduce an ``nbytes`` buffer over ``group`` sockets (default: all)."""
        p = self._group(group)
        f = a2a_all_reduce_s if self.peer.topology == "all_to_all" else ring_all_reduce_s
        return f(nbytes, p, self.peer.bandwidth_gbs, self.peer.latency_ns)

    def all_gather_s(self, nbytes: float, group: int | None = None) -> float:
        """Seconds to all-gather shards into an ``nbytes`` result on every socket."""
        p = self._group(group)
        f = a2a_all_gather_s if self.peer.topology == "all_to_all" else ring_all_gather_s
        return f(nbytes, p, self.peer.bandwidth_gbs, self.peer.latency_ns)

    def reduce_scatter_s(self, nbytes: float, group: int | None = None) -> float:
        """Seconds to reduce an ``nbytes`` buffer and leave 1/p of the sum on each socket."""
        p = self._group(group)
        f = a2a_reduce_scatter_s if self.peer.topology == "all_to_all" else ring_reduce_scatter_s
        return f(nbytes, p, self.peer.bandwidth_gbs, self.peer.latency_ns)

    def send_recv_s(self, nbytes: float, src: int = 0, dst: int = 1) -> float:
        """Seconds for socket ``src`` to send ``nbytes`` to socket ``dst``."""
        for s in (src, dst):
            if not isinstance(s, int) or not 0 <= s < self.sockets:
                raise ValueError(f"socket {s!r} is not on a node of {self.sockets} sockets")
        hops = 0 if src == dst else (1 if self.peer.topology == "all_to_all" else ring_hops(src, dst, self.sockets))
        return send_recv_s(nbytes, hops, self.peer.bandwidth_gbs, self.peer.latency_ns)

    def collective_s(self, kind: str, nbytes: float, group: int | None = None) -> float:
        """Dispatch by name (``all_reduce``, ``all_gather``, ``reduce_scatter``, ``send_recv``;
        send_recv is charged for the farthest pair of the group, sockets 0..group-1: on a ring
        of N that is min(group-1, N//2) hops)."""
        if kind == "send_recv":
            p = self._group(group)
            if p == 1:
                return 0.0
            hops = 1 if self.peer.topology == "all_to_all" else min(p - 1, self.sockets // 2)
            return send_recv_s(nbytes, hops, self.peer.bandwidth_gbs, self.peer.latency_ns)
        fn = {"all_reduce": self.all_reduce_s, "all_gather": self.all_gather_s,
              "reduce_scatter": self.reduce_scatter_s}.get(kind)
        if fn is None:
            raise ValueError(f"unknown collective '{kind}' (known: {', '.join(COLLECTIVES)})")
        return fn(nbytes, group)

    def collective_cycles(self, kind: str, nbytes: float, group: int | None = None) -> float:
        """The same cost in cycles of the socket clock (what the ASP timing models count)."""
        return self.collective_s(kind, nbytes, group) * self.socket.clock_ghz * 1e9

    # ---- bulk copies (model switching) -------------------------------------------------------
    def host_to_ddr_s(self, nbytes_per_socket: float) -> float:
        """Load ``nbytes`` into one socket's DDR from the host (all sockets load in parallel)."""
        return link_copy_s(nbytes_per_socket, self.host.bandwidth_gbs, self.host.latency_ns)

    def ddr_to_hbm_s(self, nbytes_per_socket: float) -> float:
        """Copy ``nbytes`` from a socket's DDR into its HBM: bounded by the slower of the two."""
        bw = min(self.socket.ddr.bandwidth_gbs, self.socket.hbm.bandwidth_gbs)
        return link_copy_s(nbytes_per_socket, bw, self.socket.ddr.latency_ns)

    def host_to_hbm_s(self, nbytes_per_socket: float) -> float:
        """GPU-style: the host copies straight into HBM over the (PCIe-class) host link."""
        return link_copy_s(nbytes_per_socket, self.host.bandwidth_gbs, self.host.latency_ns)

    def summary(self) -> dict:
        return {"name": self.name, "sockets": self.sockets, "socket": self.socket.name,
                "peer_gbs": self.peer.bandwidth_gbs, "peer_latency_ns": self.peer.latency_ns,
                "topology": self.peer.topology, "host_gbs": self.host.bandwidth_gbs,
                "hbm_gbs_total": self.hbm_gbs_total,
                "hbm_gib_total": self.hbm_bytes_total / 2**30, "ddr_gib_total": self.ddr_bytes_total / 2**30}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_NODE_DIR = ("machines", "nodes")


def node_presets() -> list[str]:
    d = resources.files("asp_lang").joinpath(*_NODE_DIR)
    return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".toml"))


def _number(table: dict, where: str, key: str, *, may_be_zero: bool = False) -> float:
    if key not in table:
        raise MachineError(f"[{where}] is missing '{key}'")
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise MachineError(f"[{where}] {key} must be a number, got {v!r}")
    if v < 0 or (v == 0 and not may_be_zero):
        raise MachineError(f"[{where}] {key} must be positive, got {v}")
    return float(v)


def _table(d: dict, key: str, allowed: set[str]) -> dict:
    if key not in d:
        raise MachineError(f"missing '{key}'")
    t = d[key]
    if not isinstance(t, dict):
        raise MachineError(f"[{key}] must be a table")
    unknown = set(t) - allowed
    if unknown:
        raise MachineError(f"[{key}] has unknown field(s) {', '.join(sorted(unknown))} "
                           f"(fields: {', '.join(sorted(allowed))})")
    return t


def node_from_dict(d: dict, origin: str = "<node>", base: Path | None = None) -> Node:
    """A Node from a parsed TOML table. ``socket`` names a machine preset or a TOML file
    (relative paths are taken from ``base``, the node file's folder)."""
    try:
        for key in ("name", "socket", "sockets", "peer", "host"):
            if key not in d:
                raise MachineError(f"missing '{key}'")
        unknown = set(d) - {"name", "description", "socket", "sockets", "peer", "host"}
        if unknown:
            raise MachineError(f"unknown key(s) {', '.join(sorted(unknown))}")
        n = d["sockets"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise MachineError(f"sockets must be a positive integer, got {n!r}")
        sock = d["socket"]
        if not isinstance(sock, str) or not sock:
            raise MachineError(f"socket must be a machine preset name or a TOML path, got {sock!r}")
        peer_t = _table(d, "peer", {"bandwidth_gbs", "latency_ns", "topology"})
        topo = peer_t.get("topology")
        if topo is None:
            raise MachineError("[peer] is missing 'topology'")
        if topo not in TOPOLOGIES:
            raise MachineError(f"[peer] topology must be one of {', '.join(TOPOLOGIES)}, got {topo!r}")
        peer = PeerLinks(_number(peer_t, "peer", "bandwidth_gbs"),
                         _number(peer_t, "peer", "latency_ns", may_be_zero=True), topo)
        host_t = _table(d, "host", {"bandwidth_gbs", "latency_ns"})
        host = HostLink(_number(host_t, "host", "bandwidth_gbs"),
                        _number(host_t, "host", "latency_ns", may_be_zero=True))
    except MachineError as e:
        raise MachineError(f"node description {origin}: {e.message}") from None
    target = sock
    if base is not None and sock.endswith(".toml") and not Path(sock).is_absolute():
        target = str(base / sock)
    try:
        machine = load_machine(target)
    except MachineError as e:
        raise MachineError(f"node description {origin}: socket = {sock!r}: {e.message}") from None
    return Node(str(d["name"]), str(d.get("description", "")), n, machine, peer, host)


def load_node(name_or_path: str | Path) -> Node:
    """A node preset by name (``sn40l-node8``, ``sn40l-node16``) or a TOML file of that form.

    Errors in a file are located there (``file.toml:LINE:COL``) at the field they name."""
    return load_description(name_or_path, "node", node_presets(), _NODE_DIR, node_from_dict,
                            FIELD_MESSAGES + ((r": (sockets|socket) must be", None, 1), (r"(socket) = ", None, 1)),
                            preset_word="a node preset")


def node_for(machine: str | Path, sockets: int | None = None) -> Node:
    """The node to run on from what a user names: a node preset or file (``sn40l-node16``), or a
    single-socket machine preset (``sn40l``), which means the smallest of its node presets
    (``sn40l-node*``) with at least ``sockets`` sockets, links as that preset sets them; or a
    single-socket machine file, whose sockets get the links of the smallest node preset with
    enough sockets. With ``sockets``, the node is cut to that many sockets."""
    s = str(machine)
    is_node_file = False
    if s not in node_presets() and Path(s).is_file():
        try:
            is_node_file = "sockets" in tomllib.loads(Path(s).read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            is_node_file = True   # load_node says where the file is wrong
    if s in node_presets() or is_node_file:
        node = load_node(s)
    else:
        fitting = []
        for name in node_presets():
            n = load_node(name)
            if n.socket.name == s or name.startswith(f"{s}-node"):
                fitting.append(n)
        own = None
        if not fitting:
            if not Path(s).is_file():
                raise MachineError(f"no node preset for machine '{s}' (node presets: {', '.join(node_presets())}; "
                                   f"or write a node TOML file, docs/multisocket.md)", filename=s)
            # a single-socket machine file: its sockets joined by the presets' links
            own = load_machine(s)
            fitting = [load_node(name) for name in node_presets()]
        fitting.sort(key=lambda n: n.sockets)
        want = sockets or fitting[-1].sockets
        node = next((n for n in fitting if n.sockets >= want), fitting[-1])
        if own is not None:
            node = replace(node, name=f"{own.name}-{node.name}", socket=own)
    if sockets is None:
        return node
    if not isinstance(sockets, int) or not 1 <= sockets <= node.sockets:
        raise MachineError(f"{node.name} has {node.sockets} sockets; --sockets {sockets} is not 1..{node.sockets}",
                           filename=s)
    return node.with_sockets(sockets)
