"""The memory operators: off-chip loads, stores, gathers and scatters, and on-chip buffers
(bufferize, streamify). Registered into :data:`asp_lang.ops.OPS` when asp_lang is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .consts import eval_int, eval_positive
from .errors import ArgumentError, RoutingError, ShapeError, TypeError_
from .ir import Call, ListExpr
from .ops import (Node, OpWork, Tiling, dyn_index, make_tiling, match_tiling, operator, order_arg,
                  span_of, stream_to_tensor, tensor_to_stream, tiling_from_spec)
from .types import BufT, Dyn, StreamT, TileT
from .values import SVal

if TYPE_CHECKING:
    from .checker import CheckCtx
    from .interp import RunCtx


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
        raise ArgumentError("load needs tile=[...] (one entry per tensor axis)", span_of(call))
    tl = tiling_from_spec(ctx, tensor, tile_e)
    dims = tl.dims
    order = order_arg(ctx, call, len(dims))
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
            raise ArgumentError("at= only goes with repeat=", span_of(at_e))
        return []
    if isinstance(rep, ListExpr):
        ns = [eval_positive(r, ctx.sizes, "repeat") for r in rep.items]
        if at_e is None or not isinstance(at_e, ListExpr) or len(at_e.items) != len(ns):
            raise ArgumentError("repeat=[...] needs at=[...] with one position per count", span_of(call))
        ats = [eval_int(a, ctx.sizes, "at") for a in at_e.items]
    else:
        ns = [eval_positive(rep, ctx.sizes, "repeat")]
        if isinstance(at_e, ListExpr):
            raise ArgumentError("at=[...] goes with repeat=[...]", span_of(at_e))
        ats = [eval_int(at_e, ctx.sizes, "at") if at_e is not None else 0]
    out = []
    for n, at in zip(ns, ats):
        if not 0 <= at <= rank:
            raise ArgumentError(f"at={at} must be between 0 and {rank}", span_of(at_e))
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
        raise TypeError_(f"store needs a tile stream, got {s}", span_of(call.args[1]))
    if s.dynamic:
        raise ShapeError(f"store needs a stream without dynamic dimensions (merge it first), got {s}",
                         span_of(call.args[1]))
    if s.elem.dtype != tensor.dtype:
        raise TypeError_(f"storing {s.elem.dtype} tiles into {tensor.dtype} result '{tensor.name}'; "
                         f"cast in a map first", span_of(call))
    order = order_arg(ctx, call, s.rank)
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
        raise ArgumentError(f"{call.func} needs tile=[...]", span_of(call))
    tl = tiling_from_spec(ctx, tensor, tile_e)
    if len(tl.dims) != 1:
        raise ShapeError(f"{call.func} needs a tile that leaves exactly one stream dimension of "
                         f"'{tensor.name}' to index, it leaves [{', '.join(map(str, tl.dims))}]", span_of(tile_e))
    return tl


def _index_stream(s: StreamT, call, arg) -> None:
    if not (isinstance(s.elem, TileT) and s.elem.dtype == "i32" and s.elem.numel == 1):
        raise TypeError_(f"{call.func} needs an index stream of single i32 values, got {s}", span_of(arg))
    if s.dynamic:
        raise ShapeError(f"{call.func} needs a static index stream", span_of(arg))


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
                         span_of(call.args[2]))
    if s.dims != idx.dims:
        raise ShapeError("scatter's index and value streams need equal dimensions", span_of(call))
    tile = (1,) * (len(tensor.shape) - len(s.elem.shape)) + s.elem.shape
    tl = make_tiling(tensor, tile, call)
    cut = [i for i, g in enumerate(tl.grid) if g > 1] or [0]
    if len(cut) != 1:
        raise ShapeError(f"scatter's tiles {list(s.elem.shape)} must leave exactly one stream dimension of "
                         f"'{tensor.name}'", span_of(call))
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
        raise ShapeError(f"bufferize rank {r} exceeds the stream's rank {s.rank}", span_of(call))
    if not isinstance(s.elem, TileT):
        raise TypeError_(f"bufferize needs a tile stream, got {s}", span_of(call.args[0]))
    if any(isinstance(d, Dyn) for d in s.dims[s.rank - r:]):
        raise ShapeError("bufferize cannot hold a dynamic dimension", span_of(call))
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
                         span_of(call.args[0]))
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
