"""Tile functions: the closed expression language of what one compute unit does to a tile.

Each builtin has three facets registered side by side (:mod:`asp_lang.tile_builtins`): its
type/shape rule, its numpy semantics and its cost class. ``check_fn`` types a function for
given argument tiles (once per call site) and ``eval_fn`` runs it over whole streams at once: every argument
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
from .tile_builtins import (ARITH_OPS, BUILTINS, COMPARE_OPS, CONSTANTS, MAX_TILE_ELEMS, REQUIRED, align_batch,
                            broadcast_shapes, matmul_impl, tile_error, unify_dtype)
from .types import DTYPES, FLOAT_DTYPES, WEAK_FLOAT, WEAK_INT, TileT, is_weak, round_to


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
            raise tile_error(NameError_, f"fn {fn.name} repeats a parameter name", fn)
        for p, t in zip(fn.params, arg_types):
            self.scope[p] = t
        for let in fn.lets:
            if let.name in self.scope:
                raise tile_error(NameError_, f"'{let.name}' is already defined in fn {fn.name}", let)
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
            raise tile_error(SizeError, f"tile {t} is larger than {MAX_TILE_ELEMS} elements", e)
        if len(t.shape) > MAX_RANK:
            raise tile_error(ShapeError, f"a tile of rank {len(t.shape)}: at most {MAX_RANK} dimensions", e)
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
            raise tile_error(TypeError_, "a constant comparison is not allowed", e)
        if isinstance(value, int):
            if abs(value) > 2**62:
                raise tile_error(ArgumentError, "constant is too large", e)
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
            raise tile_error(NameError_, f"'{e.id}' is not defined in fn {self.fn.name} "
                                   f"(in scope: {', '.join(known) or 'nothing'}; sizes are usable too)", e)
        if isinstance(e, UnOp):
            t = self.expr(e.operand)
            if id(e.operand) in self.consts:
                v = self.consts[id(e.operand)]
                if e.op == "~":
                    raise tile_error(TypeError_, "'~' needs a bool tile", e)
                return self._fold(e, -v)
            if e.op == "~":
                if t.dtype != "bool":
                    raise tile_error(TypeError_, f"'~' needs a bool tile, got {t}", e)
            elif t.dtype == "bool":
                raise tile_error(TypeError_, "unary '-' on a bool tile", e)
            self._count("simd", t)
            return t
        if isinstance(e, BinOp):
            return self._binop(e)
        if isinstance(e, Call):
            return self._call(e)
        if isinstance(e, (ListExpr, TupleExpr)):
            raise tile_error(TypeError_, "a list or tuple is not a tile (tuples are only allowed as a fn's result)", e)
        raise tile_error(TypeError_, "not an expression", e)

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
                raise tile_error(TypeError_, f"'{op}' needs bool tiles, got {a} and {b}", e)
            dt = "bool"
        else:
            dt = unify_dtype(a.dtype, b.dtype, e, op)
            if dt == "bool" and op in ARITH_OPS:
                raise tile_error(TypeError_, f"'{op}' on bool tiles; use cast(x, f32)", e)
            if dt == "i32" and op in ("/", "**"):
                raise tile_error(TypeError_, f"'{op}' on i32 tiles; use cast(x, f32)", e)
            if op in COMPARE_OPS:
                dt = "bool"
        for side, t in ((e.left, a), (e.right, b)):
            v = self.consts.get(id(side))
            if isinstance(v, int) and dt == "i32" and not -2**31 <= v < 2**31:
                raise tile_error(ArgumentError, f"constant {v} does not fit in i32", side)
        shape = broadcast_shapes(a.shape, b.shape, e)
        out = TileT(dt, shape)
        self._count("tail" if op == "**" else "simd", out, (a, b))
        return out

    def _call(self, e: Call) -> TileT:
        b = BUILTINS.get(e.func)
        if b is None:
            raise tile_error(NameError_, f"unknown tile function '{e.func}' (builtins: {', '.join(sorted(BUILTINS))})", e)
        if len(e.args) > len(b.tiles) + len(b.static):
            raise tile_error(ArgumentError, f"{e.func} takes {len(b.tiles)} tile argument(s)"
                       + (f" and {', '.join(n for n, _, _ in b.static)}" if b.static else ""), e)
        tile_args = e.args[:len(b.tiles)]
        if len(tile_args) < len(b.tiles):
            raise tile_error(ArgumentError, f"{e.func} needs {len(b.tiles)} tile argument(s): "
                                      f"{', '.join(b.tiles)}", e)
        extra = dict(zip((n for n, _, _ in b.static), e.args[len(b.tiles):]))
        for k, v in e.kwargs:
            if k in extra:
                raise tile_error(ArgumentError, f"{e.func} got '{k}' twice", v)
            extra[k] = v
        ts = tuple(self.expr(a) for a in tile_args)
        return self._builtin_call(e, ts, extra)

    def _builtin_call(self, e: Call, ts: tuple[TileT, ...], extra: dict[str, Expr]) -> TileT:
        b = BUILTINS[e.func]
        st: dict[str, object] = {}
        names = {n for n, _, _ in b.static}
        for k, v in extra.items():
            if k not in names:
                raise tile_error(ArgumentError, f"{e.func} has no argument '{k}' "
                                          f"(it takes: {', '.join(list(b.tiles) + sorted(names)) or 'nothing'})", v)
        for name, kind, default in b.static:
            if name in extra:
                st[name] = self._static(extra[name], kind, f"{e.func}'s {name}")
            elif default is REQUIRED:
                raise tile_error(ArgumentError, f"{e.func} needs {name}=", e)
            else:
                st[name] = default
        if e.func == "pos":
            d = st["dim"]
            if not 0 <= d < self.stream_rank:
                raise tile_error(ArgumentError, f"pos({d}): the stream has {self.stream_rank} dimension(s)", e)
            if d in self.dynamic_dims:
                raise tile_error(ArgumentError, f"pos({d}) on a dynamic (routed) dimension", e)
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
                raise tile_error(SizeError, f"{what} must be a non-empty list of positive sizes", e)
            if math.prod(vals) > MAX_TILE_ELEMS:
                raise tile_error(SizeError, f"{what} {list(vals)} is larger than {MAX_TILE_ELEMS} elements", e)
            return vals
        if kind == "dtype":
            if not isinstance(e, Name) or e.id not in DTYPES:
                raise tile_error(ArgumentError, f"{what} must be one of {', '.join(DTYPES)}", e)
            return e.id
        if kind == "number":
            self.expr(e)
            if id(e) not in self.consts:
                raise tile_error(ArgumentError, f"{what} must be a constant number", e)
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
                raise tile_error(ArgumentError, "modulo by zero in a constant expression", node)
            return a % b
        if op == "**":
            if isinstance(a, int) and isinstance(b, int) and b >= 0 and abs(a) > 1 and b * math.log2(abs(a)) > 62:
                raise tile_error(ArgumentError, "constant is too large", node)
            if not (isinstance(a, float) or isinstance(b, float) or b < 0):
                return a ** b
            if a == 0 and b < 0:  # as numpy: +-inf, not a ZeroDivisionError
                with np.errstate(all="ignore"):
                    return float(np.power(np.float64(a), np.float64(b)))
            v = float(a) ** float(b)
            return math.nan if isinstance(v, complex) else v  # (-8) ** (1/3) is complex in Python
    except OverflowError:
        raise tile_error(ArgumentError, "constant overflows", node) from None
    except (ValueError, ZeroDivisionError):
        return math.nan
    raise tile_error(TypeError_, f"'{op}' on two constants is not allowed (constants are numbers)", node)


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
                return matmul_impl([self.expr(e.left), self.expr(e.right)], {},
                                    (self.tf.types[id(e.left)], self.tf.types[id(e.right)]), t)
            r = len(t.shape)
            a = align_batch(self.expr(e.left), self.rank(e.left), r)
            b = align_batch(self.expr(e.right), self.rank(e.right), r)
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
                args = [align_batch(a, len(ty.shape), r) for a, ty in zip(args, types)]
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
