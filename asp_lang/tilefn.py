"""Tile functions: the closed expression language of what one compute unit does to a tile.

Each builtin has three facets registered side by side: its type/shape rule, its numpy
semantics and its cost class. ``check_fn`` types a function for given argument tiles
(once per call site) and ``eval_fn`` runs it over whole streams at once: every argument
array carries leading stream ("batch") axes before its tile axes, and tile axes are always
addressed from the end, so one numpy call evaluates the function for every element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .consts import MAX_RANK, eval_int, eval_int_list
from .errors import ArgumentError, NameError_, ShapeError, SizeError, Span, TypeError_
from .ir import BinOp, Call, Expr, FnDef, ListExpr, Name, Num, TupleExpr, UnOp
from .types import (DTYPES, FLOAT_DTYPES, WEAK_FLOAT, WEAK_INT, TileT, is_float, is_weak,
                    round_to)

MAX_TILE_ELEMS = 1 << 24  # no tile may hold more than 16M elements


@dataclass
class FnCost:
    """Work per call: element-operations by unit class and matmul flops."""
    simd: float = 0.0  # elementwise / reduction element-ops on the PCU's SIMD stages
    tail: float = 0.0  # transcendental element-ops on the PCU's tail unit
    mm: float = 0.0    # matmul flops (2 per multiply-accumulate) on the systolic array, 16-bit
    mm32: float = 0.0  # matmul flops with f32/i32 operands (slower systolic rate)
    simd32: float = 0.0  # the part of ``simd`` on 32-bit (f32/i32) operands: bounded by the 32-bit peak
    ops: int = 0       # operations in the expression (pipeline stages it needs)

    @property
    def flops(self) -> float:
        return self.simd + self.tail + self.mm + self.mm32


@dataclass
class TypedFn:
    """A tile function checked for particular argument types."""
    fn: FnDef
    arg_types: tuple[TileT, ...]
    results: tuple[TileT, ...]
    types: dict[int, TileT]
    consts: dict[int, object]       # folded constants (literals, sizes, calls on them), by node id
    statics: dict[int, dict]        # resolved static arguments of builtin calls (axis=, shape=...)
    cost: FnCost = field(default_factory=FnCost)
    uses_pos: bool = False


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
_REQUIRED = object()


def builtin(name: str, tiles: tuple[str, ...], static=(), cost: str = "simd", doc: str = ""):
    """Register a builtin from its type rule; its numpy semantics follow via ``.impl``."""
    def deco(rule):
        def with_impl(impl):
            BUILTINS[name] = Builtin(name, tiles, tuple(static), rule, impl, cost, doc)
            return impl
        rule.impl = with_impl
        return rule
    return deco


def _err(cls, msg: str, node) -> Exception:
    return cls(msg, getattr(node, "span", None))


def _float_type(call, t: TileT) -> TileT:
    if t.dtype == WEAK_INT:
        return TileT(WEAK_FLOAT, t.shape)
    if not is_float(t.dtype):
        raise _err(TypeError_, f"{call.func} needs a float tile, got {t}; use cast(x, f32)", call)
    return t


def broadcast_shapes(a: tuple[int, ...], b: tuple[int, ...], node) -> tuple[int, ...]:
    n = max(len(a), len(b))
    a2 = (1,) * (n - len(a)) + a
    b2 = (1,) * (n - len(b)) + b
    out = []
    for x, y in zip(a2, b2):
        if x != y and x != 1 and y != 1:
            raise _err(ShapeError, f"tile shapes {list(a)} and {list(b)} do not broadcast", node)
        out.append(max(x, y))
    return tuple(out)


def unify_dtype(a: str, b: str, node, op: str) -> str:
    """The dtype of an elementwise op on ``a`` and ``b`` (literals adopt the other side)."""
    if is_weak(a) and is_weak(b):
        return WEAK_FLOAT if WEAK_FLOAT in (a, b) else WEAK_INT
    if is_weak(a) or is_weak(b):
        strong, weak = (b, a) if is_weak(a) else (a, b)
        if strong == "bool":
            raise _err(TypeError_, f"'{op}' cannot mix a bool tile with a number", node)
        if strong == "i32" and weak == WEAK_FLOAT:
            raise _err(TypeError_, f"'{op}' mixes an i32 tile and a float literal; use cast(x, f32)", node)
        return strong
    if a != b:
        raise _err(TypeError_, f"'{op}' on {a} and {b}: dtypes must match; use cast(x, {a})", node)
    return a


def _align(x, rank: int, target: int):
    """Insert singleton tile axes so a rank-``rank`` tile broadcasts against rank ``target``."""
    if rank >= target or np.ndim(x) == 0:
        return x
    x = np.asarray(x)
    pos = x.ndim - rank
    return x.reshape(x.shape[:pos] + (1,) * (target - rank) + x.shape[pos:])


def _axis(t: TileT, axis: int, node) -> int:
    r = len(t.shape)
    if not -r <= axis < r:
        raise _err(ArgumentError, f"axis {axis} is out of range for tile {t}", node)
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
            raise _err(TypeError_, f"{call.func} needs a number tile, got {t}", call)
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
        raise _err(TypeError_, f"{call.func} needs number tiles", call)
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
        raise _err(TypeError_, f"where's condition must be bool, got {c}", call)
    dt = unify_dtype(a.dtype, b.dtype, call, "where")
    shape = broadcast_shapes(broadcast_shapes(c.shape, a.shape, call), b.shape, call)
    return TileT(dt, shape)


@_where_rule.impl
def _where_impl(a, st, ts, rt):
    return np.where(a[0], a[1], a[2])


@builtin("cast", ("x",), (("dtype", "dtype", _REQUIRED),), doc="convert to dtype (floats round to nearest even, float->i32 truncates)")
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
            raise _err(TypeError_, f"{call.func} needs a number tile", call)
        return TileT("i32", shape)
    if t.dtype == "bool":
        raise _err(TypeError_, f"{call.func} needs a number tile, got {t}", call)
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
    BUILTINS[_name] = Builtin(_name, ("x",), (("axis", "int", _REQUIRED),), _reduce_rule,
                              _reduce_impl(_name), "reduce",
                              f"{_name} along a tile axis (kept with size 1)")


@builtin("cumsum", ("x",), (("axis", "int", _REQUIRED),), doc="running sum along a tile axis")
def _cumsum_rule(call, ts, st):
    t = ts[0]
    _axis(t, st["axis"], call)
    if t.dtype == "bool":
        raise _err(TypeError_, "cumsum needs a number tile", call)
    return t


@_cumsum_rule.impl
def _cumsum_impl(a, st, ts, rt):
    return np.cumsum(a[0], axis=_np_axis(ts[0], st["axis"]))


@builtin("matmul", ("a", "b"), cost="mm", doc="tile matrix product over the last two axes (leading axes broadcast)")
def _matmul_rule(call, ts, st):
    a, b = ts
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise _err(ShapeError, f"matmul needs tiles of rank >= 2, got {a} and {b}", call)
    if a.shape[-1] != b.shape[-2]:
        raise _err(ShapeError, f"matmul of {list(a.shape)} and {list(b.shape)}: inner sizes "
                               f"{a.shape[-1]} and {b.shape[-2]} differ", call)
    dt = unify_dtype(a.dtype, b.dtype, call, "matmul")
    if dt == "bool" or is_weak(dt):
        raise _err(TypeError_, "matmul needs number tiles", call)
    lead = broadcast_shapes(a.shape[:-2], b.shape[:-2], call)
    return TileT(dt, lead + (a.shape[-2], b.shape[-1]))


@_matmul_rule.impl
def _matmul_impl(a, st, ts, rt):
    r = max(len(ts[0].shape), len(ts[1].shape))
    x, y = _align(a[0], len(ts[0].shape), r), _align(a[1], len(ts[1].shape), r)
    # 16-bit tiles: the systolic array accumulates in f32 and rounds once on the way out
    return np.matmul(x, y)


@builtin("transpose", ("x",), cost="free", doc="swap the last two tile axes")
def _transpose_rule(call, ts, st):
    t = ts[0]
    if len(t.shape) < 2:
        raise _err(ShapeError, f"transpose needs a tile of rank >= 2, got {t}", call)
    return TileT(t.dtype, t.shape[:-2] + (t.shape[-1], t.shape[-2]))


@_transpose_rule.impl
def _transpose_impl(a, st, ts, rt):
    return np.swapaxes(a[0], -1, -2)


@builtin("reshape", ("x",), (("shape", "ints", _REQUIRED),), cost="free", doc="same elements, new tile shape")
def _reshape_rule(call, ts, st):
    t, shape = ts[0], st["shape"]
    if math.prod(shape) != t.numel:
        raise _err(ShapeError, f"cannot reshape {t} ({t.numel} elements) to {list(shape)}", call)
    return TileT(t.dtype, shape)


@_reshape_rule.impl
def _reshape_impl(a, st, ts, rt):
    x = np.asarray(a[0])
    r = len(ts[0].shape)
    return x.reshape(x.shape[:x.ndim - r] + tuple(st["shape"]))


@builtin("broadcast", ("x",), (("shape", "ints", _REQUIRED),), cost="free", doc="repeat size-1 axes to shape")
def _broadcast_rule(call, ts, st):
    t, shape = ts[0], st["shape"]
    if broadcast_shapes(t.shape, shape, call) != tuple(shape):
        raise _err(ShapeError, f"cannot broadcast {t} to {list(shape)}", call)
    return TileT(t.dtype, shape)


@_broadcast_rule.impl
def _broadcast_impl(a, st, ts, rt):
    shape = tuple(st["shape"])
    x = _align(a[0], len(ts[0].shape), len(shape))
    x = np.asarray(x)
    lead = x.shape[:x.ndim - len(shape)]
    return np.broadcast_to(x, lead + shape)


def _const_rule(call, ts, st):
    dt = st["dtype"]
    shape = st["shape"]
    if math.prod(shape) > MAX_TILE_ELEMS:
        raise _err(SizeError, f"tile {list(shape)} is larger than {MAX_TILE_ELEMS} elements", call)
    return TileT(dt, shape)


BUILTINS["zeros"] = Builtin("zeros", (), (("shape", "ints", _REQUIRED), ("dtype", "dtype", "f32")),
                            _const_rule, lambda a, st, ts, rt: np.zeros(st["shape"]), "free",
                            "a constant tile of zeros")
BUILTINS["ones"] = Builtin("ones", (), (("shape", "ints", _REQUIRED), ("dtype", "dtype", "f32")),
                           _const_rule, lambda a, st, ts, rt: np.ones(st["shape"]), "free",
                           "a constant tile of ones")
BUILTINS["full"] = Builtin("full", (), (("shape", "ints", _REQUIRED), ("value", "number", _REQUIRED),
                                        ("dtype", "dtype", "f32")),
                           _const_rule, lambda a, st, ts, rt: np.full(st["shape"], st["value"]), "free",
                           "a constant tile filled with value")


@builtin("iota", (), (("shape", "ints", _REQUIRED), ("axis", "int", _REQUIRED)), cost="free",
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


@builtin("pos", (), (("dim", "int", _REQUIRED),), cost="free",
         doc="i32 scalar: this element's index along stream dimension dim")
def _pos_rule(call, ts, st):
    return TileT("i32", ())


@_pos_rule.impl
def _pos_impl(a, st, ts, rt):
    raise AssertionError("pos is evaluated by the stream context")


@builtin("slice", ("x",), (("axis", "int", _REQUIRED), ("start", "int", 0), ("stop", "int", None),
                           ("step", "int", 1)), cost="free", doc="x[start:stop:step] along a tile axis")
def _slice_rule(call, ts, st):
    t = ts[0]
    ax = _axis(t, st["axis"], call)
    stop = t.shape[ax] if st["stop"] is None else st["stop"]
    start, step = st["start"], st["step"]
    if step <= 0 or not 0 <= start < stop <= t.shape[ax]:
        raise _err(ArgumentError, f"slice [{start}:{stop}:{step}] is out of range for axis {ax} of {t}", call)
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


@builtin("concat", ("a", "b"), (("axis", "int", _REQUIRED),), cost="free", doc="join two tiles along an axis")
def _concat_rule(call, ts, st):
    a, b = ts
    if len(a.shape) != len(b.shape):
        raise _err(ShapeError, f"concat needs tiles of equal rank, got {a} and {b}", call)
    ax = _axis(a, st["axis"], call)
    for i, (x, y) in enumerate(zip(a.shape, b.shape)):
        if i != ax and x != y:
            raise _err(ShapeError, f"concat along axis {ax}: {a} and {b} differ in axis {i}", call)
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
        raise _err(ArgumentError, f"k={k} must be between 1 and {t.shape[ax]}", call)
    if t.dtype == "bool":
        raise _err(TypeError_, f"{call.func} needs a number tile", call)
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
    BUILTINS[_name] = Builtin(_name, ("x",), (("k", "int", _REQUIRED), ("axis", "int", _REQUIRED)),
                              _topk_rule, _topk_impl(_want), "reduce",
                              "the k largest values" if not _want else "indices of the k largest values")

@builtin("flip", ("x",), (("axis", "int", _REQUIRED),), cost="free", doc="reverse a tile along an axis")
def _flip_rule(call, ts, st):
    _axis(ts[0], st["axis"], call)
    return ts[0]


@_flip_rule.impl
def _flip_impl(a, st, ts, rt):
    return np.flip(a[0], axis=_np_axis(ts[0], st["axis"]))


def _index_tile(call, x: TileT, idx: TileT, axis: int, what: str) -> int:
    ax = _axis(x, axis, call)
    if idx.dtype != "i32":
        raise _err(TypeError_, f"{what}'s indices must be i32, got {idx}", call)
    if len(idx.shape) != len(x.shape) or any(i != j for k, (i, j) in enumerate(zip(idx.shape, x.shape)) if k != ax):
        raise _err(ShapeError, f"{what}: indices {list(idx.shape)} must match {list(x.shape)} except on axis {ax}", call)
    return ax


@builtin("take", ("x", "idx"), (("axis", "int", _REQUIRED),), cost="simd",
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


@builtin("put", ("x", "idx", "src"), (("axis", "int", _REQUIRED),), cost="simd",
         doc="a copy of x with src written at the i32 positions idx along axis (put_along_axis)")
def _put_rule(call, ts, st):
    x, idx, src = ts
    ax = _index_tile(call, x, idx, st["axis"], "put")
    if src.shape != idx.shape and src.shape != ():
        raise _err(ShapeError, f"put: values {list(src.shape)} must have the indices' shape {list(idx.shape)}", call)
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
_ARITH = ("+", "-", "*", "/", "%", "**")
_COMPARE = ("==", "!=", "<", "<=", ">", ">=")


# ---------------------------------------------------------------- checking

class _FnChecker:
    def __init__(self, fn: FnDef, sizes: dict[str, int], stream_rank: int, dynamic_dims: tuple[int, ...]):
        self.fn = fn
        self.sizes = sizes
        self.stream_rank = stream_rank
        self.dynamic_dims = dynamic_dims
        self.types: dict[int, TileT] = {}
        self.consts: dict[int, object] = {}
        self.cost = FnCost()
        self.uses_pos = False
        self.scope: dict[str, TileT] = {}
        self.let_consts: dict[str, object] = {}
        self.statics: dict[int, dict] = {}

    def run(self, arg_types: tuple[TileT, ...]) -> TypedFn:
        fn = self.fn
        if len(set(fn.params)) != len(fn.params):
            raise _err(NameError_, f"fn {fn.name} repeats a parameter name", fn)
        for p, t in zip(fn.params, arg_types):
            self.scope[p] = t
        for let in fn.lets:
            if let.name in self.scope:
                raise _err(NameError_, f"'{let.name}' is already defined in fn {fn.name}", let)
            self.scope[let.name] = self.expr(let.value)
            if id(let.value) in self.consts:  # a let bound to a constant is that constant
                self.let_consts[let.name] = self.consts[id(let.value)]
        res = fn.result
        outs = res.items if isinstance(res, TupleExpr) else (res,)
        results = []
        for o in outs:
            t = self.expr(o)
            if is_weak(t.dtype):
                t = TileT("f32" if t.dtype == WEAK_FLOAT else "i32", t.shape)
                self.types[id(o)] = t
            results.append(t)
        return TypedFn(fn, arg_types, tuple(results), self.types, self.consts, self.statics, self.cost,
                       self.uses_pos)

    def expr(self, e: Expr) -> TileT:
        t = self._expr(e)
        if t.numel > MAX_TILE_ELEMS:
            raise _err(SizeError, f"tile {t} is larger than {MAX_TILE_ELEMS} elements", e)
        if len(t.shape) > MAX_RANK:
            raise _err(ShapeError, f"a tile of rank {len(t.shape)}: at most {MAX_RANK} dimensions", e)
        self.types[id(e)] = t
        return t

    def _count(self, kind: str, out: TileT, ins: tuple[TileT, ...] = ()) -> None:
        self.cost.ops += 0 if kind == "free" else 1
        wide = any(t.dtype in ("f32", "i32") for t in (out, *ins))  # a 32-bit op (a compare: its operands)
        if kind == "simd":
            self.cost.simd += out.numel
            self.cost.simd32 += out.numel if wide else 0.0
        elif kind == "tail":
            self.cost.tail += out.numel
        elif kind == "reduce":
            n = ins[0].numel if ins else out.numel
            self.cost.simd += n
            self.cost.simd32 += n if wide else 0.0

    def _fold(self, e: Expr, value) -> TileT:
        if isinstance(value, bool):
            raise _err(TypeError_, "a constant comparison is not allowed", e)
        if isinstance(value, int):
            if abs(value) > 2**62:
                raise _err(ArgumentError, "constant is too large", e)
            self.consts[id(e)] = value
            return TileT(WEAK_INT, ())
        self.consts[id(e)] = float(value)
        return TileT(WEAK_FLOAT, ())

    def _expr(self, e: Expr) -> TileT:
        if isinstance(e, Num):
            return self._fold(e, e.value)
        if isinstance(e, Name):
            if e.id in self.scope:
                if e.id in self.let_consts:
                    self.consts[id(e)] = self.let_consts[e.id]
                return self.scope[e.id]
            if e.id in self.sizes:
                return self._fold(e, self.sizes[e.id])
            if e.id in CONSTANTS:
                return self._fold(e, CONSTANTS[e.id])
            known = sorted(self.scope)
            raise _err(NameError_, f"'{e.id}' is not defined in fn {self.fn.name} "
                                   f"(in scope: {', '.join(known) or 'nothing'}; sizes are usable too)", e)
        if isinstance(e, UnOp):
            t = self.expr(e.operand)
            if id(e.operand) in self.consts:
                v = self.consts[id(e.operand)]
                if e.op == "~":
                    raise _err(TypeError_, "'~' needs a bool tile", e)
                return self._fold(e, -v)
            if e.op == "~":
                if t.dtype != "bool":
                    raise _err(TypeError_, f"'~' needs a bool tile, got {t}", e)
            elif t.dtype == "bool":
                raise _err(TypeError_, "unary '-' on a bool tile", e)
            self._count("simd", t)
            return t
        if isinstance(e, BinOp):
            return self._binop(e)
        if isinstance(e, Call):
            return self._call(e)
        if isinstance(e, (ListExpr, TupleExpr)):
            raise _err(TypeError_, "a list or tuple is not a tile (tuples are only allowed as a fn's result)", e)
        raise _err(TypeError_, "not an expression", e)

    def _binop(self, e: BinOp) -> TileT:
        a = self.expr(e.left)
        b = self.expr(e.right)
        op = e.op
        if op == "@":
            return self._builtin_call(Call("matmul", (e.left, e.right), (), e.span), (a, b), {})
        if id(e.left) in self.consts and id(e.right) in self.consts:
            return self._fold(e, _fold_binop(op, self.consts[id(e.left)], self.consts[id(e.right)], e))
        if op in ("&", "|"):
            if a.dtype != "bool" or b.dtype != "bool":
                raise _err(TypeError_, f"'{op}' needs bool tiles, got {a} and {b}", e)
            dt = "bool"
        else:
            dt = unify_dtype(a.dtype, b.dtype, e, op)
            if dt == "bool" and op in _ARITH:
                raise _err(TypeError_, f"'{op}' on bool tiles; use cast(x, f32)", e)
            if dt == "i32" and op in ("/", "**"):
                raise _err(TypeError_, f"'{op}' on i32 tiles; use cast(x, f32)", e)
            if op in _COMPARE:
                dt = "bool"
        for side, t in ((e.left, a), (e.right, b)):
            v = self.consts.get(id(side))
            if isinstance(v, int) and dt == "i32" and not -2**31 <= v < 2**31:
                raise _err(ArgumentError, f"constant {v} does not fit in i32", side)
        shape = broadcast_shapes(a.shape, b.shape, e)
        out = TileT(dt, shape)
        self._count("tail" if op == "**" else "simd", out, (a, b))
        return out

    def _call(self, e: Call) -> TileT:
        b = BUILTINS.get(e.func)
        if b is None:
            raise _err(NameError_, f"unknown tile function '{e.func}' (builtins: {', '.join(sorted(BUILTINS))})", e)
        if len(e.args) > len(b.tiles) + len(b.static):
            raise _err(ArgumentError, f"{e.func} takes {len(b.tiles)} tile argument(s)"
                       + (f" and {', '.join(n for n, _, _ in b.static)}" if b.static else ""), e)
        tile_args = e.args[:len(b.tiles)]
        if len(tile_args) < len(b.tiles):
            raise _err(ArgumentError, f"{e.func} needs {len(b.tiles)} tile argument(s): "
                                      f"{', '.join(b.tiles)}", e)
        extra = dict(zip((n for n, _, _ in b.static), e.args[len(b.tiles):]))
        for k, v in e.kwargs:
            if k in extra:
                raise _err(ArgumentError, f"{e.func} got '{k}' twice", v)
            extra[k] = v
        ts = tuple(self.expr(a) for a in tile_args)
        return self._builtin_call(e, ts, extra)

    def _builtin_call(self, e: Call, ts: tuple[TileT, ...], extra: dict[str, Expr]) -> TileT:
        b = BUILTINS[e.func]
        st: dict[str, object] = {}
        names = {n for n, _, _ in b.static}
        for k, v in extra.items():
            if k not in names:
                raise _err(ArgumentError, f"{e.func} has no argument '{k}' "
                                          f"(it takes: {', '.join(list(b.tiles) + sorted(names)) or 'nothing'})", v)
        for name, kind, default in b.static:
            if name in extra:
                st[name] = self._static(extra[name], kind, f"{e.func}'s {name}")
            elif default is _REQUIRED:
                raise _err(ArgumentError, f"{e.func} needs {name}=", e)
            else:
                st[name] = default
        if e.func == "pos":
            d = st["dim"]
            if not 0 <= d < self.stream_rank:
                raise _err(ArgumentError, f"pos({d}): the stream has {self.stream_rank} dimension(s)", e)
            if d in self.dynamic_dims:
                raise _err(ArgumentError, f"pos({d}) on a dynamic (routed) dimension", e)
            self.uses_pos = True
        out = b.rule(e, ts, st)
        self.statics[id(e)] = st
        if b.cost in ("simd", "tail") and ts and all(id(a) in self.consts for a in e.args[:len(b.tiles)]) \
                and is_weak(out.dtype):
            vals = [self.consts[id(a)] for a in e.args[:len(b.tiles)]]
            with np.errstate(all="ignore"):
                v = float(np.asarray(b.impl([np.float64(x) for x in vals], st, ts, out), dtype=np.float64))
            if out.dtype == WEAK_INT and math.isfinite(v) and v == int(v):
                v = int(v)  # abs/relu/maximum/minimum of integers stay integers (usable with i32)
            return self._fold(e, v)
        self._count(b.cost, out, ts)
        if b.cost == "mm":
            a_, b_ = ts
            batch = math.prod(out.shape[:-2]) if len(out.shape) > 2 else 1
            flops = 2.0 * batch * a_.shape[-2] * a_.shape[-1] * b_.shape[-1]
            if out.dtype in ("f32", "i32"):
                self.cost.mm32 += flops
            else:
                self.cost.mm += flops
        return out

    def _static(self, e: Expr, kind: str, what: str):
        if kind == "int":
            return eval_int(e, self.sizes, what)
        if kind == "ints":
            vals = eval_int_list(e, self.sizes, what)
            if not vals or any(v <= 0 for v in vals):
                raise _err(SizeError, f"{what} must be a non-empty list of positive sizes", e)
            if math.prod(vals) > MAX_TILE_ELEMS:
                raise _err(SizeError, f"{what} {list(vals)} is larger than {MAX_TILE_ELEMS} elements", e)
            return vals
        if kind == "dtype":
            if not isinstance(e, Name) or e.id not in DTYPES:
                raise _err(ArgumentError, f"{what} must be one of {', '.join(DTYPES)}", e)
            return e.id
        if kind == "number":
            self.expr(e)
            if id(e) not in self.consts:
                raise _err(ArgumentError, f"{what} must be a constant number", e)
            return self.consts[id(e)]
        raise AssertionError(kind)


def _fold_binop(op: str, a, b, node):
    """Evaluate an operator on two compile-time constants (literals and sizes)."""
    try:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return a / b if b != 0 else (math.copysign(math.inf, a) if a != 0 else math.nan)
        if op == "%":
            if b == 0:
                raise _err(ArgumentError, "modulo by zero in a constant expression", node)
            return a % b
        if op == "**":
            if isinstance(a, int) and isinstance(b, int) and b >= 0 and abs(a) > 1 and b * math.log2(abs(a)) > 62:
                raise _err(ArgumentError, "constant is too large", node)
            if not (isinstance(a, float) or isinstance(b, float) or b < 0):
                return a ** b
            if a == 0 and b < 0:  # as numpy: +-inf, not a ZeroDivisionError
                with np.errstate(all="ignore"):
                    return float(np.power(np.float64(a), np.float64(b)))
            v = float(a) ** float(b)
            return math.nan if isinstance(v, complex) else v  # (-8) ** (1/3) is complex in Python
    except OverflowError:
        raise _err(ArgumentError, "constant overflows", node) from None
    except (ValueError, ZeroDivisionError):
        return math.nan
    raise _err(TypeError_, f"'{op}' on two constants is not allowed (constants are numbers)", node)


def check_fn(fn: FnDef, arg_types: tuple[TileT, ...], sizes: dict[str, int], stream_rank: int = 0,
             dynamic_dims: tuple[int, ...] = (), call_span: Span | None = None) -> TypedFn:
    """Type ``fn`` for tiles of ``arg_types``; errors point into the fn's body."""
    if len(arg_types) != len(fn.params):
        raise ArgumentError(f"fn {fn.name} takes {len(fn.params)} argument(s) "
                            f"({', '.join(fn.params)}) but is given {len(arg_types)}", call_span or fn.span)
    return _FnChecker(fn, sizes, stream_rank, dynamic_dims).run(arg_types)


