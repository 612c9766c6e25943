"""What the author reads from a captured graph, shared by its passes and templates.

The semantic nodes a plan's indices refer to; which values are constants (known ahead of time)
and which are relabels (views, copies by layout, getitem); who reads each value; how an op works
on rows (``row_kind``: whether and how it can join a row region); and a walker that follows
values back through relabels (the pattern matchers and the row template use it).
"""

from __future__ import annotations

import math

from ..capture import TRANSPARENT_KINDS, AtenGraph, AtenNode, Ref, op_kind
from ..lowering import (ALIAS_KINDS, CONST_TARGETS, ELEMENTWISE_OPS, Alias, Const, Step, aten_name,
                        is_noop_expand)


def semantic_nodes(graph: AtenGraph) -> list[AtenNode]:
    """Nodes a plan refers to: everything but copies/aliases that export inserts by layout."""
    return [n for n in graph.nodes if op_kind(n.target) not in TRANSPARENT_KINDS and n.target != "getitem"]


def is_const(node: AtenNode, constants: set[str]) -> bool:
    """A value known ahead of time: a constant-making op, or an op of constants only (``constants``
    so far, in graph order)."""
    base = aten_name(node.target)
    refs = [r.name for r in node.refs()]
    return base in CONST_TARGETS or (refs and all(r in constants for r in refs)) or (not refs and base != "getitem")


def is_alias(node: AtenNode, graph: AtenGraph | None = None) -> bool:
    """A relabel of another value (getitem, views, a dtype-less copy, a no-op expand): no kernel."""
    return node.target == "getitem" or aten_name(node.target) in ALIAS_KINDS or \
        (aten_name(node.target) == "_to_copy" and node.kwargs.get("dtype") is None) or \
        (graph is not None and is_noop_expand(node, graph))


def row_period(p: tuple[int, ...], out_shape: tuple[int, ...]) -> int | None:
    """Rows an operand of shape ``p`` (padded to the rank of ``out_shape``) repeats with, when it
    broadcasts over the leading dims only (``[S, D]`` against ``[B, H, S, D]``: S rows, used by
    every (b, h)); None otherwise."""
    lead_p, lead_o = tuple(p[:-1]), tuple(out_shape[:-1])
    for j in range(1, len(lead_o)):
        if all(d == 1 for d in lead_p[:j]) and lead_p[j:] == lead_o[j:]:
            period = math.prod(lead_o[j:])
            return period if 1 < period < math.prod(lead_o) else None
    return None


def interleaves(node: AtenNode, graph: AtenGraph, rows: int) -> bool:
    """A cat along a new last dim of size n of n values [.., a, 1] (stacked pairs): in a row region
    over ``rows`` rows, n values of a columns interleaved into one of a * n."""
    out = tuple(node.outs[0].shape)
    refs = node.args[0]
    return len(out) >= 3 and out[-1] == len(refs) and math.prod(out[:-2]) == rows and \
        all(isinstance(r, Ref) and tuple(graph.spec(r).shape) == out[:-1] + (1,) for r in refs)


def row_view(shape: tuple[int, ...]) -> tuple[int, int]:
    """A shape as (rows, columns): every dimension but the last are rows."""
    if not shape:
        return 1, 1
    return math.prod(shape[:-1]), shape[-1]


def on_last_dim(node: AtenNode, graph: AtenGraph, dims) -> bool:
    """``dims`` (of the node's first operand) are exactly its last dimension."""
    x = graph.spec(node.args[0])
    rank = len(x.shape)
    if rank == 0:
        return False
    if dims is None:
        return False
    if isinstance(dims, int):
        dims = [dims]
    return [d % rank for d in dims] == [rank - 1]


def total_kind(node: AtenNode, graph: AtenGraph) -> str | None:
    """A reduction across rows: "all" (every dim, to one value) or "columns" (every dim but the
    last: one value per column), or None. In a row region it is a split reduction: each row tile
    reduces to a partial, in parallel, and a second stage combines the partials."""
    if node.kwargs.get("dtype") is not None:
        return None
    rank = len(graph.spec(node.args[0]).shape)
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if rank == 0:
        return None
    if dims is None or dims == []:
        return "all"
    dims = {d % rank for d in ([dims] if isinstance(dims, int) else dims)}
    if dims == set(range(rank)):
        return "all"
    return "columns" if rank >= 2 and dims == set(range(rank - 1)) else None


