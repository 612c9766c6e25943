"""Kernels that run on several sockets: sharded tensors, collectives and send/receive.

A kernel with a ``sockets P = N`` line runs on a group of P sockets (docs/asp.md, "More than one socket").
Every socket runs the kernel's statements (those a statement's ``on=[...]`` names, when it has
one) on its own shard of the tensors declared ``@split(axis)``: the caller passes and gets
the whole tensors, as for a one-socket kernel, so a sharded kernel is verified against the
same single-device reference. The sockets talk only through the operators defined here:

* ``all_reduce(s)``: the elementwise sum of ``s`` over the sockets of the group;
* ``all_gather(s, at=k)``: every socket's ``s``, stacked along a new stream dimension;
* ``reduce_scatter(s, dim=k)``: the sum, dimension ``k`` cut into one block per socket;
* ``send(s, to=j)`` / ``r = recv(from=i)``: point to point.

Why the program is checked as P programs in lockstep: each socket's program is an ordinary
one-socket program (so everything the checker, the interpreter and both timing models know
applies to it unchanged), and the statements of all sockets are visited in the order of the
text, so that a ``recv`` finds the type of the ``send`` it matches, and a collective knows,
once every socket has passed its statement, whether some socket of its group never reaches it.
Since a socket's dataflow follows the text and a ``recv`` may only take what an earlier
statement sent, a program that checks cannot deadlock; one that could is rejected with the
statement that would wait forever.

Costs come from ``asp_lang.node`` (the alpha-beta collective functions the whole-model
estimator uses too): a collective of ``n`` bytes takes ``cost(n)`` seconds, of which
``cost(0)`` (the latency terms) is charged as the operator's pipeline latency and the rest as
its busy time, streamed tile by tile, so compute upstream and downstream of it overlaps with
the transfer. The peer link is a shared resource of the socket in both timing models (several
collectives in one section share it), like a memory tier.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .checker import Program, begin_check, bind_sizes, check_stmt, finish_check
from .consts import eval_int
from .errors import (AffineError, ArgumentError, AspError, CollectiveError, LimitError,
                     MachineError, NameError_, ShapeError, SizeError, TypeError_)
from .event import simulate
from .interp import Limits, RunCtx, check_declared_sizes, prepare_inputs
from .ir import BinOp, Call, Kernel, ListExpr, Name, Param, Stmt
from .machine import Machine
from .ops import OPS, Node, OpWork, operator
from .timing import link_share, profile
from .types import StreamT, TensorT, TileT, round_to
from .values import SVal

MAX_SOCKETS = 64
COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter")  # every socket of a group takes part
LINK_OPS = COLLECTIVE_OPS + ("send", "recv")
DEFAULT_NODE = "sn40l-node8"  # whose peer links a group gets when none is named


# ---------------------------------------------------------------- the group being checked

@dataclass
class _Sent:
    type: StreamT
    call: Call
    statement: int


@dataclass
class GroupState:
    """What the sockets of a group share while their programs are checked in lockstep."""
    sockets: int
    node: object                       # asp_lang.node.Node with `sockets` sockets
    statement: int = 0                 # the kernel statement being checked
    mail: dict = field(default_factory=dict)     # (src, dst) -> [_Sent] in text order
    taken: dict = field(default_factory=dict)    # (src, dst) -> how many a recv has matched
    reached: dict = field(default_factory=dict)  # statement -> {socket: (input type, group)}


@dataclass
class GroupView:
    """``ctx.group`` of one socket's checker: its index and the shared state."""
    state: GroupState
    socket: int


def _view(ctx, call: Call) -> GroupView:
    g = getattr(ctx, "group", None)
    if g is None:
        raise CollectiveError(f"{call.func} talks to other sockets, but this kernel runs on one: add a "
                              "'sockets P = 2' line (docs/asp.md, 'More than one socket')", call.span)
    return g


def _socket_list(e, sizes: dict[str, int], p: int, what: str) -> tuple[int, ...]:
    """``on=[0, 2]`` / ``group=[0, 1]``: distinct sockets of the group, as written."""
    items = e.items if isinstance(e, ListExpr) else None
    if not items:
        raise ArgumentError(f"{what} takes a non-empty list of socket numbers, e.g. {what}=[0, 1]",
                            getattr(e, "span", None))
    out: list[int] = []
    for it in items:
        v = eval_int(it, sizes, what)
        if not 0 <= v < p:
            raise ArgumentError(f"{what} names socket {v}, but the kernel runs on sockets 0..{p - 1}", it.span)
        if v in out:
            raise ArgumentError(f"{what} names socket {v} twice", it.span)
        out.append(v)
    return tuple(out)


