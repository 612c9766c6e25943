"""The builtins of tile functions: each one's type/shape rule, numpy semantics and cost class,
registered side by side in :data:`BUILTINS` (the table :mod:`asp_lang.tilefn` checks and
evaluates tile functions with), and the operators and constants of the expression language.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import ArgumentError, ShapeError, SizeError, TypeError_
from .types import WEAK_FLOAT, WEAK_INT, TileT, is_float, is_weak

MAX_TILE_ELEMS = 1 << 24  # no tile may hold more than 16M elements


# ---------------------------------------------------------------- builtin registry

@dataclass(frozen=True)
class Builtin:
    name: str
    tiles: tuple[str, ...]                      # tile (runtime) parameters
    static: tuple[tuple[str, str, object], ...]  # (name, kind, default); kind: int, ints, dtype, number
    rule: Callable                               # (call, tile types, statics) -> TileT
    impl: Callable                               # (arrays, statics, tile types, result type) -> array
    cost: str                                    # simd | tail | reduce | mm | free
    doc: str


BUILTINS: dict[str, Builtin] = {}
REQUIRED = object()


def builtin(name: str, tiles: tuple[str, ...], static=(), cost: str = "simd", doc: str = ""):
    """Register a builtin from its type rule; its numpy semantics follow via ``.impl``."""
    def deco(rule):
        def with_impl(impl):
            BUILTINS[name] = Builtin(name, tiles, tuple(static), rule, impl, cost, doc)
            return impl
        rule.impl = with_impl
        return rule
    return deco


def tile_error(cls, msg: str, node) -> Exception:
    return cls(msg, getattr(node, "span", None))


def _float_type(call, t: TileT) -> TileT:
    if t.dtype == WEAK_INT:
        return TileT(WEAK_FLOAT, t.shape)
    if not is_float(t.dtype):
        raise tile_error(TypeError_, f"{call.func} needs a float tile, got {t}; use cast(x, f32)", call)
    return t


def broadcast_shapes(a: tuple[int, ...], b: tuple[int, ...], node) -> tuple[int, ...]:
    n = max(len(a), len(b))
    a2 = (1,) * (n - len(a)) + a
    b2 = (1,) * (n - len(b)) + b
    out = []
    for x, y in zip(a2, b2):
        if x != y and x != 1 and y != 1:
            raise tile_error(ShapeError, f"tile shapes {list(a)} and {list(b)} do not broadcast", node)
        out.append(max(x, y))
    return tuple(out)


def unify_dtype(a: str, b: str, node, op: str) -> str:
    """The dtype of an elementwise op on ``a`` and ``b`` (literals adopt the other side)."""
    if is_weak(a) and is_weak(b):
        return WEAK_FLOAT if WEAK_FLOAT in (a, b) else WEAK_INT
    if is_weak(a) or is_weak(b):
        strong, weak = (b, a) if is_weak(a) else (a, b)
        if strong == "bool":
            raise tile_error(TypeError_, f"'{op}' cannot mix a bool tile with a number", node)
        if strong == "i32" and weak == WEAK_FLOAT:
            raise tile_error(TypeError_, f"'{op}' mixes an i32 tile and a float literal; use cast(x, f32)", node)
        return strong
    if a != b:
        raise tile_error(TypeError_, f"'{op}' on {a} and {b}: dtypes must match; use cast(x, {a})", node)
    return a


def align_batch(x, rank: int, target: int):
    """Insert singleton tile axes so a rank-``rank`` tile broadcasts against rank ``target``."""
    if rank >= target or np.ndim(x) == 0:
        return x
    x = np.asarray(x)
    pos = x.ndim - rank
    return x.reshape(x.shape[:pos] + (1,) * (target - rank) + x.shape[pos:])


def _axis(t: TileT, axis: int, node) -> int:
    r = len(t.shape)
    if not -r <= axis < r:
        raise tile_error(ArgumentError, f"axis {axis} is out of range for tile {t}", node)
    return axis % r


def _np_axis(t: TileT, axis: int) -> int:
    return axis % len(t.shape) - len(t.shape)


# -- elementwise, transcendental (tail unit)
_UNARY_TAIL = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "tanh": np.tanh, "sin": np.sin, "cos": np.cos,
    "rsqrt": lambda x: 1.0 / np.sqrt(x),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
}


def _erf(x):
    """erf to ~1e-7 relative: Taylor series near 0, Chebyshev-fitted erfc elsewhere."""
    x64 = np.asarray(x, dtype=np.float64)
    z = np.abs(x64)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    erfc = t * np.exp(poly)
    far = np.sign(x64) * (1.0 - erfc)
    x2 = x64 * x64
    near = (2.0 / math.sqrt(math.pi)) * x64 * (1 - x2 / 3 + x2**2 / 10 - x2**3 / 42 + x2**4 / 216
                                               - x2**5 / 1320 + x2**6 / 9360)
    return np.where(z < 0.5, near, far)


_UNARY_TAIL["erf"] = _erf
_UNARY_SIMD = {"abs": np.abs, "relu": lambda x: np.maximum(x, 0), "floor": np.floor}


def _unary_rule(call, ts, st):
    t = ts[0]
    if call.func in ("abs", "relu"):
        if t.dtype == "bool":
            raise tile_error(TypeError_, f"{call.func} needs a number tile, got {t}", call)
        return t
    return _float_type(call, t)


for _name in _UNARY_TAIL:
    BUILTINS[_name] = Builtin(_name, ("x",), (), _unary_rule,
                              lambda a, st, ts, rt, f=_UNARY_TAIL[_name]: f(a[0]), "tail",
                              f"elementwise {_name} (float)")
for _name in _UNARY_SIMD:
    BUILTINS[_name] = Builtin(_name, ("x",), (), _unary_rule,
                              lambda a, st, ts, rt, f=_UNARY_SIMD[_name]: f(a[0]), "simd",
                              f"elementwise {_name}")


def _binary_rule(call, ts, st):
    a, b = ts
    dt = unify_dtype(a.dtype, b.dtype, call, call.func)
    if dt == "bool":
        raise tile_error(TypeError_, f"{call.func} needs number tiles", call)
    return TileT(dt, broadcast_shapes(a.shape, b.shape, call))


BUILTINS["maximum"] = Builtin("maximum", ("a", "b"), (), _binary_rule,
                              lambda a, st, ts, rt: np.maximum(a[0], a[1]), "simd",
                              "elementwise maximum (NaN-propagating)")
BUILTINS["minimum"] = Builtin("minimum", ("a", "b"), (), _binary_rule,
                              lambda a, st, ts, rt: np.minimum(a[0], a[1]), "simd",
                              "elementwise minimum (NaN-propagating)")


@builtin("where", ("cond", "a", "b"), doc="select a where cond else b (cond is bool)")
def _where_rule(call, ts, st):
    c, a, b = ts
    if c.dtype != "bool":
        raise tile_error(TypeError_, f"where's condition must be bool, got {c}", call)
    dt = unify_dtype(a.dtype, b.dtype, call, "where")
    shape = broadcast_shapes(broadcast_shapes(c.shape, a.shape, call), b.shape, call)
    return TileT(dt, shape)


@_where_rule.impl
def _where_impl(a, st, ts, rt):
    return np.where(a[0], a[1], a[2])


@builtin("cast", ("x",), (("dtype", "dtype", REQUIRED),), doc="convert to dtype (floats round to nearest even, float->i32 truncates)")
def _cast_rule(call, ts, st):
    return TileT(st["dtype"], ts[0].shape)


@_cast_rule.impl
def _cast_impl(a, st, ts, rt):
    return a[0]


def _reduce_rule(call, ts, st):
    t = ts[0]
    ax = _axis(t, st["axis"], call)
    shape = tuple(1 if i == ax else s for i, s in enumerate(t.shape))
    if call.func in ("argmax", "argmin"):
        if t.dtype == "bool":
            raise tile_error(TypeError_, f"{call.func} needs a number tile", call)
        return TileT("i32", shape)
    if t.dtype == "bool":
        raise tile_error(TypeError_, f"{call.func} needs a number tile, got {t}", call)
    if call.func == "mean":
        t = _float_type(call, t)
    return TileT(t.dtype, shape)


def _reduce_impl(fn):
    def impl(a, st, ts, rt):
        ax = _np_axis(ts[0], st["axis"])
        x = np.asarray(a[0])
        if fn in ("argmax", "argmin"):
            f = np.argmax if fn == "argmax" else np.argmin
            return np.expand_dims(f(x, axis=ax), ax).astype(np.int32)
        if fn == "sum":
            return np.sum(x, axis=ax, keepdims=True)
        if fn == "mean":
            return np.mean(x, axis=ax, keepdims=True)
        return (np.max if fn == "max" else np.min)(x, axis=ax, keepdims=True)
    return impl


for _name in ("sum", "max", "min", "mean", "argmax", "argmin"):
    BUILTINS[_name] = Builtin(_name, ("x",), (("axis", "int", REQUIRED),), _reduce_rule,
                              _reduce_impl(_name), "reduce",
                              f"{_name} along a tile axis (kept with size 1)")


@builtin("cumsum", ("x",), (("axis", "int", REQUIRED),), doc="running sum along a tile axis")
def _cumsum_rule(call, ts, st):
    t = ts[0]
    _axis(t, st["axis"], call)
    if t.dtype == "bool":
        raise tile_error(TypeError_, "cumsum needs a number tile", call)
    return t


@_cumsum_rule.impl
def _cumsum_impl(a, st, ts, rt):
    return np.cumsum(a[0], axis=_np_axis(ts[0], st["axis"]))


@builtin("matmul", ("a", "b"), cost="mm", doc="tile matrix product over the last two axes (leading axes broadcast)")
def _matmul_rule(call, ts, st):
    a, b = ts
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise tile_error(ShapeError, f"matmul needs tiles of rank >= 2, got {a} and {b}", call)
    if a.shape[-1] != b.shape[-2]:
        raise tile_error(ShapeError, f"matmul of {list(a.shape)} and {list(b.shape)}: inner sizes "
                               f"{a.shape[-1]} and {b.shape[-2]} differ", call)
    dt = unify_dtype(a.dtype, b.dtype, call, "matmul")
    if dt == "bool" or is_weak(dt):
        raise tile_error(TypeError_, "matmul needs number tiles", call)
    lead = broadcast_shapes(a.shape[:-2], b.shape[:-2], call)
    return TileT(dt, lead + (a.shape[-2], b.shape[-1]))


@_matmul_rule.impl
def matmul_impl(a, st, ts, rt):
    r = max(len(ts[0].shape), len(ts[1].shape))
    x, y = align_batch(a[0], len(ts[0].shape), r), align_batch(a[1], len(ts[1].shape), r)
    # 16-bit tiles: the systolic array accumulates in f32 and rounds once on the way out
    return np.matmul(x, y)


@builtin("transpose", ("x",), cost="free", doc="swap the last two tile axes")
def _transpose_rule(call, ts, st):
    t = ts[0]
    if len(t.shape) < 2:
        raise tile_error(ShapeError, f"transpose needs a tile of rank >= 2, got {t}", call)
    return TileT(t.dtype, t.shape[:-2] + (t.shape[-1], t.shape[-2]))


@_transpose_rule.impl
def _transpose_impl(a, st, ts, rt):
    return np.swapaxes(a[0], -1, -2)


@builtin("reshape", ("x",), (("shape", "ints", REQUIRED),), cost="free", doc="same elements, new tile shape")
def _reshape_rule(call, ts, st):
    t, shape = ts[0], st["shape"]
    if math.prod(shape) != t.numel:
        raise tile_error(ShapeError, f"cannot reshape {t} ({t.numel} elements) to {list(shape)}", call)
    return TileT(t.dtype, shape)


@_reshape_rule.impl
def _reshape_impl(a, st, ts, rt):
    x = np.asarray(a[0])
    r = len(ts[0].shape)
    return x.reshape(x.shape[:x.ndim - r] + tuple(st["shape"]))


@builtin("broadcast", ("x",), (("shape", "ints", REQUIRED),), cost="free", doc="repeat size-1 axes to shape")
def _broadcast_rule(call, ts, st):
    t, shape = ts[0], st["shape"]
    if broadcast_shapes(t.shape, shape, call) != tuple(shape):
        raise tile_error(ShapeError, f"cannot broadcast {t} to {list(shape)}", call)
    return TileT(t.dtype, shape)


@_broadcast_rule.impl
def _broadcast_impl(a, st, ts, rt):
    shape = tuple(st["shape"])
    x = align_batch(a[0], len(ts[0].shape), len(shape))
    x = np.asarray(x)
    lead = x.shape[:x.ndim - len(shape)]
    return np.broadcast_to(x, lead + shape)


def _const_rule(call, ts, st):
    dt = st["dtype"]
    shape = st["shape"]
    if math.prod(shape) > MAX_TILE_ELEMS:
        raise tile_error(SizeError, f"tile {list(shape)} is larger than {MAX_TILE_ELEMS} elements", call)
    return TileT(dt, shape)


BUILTINS["zeros"] = Builtin("zeros", (), (("shape", "ints", REQUIRED), ("dtype", "dtype", "f32")),
                            _const_rule, lambda a, st, ts, rt: np.zeros(st["shape"]), "free",
                            "a constant tile of zeros")
BUILTINS["ones"] = Builtin("ones", (), (("shape", "ints", REQUIRED), ("dtype", "dtype", "f32")),
                           _const_rule, lambda a, st, ts, rt: np.ones(st["shape"]), "free",
                           "a constant tile of ones")
BUILTINS["full"] = Builtin("full", (), (("shape", "ints", REQUIRED), ("value", "number", REQUIRED),
                                        ("dtype", "dtype", "f32")),
                           _const_rule, lambda a, st, ts, rt: np.full(st["shape"], st["value"]), "free",
                           "a constant tile filled with value")


@builtin("iota", (), (("shape", "ints", REQUIRED), ("axis", "int", REQUIRED)), cost="free",
         doc="i32 tile whose value is the index along axis")
def _iota_rule(call, ts, st):
    shape = st["shape"]
    _axis(TileT("i32", shape), st["axis"], call)
    return _const_rule(call, ts, {"shape": shape, "dtype": "i32"})


@_iota_rule.impl
def _iota_impl(a, st, ts, rt):
    shape = tuple(st["shape"])
    ax = st["axis"] % len(shape)
    r = np.arange(shape[ax], dtype=np.int32).reshape([shape[ax] if i == ax else 1 for i in range(len(shape))])
    return np.broadcast_to(r, shape)


@builtin("pos", (), (("dim", "int", REQUIRED),), cost="free",
         doc="i32 scalar: this element's index along stream dimension dim")
def _pos_rule(call, ts, st):
    return TileT("i32", ())


@_pos_rule.impl
def _pos_impl(a, st, ts, rt):
    raise AssertionError("pos is evaluated by the stream context")


@builtin("slice", ("x",), (("axis", "int", REQUIRED), ("start", "int", 0), ("stop", "int", None),
                           ("step", "int", 1)), cost="free", doc="x[start:stop:step] along a tile axis")
def _slice_rule(call, ts, st):
    t = ts[0]
    ax = _axis(t, st["axis"], call)
    stop = t.shape[ax] if st["stop"] is None else st["stop"]
    start, step = st["start"], st["step"]
    if step <= 0 or not 0 <= start < stop <= t.shape[ax]:
        raise tile_error(ArgumentError, f"slice [{start}:{stop}:{step}] is out of range for axis {ax} of {t}", call)
    n = len(range(start, stop, step))
    return TileT(t.dtype, tuple(n if i == ax else s for i, s in enumerate(t.shape)))


@_slice_rule.impl
def _slice_impl(a, st, ts, rt):
    t = ts[0]
    ax = st["axis"] % len(t.shape)
    stop = t.shape[ax] if st["stop"] is None else st["stop"]
    x = np.asarray(a[0])
    idx = [slice(None)] * x.ndim
    idx[x.ndim - len(t.shape) + ax] = slice(st["start"], stop, st["step"])
    return x[tuple(idx)]


@builtin("concat", ("a", "b"), (("axis", "int", REQUIRED),), cost="free", doc="join two tiles along an axis")
def _concat_rule(call, ts, st):
    a, b = ts
    if len(a.shape) != len(b.shape):
        raise tile_error(ShapeError, f"concat needs tiles of equal rank, got {a} and {b}", call)
    ax = _axis(a, st["axis"], call)
    for i, (x, y) in enumerate(zip(a.shape, b.shape)):
        if i != ax and x != y:
            raise tile_error(ShapeError, f"concat along axis {ax}: {a} and {b} differ in axis {i}", call)
    dt = unify_dtype(a.dtype, b.dtype, call, "concat")
    return TileT(dt, tuple(x + y if i == ax else x for i, (x, y) in enumerate(zip(a.shape, b.shape))))


@_concat_rule.impl
def _concat_impl(a, st, ts, rt):
    x, y = np.asarray(a[0]), np.asarray(a[1])
    r = len(ts[0].shape)
    ax = st["axis"] % r
    nb = max(x.ndim, y.ndim) - r
    lead = np.broadcast_shapes(x.shape[:x.ndim - r], y.shape[:y.ndim - r])
    x = np.broadcast_to(x, lead + x.shape[x.ndim - r:])
    y = np.broadcast_to(y, lead + y.shape[y.ndim - r:])
    return np.concatenate([x, y], axis=nb + ax)


def _topk_rule(call, ts, st):
    t = ts[0]
    ax = _axis(t, st["axis"], call)
    k = st["k"]
    if not 1 <= k <= t.shape[ax]:
        raise tile_error(ArgumentError, f"k={k} must be between 1 and {t.shape[ax]}", call)
    if t.dtype == "bool":
        raise tile_error(TypeError_, f"{call.func} needs a number tile", call)
    shape = tuple(k if i == ax else s for i, s in enumerate(t.shape))
    return TileT("i32" if call.func == "argtopk" else t.dtype, shape)


def _topk_impl(want_idx):
    def impl(a, st, ts, rt):
        ax = _np_axis(ts[0], st["axis"])
        x = np.asarray(a[0])
        # descending, ties to the lower index (as torch.topk on CPU), NaN ranks highest
        key = np.where(np.isnan(x), np.inf, x) if x.dtype.kind == "f" else x
        order = np.argsort(-key.astype(np.float64), axis=ax, kind="stable")
        idx = np.take(order, np.arange(st["k"]), axis=ax)
        return idx.astype(np.int32) if want_idx else np.take_along_axis(x, idx, axis=ax)
    return impl


for _name, _want in (("topk", False), ("argtopk", True)):
    BUILTINS[_name] = Builtin(_name, ("x",), (("k", "int", REQUIRED), ("axis", "int", REQUIRED)),
                              _topk_rule, _topk_impl(_want), "reduce",
                              "the k largest values" if not _want else "indices of the k largest values")

@builtin("flip", ("x",), (("axis", "int", REQUIRED),), cost="free", doc="reverse a tile along an axis")
def _flip_rule(call, ts, st):
    _axis(ts[0], st["axis"], call)
    return ts[0]


@_flip_rule.impl
def _flip_impl(a, st, ts, rt):
    return np.flip(a[0], axis=_np_axis(ts[0], st["axis"]))


def _index_tile(call, x: TileT, idx: TileT, axis: int, what: str) -> int:
    ax = _axis(x, axis, call)
    if idx.dtype != "i32":
        raise tile_error(TypeError_, f"{what}'s indices must be i32, got {idx}", call)
    if len(idx.shape) != len(x.shape) or any(i != j for k, (i, j) in enumerate(zip(idx.shape, x.shape)) if k != ax):
        raise tile_error(ShapeError, f"{what}: indices {list(idx.shape)} must match {list(x.shape)} except on axis {ax}", call)
    return ax


@builtin("take", ("x", "idx"), (("axis", "int", REQUIRED),), cost="simd",
         doc="x's values at the i32 positions idx along axis (take_along_axis); out-of-range indices wrap")
def _take_rule(call, ts, st):
    x, idx = ts
    _index_tile(call, x, idx, st["axis"], "take")
    return TileT(x.dtype, idx.shape)


@_take_rule.impl
def _take_impl(a, st, ts, rt):
    x, idx = np.asarray(a[0]), np.asarray(a[1])
    ax = _np_axis(ts[0], st["axis"])
    n = x.shape[ax]
    lead = np.broadcast_shapes(x.shape[:x.ndim - len(ts[0].shape)], idx.shape[:idx.ndim - len(ts[1].shape)])
    x = np.broadcast_to(x, lead + x.shape[x.ndim - len(ts[0].shape):])
    idx = np.broadcast_to(idx, lead + idx.shape[idx.ndim - len(ts[1].shape):])
    return np.take_along_axis(x, np.mod(idx, n), axis=ax)


@builtin("put", ("x", "idx", "src"), (("axis", "int", REQUIRED),), cost="simd",
         doc="a copy of x with src written at the i32 positions idx along axis (put_along_axis)")
def _put_rule(call, ts, st):
    x, idx, src = ts
    ax = _index_tile(call, x, idx, st["axis"], "put")
    if src.shape != idx.shape and src.shape != ():
        raise tile_error(ShapeError, f"put: values {list(src.shape)} must have the indices' shape {list(idx.shape)}", call)
    unify_dtype(x.dtype, src.dtype, call, "put")
    del ax
    return x


@_put_rule.impl
def _put_impl(a, st, ts, rt):
    x, idx, src = np.asarray(a[0]), np.asarray(a[1]), np.asarray(a[2])
    r = len(ts[0].shape)
    ax = _np_axis(ts[0], st["axis"])
    lead = np.broadcast_shapes(x.shape[:x.ndim - r], idx.shape[:idx.ndim - r])
    out = np.array(np.broadcast_to(x, lead + x.shape[x.ndim - r:]))
    idx = np.broadcast_to(idx, lead + idx.shape[idx.ndim - r:])
    src = np.broadcast_to(src, idx.shape)
    np.put_along_axis(out, np.mod(idx, out.shape[ax]), src, axis=ax)
    return out


CONSTANTS = {"inf": math.inf, "nan": math.nan, "pi": math.pi}
ARITH_OPS = ("+", "-", "*", "/", "%", "**")
COMPARE_OPS = ("==", "!=", "<", "<=", ">", ">=")