def row_kind(node: AtenNode, graph: AtenGraph) -> str | None:
    """How a node works on rows (None: it cannot join a row region)."""
    base = aten_name(node.target)
    a = node.args
    if base in ELEMENTWISE_OPS and base != "expand":
        return "elementwise"
    if base == "expand":
        return "expand"
    if base in ("sum", "mean", "amax", "amin", "argmax", "argmin", "var"):
        dims = a[1] if len(a) > 1 else node.kwargs.get("dim")
        if on_last_dim(node, graph, dims):
            return "reduce"
        return "total" if base in ("sum", "mean", "amax", "amin") and total_kind(node, graph) else None
    if base == "linalg_vector_norm" and node.kwargs.get("dtype") is None:   # ord 2, 1, inf over each row
        ord_ = a[1] if len(a) > 1 else node.kwargs.get("ord", 2)
        dims = a[2] if len(a) > 2 else node.kwargs.get("dim")
        return "reduce" if ord_ in (2, 1, math.inf) and on_last_dim(node, graph, dims) else None
    if base in ("_softmax", "_log_softmax"):
        return "softmax" if on_last_dim(node, graph, a[1]) else None
    if base == "native_layer_norm":
        return "layer_norm" if len(a[1]) == 1 else None
    if base == "cumsum":
        return "cumsum" if on_last_dim(node, graph, a[1]) else None
    if base == "flip":
        return "flip" if on_last_dim(node, graph, list(a[1])) else None
    if base == "select":   # one element of short groups along the rows ([.., D/2, 2][..., i]): a strided slice
        rank = len(graph.spec(a[0]).shape)
        return "select" if rank >= 3 and a[1] % rank == rank - 1 else None
    if base == "slice":
        return "slice" if on_last_dim(node, graph, a[1] if len(a) > 1 else 0) else None
    if base == "cat":
        first = graph.spec(a[0][0])
        dim = a[1] if len(a) > 1 else 0
        return "cat" if dim % len(first.shape) == len(first.shape) - 1 else None
    if base == "topk":
        x = graph.spec(a[0])
        dim = a[2] if len(a) > 2 else -1
        return "topk" if dim % len(x.shape) == len(x.shape) - 1 else None
    if base == "scatter" and len(a) >= 3 and isinstance(a[0], Ref) and isinstance(a[2], Ref) and \
            not node.kwargs.get("reduce") and len(a) < 5:
        x = graph.spec(a[0])
        if len(x.shape) < 1 or a[1] % len(x.shape) != len(x.shape) - 1 or \
                len(graph.spec(a[2]).shape) != len(x.shape):
            return None
        return "scatter"   # along rows: put(row, idx, src)
    if base == "gather" and len(a) >= 3 and isinstance(a[0], Ref) and isinstance(a[2], Ref) and \
            not node.kwargs.get("sparse_grad") and not (len(a) > 3 and a[3]):
        x, idx = graph.spec(a[0]), graph.spec(a[2])
        if len(x.shape) < 1 or a[1] % len(x.shape) != len(x.shape) - 1 or len(idx.shape) != len(x.shape) or \
                tuple(idx.shape[:-1]) != tuple(x.shape[:-1]):
            return None
        return "gather"    # along rows: take(row, idx) (the target logit of a cross-entropy)
    return None


def swaps_last_two(node: AtenNode, graph: AtenGraph) -> bool:
    """A permute / transpose / t that swaps exactly the last two axes (B[b]^T of a batched matmul)."""
    base = aten_name(node.target)
    k = len(graph.spec(node.args[0]).shape)
    if base == "permute":
        perm = [d % k for d in node.args[1]]
    elif base == "transpose":
        perm = list(range(k))
        d0, d1 = node.args[1] % k, node.args[2] % k
        perm[d0], perm[d1] = perm[d1], perm[d0]
    else:
        perm = [1, 0] if k == 2 else list(range(k))
    return perm == list(range(k - 2)) + [k - 1, k - 2]


def const_and_alias_steps(graph: AtenGraph) -> tuple[dict[str, Step], set[str]]:
    """The chain steps that are no kernel (value -> Const or Alias step), and the constant values."""
    constants: set[str] = set()
    steps: dict[str, Step] = {}
    for node in graph.nodes:
        if node.target == "getitem":
            src = f"{node.args[0].name}.{node.args[1]}"
            steps[node.name] = Alias(node.name, node.target, src, node.name)
            if src in constants:
                constants.add(node.name)
        elif is_const(node, constants):
            constants.update(o.name for o in node.outs)
            steps[node.name] = Const(node.name, node.target)
        elif op_kind(node.target) in TRANSPARENT_KINDS or is_alias(node, graph):
            steps[node.name] = Alias(node.name, node.target, node.refs()[0].name, node.name)
    return steps, constants


def consumers_of(graph: AtenGraph) -> dict[str, set[str]]:
    """value -> nodes reading it; a getitem reads the one result ``node.i`` it picks."""
    consumers: dict[str, set[str]] = {}
    for node in graph.nodes:
        if node.target == "getitem":
            consumers.setdefault(f"{node.args[0].name}.{node.args[1]}", set()).add(node.name)
            continue
        for r in node.refs():
            consumers.setdefault(r.name, set()).add(node.name)
    return consumers


class RelabelWalk:
    """Following values back through relabels (views, unsqueezes, no-op expands)."""

    def __init__(self, graph: AtenGraph):
        self.g = graph
        self.by_name = {n.name: n for n in graph.nodes}
        self.consumers = consumers_of(graph)
        self.outputs = {r.name for r in graph.outputs}
        _, self.constants = const_and_alias_steps(graph)
        self.order = {n.name: i for i, n in enumerate(graph.nodes)}

    def node(self, v: str) -> AtenNode | None:
        return self.by_name.get(v)

    def relabel(self, n: AtenNode | None) -> bool:
        return n is not None and n.target != "getitem" and \
            (op_kind(n.target) in TRANSPARENT_KINDS or is_alias(n, self.g))

    def back(self, v: str, path: list[str]) -> str:
        while self.relabel(self.node(v)):
            path.append(v)
            v = self.node(v).refs()[0].name
        return v

    def exclusive(self, values, inside: set[str]) -> bool:
        return all(v not in self.outputs and self.consumers.get(v, set()) <= inside for v in values)

    def is_zero(self, v) -> bool:
        """A constant zero: a scalar 0, or a zeros / full(0) tensor computed ahead of time."""
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v == 0
        if not isinstance(v, Ref) or v.name not in self.constants:
            return False
        n = self.node(self.back(v.name, []))
        if n is None:
            return False
        base = aten_name(n.target)
        if base in ("zeros", "zeros_like", "new_zeros"):
            return True
        fill = {"full": 1, "full_like": 1, "new_full": 2, "scalar_tensor": 0}.get(base)
        return fill is not None and len(n.args) > fill and isinstance(n.args[fill], (int, float)) and \
            not isinstance(n.args[fill], bool) and n.args[fill] == 0
