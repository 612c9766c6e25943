"""Canonical form of captured ATen graphs, so that a task's graph and the same computation
inside a real model's graph compare equal.

Why: a model written differently from a task decomposes to different-looking ATen even when it
computes the same thing. Two differences account for most missed matches in Hugging Face
models, and both are harmless to normalise away:

- **operand order of commutative ops**: HF's RMSNorm computes ``weight * x`` where a task
  writes ``x * weight``. :func:`order_operands` puts the operands of ``add``/``mul`` in one
  order (higher rank first, then activations before weights; ties keep the written order),
  applied to both graphs before matching.
- **leading dimensions**: a linear on ``[B, S, H]`` lowers to ``view -> mm -> view``, an
  elementwise op then runs on ``[B, S, N]``; the same block as a task on ``[T, H]`` has no
  views. A *row view* (:func:`is_row_view`: a view that keeps the last dimension and only merges
  or splits the leading ones) is treated as a copy by the matcher, and the sized key of a match
  is computed on the graph with row views removed and, where every op is *row-wise*
  (:func:`row_safe`: linears with a 2-D weight, elementwise ops whose operands are per-row, per
  -column or whole, reductions and softmax over the last dimension), with every shape flattened
  to ``[rows, last]``. On such a graph each row of the output depends only on the same row of
  the inputs, so computing it on ``[B*S, H]`` and reshaping is exactly computing it on
  ``[B, S, H]``. Graphs that are not row-wise keep their exact shapes in the key.

Both sides go through the same functions (:func:`canonical_graph`, :func:`canonical_key`), so a
match is verified against the library's problems in one form. The pass never changes what a
graph computes: it is used to compare, never to run.
"""

from __future__ import annotations

import math
from typing import Any

from agentforge.capture import AtenGraph, AtenNode, Ref, TensorSpec, signature

__all__ = ["order_operands", "canonical_graph", "is_row_view", "strip_row_views", "row_safe", "flatten_rows",
           "canonical_key", "canonical_form", "COMMUTATIVE"]

#: ops whose two tensor operands may be swapped without changing the result
COMMUTATIVE = frozenset({"aten.add.Tensor", "aten.mul.Tensor", "aten.maximum.default", "aten.minimum.default",
                         "aten.eq.Tensor", "aten.ne.Tensor", "aten.logical_and.default", "aten.logical_or.default",
                         "aten.bitwise_and.Tensor", "aten.bitwise_or.Tensor"})


def _weight_names(g: AtenGraph, weights: set[str] | frozenset[str] | None) -> set[str]:
    return {s.name for s in g.params} | set(weights or ())


def order_operands(g: AtenGraph, weights: set[str] | frozenset[str] | None = None) -> AtenGraph:
    """``g`` with the two tensor operands of each commutative op in canonical order: the operand
    of higher rank first, then an activation before a weight (a param, or a graph input named in
    ``weights``: what the model's parameters are when dynamo passes them as inputs); each operand
    is classified through the copies and row views it is seen through. A tie keeps the order
    written (so a match is never invented, only ``w * x`` found as ``x * w``).

    Whether an activation is a graph input or computed does not count: a region of a model
    written as a task takes as inputs the values the model computes, so that distinction would
    order the two graphs differently."""
    heavy = _weight_names(g, weights)
    specs = g.spec_table
    by_name = {n.name: n for n in g.nodes}

    def resolve(name: str) -> str:
        seen = 0
        while name in by_name and seen < 64:
            n = by_name[name]
            if not ((n.kind in ("clone", "alias", "detach") and len(n.refs()) == 1) or is_row_view(n, specs)):
                break
            name = n.refs()[0].name
            seen += 1
        return name

    nodes = []
    changed = False
    for n in g.nodes:
        if n.target in COMMUTATIVE and len(n.args) >= 2 and isinstance(n.args[0], Ref) and isinstance(n.args[1], Ref) \
                and not n.kwargs.get("alpha", 1) != 1:
            a, b = n.args[0], n.args[1]

            def key(r: Ref) -> tuple[int, int]:
                s = specs.get(r.name)
                return (-(s.rank if s else 0), 1 if resolve(r.name) in heavy else 0)

            if key(b) < key(a):
                n = AtenNode(n.name, n.target, (b, a, *n.args[2:]), n.kwargs, n.out)
                changed = True
        nodes.append(n)
    if not changed:
        return g
    return AtenGraph(g.inputs, g.params, nodes, g.outputs, g.param_values, g.param_targets)


