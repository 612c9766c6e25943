"""The compute operators: the higher-order ones that apply tile functions (map, accum, scan,
flatmap...), with their numpy semantics chunked to bound temporaries. Registered into
:data:`asp_lang.ops.OPS` when asp_lang is imported.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .consts import eval_int_list, eval_positive
from .errors import ArgumentError, ShapeError, TypeError_
from .ir import BinOp, Call, Expr, FnDef, Name
from .ops import (Node, check_fn_kwarg, compute_work, dyn_index, flat_args, operator,
                  output_streams, position_fn, same_dims, span_of, tiles_of)
from .tilefn import TypedFn, eval_fn
from .types import Dyn, StreamT, TileT, round_to
from .values import SVal

if TYPE_CHECKING:
    from .interp import RunCtx


# ---------------------------------------------------------------- higher-order (compute)

@operator("map", "map(s1, s2, ..., fn=f, par=p?)", "compute",
          "Apply tile function f elementwise over streams of equal dimensions; a fn returning a "
          "tuple defines several output streams.")
def _map_check(ctx, call, ntargets):
    ctx.expect_args(call, None, ("fn", "par"))
    if not call.args:
        raise ArgumentError("map needs at least one stream", span_of(call))
    streams = [ctx.stream_arg(a) for a in call.args]
    dims = same_dims(streams, call, "map")
    tiles = tiles_of(streams, call, "map")
    tf = check_fn_kwarg(ctx, call, tiles, streams[0])
    return output_streams(tf.results, dims), {}, tf, None


def _static_pos(node: Node, extra_batch: int = 0):
    t = node.in_types[0]
    if t.dynamic:
        return None
    return position_fn(t.dims, t.rank)


@_map_check.run
def _map_run(node, ins, rt):
    args = flat_args(ins)
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


_map_check.work(compute_work)


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
        raise ArgumentError(f"{what} needs at least one stream", span_of(call))
    streams = [ctx.stream_arg(a) for a in call.args]
    dims = same_dims(streams, call, what)
    r = eval_positive(call.kw("rank"), ctx.sizes, "rank") if call.kw("rank") is not None else 1
    if r > len(dims):
        raise ShapeError(f"{what} rank {r} exceeds the stream's rank {len(dims)}", span_of(call))
    d = dyn_index(streams[0])
    if d is not None and len(dims) - r < d:
        raise ShapeError(f"{what} over rank {r} would cut into the dynamic dimension's prefix; "
                         f"reduce at most the dimensions from the dynamic one inward", span_of(call))
    init_e = call.kw("init")
    if init_e is None:
        raise ArgumentError(f"{what} needs init=<tile expression> (e.g. zeros([4, 1]))", span_of(call))
    init_fn = FnDef("init", (), (), init_e)
    init_tf = ctx.check_fn(init_fn, (), 0, (), call)
    tiles = tiles_of(streams, call, what)
    acc_types = init_tf.results
    tf = check_fn_kwarg(ctx, call, acc_types + tiles, streams[0])
    if tf.results != acc_types:
        raise TypeError_(f"{what}'s fn must return the accumulator's type: init is "
                         f"({', '.join(map(str, acc_types))}) but fn returns "
                         f"({', '.join(map(str, tf.results))})", span_of(call.kw("fn")))
    out_dims = dims if scan else dims[:len(dims) - r]
    fast = None
    split = _acc_split(tf.fn, len(acc_types))
    if split is not None and not scan:
        kind, term = split
        if kind != "sum" or acc_types[0].dtype in ("f32", "i32"):
            term_tf = ctx.check_fn(term, tiles, streams[0].rank, (), call)
            if term_tf.results[0].shape == acc_types[0].shape or kind != "sum":
                fast = (kind, term_tf)
    return (output_streams(acc_types, out_dims),
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
    args = flat_args(ins)
    t = node.in_types[0]
    d = dyn_index(t)
    r = node.attrs["rank"]
    if d is None:
        outs = _run_reduce_static(node, args, rt, scan, position_fn(t.dims, t.rank))
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
    w = compute_work(node)
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


_scan_check.work(compute_work)


@operator("flatmap", "flatmap(s1, ..., fn=f, split=[..], par=p?)", "compute",
          "Apply f to each element and cut its result tile into tiles of shape split, emitted in "
          "row-major order as a new innermost dimension.")
def _flatmap_check(ctx, call, ntargets):
    ctx.expect_args(call, None, ("fn", "split", "par"))
    if not call.args:
        raise ArgumentError("flatmap needs at least one stream", span_of(call))
    streams = [ctx.stream_arg(a) for a in call.args]
    dims = same_dims(streams, call, "flatmap")
    if any(isinstance(d, Dyn) for d in dims):
        raise ShapeError("flatmap needs a static stream", span_of(call))
    tf = check_fn_kwarg(ctx, call, tiles_of(streams, call, "flatmap"), streams[0])
    if len(tf.results) != 1:
        raise ArgumentError("flatmap's fn must return one tile", span_of(call))
    res = tf.results[0]
    se = call.kw("split")
    if se is None:
        raise ArgumentError("flatmap needs split=[...]", span_of(call))
    split = eval_int_list(se, ctx.sizes, "split")
    if len(split) != len(res.shape) or any(p <= 0 or s % p for s, p in zip(res.shape, split)):
        raise ShapeError(f"split {list(split)} must divide the fn's result tile {res}", span_of(se))
    k = math.prod(s // p for s, p in zip(res.shape, split))
    return [StreamT(dims + (k,), TileT(res.dtype, tuple(split)))], {"split": tuple(split)}, tf, None


@_flatmap_check.run
def _flatmap_run(node, ins, rt):
    t = node.in_types[0]
    rt.charge_elements(node, t.count)
    (o,) = eval_fn(node.fn, flat_args(ins), position_fn(t.dims, t.rank))
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


_flatmap_check.work(compute_work)
