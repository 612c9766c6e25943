"""The routing and shape operators: zip, unzip, copy, repeat, expand, flatten, partition,
merge... (streams re-arranged, nothing computed). Registered into :data:`asp_lang.ops.OPS`
when asp_lang is imported.
"""

from __future__ import annotations

import math
import numpy as np

from .consts import eval_int, eval_int_list, eval_positive
from .errors import (ArgumentError, RoutingError, ShapeError, SizeError,
                     TypeError_)
from .ops import (OpWork, dyn_index, flat_args, operator, same_dims, span_of)
from .types import BufT, Dyn, Elem, SelT, StreamT, TileT, TupT
from .values import SVal, tmap


# ---------------------------------------------------------------- routing and shape

@operator("zip", "zip(s1, s2, ...)", "shape", "Pair up streams of equal dimensions into a tuple stream.")
def _zip_check(ctx, call, ntargets):
    ctx.expect_args(call, None, ())
    if len(call.args) < 2:
        raise ArgumentError("zip needs at least two streams", span_of(call))
    streams = [ctx.stream_arg(a) for a in call.args]
    dims = same_dims(streams, call, "zip")
    items = []
    for s in streams:
        items.extend(s.elem.items if isinstance(s.elem, TupT) else (s.elem,))
    if not all(isinstance(i, TileT) for i in items):
        raise TypeError_("zip works on tile streams", span_of(call))
    return [StreamT(dims, TupT(tuple(items)))], {}, None, None


@_zip_check.run
def _zip_run(node, ins, rt):
    return [SVal(tuple(flat_args(ins)), ins[0].lengths)]


@_zip_check.work
def _zip_work(node):
    return OpWork("shape", node.out_types[0].count)


@operator("unzip", "a, b, ... = unzip(t)", "shape", "Split a tuple stream into its component streams.")
def _unzip_check(ctx, call, ntargets):
    ctx.expect_args(call, 1, ())
    s = ctx.stream_arg(call.args[0])
    if not isinstance(s.elem, TupT):
        raise TypeError_(f"unzip needs a tuple stream (from zip), got {s}", span_of(call.args[0]))
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
        raise ArgumentError("copy defines two or more streams: a, b = copy(s)", span_of(call))
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
        raise ArgumentError("expand needs like=<stream>", span_of(call))
    t = ctx.stream_arg(like_e)
    if tuple(t.dims[:s.rank]) != tuple(s.dims):
        raise ShapeError(f"expand: [{', '.join(map(str, s.dims))}] is not a prefix of "
                         f"[{', '.join(map(str, t.dims))}]", span_of(call))
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
        raise ArgumentError(f"at={at} must be between 0 and {s.rank}", span_of(call))
    d = dyn_index(s)
    if d is not None and at <= d:
        raise ShapeError("promote inside a dynamic stream must come after its dynamic dimension", span_of(call))
    return [StreamT(s.dims[:at] + (1,) + s.dims[at:], s.elem)], {"at": at}, None, None


@_promote_check.run
def _promote_run(node, ins, rt):
    return [_insert_axis(ins[0], node.in_types[0], node.attrs["at"], 1)]


_promote_check.work(_zip_work)


def _static_span(ctx, call, s: StreamT, lo: int, hi: int, what: str):
    d = dyn_index(s)
    if d is not None and lo <= d:
        raise ShapeError(f"{what} cannot touch a dynamic dimension or the ones before it", span_of(call))


@operator("flatten", "flatten(s, dims=[i, j])", "shape", "Merge stream dimensions i..j (inclusive) into one.")
def _flatten_check(ctx, call, ntargets):
    ctx.expect_args(call, 1, ("dims",))
    s = ctx.stream_arg(call.args[0])
    de = call.kw("dims")
    if de is None:
        raise ArgumentError("flatten needs dims=[i, j]", span_of(call))
    ij = eval_int_list(de, ctx.sizes, "dims")
    if len(ij) != 2 or not 0 <= ij[0] < ij[1] < s.rank:
        raise ArgumentError(f"dims must be [i, j] with 0 <= i < j < {s.rank}", span_of(de))
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
        raise ArgumentError("reshape needs dim=i and chunk=c", span_of(call))
    i = eval_int(call.kw("dim"), ctx.sizes, "dim")
    c = eval_positive(call.kw("chunk"), ctx.sizes, "chunk")
    if not 0 <= i < s.rank:
        raise ArgumentError(f"dim={i} must be between 0 and {s.rank - 1}", span_of(call))
    _static_span(ctx, call, s, i, i, "reshape")
    n = s.dims[i]
    if n % c:
        raise SizeError(f"chunk {c} does not divide dimension {i} of size {n}", span_of(call))
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
        raise TypeError_(f"selector needs a stream of i32 tiles, got {s}", span_of(call.args[0]))
    if s.dynamic:
        raise ShapeError("selector needs a static stream", span_of(call))
    if call.kw("n") is None:
        raise ArgumentError("selector needs n= (the number of branches)", span_of(call))
    n = eval_positive(call.kw("n"), ctx.sizes, "n")
    k = s.elem.numel
    if k > n:
        raise ShapeError(f"each element names {k} branches but there are only {n}", span_of(call))
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
        raise TypeError_(f"partition's second argument must be a selector stream, got {sel}", span_of(call.args[1]))
    if s.dynamic:
        raise ShapeError("partition needs a static stream", span_of(call))
    r = eval_int(call.kw("rank"), ctx.sizes, "rank") if call.kw("rank") is not None else 0
    if not 0 <= r <= s.rank:
        raise ArgumentError(f"rank={r} must be between 0 and {s.rank}", span_of(call))
    outer = s.dims[:s.rank - r]
    if tuple(outer) != tuple(sel.dims):
        raise ShapeError(f"partition: the selector's dimensions [{', '.join(map(str, sel.dims))}] must be "
                         f"the stream's outer dimensions [{', '.join(map(str, outer))}]", span_of(call))
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
        raise TypeError_(f"merge's second argument must be a selector stream, got {sel}", span_of(call.args[1]))
    if p.rank < 2 or not isinstance(p.dims[1], Dyn) or p.dims[0] != sel.elem.n:
        raise ShapeError(f"merge needs a partitioned stream [{sel.elem.n}, ?, ...], got {p}", span_of(call.args[0]))
    if not isinstance(p.elem, TileT):
        raise TypeError_("merge needs a tile stream", span_of(call))
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