def canonical_graph(g: AtenGraph, weights: set[str] | frozenset[str] | None = None) -> AtenGraph:
    """The graph the matcher walks: operands of commutative ops ordered (row views stay in the
    graph; the matcher looks through them, see :func:`is_row_view`). ``weights``: graph inputs
    that are the model's parameters (see :func:`order_operands`)."""
    return order_operands(g, weights)


def is_row_view(n: AtenNode, specs: dict[str, TensorSpec]) -> bool:
    """A view that keeps the last dimension and the element count and only merges or splits the
    leading dimensions (``[B, S, H] -> [B*S, H]`` and back, ``unsqueeze(0)``)."""
    if n.kind != "view" or not isinstance(n.out, TensorSpec):
        return False
    refs = n.refs()
    if len(refs) != 1 or refs[0].name not in specs:
        return False
    src, out = specs[refs[0].name].shape, n.out.shape
    if not src or not out or src == out:
        return False
    return src[-1] == out[-1] and math.prod(src) == math.prod(out)


def strip_row_views(g: AtenGraph) -> AtenGraph:
    """``g`` without its row views: each use of a row view reads the viewed value instead."""
    specs = g.spec_table
    alias: dict[str, str] = {}
    nodes = []
    for n in g.nodes:
        if is_row_view(n, specs):
            src = n.refs()[0].name
            alias[n.name] = alias.get(src, src)
            continue
        nodes.append(AtenNode(n.name, n.target, _re(n.args, alias), {k: _re(v, alias) for k, v in n.kwargs.items()},
                              n.out))
    if not alias:
        return g
    return AtenGraph(g.inputs, g.params, nodes, [Ref(alias.get(r.name, r.name)) for r in g.outputs], g.param_values,
                     g.param_targets)


def _re(v: Any, alias: dict[str, str]) -> Any:
    if isinstance(v, Ref):
        return Ref(alias.get(v.name, v.name))
    if isinstance(v, list):
        return [_re(x, alias) for x in v]
    if isinstance(v, tuple):
        return tuple(_re(x, alias) for x in v)
    if isinstance(v, dict):
        return {k: _re(x, alias) for k, x in v.items()}
    return v


#: ops computed element by element (each output element from the same position of each operand)
_ELEMENTWISE = frozenset({
    "add", "sub", "mul", "div", "neg", "exp", "log", "sqrt", "rsqrt", "pow", "sigmoid", "tanh", "relu", "gelu",
    "silu", "erf", "abs", "maximum", "minimum", "where", "clamp", "cast", "reciprocal", "log1p", "expm1", "sin", "cos",
    "eq", "ne", "lt", "le", "gt", "ge", "logical_not", "logical_and", "logical_or", "leaky_relu", "elu", "softplus",
    "hardtanh", "sign", "square", "tan", "clone", "alias", "detach",
})
_LAST_DIM_REDUCTIONS = frozenset({"sum", "mean", "amax", "amin", "softmax", "log_softmax", "var"})


def _last_dim_only(dims: Any, rank: int) -> bool:
    if isinstance(dims, int):
        dims = [dims]
    if not isinstance(dims, (list, tuple)) or len(dims) != 1 or not isinstance(dims[0], int):
        return False
    return dims[0] % rank == rank - 1 if rank else False