def _group_of(ctx, call: Call, g: GroupView) -> tuple[int, ...]:
    e = call.kw("group")
    members = tuple(range(g.state.sockets)) if e is None else _socket_list(e, ctx.sizes, g.state.sockets, "group")
    if g.socket not in members:
        raise CollectiveError(f"socket {g.socket} runs this {call.func} but is not in its group "
                              f"{list(members)} (name the sockets that run it with on=)", call.span)
    return members


def _tile_stream(s: StreamT, call: Call) -> None:
    if not isinstance(s.elem, TileT):
        raise TypeError_(f"{call.func} moves tile streams, got {s}", call.span)
    if s.dynamic:
        raise ShapeError(f"{call.func} needs a stream without dynamic dimensions (merge it first), got {s}",
                         call.span)


def _stream_bytes(s: StreamT) -> float:
    return float(s.count * s.elem.nbytes)


def _link_cost(node, kind: str, nbytes: float, group: int, src: int = 0, dst: int = 1) -> tuple[float, float]:
    """(busy, latency) in socket cycles of one collective of ``nbytes``: the node's alpha-beta
    cost split into its latency terms (``cost(0)``) and the rest."""
    clk = node.socket.clock_ghz * 1e9
    if kind == "send_recv":
        total, zero = node.send_recv_s(nbytes, src, dst), node.send_recv_s(0.0, src, dst)
    else:
        total, zero = node.collective_s(kind, nbytes, group), node.collective_s(kind, 0.0, group)
    return max(0.0, total - zero) * clk, zero * clk


def _reach(g: GroupView, s: StreamT, members: tuple[int, ...]) -> None:
    g.state.reached.setdefault(g.state.statement, {})[g.socket] = (s, members)


def _not_here(node, ins, rt):  # the group runner (run_group) runs the communication operators
    raise AssertionError(f"{node.op} runs only in a group (collectives.run_group)")


def _link_work(node: Node) -> OpWork:
    t = node.in_types[0] if node.in_types else node.out_types[0]
    return OpWork("link", t.count, float(t.elem.nbytes),
                  float(node.out_types[0].elem.nbytes) if node.out_types else 0.0)


def _group_operand(ctx, call, keywords: tuple[str, ...]):
    """What every group collective starts with: its one stream argument (a stream of tiles) and
    the sockets of its group, after checking the call's arguments against ``keywords``."""
    ctx.expect_args(call, 1, keywords)
    g = _view(ctx, call)
    s = ctx.stream_arg(call.args[0])
    _tile_stream(s, call)
    return g, s, _group_of(ctx, call, g)


@operator("all_reduce", "all_reduce(s, group=[..]?)", "link",
          "The elementwise sum of s over the sockets of the group (default: all); every socket of "
          "the group must run it, with a stream of the same type, and gets the sum.")
def _all_reduce_check(ctx, call, ntargets):
    g, s, members = _group_operand(ctx, call, ("group",))
    _reach(g, s, members)
    busy, lat = _link_cost(g.state.node, "all_reduce", _stream_bytes(s), len(members))
    return [s], {"group": members, "link_busy": busy, "link_latency": lat}, None, None


_all_reduce_check.run(_not_here)
_all_reduce_check.work(_link_work)


@operator("all_gather", "all_gather(s, at=k?, group=[..]?)", "link",
          "Every socket of the group gets the streams of all of them, stacked along a new stream "
          "dimension of size G (the group's size) at position k (default 0), in group order.")
def _all_gather_check(ctx, call, ntargets):
    g, s, members = _group_operand(ctx, call, ("at", "group"))
    at = eval_int(call.kw("at"), ctx.sizes, "at") if call.kw("at") is not None else 0
    if not 0 <= at <= s.rank:
        raise ArgumentError(f"at={at} must be between 0 and {s.rank}", call.kw("at").span)
    _reach(g, s, members)
    out = StreamT(s.dims[:at] + (len(members),) + s.dims[at:], s.elem)
    busy, lat = _link_cost(g.state.node, "all_gather", _stream_bytes(out), len(members))
    return [out], {"group": members, "at": at, "link_busy": busy, "link_latency": lat}, None, None


