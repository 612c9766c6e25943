"""Lowering one ATen op to one ASP kernel: the op-by-op baseline's code generator.

Every supported op becomes a small, readable ASP kernel at concrete sizes whose parameters
and results are the op's operands and results *viewed* as contiguous tensors of a convenient
shape (a reshape of HBM data costs nothing). Ops that only relabel memory (view, unsqueeze,
clone...) become aliases, ops with no data inputs (full, arange...) are constants computed
ahead of time, and anything else is refused with ``not supported: aten.X`` rather than
lowered wrongly.

One module although it is over 1,000 lines: it is one table from op to kernel (elementwise with
broadcasting, reductions and row ops, softmax and norms, matmuls, structural ops, gather/scatter,
topk), every entry written with the same :class:`KernelBuilder`, tiling helpers and literal
formatting (``asp_list``, ``asp_literal``, ``cast_expr``), which the author's templates also use.
Splitting it by op family would scatter those shared helpers without separating two jobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import asp_lang

from .capture import AtenGraph, AtenNode, Ref, TensorSpec
from .errors import AgentforgeError

TILE_CAP = 1 << 14        # elements in a streamed tile (64 KiB of f32)
ROW_CAP = 1 << 16         # longest row held whole in one tile
BLOCK_CAP = 1 << 22       # elements of a whole-block tile for structural ops (cat, slice, gather...)
MM_TILE = 128
MM_BLOCK_M, MM_BLOCK_N = 256, 512   # the baseline's matmul output block (lower_matmul)

ASP_DTYPE = {"f32": "f32", "bf16": "bf16", "f16": "f16", "i64": "i32", "i32": "i32", "bool": "bool"}


class UnsupportedOpError(AgentforgeError):
    """The baseline cannot lower this op (or this use of it): never a wrong kernel."""


@dataclass
class OpKernel:
    """One ASP kernel computing one ATen node; operands and results bound by graph name."""
    node: str
    target: str
    source: str
    inputs: list[str]
    input_views: list[tuple[int, ...]]
    outputs: list[str]
    output_views: list[tuple[int, ...]]
    #: the lowering's kernel with its parallelism slots (None: a fused kernel, whose par its plan sets)
    layout: "KernelText | None" = field(default=None, repr=False, compare=False)

    def with_par(self, compute: int, memory: int) -> str:
        """This kernel's text at another parallelism (see :meth:`KernelText.render`)."""
        if self.layout is None:
            raise ValueError(f"kernel for {self.node} ({self.target}) has no parallelism slots to set")
        return self.layout.render(compute, memory)


@dataclass
class Alias:
    """A result that is an operand's memory relabelled (same data, new shape)."""
    node: str
    target: str
    source: str
    output: str


@dataclass
class Const:
    """A result that depends on no input data: computed once, ahead of time, kept in HBM."""
    node: str
    target: str


Step = OpKernel | Alias | Const

ALIAS_KINDS = {"view", "_unsafe_view", "unsqueeze", "squeeze", "reshape", "clone", "alias", "detach",
               "contiguous", "lift_fresh_copy", "_reshape_alias", "flatten"}
CONST_TARGETS = {"full", "zeros", "ones", "arange", "scalar_tensor", "full_like", "zeros_like",
                 "ones_like", "empty", "empty_like", "new_zeros", "new_ones", "new_full", "empty_strided"}


def asp_dtype(spec: TensorSpec) -> str:
    """The ASP element type of a captured tensor (f32, bf16, i32, ...); unsupported dtypes are refused."""
    dt = ASP_DTYPE.get(spec.dtype)
    if dt is None:
        raise UnsupportedOpError(f"not supported: tensors of dtype {spec.dtype} ('{spec.name}')")
    return dt