def row_safe(g: AtenGraph) -> bool:
    """Every op of ``g`` (row views removed) is row-wise: each row of each output depends only on
    the same row of the inputs (see the module docstring). Weights (params) may be anything the
    ops read whole: a linear's 2-D weight, a per-column vector."""
    specs = g.spec_table
    weights = {s.name for s in g.params}
    for n in g.nodes:
        if n.kind == "getitem":
            continue
        outs = n.outs
        if len(outs) != 1:
            return False
        out = outs[0]
        refs = n.refs()
        if n.kind in ("mm", "addmm"):
            a, b = (refs[1], refs[2]) if n.kind == "addmm" else (refs[0], refs[1])
            if specs[b.name].rank != 2 or not _from_weights(g, b.name, weights):
                return False
            if n.kind == "addmm" and specs[refs[0].name].rank > 1:
                return False
            continue
        if n.kind == "permute":
            if not all(r.name in weights for r in refs):   # a weight's transpose (linear), never an activation
                return False
            continue
        if n.kind in _LAST_DIM_REDUCTIONS:
            src = specs[refs[0].name]
            dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
            if not _last_dim_only(dims, src.rank):
                return False
            continue
        if n.kind in _ELEMENTWISE:
            for r in refs:
                s = specs[r.name]
                if not _per_row(s.shape, out.shape):
                    return False
            continue
        return False
    return True


def _from_weights(g: AtenGraph, name: str, weights: set[str]) -> bool:
    """``name`` is a weight, or a transpose/copy of one."""
    seen = 0
    while name not in weights and seen < 4:
        try:
            n = g.node(name)
        except KeyError:
            return False
        if n.kind not in ("permute", "clone", "alias", "detach") or len(n.refs()) != 1:
            return False
        name = n.refs()[0].name
        seen += 1
    return name in weights


def _per_row(src: tuple[int, ...], out: tuple[int, ...]) -> bool:
    """An elementwise operand of shape ``src`` in an op of output ``out`` reads by row: the same
    rows as the output (leading dims equal or merged the same way), or one row for all (leading 1s),
    and every column or one column."""
    if len(src) <= 1:
        return not src or src[-1] in (1, out[-1] if out else 1)
    if not out:
        return False
    last_ok = src[-1] in (1, out[-1])
    lead_s, lead_o = src[:-1], out[:-1]
    return last_ok and (math.prod(lead_s) == 1 or math.prod(lead_s) == math.prod(lead_o))


def _flat(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape if len(shape) <= 2 else (math.prod(shape[:-1]), shape[-1])


def flatten_rows(g: AtenGraph) -> AtenGraph:
    """``g`` with every shape of rank > 2 flattened to ``[rows, last]`` and reduction dims written
    as -1 (only meaningful for a :func:`row_safe` graph; used to compare, never to run)."""
    def spec(s: TensorSpec) -> TensorSpec:
        return TensorSpec(s.name, _flat(s.shape), s.dtype)

    nodes = []
    for n in g.nodes:
        args = n.args
        if n.kind in _LAST_DIM_REDUCTIONS and len(args) > 1 and isinstance(args[1], (int, list, tuple)):
            args = (args[0], [-1] if isinstance(args[1], (list, tuple)) else -1, *args[2:])
        out = tuple(spec(o) for o in n.out) if isinstance(n.out, tuple) else spec(n.out)
        nodes.append(AtenNode(n.name, n.target, args, n.kwargs, out))
    return AtenGraph([spec(s) for s in g.inputs], [spec(s) for s in g.params], nodes, g.outputs, g.param_values,
                     g.param_targets)


def canonical_form(g: AtenGraph, reorder: bool = True) -> AtenGraph:
    """What :func:`canonical_key` hashes: operands ordered (unless ``reorder`` is False: a matched
    subgraph is already in its pattern's order), row views removed, shapes flattened to rows
    where the graph is row-wise."""
    c = strip_row_views(order_operands(g) if reorder else g)
    return flatten_rows(c) if row_safe(c) else c


def canonical_key(g: AtenGraph, reorder: bool = True) -> str:
    """The sized key two graphs share when they compute the same problem up to the canonical
    differences (operand order, row views, leading dimensions of a row-wise graph)."""
    return signature(canonical_form(g, reorder)).sized_key()