_all_gather_check.run(_not_here)
_all_gather_check.work(_link_work)


@operator("reduce_scatter", "reduce_scatter(s, dim=k?, group=[..]?)", "link",
          "The elementwise sum of s over the group, with stream dimension k (default 0) cut into G "
          "equal blocks: the g-th socket of the group gets block g.")
def _reduce_scatter_check(ctx, call, ntargets):
    g, s, members = _group_operand(ctx, call, ("dim", "group"))
    if s.rank == 0:
        raise ShapeError(f"reduce_scatter cuts a stream dimension, but {s} has none", call.span)
    dim = eval_int(call.kw("dim"), ctx.sizes, "dim") if call.kw("dim") is not None else 0
    if not 0 <= dim < s.rank:
        raise ArgumentError(f"dim={dim} must be between 0 and {s.rank - 1}", call.kw("dim").span)
    if s.dims[dim] % len(members):
        raise SizeError(f"reduce_scatter cuts dimension {dim} of {s} into {len(members)} blocks, "
                        f"but {s.dims[dim]} is not a multiple of {len(members)}", call.span)
    _reach(g, s, members)
    out = StreamT(s.dims[:dim] + (s.dims[dim] // len(members),) + s.dims[dim + 1:], s.elem)
    busy, lat = _link_cost(g.state.node, "reduce_scatter", _stream_bytes(s), len(members))
    return [out], {"group": members, "dim": dim, "link_busy": busy, "link_latency": lat}, None, None


_reduce_scatter_check.run(_not_here)
_reduce_scatter_check.work(_link_work)


def _peer(ctx, call: Call, key: str, g: GroupView) -> int:
    e = call.kw(key)
    if e is None:
        raise ArgumentError(f"{call.func} needs {key}=<socket number> (usage: {OPS[call.func].signature})",
                            call.span)
    v = eval_int(e, ctx.sizes, key)
    if not 0 <= v < g.state.sockets:
        raise ArgumentError(f"{key}={v}: the kernel runs on sockets 0..{g.state.sockets - 1}", e.span)
    if v == g.socket:
        raise ArgumentError(f"socket {v} {'sends to' if key == 'to' else 'receives from'} itself "
                            "(use the stream directly)", e.span)
    return v


@operator("send", "send(s, to=j)", "link",
          "Send stream s to socket j, which takes it with recv(from=this socket) in a later statement.")
def _send_check(ctx, call, ntargets):
    ctx.expect_args(call, 1, ("to",))
    g = _view(ctx, call)
    s = ctx.stream_arg(call.args[0])
    _tile_stream(s, call)
    dst = _peer(ctx, call, "to", g)
    g.state.mail.setdefault((g.socket, dst), []).append(_Sent(s, call, g.state.statement))
    busy, lat = _link_cost(g.state.node, "send_recv", _stream_bytes(s), 2, g.socket, dst)
    return [], {"peer": dst, "link_busy": busy, "link_latency": lat}, None, None


_send_check.run(_not_here)
_send_check.work(_link_work)


@operator("recv", "recv(from=i)", "link",
          "The stream that socket i sent to this socket (the next one not yet received, in text order).")
def _recv_check(ctx, call, ntargets):
    ctx.expect_args(call, 0, ("from",))
    g = _view(ctx, call)
    src = _peer(ctx, call, "from", g)
    key = (src, g.socket)
    box = g.state.mail.get(key, [])
    n = g.state.taken.get(key, 0)
    if n >= len(box):
        raise CollectiveError(f"socket {g.socket} waits here for a stream from socket {src}, but no earlier "
                              f"statement sends one (send(..., to={g.socket}) on socket {src} must come before "
                              "this recv): it would wait forever (deadlock)", call.span)
    g.state.taken[key] = n + 1
    sent = box[n]
    busy, lat = _link_cost(g.state.node, "send_recv", _stream_bytes(sent.type), 2, src, g.socket)
    return [sent.type], {"peer": src, "link_busy": busy, "link_latency": lat, "message": n}, None, None


_recv_check.run(_not_here)
_recv_check.work(_link_work)


# ---------------------------------------------------------------- checking a group

class GroupProgram(Program):
    """A checked kernel that runs on several sockets: one Program per socket, plus what joins
    them. ``tensors`` are the whole tensors the caller passes and gets; ``nodes``, ``streams``,
    ``sections`` and ``units`` are socket 0's (each socket's are in ``programs``)."""

    def __init__(self, base: Program, programs: list[Program], node, on: list[tuple[int, ...]],
                 splits: dict[str, int], writers: dict[str, tuple[int, ...]],
                 stmt_nodes: list[dict[int, int]]):
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(Program)}
        super().__init__(**fields)
        self.programs = programs
        self.node = node
        self.on = on
        self.splits = splits
        self.writers = writers
        self.stmt_nodes = stmt_nodes

    @property
    def socket_count(self) -> int:
        return len(self.programs)

    # interp.run, timing.profile and event.simulate hand a group to these (they cannot import
    # this module: it builds on them), so the one-socket modules never import the group one.
    def run(self, inputs: dict[str, np.ndarray], limits=None) -> dict[str, np.ndarray]:
        """:func:`run_group`: every socket on its shards, with the collectives for real."""
        return run_group(self, inputs, limits)

    def time(self, model: str = "fast"):
        """:func:`time_group` with the named timing model ("fast" or "event")."""
        return time_group(self, model)


def resolve_node(node, machine: Machine, sockets: int):
    """The node a group runs on: ``node`` (a Node or a preset name) with ``sockets`` sockets, or
    the default node's peer links around ``machine``."""
    from .node import Node, load_node
    if node is None:
        base = load_node(DEFAULT_NODE)
        return Node(f"{machine.name} x{sockets}", f"{sockets} x {machine.name}, the peer links of {DEFAULT_NODE}",
                    sockets, machine, base.peer, base.host)
    if isinstance(node, str):
        node = load_node(node)
    if node.socket.name != machine.name:
        raise MachineError(f"node {node.name} is made of {node.socket.name} sockets, but the kernel is "
                           f"compiled for {machine.name}")
    return node.with_sockets(sockets)


def _on(st: Stmt, sizes: dict[str, int], p: int) -> tuple[int, ...]:
    e = st.call.kw("on")
    return tuple(range(p)) if e is None else tuple(sorted(_socket_list(e, sizes, p, "on")))


def _strip_on(st: Stmt) -> Stmt:
    if st.call.kw("on") is None:
        return st
    call = dataclasses.replace(st.call, kwargs=tuple((k, v) for k, v in st.call.kwargs if k != "on"))
    return dataclasses.replace(st, call=call)


def _split_axis(p: Param, sizes: dict[str, int], sockets: str) -> int | None:
    if p.split is None:
        return None
    axis = eval_int(p.split, sizes, "the @split axis")
    if not 0 <= axis < len(p.shape):
        raise ArgumentError(f"'{p.name}' has {len(p.shape)} axes; @split({axis}) needs an axis from 0 to "
                            f"{len(p.shape) - 1}", p.split.span)
    dim = eval_int(p.shape[axis], sizes, f"the shape of '{p.name}'")
    n = sizes[sockets]
    if dim % n:
        raise SizeError(f"'{p.name}' is split on axis {axis} over {sockets} = {n} sockets, but that axis has "
                        f"{dim} entries, not a multiple of {n}", p.split.span)
    return axis


def _shard(p: Param, axis: int | None, sockets: str) -> Param:
    """The parameter as one socket declares it: the split axis divided by the socket count, written
    ``DIM / P`` so that ``tile=[.., DIM / P]`` covers it whole (docs/asp.md, section 3.5)."""
    if axis is None:
        return p
    d = p.shape[axis]
    shape = p.shape[:axis] + (BinOp("/", d, Name(sockets, d.span), d.span),) + p.shape[axis + 1:]
    return dataclasses.replace(p, shape=shape)


def check_group(kernel: Kernel, machine: Machine, size_overrides, filename: str, source: str | None,
                routing: dict, node=None) -> GroupProgram:
    """Check a kernel with a ``sockets`` line as the programs of its P sockets (module docstring)."""
    sizes = bind_sizes(kernel, size_overrides)
    sk = kernel.sockets
    p = sizes[sk]
    if p > MAX_SOCKETS:
        raise SizeError(f"{sk} = {p} sockets: at most {MAX_SOCKETS}",
                        next((s.span for s in kernel.sizes if s.name == sk), None))
    node = resolve_node(node, machine, p)
    # the whole tensors, as the caller sees them (each socket's shards are checked against its
    # memory by its own program)
    tensors: dict[str, TensorT] = {}
    splits: dict[str, int] = {}
    for prm in kernel.params + kernel.results:
        if prm.name in tensors:
            raise NameError_(f"'{prm.name}' is declared twice", prm.span)
        shape = tuple(eval_int(e, sizes, f"the shape of '{prm.name}'") for e in prm.shape)
        if any(d <= 0 for d in shape):
            raise SizeError(f"'{prm.name}' has a non-positive dimension {list(shape)}", prm.span)
        tensors[prm.name] = TensorT(prm.name, prm.dtype, shape, prm.tier)
        axis = _split_axis(prm, sizes, sk)
        if axis is not None:
            splits[prm.name] = axis
    on = [_on(st, sizes, p) for st in kernel.body]
    writers: dict[str, tuple[int, ...]] = {}
    for r in kernel.results:
        ws = sorted({s for n, st in enumerate(kernel.body) for s in on[n]
                     if st.call.func in ("store", "scatter") and st.call.args
                     and isinstance(st.call.args[0], Name) and st.call.args[0].id == r.name})
        if not ws:
            raise AffineError(f"result '{r.name}' is never stored", r.span)
        if r.name in splits and len(ws) < p:
            missing = [s for s in range(p) if s not in ws]
            raise AffineError(f"result '{r.name}' is split over the sockets, but socket(s) "
                              f"{', '.join(map(str, missing))} never store their shard", r.span)
        writers[r.name] = tuple(ws)
    programs_k: list[Kernel] = []
    for s in range(p):
        params = tuple(_shard(q, splits.get(q.name), sk) for q in kernel.params)
        results = tuple(_shard(q, splits.get(q.name), sk) for q in kernel.results
                        if q.name in splits or s in writers[q.name])
        body = tuple(_strip_on(st) for n, st in enumerate(kernel.body) if s in on[n])
        programs_k.append(dataclasses.replace(kernel, params=params, results=results, body=body, sockets=None))
    state = GroupState(p, node)
    ctxs = []
    for s in range(p):
        ctx = begin_check(programs_k[s], machine, None, routing, sizes=dict(sizes))
        ctx.group = GroupView(state, s)
        ctxs.append(ctx)
    stmt_nodes: list[dict[int, int]] = [{} for _ in range(p)]
    for n, st in enumerate(kernel.body):
        state.statement = n
        for s in on[n]:
            ctx = ctxs[s]
            stmt_nodes[s][n] = len(ctx.nodes)
            with _on_socket(s, p):
                check_stmt(ctx, len(ctx.nodes), programs_k[s].body[len(ctx.nodes)])
        if st.call.func in COLLECTIVE_OPS:
            _check_reached(st, state.reached.get(n, {}), on[n])
    for (src, dst), box in state.mail.items():
        taken = state.taken.get((src, dst), 0)
        if taken < len(box):
            sent = box[taken]
            raise CollectiveError(f"socket {src} sends a stream to socket {dst} here that socket {dst} never "
                                  f"receives (no recv(from={src}) on socket {dst} after it): the send would wait "
                                  "forever (deadlock)", sent.call.span)
    programs = []
    for s, ctx in enumerate(ctxs):
        with _on_socket(s, p):
            programs.append(finish_check(ctx, filename, source, routing))
    links = []  # (sender, its send's node, receiver, its recv's node): what time_group synchronises
    for r, prog_r in enumerate(programs):
        for j, nd in enumerate(prog_r.nodes):
            if nd.op == "recv":
                src = nd.attrs["peer"]
                sent = state.mail[(src, r)][nd.attrs["message"]]
                links.append((src, stmt_nodes[src][sent.statement], r, j))
    base = dataclasses.replace(programs[0], kernel=kernel, sizes=dict(sizes), tensors=tensors,
                               params=[q.name for q in kernel.params], results=[q.name for q in kernel.results],
                               notes=list(programs[0].notes))
    gp = GroupProgram(base, programs, node, on, splits, writers, stmt_nodes)
    gp.links = links
    return gp


@contextlib.contextmanager
def _on_socket(s: int, p: int):
    """An error in one socket's program says which socket (unless it names sockets already)."""
    try:
        yield
    except AspError as e:
        if p > 1 and "socket" not in e.message:
            e.message = f"{e.message} (on socket {s})"
            e.args = (e.message,)
        raise


def _check_reached(st: Stmt, reached: dict, on: tuple[int, ...]) -> None:
    """Every socket of a collective's group ran it, with streams of one type."""
    call = st.call
    groups = {g for _, g in reached.values()}
    if len(groups) > 1:
        raise CollectiveError(f"the sockets running this {call.func} name different groups "
                              f"({' and '.join(str(list(g)) for g in sorted(groups))})", call.span)
    (group,) = groups
    missing = [s for s in group if s not in reached]
    if missing:
        ran = [s for s in group if s in reached]
        raise CollectiveError(
            f"{call.func} over sockets {list(group)} is reached by socket(s) {', '.join(map(str, ran))} but "
            f"never by socket(s) {', '.join(map(str, missing))} (on={list(on)}): the sockets that reach it "
            "would wait for the others forever (deadlock)", call.span)
    types = {s: t for s, (t, _) in reached.items()}
    first = group[0]
    for s in group[1:]:
        if types[s] != types[first]:
            raise ShapeError(f"{call.func}: socket {first} gives {types[first]} but socket {s} gives {types[s]}; "
                             "every socket of the group must give a stream of the same type", call.span)


# ---------------------------------------------------------------- running a group

def _sum(arrays: list[np.ndarray], dtype: str) -> np.ndarray:
    """Sum in group order, in float32 (i32: wrapping), rounded once to the dtype."""
    acc = np.array(arrays[0], dtype=np.float32 if dtype != "i32" else np.int32, copy=True)
    for a in arrays[1:]:
        acc += a
    return round_to(dtype, acc)


def run_group(gp: GroupProgram, inputs: dict[str, np.ndarray], limits=None) -> dict[str, np.ndarray]:
    """Run every socket on its shards, with the collectives for real; the whole results."""
    try:
        check_declared_sizes(gp, limits)
        full = prepare_inputs(gp, inputs)
        limits = limits or Limits()
        p = gp.socket_count
        rts = []
        for s, sp in enumerate(gp.programs):
            shard = {}
            for name in sp.params:
                a = full[name]
                if name in gp.splits:
                    a = np.ascontiguousarray(np.split(a, p, axis=gp.splits[name])[s])
                    a.setflags(write=False)
                shard[name] = a
            rt = RunCtx(sp, shard, limits)
            for node in sp.nodes:
                for t in node.out_types:
                    est = t.count * (t.elem.nbytes if hasattr(t.elem, "nbytes") else 4)
                    if est > limits.max_array_bytes:
                        raise LimitError(f"{node.op} would produce a stream of {est / 2**30:.1f} GiB, over the "
                                         f"{limits.max_array_bytes / 2**30:.1f} GiB cap", node.call.span)
            rts.append(rt)
        values: list[dict[str, SVal]] = [{} for _ in range(p)]
        mail: dict[tuple[int, int], list[SVal]] = {}
        with np.errstate(all="ignore"):
            for n, st in enumerate(gp.kernel.body):
                members = gp.on[n]
                nodes = {s: gp.programs[s].nodes[gp.stmt_nodes[s][n]] for s in members}
                ins = {s: [values[s].pop(x) for x in nodes[s].inputs] for s in members}
                op = st.call.func
                if op in COLLECTIVE_OPS:
                    outs = _run_collective(op, nodes, ins)
                elif op == "send":
                    for s in members:
                        mail.setdefault((s, nodes[s].attrs["peer"]), []).append(ins[s][0])
                    outs = {s: [] for s in members}
                elif op == "recv":
                    outs = {s: [mail[(nodes[s].attrs["peer"], s)].pop(0)] for s in members}
                else:
                    outs = {}
                    for s in members:
                        try:
                            outs[s] = OPS[op].run(nodes[s], ins[s], rts[s])
                        except AspError as e:
                            if e.span.line <= 0:
                                e.span = nodes[s].call.span
                            raise
                for s in members:
                    for name, v in zip(nodes[s].outputs, outs[s]):
                        rts[s].check_value(nodes[s], v)
                        if name != "_":
                            values[s][name] = v
                _shared_budget(rts, limits, nodes[members[0]])
        return _results(gp, rts)
    except AspError as e:
        raise e.located(gp.filename, gp.source) from None


def _shared_budget(rts, limits, node: Node) -> None:
    """The interpreter's caps on elements and accumulation steps hold for the whole group, not
    per socket (a 64-socket kernel gets no more work than a one-socket one)."""
    elements = sum(rt.elements for rt in rts)
    if elements > limits.max_elements:
        raise LimitError(f"the program's sockets produced more than {limits.max_elements} elements together "
                         f"(at {node.op}); run it at smaller sizes", node.call.span)
    steps = sum(rt.steps for rt in rts)
    if steps > limits.max_steps:
        raise LimitError(f"accumulation loops took more than {limits.max_steps} steps over the sockets (at "
                         f"{node.op}); use a simpler update (acc + f(x)) or smaller sizes", node.call.span)


def _run_collective(op: str, nodes: dict[int, Node], ins: dict[int, list[SVal]]) -> dict[int, list[SVal]]:
    any_node = next(iter(nodes.values()))
    group = any_node.attrs["group"]
    dtype = any_node.in_types[0].elem.dtype
    arrays = [np.asarray(ins[s][0].data) for s in group]
    if op == "all_reduce":
        total = _sum(arrays, dtype)
        return {s: [SVal(total)] for s in group}
    if op == "all_gather":
        stacked = np.stack(arrays, axis=any_node.attrs["at"])
        return {s: [SVal(stacked)] for s in group}
    total = _sum(arrays, dtype)
    blocks = np.split(total, len(group), axis=any_node.attrs["dim"])
    return {s: [SVal(blocks[g])] for g, s in enumerate(group)}


def _results(gp: GroupProgram, rts) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    spans = {r.name: r.span for r in gp.kernel.results}
    for name in gp.results:
        if name in gp.splits:
            out[name] = np.concatenate([rt.arrays[name] for rt in rts], axis=gp.splits[name])
            continue
        ws = gp.writers[name]
        first = rts[ws[0]].arrays[name]
        for s in ws[1:]:
            other = rts[s].arrays[name]
            if not np.array_equal(first, other, equal_nan=first.dtype.kind == "f"):
                raise CollectiveError(f"result '{name}' is not split, so every socket that stores it stores all "
                                      f"of it, but sockets {ws[0]} and {s} store different values: all_reduce "
                                      f"(or all_gather) it first, store it on one socket (on=[{ws[0]}]), or "
                                      "declare it @split(axis)", spans[name])
        out[name] = first
    return out


# ---------------------------------------------------------------- timing a group

def _finish(rep, index: int) -> float:
    """When node ``index`` of a socket's program delivers its last result, from the program's
    start (its section's start plus the sections before it, each taking its share of the
    program's cycles in proportion to its operators' finish times)."""
    op = next(o for o in rep.ops if o.index == index)
    before = [max((o.finish_cycles for o in rep.ops if o.section == sec), default=0.0)
              for sec in range(op.section)]
    return sum(before) + op.finish_cycles


def time_group(gp: GroupProgram, model: str = "fast"):
    """Time every socket's program with the named model and join them: the group takes as long
    as its slowest socket (each socket's collectives are charged their whole cost on its own
    peer link, so a symmetric group's sockets take the same time). ``Report.sockets`` lists
    every socket's cycles, bottleneck and link cycles."""
    fn = profile if model == "fast" else simulate
    # Start from each operator's own cost (an earlier call may have left waits in the attributes).
    for sp in gp.programs:
        for nd in sp.nodes:
            if "link_busy_alone" in nd.attrs:
                nd.attrs["link_busy"], nd.attrs["link_latency"] = nd.attrs["link_busy_alone"], nd.attrs["link_latency_alone"]
    reps = [fn(sp) for sp in gp.programs]
    # Sockets wait for each other where they communicate; both models read the same node
    # attributes, re-timed from the other sockets' timing until nothing moves (every wait is for
    # something earlier in the text, so about one pass per socket):
    # * a recv delivers no faster than its sender sends: its first element one element's worth of
    #   the sender's time after the sender's start, its last when the send finishes;
    # * a collective delivers no faster than its slowest member's input comes: on the other
    #   members it is paced, as a recv is, by the slowest member's producer.
    links = getattr(gp, "links", [])
    colls = [(n, gp.on[n]) for n, st in enumerate(gp.kernel.body) if st.call.func in COLLECTIVE_OPS]
    for _ in range(len(reps) + 1 if (links or colls) else 0):
        moved = set()
        for src, i, dst, j in links:
            sender = gp.programs[src].nodes[i]
            nd = gp.programs[dst].nodes[j]
            busy0 = nd.attrs.setdefault("link_busy_alone", nd.attrs["link_busy"])
            lat0 = nd.attrs.setdefault("link_latency_alone", nd.attrs["link_latency"])
            emit = max(0.0, _finish(reps[src], i) - sender.attrs["link_latency"])
            n = max(sender.in_types[0].count, 1.0)
            busy, lat = max(busy0, emit * (n - 1) / n), lat0 + emit / n
            if abs(busy - nd.attrs["link_busy"]) > 1e-6 or abs(lat - nd.attrs["link_latency"]) > 1e-6:
                nd.attrs["link_busy"], nd.attrs["link_latency"] = busy, lat
                moved.add(dst)
        for n, members in colls:
            ready = {}
            for s in members:
                sp = gp.programs[s]
                nd = sp.nodes[gp.stmt_nodes[s][n]]
                src = next(k for k, x in enumerate(sp.nodes) if nd.inputs[0] in x.outputs)
                ready[s] = _finish(reps[s], src)
            last = max(ready.values())
            for s in members:
                nd = gp.programs[s].nodes[gp.stmt_nodes[s][n]]
                busy0 = nd.attrs.setdefault("link_busy_alone", nd.attrs["link_busy"])
                lat0 = nd.attrs.setdefault("link_latency_alone", nd.attrs["link_latency"])
                busy, lat = busy0, lat0
                if ready[s] < last * (1 - 1e-9):  # a faster member: paced by the slowest one's input
                    k = max(nd.in_types[0].count, 1.0)
                    busy, lat = max(busy0, last * (k - 1) / k), lat0 + last / k
                if abs(busy - nd.attrs["link_busy"]) > 1e-6 or abs(lat - nd.attrs["link_latency"]) > 1e-6:
                    nd.attrs["link_busy"], nd.attrs["link_latency"] = busy, lat
                    moved.add(s)
        if not moved:
            break
        for s in moved:
            reps[s] = fn(gp.programs[s])
    slow = max(range(len(reps)), key=lambda s: reps[s].cycles)
    r = reps[slow]
    m = gp.machine
    p = len(reps)
    hbm = sum(x.hbm_bytes for x in reps)
    seconds = r.seconds
    bw = hbm / seconds / 1e9 if seconds else 0.0
    per_socket = []
    for s, x in enumerate(reps):
        link = sum(link_share(nd) for nd in gp.programs[s].nodes if nd.op in LINK_OPS)
        # a timeline: every operator's busy cycles, ending when it delivers its last result
        ops = [{"index": o.index, "op": o.op, "line": o.line, "limit": o.limit, "busy_cycles": o.busy_cycles,
                "finish_cycles": _finish(x, o.index)} for o in x.ops]
        per_socket.append({"socket": s, "cycles": x.cycles, "bottleneck": x.bottleneck, "link_cycles": link,
                           "hbm_bytes": x.hbm_bytes, "flops": x.flops, "sections": x.sections, "ops": ops})
    notes = list(r.notes) + [f"{p} sockets ({gp.node.name}: peer links {gp.node.peer.bandwidth_gbs:g} GB/s, "
                             f"{gp.node.peer.latency_ns:g} ns, {gp.node.peer.topology}); socket {slow} is the "
                             f"slowest ({r.cycles:.0f} cycles)"]
    return dataclasses.replace(
        r, kernel=gp.kernel.name, machine=f"{p} x {m.name}", flops=sum(x.flops for x in reps), hbm_bytes=hbm,
        ddr_bytes=sum(x.ddr_bytes for x in reps), hbm_bandwidth_gbs=bw,
        hbm_bandwidth_fraction=bw / (p * m.hbm.bandwidth_gbs),
        pcu_allocated=sum(x.pcu_allocated for x in reps), pmu_allocated=sum(x.pmu_allocated for x in reps),
        agcu_allocated=sum(x.agcu_allocated for x in reps), sram_bytes=sum(x.sram_bytes for x in reps),
        pcu_utilisation=sum(x.pcu_utilisation * x.cycles for x in reps) / (p * r.cycles) if r.cycles else 0.0,
        sizes=dict(gp.sizes), notes=notes, sockets=per_socket)


__all__ = ["GroupProgram", "check_group", "run_group", "time_group", "resolve_node", "COLLECTIVE_OPS",
           "LINK_OPS", "MAX_SOCKETS"]