def divisor_at_most(n: int, cap: int) -> int:
    """The largest divisor of n that is <= cap (tiles must divide the dimension)."""
    if n <= cap:
        return n
    best = 1
    i = 1
    while i * i <= n:
        if n % i == 0:
            if i <= cap:
                best = max(best, i)
            if n // i <= cap:
                best = max(best, n // i)
        i += 1
    return best


def asp_literal(v: Any) -> str:
    """A Python scalar as ASP source: bools as 1/0, ints as written, floats by repr (nan, inf; negatives
    parenthesised so they can follow an operator)."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    f = float(v)
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    r = repr(f)
    return f"({r})" if f < 0 else r


#: the most PCUs the other compute operators of a matmul kernel (a bias add, a cast) get when the
#: kernel is rendered at a larger ``compute`` (see :meth:`KernelText.render`)
PAR_BESIDE_MATMUL = 64


@dataclass(frozen=True)
class KernelText:
    """A lowered kernel's text with its parallelism kept apart: which operators are memory
    operators (loads, stores) and which compute (maps, accums), so the same kernel is rendered at
    other ``par`` values (the baseline picks each kernel's fastest, a plan's one-op region sets its
    own) without editing ASP text."""
    name: str
    head: str                          # the comment and the kernel line
    fns: tuple[str, ...]               # fn definitions (and sizes lines), as written
    mm_fns: frozenset[str]             # the fns that compute a matmul
    body: tuple[str, ...]              # body lines at their default parallelism
    slots: tuple[tuple[int, str, str, bool, int], ...]   # (body line, text before its par, memory?, mm?, default)

    def render(self, compute: int | None = None, memory: int | None = None) -> str:
        """The kernel in canonical form (what `asp fmt` prints) with every memory operator at
        ``memory`` and every compute operator at ``compute`` (None: as lowered). In a kernel with
        a matmul, ``compute`` is the matmul operator's and the others (a bias add, a cast) get at
        most :data:`PAR_BESIDE_MATMUL`: a GEMM reaches its roofline only with most of the chip's
        PCUs on the systolic work (960 of sn40l's 1040), which it could not have if every
        operator of the kernel took as many."""
        body = list(self.body)
        for i, before, is_memory, mm, default in self.slots:
            if is_memory:
                par = default if memory is None else memory
            elif compute is None:
                par = default
            else:
                par = compute if not self.mm_fns or mm else min(compute, PAR_BESIDE_MATMUL)
            body[i] = f"{before}, par={par})"
        text = "\n".join([self.head, *self.fns, *body, "}"]) + "\n"
        return asp_lang.format_kernel(asp_lang.parse(text, f"{self.name}.asp"))


class KernelBuilder:
    """Assembles the text of one ASP kernel."""

    def __init__(self, name: str):
        self.name = name
        self.params: list[str] = []
        self.results: list[str] = []
        self.fns: list[str] = []
        self.body: list[str] = []
        self.n = 0
        self._fn_text: dict[str, str] = {}
        self._slots: dict[int, tuple[str, str, int]] = {}   # body line -> (text before par, operator, default)
        self._layout: KernelText | None = None

    def fresh(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def param(self, dtype: str, shape: tuple[int, ...]) -> str:
        name = f"in{len(self.params)}"
        self.params.append(f"{name}: {dtype}[{', '.join(map(str, shape))}]")
        return name

    def result(self, dtype: str, shape: tuple[int, ...]) -> str:
        name = f"out{len(self.results)}"
        self.results.append(f"{name}: {dtype}[{', '.join(map(str, shape))}]")
        return name

    def fn(self, params: list[str], result: str, lets: list[tuple[str, str]] = ()) -> str:
        name = f"f{len(self.fns)}"
        if not lets:
            self.fns.append(f"  fn {name}({', '.join(params)}) = {result}")
        else:
            body = "\n".join(f"    let {k} = {v}" for k, v in lets)
            self.fns.append(f"  fn {name}({', '.join(params)}) {{\n{body}\n    return {result}\n  }}")
        self._fn_text[name] = self.fns[-1]
        return name

    def op(self, call: str, n_out: int = 1, base: str = "s", par: int | None = None) -> list[str]:
        """``targets = call``; with ``par``, the operator's parallelism (a slot :meth:`layout` keeps)."""
        targets = [self.fresh(base) for _ in range(n_out)]
        self._line(f"  {', '.join(targets)} = ", call, par)
        return targets

    def do(self, call: str, par: int | None = None) -> None:
        self._line("  ", call, par)

    def _line(self, lead: str, call: str, par: int | None) -> None:
        if par is None:
            self.body.append(lead + call)
            return
        if not call.endswith(")"):
            raise ValueError(f"an operator with a par slot must be a call: {call!r}")
        before = lead + call[:-1]
        self._slots[len(self.body)] = (before, call.split("(", 1)[0], par)
        self.body.append(f"{before}, par={par})")

    def layout(self, comment: str) -> KernelText:
        """The kernel with its parallelism slots (see :class:`KernelText`)."""
        head = f"# {comment}\nkernel {self.name}({', '.join(self.params)}) -> ({', '.join(self.results)}) {{"
        mm_fns = frozenset(name for name, text in self._fn_text.items() if "matmul(" in text)
        slots = tuple((i, before, operator in ("load", "store"),
                       any(f"fn={f}," in before + ")" or f"fn={f})" in before + ")" for f in mm_fns), default)
                      for i, (before, operator, default) in sorted(self._slots.items()))
        return KernelText(self.name, head, tuple(self.fns), mm_fns, tuple(self.body), slots)

    def text(self, comment: str) -> str:
        """The kernel in canonical form (what `asp fmt` prints), so generated files diff cleanly."""
        lines = [f"# {comment}", f"kernel {self.name}({', '.join(self.params)}) -> ({', '.join(self.results)}) {{"]
        lines += self.fns + self.body + ["}"]
        return asp_lang.format_kernel(asp_lang.parse("\n".join(lines) + "\n", f"{self.name}.asp"))


def asp_list(xs) -> str:
    """A list literal in ASP source (tile shapes, axis orders): ``[a, b, c]``."""
    return "[" + ", ".join(map(str, xs)) + "]"


# ------------------------------------------------------------------ elementwise with broadcasting

@dataclass
class _Operand:
    kind: str                 # "tensor" | "scalar"
    value: Any                # graph name or python number
    spec: TensorSpec | None = None


def _row_tiling(shape: tuple[int, ...], cap: int = TILE_CAP) -> tuple[int, int]:
    q = divisor_at_most(shape[-1], cap)
    if len(shape) < 2:
        return 1, q
    r = divisor_at_most(shape[-2], max(1, cap // q))
    return r, q


def merge_dims(shape: tuple[int, ...], operands: list[tuple[int, ...]]) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """The coarsest view of an elementwise op: adjacent output axes merge where every operand
    either covers both whole or broadcasts over both (a reshape of contiguous HBM data costs
    nothing). ``[4096, 2, 8] == [1, 1, 8]`` becomes ``[8192, 8] == [1, 8]``, so it streams a few
    large tiles instead of 4096 tiles of 16 elements."""
    k = len(shape)
    ops = [(1,) * (k - len(p)) + tuple(p) for p in operands]
    # size-1 output axes go first: such an axis is both "covered whole" and "broadcast" by every
    # operand, so it would otherwise join a broadcast run to a whole run ([B, H, 1, D] * [1, D]
    # merged into one axis that the [1, D] table does not cover: a decode step's q * cos)
    live = [a for a in range(k) if shape[a] != 1] or [k - 1]
    shape = tuple(shape[a] for a in live)
    ops = [tuple(p[a] for a in live) for p in ops]
    k = len(shape)
    groups: list[list[int]] = []
    for a in range(k):
        if groups:
            b = groups[-1][-1]
            if all((p[a] == shape[a] and p[b] == shape[b]) or (p[a] == 1 and p[b] == 1) for p in ops):
                groups[-1].append(a)
                continue
        groups.append([a])
    new_shape = tuple(math.prod(shape[a] for a in g) for g in groups)
    new_ops = [tuple(math.prod(p[a] for a in g) for g in groups) for p in ops]
    return new_shape, new_ops


def elementwise_kernel(name: str, out: TensorSpec, operands: list[_Operand],
                       expr: Callable[[list[str]], "str | tuple[list[tuple[str, str]], str]"],
                       out_dtype: str | None = None, comment: str = "") -> tuple[str, list, list, KernelText]:
    """A kernel computing ``expr`` elementwise over broadcast operands into ``out``'s shape
    (``expr`` may give ``(lets, result)``: named intermediate tiles, for a many-step formula).

    An operand smaller than the output is re-read from HBM once per position it broadcasts
    over, except the largest such operand and any broadcast over the same axes: the traversal
    puts those axes innermost, so each of their tiles is read once and repeated on chip
    (`repeat`) while the others stream past (a competent kernel does not re-read a RoPE table
    once per head, nor batch norm's four per-channel vectors once per row block)."""
    shape = out.shape or (1,)
    k = len(shape)
    kb = KernelBuilder(name)
    tr, tq = _row_tiling(shape)
    out_tile = [1] * (k - 2) + [tr, tq] if k >= 2 else [tq]
    kept = [a for a in range(k) if out_tile[a] != shape[a]]
    grid = {a: shape[a] // out_tile[a] for a in kept}

    def padded(op: _Operand) -> tuple[int, ...]:
        return (1,) * (k - len(op.spec.shape)) + tuple(op.spec.shape) if op.spec.shape else (1,) * k

    def bcast_axes(op: _Operand) -> list[int]:
        p = padded(op)
        return [a for a in kept if p[a] != shape[a]]

    tensors = [op for op in operands if op.kind == "tensor"]
    held = max((op for op in tensors if bcast_axes(op)), key=lambda op: op.spec.numel, default=None)
    inner = bcast_axes(held) if held is not None else []
    # every operand broadcast over exactly those axes is read once too (batch norm's four
    # per-channel vectors), not only the largest
    holds = [id(op) for op in tensors if inner and bcast_axes(op) == inner]
    trav = [a for a in kept if a not in inner] + inner
    streams, args, inputs, views = [], [], [], []
    for op in operands:
        if op.kind == "scalar":
            args.append(asp_literal(op.value))
            continue
        spec = op.spec
        p = padded(op)
        pname = kb.param(asp_dtype(spec), p)
        inputs.append(op.value)
        views.append(p)
        tile = [out_tile[a] if p[a] == shape[a] else 1 for a in range(k)]
        own_kept = [a for a in range(k) if tile[a] != p[a]]
        call = f"load({pname}, tile={asp_list(tile)}"
        order = [own_kept.index(a) for a in trav if a in own_kept]
        if order != sorted(order):
            call += f", order={asp_list(order)}"
        if id(op) in holds:
            (s,) = kb.op(call + ")", par=4)
            for a in inner:
                (s,) = kb.op(f"repeat({s}, {grid[a]})")
        else:
            repeats, ats = [], []
            for j, a in enumerate(trav):
                if a not in own_kept:
                    repeats.append(grid[a])
                    ats.append(j)
            if repeats:
                call += f", repeat={asp_list(repeats)}, at={asp_list(ats)}"
            (s,) = kb.op(call + ")", par=4)
        streams.append(s)
        args.append(f"x{len(streams) - 1}")
    params = [f"x{i}" for i in range(len(streams))]
    body = expr(args)
    lets: list[tuple[str, str]] = []
    if isinstance(body, tuple):   # (lets, result): an expression with named intermediate tiles
        lets, body = body
    elem = [tr, tq] if k >= 2 else [tq]
    if any(_bcast_operand(op, shape) for op in operands):
        body = f"broadcast({body}, {asp_list(elem)})"
    odt = out_dtype or asp_dtype(out)
    fname = kb.fn(params, body, lets)
    if not streams:
        raise UnsupportedOpError(f"not supported: {name} with only scalar operands")
    (res,) = kb.op(f"map({', '.join(streams)}, fn={fname})", par=8)
    oname = kb.result(odt, shape)
    store_order = [kept.index(a) for a in trav]
    kb.do(f"store({oname}, {res}" + (f", order={asp_list(store_order)}" if trav != kept else "") + ")", par=4)
    return kb.text(comment), inputs, views, kb.layout(comment)


def _bcast_operand(op: "_Operand", shape: tuple[int, ...]) -> bool:
    """Whether an operand's tile is smaller than the output's (so the result must be broadcast)."""
    if op.kind == "scalar":
        return True
    p = tuple(op.spec.shape)
    p = (1,) * (len(shape) - len(p)) + p
    return p[-2:] != tuple(shape[-2:])


# ------------------------------------------------------------------ op table

def _scalar_or_tensor(graph: AtenGraph, v) -> _Operand:
    if isinstance(v, Ref):
        return _Operand("tensor", v.name, graph.spec(v))
    if isinstance(v, (int, float, bool)):
        return _Operand("scalar", v)
    raise UnsupportedOpError(f"not supported: operand {v!r}")


def _float_compute(dt: str) -> bool:
    return dt in ("bf16", "f16")


_UNARY = {
    "neg": "-{0}", "exp": "exp({0})", "log": "log({0})", "sqrt": "sqrt({0})", "rsqrt": "rsqrt({0})",
    "tanh": "tanh({0})", "sigmoid": "sigmoid({0})", "relu": "relu({0})", "abs": "abs({0})",
    "sin": "sin({0})", "cos": "cos({0})", "erf": "erf({0})", "log1p": "log(1.0 + {0})",
    "expm1": "exp({0}) - 1.0", "reciprocal": "1.0 / {0}", "silu": "{0} * sigmoid({0})",
    "logical_not": "~{0}", "floor": "floor({0})", "square": "{0} * {0}",
}
_BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/", "eq": "==", "ne": "!=", "lt": "<", "le": "<=",
           "gt": ">", "ge": ">=", "logical_and": "&", "logical_or": "|", "bitwise_and": "&", "bitwise_or": "|",
           "maximum": "maximum", "minimum": "minimum", "pow": "**", "remainder": "%", "fmod": "%"}
#: float classification: a bool per element (NaN is the one value unequal to itself)
_FLOAT_CLASS = {"isnan": "{0} != {0}", "isinf": "abs({0}) == inf", "isfinite": "abs({0}) < inf"}
_COMPARE = {"eq", "ne", "lt", "le", "gt", "ge"}
_LOGICAL = {"logical_and", "logical_or", "bitwise_and", "bitwise_or", "logical_not"}


def _gelu(x: str, approximate: str) -> str:
    if approximate == "tanh":
        return f"0.5 * {x} * (1.0 + tanh(0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x})))"
    return f"0.5 * {x} * (1.0 + erf({x} * 0.7071067811865476))"


def lower_elementwise(node: AtenNode, graph: AtenGraph, kind: str) -> OpKernel:
    ops, expr, odt = elementwise_parts(node, graph, kind)
    return _elementwise_op_kernel(node, ops, expr, odt)


def _elementwise_op_kernel(node: AtenNode, ops: list["_Operand"], expr: Callable, odt: str) -> OpKernel:
    """One elementwise map computing ``node`` from ``ops`` (dims merged where every operand allows)."""
    out = node.outs[0]
    tensors = [o for o in ops if o.kind == "tensor"]
    shape, views = merge_dims(out.shape or (1,), [o.spec.shape for o in tensors])
    merged = [_Operand(o.kind, o.value, TensorSpec(o.spec.name, v, o.spec.dtype)) if o.kind == "tensor" else o
              for o, v in zip(ops, _interleave(ops, views))]
    src, inputs, views, layout = elementwise_kernel(kernel_name(node), TensorSpec(out.name, shape, out.dtype), merged,
                                                    expr, odt, comment=f"{node.target} ({node.name})")
    return OpKernel(node.name, node.target, src, inputs, views, [out.name], [shape], layout=layout)


def lower_repeat(node: AtenNode, graph: AtenGraph) -> OpKernel:
    """x.repeat(r0, r1, ...): the output viewed as [r0, x0, r1, x1, ...] is x viewed as
    [1, x0, 1, x1, ...] broadcast, one elementwise copy (the broadcast axes merged, x held on chip
    where it repeats innermost: InstanceNorm's weight.repeat(N) reads the weight once)."""
    x, reps = graph.spec(node.args[0]), [int(r) for r in node.args[1]]
    out = node.outs[0]
    xs = (1,) * (len(reps) - len(x.shape)) + tuple(x.shape)
    shape, (view,) = merge_dims(tuple(v for r, n in zip(reps, xs) for v in (r, n)), [tuple(v for n in xs for v in (1, n))])
    op = _Operand("tensor", x.name, TensorSpec(x.name, view, x.dtype))
    comment = f"{node.target} ({node.name})"
    src, inputs, views, layout = elementwise_kernel(kernel_name(node), TensorSpec(out.name, shape, out.dtype), [op],
                                                    lambda a: a[0], asp_dtype(out), comment=comment)
    return OpKernel(node.name, node.target, src, inputs, views, [out.name], [shape], layout=layout)


def _interleave(ops: list["_Operand"], views: list[tuple[int, ...]]) -> list:
    """``views`` (one per tensor operand) aligned with ``ops`` (scalars get None)."""
    it = iter(views)
    return [next(it) if o.kind == "tensor" else None for o in ops]


def elementwise_parts(node: AtenNode, graph: AtenGraph, kind: str):
    """The operands of an elementwise node and a function from their tile expressions to the
    node's tile expression (shared by the op-by-op lowering and the fusing author)."""
    out = node.outs[0]
    odt = asp_dtype(out)
    a = node.args
    kw = node.kwargs
    ops: list[_Operand] = []
    # compute in f32 for 16-bit results, rounding once at the end (as PyTorch's opmath does)
    cdt = "f32" if _float_compute(odt) else odt

    def conv(o: _Operand, i: int, x: str, want: str) -> str:
        if o.kind == "scalar":
            return x
        have = asp_dtype(o.spec)
        return x if have == want else f"cast({x}, {want})"

    if kind in _UNARY:
        ops = [_scalar_or_tensor(graph, a[0])]
        tmpl = _UNARY[kind]

        def expr(xs):
            want = "bool" if kind in _LOGICAL else cdt
            return cast_expr(tmpl.format(_paren(conv(ops[0], 0, xs[0], want))), cdt, odt)
    elif kind in _FLOAT_CLASS:
        ops = [_scalar_or_tensor(graph, a[0])]

        def expr(xs):
            x = _paren(conv(ops[0], 0, xs[0], "f32" if asp_dtype(ops[0].spec) in ("i32", "bool") else asp_dtype(ops[0].spec)))
            return _FLOAT_CLASS[kind].format(x)
    elif kind in ("gelu",):
        ops = [_scalar_or_tensor(graph, a[0])]
        approx = kw.get("approximate", a[1] if len(a) > 1 else "none")

        def expr(xs):
            return cast_expr(_gelu(_paren(conv(ops[0], 0, xs[0], cdt)), approx), cdt, odt)
    elif kind == "elu":
        ops = [_scalar_or_tensor(graph, a[0])]
        alpha = a[1] if len(a) > 1 else kw.get("alpha", 1.0)
        scale = a[2] if len(a) > 2 else kw.get("scale", 1.0)
        iscale = a[3] if len(a) > 3 else kw.get("input_scale", 1.0)

        def expr(xs):
            x = _paren(conv(ops[0], 0, xs[0], cdt))
            return cast_expr(f"{asp_literal(scale)} * where({x} > 0.0, {x}, {asp_literal(alpha)} * (exp({x} * {asp_literal(iscale)}) - 1.0))",
                        cdt, odt)
    elif kind == "leaky_relu":
        ops = [_scalar_or_tensor(graph, a[0])]
        slope = a[1] if len(a) > 1 else kw.get("negative_slope", 0.01)

        def expr(xs):
            x = _paren(conv(ops[0], 0, xs[0], cdt))
            return cast_expr(f"where({x} > 0.0, {x}, {x} * {asp_literal(slope)})", cdt, odt)
    elif kind in ("clamp", "hardtanh"):
        ops = [_scalar_or_tensor(graph, a[0])]
        lo = a[1] if len(a) > 1 else kw.get("min", kw.get("min_val"))
        hi = a[2] if len(a) > 2 else kw.get("max", kw.get("max_val"))
        if kind == "hardtanh":
            lo = -1.0 if lo is None else lo
            hi = 1.0 if hi is None else hi

        def expr(xs):
            x = conv(ops[0], 0, xs[0], cdt)
            if lo is not None:
                x = f"maximum({x}, {asp_literal(lo)})"
            if hi is not None:
                x = f"minimum({x}, {asp_literal(hi)})"
            return cast_expr(x, cdt, odt)
    elif kind in _BINARY:
        ops = [_scalar_or_tensor(graph, a[0]), _scalar_or_tensor(graph, a[1])]
        alpha = kw.get("alpha", a[2] if len(a) > 2 and kind in ("add", "sub") else None)
        if kind == "div" and kw.get("rounding_mode") not in (None,):
            raise UnsupportedOpError(f"not supported: {node.target} with rounding_mode={kw.get('rounding_mode')}")
        sym = _BINARY[kind]
        if odt == "bool" and kind in ("mul", "add", "maximum", "minimum"):
            sym = {"mul": "&", "add": "|", "maximum": "|", "minimum": "&"}[kind]   # bool arithmetic is logic
        if kind in _COMPARE:
            specs = [o.spec for o in ops if o.kind == "tensor"]
            dts = {asp_dtype(s) for s in specs}
            want = "f32" if any(d in ("f32", "bf16", "f16") for d in dts) and len(dts) > 1 else next(iter(dts))
            if any(o.kind == "scalar" and isinstance(o.value, float) for o in ops) and want == "i32":
                want = "f32"
        elif kind in _LOGICAL:
            want = "bool"
        else:
            want = cdt

        def expr(xs):
            x0 = conv(ops[0], 0, xs[0], want)
            x1 = conv(ops[1], 1, xs[1], want)
            if ops[0].kind == "scalar" and isinstance(ops[0].value, bool) and want != "bool":
                x0 = asp_literal(int(ops[0].value))
            if ops[1].kind == "scalar" and isinstance(ops[1].value, bool) and want != "bool":
                x1 = asp_literal(int(ops[1].value))
            if want == "i32" and kind == "div":
                x0, x1 = f"cast({x0}, f32)", f"cast({x1}, f32)"
            if alpha is not None and alpha != 1:
                x1 = f"{_paren(x1)} * {asp_literal(alpha)}"
            if sym in ("maximum", "minimum"):
                e = f"{sym}({x0}, {x1})"
            elif kind == "pow" and ops[1].kind == "scalar" and ops[1].value == 2:
                e = f"{_paren(x0)} * {_paren(x0)}"
            elif kind == "pow" and ops[1].kind == "scalar" and ops[1].value == 0.5:
                e = f"sqrt({x0})"
            else:
                e = f"{_paren(x0)} {sym} {_paren(x1)}"
            if kind in _COMPARE or kind in _LOGICAL:
                return e
            return cast_expr(e, want if not (want == "i32" and kind == "div") else "f32", odt)
    elif kind == "where":
        ops = [_scalar_or_tensor(graph, a[0]), _scalar_or_tensor(graph, a[1]), _scalar_or_tensor(graph, a[2])]

        def expr(xs):
            c = conv(ops[0], 0, xs[0], "bool")
            return f"where({c}, {conv(ops[1], 1, xs[1], odt)}, {conv(ops[2], 2, xs[2], odt)})"
    elif kind == "masked_fill":
        ops = [_scalar_or_tensor(graph, a[0]), _scalar_or_tensor(graph, a[1]), _scalar_or_tensor(graph, a[2])]

        def expr(xs):
            return f"where({conv(ops[1], 1, xs[1], 'bool')}, {conv(ops[2], 2, xs[2], odt)}, {conv(ops[0], 0, xs[0], odt)})"
    elif kind in ("cast", "_to_copy", "to"):
        ops = [_scalar_or_tensor(graph, a[0])]

        def expr(xs):
            return conv(ops[0], 0, xs[0], odt)
    elif kind == "expand":
        ops = [_scalar_or_tensor(graph, a[0])]

        def expr(xs):
            return xs[0]
    else:
        raise UnsupportedOpError(f"not supported: {node.target}")
    return ops, expr, odt


def _paren(x: str) -> str:
    simple = x.replace("_", "").replace(".", "").isalnum()
    return x if simple else f"({x})"


def cast_expr(e: str, have: str, want: str) -> str:
    """ASP expression ``e`` (of element type ``have``) as type ``want``: a cast only where they differ."""
    return e if have == want else f"cast({e}, {want})"


def kernel_name(node: AtenNode) -> str:
    """The ASP kernel name for a graph node: ``k_`` and its name with non-alphanumerics as ``_``."""
    return "k_" + "".join(c if c.isalnum() else "_" for c in node.name)


# ------------------------------------------------------------------ reductions and row ops

def _norm_dims(dims, rank: int) -> list[int]:
    if dims is None or dims == []:
        return list(range(rank))
    if isinstance(dims, int):
        dims = [dims]
    return sorted({d % rank if rank else 0 for d in dims})


def _abc(shape: tuple[int, ...], dims: list[int], node: AtenNode) -> tuple[int, int, int]:
    if not shape:
        return 1, 1, 1
    if dims != list(range(dims[0], dims[-1] + 1)):
        raise UnsupportedOpError(f"not supported: {node.target} over non-adjacent dims {dims}")
    a = math.prod(shape[:dims[0]])
    b = math.prod(shape[dims[0]:dims[-1] + 1])
    c = math.prod(shape[dims[-1] + 1:])
    return a, b, c


_RED_INIT = {"sum": "zeros", "mean": "zeros", "amax": "-inf", "amin": "inf", "max": "-inf", "min": "inf"}
#: ATen reductions the baseline lowers -> the ASP reduction at their heart
_REDUCER = {"sum": "sum", "mean": "sum", "amax": "max", "amin": "min", "max": "max", "min": "min",
            "argmax": "argmax", "argmin": "argmin", "var": "var", "any": "max", "all": "min"}


def _vector_norm_parts(node: AtenNode) -> tuple[Any, str, str, str]:
    """linalg_vector_norm(x, ord=2, dim=None, keepdim=False): (dims, reducer, what each element
    contributes, the finishing step of the reduced value ``v``)."""
    a_, kw = node.args, node.kwargs
    p = a_[1] if len(a_) > 1 else kw.get("ord", 2)
    dims = a_[2] if len(a_) > 2 else kw.get("dim")
    p = float(p)
    if p == math.inf:
        return dims, "max", "abs({x})", "v"
    if p == -math.inf:
        return dims, "min", "abs({x})", "v"
    if p == 0:
        return dims, "sum", "cast({x} != 0.0, f32)", "v"
    if p == 1:
        return dims, "sum", "abs({x})", "v"
    if p == 2:
        return dims, "sum", "{x} * {x}", "sqrt(v)"
    return dims, "sum", f"abs({{x}}) ** {asp_literal(p)}", f"v ** {asp_literal(1.0 / p)}"


def lower_reduction(node: AtenNode, graph: AtenGraph, kind: str) -> OpKernel:
    """One reduction over adjacent dims, viewed as [A, B] (B reduced) or [A, B, C] (B reduced,
    streamed with B innermost). A row of B that does not fit one tile is reduced chunk by chunk
    in an accum; an index reduction (argmax, max.dim's indices) carries (best value, its index)
    across chunks, the earlier index winning ties as in PyTorch."""
    x = graph.spec(node.args[0])
    a_ = node.args
    if kind not in _REDUCER and kind != "norm":
        raise UnsupportedOpError(f"not supported: {node.target}")
    pre, post = "{x}", "v"
    if kind == "norm":
        dims, red, pre, post = _vector_norm_parts(node)
    else:
        dims = a_[1] if len(a_) > 1 else node.kwargs.get("dim")
        red = _REDUCER[kind]
    rank = len(x.shape)
    dl = _norm_dims(dims, rank)
    A, B, C = _abc(x.shape, dl, node)
    xdt = asp_dtype(x)
    outs = node.outs
    kb = KernelBuilder(kernel_name(node))
    odt0 = asp_dtype(outs[0])
    cdt = "f32" if xdt in ("bf16", "f16") else xdt
    if kind in ("sum", "mean") and xdt != odt0 and odt0 not in ("bf16", "f16"):
        cdt = odt0  # e.g. summing bools counts them in i32
    if kind in ("any", "all"):
        cdt, pre, post = "i32", "cast({x}, i32)" if xdt == "bool" else "cast({x} != 0, i32)", "v"
    if kind == "norm" and xdt not in ("f32", "bf16", "f16"):
        raise UnsupportedOpError(f"not supported: {node.target} of a {x.dtype} tensor")
    indexed = red in ("argmax", "argmin") or (kind in ("max", "min") and len(outs) > 1)
    if C == 1:
        view = (A, B)
        tb = divisor_at_most(B, ROW_CAP)
        ta = divisor_at_most(A, max(1, TILE_CAP // tb))
        p = kb.param(xdt, view)
        (s,) = kb.op(f"load({p}, tile={asp_list([ta, tb])})", par=4)
        ax, init_shape = 1, [ta, 1]
        step_dim = 1 if ta < A else 0            # the chunk dimension of the stream, when B is cut
    else:
        view = (A, B, C)
        tc = divisor_at_most(C, TILE_CAP)
        tb = divisor_at_most(B, max(1, BLOCK_CAP // tc)) if red == "var" else \
            divisor_at_most(B, max(1, TILE_CAP // tc))
        p = kb.param(xdt, view)
        kept = [i for i, (n, t) in enumerate(zip(view, (1, tb, tc))) if n != t]
        order = [kept.index(i) for i in (0, 2, 1) if i in kept]  # the reduced axis innermost
        call = f"load({p}, tile={asp_list([1, tb, tc])}"
        if order != sorted(order):
            call += f", order={asp_list(order)}"
        (s,) = kb.op(call + ")", par=4)
        ax, init_shape = 0, [1, tc]
        step_dim = (A > 1) + (tc < C)
    whole = tb == B
    xin = "t" if cdt == xdt else f"cast(t, {cdt})"
    if kind in ("any", "all", "norm"):
        xin = pre.format(x="t" if kind != "norm" else _paren(xin))
    results = []
    if indexed:
        vred = "max" if red in ("argmax", "max") else "min"
        if whole:
            body = f"(arg{vred}({xin}, axis={ax}), {vred}({xin}, axis={ax}))"
            f = kb.fn(["t"], body if kind in ("max", "min") else f"arg{vred}({xin}, axis={ax})")
        else:
            worst = ("-inf" if vred == "max" else "inf") if cdt != "i32" else \
                ("-2147483647" if vred == "max" else "2147483647")
            cmp = ">" if vred == "max" else "<"
            f = kb.fn(["v", "i", "t"], "(where(k, cv, v), where(k, ci, i))",
                      [("cv", f"{vred}({xin}, axis={ax})"), ("ci", f"arg{vred}({xin}, axis={ax}) + pos({step_dim}) * {tb}"),
                       ("k", f"(cv {cmp} v) | ((cv != cv) & (v == v))")])   # NaN wins, as in PyTorch
            init = f"(full({asp_list(init_shape)}, {worst}" + (f", dtype={cdt})" if cdt != "f32" else ")") + \
                f", zeros({asp_list(init_shape)}, dtype=i32))"
        if kind in ("max", "min"):
            if whole:
                i_, v_ = kb.op(f"map({s}, fn={f})", 2, par=8)
            else:
                v_, i_ = kb.op(f"accum({s}, rank=1, init={init}, fn={f})", 2, par=8)
            if cdt != odt0:
                (v_,) = kb.op(f"map({v_}, fn={kb.fn(['v'], cast_expr('v', cdt, odt0))})")
            results += [(v_, odt0), (i_, "i32")]
        elif whole:
            (r,) = kb.op(f"map({s}, fn={f})", par=8)
            results.append((r, "i32"))
        else:
            r = kb.fresh("s")
            kb.do(f"_, {r} = accum({s}, rank=1, init={init}, fn={f})", par=8)   # the best value is not a result
            results.append((r, "i32"))
    elif red in ("sum", "max", "min"):
        combine = {"sum": "acc + {r}", "max": "maximum(acc, {r})", "min": "minimum(acc, {r})"}[red]
        rexpr = f"{red}({xin}, axis={ax})"
        if whole:
            f = kb.fn(["t"], rexpr)
            (r,) = kb.op(f"map({s}, fn={f})", par=8)
        else:
            if red == "sum":
                init = "zeros(" + asp_list(init_shape) + (f", dtype={cdt})" if cdt != "f32" else ")")
            else:
                start = {"any": "0", "all": "1"}.get(kind, "-inf" if red == "max" else "inf")
                init = f"full({asp_list(init_shape)}, {start}" + (f", dtype={cdt})" if cdt != "f32" else ")")
            f = kb.fn(["acc", "t"], combine.format(r=rexpr))
            (r,) = kb.op(f"accum({s}, rank=1, init={init}, fn={f})", par=8)
        final = post
        if kind == "mean":
            final = f"v / {asp_literal(float(B))}"
        odt = asp_dtype(outs[0])
        if final != "v" or cdt != odt:
            g = kb.fn(["v"], cast_expr(final, cdt, odt))
            (r,) = kb.op(f"map({r}, fn={g})")
        results.append((r, odt))
    else:  # var
        if not whole:
            raise UnsupportedOpError(f"not supported: {node.target} over {B} elements (more than {ROW_CAP})")
        corr = node.kwargs.get("correction", 1)
        corr = 1 if corr is None else corr
        f = kb.fn(["t"], cast_expr(f"sum(d * d, axis={ax}) / {asp_literal(float(B - corr))}", cdt, asp_dtype(outs[0])),
                  [("u", f"mean({xin}, axis={ax})"), ("d", f"{xin} - u")])
        (r,) = kb.op(f"map({s}, fn={f})", par=8)
        results.append((r, asp_dtype(outs[0])))
    out_view = (A, 1) if C == 1 else (A, 1, C)
    for r, odt in results:
        o = kb.result(odt, out_view)
        kb.do(f"store({o}, {r})", par=4)
    return OpKernel(node.name, node.target, kb.text(f"{node.target} ({node.name})"), [x.name], [view],
                    [o.name for o in outs[:len(results)]], [out_view] * len(results),
                    layout=kb.layout(f"{node.target} ({node.name})"))


def lower_softmax(node: AtenNode, graph: AtenGraph, log: bool) -> OpKernel:
    x = graph.spec(node.args[0])
    dim = node.args[1] % max(1, len(x.shape)) if x.shape else 0
    A, B, C = _abc(x.shape, [dim], node)
    xdt, odt = asp_dtype(x), asp_dtype(node.outs[0])
    kb = KernelBuilder(kernel_name(node))
    xin = "t" if xdt == "f32" else "cast(t, f32)"
    if C == 1:
        tb = divisor_at_most(B, ROW_CAP)
        ta = divisor_at_most(A, max(1, TILE_CAP // tb))
        view, tile, ax, st = (A, B), [ta, tb], 1, [ta, 1]
    else:
        tc = divisor_at_most(C, max(1, TILE_CAP // B)) if B <= ROW_CAP else None
        if tc is None:
            raise UnsupportedOpError(f"not supported: {node.target} over {B} elements along an inner dim")
        view, tile, ax, st = (A, B, C), [1, B, tc], 0, [1, tc]
        tb = B
    p = kb.param(xdt, view)
    if tb == B:
        (s,) = kb.op(f"load({p}, tile={asp_list(tile)})", par=4)
        res = "z - log(sum(exp(z), axis=%d))" % ax if log else "e / sum(e, axis=%d)" % ax
        f = kb.fn(["t"], cast_expr(res, "f32", odt), [("z", f"{xin} - max({xin}, axis={ax})"), ("e", "exp(z)")])
        (r,) = kb.op(f"map({s}, fn={f})", par=8)
    else:
        # the row does not fit one tile: an online pass for (max, sum), then a second read
        (s1,) = kb.op(f"load({p}, tile={asp_list(tile)})", par=4)
        on = kb.fn(["m", "l", "t"], f"(m2, l * exp(m - m2) + sum(exp({xin} - m2), axis={ax}))",
                   [("m2", f"maximum(m, max({xin}, axis={ax}))")])
        m, l_ = kb.op(f"accum({s1}, rank=1, init=(full({asp_list(st)}, -inf), zeros({asp_list(st)})), fn={on})", 2, par=8)
        (s2,) = kb.op(f"load({p}, tile={asp_list(tile)})", par=4)
        (mr,) = kb.op(f"repeat({m}, {B // tb})")
        (lr,) = kb.op(f"repeat({l_}, {B // tb})")
        res = f"{xin} - m - log(l)" if log else f"exp({xin} - m) / l"
        f = kb.fn(["t", "m", "l"], cast_expr(res, "f32", odt))
        (r,) = kb.op(f"map({s2}, {mr}, {lr}, fn={f})", par=8)
    o = kb.result(odt, view)
    kb.do(f"store({o}, {r})", par=4)
    return OpKernel(node.name, node.target, kb.text(f"{node.target} ({node.name})"), [x.name], [view],
                    [node.outs[0].name], [view], layout=kb.layout(f"{node.target} ({node.name})"))


def _norm_out_dtypes(node: AtenNode) -> list[str | None]:
    """Each result's ASP dtype, None for a result this lowering does not produce (batch norm in
    eval mode returns two empty tensors beside its output)."""
    return [asp_dtype(o) if o.numel > 0 else None for o in node.outs]


def normalize_rows(node: AtenNode, graph: AtenGraph, x: TensorSpec, groups: tuple[int, int, int, int],
                   w: Any, b: Any, eps: float) -> OpKernel:
    """``y = (x - mean) * rstd * weight + bias`` with the statistics taken over rows: the one
    lowering of layer norm, group norm and instance norm (batch norm on batch statistics).

    ``groups = (N, G, Cg, HW)``: ``x`` viewed as ``N * G`` rows of ``L = Cg * HW`` elements, each
    row normalised on its own; the affine weight and bias have ``G * Cg`` entries, one per
    channel, a channel being ``HW`` consecutive elements of a row (layer norm: ``G = 1, HW = 1``,
    a weight per element; group norm: ``C = G * Cg`` channels of ``HW`` pixels; instance norm:
    ``G = C, Cg = 1``). Results: the output and, where the op returns them, the mean and rstd per
    row. A row that fits one tile (``L <= ROW_CAP``) is read once; a longer one is read twice, an
    accum pass combining each chunk's (mean, squared deviations) with Chan's formula (as exact as
    two passes over the row, without a third read) and a pass that normalises."""
    N, G, Cg, HW = groups
    R, L = N * G, Cg * HW
    xdt = asp_dtype(x)
    odts = _norm_out_dtypes(node)
    kb = KernelBuilder(kernel_name(node))
    xin = "t" if xdt == "f32" else "cast(t, f32)"
    affine = [(ref, nm) for ref, nm in ((w, "g"), (b, "c")) if isinstance(ref, Ref)]
    p = kb.param(xdt, (R, L))
    inputs, views = [x.name], [(R, L)]
    e = asp_literal(float(eps))
    if L <= ROW_CAP:
        # whole rows: several groups (or samples) per tile; the weight tile covers gw groups
        if L * G <= TILE_CAP:
            tr, gw = G * divisor_at_most(N, max(1, TILE_CAP // (L * G))), G
        else:
            tr = gw = divisor_at_most(G, max(1, TILE_CAP // L))
        (s,) = kb.op(f"load({p}, tile={asp_list([tr, L])})", par=4)
        streams, params = [s], ["t"]
        flat = G == 1 and HW == 1           # a weight per element of the row (layer norm)
        wview = (1, L) if flat else (G, Cg, 1)
        wtile = [1, L] if flat else [gw, Cg, 1]
        for ref, nm in affine:
            spec = graph.spec(ref)
            q = kb.param(asp_dtype(spec), wview)
            call = f"load({q}, tile={asp_list(wtile)}"
            if gw < G and N > 1:
                call += f", repeat={N}, at=0"
            (ws,) = kb.op(call + ")")
            if gw < G and N > 1:
                (ws,) = kb.op(f"flatten({ws}, dims=[0, 1])")
            elif gw == G and R // tr > 1:
                (ws,) = kb.op(f"repeat({ws}, {R // tr})")
            streams.append(ws)
            params.append(nm)
            inputs.append(spec.name)
            views.append(wview)
        y = "d * r"
        if affine:
            y = y if flat else f"reshape(d * r, {asp_list([tr // gw, gw, Cg, HW])})"
            for ref, nm in affine:
                v = nm if asp_dtype(graph.spec(ref)) == "f32" else f"cast({nm}, f32)"
                v = v if flat else f"reshape({v}, {asp_list([gw, Cg, 1])})"
                y = f"{y} * {v}" if nm == "g" else f"{y} + {v}"
            y = y if flat else f"reshape({y}, {asp_list([tr, L])})"
        res = [cast_expr(v, "f32", dt) for v, dt in zip((y, "u", "r"), odts) if dt is not None]
        f = kb.fn(params, f"({', '.join(res)})" if len(res) > 1 else res[0],
                  [("u", f"mean({xin}, axis=1)"), ("d", f"{xin} - u"), ("r", f"rsqrt(mean(d * d, axis=1) + {e})")])
        outs = kb.op(f"map({', '.join(streams)}, fn={f})", len(res), par=8)
    else:
        # long rows: chunks of TL elements, within one channel or whole channels
        if HW > TILE_CAP:
            TL, k = divisor_at_most(HW, TILE_CAP), 1
        else:
            k = divisor_at_most(Cg, max(1, TILE_CAP // HW))
            TL = k * HW
        nc = L // TL
        red = 1 if R > 1 else 0           # the chunk axis of the [R, L / TL] stream
        (s1,) = kb.op(f"load({p}, tile={asp_list([1, TL])})", par=4)
        welford = kb.fn(["m", "q", "t"], "(m + dl * fr, q + cq + dl * dl * n0 * fr)",
                        [("cm", f"mean({xin}, axis=1)"), ("dc", f"{xin} - cm"), ("cq", "sum(dc * dc, axis=1)"),
                         ("n0", f"cast(pos({red}), f32) * {TL}.0"), ("dl", "cm - m"), ("fr", f"{TL}.0 / (n0 + {TL}.0)")])
        m, q = kb.op(f"accum({s1}, rank=1, init=(zeros([1, 1]), zeros([1, 1])), fn={welford})", 2, par=8)
        fr = kb.fn(["q"], f"rsqrt(q / {float(L)} + {e})")
        (r,) = kb.op(f"map({q}, fn={fr})")
        stats = []
        for st, dt in ((m, odts[1] if len(odts) > 1 else None), (r, odts[2] if len(odts) > 2 else None)):
            if dt is None:
                stats.append((st, None))
                continue
            a, c2 = kb.op(f"copy({st})", 2)
            if dt != "f32":
                (c2,) = kb.op(f"map({c2}, fn={kb.fn(['v'], f'cast(v, {dt})')})")
            stats.append((a, c2))
        # a weight per element of the row (layer norm) is read once, not once per row: the
        # normalising pass walks chunk-major and the rows' statistics wait in a buffer
        by_chunk = G == 1 and HW == 1 and R > 1 and bool(affine)
        (s2,) = kb.op(f"load({p}, tile={asp_list([1, TL])}" + (", order=[1, 0]" if by_chunk else "") + ")", par=4)
        streams, params = [s2], ["t"]
        for (st, _), nm in zip(stats, ("m", "r")):
            if by_chunk:
                (sb,) = kb.op(f"bufferize({st}, rank=1)")
                (sr,) = kb.op(f"streamify({sb}, repeat={nc})")
            else:
                (sr,) = kb.op(f"repeat({st}, {nc})")
            streams.append(sr)
            params.append(nm)
        C = G * Cg
        for ref, nm in (affine if by_chunk else ()):
            spec = graph.spec(ref)
            q2 = kb.param(asp_dtype(spec), (nc, TL))
            (ws,) = kb.op(f"load({q2}, tile={asp_list([1, TL])})")
            (ws,) = kb.op(f"repeat({ws}, {R})")
            streams.append(ws)
            params.append(nm)
            inputs.append(spec.name)
            views.append((nc, TL))
        for ref, nm in (() if by_chunk else affine):
            spec = graph.spec(ref)
            q2 = kb.param(asp_dtype(spec), (C // k, k))
            reps = [(n, at) for n, at in ((N, 0), (HW // TL if TL < HW else 1, (N > 1) + (C // k > 1))) if n > 1]
            ndims = (N > 1) + (C // k > 1) + (TL < HW and HW // TL > 1)
            call = f"load({q2}, tile={asp_list([1, k])}"
            if reps:
                call += f", repeat={asp_list([n for n, _ in reps])}, at={asp_list([a for _, a in reps])}"
            (ws,) = kb.op(call + ")")
            if ndims > 1:
                (ws,) = kb.op(f"flatten({ws}, dims=[0, {ndims - 1}])")
            if R > 1:
                (ws,) = kb.op(f"reshape({ws}, dim=0, chunk={nc})")
            streams.append(ws)
            params.append(nm)
            inputs.append(spec.name)
            views.append((C // k, k))
        y = f"({xin} - m) * r"
        for ref, nm in affine:
            v = nm if asp_dtype(graph.spec(ref)) == "f32" else f"cast({nm}, f32)"
            if HW > 1 and k > 1:
                y = f"reshape({y}, {asp_list([k, HW])})" if nm == "g" else y
                v = f"reshape({v}, {asp_list([k, 1])})"
            y = f"{y} * {v}" if nm == "g" else f"{y} + {v}"
        if affine and HW > 1 and k > 1:
            y = f"reshape({y}, {asp_list([1, TL])})"
        f = kb.fn(params, cast_expr(y, "f32", odts[0]))
        (ys,) = kb.op(f"map({', '.join(streams)}, fn={f})", par=8)
        outs = [ys] + [c2 for _, c2 in stats if c2 is not None]
        if by_chunk:
            outs[0] = (outs[0], ", order=[1, 0]")
    names, out_views = [], []
    for st, o, view in zip(outs, [o for o, dt in zip(node.outs, odts) if dt is not None], [(R, L), (R, 1), (R, 1)]):
        st, order = st if isinstance(st, tuple) else (st, "")
        r_ = kb.result(asp_dtype(o), view)
        kb.do(f"store({r_}, {st}{order})", par=4)
        names.append(o.name)
        out_views.append(view)
    return OpKernel(node.name, node.target, kb.text(f"{node.target} ({node.name})"), inputs, views,
                    names, out_views, layout=kb.layout(f"{node.target} ({node.name})"))


def lower_layer_norm(node: AtenNode, graph: AtenGraph) -> OpKernel:
    """native_layer_norm(x, normalized_shape, w, b, eps): rows of prod(normalized_shape)."""
    x = graph.spec(node.args[0])
    a = node.args
    B = math.prod(a[1])
    return normalize_rows(node, graph, x, (x.numel // B, 1, B, 1), a[2] if len(a) > 2 else None,
                          a[3] if len(a) > 3 else None, a[4] if len(a) > 4 else 1e-5)


def lower_group_norm(node: AtenNode, graph: AtenGraph) -> OpKernel:
    """native_group_norm(x, w, b, N, C, HxW, group, eps): N * group rows of C / group channels."""
    x = graph.spec(node.args[0])
    w, b, N, C, HW, G, eps = node.args[1:8]
    return normalize_rows(node, graph, x, (N, G, C // G, HW), w, b, eps)


def lower_batch_norm(node: AtenNode, graph: AtenGraph, base: str) -> OpKernel:
    """Batch norm on running statistics (eval mode: one elementwise map with per-channel
    operands) or on the batch's own (training mode, instance norm: the row normaliser; a batch
    of one sample only, where each channel's statistics are over one contiguous row)."""
    x = graph.spec(node.args[0])
    a = node.args
    if len(x.shape) < 2:
        raise UnsupportedOpError(f"not supported: {node.target} on a tensor of rank {len(x.shape)}")
    N, C, HW = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    w, b = a[1], a[2]
    if base == "_native_batch_norm_legit_no_training":
        return _batch_norm_eval(node, graph, x, (N, C, HW), w, b, a[3], a[4], a[6])
    if node.target.endswith("no_stats"):      # (x, w, b, training, momentum, eps)
        eps = a[5]
    else:                                     # (x, w, b, running_mean, running_var, training, momentum, eps)
        eps = a[7]
        if not a[5]:
            return _batch_norm_eval(node, graph, x, (N, C, HW), w, b, a[3], a[4], eps)
    if len(node.outs) != 3 or any(o.numel == 0 for o in node.outs):
        raise UnsupportedOpError(f"not supported: {node.target} updating running statistics")
    if N != 1:
        return _batch_norm_batch_stats(node, graph, x, (N, C, HW), w, b, eps)
    return normalize_rows(node, graph, x, (1, C, 1, HW), w, b, eps)


def _batch_norm_batch_stats(node: AtenNode, graph: AtenGraph, x: TensorSpec, view: tuple[int, int, int], w, b,
                            eps: float) -> OpKernel:
    """Batch norm on the batch's own statistics over several samples. A channel's values are N
    strided runs of HW, so the kernel walks channel-block-major: [C/tc, N, HW/TH] tiles of
    [tc, TH] (or, with HW = 1, [C/tc, N/tn] tiles of [tn, tc]), combines each tile's per-channel
    (mean, squared deviations) in an accum with Chan's formula, then reads x again in the same
    order to normalise: two reads and one write, as a long-row norm. Results: the output, and
    the mean and rstd per channel."""
    N, C, HW = view
    xdt = asp_dtype(x)
    odts = _norm_out_dtypes(node)
    kb = KernelBuilder(kernel_name(node))
    xin = "t" if xdt == "f32" else "cast(t, f32)"
    if HW == 1:      # [N, C]: several samples per tile, reduced along the tile's axis 0
        tc = divisor_at_most(C, TILE_CAP)
        per = divisor_at_most(N, max(1, TILE_CAP // tc))
        xview, tile, ax, sview = (N, C), [per, tc], 0, (1, C)
        steps = [N // per] if per < N else []
    else:            # [N, C, HW]: one sample's [tc, TH] per tile, reduced along the tile's axis 1
        per = divisor_at_most(HW, TILE_CAP)
        tc = divisor_at_most(C, max(1, TILE_CAP // per))
        xview, tile, ax, sview = (N, C, HW), [1, tc, per], 1, (C, 1)
        steps = [N] + ([HW // per] if per < HW else [])
    stile = [1, tc] if HW == 1 else [tc, 1]
    order = ""
    if tc < C and steps:          # channel blocks outermost, the reduced steps inside
        order = ", order=" + asp_list([1, 0] + list(range(2, 1 + len(steps))))   # the channel dim is natural dim 1
    first = 1 if tc < C else 0    # the stream dimension of the first step
    p = kb.param(xdt, xview)
    inputs, views = [x.name], [xview]
    load = f"load({p}, tile={asp_list(tile)}{order})"
    (s1,) = kb.op(load, par=4)
    lets = [("cm", f"mean({xin}, axis={ax})"), ("dc", f"{xin} - cm"), ("cq", f"sum(dc * dc, axis={ax})")]
    if steps:
        step = f"pos({first})" + (f" * {steps[1]} + pos({first + 1})" if len(steps) > 1 else "")
        welford = kb.fn(["m", "q", "t"], "(m + dl * fr, q + cq + dl * dl * n0 * fr)", lets + [
            ("n0", f"cast({step}, f32) * {per}.0"), ("dl", "cm - m"), ("fr", f"{per}.0 / (n0 + {per}.0)")])
        init = f"(zeros({asp_list(stile)}), zeros({asp_list(stile)}))"
        m, q = kb.op(f"accum({s1}, rank={len(steps)}, init={init}, fn={welford})", 2, par=8)
    else:            # the whole batch in one tile
        m, q = kb.op(f"map({s1}, fn={kb.fn(['t'], '(cm, cq)', lets)})", 2, par=8)
    (r,) = kb.op(f"map({q}, fn={kb.fn(['q'], f'rsqrt(q / {float(N * HW)} + {asp_literal(float(eps))})')})")
    stats, outs = [], []
    for st, dt in ((m, odts[1]), (r, odts[2])):
        a, c2 = kb.op(f"copy({st})", 2)
        if dt != "f32":
            (c2,) = kb.op(f"map({c2}, fn={kb.fn(['v'], f'cast(v, {dt})')})")
        stats.append(a)
        outs.append(c2)

    def spread(s: str) -> str:
        """A per-channel-block stream repeated over the reduced steps, on chip."""
        for n in steps:
            (s,) = kb.op(f"repeat({s}, {n})")
        return s
    (s2,) = kb.op(load, par=4)
    streams, params = [s2] + [spread(s) for s in stats], ["t", "m", "r"]
    y = f"({xin} - m) * r"
    for ref, nm in ((w, "g"), (b, "c")):
        if not isinstance(ref, Ref):
            continue
        spec = graph.spec(ref)
        q2 = kb.param(asp_dtype(spec), sview)
        (ws,) = kb.op(f"load({q2}, tile={asp_list(stile)})")
        streams.append(spread(ws))
        params.append(nm)
        inputs.append(spec.name)
        views.append(sview)
        v = nm if asp_dtype(spec) == "f32" else f"cast({nm}, f32)"
        y = f"{y} * {v}" if nm == "g" else f"{y} + {v}"
    f = kb.fn(params, cast_expr(y, "f32", odts[0]))
    (ys,) = kb.op(f"map({', '.join(streams)}, fn={f})", par=8)
    results = [(ys, node.outs[0], xview, order)] + [(o, spec, sview, "") for o, spec in zip(outs, node.outs[1:3])]
    for st, spec, v, o in results:
        r_ = kb.result(asp_dtype(spec), v)
        kb.do(f"store({r_}, {st}{o})", par=4)
    return OpKernel(node.name, node.target, kb.text(f"{node.target} ({node.name})"), inputs, views,
                    [spec.name for _, spec, _, _ in results], [v for _, _, v, _ in results],
                    layout=kb.layout(f"{node.target} ({node.name})"))


def _batch_norm_eval(node: AtenNode, graph: AtenGraph, x: TensorSpec, view: tuple[int, int, int], w, b, rm, rv,
                     eps: float) -> OpKernel:
    """``(x - running_mean) * rsqrt(running_var + eps) * w + b`` per channel: one elementwise kernel."""
    N, C, HW = view
    out = node.outs[0]
    refs = [(r, nm) for r, nm in ((rm, "m"), (rv, "v"), (w, "g"), (b, "c")) if isinstance(r, Ref)]
    if [nm for _, nm in refs[:2]] != ["m", "v"]:
        raise UnsupportedOpError(f"not supported: {node.target} without running statistics")
    ops = [_Operand("tensor", x.name, x)] + [_Operand("tensor", graph.spec(r).name, graph.spec(r)) for r, _ in refs]
    odt = asp_dtype(out)
    shape, vs = merge_dims((N, C, HW), [(N, C, HW)] + [(1, C, 1)] * len(refs))
    merged = [_Operand("tensor", o.value, TensorSpec(o.spec.name, v, o.spec.dtype)) for o, v in zip(ops, vs)]

    def expr(xs: list[str]) -> str:
        f = [v if asp_dtype(o.spec) == "f32" else f"cast({v}, f32)" for v, o in zip(xs, ops)]
        terms = dict(zip([nm for _, nm in refs], f[1:]))
        y = f"({f[0]} - {terms['m']}) * rsqrt({terms['v']} + {asp_literal(float(eps))})"
        if "g" in terms:
            y = f"{y} * {terms['g']}"
        if "c" in terms:
            y = f"{y} + {terms['c']}"
        return cast_expr(y, "f32", odt)
    src, inputs, views, layout = elementwise_kernel(kernel_name(node), TensorSpec(out.name, shape, out.dtype), merged,
                                                    expr, odt, comment=f"{node.target} ({node.name})")
    return OpKernel(node.name, node.target, src, inputs, views, [out.name], [shape], layout=layout)


# ------------------------------------------------------------------ matmul family

def lower_matmul(node: AtenNode, graph: AtenGraph, kind: str) -> OpKernel:
    if kind == "addmm":
        bias, a, b = node.args[0], node.args[1], node.args[2]
        beta = node.kwargs.get("beta", 1)
        alpha = node.kwargs.get("alpha", 1)
    else:
        bias, a, b = None, node.args[0], node.args[1]
        beta = alpha = 1
    sa, sb = graph.spec(a), graph.spec(b)
    out = node.outs[0]
    if kind == "bmm":
        bt, M, K = sa.shape
        N = sb.shape[2]
    else:
        (M, K), N = sa.shape, sb.shape[1]
        bt = None
    dt = asp_dtype(out)
    if asp_dtype(sa) != dt or asp_dtype(sb) != dt:
        raise UnsupportedOpError(f"not supported: {node.target} with mixed dtypes")
    # [256, 512] output blocks (a 512 KiB f32 accumulator, one PMU): each operand tile read from
    # HBM feeds 2 x 256 x 512 x 128 flops, enough to keep ~960 PCUs' systolic arrays busy at f32
    # without HBM becoming the bound (128 x 128 blocks re-read the operands 4x as often)
    tm, tn, tk = divisor_at_most(M, MM_BLOCK_M), divisor_at_most(N, MM_BLOCK_N), divisor_at_most(K, MM_TILE)
    kb = KernelBuilder(kernel_name(node))
    pa = kb.param(dt, sa.shape)
    pb = kb.param(dt, sb.shape)
    inputs, views = [sa.name, sb.name], [sa.shape, sb.shape]
    lead = [1] if bt is not None else []
    # A: [(B,) M/tm, K/tk] -> insert N/tn before K ; B: [(B,) K/tk, N/tn] -> order (B, N, K), insert M/tm
    off = 1 if (bt and bt > 1) else 0
    m_kept, n_kept, k_kept = tm < M, tn < N, tk < K
    a_call = f"load({pa}, tile={asp_list(lead + [tm, tk])}"
    if n_kept:
        a_call += f", repeat={N // tn}, at={off + (1 if m_kept else 0)}"
    (xa,) = kb.op(a_call + ")", par=4)
    b_call = f"load({pb}, tile={asp_list(lead + [tk, tn])}"
    if k_kept and n_kept:
        b_call += f", order={asp_list(([0] if off else []) + [off + 1, off])}"
    if m_kept:
        b_call += f", repeat={M // tm}, at={off}"
    (xb,) = kb.op(b_call + ")", par=4)
    zero = f"zeros({asp_list([tm, tn])}" + (f", dtype={dt})" if dt != "f32" else ")")
    if dt == "f32":
        mac = kb.fn(["acc", "x", "y"], "acc + matmul(x, y)")
        acc_init = zero
    else:
        # 16-bit operands: the systolic array accumulates in f32
        mac = kb.fn(["acc", "x", "y"], "acc + cast(matmul(x, y), f32)")
        acc_init = f"zeros({asp_list([tm, tn])})"
    if k_kept:
        (c,) = kb.op(f"accum({xa}, {xb}, rank=1, init={acc_init}, fn={mac})", par=16)
    else:
        mm = kb.fn(["x", "y"], "matmul(x, y)" if dt == "f32" else "cast(matmul(x, y), f32)")
        (c,) = kb.op(f"map({xa}, {xb}, fn={mm})", par=16)
    streams, params = [c], ["c"]
    if isinstance(bias, Ref):
        bs = graph.spec(bias)
        if len(bs.shape) == 1 or (len(bs.shape) == 2 and bs.shape[0] == 1):
            pbias = kb.param(asp_dtype(bs), (1, N))
            views.append((1, N))
            call = f"load({pbias}, tile={asp_list([1, tn])}"
            if m_kept:
                call += f", repeat={M // tm}, at=0"
            (bb,) = kb.op(call + ")")
        else:
            pbias = kb.param(asp_dtype(bs), (M, N))
            views.append((M, N))
            (bb,) = kb.op(f"load({pbias}, tile={asp_list([tm, tn])})")
        inputs.append(bs.name)
        streams.append(bb)
        params.append("b")
    expr = "c"
    if alpha != 1:
        expr = f"c * {asp_literal(alpha)}"
    if "b" in params:
        bexpr = "b" if asp_dtype(graph.spec(bias)) == "f32" else "cast(b, f32)"
        expr = f"{expr} + {bexpr}" + (f" * {asp_literal(beta)}" if beta != 1 else "")
    if expr != "c" or dt != "f32":
        f = kb.fn(params, cast_expr(expr, "f32", dt))
        (c,) = kb.op(f"map({', '.join(streams)}, fn={f})", par=8)
    o = kb.result(dt, out.shape)
    kb.do(f"store({o}, {c})", par=4)
    return OpKernel(node.name, node.target, kb.text(f"{node.target} ({node.name})"), inputs, views,
                    [out.name], [out.shape], layout=kb.layout(f"{node.target} ({node.name})"))


# ------------------------------------------------------------------ layout and structural ops

def permute_view(shape: tuple[int, ...], perm: list[int]) -> tuple[tuple[int, ...], list[int]]:
    """The coarsest view of a permute: size-1 axes dropped and runs of input axes that stay
    adjacent and in order in the output merged (a reshape of contiguous HBM data costs nothing),
    so ``[256, 768, 1, 1, 1]`` permuted by ``[2, 3, 4, 1, 0]`` is the 2-D transpose it is, and a
    ``[B, S, H, D] -> [B, H, S, D]`` head split keeps ``D`` as one axis."""
    live = [a for a in perm if shape[a] != 1]
    runs: list[list[int]] = []
    for a in live:
        if runs and a == runs[-1][-1] + 1:
            runs[-1].append(a)
        else:
            runs.append([a])
    by_start = sorted(runs, key=lambda r: r[0])
    new_shape = tuple(math.prod(shape[a] for a in r) for r in by_start) or (1,)
    new_perm = [by_start.index(r) for r in runs] or [0]
    return new_shape, new_perm


def lower_permute(node: AtenNode, graph: AtenGraph, kind: str) -> OpKernel | Alias:
    x = graph.spec(node.args[0])
    k = len(x.shape)
    if kind == "permute":
        perm = [d % k for d in node.args[1]]
    elif kind == "t":
        perm = [1, 0] if k == 2 else list(range(k))
    else:  # transpose(x, d0, d1)
        d0, d1 = node.args[1] % k, node.args[2] % k
        perm = list(range(k))
        perm[d0], perm[d1] = perm[d1], perm[d0]
    out = node.outs[0]
    # moving only size-1 axes is a relabelling
    if [a for a in perm if x.shape[a] != 1] == [a for a in range(k) if x.shape[a] != 1]:
        return Alias(node.name, node.target, x.name, out.name)
    xshape, perm = permute_view(x.shape, perm)
    k = len(perm)
    oshape = tuple(xshape[a] for a in perm)
    dt = asp_dtype(x)
    kb = KernelBuilder(kernel_name(node))
    p = kb.param(dt, xshape)
    tile = [1] * k
    reshape = None
    if perm[-1] == k - 1:
        # the last axis stays: move [R, D] slabs, R rows of the input axis that becomes the
        # output's second-to-last (the tile's other axes are size 1, a free reshape on chip), so
        # a head-split permute moves 64 KiB tiles, not one 256-byte row per memory request
        tile[-1] = divisor_at_most(xshape[-1], TILE_CAP)
        r_ax = perm[-2] if k >= 2 else None
        rows = divisor_at_most(xshape[r_ax], max(1, TILE_CAP // tile[-1])) if r_ax is not None else 1
        if rows > 1:
            tile[r_ax] = rows
            out_tile = [1] * (k - 2) + [rows, tile[-1]]
            reshape = [rows, tile[-1]]
        else:
            out_tile = [1] * (k - 1) + [tile[-1]]
        swap = False
    else:
        # the last axis moves: [Ta, Tl] tiles of the input axis that becomes the output's last (a)
        # and the input's last (l), transposed on chip; l lands at output position j, so the
        # stored element is [Tl, 1, .., 1, Ta] (rank-5 einsum permutes, not only swaps of the last two)
        a_ax, j = perm[-1], perm.index(k - 1)
        tile[-1] = divisor_at_most(xshape[-1], MM_TILE)
        tile[a_ax] = divisor_at_most(xshape[a_ax], MM_TILE)
        out_tile = [1] * k
        out_tile[j], out_tile[-1] = tile[-1], tile[a_ax]
        swap = True
    in_kept = [a for a in range(k) if tile[a] != xshape[a]]
    out_kept = [j for j in range(k) if out_tile[j] != oshape[j]]
    order = [in_kept.index(perm[j]) for j in out_kept]
    call = f"load({p}, tile={asp_list(tile)}" + (f", order={asp_list(order)}" if order != sorted(order) else "") + ")"
    (s,) = kb.op(call, par=4)
    if swap:
        pair, out_elem = [tile[a_ax], tile[-1]], [tile[-1]] + [1] * (k - 2 - j) + [tile[a_ax]]
        e = "t" if _squeezed(tile) == pair else f"reshape(t, {asp_list(pair)})"
        e = f"transpose({e})" if out_elem == pair[::-1] else f"reshape(transpose({e}), {asp_list(out_elem)})"
        f = kb.fn(["t"], e)
        (s,) = kb.op(f"map({s}, fn={f})", par=8)
    elif reshape is not None and _squeezed(tile) != reshape:
        f = kb.fn(["t"], f"reshape(t, {asp_list(reshape)})")
        (s,) = kb.op(f"map({s}, fn={f})", par=8)
    o = kb.result(dt, oshape)
    kb.do(f"store({o}, {s})", par=4)
    return OpKernel(node.name, node.target, kb.text(f"{node.target} ({node.name})"), [x.name], [xshape],
                    [out.name], [oshape], layout=kb.layout(f"{node.target} ({node.name})"))


def _squeezed(tile: list[int]) -> list[int]:
    """The element shape a load with this (literal) tile gives: leading 1s dropped while more
    than two entries remain (docs/asp.md 3.5)."""
    t = list(tile)
    while len(t) > 2 and t[0] == 1:
        t.pop(0)
    return t


def _block(shape: tuple[int, ...], dim: int) -> tuple[int, int, int]:
    dim = dim % len(shape)
    return math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:])


def _block_kernel(node: AtenNode, graph: AtenGraph, refs: list, dim: int, out_len: int,
                  body: Callable[[int, list[str]], str], lets=(), extra=None,
                  lets_for: Callable[[int, list[str], list[int]], list] | None = None) -> OpKernel:
    """View every operand as [A, S_i, C] and process [TA, S_i, TC] blocks, one per tile.

    The op works along the S axis only, so A and C can be cut into chunks of TA and TC freely;
    a tile holds up to TILE_CAP elements of the longest operand, so a cat or slice along a short
    axis (the pairs of an interleaved RoPE) streams a few large tiles, not millions of 2-element
    ones. ``body(axis, params)`` gets the axis S has in the tile (0 when TA is 1 and dropped)."""
    out = node.outs[0]
    A, _, C = _block(graph.spec(refs[0]).shape, dim)
    longest = max([out_len] + [_block(graph.spec(r).shape, dim)[1] for r in refs])
    tc = divisor_at_most(C, max(1, TILE_CAP // longest))
    if longest * tc > BLOCK_CAP:
        raise UnsupportedOpError(f"not supported: {node.target} along a dimension of {longest} elements")
    ta = divisor_at_most(A, max(1, TILE_CAP // (longest * tc)))
    axis = 0 if ta == 1 else 1
    kb = KernelBuilder(kernel_name(node))
    streams, params, inputs, views = [], [], [], []
    for i, r in enumerate(refs):
        spec = graph.spec(r)
        a_, s_, c_ = _block(spec.shape, dim) if spec.shape else (1, 1, 1)
        if a_ != A or c_ != C:
            raise UnsupportedOpError(f"not supported: {node.target} with operands of different outer sizes")
        p = kb.param(asp_dtype(spec), (A, s_, c_))
        (s,) = kb.op(f"load({p}, tile={asp_list([ta, s_, tc])})", par=4)
        streams.append(s)
        params.append(f"x{i}")
        inputs.append(spec.name)
        views.append((A, s_, c_))
    if lets_for is not None:   # lets that need the tile's shape (S on ``axis``)
        lets = lets_for(axis, params, [ta, out_len, tc] if ta > 1 else [out_len, tc])
    f = kb.fn(params, body(axis, params), list(lets))
    (r,) = kb.op(f"map({', '.join(streams)}, fn={f})", par=8)
    view = (A, out_len, C)
    o = kb.result(asp_dtype(out), view)
    kb.do(f"store({o}, {r})", par=4)
    return OpKernel(node.name, node.target, kb.text(f"{node.target} ({node.name})"), inputs, views,
                    [out.name], [view], layout=kb.layout(f"{node.target} ({node.name})"))


def _product_scan(x: str, axis: int, tile: list[int], xdt: str, cdt: str) -> list[tuple[str, str]]:
    """Lets ``y0 .. yk`` with ``yk`` the running product of ``x`` along ``axis`` (ASP has a cumsum
    builtin but no cumprod): a log-depth (Hillis-Steele) scan, ``y(j+1) = yj * (yj shifted by 2^j,
    ones shifted in)``, k = ceil(log2 S) multiplies per element instead of S sequential steps."""
    lets = [("y0", x if xdt == cdt else f"cast({x}, {cdt})")]
    S, j, shift = tile[axis], 0, 1
    while shift < S:
        pad = list(tile)
        pad[axis] = shift
        ones = f"ones({asp_list(pad)}" + (f", dtype={cdt})" if cdt != "f32" else ")")
        lets.append((f"y{j + 1}", f"y{j} * concat({ones}, slice(y{j}, axis={axis}, stop={S - shift}), axis={axis})"))
        j, shift = j + 1, shift * 2
    return lets


def lower_structural(node: AtenNode, graph: AtenGraph, kind: str) -> OpKernel:
    a = node.args
    if kind == "cat":
        # empty operands add nothing; torch also skips a legacy 1-D [0] one whatever its rank (a
        # KV cache that starts as torch.tensor([]))
        refs = [r for r in a[0] if graph.spec(r).numel > 0]
        if not refs:
            raise UnsupportedOpError(f"not supported: {node.target} producing an empty tensor")
        rank = len(node.outs[0].shape)
        dim = (a[1] if len(a) > 1 else node.kwargs.get("dim", 0)) % rank
        total = sum(graph.spec(r).shape[dim] for r in refs)

        def body(ax, ps):
            e = ps[0]
            for p in ps[1:]:
                e = f"concat({e}, {p}, axis={ax})"
            return e
        return _block_kernel(node, graph, refs, dim, total, body)
    x = graph.spec(a[0])
    rank = len(x.shape)
    if kind == "slice":
        dim = (a[1] if len(a) > 1 else 0) % rank
        n = x.shape[dim]
        start = a[2] if len(a) > 2 and a[2] is not None else 0
        end = a[3] if len(a) > 3 and a[3] is not None else n
        step = a[4] if len(a) > 4 else 1
        start = max(0, min(n, start + n if start < 0 else start))
        end = max(0, min(n, end + n if end < 0 else end))
        length = len(range(start, end, step))
        if length == 0:
            raise UnsupportedOpError(f"not supported: {node.target} producing an empty tensor")
        return _block_kernel(node, graph, [a[0]], dim, length,
                             lambda ax, ps: f"slice({ps[0]}, axis={ax}, start={start}, stop={end}, step={step})")
    if kind == "select":
        dim = a[1] % rank
        idx = a[2] % x.shape[dim]
        return _block_kernel(node, graph, [a[0]], dim, 1,
                             lambda ax, ps: f"slice({ps[0]}, axis={ax}, start={idx}, stop={idx + 1})")
    if kind == "flip":
        dims = [d % rank for d in a[1]]
        if len(dims) != 1:
            raise UnsupportedOpError(f"not supported: {node.target} over several dims {dims}")
        return _block_kernel(node, graph, [a[0]], dims[0], x.shape[dims[0]], lambda ax, ps: f"flip({ps[0]}, axis={ax})")
    if kind == "cumsum":
        dim = a[1] % rank
        odt = asp_dtype(node.outs[0])

        def body(ax, ps):
            v = ps[0] if asp_dtype(x) == odt else f"cast({ps[0]}, {odt})"
            return f"cumsum({v}, axis={ax})"
        return _block_kernel(node, graph, [a[0]], dim, x.shape[dim], body)
    if kind == "cumprod":
        dim = a[1] % rank
        xdt, odt = asp_dtype(x), asp_dtype(node.outs[0])
        cdt = "f32" if _float_compute(odt) or xdt != odt else odt
        last = f"y{(x.shape[dim] - 1).bit_length()}"
        return _block_kernel(node, graph, [a[0]], dim, x.shape[dim], lambda ax, ps: cast_expr(last, cdt, odt),
                             lets_for=lambda ax, ps, tile: _product_scan(ps[0], ax, tile, xdt, cdt))
    if kind in ("gather", "index_select", "scatter"):
        dim = a[1] % rank
        idx = a[2]
        ispec = graph.spec(idx)
        A, S, C = _block(x.shape, dim)
        ia, isz, ic = _block(ispec.shape, dim)
        if (ia, ic) != (A, C):
            raise UnsupportedOpError(f"not supported: {node.target} with an index smaller than the input off dim {dim}")
        if kind == "gather":
            return _block_kernel(node, graph, [a[0], idx], dim, isz, lambda ax, ps: f"take({ps[0]}, {ps[1]}, axis={ax})")
        src = a[3] if len(a) > 3 else node.kwargs.get("src", node.kwargs.get("value"))
        if isinstance(src, Ref):
            return _block_kernel(node, graph, [a[0], idx, src], dim, S,
                                 lambda ax, ps: f"put({ps[0]}, {ps[1]}, {ps[2]}, axis={ax})")
        return _block_kernel(node, graph, [a[0], idx], dim, S, lambda ax, ps: f"put({ps[0]}, {ps[1]}, {asp_literal(src)}, axis={ax})")
    raise UnsupportedOpError(f"not supported: {node.target}")


def lower_index_select(node: AtenNode, graph: AtenGraph, embedding: bool = False) -> OpKernel:
    """x.index_select(dim, idx) (and embedding(weight, idx) = weight.index_select(0, idx.flatten()))."""
    if embedding:
        x, idx, dim = graph.spec(node.args[0]), graph.spec(node.args[1]), 0
    else:
        x, dim, idx = graph.spec(node.args[0]), node.args[1] % len(graph.spec(node.args[0]).shape), graph.spec(node.args[2])
    return _select_kernel(node, x, dim, idx)


def _select_kernel(node: AtenNode, x: TensorSpec, dim: int, idx: TensorSpec) -> OpKernel:
    """x's slices along ``dim`` at the (flattened) indices ``idx``: x viewed as [A, S, C], the result
    as [A, n, C]; each [S, TC] block of x is held on chip and ``take`` picks its rows."""
    A, S, C = _block(x.shape, dim)
    n = idx.numel
    tc = divisor_at_most(C, max(1, TILE_CAP // max(S, n)))
    if max(S, n) * tc > BLOCK_CAP:
        raise UnsupportedOpError(f"not supported: {node.target} along a dimension of {S} elements")
    kb = KernelBuilder(kernel_name(node))
    px = kb.param(asp_dtype(x), (A, S, C))
    pi = kb.param("i32", (n, 1))
    (sx,) = kb.op(f"load({px}, tile={asp_list([1, S, tc])})", par=4)
    kept = ([A] if A > 1 else []) + ([C // tc] if tc < C else [])
    call = f"load({pi}, tile={asp_list([n, 1])}"
    if kept:
        call += f", repeat={asp_list(kept)}, at={asp_list(list(range(len(kept))))}"
    (si,) = kb.op(call + ")")
    f = kb.fn(["t", "i"], f"take(t, broadcast(i, {asp_list([n, tc])}), axis=0)")
    (r,) = kb.op(f"map({sx}, {si}, fn={f})", par=8)
    out = node.outs[0]
    o = kb.result(asp_dtype(out), (A, n, C))
    kb.do(f"store({o}, {r})", par=4)
    return OpKernel(node.name, node.target, kb.text(f"{node.target} ({node.name})"), [x.name, idx.name],
                    [(A, S, C), (n, 1)], [out.name], [(A, n, C)], layout=kb.layout(f"{node.target} ({node.name})"))


def lower_topk(node: AtenNode, graph: AtenGraph) -> OpKernel:
    x = graph.spec(node.args[0])
    k = node.args[1]
    dim = (node.args[2] if len(node.args) > 2 else -1) % len(x.shape)
    largest = node.args[3] if len(node.args) > 3 else True
    if dim != len(x.shape) - 1:
        raise UnsupportedOpError(f"not supported: {node.target} along a dim other than the last")
    A, B = x.numel // x.shape[-1], x.shape[-1]
    if B > ROW_CAP:
        raise UnsupportedOpError(f"not supported: {node.target} over {B} elements")
    kb = KernelBuilder(kernel_name(node))
    dt = asp_dtype(x)
    ta = divisor_at_most(A, max(1, TILE_CAP // B))
    p = kb.param(dt, (A, B))
    (s,) = kb.op(f"load({p}, tile={asp_list([ta, B])})", par=4)
    if largest:
        f = kb.fn(["t"], f"(topk(t, k={k}, axis=1), argtopk(t, k={k}, axis=1))")
    else:
        f = kb.fn(["t"], f"(-topk(-t, k={k}, axis=1), argtopk(-t, k={k}, axis=1))")
    v, i = kb.op(f"map({s}, fn={f})", 2, par=8)
    ov = kb.result(dt, (A, k))
    oi = kb.result("i32", (A, k))
    kb.do(f"store({ov}, {v})", par=4)
    kb.do(f"store({oi}, {i})", par=4)
    return OpKernel(node.name, node.target, kb.text(f"{node.target} ({node.name})"), [x.name], [(A, B)],
                    [o.name for o in node.outs], [(A, k), (A, k)], layout=kb.layout(f"{node.target} ({node.name})"))


# ------------------------------------------------------------------ router ops (MoE dispatch: sort, histc, index, index_put)

def _sort_args(node: AtenNode, rank: int) -> tuple[int, bool]:
    """(dim, descending) of aten.sort.default(x, dim=-1, descending=False) or
    aten.sort.stable(x, *, stable, dim=-1, descending=False)."""
    a, kw = node.args, node.kwargs
    if node.target.endswith(".stable"):
        dim, desc = kw.get("dim", -1), kw.get("descending", False)
    else:
        dim = a[1] if len(a) > 1 else kw.get("dim", -1)
        desc = a[2] if len(a) > 2 else kw.get("descending", False)
    return dim % max(rank, 1), bool(desc)


def _descending_order(t: str, dt: str, k: int) -> list[tuple[str, str]]:
    """Lets ending in ``p``: the stable descending order of the rows of tile ``t`` (axis 1, length k),
    NaNs first (torch ranks NaN above +inf). ``argtopk`` keeps ties in index order, but the emulator
    ranks NaN equal to +inf, so floats take a second stable pass on "is NaN" (a two-key radix sort)."""
    if dt == "bool":
        return [("p", f"argtopk(cast({t}, i32), k={k}, axis=1)")]
    if dt == "i32":
        return [("p", f"argtopk({t}, k={k}, axis=1)")]
    return [("p1", f"argtopk({t}, k={k}, axis=1)"),
            ("nan1", f"take(cast({t} != {t}, i32), p1, axis=1)"),
            ("p", f"take(p1, argtopk(nan1, k={k}, axis=1), axis=1)")]


def lower_sort(node: AtenNode, graph: AtenGraph) -> OpKernel:
    """sort(x, dim, descending) along the last dim, stable (equal values keep their index order, as
    torch's CPU sort does; NaN last ascending and first descending). Descending is ``argtopk`` over
    the whole row; ascending is the descending order of the flipped row (ties then come highest index
    first), mapped back to original indices and reversed. Exact for every value: no keys are computed."""
    x = graph.spec(node.args[0])
    rank = len(x.shape)
    dim, desc = _sort_args(node, rank)
    if rank and dim != rank - 1:
        raise UnsupportedOpError(f"not supported: {node.target} along a dim other than the last (dim={dim} of {rank})")
    B = x.shape[-1] if rank else 1
    A = x.numel // B if B else 0
    if B == 0 or A == 0:
        raise UnsupportedOpError(f"not supported: {node.target} of an empty tensor")
    if B > ROW_CAP:
        raise UnsupportedOpError(f"not supported: {node.target} of rows of {B} elements (at most {ROW_CAP})")
    dt = asp_dtype(x)
    kb = KernelBuilder(kernel_name(node))
    ta = divisor_at_most(A, max(1, TILE_CAP // B))
    p = kb.param(dt, (A, B))
    (s,) = kb.op(f"load({p}, tile={asp_list([ta, B])})", par=4)
    if desc:
        lets = [("u", "t"), *_descending_order("u", dt, B), ("idx", "p")]
    else:
        lets = [("u", "flip(t, axis=1)"), *_descending_order("u", dt, B), ("idx", f"flip({B - 1} - p, axis=1)")]
    f = kb.fn(["t"], "(take(t, idx, axis=1), idx)", lets)
    v, i = kb.op(f"map({s}, fn={f})", 2, par=8)
    ov = kb.result(dt, (A, B))
    oi = kb.result("i32", (A, B))
    kb.do(f"store({ov}, {v})", par=4)
    kb.do(f"store({oi}, {i})", par=4)
    comment = f"{node.target} ({node.name})"
    return OpKernel(node.name, node.target, kb.text(comment), [x.name], [(A, B)],
                    [o.name for o in node.outs[:2]], [(A, B), (A, B)], layout=kb.layout(comment))


def _f32(v: float) -> float:
    """``v`` rounded to float32 (as torch stores histc's bin edges), as a Python float."""
    with np.errstate(over="ignore"):
        return float(np.float32(v))


def lower_histc(node: AtenNode, graph: AtenGraph) -> OpKernel:
    """histc(x, bins, min, max) as torch computes it on the CPU: edges ``lo = f32(min)``, ``hi = f32(max)``
    (``min == max``: the data's min and max, widened by 1 each way if equal), an element's bin is
    ``trunc((x - lo) * bins / (hi - lo))`` in f32 (``x == hi`` in the last bin), and elements outside
    [lo, hi] (NaN included) count nowhere. One tile holds the whole input: each element compares its
    bin with ``iota`` and the matches are summed per bin."""
    a, kw = node.args, node.kwargs
    x = graph.spec(a[0])
    bins = int(a[1] if len(a) > 1 else kw.get("bins", 100))
    lo = float(a[2] if len(a) > 2 else kw.get("min", 0))
    hi = float(a[3] if len(a) > 3 else kw.get("max", 0))
    dt = asp_dtype(x)
    if dt != "f32":
        raise UnsupportedOpError(f"not supported: {node.target} of {x.dtype} input (f32 only)")
    n = x.numel
    if bins < 1:
        raise UnsupportedOpError(f"not supported: {node.target} with bins={bins} (torch rejects it)")
    if n == 0 or n * bins > BLOCK_CAP:
        raise UnsupportedOpError(f"not supported: {node.target} of {n} elements into {bins} bins "
                                 f"(at most {BLOCK_CAP} element-bin pairs, in one tile)")
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise UnsupportedOpError(f"not supported: {node.target} with range [{lo}, {hi}] (torch rejects it)")
    if lo == hi:
        lets = [("m0", "min(x, axis=0)"), ("m1", "max(x, axis=0)"), ("same", "m0 == m1"),
                ("lo", "where(same, m0 - 1.0, m0)"), ("hi", "where(same, m1 + 1.0, m1)"), ("span", "hi - lo")]
    else:
        lo32, hi32 = _f32(lo), _f32(hi)
        if not (math.isfinite(lo32) and math.isfinite(hi32) and lo32 < hi32):
            raise UnsupportedOpError(f"not supported: {node.target} with range [{lo}, {hi}], empty in float32")
        span = _f32(hi32 - lo32)   # exact operands, one f32 rounding: what the f32 subtraction gives
        lets = [("lo", asp_literal(lo32)), ("hi", asp_literal(hi32)), ("span", asp_literal(span))]
    lets += [("b", f"minimum(cast((x - lo) * {bins} / span, i32), {bins - 1})"),
             ("hit", f"(b == iota([1, {bins}], axis=1)) & (x >= lo) & (x <= hi)")]
    kb = KernelBuilder(kernel_name(node))
    p = kb.param("f32", (n, 1))
    (s,) = kb.op(f"load({p}, tile={asp_list([n, 1])})", par=4)
    f = kb.fn(["x"], "sum(cast(hit, f32), axis=0)", lets)
    (r,) = kb.op(f"map({s}, fn={f})", par=8)
    o = kb.result("f32", (1, bins))
    kb.do(f"store({o}, {r})", par=4)
    comment = f"{node.target} ({node.name})"
    return OpKernel(node.name, node.target, kb.text(comment), [x.name], [(n, 1)], [node.outs[0].name], [(1, bins)],
                    layout=kb.layout(comment))


def _int_floor_div(a: str, b: str, q: str) -> list[tuple[str, str]]:
    """Lets ending in ``q`` (its name): Python's ``a // b`` on i32 tiles, exactly (ASP's i32 has no ``/``). An f32
    quotient is off by up to ~2^8 for |a| near 2^31, so two refinements on the exact i32 residual
    ``a - q * b`` (wrapping arithmetic keeps a small residual exact) bring it within one, and a last
    step puts the remainder on the divisor's side (``%``'s convention)."""
    lets = [("fb", f"cast({b}, f32)"), ("q0", f"cast(floor(cast({a}, f32) / fb), i32)")]
    for j in (1, 2):
        lets.append((f"q{j}", f"q{j - 1} + cast(floor(cast({a} - q{j - 1} * {b}, f32) / fb), i32)"))
    lets += [("r2", f"{a} - q2 * {b}"),
             ("under", f"(r2 != 0) & ((r2 < 0) != ({b} < 0))"),
             ("over", f"(({b} > 0) & (r2 >= {b})) | (({b} < 0) & (r2 <= {b}))"),
             (q, "q2 - cast(under, i32) + cast(over, i32)")]
    return lets


def _float_floor_div(a: str, b: str) -> list[tuple[str, str]]:
    """Lets ending in ``q``: torch's floor division of floats (c10::div_floor_floating), which is not
    ``floor(a / b)``: ``div = (a - fmod(a, b)) / b``, one less where the remainder's sign differs from
    the divisor's, then rounded to the nearest integer; a zero keeps the sign of ``a / b``, and
    ``b == 0`` gives ``a / b``. ``fmod`` is ``%`` (floored) with the divisor given ``a``'s sign."""
    return [("qd", f"{a} / {b}"),
            ("mod", f"{a} % where({a} < 0.0, -abs({b}), abs({b}))"),
            ("d0", f"({a} - mod) / {b}"),
            ("d", f"where((mod != 0.0) & ((mod < 0.0) != ({b} < 0.0)), d0 - 1.0, d0)"),
            ("fl", "floor(d)"),
            ("rd", "where(d - fl > 0.5, fl + 1.0, fl)"),
            ("z", "where((qd < 0.0) | (1.0 / qd < 0.0), -0.0, 0.0)"),
            ("q", f"where({b} == 0.0, qd, where(d != 0.0, rd, z))")]


def lower_div_rounding(node: AtenNode, graph: AtenGraph) -> OpKernel:
    """div(a, b, rounding_mode='floor'|'trunc') as torch computes it: on integers Python's floor division
    (or truncation toward zero), exactly; on floats torch's floor (see :func:`_float_floor_div`) or
    ``trunc(a / b)``; 16-bit floats are refused."""
    mode = node.kwargs.get("rounding_mode")
    if mode not in ("floor", "trunc"):
        raise UnsupportedOpError(f"not supported: {node.target} with rounding_mode={mode!r}")
    out = node.outs[0]
    odt = asp_dtype(out)
    if odt not in ("f32", "i32"):
        # 16-bit floats: torch rounds differently per mode and path (trunc rounds the quotient to
        # 16 bits first), which an f32 formula does not reproduce bit for bit
        raise UnsupportedOpError(f"not supported: {node.target} with a {out.dtype} result (f32 and integers only)")
    ops = [_scalar_or_tensor(graph, node.args[0]), _scalar_or_tensor(graph, node.args[1])]
    if odt == "i32":
        for o in ops:
            if o.kind == "scalar" and not (isinstance(o.value, int) and -2 ** 31 <= o.value < 2 ** 31):
                raise UnsupportedOpError(f"not supported: {node.target} with scalar {o.value!r} on integers")
    cdt = "i32" if odt == "i32" else "f32"

    def operand(o: _Operand, x: str) -> str:
        if o.kind == "scalar":
            # a one-element tile, not a weak constant: the lets compare and mix it freely
            v = int(o.value) if cdt == "i32" else float(o.value)
            return f"full([1], {asp_literal(v)}, dtype={cdt})"
        return _paren(cast_expr(x, asp_dtype(o.spec), cdt))

    def expr(xs: list[str]):
        a, b = operand(ops[0], xs[0]), operand(ops[1], xs[1])
        lets = [("a", a), ("b", b)]
        if cdt == "i32":
            if mode == "floor":
                lets += _int_floor_div("a", "b", "q")
            else:   # the floor moved up by one where the division was inexact and the signs differ
                lets += _int_floor_div("a", "b", "qf")
                lets.append(("q", "qf + cast(((a - qf * b) != 0) & ((a < 0) != (b < 0)), i32)"))
        elif mode == "floor":
            lets += _float_floor_div("a", "b")
        else:
            lets += [("qd", "a / b"), ("q", "where(qd < 0.0, -floor(-qd), floor(qd))")]
        return lets, cast_expr("q", cdt, odt)

    return _elementwise_op_kernel(node, ops, expr, odt)



def _single_index(node: AtenNode, graph: AtenGraph) -> tuple[TensorSpec, TensorSpec]:
    """(x, idx) of ``x[idx]`` / ``x[idx] = v``: one integer index tensor on dim 0; anything else (None
    entries, several index tensors, bool masks, whose result size depends on the data) is refused."""
    x, indices = graph.spec(node.args[0]), node.args[1]
    if len(indices) != 1 or not isinstance(indices[0], Ref):
        raise UnsupportedOpError(f"not supported: {node.target} with indices {indices!r} "
                                 "(only one index tensor, on dim 0)")
    idx = graph.spec(indices[0])
    if idx.dtype not in ("i64", "i32"):
        raise UnsupportedOpError(f"not supported: {node.target} with a {idx.dtype} index (integer indices only)")
    if not x.shape:
        raise UnsupportedOpError(f"not supported: {node.target} of a 0-d tensor")
    return x, idx


def lower_index(node: AtenNode, graph: AtenGraph) -> OpKernel:
    """x[idx] with one integer index tensor: rows of x picked along dim 0 (``index_select`` of the
    flattened index; the result is idx.shape + x.shape[1:]). Negative indices count from the end."""
    x, idx = _single_index(node, graph)
    return _select_kernel(node, x, 0, idx)


def lower_index_put(node: AtenNode, graph: AtenGraph) -> OpKernel:
    """``y = x.clone(); y[idx] = values`` (accumulate=False) with one integer index tensor on dim 0:
    x viewed as [S, C] held on chip per column block, ``put`` writes the [n, C] values (or one
    broadcast scalar-like value) at the indexed rows. Repeated indices: the later write wins (what
    torch's CPU kernel does when it runs on one thread; torch leaves it unspecified)."""
    a = node.args
    x, idx = _single_index(node, graph)
    accumulate = a[3] if len(a) > 3 else node.kwargs.get("accumulate", False)
    if accumulate:
        raise UnsupportedOpError(f"not supported: {node.target} with accumulate=True")
    if not isinstance(a[2], Ref):
        raise UnsupportedOpError(f"not supported: {node.target} with values {a[2]!r}")
    v = graph.spec(a[2])
    S, C, n = x.shape[0], math.prod(x.shape[1:]), idx.numel
    if v.numel not in (1, n * C) or (v.numel != 1 and tuple(v.shape) != tuple(idx.shape) + tuple(x.shape[1:])):
        raise UnsupportedOpError(f"not supported: {node.target} with values of shape {list(v.shape)} for "
                                 f"{list(idx.shape) + list(x.shape[1:])} (a full block or one value only)")
    tc = divisor_at_most(C, max(1, TILE_CAP // max(S, n)))
    if max(S, n) * tc > BLOCK_CAP:
        raise UnsupportedOpError(f"not supported: {node.target} along a dimension of {max(S, n)} elements")
    dt, vdt = asp_dtype(x), asp_dtype(v)
    kb = KernelBuilder(kernel_name(node))
    px = kb.param(dt, (S, C))
    pi = kb.param("i32", (n, 1))
    chunks = [C // tc] if tc < C else []
    (sx,) = kb.op(f"load({px}, tile={asp_list([S, tc])})", par=4)
    call = f"load({pi}, tile={asp_list([n, 1])}"
    if chunks:
        call += f", repeat={asp_list(chunks)}, at=[0]"
    (si,) = kb.op(call + ")")
    if v.numel == 1:
        pv = kb.param(vdt, (1, 1))
        call = f"load({pv}, tile=[1, 1]" + (f", repeat={asp_list(chunks)}, at=[0]" if chunks else "")
        vexpr = f"broadcast({cast_expr('v', vdt, dt)}, {asp_list([n, tc])})"
        vview = (1, 1)
    else:
        pv = kb.param(vdt, (n, C))
        call = f"load({pv}, tile={asp_list([n, tc])}"
        vexpr = cast_expr("v", vdt, dt)
        vview = (n, C)
    (sv,) = kb.op(call + ")", par=4)
    f = kb.fn(["t", "i", "v"], f"put(t, broadcast(i, {asp_list([n, tc])}), {vexpr}, axis=0)")
    (r,) = kb.op(f"map({sx}, {si}, {sv}, fn={f})", par=8)
    o = kb.result(dt, (S, C))
    kb.do(f"store({o}, {r})", par=4)
    comment = f"{node.target} ({node.name})"
    return OpKernel(node.name, node.target, kb.text(comment), [x.name, idx.name, v.name], [(S, C), (n, 1), vview],
                    [node.outs[0].name], [(S, C)], layout=kb.layout(comment))


# ------------------------------------------------------------------ dispatch

#: ATen op names that the baseline lowers as one elementwise map (and that fuse into row regions)
ELEMENTWISE_OPS = set(_UNARY) | set(_BINARY) | set(_FLOAT_CLASS) | {"gelu", "elu", "leaky_relu", "clamp", "hardtanh", "where",
                                             "masked_fill", "_to_copy", "expand"}


def is_noop_expand(node: AtenNode, graph: AtenGraph) -> bool:
    """An expand to the shape its operand already has relabels memory; it copies nothing."""
    return aten_name(node.target) == "expand" and isinstance(node.args[0], Ref) and \
        tuple(graph.spec(node.args[0]).shape) == tuple(node.outs[0].shape)


def elementwise_kind(base: str) -> str:
    return "cast" if base == "_to_copy" else base


def aten_name(target: str) -> str:
    """The ATen op name of a target without namespace and overload: "aten.add.Tensor" -> "add"
    (unlike capture.op_kind, view-like ops are not folded together)."""
    parts = target.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "aten" else parts[0]


def _grouped_mm_targets() -> frozenset[str]:
    from .grouped_matmul import GROUPED_MM_TARGETS      # it builds on this module's helpers
    return GROUPED_MM_TARGETS


def lower_node(node: AtenNode, graph: AtenGraph, constants: set[str]) -> Step:
    """The baseline step for one node (``constants``: graph values known ahead of time)."""
    base = aten_name(node.target)
    refs = [r.name for r in node.refs()]
    if base in CONST_TARGETS or (refs and all(r in constants for r in refs)) or (not refs and base != "getitem"):
        return Const(node.name, node.target)
    if base in ALIAS_KINDS or is_noop_expand(node, graph):
        return Alias(node.name, node.target, refs[0], node.name)
    if base in ("_softmax", "softmax"):
        return lower_softmax(node, graph, log=False)
    if base in ("_log_softmax", "log_softmax"):
        return lower_softmax(node, graph, log=True)
    if base in ("sum", "mean", "amax", "amin", "argmax", "argmin", "var", "any", "all") or \
            (base in ("max", "min") and node.target.endswith(".dim")):
        return lower_reduction(node, graph, base)
    if base == "linalg_vector_norm":
        return lower_reduction(node, graph, "norm")
    if base in ("max", "min") and node.target.endswith(".default") and len(node.args) == 1:
        return lower_reduction(node, graph, "amax" if base == "max" else "amin")
    if base == "native_layer_norm":
        return lower_layer_norm(node, graph)
    if base == "native_group_norm":
        return lower_group_norm(node, graph)
    if base in ("_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "native_batch_norm"):
        return lower_batch_norm(node, graph, base)
    if base in ("mm", "bmm", "addmm"):
        return lower_matmul(node, graph, base)
    if node.target in _grouped_mm_targets():
        from .grouped_matmul import lower_grouped_mm
        return lower_grouped_mm(node, graph)
    if base in ("permute", "transpose", "t"):
        return lower_permute(node, graph, base)
    if base in ("cat", "slice", "select", "flip", "cumsum", "cumprod", "gather", "scatter"):
        return lower_structural(node, graph, base)
    if base == "topk":
        return lower_topk(node, graph)
    if base == "sort":
        return lower_sort(node, graph)
    if base == "histc":
        return lower_histc(node, graph)
    if base == "index":
        return lower_index(node, graph)
    if base == "index_put":
        return lower_index_put(node, graph)
    if base == "div" and node.kwargs.get("rounding_mode") is not None:
        return lower_div_rounding(node, graph)
    if base == "repeat":
        return lower_repeat(node, graph)
    if base == "index_select":
        return lower_index_select(node, graph)
    if base == "embedding":
        return lower_index_select(node, graph, embedding=True)
    if base in ELEMENTWISE_OPS:
        if base == "_to_copy" and node.kwargs.get("dtype") is None:
            return Alias(node.name, node.target, refs[0], node.name)
        return lower_elementwise(node, graph, elementwise_kind(base))
    raise UnsupportedOpError(f"not supported: {node.target}")


__all__ = ["lower_node", "OpKernel", "Alias", "Const", "Step", "UnsupportedOpError", "divisor_at_most"]
