"""Stream operators. Each has, side by side, its type rule (``check``), its numpy semantics
(``run``) and the work it does (``work``: elements, bytes, flops, on-chip memory), which
the timing model turns into cycles for a given machine.

Operator arguments are stream names, tensor names, integer expressions over sizes, lists
of them, fn names, and (for ``init``) tile expressions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from .consts import eval_int, eval_int_list, eval_positive
from .errors import (ArgumentError, RoutingError, ShapeError, SizeError,
                     TypeError_)
from .ir import BinOp, Call, Expr, FnDef, ListExpr, Name, Num
from .tilefn import FnCost, TypedFn, eval_fn
from .types import BufT, Dyn, Elem, SelT, StreamT, TensorT, TileT, TupT, round_to
from .values import SVal, nbytes, tmap

if TYPE_CHECKING:
    from .checker import CheckCtx
    from .interp import RunCtx


@dataclass
class Node:
    """One checked operator application: what the interpreter runs and the timing model costs."""
    op: str
    call: Call
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    in_types: tuple[StreamT, ...]
    out_types: tuple[StreamT, ...]
    attrs: dict = field(default_factory=dict)
    fn: TypedFn | None = None
    par: int = 1
    tensor: TensorT | None = None
    index: int = 0


@dataclass
class OpWork:
    """Machine-independent work of one operator."""
    kind: str                 # mem | compute | route | shape | buffer
    elements: float           # stream elements processed
    in_bytes: float = 0.0     # on-chip bytes read per element
    out_bytes: float = 0.0    # on-chip bytes written per element
    fn: FnCost | None = None  # tile-function work per element
    offchip_bytes: float = 0.0
    tier: str = "hbm"
    sram_bytes: float = 0.0   # on-chip memory held (buffers are double-buffered)
    buffer_bytes: float = 0.0 # one on-chip buffer this operator fills or reads (its PMUs serve it)
    groups: float = 1.0       # outputs that wait for a whole group of inputs (accum) or buffers filled

    @property
    def flops(self) -> float:
        return self.fn.flops * self.elements if self.fn else 0.0


@dataclass(frozen=True)
class OpSpec:
    name: str
    signature: str
    kind: str
    check: Callable
    run: Callable
    work: Callable
    doc: str


OPS: dict[str, OpSpec] = {}


def operator(name: str, signature: str, kind: str, doc: str):
    """Register an operator from its type rule; ``.run`` and ``.work`` attach the other facets."""
    def deco(check):
        parts: dict[str, Callable] = {"check": check}

        def attach(facet):
            def setter(f):
                parts[facet] = f
                if "run" in parts and "work" in parts:
                    OPS[name] = OpSpec(name, signature, kind, parts["check"], parts["run"],
                                       parts["work"], doc)
                return f
            return setter
        check.run = attach("run")
        check.work = attach("work")
        return check
    return deco


# ---------------------------------------------------------------- helpers

def elem_shape(e: Elem) -> tuple[int, ...]:
    if isinstance(e, TileT):
        return e.shape
    if isinstance(e, SelT):
        return (e.k,)
    if isinstance(e, BufT):
        return e.dims + e.elem.shape
    raise AssertionError(e)


def elem_tiles(e: Elem) -> tuple[TileT, ...]:
    if isinstance(e, TileT):
        return (e,)
    if isinstance(e, TupT) and all(isinstance(i, TileT) for i in e.items):
        return tuple(e.items)  # type: ignore[return-value]
    raise TypeError(e)


def _span(e):
    return getattr(e, "span", None)


def dyn_index(t: StreamT) -> int | None:
    for i, d in enumerate(t.dims):
        if isinstance(d, Dyn):
            return i
    return None


def squeeze_tile(tile: tuple[int, ...], literal_one: tuple[bool, ...] | None = None) -> tuple[int, ...]:
    """A tile spec's element shape: leading entries written as the literal 1 are dropped while
    more than two entries remain (``[1, 1, BQ, D]`` -> ``[BQ, D]``). The rule looks at what is
    written, not at values, so a kernel means the same thing at every size."""
    t = list(tile)
    ones = list(literal_one) if literal_one is not None else [v == 1 for v in tile]
    while len(t) > 2 and ones[0]:
        t.pop(0)
        ones.pop(0)
    return tuple(t)


@dataclass(frozen=True)
class Tiling:
    shape: tuple[int, ...]
    tile: tuple[int, ...]
    grid: tuple[int, ...]
    kept: tuple[int, ...]          # tensor axes that remain stream dimensions
    elem: tuple[int, ...]          # element (tile) shape after squeezing

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.grid[i] for i in self.kept)


def make_tiling(tensor: TensorT, tile: tuple[int, ...], node, whole: tuple[bool, ...] | None = None,
                literal_one: tuple[bool, ...] | None = None) -> Tiling:
    """How a tile spec cuts a tensor. ``whole[i]`` marks axes the tile covers entirely by
    construction (the tile entry is written as the tensor's dimension); those are not stream
    dimensions. Without ``whole``, axes whose tile equals the dimension are dropped."""
    if len(tile) != len(tensor.shape):
        raise ShapeError(f"tile {list(tile)} has {len(tile)} entries but '{tensor.name}' has rank "
                         f"{len(tensor.shape)} ({tensor})", _span(node))
    grid = []
    for i, (s, t) in enumerate(zip(tensor.shape, tile)):
        if t <= 0:
            raise SizeError(f"tile entry {i} must be positive, got {t}", _span(node))
        if s % t:
            raise SizeError(f"tile {list(tile)} does not divide '{tensor.name}' {list(tensor.shape)}: "
                            f"{t} does not divide {s} (axis {i})", _span(node))
        grid.append(s // t)
    if whole is None:
        whole = tuple(t == s for s, t in zip(tensor.shape, tile))
    kept = tuple(i for i in range(len(tile)) if not whole[i])
    return Tiling(tensor.shape, tuple(tile), tuple(grid), kept, squeeze_tile(tuple(tile), literal_one))


def tiling_from_spec(ctx: "CheckCtx", tensor: TensorT, tile_e) -> Tiling:
    """The tiling a written ``tile=[...]`` gives: entries written exactly as the tensor's declared
    dimension cover that axis whole; the others make stream dimensions (even of size 1)."""
    tile = eval_int_list(tile_e, ctx.sizes, "tile")
    decl = ctx.declared_shape(tensor.name)
    items = tile_e.items
    whole = tuple(i < len(decl) and i < len(items) and items[i] == decl[i] for i in range(len(tile)))
    ones = tuple(isinstance(e, Num) and e.value == 1 for e in items)
    return make_tiling(tensor, tile, tile_e, whole, ones)


def match_tiling(tensor: TensorT, elem: tuple[int, ...], dims: tuple, node, what: str) -> Tiling:
    """The tiling under which a stream of ``dims`` with ``elem`` tiles covers ``tensor``.

    The element shape, right-aligned against the tensor, is the tile; the stream's dimensions
    must be the tile grid's sizes on a subsequence of axes that includes every axis the grid
    cuts (axes of grid size 1 may or may not be stream dimensions)."""
    if len(elem) > len(tensor.shape):
        raise ShapeError(f"tile {list(elem)} has more axes than '{tensor.name}' {list(tensor.shape)}", _span(node))
    tile = (1,) * (len(tensor.shape) - len(elem)) + tuple(elem)
    tl = make_tiling(tensor, tile, node)
    kept = _match_axes(tl.grid, tuple(dims))
    if kept is None:
        cut = [g for g in tl.grid if g > 1]
        raise ShapeError(f"{what} a stream of dimensions [{', '.join(map(str, dims))}] with tiles {list(elem)} "
                         f"into '{tensor.name}' {list(tensor.shape)} needs dimensions "
                         f"[{', '.join(map(str, cut))}] (size-1 dimensions may be added)", _span(node))
    return Tiling(tl.shape, tl.tile, tl.grid, kept, tuple(elem))


def _match_axes(grid: tuple[int, ...], dims: tuple) -> tuple[int, ...] | None:
    """Axes i_0 < i_1 < ... with grid[i_j] == dims[j], covering every axis with grid > 1."""
    def go(i: int, j: int) -> tuple[int, ...] | None:
        if j == len(dims):
            return () if all(g == 1 for g in grid[i:]) else None
        if i == len(grid):
            return None
        if grid[i] == dims[j]:
            rest = go(i + 1, j + 1)
            if rest is not None:
                return (i,) + rest
        if grid[i] == 1:
            return go(i + 1, j)
        return None
    return go(0, 0)


def tensor_to_stream(arr: np.ndarray, tl: Tiling) -> np.ndarray:
    k = len(tl.shape)
    inter = []
    for g, t in zip(tl.grid, tl.tile):
        inter += [g, t]
    a = arr.reshape(inter)
    a = a.transpose([2 * i for i in range(k)] + [2 * i + 1 for i in range(k)])
    return a.reshape(tl.dims + tl.elem)


def stream_to_tensor(data: np.ndarray, tl: Tiling) -> np.ndarray:
    k = len(tl.shape)
    a = np.asarray(data).reshape(tl.grid + tl.tile)
    perm = []
    for i in range(k):
        perm += [i, k + i]
    return a.transpose(perm).reshape(tl.shape)


def _order(ctx: "CheckCtx", call: Call, rank: int) -> tuple[int, ...] | None:
    e = call.kw("order")
    if e is None:
        return None
    order = eval_int_list(e, ctx.sizes, "order")
    if sorted(order) != list(range(rank)):
        raise ArgumentError(f"order {list(order)} must be a permutation of 0..{rank - 1}", _span(e))
    return order


def _same_dims(streams: list[StreamT], call: Call, what: str) -> tuple:
    dims = streams[0].dims
    for s in streams[1:]:
        if s.dims != dims:
            raise ShapeError(f"{what} needs streams of equal dimensions, got "
                             f"[{', '.join(map(str, dims))}] and [{', '.join(map(str, s.dims))}]", _span(call))
    return dims


def _tiles_of(streams: list[StreamT], call: Call, what: str) -> tuple[TileT, ...]:
    out: list[TileT] = []
    for s in streams:
        try:
            out.extend(elem_tiles(s.elem))
        except TypeError:
            raise TypeError_(f"{what} works on tile streams, got {s}", _span(call)) from None
    return tuple(out)


def _flat_args(vals: list[SVal]) -> list:
    out = []
    for v in vals:
        if isinstance(v.data, tuple):
            out.extend(v.data)
        else:
            out.append(v.data)
    return out


def _pos_fn(dims: tuple, nstatic: int):
    def pos(d: int):
        shape = [1] * nstatic
        shape[d] = dims[d]
        return np.arange(dims[d], dtype=np.int32).reshape(shape)
    return pos


def _check_fn_kw(ctx: "CheckCtx", call: Call, arg_tiles: tuple[TileT, ...], stream: StreamT) -> TypedFn:
    fn = ctx.fn_arg(call)
    dyn = tuple(range(stream.rank)) if stream.dynamic else ()
    return ctx.check_fn(fn, arg_tiles, stream.rank, dyn, call)


def _outputs(results: tuple[TileT, ...], dims) -> list[StreamT]:
    return [StreamT(dims, r) for r in results]


def _work_compute(node: Node) -> OpWork:
    ins = sum(t.elem.nbytes for t in node.in_types)
    outs = sum(t.elem.nbytes for t in node.out_types)
    n = node.in_types[0].count
    return OpWork("compute", n, ins / 1.0, outs * (node.out_types[0].count / n if n else 0),
                  node.fn.cost if node.fn else None)


# ---------------------------------------------------------------- off-chip memory

@operator("load", "load(x, tile=[..], order=[..]?, repeat=n|[n, ..]?, at=k|[k, ..]?, par=p?)", "mem",
          "Read tensor x tile by tile (row-major over the tile grid). Axes the tile covers whole "
          "are not stream dimensions. `order` permutes the stream dimensions; `repeat=n, at=k` "
          "re-reads from memory, inserting a dimension of size n at position k.")
def _load_check(ctx: "CheckCtx", call: Call, ntargets: int):
    ctx.expect_args(call, 1, ("tile", "order", "repeat", "at", "par"))
    tensor = ctx.tensor_arg(call.args[0], param=True)
    tile_e = call.kw("tile")
    if tile_e is None:
        raise ArgumentError("load needs tile=[...] (one entry per tensor axis)", _span(call))
    tl = tiling_from_spec(ctx, tensor, tile_e)
    dims = tl.dims
    order = _order(ctx, call, len(dims))
    if order:
        dims = tuple(dims[i] for i in order)
    repeats = _load_repeats(ctx, call, len(dims))
    for at, n in repeats:
        dims = dims[:at] + (n,) + dims[at:]
    out = StreamT(dims, TileT(tensor.dtype, tl.elem))
    return [out], {"tiling": tl, "order": order, "repeats": repeats}, None, tensor


def _load_repeats(ctx: "CheckCtx", call: Call, rank: int) -> list[tuple[int, int]]:
    """``repeat=n, at=k`` or ``repeat=[n1, n2], at=[k1, k2]``: re-reads inserting dimensions.

    Positions refer to the stream as it is after the earlier insertions, left to right.
    """
    rep, at_e = call.kw("repeat"), call.kw("at")
    if rep is None:
        if at_e is not None:
            raise ArgumentError("at= only goes with repeat=", _span(at_e))
        return []
    if isinstance(rep, ListExpr):
        ns = [eval_positive(r, ctx.sizes, "repeat") for r in rep.items]
        if at_e is None or not isinstance(at_e, ListExpr) or len(at_e.items) != len(ns):
            raise ArgumentError("repeat=[...] needs at=[...] with one position per count", _span(call))
        ats = [eval_int(a, ctx.sizes, "at") for a in at_e.items]
    else:
        ns = [eval_positive(rep, ctx.sizes, "repeat")]
        if isinstance(at_e, ListExpr):
            raise ArgumentError("at=[...] goes with repeat=[...]", _span(at_e))
        ats = [eval_int(at_e, ctx.sizes, "at") if at_e is not None else 0]
    out = []
    for n, at in zip(ns, ats):
        if not 0 <= at <= rank:
            raise ArgumentError(f"at={at} must be between 0 and {rank}", _span(at_e))
        out.append((at, n))
        rank += 1
    return out


@_load_check.run
def _load_run(node: Node, ins: list[SVal], rt: "RunCtx") -> list[SVal]:
    tl: Tiling = node.attrs["tiling"]
    data = tensor_to_stream(rt.tensor(node.tensor.name), tl)
    order = node.attrs["order"]
    if order:
        nd = len(order)
        data = data.transpose(list(order) + list(range(nd, data.ndim)))
    for at, n in node.attrs["repeats"]:
        data = np.expand_dims(data, at)
        shape = list(data.shape)
        shape[at] = n
        data = np.broadcast_to(data, shape)
    return [SVal(data)]


@_load_check.work
def _load_work(node: Node) -> OpWork:
    out = node.out_types[0]
    b = out.elem.nbytes
    return OpWork("mem", out.count, 0.0, b, offchip_bytes=out.count * b, tier=node.tensor.tier)


@operator("store", "store(y, s, order=[..]?, par=p?)", "mem",
          "Write stream s into result y; the element shape, right-aligned against y's shape, "
          "is the tile. Every result is stored exactly once.")
def _store_check(ctx: "CheckCtx", call: Call, ntargets: int):
    ctx.expect_args(call, 2, ("order", "par"))
    tensor = ctx.tensor_arg(call.args[0], param=False)
    s = ctx.stream_arg(call.args[1])
    if not isinstance(s.elem, TileT):
        raise TypeError_(f"store needs a tile stream, got {s}", _span(call.args[1]))
    if s.dynamic:
        raise ShapeError(f"store needs a stream without dynamic dimensions (merge it first), got {s}",
                         _span(call.args[1]))
    if s.elem.dtype != tensor.dtype:
        raise TypeError_(f"storing {s.elem.dtype} tiles into {tensor.dtype} result '{tensor.name}'; "
                         f"cast in a map first", _span(call))
    order = _order(ctx, call, s.rank)
    dims = tuple(s.dims)
    if order:
        inv = [order.index(i) for i in range(len(order))]
        dims = tuple(dims[i] for i in inv)
    tl = match_tiling(tensor, s.elem.shape, dims, call, "storing")
    return [], {"tiling": tl, "order": order}, None, tensor


@_store_check.run
def _store_run(node: Node, ins: list[SVal], rt: "RunCtx") -> list[SVal]:
    data = np.asarray(ins[0].data)
    order = node.attrs["order"]
    if order:
        nd = len(order)
        inv = list(np.argsort(order))
        data = data.transpose(inv + list(range(nd, data.ndim)))
    rt.write(node.tensor.name, stream_to_tensor(data, node.attrs["tiling"]))
    return []


@_store_check.work
def _store_work(node: Node) -> OpWork:
    s = node.in_types[0]
    b = s.elem.nbytes
    return OpWork("mem", s.count, b, 0.0, offchip_bytes=s.count * b, tier=node.tensor.tier)


def _index_tiling(ctx, call, tensor, tile_e):
    if tile_e is None:
        raise ArgumentError(f"{call.func} needs tile=[...]", _span(call))
    tl = tiling_from_spec(ctx, tensor, tile_e)
    if len(tl.dims) != 1:
        raise ShapeError(f"{call.func} needs a tile that leaves exactly one stream dimension of "
                         f"'{tensor.name}' to index, it leaves [{', '.join(map(str, tl.dims))}]", _span(tile_e))
    return tl


def _index_stream(s: StreamT, call, arg) -> None:
    if not (isinstance(s.elem, TileT) and s.elem.dtype == "i32" and s.elem.numel == 1):
        raise TypeError_(f"{call.func} needs an index stream of single i32 values, got {s}", _span(arg))
    if s.dynamic:
        raise ShapeError(f"{call.func} needs a static index stream", _span(arg))


def _indices(idx: SVal, n: int, what: str) -> np.ndarray:
    i = np.asarray(idx.data)
    flat = i.reshape(i.shape[:i.ndim - 0])
    bad = (flat < 0) | (flat >= n)
    if bad.any():
        v = int(flat[bad].ravel()[0])
        raise RoutingError(f"{what} index {v} is out of range [0, {n})")
    return flat


@operator("gather", "gather(x, idx, tile=[..], par=p?)", "mem",
          "Read the tiles of x selected by an index stream (one i32 per element); the tile must "
          "leave one stream dimension of x, which the index selects along.")
def _gather_check(ctx, call, ntargets):
    ctx.expect_args(call, 2, ("tile", "par"))
    tensor = ctx.tensor_arg(call.args[0], param=True)
    idx = ctx.stream_arg(call.args[1])
    _index_stream(idx, call, call.args[1])
    tl = _index_tiling(ctx, call, tensor, call.kw("tile"))
    return [StreamT(idx.dims, TileT(tensor.dtype, tl.elem))], {"tiling": tl}, None, tensor


@_gather_check.run
def _gather_run(node, ins, rt):
    tl = node.attrs["tiling"]
    table = tensor_to_stream(rt.tensor(node.tensor.name), tl)
    idx = np.asarray(ins[0].data)
    r = len(node.in_types[0].elem.shape)
    flat = idx.reshape(idx.shape[:idx.ndim - r])
    _indices(SVal(flat), table.shape[0], "gather")
    return [SVal(table[flat])]


@_gather_check.work
def _gather_work(node):
    out = node.out_types[0]
    b = out.elem.nbytes
    return OpWork("mem", out.count, 4.0, b, offchip_bytes=out.count * b, tier=node.tensor.tier)


@operator("scatter", "scatter(y, idx, s, par=p?)", "mem",
          "Write each tile of s to the position of y named by the index stream. Positions never "
          "written hold no defined value (the interpreter fills NaN or the i32 minimum).")
def _scatter_check(ctx, call, ntargets):
    ctx.expect_args(call, 3, ("par",))
    tensor = ctx.tensor_arg(call.args[0], param=False, partial=True)
    idx = ctx.stream_arg(call.args[1])
    _index_stream(idx, call, call.args[1])
    s = ctx.stream_arg(call.args[2])
    if not isinstance(s.elem, TileT) or s.elem.dtype != tensor.dtype:
        raise TypeError_(f"scatter into {tensor.dtype} '{tensor.name}' needs {tensor.dtype} tiles, got {s}",
                         _span(call.args[2]))
    if s.dims != idx.dims:
        raise ShapeError("scatter's index and value streams need equal dimensions", _span(call))
    tile = (1,) * (len(tensor.shape) - len(s.elem.shape)) + s.elem.shape
    tl = make_tiling(tensor, tile, call)
    cut = [i for i, g in enumerate(tl.grid) if g > 1] or [0]
    if len(cut) != 1:
        raise ShapeError(f"scatter's tiles {list(s.elem.shape)} must leave exactly one stream dimension of "
                         f"'{tensor.name}'", _span(call))
    tl = Tiling(tl.shape, tl.tile, tl.grid, tuple(cut), tl.elem)
    return [], {"tiling": tl}, None, tensor


@_scatter_check.run
def _scatter_run(node, ins, rt):
    tl = node.attrs["tiling"]
    table = tensor_to_stream(rt.tensor(node.tensor.name), tl).copy()
    idx = np.asarray(ins[0].data)
    r = len(node.in_types[0].elem.shape)
    flat = idx.reshape(idx.shape[:idx.ndim - r]).ravel()
    _indices(SVal(flat), table.shape[0], "scatter")
    vals = np.asarray(ins[1].data).reshape((-1,) + tl.elem)
    table[flat] = vals
    rt.write(node.tensor.name, stream_to_tensor(table, tl), partial=True)
    return []


@_scatter_check.work
def _scatter_work(node):
    s = node.in_types[1]
    b = s.elem.nbytes
    return OpWork("mem", s.count, b + 4.0, 0.0, offchip_bytes=s.count * b, tier=node.tensor.tier)


# ---------------------------------------------------------------- on-chip buffers

@operator("bufferize", "bufferize(s, rank=r?, par=p?)", "buffer",
          "Collect each innermost rank-r sub-stream into an on-chip buffer (double-buffered) and "
          "emit one reference per buffer. par=p banks the buffer over at least p PMUs, so it is "
          "written p times as fast.")
def _bufferize_check(ctx, call, ntargets):
    ctx.expect_args(call, 1, ("rank", "par"))
    s = ctx.stream_arg(call.args[0])
    r = eval_positive(call.kw("rank"), ctx.sizes, "rank") if call.kw("rank") is not None else 1
    if r > s.rank:
        raise ShapeError(f"bufferize rank {r} exceeds the stream's rank {s.rank}", _span(call))
    if not isinstance(s.elem, TileT):
        raise TypeError_(f"bufferize needs a tile stream, got {s}", _span(call.args[0]))
    if any(isinstance(d, Dyn) for d in s.dims[s.rank - r:]):
        raise ShapeError("bufferize cannot hold a dynamic dimension", _span(call))
    buf = BufT(tuple(s.dims[s.rank - r:]), s.elem)
    ctx.check_sram(buf.nbytes * 2, call, "buffer")
    return [StreamT(s.dims[:s.rank - r], buf)], {"rank": r}, None, None


@_bufferize_check.run
def _bufferize_run(node, ins, rt):
    return [ins[0]]


@_bufferize_check.work
def _bufferize_work(node):
    s = node.in_types[0]
    out = node.out_types[0]
    return OpWork("buffer", s.count, s.elem.nbytes, 0.0, sram_bytes=2 * out.elem.nbytes,
                  groups=max(out.count, 1.0), buffer_bytes=out.elem.nbytes)


@operator("streamify", "streamify(b, repeat=n?, par=p?)", "buffer",
          "Re-read each buffer as a stream (n times when repeat=n, adding a dimension of size n "
          "before the buffer's dimensions).")
def _streamify_check(ctx, call, ntargets):
    ctx.expect_args(call, 1, ("repeat", "par"))
    s = ctx.stream_arg(call.args[0])
    if not isinstance(s.elem, BufT):
        raise TypeError_(f"streamify needs a stream of buffer references (from bufferize), got {s}",
                         _span(call.args[0]))
    rep = call.kw("repeat")
    n = eval_positive(rep, ctx.sizes, "repeat") if rep is not None else None
    dims = s.dims + ((n,) if n else ()) + s.elem.dims
    return [StreamT(dims, s.elem.elem)], {"repeat": n}, None, None


@_streamify_check.run
def _streamify_run(node, ins, rt):
    n = node.attrs["repeat"]
    v = ins[0]
    if n is None:
        return [v]
    outer = node.in_types[0].rank
    dyn = dyn_index(node.in_types[0])
    ax = outer if dyn is None else outer - dyn

    def rep(a):
        a = np.expand_dims(a, ax)
        shape = list(a.shape)
        shape[ax] = n
        return np.broadcast_to(a, shape)
    return [v.map(rep)]


@_streamify_check.work
def _streamify_work(node):
    out = node.out_types[0]
    return OpWork("buffer", out.count, 0.0, out.elem.nbytes, buffer_bytes=node.in_types[0].elem.nbytes)


# ---------------------------------------------------------------- higher-order (compute)

@operator("map", "map(s1, s2, ..., fn=f, par=p?)", "compute",
          "Apply tile function f elementwise over streams of equal dimensions; a fn returning a "
          "tuple defines several output streams.")
def _map_check(ctx, call, ntargets):
    ctx.expect_args(call, None, ("fn", "par"))
    if not call.args:
        raise ArgumentError("map needs at least one stream", _span(call))
    streams = [ctx.stream_arg(a) for a in call.args]
    dims = _same_dims(streams, call, "map")
    tiles = _tiles_of(streams, call, "map")
    tf = _check_fn_kw(ctx, call, tiles, streams[0])
    return _outputs(tf.results, dims), {}, tf, None


def _static_pos(node: Node, extra_batch: int = 0):
    t = node.in_types[0]
    if t.dynamic:
        return None
    return _pos_fn(t.dims, t.rank)


@_map_check.run
def _map_run(node, ins, rt):
    args = _flat_args(ins)
    rt.charge_elements(node, node.in_types[0].count if not node.in_types[0].dynamic else
                       len(np.asarray(args[0])))
    lengths = ins[0].lengths
    batch = _batch_shape(args[0], node.fn.arg_types[0])
    outs = _eval_chunked(node.fn, args, _static_pos(node), batch)
    if outs is None:
        outs = eval_fn(node.fn, args, _static_pos(node))
    return [SVal(np.broadcast_to(np.asarray(o), batch + t.shape), lengths)
            for o, t in zip(outs, node.fn.results)]


def _batch_shape(arg, tile: TileT) -> tuple[int, ...]:
    """The stream axes of an argument array (a fn may ignore its inputs and return a constant)."""
    a = np.asarray(arg)
    return a.shape[:a.ndim - len(tile.shape)]


# Chunked evaluation. A tile function over a large stream is evaluated a slice of the stream
# at a time, so a chain of elementwise operations works on cache-resident temporaries instead
# of making one pass over memory (and one fresh allocation) per operation. Every tile-function
# operation is per stream element, so cutting along stream axes gives the same numbers.
_CHUNK_ELEMS = 1 << 16       # about this many values per temporary (256 KiB of f32)
_CHUNK_MIN_ELEMS = 1 << 20   # streams smaller than this are evaluated in one go


def _fn_elem_size(tf: TypedFn) -> int:
    """The largest tile (values) a tile function holds: its arguments or any intermediate."""
    return max([t.numel for t in tf.types.values()] + [t.numel for t in tf.arg_types] + [1])


def _chunk_index(batch: tuple, per_elem: int, target: int):
    """Index tuples (slices on leading stream axes, rank kept) cutting ``batch`` into chunks
    of about ``target`` values, ``per_elem`` values per stream element."""
    if not batch:
        yield ()
        return
    inner = math.prod(batch[1:]) * per_elem
    if len(batch) > 1 and inner > target:
        for i in range(batch[0]):
            for rest in _chunk_index(batch[1:], per_elem, target):
                yield (slice(i, i + 1),) + rest
        return
    step = max(1, target // max(inner, 1))
    for s in range(0, batch[0], step):
        yield (slice(s, min(s + step, batch[0])),)


def _chunkable(arrs: list, lead: tuple) -> bool:
    return all(a.ndim >= len(lead) and a.shape[:len(lead)] == lead for a in arrs)


def _slice_pos(pos, idx: tuple):
    """``pos`` for the chunk ``idx`` of the stream."""
    if pos is None:
        return None

    def p(d):
        a = pos(d)
        return a[(slice(None),) * d + (idx[d],)] if d < len(idx) else a
    return p


def _empty_like_stream(arrs: list, shape: tuple, dtype) -> np.ndarray:
    """A result array laid out in memory like an argument of the same shape (so that a stream
    read from a tensor keeps the tensor's layout and its store needs no transposing copy)."""
    for a in arrs:
        if a.shape == shape and all(s != 0 for s, n in zip(a.strides, a.shape) if n > 1):
            return np.empty_like(a, dtype=dtype)
    return np.empty(shape, dtype)


def _eval_chunked(tf: TypedFn, args: list, pos, batch: tuple) -> list | None:
    """``eval_fn`` chunk by chunk into preallocated results; None when the stream is small
    (or oddly shaped) and one ``eval_fn`` over it all is as good."""
    per = _fn_elem_size(tf)
    arrs = [np.asarray(a) for a in args]
    if math.prod(batch) * per < _CHUNK_MIN_ELEMS or not batch or not _chunkable(arrs, batch):
        return None
    outs: list = [None] * len(tf.results)
    for idx in _chunk_index(batch, per, _CHUNK_ELEMS):
        res = eval_fn(tf, [a[idx] for a in arrs], _slice_pos(pos, idx))
        for k, (v, t) in enumerate(zip(res, tf.results)):
            if outs[k] is None:
                outs[k] = _empty_like_stream(arrs, batch + t.shape, np.asarray(v).dtype)
            outs[k][idx] = v
    return outs


_map_check.work(_work_compute)


def _acc_split(fn: FnDef, n_acc: int):
    """Recognise ``acc + g(x)`` / ``maximum(acc, g(x))`` / ``minimum(...)`` updates.

    Such an accum is a plain reduction of g over the stream and can be computed in one numpy
    call instead of a loop over the reduced dimension.
    """
    if n_acc != 1:
        return None
    acc = fn.params[0]
    tainted = {acc}
    for let in fn.lets:
        if _mentions(let.value, tainted):
            return None
    r = fn.result
    kind, other = None, None
    if isinstance(r, BinOp) and r.op == "+":
        if r.left == Name(acc):
            kind, other = "sum", r.right
        elif r.right == Name(acc):
            kind, other = "sum", r.left
    elif isinstance(r, Call) and r.func in ("maximum", "minimum") and len(r.args) == 2 and not r.kwargs:
        a, b = r.args
        if a == Name(acc):
            kind, other = r.func, b
        elif b == Name(acc):
            kind, other = r.func, a
    if kind is None or _mentions(other, tainted):
        return None
    return kind, FnDef(fn.name + "__term", fn.params[1:], fn.lets, other)


def _mentions(e: Expr, names: set[str]) -> bool:
    if isinstance(e, Name):
        return e.id in names
    if isinstance(e, Call):
        return any(_mentions(a, names) for a in e.args) or any(_mentions(v, names) for _, v in e.kwargs)
    if isinstance(e, BinOp):
        return _mentions(e.left, names) or _mentions(e.right, names)
    if hasattr(e, "operand"):
        return _mentions(e.operand, names)
    if hasattr(e, "items"):
        return any(_mentions(i, names) for i in e.items)
    return False


def _accum_like_check(ctx, call, ntargets, scan: bool):
    what = "scan" if scan else "accum"
    ctx.expect_args(call, None, ("rank", "init", "fn", "par"))
    if not call.args:
        raise ArgumentError(f"{what} needs at least one stream", _span(call))
    streams = [ctx.stream_arg(a) for a in call.args]
    dims = _same_dims(streams, call, what)
    r = eval_positive(call.kw("rank"), ctx.sizes, "rank") if call.kw("rank") is not None else 1
    if r > len(dims):
        raise ShapeError(f"{what} rank {r} exceeds the stream's rank {len(dims)}", _span(call))
    d = dyn_index(streams[0])
    if d is not None and len(dims) - r < d:
        raise ShapeError(f"{what} over rank {r} would cut into the dynamic dimension's prefix; "
                         f"reduce at most the dimensions from the dynamic one inward", _span(call))
    init_e = call.kw("init")
    if init_e is None:
        raise ArgumentError(f"{what} needs init=<tile expression> (e.g. zeros([4, 1]))", _span(call))
    init_fn = FnDef("init", (), (), init_e)
    init_tf = ctx.check_fn(init_fn, (), 0, (), call)
    tiles = _tiles_of(streams, call, what)
    acc_types = init_tf.results
    tf = _check_fn_kw(ctx, call, acc_types + tiles, streams[0])
    if tf.results != acc_types:
        raise TypeError_(f"{what}'s fn must return the accumulator's type: init is "
                         f"({', '.join(map(str, acc_types))}) but fn returns "
                         f"({', '.join(map(str, tf.results))})", _span(call.kw("fn")))
    out_dims = dims if scan else dims[:len(dims) - r]
    fast = None
    split = _acc_split(tf.fn, len(acc_types))
    if split is not None and not scan:
        kind, term = split
        if kind != "sum" or acc_types[0].dtype in ("f32", "i32"):
            term_tf = ctx.check_fn(term, tiles, streams[0].rank, (), call)
            if term_tf.results[0].shape == acc_types[0].shape or kind != "sum":
                fast = (kind, term_tf)
    return (_outputs(acc_types, out_dims),
            {"rank": r, "init": init_tf, "fast": fast}, tf, None)


@operator("accum", "accum(s1, ..., rank=r?, init=e, fn=f, par=p?)", "compute",
          "Reduce the innermost r dimensions: the accumulator starts at init (a tile expression "
          "or a tuple of them) and f(acc..., x...) returns the next accumulator.")
def _accum_check(ctx, call, ntargets):
    return _accum_like_check(ctx, call, ntargets, scan=False)


def _init_arrays(node: Node) -> list:
    return [np.asarray(v) for v in eval_fn(node.attrs["init"], [])]


def _matmul_term(tf: TypedFn) -> tuple[int, int] | None:
    """The argument positions (i, j) when a term fn is exactly ``matmul(x_i, x_j)`` (or
    ``x_i @ x_j``) of two f32 matrix tiles."""
    e = tf.fn.result
    if isinstance(e, Call) and e.func == "matmul" and len(e.args) == 2 and not e.kwargs:
        a, b = e.args
    elif isinstance(e, BinOp) and e.op == "@":
        a, b = e.left, e.right
    else:
        return None
    params = list(tf.fn.params)
    if not (isinstance(a, Name) and isinstance(b, Name) and a.id in params and b.id in params):
        return None
    i, j = params.index(a.id), params.index(b.id)
    ta, tb = tf.arg_types[i], tf.arg_types[j]
    if len(ta.shape) != 2 or len(tb.shape) != 2 or ta.dtype != "f32" or tb.dtype != "f32":
        return None
    return i, j


def _sum_matmul(x: np.ndarray, y: np.ndarray, no: int, nr: int) -> np.ndarray | None:
    """sum over the nr reduced stream axes of x @ y, for x: outer + red + [TM, TK] and
    y: outer + red + [TK, TN], with large BLAS matmuls.

    Outer axes along which one operand is a broadcast (a repeated load) are folded into the
    other operand's free dimension, so e.g. a tiled GEMM becomes, per K step, one
    [M, TK] @ [TK, N] product on views of the inputs; the products are then summed in step
    order (see _sum_step_products), exactly as the tile-by-tile accumulation does.
    """
    lead = x.shape[:no + nr]
    if x.ndim != no + nr + 2 or y.ndim != no + nr + 2 or y.shape[:no + nr] != lead:
        return None
    outer, red = lead[:no], lead[no:]
    tm, tk = x.shape[-2:]
    tn = y.shape[-1]
    batch, fold_m, fold_n, both = [], [], [], []
    for o in range(no):
        xz, yz = x.strides[o] == 0, y.strides[o] == 0
        if outer[o] == 1 or not (xz or yz):
            batch.append(o)
        elif xz and yz:
            both.append(o)
        elif yz:
            fold_m.append(o)   # y is the same along this axis: it extends x's rows
        else:
            fold_n.append(o)   # x is the same along this axis: it extends y's columns
    xi = tuple(0 if (o in fold_n or o in both) else slice(None) for o in range(no))
    yi = tuple(0 if (o in fold_m or o in both) else slice(None) for o in range(no))
    xs, ys = x[xi], y[yi]
    # axes of xs: kept outer (batch + fold_m, in order) + red + [TM, TK]
    xo = [o for o in range(no) if o in batch or o in fold_m]
    yo = [o for o in range(no) if o in batch or o in fold_n]
    nb = len(batch)
    bshape = tuple(outer[o] for o in batch)
    xperm = ([xo.index(o) for o in batch] + [xo.index(o) for o in fold_m] + [len(xo) + nr]
             + [len(xo) + i for i in range(nr)] + [len(xo) + nr + 1])
    yperm = ([yo.index(o) for o in batch] + [len(yo) + i for i in range(nr + 1)]
             + [yo.index(o) for o in fold_n] + [len(yo) + nr + 1])
    mf = math.prod(outer[o] for o in fold_m)
    nf = math.prod(outer[o] for o in fold_n)
    steps = math.prod(red)
    x2 = xs.transpose(xperm).reshape(bshape + (mf * tm, steps, tk))
    y2 = ys.transpose(yperm).reshape(bshape + (steps, tk, nf * tn))
    c = _sum_step_products(x2, y2)
    c = c.reshape(bshape + tuple(outer[o] for o in fold_m) + (tm,) + tuple(outer[o] for o in fold_n) + (tn,))
    # back to outer order + [TM, TN]; 'both' axes come back as broadcasts
    pos = {o: k for k, o in enumerate(batch + fold_m)}
    pos.update({o: nb + len(fold_m) + 1 + k for k, o in enumerate(fold_n)})
    tm_ax = nb + len(fold_m)
    tn_ax = c.ndim - 1
    perm = [pos[o] for o in range(no) if o not in both] + [tm_ax, tn_ax]
    c = c.transpose(perm)
    if both:
        c = np.expand_dims(c, tuple(both))
        c = np.broadcast_to(c, outer + (tm, tn))
    return c


def _sum_step_products(x2: np.ndarray, y2: np.ndarray) -> np.ndarray:
    """sum over s of x2[..., s, :] @ y2[..., s, :, :], for x2: b + [M, S, K], y2: b + [S, K, N].

    One BLAS contraction over (S, K): an f32 sum is associated as BLAS does, not step by
    step (the accumulation is a sum; its order is the interpreter's, and deterministic).
    """
    *b, m, s_, k = x2.shape
    n = y2.shape[-1]
    return np.matmul(x2.reshape(*b, m, s_ * k), y2.reshape(*y2.shape[:-3], s_ * k, n))


def _reduce_terms(kind: str, term_tf: TypedFn, args: list, pos, nd: int, r: int) -> np.ndarray:
    """The fast accum path's reduction of the term over the innermost r stream axes, chunked
    along the outer axes (each chunk holds whole reductions, so the sums are unchanged)."""
    f = np.sum if kind == "sum" else (np.max if kind == "maximum" else np.min)
    axes = tuple(range(nd - r, nd))
    arrs = [np.asarray(a) for a in args]
    res_shape = term_tf.results[0].shape

    def one(xs, p):
        (term,) = eval_fn(term_tf, xs, p)
        want = _batch_shape(xs[0], term_tf.arg_types[0]) + res_shape
        if np.shape(term) != want:
            term = np.broadcast_to(np.asarray(term), want)
        return f(term, axis=axes)
    batch = _batch_shape(arrs[0], term_tf.arg_types[0])
    outer = batch[:nd - r]
    per = _fn_elem_size(term_tf) * math.prod(batch[nd - r:nd])
    if len(batch) != nd or not outer or math.prod(outer) * per < _CHUNK_MIN_ELEMS or not _chunkable(arrs, batch):
        return one(arrs, pos)
    out = None
    for idx in _chunk_index(outer, per, _CHUNK_ELEMS):
        part = one([a[idx] for a in arrs], _slice_pos(pos, idx))
        if out is None:
            out = np.empty(outer + part.shape[len(outer):], part.dtype)
        out[idx] = part
    return out


def _run_reduce_static(node: Node, args: list, rt: "RunCtx", scan: bool, pos) -> list:
    """Reduce/scan the innermost r stream axes of static arrays (shape dims + tile)."""
    t = node.in_types[0]
    r = node.attrs["rank"]
    nd = t.rank
    outer = tuple(np.asarray(args[0]).shape[:nd - r]) if nd - r else ()
    red = tuple(np.asarray(args[0]).shape[nd - r:nd])
    steps = math.prod(red)
    init = _init_arrays(node)
    fast = node.attrs.get("fast")
    if fast is not None and not scan:
        kind, term_tf = fast
        rt.charge_elements(node, t.count)
        acc_t = node.out_types[0].elem
        red_out = None
        mm = _matmul_term(term_tf) if kind == "sum" and acc_t.dtype == "f32" else None
        if mm is not None:
            red_out = _sum_matmul(np.asarray(args[mm[0]]), np.asarray(args[mm[1]]), nd - r, r)
        if red_out is None:
            red_out = _reduce_terms(kind, term_tf, args, pos, nd, r)
        tr, ar = len(term_tf.results[0].shape), len(acc_t.shape)
        if tr < ar:  # a lower-rank term broadcasts against the tile axes, not the stream axes
            red_out = np.asarray(red_out)
            red_out = red_out.reshape(red_out.shape[:red_out.ndim - tr] + (1,) * (ar - tr)
                                      + red_out.shape[red_out.ndim - tr:])
        with np.errstate(all="ignore"):
            if mm is not None and red_out.flags.writeable and red_out.shape == outer + acc_t.shape:
                out = np.add(red_out, init[0], out=red_out)  # a fresh product sum: add init in place
            elif kind == "sum":
                out = np.add(init[0], red_out)
            else:
                out = (np.maximum if kind == "maximum" else np.minimum)(init[0], red_out)
        if out.shape != outer + acc_t.shape:
            out = np.broadcast_to(out, outer + acc_t.shape)
        return [round_to(acc_t.dtype, out)]
    rt.charge_steps(node, steps)
    rt.charge_elements(node, t.count)
    arrs = [np.asarray(a) for a in args]
    per = _fn_elem_size(node.fn)
    if (outer and math.prod(outer) * per * steps >= _CHUNK_MIN_ELEMS and _chunkable(arrs, outer + red)):
        # whole loops over chunks of the outer axes: each step's temporaries stay in cache
        outs: list = []
        for idx in _chunk_index(outer, per, _CHUNK_ELEMS):
            res = _reduce_loop(node, [a[idx] for a in arrs], scan, pos, nd, r, init, idx)
            if not outs:
                outs = [np.empty(outer + v.shape[len(outer):], v.dtype) for v in res]
            for o, v in zip(outs, res):
                o[idx] = v
        return outs
    return _reduce_loop(node, arrs, scan, pos, nd, r, init, ())


def _reduce_loop(node: Node, args: list, scan: bool, pos, nd: int, r: int, init: list, at: tuple) -> list:
    """The general accum/scan loop over the reduced steps, for a (chunk of the) stream whose
    outer axes start at the offsets of the slices ``at`` (for ``pos``)."""
    outer = tuple(args[0].shape[:nd - r]) if nd - r else ()
    red = tuple(args[0].shape[nd - r:nd])
    steps = math.prod(red)
    flat = [a.reshape(outer + (steps,) + a.shape[nd:]) if a.ndim >= nd else a for a in args]
    accs = [np.broadcast_to(i, outer + i.shape) for i in init]
    emitted: list[list] = [[] for _ in accs]
    for j in range(steps):
        xs = [a[(slice(None),) * len(outer) + (j,)] if a.ndim >= len(outer) + 1 else a for a in flat]
        step_pos = None
        if pos is not None:
            idx = np.unravel_index(j, red) if red else ()

            def step_pos(d, _idx=idx):
                if d < len(outer):
                    shape = [1] * len(outer)
                    shape[d] = outer[d]
                    start = at[d].start if d < len(at) else 0
                    return np.arange(start, start + outer[d], dtype=np.int32).reshape(shape)
                return np.int32(_idx[d - len(outer)])
        accs = [np.asarray(a) for a in eval_fn(node.fn, accs + xs, step_pos)]
        accs = [np.broadcast_to(a, outer + a.shape[a.ndim - len(i.shape):]) for a, i in zip(accs, init)]
        if scan:
            for e, a in zip(emitted, accs):
                e.append(a)
    if scan:
        return [np.stack(e, axis=len(outer)).reshape(outer + red + e[0].shape[len(outer):]) for e in emitted]
    return accs


def _run_reduce(node: Node, ins: list[SVal], rt: "RunCtx", scan: bool) -> list[SVal]:
    args = _flat_args(ins)
    t = node.in_types[0]
    d = dyn_index(t)
    r = node.attrs["rank"]
    if d is None:
        outs = _run_reduce_static(node, args, rt, scan, _pos_fn(t.dims, t.rank))
        return [SVal(o) for o in outs]
    lengths = ins[0].lengths
    suffix = t.rank - d - 1
    if r <= suffix:
        # reduce only static inner dims: arrays are (total, *suffix, *tile) — a static stream of rank 1+suffix
        sub = Node(node.op, node.call, node.inputs, node.outputs,
                   tuple(StreamT((1,) + x.dims[d + 1:], x.elem) for x in node.in_types),
                   node.out_types, node.attrs, node.fn, node.par)
        outs = _run_reduce_static(sub, args, rt, scan, None)
        return [SVal(o, lengths) for o in outs]
    # reduce the dynamic dim and everything inside it: one segment per prefix position
    offsets = np.concatenate([[0], np.cumsum(lengths.ravel())])
    results: list[list] = []
    for seg in range(lengths.size):
        lo, hi = int(offsets[seg]), int(offsets[seg + 1])
        seg_args = [np.asarray(a)[lo:hi] for a in args]
        n = hi - lo
        sub = Node(node.op, node.call, node.inputs, node.outputs,
                   tuple(StreamT((n,) + x.dims[d + 1:], x.elem) for x in node.in_types),
                   node.out_types, dict(node.attrs, rank=r), node.fn, node.par)
        seg_args = [a.reshape((1,) + a.shape) for a in seg_args]
        sub.in_types = tuple(StreamT((1, n) + x.dims[d + 1:], x.elem) for x in node.in_types)
        if n == 0:
            init = _init_arrays(node)
            # an empty branch: one (empty) result per accumulator, of the accumulator's dtype
            outs = [np.broadcast_to(i, (1,) + i.shape) for i in init] if not scan else \
                [np.zeros((1, 0) + tuple(t.dims[d + 1:]) + i.shape, i.dtype) for i in init]
        else:
            outs = _run_reduce_static(sub, seg_args, rt, scan, None)
        results.append([np.asarray(o)[0] for o in outs])
    prefix = t.dims[:d]
    if scan:
        return [SVal(np.concatenate([res[i] for res in results], axis=0), lengths)
                for i in range(len(node.out_types))]
    return [SVal(np.stack([res[i] for res in results]).reshape(tuple(prefix) + results[0][i].shape))
            for i in range(len(node.out_types))]


@_accum_check.run
def _accum_run(node, ins, rt):
    return _run_reduce(node, ins, rt, scan=False)


@_accum_check.work
def _accum_work(node):
    w = _work_compute(node)
    w.sram_bytes = sum(t.elem.nbytes for t in node.out_types)
    w.groups = max(node.out_types[0].count, 1.0)
    return w


@operator("scan", "scan(s1, ..., rank=r?, init=e, fn=f, par=p?)", "compute",
          "Like accum, but emit the running accumulator after every element; it restarts at "
          "init for each rank-r group.")
def _scan_check(ctx, call, ntargets):
    return _accum_like_check(ctx, call, ntargets, scan=True)


@_scan_check.run
def _scan_run(node, ins, rt):
    return _run_reduce(node, ins, rt, scan=True)


_scan_check.work(_work_compute)


@operator("flatmap", "flatmap(s1, ..., fn=f, split=[..], par=p?)", "compute",
          "Apply f to each element and cut its result tile into tiles of shape split, emitted in "
          "row-major order as a new innermost dimension.")
def _flatmap_check(ctx, call, ntargets):
    ctx.expect_args(call, None, ("fn", "split", "par"))
    if not call.args:
        raise ArgumentError("flatmap needs at least one stream", _span(call))
    streams = [ctx.stream_arg(a) for a in call.args]
    dims = _same_dims(streams, call, "flatmap")
    if any(isinstance(d, Dyn) for d in dims):
        raise ShapeError("flatmap needs a static stream", _span(call))
    tf = _check_fn_kw(ctx, call, _tiles_of(streams, call, "flatmap"), streams[0])
    if len(tf.results) != 1:
        raise ArgumentError("flatmap's fn must return one tile", _span(call))
    res = tf.results[0]
    se = call.kw("split")
    if se is None:
        raise ArgumentError("flatmap needs split=[...]", _span(call))
    split = eval_int_list(se, ctx.sizes, "split")
    if len(split) != len(res.shape) or any(p <= 0 or s % p for s, p in zip(res.shape, split)):
        raise ShapeError(f"split {list(split)} must divide the fn's result tile {res}", _span(se))
    k = math.prod(s // p for s, p in zip(res.shape, split))
    return [StreamT(dims + (k,), TileT(res.dtype, tuple(split)))], {"split": tuple(split)}, tf, None


@_flatmap_check.run
def _flatmap_run(node, ins, rt):
    t = node.in_types[0]
    rt.charge_elements(node, t.count)
    (o,) = eval_fn(node.fn, _flat_args(ins), _pos_fn(t.dims, t.rank))
    res = node.fn.results[0].shape
    split = node.attrs["split"]
    o = np.broadcast_to(np.asarray(o), t.dims + res)
    nb = t.rank
    inter = []
    for s, p in zip(res, split):
        inter += [s // p, p]
    o = o.reshape(t.dims + tuple(inter))
    k = len(res)
    perm = list(range(nb)) + [nb + 2 * i for i in range(k)] + [nb + 2 * i + 1 for i in range(k)]
    o = o.transpose(perm).reshape(t.dims + (-1,) + split)
    return [SVal(o)]


_flatmap_check.work(_work_compute)


# ---------------------------------------------------------------- routing and shape

@operator("zip", "zip(s1, s2, ...)", "shape", "Pair up streams of equal dimensions into a tuple stream.")
def _zip_check(ctx, call, ntargets):
    ctx.expect_args(call, None, ())
    if len(call.args) < 2:
        raise ArgumentError("zip needs at least two streams", _span(call))
    streams = [ctx.stream_arg(a) for a in call.args]
    dims = _same_dims(streams, call, "zip")
    items = []
    for s in streams:
        items.extend(s.elem.items if isinstance(s.elem, TupT) else (s.elem,))
    if not all(isinstance(i, TileT) for i in items):
        raise TypeError_("zip works on tile streams", _span(call))
    return [StreamT(dims, TupT(tuple(items)))], {}, None, None


@_zip_check.run
def _zip_run(node, ins, rt):
    return [SVal(tuple(_flat_args(ins)), ins[0].lengths)]


@_zip_check.work
def _zip_work(node):
    return OpWork("shape", node.out_types[0].count)


@operator("unzip", "a, b, ... = unzip(t)", "shape", "Split a tuple stream into its component streams.")
def _unzip_check(ctx, call, ntargets):
    ctx.expect_args(call, 1, ())
    s = ctx.stream_arg(call.args[0])
    if not isinstance(s.elem, TupT):
        raise TypeError_(f"unzip needs a tuple stream (from zip), got {s}", _span(call.args[0]))
    return [StreamT(s.dims, i) for i in s.elem.items], {}, None, None


@_unzip_check.run
def _unzip_run(node, ins, rt):
    return [SVal(d, ins[0].lengths) for d in ins[0].data]


_unzip_check.work(_zip_work)


@operator("copy", "a, b, ... = copy(s)", "route",
          "Duplicate a stream: every stream is consumed exactly once, so a value used twice is copied.")
def _copy_check(ctx, call, ntargets):
    ctx.expect_args(call, 1, ())
    s = ctx.stream_arg(call.args[0])
    if ntargets < 2:
        raise ArgumentError("copy defines two or more streams: a, b = copy(s)", _span(call))
    return [s] * ntargets, {}, None, None


@_copy_check.run
def _copy_run(node, ins, rt):
    return [ins[0] for _ in node.outputs]


@_copy_check.work
def _copy_work(node):
    s = node.in_types[0]
    return OpWork("route", s.count, _elem_bytes(s.elem), _elem_bytes(s.elem) * len(node.out_types))


def _elem_bytes(e: Elem) -> float:
    return float(e.nbytes) if not isinstance(e, BufT) else 4.0


@operator("repeat", "repeat(s, n)", "route", "Emit every element n times in a row (a new innermost dimension of size n).")
def _repeat_check(ctx, call, ntargets):
    ctx.expect_args(call, 2, ())
    s = ctx.stream_arg(call.args[0])
    n = eval_positive(call.args[1], ctx.sizes, "repeat count")
    return [StreamT(s.dims + (n,), s.elem)], {"n": n}, None, None


def _insert_axis(v: SVal, t: StreamT, at: int, n: int) -> SVal:
    """Insert a stream axis of size n (broadcast view) at stream position ``at``."""
    d = dyn_index(t)
    ax = at if d is None else at - d

    def f(a):
        a = np.expand_dims(a, ax)
        shape = list(a.shape)
        shape[ax] = n
        return np.broadcast_to(a, shape)
    return v.map(f)


@_repeat_check.run
def _repeat_run(node, ins, rt):
    t = node.in_types[0]
    return [_insert_axis(ins[0], t, t.rank, node.attrs["n"])]


@_repeat_check.work
def _repeat_work(node):
    out = node.out_types[0]
    return OpWork("route", out.count, 0.0, _elem_bytes(out.elem))


@operator("expand", "expand(s, like=t)", "route",
          "Repeat each element of s over the extra inner dimensions of t (s's dimensions must be "
          "a prefix of t's); t is consumed and only gives the shape.")
def _expand_check(ctx, call, ntargets):
    ctx.expect_args(call, 1, ("like",))
    s = ctx.stream_arg(call.args[0])
    like_e = call.kw("like")
    if like_e is None:
        raise ArgumentError("expand needs like=<stream>", _span(call))
    t = ctx.stream_arg(like_e)
    if tuple(t.dims[:s.rank]) != tuple(s.dims):
        raise ShapeError(f"expand: [{', '.join(map(str, s.dims))}] is not a prefix of "
                         f"[{', '.join(map(str, t.dims))}]", _span(call))
    return [StreamT(t.dims, s.elem)], {}, None, None


@_expand_check.run
def _expand_run(node, ins, rt):
    s_t, t_t = node.in_types
    v, like = ins
    d = dyn_index(t_t)
    extra = t_t.dims[s_t.rank:]
    if d is None or d < s_t.rank:
        out = v
        for i, n in enumerate(extra):
            out = _insert_axis(out, StreamT(t_t.dims[:s_t.rank + i], s_t.elem) if d is None else
                               StreamT(t_t.dims[:s_t.rank + i], s_t.elem), s_t.rank + i, n)
        return [SVal(out.data, like.lengths)]
    # s covers the static prefix only: repeat its elements by the segment lengths
    lengths = like.lengths.ravel()
    npre = s_t.rank

    def rep(a):
        a = np.asarray(a)
        flat = a.reshape((-1,) + a.shape[npre:])
        return np.repeat(flat, lengths, axis=0)
    out = SVal(tmap(rep, v.data), like.lengths)
    for i, n in enumerate(t_t.dims[d + 1:]):
        out = _insert_axis(out, StreamT(t_t.dims[:d + 1 + i], s_t.elem), d + 1 + i, n)
    return [out]


@_expand_check.work
def _expand_work(node):
    out = node.out_types[0]
    return OpWork("route", out.count, 0.0, _elem_bytes(out.elem))


@operator("promote", "promote(s, at=k?)", "shape", "Add a dimension of size 1 at position k (default 0, the outermost).")
def _promote_check(ctx, call, ntargets):
    ctx.expect_args(call, 1, ("at",))
    s = ctx.stream_arg(call.args[0])
    at = eval_int(call.kw("at"), ctx.sizes, "at") if call.kw("at") is not None else 0
    if not 0 <= at <= s.rank:
        raise ArgumentError(f"at={at} must be between 0 and {s.rank}", _span(call))
    d = dyn_index(s)
    if d is not None and at <= d:
        raise ShapeError("promote inside a dynamic stream must come after its dynamic dimension", _span(call))
    return [StreamT(s.dims[:at] + (1,) + s.dims[at:], s.elem)], {"at": at}, None, None


@_promote_check.run
def _promote_run(node, ins, rt):
    return [_insert_axis(ins[0], node.in_types[0], node.attrs["at"], 1)]


_promote_check.work(_zip_work)


def _static_span(ctx, call, s: StreamT, lo: int, hi: int, what: str):
    d = dyn_index(s)
    if d is not None and lo <= d:
        raise ShapeError(f"{what} cannot touch a dynamic dimension or the ones before it", _span(call))


@operator("flatten", "flatten(s, dims=[i, j])", "shape", "Merge stream dimensions i..j (inclusive) into one.")
def _flatten_check(ctx, call, ntargets):
    ctx.expect_args(call, 1, ("dims",))
    s = ctx.stream_arg(call.args[0])
    de = call.kw("dims")
    if de is None:
        raise ArgumentError("flatten needs dims=[i, j]", _span(call))
    ij = eval_int_list(de, ctx.sizes, "dims")
    if len(ij) != 2 or not 0 <= ij[0] < ij[1] < s.rank:
        raise ArgumentError(f"dims must be [i, j] with 0 <= i < j < {s.rank}", _span(de))
    i, j = ij
    _static_span(ctx, call, s, i, j, "flatten")
    merged = math.prod(s.dims[i:j + 1])
    return [StreamT(s.dims[:i] + (merged,) + s.dims[j + 1:], s.elem)], {"i": i, "j": j}, None, None


def _reshape_stream(v: SVal, t_in: StreamT, t_out: StreamT) -> SVal:
    d = dyn_index(t_in)
    lead = () if d is None else None

    def f(a):
        a = np.asarray(a)
        if lead is None:
            # dynamic: data is (total, *suffix, *elem); the out suffix replaces the in suffix
            tail = a.shape[1 + (t_in.rank - d - 1):]
            return a.reshape((a.shape[0],) + tuple(t_out.dims[d + 1:]) + tail)
        tail = a.shape[t_in.rank:]
        return a.reshape(tuple(t_out.dims) + tail)
    return SVal(tmap(f, v.data), v.lengths)


@_flatten_check.run
def _flatten_run(node, ins, rt):
    return [_reshape_stream(ins[0], node.in_types[0], node.out_types[0])]


_flatten_check.work(_zip_work)


@operator("reshape", "reshape(s, dim=i, chunk=c)", "shape", "Split stream dimension i of size n into [n / c, c].")
def _sreshape_check(ctx, call, ntargets):
    ctx.expect_args(call, 1, ("dim", "chunk"))
    s = ctx.stream_arg(call.args[0])
    if call.kw("dim") is None or call.kw("chunk") is None:
        raise ArgumentError("reshape needs dim=i and chunk=c", _span(call))
    i = eval_int(call.kw("dim"), ctx.sizes, "dim")
    c = eval_positive(call.kw("chunk"), ctx.sizes, "chunk")
    if not 0 <= i < s.rank:
        raise ArgumentError(f"dim={i} must be between 0 and {s.rank - 1}", _span(call))
    _static_span(ctx, call, s, i, i, "reshape")
    n = s.dims[i]
    if n % c:
        raise SizeError(f"chunk {c} does not divide dimension {i} of size {n}", _span(call))
    return [StreamT(s.dims[:i] + (n // c, c) + s.dims[i + 1:], s.elem)], {}, None, None


@_sreshape_check.run
def _sreshape_run(node, ins, rt):
    return [_reshape_stream(ins[0], node.in_types[0], node.out_types[0])]


_sreshape_check.work(_zip_work)


@operator("selector", "selector(s, n=E)", "route",
          "Turn a stream of i32 tiles holding k branch numbers in [0, n) into a selector stream "
          "(for partition and merge).")
def _selector_check(ctx, call, ntargets):
    ctx.expect_args(call, 1, ("n",))
    s = ctx.stream_arg(call.args[0])
    if not (isinstance(s.elem, TileT) and s.elem.dtype == "i32"):
        raise TypeError_(f"selector needs a stream of i32 tiles, got {s}", _span(call.args[0]))
    if s.dynamic:
        raise ShapeError("selector needs a static stream", _span(call))
    if call.kw("n") is None:
        raise ArgumentError("selector needs n= (the number of branches)", _span(call))
    n = eval_positive(call.kw("n"), ctx.sizes, "n")
    k = s.elem.numel
    if k > n:
        raise ShapeError(f"each element names {k} branches but there are only {n}", _span(call))
    return [StreamT(s.dims, SelT(n, k))], {"n": n}, None, None


@_selector_check.run
def _selector_run(node, ins, rt):
    t = node.in_types[0]
    a = np.asarray(ins[0].data)
    k = t.elem.numel
    a = a.reshape(a.shape[:t.rank] + (k,))
    n = node.attrs["n"]
    if ((a < 0) | (a >= n)).any():
        bad = int(a[(a < 0) | (a >= n)].ravel()[0])
        raise RoutingError(f"selector value {bad} is not a branch in [0, {n})")
    if k > 1:
        srt = np.sort(a, axis=-1)
        if (srt[..., 1:] == srt[..., :-1]).any():
            raise RoutingError("a selector names the same branch twice for one element")
    return [SVal(a)]


@_selector_check.work
def _selector_work(node):
    s = node.in_types[0]
    return OpWork("route", s.count, s.elem.nbytes, 4.0 * s.elem.numel)


@operator("partition", "partition(s, sel, rank=r?)", "route",
          "Route each element (or rank-r sub-stream) of s to the k branches its selector names; "
          "the result has dimensions [n, ?] + inner, ? being each branch's data-dependent length.")
def _partition_check(ctx, call, ntargets):
    ctx.expect_args(call, 2, ("rank",))
    s = ctx.stream_arg(call.args[0])
    sel = ctx.stream_arg(call.args[1])
    if not isinstance(sel.elem, SelT):
        raise TypeError_(f"partition's second argument must be a selector stream, got {sel}", _span(call.args[1]))
    if s.dynamic:
        raise ShapeError("partition needs a static stream", _span(call))
    r = eval_int(call.kw("rank"), ctx.sizes, "rank") if call.kw("rank") is not None else 0
    if not 0 <= r <= s.rank:
        raise ArgumentError(f"rank={r} must be between 0 and {s.rank}", _span(call))
    outer = s.dims[:s.rank - r]
    if tuple(outer) != tuple(sel.dims):
        raise ShapeError(f"partition: the selector's dimensions [{', '.join(map(str, sel.dims))}] must be "
                         f"the stream's outer dimensions [{', '.join(map(str, outer))}]", _span(call))
    n, k = sel.elem.n, sel.elem.k
    count = math.prod(outer) * k
    assumed, skew = ctx.routing_assumption(call, n, count)
    dyn = Dyn(f"p{ctx.node_index}", assumed, skew)
    return [StreamT((n, dyn) + tuple(s.dims[s.rank - r:]), s.elem)], {"rank": r, "n": n, "k": k}, None, None


def _route_order(sel: np.ndarray, k: int):
    flat = sel.reshape(-1, k)
    e_idx = np.repeat(np.arange(flat.shape[0]), k)
    slot = np.tile(np.arange(k), flat.shape[0])
    b = flat.ravel()
    order = np.lexsort((e_idx, b))
    return e_idx[order], slot[order], b


@_partition_check.run
def _partition_run(node, ins, rt):
    s_t = node.in_types[0]
    r, n, k = node.attrs["rank"], node.attrs["n"], node.attrs["k"]
    v, sel = ins
    e_sorted, _, b = _route_order(np.asarray(sel.data), k)
    lengths = np.bincount(b, minlength=n).astype(np.int64)
    inner = s_t.rank - r

    def f(a):
        a = np.asarray(a)
        flat = a.reshape((-1,) + a.shape[inner:])
        return flat[e_sorted]
    return [SVal(tmap(f, v.data), lengths)]


@_partition_check.work
def _partition_work(node):
    s = node.in_types[0]
    return OpWork("route", s.count * node.attrs["k"], _elem_bytes(s.elem), _elem_bytes(s.elem))


@operator("merge", "merge(parts, sel)", "route",
          "Inverse of partition: put each branch's results back in the original order; the "
          "result has the selector's dimensions + [k] + inner.")
def _merge_check(ctx, call, ntargets):
    ctx.expect_args(call, 2, ())
    p = ctx.stream_arg(call.args[0])
    sel = ctx.stream_arg(call.args[1])
    if not isinstance(sel.elem, SelT):
        raise TypeError_(f"merge's second argument must be a selector stream, got {sel}", _span(call.args[1]))
    if p.rank < 2 or not isinstance(p.dims[1], Dyn) or p.dims[0] != sel.elem.n:
        raise ShapeError(f"merge needs a partitioned stream [{sel.elem.n}, ?, ...], got {p}", _span(call.args[0]))
    if not isinstance(p.elem, TileT):
        raise TypeError_("merge needs a tile stream", _span(call))
    return [StreamT(tuple(sel.dims) + (sel.elem.k,) + tuple(p.dims[2:]), p.elem)], {"k": sel.elem.k}, None, None


@_merge_check.run
def _merge_run(node, ins, rt):
    p_t, sel_t = node.in_types
    parts, sel = ins
    k = node.attrs["k"]
    s = np.asarray(sel.data)
    e_sorted, slot_sorted, b = _route_order(s, k)
    lengths = np.bincount(b, minlength=p_t.dims[0])
    if parts.lengths is None or not np.array_equal(np.asarray(parts.lengths).ravel(), lengths):
        raise RoutingError("merge's selector does not match the partition its stream came from")
    nelem = s.reshape(-1, k).shape[0]
    data = np.asarray(parts.data)
    out = np.empty((nelem, k) + data.shape[1:], dtype=data.dtype)
    out[e_sorted, slot_sorted] = data
    return [SVal(out.reshape(tuple(sel_t.dims) + (k,) + data.shape[1:]))]


@_merge_check.work
def _merge_work(node):
    out = node.out_types[0]
    return OpWork("route", out.count, out.elem.nbytes, out.elem.nbytes)


__all__ = ["OPS", "Node", "OpWork", "OpSpec", "Tiling", "make_tiling", "nbytes"]