# ---------------------------------------------------------------- evaluation

class _Eval:
    def __init__(self, tf: TypedFn, pos: Callable[[int], np.ndarray] | None):
        self.tf = tf
        self.pos = pos
        self.env: dict[str, object] = {}

    def run(self, args: list) -> tuple:
        tf = self.tf
        for p, a in zip(tf.fn.params, args):
            self.env[p] = a
        for let in tf.fn.lets:
            self.env[let.name] = self.expr(let.value)
        res = tf.fn.result
        outs = res.items if isinstance(res, TupleExpr) else (res,)
        values = []
        for o, t in zip(outs, tf.results):
            v = self.expr(o)
            values.append(round_to(t.dtype, v))
        return tuple(values)

    def rank(self, e: Expr) -> int:
        return len(self.tf.types[id(e)].shape)

    def expr(self, e: Expr):
        c = self.tf.consts.get(id(e))
        if c is not None:
            return c
        t = self.tf.types[id(e)]
        v = self._expr(e, t)  # floating-point errors are ignored once, around the whole fn (eval_fn)
        return round_to(t.dtype, v) if t.dtype in FLOAT_DTYPES or t.dtype in ("i32", "bool") else v

    def _expr(self, e: Expr, t: TileT):
        if isinstance(e, Name):
            return self.env[e.id]
        if isinstance(e, UnOp):
            x = self.expr(e.operand)
            return np.logical_not(x) if e.op == "~" else np.negative(x)
        if isinstance(e, BinOp):
            if e.op == "@":
                return _matmul_impl([self.expr(e.left), self.expr(e.right)], {},
                                    (self.tf.types[id(e.left)], self.tf.types[id(e.right)]), t)
            r = len(t.shape)
            a = _align(self.expr(e.left), self.rank(e.left), r)
            b = _align(self.expr(e.right), self.rank(e.right), r)
            return _apply_binop(e.op, a, b)
        if isinstance(e, Call):
            b = BUILTINS[e.func]
            st = self.tf.statics[id(e)]
            if e.func == "pos":
                return self.pos(st["dim"])
            args = [self.expr(a) for a in e.args[:len(b.tiles)]]
            types = tuple(self.tf.types[id(a)] for a in e.args[:len(b.tiles)])
            if b.cost in ("simd", "tail") and len(args) > 1:
                r = len(t.shape)
                args = [_align(a, len(ty.shape), r) for a, ty in zip(args, types)]
            out = b.impl(args, st, types, t)
            if e.func == "cast" and t.dtype != "i32":
                return out
            return out
        raise AssertionError(e)


def _apply_binop(op: str, a, b):
    if op == "+":
        return np.add(a, b)
    if op == "-":
        return np.subtract(a, b)
    if op == "*":
        return np.multiply(a, b)
    if op == "/":
        return np.true_divide(a, b)
    if op == "%":
        return np.remainder(a, b)
    if op == "**":
        return np.power(a, b)
    if op == "&":
        return np.logical_and(a, b)
    if op == "|":
        return np.logical_or(a, b)
    return {"==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal,
            ">": np.greater, ">=": np.greater_equal}[op](a, b)


def eval_fn(tf: TypedFn, args: list, pos: Callable[[int], np.ndarray] | None = None) -> tuple:
    """Run a checked tile function on arrays with leading stream axes; returns one array per result."""
    with np.errstate(all="ignore"):
        return _Eval(tf, pos).run(args)
