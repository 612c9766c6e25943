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
           "canonical_key", "canonical_form", "squeeze_broadcast_operands", "COMMUTATIVE", "rewrite_masked_row_guard", "canonical_export"]

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


def squeeze_broadcast_operands(g: AtenGraph) -> AtenGraph:
    """``g`` with the leading size-1 dims of each input or param dropped where only elementwise
    ops read it (``[1, 1, S, S]`` and ``[S, S]`` are the same operand of ``scores + mask``:
    broadcasting reads the same element for every output position). Each reading op's output
    shape stays in the graph, so two graphs that agree after this compute the same values.
    Used to compare (a mask made ``[S, S]`` then unsqueezed in one capture and ``[1, 1, S, S]``
    in another), never to run: the backend reshapes the model's value to the kernel's shape."""
    readers: dict[str, list[AtenNode]] = {}
    for n in g.nodes:
        for r in n.refs():
            readers.setdefault(r.name, []).append(n)
    outputs = {r.name for r in g.outputs}

    def squeezable(s: TensorSpec) -> bool:
        users = readers.get(s.name, [])
        return (len(s.shape) > 1 and s.shape[0] == 1 and s.name not in outputs and bool(users)
                and all(u.kind in _ELEMENTWISE and u.kind not in ("clone", "alias", "detach") for u in users))

    def squeezed(s: TensorSpec) -> TensorSpec:
        shape = tuple(s.shape)
        while len(shape) > 1 and shape[0] == 1:
            shape = shape[1:]
        return TensorSpec(s.name, shape, s.dtype)

    if not any(squeezable(s) for s in (*g.inputs, *g.params)):
        return g
    return AtenGraph([squeezed(s) if squeezable(s) else s for s in g.inputs],
                     [squeezed(s) if squeezable(s) else s for s in g.params], g.nodes, g.outputs, g.param_values,
                     g.param_targets)


def canonical_form(g: AtenGraph, reorder: bool = True) -> AtenGraph:
    """What :func:`canonical_key` hashes: operands ordered (unless ``reorder`` is False: a matched
    subgraph is already in its pattern's order), row views removed, broadcast operands without
    their leading 1s, shapes flattened to rows where the graph is row-wise."""
    c = squeeze_broadcast_operands(strip_row_views(order_operands(g) if reorder else g))
    return flatten_rows(c) if row_safe(c) else c


def canonical_key(g: AtenGraph, reorder: bool = True) -> str:
    """The sized key two graphs share when they compute the same problem up to the canonical
    differences (operand order, row views, leading dimensions of a row-wise graph)."""
    return signature(canonical_form(g, reorder)).sized_key()


# ---------------------------------------------------------------------- exported programs

def _is_call(n: Any, target: Any) -> bool:
    return getattr(n, "op", None) == "call_function" and n.target is target


def _row_guard_source(n: Any) -> Any:
    """For ``any(logical_not(eq(x, -inf)), dim, keepdim)`` over one static non-empty dim of a float
    ``x``: (x, dim, keepdim), else None."""
    import torch

    aten = torch.ops.aten
    if not (_is_call(n, aten.any.dim) or _is_call(n, aten.any.dims)):
        return None
    dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
    keepdim = n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False)
    dims = [dims] if isinstance(dims, int) else dims
    if not isinstance(dims, (list, tuple)) or len(dims) != 1 or not isinstance(dims[0], int):
        return None
    src = n.args[0]
    if not _is_call(src, aten.logical_not.default):
        return None
    eq = src.args[0]
    if not _is_call(eq, aten.eq.Scalar) or not (isinstance(eq.args[1], float) and eq.args[1] == -math.inf):
        return None
    x = eq.args[0]
    xv = x.meta.get("val") if hasattr(x, "meta") else None
    if not isinstance(xv, torch.Tensor) or not xv.dtype.is_floating_point or not xv.dim():
        return None
    size = xv.shape[dims[0] % xv.dim()]
    if isinstance(size, int):
        nonempty = size >= 1
    else:       # a dynamic dim (a decode step's KV length): its range must exclude 0, known without a guard
        from torch.fx.experimental.symbolic_shapes import statically_known_true
        nonempty = statically_known_true(size >= 1)
    if not nonempty:
        return None     # amax of an empty row raises where any() answers False: only rewrite when it cannot be empty
    return x, dims[0], bool(keepdim)


def rewrite_masked_row_guard(ep: Any) -> int:
    """Rewrite, in place in the exported program ``ep``, the guard PyTorch's SDPA decomposition
    puts after a masked softmax ("a row whose scores are all -inf gives zeros, not NaN"):
    ``any(logical_not(eq(s, -inf)), -1, keepdim)`` becomes ``ne(amax(s, -1, keepdim), -inf)``.
    Returns how many guards were rewritten.

    Why: ``any`` over booleans is not an op the chip's lowering has, so the guard (two ops per
    attention layer) ran eagerly between the score kernel and the probabilities kernel; ``amax``
    and ``ne`` are row ops the row template fuses with the softmax that already takes the row
    max. The two forms are equal for every input: a row of ``s`` has a value other than -inf
    exactly when its max is not -inf (a NaN makes both True: ``eq(NaN, -inf)`` is False, and
    ``amax`` propagates NaN, which is not -inf); an empty row is never rewritten. The ops that
    fed only the old guard are removed. Both the campaign's model capture
    (:mod:`agentforge.torch.from_model`) and the backend apply it, so tasks and the graphs they
    are matched in agree."""
    import torch

    aten = torch.ops.aten
    g = ep.graph_module.graph
    done = 0
    for n in list(g.nodes):
        got = _row_guard_source(n)
        if got is None:
            continue
        x, dim, keepdim = got
        not_node, eq_node = n.args[0], n.args[0].args[0]
        with g.inserting_before(n):
            amax = g.call_function(aten.amax.default, (x, [dim], keepdim))
            ne = g.call_function(aten.ne.Scalar, (amax, -math.inf))
        for new in (amax, ne):
            new.meta.update({k: v for k, v in n.meta.items() if k in ("stack_trace", "nn_module_stack", "source_fn_stack")})
        amax.meta["val"] = aten.amax.default(x.meta["val"], [dim], keepdim)
        ne.meta["val"] = aten.ne.Scalar(amax.meta["val"], -math.inf)
        n.replace_all_uses_with(ne)
        g.erase_node(n)
        for dead in (not_node, eq_node):
            if not dead.users:
                g.erase_node(dead)
        done += 1
    if done:
        ep.graph_module.recompile()
    return done


def canonical_export(ep: Any, graph: AtenGraph, name: str = "model") -> AtenGraph:
    """``ep`` (an exported, decomposed program) with the rewrites that keep what it computes
    (:func:`rewrite_masked_row_guard`) applied in place, and its AtenGraph (``graph`` when nothing
    changed). Used on every model graph the campaign captures tasks from and the backend plans."""
    if not rewrite_masked_row_guard(ep):
        return graph
    from agentforge.capture import graph_from_export

    return graph_from_export(ep, name, f"<{name}>")
