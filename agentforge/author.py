"""The offline author: fuses a task's ATen graph into few streaming ASP kernels.

It is a small compiler, not a lookup table:

1. **Regions** (``partition``): walking the graph in order, ops join the open region while a
   template can stream them together: *row* regions (elementwise ops, reductions, softmax,
   layer norm, cumsum, slices and concatenation along the last dimension, over one space of
   rows: one map over row tiles whose tile function holds the whole region), and *matmul*
   regions (mm / addmm, their transposed weight, and an elementwise epilogue on the output
   tiles), and *attention* regions (Q K^T, a scale, a constant mask, softmax and the product
   with V, found whole before the greedy walk: one flash-attention kernel whose online-softmax
   ``accum`` streams K/V blocks held on chip, so the scores never reach HBM), and *moe* regions
   (a dense-masked mixture of experts: every expert's MLP on every token, weighted by a gate
   matrix with at most k non-zeros per token and summed over experts, also found whole: one
   routed kernel, ``selector``/``partition``/``merge``, each token through its k experts only).
   A row region may end in a *split reduction* (a reduction across its rows: each row tile
   reduces to a partial in the parallel map, a small ``accum`` combines them). Anything else is
   a region of one op lowered as the baseline does.
2. **Plan**: the regions (by semantic node index, so a plan applies at every size of the task
   and to every task with the same signature) and each region's parameters (tile sizes,
   parallelism). JSON-serialisable: it is what the plan cache stores.
3. **Realize**: a plan and a captured graph give a chain of ASP kernels (one per region),
   intermediates between regions through HBM; verification runs and times that chain.
4. **Search** (``tune``): each region's parameters are searched against the timing model at
   the task's own sizes (timing-only, no data).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import asp_lang
from asp_lang import Machine

from .baseline import Baseline, with_par
from .capture import TRANSPARENT_KINDS, AtenGraph, AtenNode, Ref, TensorSpec, op_kind
from .lowering import (ALIAS_KINDS, CONST_TARGETS, ELEMENTWISE_OPS, MM_TILE, ROW_CAP, TILE_CAP, Alias, Const,
                       KernelBuilder, OpKernel, Step, UnsupportedOpError, asp_dtype, asp_list, asp_literal, aten_name,
                       cast_expr, divisor_at_most, elementwise_kind, elementwise_parts, is_noop_expand, kernel_name,
                       lower_node)

PLAN_VERSION = 1
TEMPLATES = ("row", "matmul", "attention", "moe", "single")


# ------------------------------------------------------------------ plans

@dataclass
class Region:
    template: str                 # "row" | "matmul" | "attention" | "moe" | "single"
    nodes: list[int]              # semantic node indices (see semantic_nodes)
    params: dict = field(default_factory=dict)


@dataclass
class Plan:
    regions: list[Region]
    version: int = PLAN_VERSION
    notes: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Plan":
        if not isinstance(d, dict) or "regions" not in d:
            raise ValueError("a plan is an object with a 'regions' list")
        regions = []
        for r in d["regions"]:
            if r.get("template") not in TEMPLATES:
                raise ValueError(f"unknown region template {r.get('template')!r} ({', '.join(TEMPLATES)})")
            regions.append(Region(r["template"], [int(i) for i in r["nodes"]], dict(r.get("params", {}))))
        return Plan(regions, int(d.get("version", PLAN_VERSION)), str(d.get("notes", "")))

    @property
    def kernels(self) -> int:
        return len(self.regions)


def semantic_nodes(graph: AtenGraph) -> list[AtenNode]:
    """Nodes a plan refers to: everything but copies/aliases that export inserts by layout."""
    return [n for n in graph.nodes if op_kind(n.target) not in TRANSPARENT_KINDS and n.target != "getitem"]


# ------------------------------------------------------------------ node classes

def _is_const(node: AtenNode, constants: set[str]) -> bool:
    base = aten_name(node.target)
    refs = [r.name for r in node.refs()]
    return base in CONST_TARGETS or (refs and all(r in constants for r in refs)) or (not refs and base != "getitem")


def _is_alias(node: AtenNode, graph: AtenGraph | None = None) -> bool:
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


def _interleave(node: AtenNode, graph: AtenGraph, rows: int) -> bool:
    """A cat along a new last dim of size n of n values [.., a, 1] (stacked pairs): in a row region
    over ``rows`` rows, n values of a columns interleaved into one of a * n."""
    out = tuple(node.outs[0].shape)
    refs = node.args[0]
    return len(out) >= 3 and out[-1] == len(refs) and math.prod(out[:-2]) == rows and \
        all(isinstance(r, Ref) and tuple(graph.spec(r).shape) == out[:-1] + (1,) for r in refs)


def row_view(shape: tuple[int, ...]) -> tuple[int, int]:
    if not shape:
        return 1, 1
    return math.prod(shape[:-1]), shape[-1]


def _last_dim(node: AtenNode, graph: AtenGraph, dims) -> bool:
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
        if _last_dim(node, graph, dims):
            return "reduce"
        return "total" if base in ("sum", "mean", "amax", "amin") and total_kind(node, graph) else None
    if base in ("_softmax", "_log_softmax"):
        return "softmax" if _last_dim(node, graph, a[1]) else None
    if base == "native_layer_norm":
        return "layer_norm" if len(a[1]) == 1 else None
    if base == "cumsum":
        return "cumsum" if _last_dim(node, graph, a[1]) else None
    if base == "flip":
        return "flip" if _last_dim(node, graph, list(a[1])) else None
    if base == "select":   # one element of short groups along the rows ([.., D/2, 2][..., i]): a strided slice
        rank = len(graph.spec(a[0]).shape)
        return "select" if rank >= 3 and a[1] % rank == rank - 1 else None
    if base == "slice":
        return "slice" if _last_dim(node, graph, a[1] if len(a) > 1 else 0) else None
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
    return None


# ------------------------------------------------------------------ partition

def _transposed_last(node: AtenNode, graph: AtenGraph) -> bool:
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


class _Partitioner:
    """Greedy, in graph order, one open region at a time (regions stay convex)."""

    def __init__(self, graph: AtenGraph, matched: list[Region] = ()):
        self.g = graph
        self.matched = {i: r for r in matched for i in r.nodes}   # nodes taken by attention / moe regions
        self.sem = semantic_nodes(graph)
        self.sem_index = {n.name: i for i, n in enumerate(self.sem)}
        self.constants: set[str] = set()
        self.alias_of: dict[str, str] = {}      # value -> value it relabels
        self.producer: dict[str, int] = {}       # value -> semantic index
        self.regions: list[Region] = []
        self.open: Region | None = None
        self.views: dict[str, tuple[int, int]] = {}  # logical (rows, cols) of values in the open row region
        self.rows = 0
        self.tail: set[str] = set()   # values after the open row region's split reduction (no rows left)

    def root(self, v: str) -> str:
        while v in self.alias_of:
            v = self.alias_of[v]
        return v

    def run(self) -> list[Region]:
        for node in self.g.nodes:
            if _is_const(node, self.constants) and node.target != "getitem":
                self.constants.update(o.name for o in node.outs)
                continue
            if node.name not in self.sem_index:  # transparent or getitem
                src = node.args[0].name if isinstance(node.args[0], Ref) else None
                if node.target == "getitem":
                    src = f"{node.args[0].name}.{node.args[1]}"
                if src in self.constants:
                    self.constants.add(node.name)
                elif src is not None:
                    self.alias_of[node.name] = src
                    self._alias_view(node, src)
                continue
            if _is_alias(node, self.g):
                src = node.refs()[0].name
                if src in self.constants:
                    self.constants.add(node.name)
                    continue
                self.alias_of[node.name] = src
                self._alias_view(node, src)
                continue
            i = self.sem_index[node.name]
            for o in node.outs:
                self.producer[o.name] = i
            self.producer[node.name] = i
            if i in self.matched:  # attention and moe regions are matched whole, before the greedy walk
                self._close()
                region = self.matched[i]
                if i == max(region.nodes):
                    self.regions.append(Region(region.template, list(region.nodes), dict(region.params)))
                continue
            if not self._join(node, i):
                self._close()
                self._start(node, i)
        self._close()
        return self.regions

    # --- regions ---
    def _close(self) -> None:
        if self.open is not None:
            self.regions.append(self.open)
        self.open = None
        self.views = {}
        self.tail = set()

    def _start(self, node: AtenNode, i: int) -> None:
        base = aten_name(node.target)
        kind = row_kind(node, self.g)
        if kind not in (None, "expand", "total") and self._row_start(node):
            self.open = Region("row", [i])
            return
        if base in ("permute", "t", "transpose") and self._feeds_matmul_b(node):
            self.open = Region("matmul", [i])  # the matmul reads the weight transposed, in place
            self.rows = 0
            self.views = {}
            return
        if base in ("mm", "addmm", "bmm"):
            self.open = Region("matmul", [i])
            out = node.outs[0]
            self.rows = out.shape[0] if base != "bmm" else 0   # a batched matmul takes no epilogue
            self.views = {node.name: row_view(out.shape)}
            return
        self.regions.append(Region("single", [i]))
        self.open = None

    def _in_open(self, v: str) -> bool:
        r = self.root(v)
        return self.open is not None and self.producer.get(r) in self.open.nodes and r in self.views \
            and v in self.views

    def _alias_view(self, node: AtenNode, src: str) -> None:
        """An alias stays inside the open region only if it keeps the logical row view."""
        if self.open is not None and src in self.tail:
            self.tail.add(node.name)
            return
        if self.open is None or src not in self.views:
            return
        spec = node.outs[0]
        if row_view(spec.shape) == self.views[src]:
            self.views[node.name] = self.views[src]

    def _operand_view(self, ref: Ref, out_shape: tuple[int, ...]) -> tuple[int, int] | None:
        """The logical view of an operand in the open region, or None if it cannot be used there."""
        name = ref.name
        if name in self.constants or self.producer.get(self.root(name)) is None or \
                self.open is None or self.producer.get(self.root(name)) not in self.open.nodes:
            # from outside the region: it must be a full-row or a broadcast-row tensor
            if name in self.views:
                return self.views[name]
            if self.open is not None and self.producer.get(self.root(name)) in self.open.nodes:
                return None  # an internal value relabelled in a way the region cannot follow
            spec = self.g.spec(name)
            p = (1,) * (len(out_shape) - len(spec.shape)) + tuple(spec.shape)
            if not out_shape:
                return (1, 1)
            if tuple(p[:-1]) == tuple(out_shape[:-1]):
                return (self.rows, p[-1])
            if all(d == 1 for d in p[:-1]):
                return (1, p[-1])
            period = row_period(p, out_shape)
            if period is not None and self.rows % period == 0:
                return (period, p[-1])   # the same rows again and again (cos/sin tables shared by heads)
            return None
        return self.views.get(name)

    def _row_start(self, node: AtenNode) -> bool:
        out = node.outs[0]
        if not out.shape:
            return False
        self.rows = row_view(out.shape)[0]
        self.views = {}
        if self.rows == 1 and len(out.shape) > 1:
            return False
        self.open = Region("row", [])
        ok = self._row_views(node)
        self.open = None
        return ok

    def _row_views(self, node: AtenNode) -> bool:
        kind = row_kind(node, self.g)
        if kind is None:
            return False
        if kind == "select":  # of a tensor read from HBM, its last two dims merged into the row
            src = node.args[0]
            o = tuple(node.outs[0].shape)
            if self._operand_in_region(src) or src.name in self.constants or math.prod(o[:-1]) != self.rows:
                return False
            self.views[node.name] = (self.rows, o[-1])
            return True
        if kind == "cat" and _interleave(node, self.g, self.rows):
            # cat of [.., a, 1] relabels of [.., a] row values: interleaving them along the row
            out = node.outs[0].shape
            if not all(self._operand_in_region(r) and self.views.get(self.root(r.name)) == (self.rows, out[-2])
                       for r in node.args[0]):
                return False
            self.views[node.name] = (self.rows, out[-2] * out[-1])
            return True
        if kind == "total":  # a split reduction of a value of the region: it ends the rows
            src = node.args[0]
            if not self._operand_in_region(src) or self.views.get(src.name, (0, 0))[0] != self.rows:
                return False
            if total_kind(node, self.g) == "columns" and \
                    row_view(self.g.spec(src).shape) != self.views[src.name]:
                return False
            self.tail = {o.name for o in node.outs}
            return True
        out = node.outs[0]
        ins = [r for r in node.refs()]
        views = []
        for r in ins:
            v = self._operand_view(r, out.shape)
            if v is None:
                return False
            views.append(v)
        if kind in ("elementwise", "expand"):
            if row_view(out.shape)[0] != self.rows:
                return False
            if any(self.rows % v[0] for v in views):
                return False
            if all(v[0] == 1 for v in views) and kind != "expand":
                return False  # weights-only arithmetic: not a row computation
            self.views[node.name] = (self.rows, out.shape[-1] if out.shape else 1)
            return True
        if any(v[0] != self.rows for v in views[:1]):
            return False
        x = views[0]
        if x[1] > ROW_CAP:
            return False
        if kind == "reduce":
            self.views[node.name] = (self.rows, 1)
        elif kind == "layer_norm":
            for o, c in zip(node.outs, (x[1], 1, 1)):
                self.views[o.name] = (self.rows, c)
            return all(v[0] in (1, self.rows) for v in views)
        elif kind == "topk":
            k = node.args[1]
            for o in node.outs:
                self.views[o.name] = (self.rows, k)
        elif kind == "scatter":  # the index and the source are rows of their own, as long as the base's
            if any(v[0] != self.rows for v in views):
                return False
            self.views[node.name] = (self.rows, out.shape[-1])
        else:
            self.views[node.name] = (self.rows, out.shape[-1])
            if kind == "cat" and any(v[0] != self.rows for v in views):
                return False
        return True

    def _operand_in_region(self, ref: Ref) -> bool:
        return self.open is not None and self.producer.get(self.root(ref.name)) in self.open.nodes

    def _tail_join(self, node: AtenNode) -> bool:
        """After a split reduction only elementwise ops on its result (and scalars) may follow."""
        if row_kind(node, self.g) != "elementwise" or not node.refs():
            return False
        if not all(r.name in self.tail for r in node.refs()):
            return False
        self.tail.update(o.name for o in node.outs)
        return True

    def _join(self, node: AtenNode, i: int) -> bool:
        if self.open is None:
            return False
        if self.open.template == "row" and self.tail:
            ok = self._tail_join(node)
        elif self.open.template == "row":
            ok = self._row_views(node)
        else:
            ok = self._epilogue(node)
        if ok:
            self.open.nodes.append(i)
        return ok

    def _feeds_matmul_b(self, node: AtenNode) -> bool:
        rank = len(node.outs[0].shape)
        if rank < 2 or rank > 2 and not _transposed_last(node, self.g):
            return False
        names = {node.name}
        changed = True
        while changed:  # follow aliases of the permuted value
            changed = False
            for n in self.g.nodes:
                if n.name not in names and (_is_alias(n, self.g) or op_kind(n.target) in TRANSPARENT_KINDS) and \
                        n.refs() and n.refs()[0].name in names:
                    names.add(n.name)
                    changed = True
        users = [n for n in self.g.nodes if n.name not in names and any(r.name in names for r in n.refs())]
        return len(users) == 1 and aten_name(users[0].target) in (("mm", "addmm") if rank == 2 else ("bmm",)) and \
            isinstance(users[0].args[-1], Ref) and users[0].args[-1].name in names

    def _epilogue(self, node: AtenNode) -> bool:
        """Elementwise ops on a matmul's output tiles join its region."""
        if not any(aten_name(self.sem[i].target) in ("mm", "addmm", "bmm") for i in self.open.nodes):
            if aten_name(node.target) in ("mm", "addmm", "bmm"):  # the matmul after its transposed weight
                out = node.outs[0]
                self.rows = out.shape[0] if aten_name(node.target) != "bmm" else 0
                self.views = {node.name: row_view(out.shape)}
                return True
            return False
        if row_kind(node, self.g) != "elementwise" or not self.rows:
            return False
        out = node.outs[0]
        # the matmul's [M, N] rows, also seen through a [.., S, N] view (a linear layer on [B, S, H])
        if len(out.shape) < 2 or row_view(out.shape)[0] != self.rows:
            return False
        touches = False
        for r in node.refs():
            v = self._operand_view(r, out.shape)
            if v is None or v[0] not in (1, self.rows):
                return False
            if self.producer.get(self.root(r.name)) in self.open.nodes:
                touches = True
        if not touches:
            return False
        self.views[node.name] = (self.rows, out.shape[-1])
        return True


def attention_regions(graph: AtenGraph) -> list[Region]:
    """The graph's attention patterns (QK^T, scale, mask, softmax, PV) as whole regions."""
    return [Region("attention", list(a.nodes)) for a in _attention_matches(graph)]


def partition(graph: AtenGraph, attention: bool | list[Region] = True, moe: bool = True) -> list[Region]:
    """Greedy regions; ``attention``: detect attention (and, with ``moe``, mixture-of-experts)
    regions first (True), or take these pre-matched regions."""
    if attention is True:
        attention = attention_regions(graph) + (moe_regions(graph) if moe else [])
    return _Partitioner(graph, list(attention or [])).run()


def baseline_plan(graph: AtenGraph) -> Plan:
    """Every op its own region: the op-by-op baseline as a plan."""
    return Plan([Region("single", [i]) for i in range(len(semantic_nodes(graph)))
                 if not _is_alias(semantic_nodes(graph)[i], graph)], notes="op by op")


# ------------------------------------------------------------------ realize

def _const_and_alias_steps(graph: AtenGraph) -> tuple[dict[str, Step], set[str]]:
    constants: set[str] = set()
    steps: dict[str, Step] = {}
    for node in graph.nodes:
        if node.target == "getitem":
            src = f"{node.args[0].name}.{node.args[1]}"
            steps[node.name] = Alias(node.name, node.target, src, node.name)
            if src in constants:
                constants.add(node.name)
        elif _is_const(node, constants):
            constants.update(o.name for o in node.outs)
            steps[node.name] = Const(node.name, node.target)
        elif op_kind(node.target) in TRANSPARENT_KINDS or _is_alias(node, graph):
            steps[node.name] = Alias(node.name, node.target, node.refs()[0].name, node.name)
    return steps, constants


@dataclass
class _GraphIndex:
    """What realizing any plan on one graph needs to know about it, computed once."""
    sem: list[AtenNode]
    fixed: dict[str, Step]
    constants: set[str]
    consumers: dict[str, set[str]]
    outputs: set[str]


def _index(graph: AtenGraph) -> _GraphIndex:
    fixed, constants = _const_and_alias_steps(graph)
    return _GraphIndex(semantic_nodes(graph), fixed, constants, _consumers(graph), {r.name for r in graph.outputs})


def realize(plan: Plan, graph: AtenGraph, machine: Machine) -> Baseline:
    """The chain of kernels ``plan`` gives for ``graph`` (a Baseline-shaped chain)."""
    idx = _index(graph)
    sem, fixed, constants, consumers, outputs = idx.sem, idx.fixed, idx.constants, idx.consumers, idx.outputs
    owner: dict[str, int] = {}
    for ri, region in enumerate(plan.regions):
        for i in region.nodes:
            if not 0 <= i < len(sem):
                raise ValueError(f"plan refers to node {i}; the graph has {len(sem)}")
            owner[sem[i].name] = ri
    steps: list[Step] = []
    emitted: set[int] = set()
    last = {ri: max(graph.nodes.index(sem[i]) for i in reg.nodes) for ri, reg in enumerate(plan.regions)}
    by_pos = {pos: ri for ri, pos in last.items()}
    value_region = {o.name: owner[n.name] for n in graph.nodes if n.name in owner for o in n.outs}
    value_region.update({n.name: owner[n.name] for n in graph.nodes if n.name in owner})
    pending: dict[int, list[Step]] = {}
    for pos, node in enumerate(graph.nodes):
        if node.name in fixed:
            step = fixed[node.name]
            srcs = [step.source] if isinstance(step, Alias) else []  # constants never wait on data
            waiting = [value_region[v] for v in srcs if value_region.get(v) is not None
                       and value_region[v] not in emitted]
            src_region = max(waiting) if waiting else None
            if src_region is not None:
                # relabels a value its region has not produced yet: it follows the region's kernel
                value_region[node.name] = src_region
                pending.setdefault(src_region, []).append(step)
            else:
                steps.append(step)
        elif node.name not in owner:
            steps.append(lower_node(node, graph, constants))
        if pos in by_pos:
            ri = by_pos[pos]
            region = plan.regions[ri]
            nodes = [sem[i] for i in sorted(region.nodes)]
            kernel = _region_kernel(region, nodes, graph, fixed, owner, ri, consumers, outputs)
            steps.append(kernel)
            emitted.add(ri)
            available = set(getattr(kernel, "outputs", [])) | {getattr(kernel, "output", None)}
            for step in pending.pop(ri, []):
                if step.source in available:  # relabels of values kept inside the kernel are not needed
                    steps.append(step)
                    available.add(step.output)
    return Baseline(graph, steps, machine, tune_par=False)


def _consumers(graph: AtenGraph) -> dict[str, set[str]]:
    """value -> nodes reading it; a getitem reads the one result ``node.i`` it picks."""
    consumers: dict[str, set[str]] = {}
    for node in graph.nodes:
        if node.target == "getitem":
            consumers.setdefault(f"{node.args[0].name}.{node.args[1]}", set()).add(node.name)
            continue
        for r in node.refs():
            consumers.setdefault(r.name, set()).add(node.name)
    return consumers


def _region_kernel(region: Region, nodes: list[AtenNode], graph: AtenGraph, fixed: dict, owner: dict, ri: int,
                   consumers: dict, outputs: set) -> Step:
    if region.template == "single" or len(nodes) == 1 and region.template not in ("matmul", "attention", "moe", "row"):
        if len(nodes) != 1:
            raise ValueError("a 'single' region holds one node")
        step = lower_node(nodes[0], graph, set())
        if isinstance(step, OpKernel) and region.params:
            step.source = with_par(step.source, int(region.params.get("compute", 16)),
                                   int(region.params.get("memory", 4)))
        return step
    if region.template == "row":
        return RowKernel(region, nodes, graph, fixed, owner, ri, consumers, outputs).build()
    if region.template == "attention":
        return AttentionKernel(region, nodes, graph, fixed, owner, ri, consumers, outputs).build()
    if region.template == "moe":
        return MoeKernel(region, nodes, graph, fixed, owner, ri, consumers, outputs).build()
    return MatmulKernel(region, nodes, graph, fixed, owner, ri, consumers, outputs).build()


class _RegionCode:
    """Shared bookkeeping: which values enter and leave a region, and their expressions."""

    def __init__(self, region, nodes, graph, fixed, owner, ri, consumers, outputs):
        self.region, self.nodes, self.g = region, nodes, graph
        self.fixed, self.owner, self.ri = fixed, owner, ri
        self.consumers, self.graph_outputs = consumers, outputs
        self.expr: dict[str, str] = {}
        self.lets: list[tuple[str, str]] = []
        self.inside: set[str] = set()
        for n in nodes:
            self.inside.add(n.name)
            self.inside.update(o.name for o in n.outs)
        self.n = 0

    def whole_match(self, matches, what: str):
        """The pattern match (attention, MoE, ...) this region is exactly: the one that ends at one of
        its nodes and covers all of them, else the plan does not fit this graph."""
        sem = semantic_nodes(self.g)
        names = {n.name for n in self.nodes}
        m = next((m for m in matches if m.out.name in names), None)
        if m is None or {sem[i].name for i in m.nodes} != names:
            raise UnsupportedOpError(f"plan does not fit this graph: the region is not a whole {what}")
        return m

    def root(self, v: str) -> str:
        while v in self.fixed and isinstance(self.fixed[v], Alias) and self.fixed[v].source not in self.inside:
            src = self.fixed[v].source
            if src == v:
                break
            v = src
        return v

    def resolve(self, v: str) -> str:
        """Follow aliases back to a region value (aliases inside a region are free)."""
        seen = 0
        while v not in self.inside and v in self.fixed and isinstance(self.fixed[v], Alias) and seen < 64:
            v = self.fixed[v].source
            seen += 1
        return v

    def let(self, e: str, base: str = "v") -> str:
        self.n += 1
        name = f"{base}{self.n}"
        self.lets.append((name, e))
        return name

    def used_outside(self, value: str) -> bool:
        todo, seen = [value], set()
        while todo:
            v = todo.pop()
            if v in seen:
                continue
            seen.add(v)
            if v in self.graph_outputs:
                return True
            for c in self.consumers.get(v, ()):
                if c in self.inside:
                    continue
                step = self.fixed.get(c)
                if isinstance(step, Alias):
                    todo.append(c)
                elif not isinstance(step, Const):  # a constant (zeros_like...) reads only the shape
                    return True
        return False


def _reduce_expr(node: AtenNode, x: str, xdt: str, odt: str, cols: int) -> str:
    base = aten_name(node.target)
    cdt = "f32" if xdt in ("bf16", "f16") else xdt
    if base in ("sum", "mean") and xdt != odt and odt not in ("bf16", "f16"):
        cdt = odt
    xin = x if cdt == xdt else f"cast({x}, {cdt})"
    if base == "sum":
        return cast_expr(f"sum({xin}, axis=1)", cdt, odt)
    if base == "mean":
        return cast_expr(f"mean({xin}, axis=1)", cdt, odt)
    if base in ("amax", "amin"):
        return cast_expr(f"{'max' if base == 'amax' else 'min'}({xin}, axis=1)", cdt, odt)
    if base in ("argmax", "argmin"):
        return f"{base}({xin}, axis=1)"
    corr = node.kwargs.get("correction", 1)
    corr = 1 if corr is None else corr
    return cast_expr(f"sum(({xin} - mean({xin}, axis=1)) * ({xin} - mean({xin}, axis=1)), axis=1) / "
                f"{asp_literal(float(cols - corr))}", cdt, odt)


PERIODIC_BUFFER_CAP = 16 << 20   # bytes of a row-periodic operand held on chip rather than re-read


class RowKernel(_RegionCode):
    """One map over tiles of R rows; the tile function computes the whole region."""

    def build(self) -> OpKernel:
        g = self.g
        first = self.nodes[0]
        rows = row_view(first.outs[0].shape)[0]
        cols = [row_view(o.shape)[1] for n in self.nodes for o in n.outs if o.dtype != "none"]
        widest = max(cols + [row_view(g.spec(r.name).shape)[1] for n in self.nodes for r in n.refs()
                             if self.resolve(r.name) not in self.inside])
        base_rows = rows
        for n in self.nodes:   # row tiles must not straddle the period of an operand that repeats its rows
            if row_kind(n, g) in ("elementwise", "expand"):
                for r in n.refs():
                    if self.resolve(r.name) not in self.inside:
                        sp = tuple(g.spec(r.name).shape)
                        period = row_period((1,) * (len(n.outs[0].shape) - len(sp)) + sp, n.outs[0].shape)
                        if period is not None:
                            base_rows = math.gcd(base_rows, period)
        r_tile = divisor_at_most(base_rows, max(1, min(self.region.params.get("rows", TILE_CAP), TILE_CAP // widest)))
        par_c = int(self.region.params.get("par", 16))
        par_m = int(self.region.params.get("par_mem", 4))
        kb = KernelBuilder(f"fused_{self.ri}_{kernel_name(first)[2:]}")
        streams, params, inputs, views = [], [], [], []

        def operand(ref: Ref, out_shape) -> str:
            name = self.resolve(ref.name)
            if name in self.expr:
                return self.expr[name]
            spec = g.spec(ref.name)
            if out_shape is None:   # read as rows of the region, whatever its shape: [rows, numel / rows]
                out_shape = (rows, math.prod(spec.shape) // rows)
                spec = TensorSpec(spec.name, out_shape, spec.dtype)
            p = (1,) * (len(out_shape) - len(spec.shape)) + tuple(spec.shape) if out_shape else tuple(spec.shape)
            lead_full = tuple(p[:-1]) == tuple(out_shape[:-1]) if out_shape else False
            c = p[-1] if p else 1
            period = row_period(p, out_shape) if out_shape and not lead_full else None
            if period is not None and rows % period == 0 and period % r_tile == 0:
                pname = kb.param(asp_dtype(spec), (period, c))
                tile = asp_list([r_tile, c])
                if period == r_tile:   # one tile: re-emit it for every row tile
                    (s,) = kb.op(f"load({pname}, tile={tile}, par={par_m})")
                    (s,) = kb.op(f"repeat({s}, {rows // r_tile})")
                elif period * c * 4 <= PERIODIC_BUFFER_CAP:   # held on chip, re-read for each period
                    (s,) = kb.op(f"load({pname}, tile={tile}, par={par_m})")
                    (b,) = kb.op(f"bufferize({s}, rank=1, par=16)")
                    (s,) = kb.op(f"streamify({b}, repeat={rows // period}, par=16)")
                    (s,) = kb.op(f"flatten({s}, dims=[0, 1])")
                else:   # re-read from HBM for each period
                    (s,) = kb.op(f"load({pname}, tile={tile}, repeat={rows // period}, at=0, par={par_m})")
                    (s,) = kb.op(f"flatten({s}, dims=[0, 1])")
                streams.append(s)
                pn = f"x{len(params)}"
                params.append(pn)
                inputs.append(ref.name)
                views.append((period, c))
                self.expr[name] = pn
                self.expr[ref.name] = pn
                return pn
            if not lead_full and any(d != 1 for d in p[:-1]):
                raise UnsupportedOpError(f"plan does not fit this graph: '{ref.name}' {list(spec.shape)} is neither "
                                         f"a full-row nor a broadcast operand of a row region over {rows} rows")
            pname = kb.param(asp_dtype(spec), (rows, c) if lead_full else (1, c))
            if lead_full:
                (s,) = kb.op(f"load({pname}, tile={asp_list([r_tile, c])}, par={par_m})")
            else:
                (s,) = kb.op(f"load({pname}, tile={asp_list([1, c])})")
                if rows // r_tile > 1:
                    (s,) = kb.op(f"repeat({s}, {rows // r_tile})")
            streams.append(s)
            pn = f"x{len(params)}"
            params.append(pn)
            inputs.append(ref.name)
            views.append((rows, c) if lead_full else (1, c))
            self.expr[name] = pn
            self.expr[ref.name] = pn
            return pn

        total = None          # the split reduction: (node, partial, combine, dtype, width)
        stage1: list = []
        after: set[str] = set()   # values of the second stage: the reduction's result and what follows it
        for node in self.nodes:
            kind = row_kind(node, g)
            out = node.outs[0]
            if total is not None:  # after the split reduction: elementwise ops on its (combined) result
                ops, fexpr, _ = elementwise_parts(node, g, elementwise_kind(aten_name(node.target)))
                self.expr[node.name] = self.let(fexpr([self.expr[self.resolve(o.value)] if o.kind == "tensor"
                                                       else asp_literal(o.value) for o in ops]))
                after.update(o.name for o in node.outs)
                continue
            if kind == "total":
                xs = g.spec(node.args[0])
                x = operand(node.args[0], xs.shape)
                base, xdt, odt = aten_name(node.target), asp_dtype(xs), asp_dtype(out)
                cdt = "f32" if xdt in ("bf16", "f16") else xdt
                if base in ("sum", "mean") and xdt != odt and odt not in ("bf16", "f16"):
                    cdt = odt  # e.g. counting bools in i32
                xin = x if cdt == xdt else f"cast({x}, {cdt})"
                red = {"sum": "sum", "mean": "sum", "amax": "max", "amin": "min"}[base]
                whole = total_kind(node, g) == "all"
                # stage 1, in the map over row tiles (in parallel): each tile's partial
                partial = self.let(f"{red}({red}({xin}, axis=1), axis=0)" if whole else f"{red}({xin}, axis=0)")
                width = 1 if whole else xs.shape[-1]
                total = (node, partial, red, cdt, width)
                stage1, self.lets = self.lets, []
                count = math.prod(xs.shape) if whole else math.prod(xs.shape[:-1])
                fin = cast_expr("t" if base != "mean" else f"t / {asp_literal(float(count))}", cdt, odt)
                self.expr[node.name] = fin if fin == "t" else self.let(fin)
                after.update(o.name for o in node.outs)
                continue
            if kind == "elementwise":
                ops, fexpr, odt = elementwise_parts(node, g, elementwise_kind(aten_name(node.target)))
                xs = [operand(Ref(o.value), out.shape) if o.kind == "tensor" else asp_literal(o.value) for o in ops]
                self.expr[node.name] = self.let(fexpr(xs))
            elif kind == "expand":
                x = operand(node.args[0], out.shape)
                self.expr[node.name] = self.let(f"broadcast({x}, {asp_list([r_tile, out.shape[-1]])})")
            elif kind == "reduce":
                x = operand(node.args[0], g.spec(node.args[0]).shape)
                xs = g.spec(node.args[0])
                self.expr[node.name] = self.let(_reduce_expr(node, x, asp_dtype(xs), asp_dtype(out), xs.shape[-1]))
            elif kind == "softmax":
                xs = g.spec(node.args[0])
                x = operand(node.args[0], xs.shape)
                xin = x if asp_dtype(xs) == "f32" else f"cast({x}, f32)"
                z = self.let(f"{xin} - max({xin}, axis=1)")
                if aten_name(node.target) == "_softmax":
                    e = self.let(f"exp({z})")
                    res = f"{e} / sum({e}, axis=1)"
                else:
                    res = f"{z} - log(sum(exp({z}), axis=1))"
                self.expr[node.name] = self.let(cast_expr(res, "f32", asp_dtype(out)))
            elif kind == "layer_norm":
                xs = g.spec(node.args[0])
                x = operand(node.args[0], xs.shape)
                xin = x if asp_dtype(xs) == "f32" else f"cast({x}, f32)"
                u = self.let(f"mean({xin}, axis=1)")
                d = self.let(f"{xin} - {u}")
                rs = self.let(f"rsqrt(mean({d} * {d}, axis=1) + {asp_literal(float(node.args[4] if len(node.args) > 4 else 1e-5))})")
                y = f"{d} * {rs}"
                for ref in node.args[2:4]:
                    if isinstance(ref, Ref):
                        w = operand(ref, xs.shape)
                        wdt = asp_dtype(g.spec(ref))
                        y = f"({y}) {'*' if ref is node.args[2] else '+'} {w if wdt == 'f32' else f'cast({w}, f32)'}"
                outs = node.outs
                self.expr[outs[0].name] = self.let(cast_expr(y, "f32", asp_dtype(outs[0])))
                self.expr[outs[1].name] = self.let(cast_expr(u, "f32", asp_dtype(outs[1])))
                self.expr[outs[2].name] = self.let(cast_expr(rs, "f32", asp_dtype(outs[2])))
            elif kind == "cumsum":
                xs = g.spec(node.args[0])
                x = operand(node.args[0], xs.shape)
                odt = asp_dtype(out)
                self.expr[node.name] = self.let(f"cumsum({x if asp_dtype(xs) == odt else f'cast({x}, {odt})'}, axis=1)")
            elif kind == "flip":
                x = operand(node.args[0], g.spec(node.args[0]).shape)
                self.expr[node.name] = self.let(f"flip({x}, axis=1)")
            elif kind == "slice":
                xs = g.spec(node.args[0])
                x = operand(node.args[0], xs.shape)
                n = xs.shape[-1]
                a = node.args
                start = a[2] if len(a) > 2 and a[2] is not None else 0
                end = a[3] if len(a) > 3 and a[3] is not None else n
                step = a[4] if len(a) > 4 else 1
                start = max(0, min(n, start + n if start < 0 else start))
                end = max(0, min(n, end + n if end < 0 else end))
                self.expr[node.name] = self.let(f"slice({x}, axis=1, start={start}, stop={end}, step={step})")
            elif kind == "cat" and _interleave(node, g, rows):
                a = out.shape[-2]
                parts = [f"reshape({self.expr[self.resolve(r.name)]}, shape={asp_list([r_tile, a, 1])})"
                         for r in node.args[0]]
                e = parts[0]
                for p in parts[1:]:
                    e = f"concat({e}, {p}, axis=2)"
                self.expr[node.name] = self.let(f"reshape({e}, shape={asp_list([r_tile, a * len(parts)])})")
            elif kind == "cat":
                parts = [operand(r, out.shape) for r in node.args[0]]
                e = parts[0]
                for p in parts[1:]:
                    e = f"concat({e}, {p}, axis=1)"
                self.expr[node.name] = self.let(e)
            elif kind == "select":
                xs = g.spec(node.args[0])
                x = operand(node.args[0], None)
                b = xs.shape[-1]
                self.expr[node.name] = self.let(f"slice({x}, axis=1, start={node.args[2] % b}, "
                                                f"stop={math.prod(xs.shape) // rows}, step={b})")
            elif kind == "topk":
                xs = g.spec(node.args[0])
                x = operand(node.args[0], xs.shape)
                k = node.args[1]
                largest = node.args[3] if len(node.args) > 3 else True
                if largest:
                    self.expr[node.outs[0].name] = self.let(f"topk({x}, k={k}, axis=1)")
                else:
                    self.expr[node.outs[0].name] = self.let(f"-topk(-{x}, k={k}, axis=1)")
                self.expr[node.outs[1].name] = self.let(f"argtopk({x if largest else '-' + x}, k={k}, axis=1)")
            elif kind == "scatter":
                xs = g.spec(node.args[0])
                odt = asp_dtype(out)
                if _Walk(g).is_zero(node.args[0]):  # scattering into zeros: no need to read them
                    base = f"zeros({asp_list([r_tile, xs.shape[-1]])}" + (f", dtype={odt})" if odt != "f32" else ")")
                else:
                    base = operand(node.args[0], xs.shape)
                idx = operand(node.args[2], g.spec(node.args[2]).shape)
                src = node.args[3] if len(node.args) > 3 else node.kwargs.get("src", node.kwargs.get("value"))
                if isinstance(src, Ref):
                    sv = operand(src, g.spec(src).shape)
                    sv = sv if asp_dtype(g.spec(src)) == odt else f"cast({sv}, {odt})"
                else:
                    sv = asp_literal(src)
                self.expr[node.name] = self.let(f"put({base}, {idx}, {sv}, axis=1)")
            else:
                raise UnsupportedOpError(f"not supported in a row region: {node.target}")
        fin_lets = []
        if total is not None:
            fin_lets, self.lets = self.lets, stage1
        results, finals = [], []
        for node in self.nodes:
            for o in node.outs:
                if o.dtype != "none" and self.used_outside(o.name) and o.name in self.expr:
                    (finals if o.name in after else results).append(o)
        if not results and not finals:
            raise UnsupportedOpError("a row region with no result used outside it")
        names = [self.expr[o.name] for o in results] + ([total[1]] if total is not None else [])
        f = kb.fn(params, names[0] if len(names) == 1 else "(" + ", ".join(names) + ")", self.lets)
        outs = kb.op(f"map({', '.join(streams)}, fn={f}, par={par_c})", len(names))
        out_views = []
        if total is not None:
            # stage 2: combine the tiles' partials (one small accumulator), then what follows the reduction
            node, _, red, cdt, width = total
            part = outs[-1]
            if rows // r_tile > 1:
                dt_ = "" if cdt == "f32" else f", dtype={cdt}"
                init = f"zeros([1, {width}]{dt_})" if red == "sum" else \
                    f"full([1, {width}], {'-inf' if red == 'max' else 'inf'}{dt_})"
                comb = kb.fn(["acc", "p"], {"sum": "acc + p", "max": "maximum(acc, p)", "min": "minimum(acc, p)"}[red])
                (part,) = kb.op(f"accum({part}, rank=1, init={init}, fn={comb})")
            fnames = [self.expr[o.name] for o in finals]
            fouts = [part]
            if fnames != ["t"]:
                fin = kb.fn(["t"], fnames[0] if len(fnames) == 1 else "(" + ", ".join(fnames) + ")", fin_lets)
                fouts = kb.op(f"map({part}, fn={fin})", len(fnames))
        for s, o in zip(outs, results):
            view = (rows, math.prod(o.shape) // rows)
            oname = kb.result(asp_dtype(o), view)
            kb.do(f"store({oname}, {s}, par={par_m})")
            out_views.append(view)
        if total is not None:
            for s, o in zip(fouts, finals):
                view = (1, max(1, math.prod(o.shape)))
                kb.do(f"store({kb.result(asp_dtype(o), view)}, {s})")
                out_views.append(view)
        comment = "fused row region: " + ", ".join(n.target for n in self.nodes)
        return OpKernel(self.nodes[-1].name, "fused.row", kb.text(comment), inputs, views,
                        [o.name for o in results + finals], out_views)


def _mm_parts(mm: AtenNode):
    """(bias, a, b, alpha, beta) of an mm / addmm / bmm node."""
    if aten_name(mm.target) == "addmm":
        return mm.args[0], mm.args[1], mm.args[2], mm.kwargs.get("alpha", 1), mm.kwargs.get("beta", 1)
    return None, mm.args[0], mm.args[1], 1, 1


class MatmulKernel(_RegionCode):
    """C = A @ B (+ bias) in TM x TN tiles accumulated over K, then an elementwise epilogue."""

    def build(self) -> OpKernel:
        g = self.g
        mms = [n for n in self.nodes if aten_name(n.target) in ("mm", "addmm", "bmm")]
        mm = mms[0]
        base = aten_name(mm.target)
        parts = [_mm_parts(n) for n in mms]
        bias, a, b, alpha, beta = parts[0]
        sa, sb, out = g.spec(a), g.spec(b), mm.outs[0]
        # a batched matmul (bmm) runs the same tiles with a leading batch axis of tile 1
        bt = sa.shape[0] if base == "bmm" else None
        lead = [1] if bt is not None else []
        off = 1 if bt is not None and bt > 1 else 0   # the batch axis is a stream dimension when > 1
        M, K = sa.shape[-2:]
        N = sb.shape[-1]
        dt = asp_dtype(out)
        # several matmuls of one activation (q/k/v, SwiGLU's gate and up): A is read once and copied
        # to one accum per weight; the epilogue sees all their tiles (silu(gate) * up in one map)
        for n, (_, a2, b2, _, _) in zip(mms[1:], parts[1:]):
            if aten_name(n.target) == "bmm" or base == "bmm" or self.resolve(a2.name) != self.resolve(a.name) or \
                    tuple(g.spec(b2).shape) != tuple(sb.shape) or asp_dtype(n.outs[0]) != dt:
                raise UnsupportedOpError("matmuls of one region must share their activation and shapes")
        weights_t = {self.resolve(b_.name) for (_, _, b_, _, _) in parts}
        epilogue = [n for n in self.nodes[self.nodes.index(mm) + 1:] if n not in mms and n.name not in weights_t]
        if base == "bmm" and epilogue:
            raise UnsupportedOpError("a batched matmul region takes no epilogue")
        p = self.region.params
        tm = divisor_at_most(M, int(p.get("tm", MM_TILE)))
        tn = divisor_at_most(N, int(p.get("tn", MM_TILE)))
        tk = divisor_at_most(K, int(p.get("tk", MM_TILE)))
        par, par_m, par_e = int(p.get("par", 64)), int(p.get("par_mem", 4)), int(p.get("par_epi", 16))
        kb = KernelBuilder(f"fused_{self.ri}_{kernel_name(mm)[2:]}")
        inputs, views, streams, params = [], [], [], []
        batch = (bt,) if bt is not None else ()
        pa = kb.param(dt, batch + (M, K))
        inputs.append(a.name)
        views.append(batch + (M, K))
        m_kept, n_kept = tm < M, tn < N
        if n_kept and tk < K and int(p.get("hold", 0)):
            # operand reuse: each [tm, K] row block of A is read from HBM once, held on chip
            # (banked over par_buf PMUs) and streamed again for every column block of B; without
            # it A is re-read N / tn times and a large square GEMM is bound by HBM, not compute
            pbuf = int(p.get("par_buf", 16))
            (xa,) = kb.op(f"load({pa}, tile={asp_list(lead + [tm, tk])}, par={par_m})")
            (xa,) = kb.op(f"bufferize({xa}, rank=1, par={pbuf})")
            (xa,) = kb.op(f"streamify({xa}, repeat={N // tn}, par={pbuf})")
        else:
            call = f"load({pa}, tile={asp_list(lead + [tm, tk])}"
            if n_kept:
                call += f", repeat={N // tn}, at={off + (1 if m_kept else 0)}"
            (xa,) = kb.op(call + f", par={par_m})")
        xas = kb.op(f"copy({xa})", len(mms)) if len(mms) > 1 else [xa]
        cexprs = []
        for gi, (n, (_, _, b, alpha, _)) in enumerate(zip(mms, parts)):
            # a transposed weight (B = W^T, W: [N, K]; batched: B[b] = W[b]^T) is read in place,
            # transposing each tile
            b_src, trans = b.name, False
            src_node = next((x for x in g.nodes if x.name == self.resolve(b.name)), None)
            if src_node is not None and aten_name(src_node.target) in ("permute", "t", "transpose") and \
                    _transposed_last(src_node, g):
                src_shape = tuple(g.spec(src_node.args[0]).shape)
                # [.., N, K] read in place as [batch, N, K] (a K cache [B, H, L, D] as [B * H, L, D])
                if src_shape[-2:] == (N, K) and math.prod(src_shape[:-2]) == (bt or 1) and \
                        (bt is not None or len(src_shape) == 2):
                    b_src, trans = src_node.args[0].name, True
            if trans:
                pb = kb.param(asp_dtype(g.spec(b_src)), batch + (N, K))
                inputs.append(b_src)
                views.append(batch + (N, K))
                call = f"load({pb}, tile={asp_list(lead + [tn, tk])}"
            else:
                pb = kb.param(dt, batch + (K, N))
                inputs.append(b.name)
                views.append(batch + (K, N))
                call = f"load({pb}, tile={asp_list(lead + [tk, tn])}"
                if tk < K and n_kept:
                    call += f", order={asp_list(([0] if off else []) + [off + 1, off])}"
            b_rank = int(n_kept) + int(tk < K)
            if m_kept and b_rank and int(p.get("hold", 0)) >= 2:
                # all of B (per batch) held on chip too and streamed again for every row block of A:
                # HBM moves A, B and C once whatever the tiles (small tiles keep a plan checkable)
                pbuf = int(p.get("par_buf", 16))
                (xb,) = kb.op(call + f", par={par_m})")
                (xb,) = kb.op(f"bufferize({xb}, rank={b_rank}, par={pbuf})")
                (xb,) = kb.op(f"streamify({xb}, repeat={M // tm}, par={pbuf})")
            else:
                if m_kept:
                    call += f", repeat={M // tm}, at={off}"
                (xb,) = kb.op(call + f", par={par_m})")
            yb = "transpose(y)" if trans else "y"
            prod = f"matmul(x, {yb})" if dt == "f32" else f"cast(matmul(x, {yb}), f32)"
            par_g = max(1, par // len(mms))   # the copies share the region's PCUs
            if tk < K:
                mac = kb.fn(["acc", "x", "y"], f"acc + {prod}")
                (c,) = kb.op(f"accum({xas[gi]}, {xb}, rank=1, init=zeros({asp_list([tm, tn])}), fn={mac}, par={par_g})")
            else:
                f = kb.fn(["x", "y"], prod)
                (c,) = kb.op(f"map({xas[gi]}, {xb}, fn={f}, par={par_g})")
            streams.append(c)
            cname = "c" if len(mms) == 1 else f"c{gi}"
            params.append(cname)
            cexprs.append(cname if alpha == 1 else f"{cname} * {asp_literal(alpha)}")

        def operand(ref: Ref) -> str:
            name = self.resolve(ref.name)
            if name in self.expr:
                return self.expr[name]
            spec = g.spec(ref.name)
            shape = row_view(tuple(spec.shape))   # [.., S, N] operands as their [rows, N] view
            if shape[0] == M:
                pn_ = kb.param(asp_dtype(spec), (M, shape[1]))
                tile = [tm, tn if shape[1] == N else 1]
                (s,) = kb.op(f"load({pn_}, tile={asp_list(tile)}, par={par_m})")
                views.append((M, shape[1]))
            else:
                pn_ = kb.param(asp_dtype(spec), (1, shape[1]))
                tile = [1, tn if shape[1] == N else 1]
                c_ = f"load({pn_}, tile={asp_list(tile)}"
                if m_kept:
                    c_ += f", repeat={M // tm}, at=0"
                (s,) = kb.op(c_ + f", par={par_m})")
                views.append((1, shape[1]))
            if shape[1] != N and n_kept:
                (s,) = kb.op(f"repeat({s}, {N // tn})")
            streams.append(s)
            pn = f"e{len(params)}"
            params.append(pn)
            inputs.append(ref.name)
            self.expr[name] = pn
            return pn

        for n, (bias, _, _, _, beta), cexpr in zip(mms, parts, cexprs):
            if isinstance(bias, Ref):
                bv = operand(bias)
                bdt = asp_dtype(g.spec(bias))
                cexpr = f"{cexpr} + {bv if bdt == 'f32' else f'cast({bv}, f32)'}" + \
                    (f" * {asp_literal(beta)}" if beta != 1 else "")
            self.expr[n.name] = self.let(cast_expr(cexpr, "f32", dt))
        for node in epilogue:
            ops, fexpr, odt = elementwise_parts(node, g, elementwise_kind(aten_name(node.target)))
            xs = [operand(Ref(o.value)) if o.kind == "tensor" else asp_literal(o.value) for o in ops]
            self.expr[node.name] = self.let(fexpr(xs))
        results = [n.outs[0] for n in self.nodes if (n in mms or n in epilogue) and self.used_outside(n.outs[0].name)]
        names = [self.expr[o.name] for o in results]
        if len(results) == 1 and params == ["c"] and self.lets == [(names[0], "c")]:
            outs = [streams[0]]   # nothing to apply: the accumulator's tiles are stored as they are
        else:
            f = kb.fn(params, names[0] if len(names) == 1 else "(" + ", ".join(names) + ")", self.lets)
            outs = kb.op(f"map({', '.join(streams)}, fn={f}, par={par_e})", len(results))
        for s, o in zip(outs, results):
            oname = kb.result(asp_dtype(o), batch + (M, N))
            kb.do(f"store({oname}, {s}, par={par_m})")
        comment = "fused matmul region: " + ", ".join(n.target for n in self.nodes)
        return OpKernel(self.nodes[-1].name, "fused.matmul", kb.text(comment), inputs, views,
                        [o.name for o in results], [batch + (M, N)] * len(results))


# ------------------------------------------------------------------ attention

@dataclass
class _Attention:
    """One matched attention pattern: softmax(ops(Q K^T or S)) V with Q/K/V read in place."""
    nodes: list[int]              # semantic indices the region computes
    mode: str                     # "qk": scores from Q K^T; "scores": scores read from a tensor
    q: str | None                 # [BH * G, Sq, D] contiguous (qk mode)
    k: str | None                 # [BH, Sk, D] contiguous (qk mode)
    s: str | None                 # [BH * G, Sq, Sk] contiguous (scores mode)
    v: str                        # [BH, Sk, Dv] contiguous
    group: int                    # query heads per K/V head (GQA)
    ops: list[tuple]              # between scores and softmax, in order: ("scale", c) | ("fill", mask, value)
                                  # | ("bias", mask)
    out: AtenNode                 # the second bmm
    dims: tuple[int, int, int, int, int]   # BH (K/V heads), Sq, Sk, D, Dv


def _attention_matches(graph: AtenGraph) -> list[_Attention]:
    """Every attention pattern of ``graph`` whose intermediates are used by nothing else."""
    sem = semantic_nodes(graph)
    sem_index = {n.name: i for i, n in enumerate(sem)}
    by_name = {n.name: n for n in graph.nodes}
    consumers = _consumers(graph)
    outputs = {r.name for r in graph.outputs}
    _, constants = _const_and_alias_steps(graph)
    found = []
    for node in sem:
        if aten_name(node.target) != "bmm":
            continue
        try:
            m = _match_attention(graph, node, sem_index, by_name, consumers, outputs, constants)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, UnsupportedOpError):
            m = None  # not an attention pattern this matcher understands: the greedy regions take it
        if m is not None and not any(set(m.nodes) & set(f.nodes) for f in found):
            found.append(m)
    return found


def _match_attention(graph, bmm2, sem_index, by_name, consumers, outputs, constants) -> _Attention | None:
    def node_of(v):
        return by_name.get(v)

    def is_relabel(n):
        return n is not None and n.target != "getitem" and \
            (op_kind(n.target) in TRANSPARENT_KINDS or _is_alias(n, graph))

    def back(v, path):
        """Follow relabels back to the value they relabel; ``path`` collects them."""
        while is_relabel(node_of(v)):
            path.append(v)
            v = node_of(v).refs()[0].name
        return v

    def exclusive(values, inside):
        """Every consumer of ``values`` is in ``inside``; none is a graph output."""
        for v in values:
            if v in outputs or not consumers.get(v, set()) <= inside:
                return False
        return True

    def gqa(v, path):
        """(source, group): an expand of an unsqueezed [.., 1, S, D] to [.., G, S, D] shares K/V heads."""
        n = node_of(v)
        if n is None or aten_name(n.target) != "expand" or is_noop_expand(n, graph):
            return v, 1, None
        src_shape = graph.spec(n.args[0]).shape
        out_shape = n.outs[0].shape
        if len(src_shape) != len(out_shape) or len(out_shape) < 3 or src_shape[-3] != 1 or \
                tuple(src_shape[:-3]) + tuple(src_shape[-2:]) != tuple(out_shape[:-3]) + tuple(out_shape[-2:]):
            raise UnsupportedOpError("not a K/V head expansion")
        return back(n.args[0].name, path), out_shape[-3], n

    if len(bmm2.args) != 2 or not all(isinstance(a, Ref) for a in bmm2.args):
        return None
    chain: list[str] = []       # relabels and values that only the region may read
    nodes: list[AtenNode] = [bmm2]
    p = back(bmm2.args[0].name, chain)
    soft = node_of(p)
    if soft is None or aten_name(soft.target) != "_softmax" or not _last_dim(soft, graph, soft.args[1]) or \
            (len(soft.args) > 2 and soft.args[2]):
        return None
    chain.append(soft.name)
    nodes.append(soft)
    ops: list[tuple] = []
    path: list[str] = []
    x = back(soft.args[0].name, path)
    while True:
        n = node_of(x)
        base = aten_name(n.target) if n is not None else ""
        if n is None or n.name in constants or tuple(n.outs[0].shape) != tuple(graph.spec(soft.args[0]).shape):
            break
        if base in ("mul", "div") and len(n.args) == 2 and isinstance(n.args[0], Ref) and \
                isinstance(n.args[1], (int, float)) and not isinstance(n.args[1], bool):
            c = float(n.args[1])
            ops.append(("scale", c if base == "mul" else 1.0 / c))
        elif base == "where" and len(n.args) == 3 and isinstance(n.args[0], Ref) and \
                n.args[0].name in constants and isinstance(n.args[2], Ref) and n.args[2].name not in constants \
                and graph.spec(n.args[0]).dtype == "bool":
            fill = n.args[1]
            if isinstance(fill, Ref):
                fnode = node_of(fill.name)
                if fnode is None or aten_name(fnode.target) != "scalar_tensor":
                    return None
                fill = fnode.args[0]
            if not isinstance(fill, (int, float)):
                return None
            ops.append(("fill", n.args[0].name, float(fill)))
        elif base == "add" and len(n.args) == 2 and all(isinstance(a, Ref) for a in n.args) and \
                sum(a.name in constants for a in n.args) == 1 and n.kwargs.get("alpha", 1) == 1:
            mask = next(a.name for a in n.args if a.name in constants)
            if graph.spec(mask).dtype not in ("f32", "bf16", "f16"):
                return None
            ops.append(("bias", mask))
        else:
            break
        chain.extend(path)
        path = []
        chain.append(n.name)
        nodes.append(n)
        data = [a for a in n.refs() if a.name not in constants]
        x = back(data[0].name, path)
    ops.reverse()
    scores_shape = tuple(graph.spec(soft.args[0]).shape)
    Sq, Sk = scores_shape[-2], scores_shape[-1]
    for op in ops:
        if op[0] in ("fill", "bias"):
            ms = tuple(graph.spec(op[1]).shape)
            if len(ms) < 2 or tuple(ms[-2:]) != (Sq, Sk) or any(d != 1 for d in ms[:-2]):
                return None  # only a mask shared by every batch and head
    first = node_of(x)
    mode, q, k, s, group_k = "scores", None, None, x, 1
    if first is not None and aten_name(first.target) == "bmm" and len(first.args) == 2:
        kpath: list[str] = []
        qv = back(first.args[0].name, [])
        kt = back(first.args[1].name, kpath)
        pn = node_of(kt)
        if pn is not None and aten_name(pn.target) in ("permute", "transpose", "t"):
            rank = len(pn.outs[0].shape)
            if aten_name(pn.target) == "permute":
                dims = [d % rank for d in pn.args[1]]
                ok = dims == list(range(rank - 2)) + [rank - 1, rank - 2]
            elif aten_name(pn.target) == "transpose":
                ok = sorted(d % rank for d in pn.args[1:3]) == [rank - 2, rank - 1]
            else:
                ok = rank == 2
            if ok and rank >= 3:
                mode, q, s = "qk", qv, None
                chain.extend(path)
                chain.append(first.name)
                nodes.append(first)
                kpath2: list[str] = []
                k, group_k, kexp = gqa(back(pn.args[0].name, kpath2), kpath2)
                # the permute (and a head expansion) are the region's when nothing else reads them
                inside_k = {pn.name} | set(kpath) | set(kpath2) | {first.name}
                if exclusive([pn.name] + kpath, set(kpath) | {first.name}):
                    nodes.append(pn)
                    if kexp is not None and exclusive([kexp.name] + kpath2, inside_k | {kexp.name}):
                        nodes.append(kexp)
    vpath: list[str] = []
    v, group_v, vexp = gqa(back(bmm2.args[1].name, vpath), vpath)
    if vexp is not None and exclusive([vexp.name] + vpath, set(vpath) | {vexp.name, bmm2.name}):
        nodes.append(vexp)
    inside = {n.name for n in nodes} | set(chain)
    if not exclusive(chain, inside):
        return None
    vs = tuple(graph.spec(v).shape)
    Dv = vs[-1]
    if tuple(bmm2.outs[0].shape)[-2:] != (Sq, Dv) or vs[-2] != Sk:
        return None
    BHq = math.prod(bmm2.outs[0].shape[:-2])
    if mode == "qk":
        qs, ks = tuple(graph.spec(q).shape), tuple(graph.spec(k).shape)
        if len(qs) < 3 or len(ks) < 3 or qs[-2] != Sq or ks[-2] != Sk or qs[-1] != ks[-1] or \
                math.prod(qs[:-2]) != BHq:
            return None
        D = qs[-1]
        if group_k != group_v or math.prod(ks[:-2]) * group_k != BHq or math.prod(vs[:-2]) * group_v != BHq:
            return None
    else:
        ss = tuple(graph.spec(s).shape)
        if len(ss) < 3 or ss[-2:] != (Sq, Sk) or math.prod(ss[:-2]) != BHq or \
                math.prod(vs[:-2]) != BHq or group_v != 1:
            return None
        D = 0
    dts = {asp_dtype(graph.spec(x_)) for x_ in ([q, k] if mode == "qk" else [s]) + [v]} | {asp_dtype(bmm2.outs[0])}
    if len(dts) != 1 or dts - {"f32", "bf16", "f16"}:
        return None
    if any(n.name not in sem_index for n in nodes):
        return None
    return _Attention(sorted(sem_index[n.name] for n in nodes), mode, q, k, s, v, group_v, ops, bmm2,
                      (BHq // group_v, Sq, Sk, D, Dv))


M_FLOOR = -1e30   # the online softmax's initial running max (finite: see AttentionKernel)


class AttentionKernel(_RegionCode):
    """softmax(scale * Q K^T [masked]) V as one streaming kernel (flash attention): per (K/V head,
    query block) the K/V blocks, held on chip, stream past an online-softmax ``accum`` of the
    running max m, sum l and output acc; the scores never reach HBM."""

    def build(self) -> OpKernel:
        g = self.g
        att = self.whole_match(_attention_matches(g), "attention pattern")
        BH, Sq, Sk, D, Dv = att.dims
        G = att.group
        p = self.region.params
        bq = divisor_at_most(Sq, int(p.get("tm", 128)))    # query rows per block
        bk = divisor_at_most(Sk, int(p.get("tk", 128)))    # keys per block
        par, par_m, par_b = int(p.get("par", 128)), int(p.get("par_mem", 4)), int(p.get("par_buf", 8))
        kv_buf = bool(p.get("kv_buf", 1))
        dt = asp_dtype(att.out.outs[0])
        kb = KernelBuilder(f"fused_{self.ri}_attention")
        sizes = {"BH": BH, "SQ": G * Sq, "SK": Sk, "DV": Dv, "BQ": bq, "BK": bk}
        if att.mode == "qk":
            sizes["D"] = D
        if G > 1:
            sizes["SM"] = Sq
        kb.fns.append("  sizes " + ", ".join(f"{k} = {v}" for k, v in sizes.items()))
        inputs, views, streams, params = [], [], [], []

        def kv(name: str, dcol: str, augment: str | None = None) -> str:
            pn = kb.param(dt, ("BH", "SK", dcol))
            inputs.append(name)
            views.append((BH, Sk, D if dcol == "D" else Dv))
            if kv_buf:
                (s,) = kb.op(f"load({pn}, tile=[1, BK, {dcol}], par={par_m})")
                if augment:
                    (s,) = kb.op(f"map({s}, fn={augment}, par={min(4, par)})")
                (b,) = kb.op(f"bufferize({s}, rank=1, par={par_b})")
                (r,) = kb.op(f"streamify({b}, repeat=SQ / BQ, par={par_b})")
            else:  # re-read from HBM for every query block
                (r,) = kb.op(f"load({pn}, tile=[1, BK, {dcol}], repeat=SQ / BQ, at=1, par={par_m})")
                if augment:
                    (r,) = kb.op(f"map({r}, fn={augment}, par={min(16, par)})")
            return r

        if att.mode == "qk":
            pq = kb.param(dt, ("BH", "SQ", "D"))
            inputs.append(att.q)
            views.append((BH, G * Sq, D))
            (qs,) = kb.op(f"load({pq}, tile=[1, BQ, D], par={par_m})")
            (qr,) = kb.op(f"repeat({qs}, SK / BK)")
            streams += [qr, kv(att.k, "D")]
            params += ["qt", "kt"]
            s = "matmul(qt, transpose(kt))"
        else:
            ps = kb.param(dt, ("BH", "SQ", "SK"))
            inputs.append(att.s)
            views.append((BH, G * Sq, Sk))
            (ss,) = kb.op(f"load({ps}, tile=[1, BQ, BK], par={par_m})")
            streams.append(ss)
            params.append("st")
            s = "st"
        # V gets a column of ones: the product P V then carries the softmax denominator sum(P) in its
        # last column, and the accumulator is (m, acc) only (fewer operations per step: fewer PCUs a copy)
        aug = kb.fn(["vt"], f"concat(vt, ones([BK, 1]{'' if dt == 'f32' else f', dtype={dt}'}), axis=1)")
        streams.append(kv(att.v, "DV", aug))
        params.append("vt")
        self.lets = []
        cur = self.let(s if dt == "f32" else f"cast({s}, f32)", "s")
        for op in att.ops:
            if op[0] == "scale":
                cur = self.let(f"{cur} * {asp_literal(op[1])}", "s")
                continue
            mspec = g.spec(op[1])
            pm = kb.param(asp_dtype(mspec), ("SM" if G > 1 else "SQ", "SK"))
            inputs.append(op[1])
            views.append((Sq, Sk))
            heads = f"BH * {G}" if G > 1 else "BH"
            if kv_buf:  # loaded once into an on-chip buffer, re-read for every head
                (ms,) = kb.op(f"load({pm}, tile=[BQ, BK], par={par_m})")
                (mb,) = kb.op(f"bufferize({ms}, rank=2, par={par_b})")
                (mr,) = kb.op(f"streamify({mb}, repeat={heads}, par={par_b})")
            else:  # re-read from HBM for every head (where the buffer does not fit)
                (mr,) = kb.op(f"load({pm}, tile=[BQ, BK], repeat={heads}, at=0, par={par_m})")
            if G > 1:  # [BH * G, Sq/BQ, Sk/BK] -> [BH, G * Sq/BQ, Sk/BK]: query rows of G heads per K/V head
                (mf,) = kb.op(f"flatten({mr}, dims=[0, 1])")
                (mr,) = kb.op(f"reshape({mf}, dim=0, chunk=SQ / BQ)")
            streams.append(mr)
            mt = f"mt{len(params)}"
            params.append(mt)
            if op[0] == "fill":
                cur = self.let(f"where({mt}, {asp_literal(op[2])}, {cur})", "s")
            else:
                cur = self.let(f"{cur} + {mt if asp_dtype(mspec) == 'f32' else f'cast({mt}, f32)'}", "s")
        # m starts at a finite floor, not -inf: a row whose blocks so far are all masked (max -inf) keeps
        # m = floor and gets p = exp(-inf) = 0, c = 1, never exp(-inf - -inf) = NaN; a row masked whole
        # ends with 0 / 0 = NaN, as softmax gives
        m2 = self.let(f"maximum(m, max({cur}, axis=1))", "m")
        pe = self.let(f"exp({cur} - {m2})", "p")
        c = self.let(f"exp(m - {m2})", "c")
        pv = f"matmul({pe}, vt)" if dt == "f32" else f"cast(matmul(cast({pe}, {dt}), vt), f32)"
        step = kb.fn(["m", "acc"] + params, f"({m2}, acc * {c} + {pv})", self.lets)
        ratio = "slice(acc, axis=1, stop=DV) / slice(acc, axis=1, start=DV)"
        fin = kb.fn(["acc"], ratio if dt == "f32" else f"cast({ratio}, {dt})")
        kb.n += 1
        acc = f"acc{kb.n}"
        kb.body.append(f"  _, {acc} = accum({', '.join(streams)}, rank=1, init=(full([BQ, 1], {asp_literal(M_FLOOR)}), "
                       f"zeros([BQ, DV + 1])), fn={step}, par={par})")
        (os_,) = kb.op(f"map({acc}, fn={fin}, par={min(16, par)})")
        oname = kb.result(dt, ("BH", "SQ", "DV"))
        kb.do(f"store({oname}, {os_}, par={par_m})")
        comment = "fused attention region (online softmax): " + ", ".join(n.target for n in self.nodes)
        return OpKernel(att.out.name, "fused.attention", kb.text(comment), inputs, views, [att.out.name],
                        [(BH, G * Sq, Dv)])


# ------------------------------------------------------------------ mixture of experts (routing)

@dataclass
class _Moe:
    """A dense-masked mixture of experts: every expert's MLP runs on every token and a gate matrix
    with at most ``k`` non-zero entries per token weights the experts' outputs, summed over experts.
    Routed, each token goes only through the experts its gates name: E/k fewer flops."""
    nodes: list[int]                    # semantic indices the region computes
    gates: str                          # G [T, E]: at most k non-zeros per row (read from HBM)
    k: int
    x: str                              # the tokens, viewed [T, D]
    up: list[tuple[AtenNode, str]]      # (bmm of the expanded tokens, its stacked weight [E, D, F])
    hidden: list[AtenNode]              # elementwise ops from the up products to the down product, in order
    h: str                              # the value the down product reads ([E, T, F])
    down: tuple[AtenNode, str]          # (bmm, its stacked weight [E, F, N])
    post: list[AtenNode]                # elementwise ops of one operand on the expert outputs, in order
    out: AtenNode                       # the sum over experts
    dims: tuple[int, int, int, int, int]   # E, T, D, F, N


class _Walk:
    """Following values back through relabels (views, unsqueezes, no-op expands)."""

    def __init__(self, graph: AtenGraph):
        self.g = graph
        self.by_name = {n.name: n for n in graph.nodes}
        self.consumers = _consumers(graph)
        self.outputs = {r.name for r in graph.outputs}
        _, self.constants = _const_and_alias_steps(graph)
        self.order = {n.name: i for i, n in enumerate(graph.nodes)}

    def node(self, v: str) -> AtenNode | None:
        return self.by_name.get(v)

    def relabel(self, n: AtenNode | None) -> bool:
        return n is not None and n.target != "getitem" and \
            (op_kind(n.target) in TRANSPARENT_KINDS or _is_alias(n, self.g))

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


def _moe_nonzeros(w: _Walk, gates: str, T: int, E: int) -> int | None:
    """k when the gate matrix has at most k non-zero entries per row by construction, else None:
    ``where(idx[:, None] == arange(E), P, 0)`` (k = 1) or ``zeros.scatter(1, idx [T, k], src)``."""
    n = w.node(w.back(gates, []))
    if n is None:
        return None
    base = aten_name(n.target)
    if base == "where" and len(n.args) == 3 and isinstance(n.args[0], Ref) and w.is_zero(n.args[2]):
        cond = w.node(w.back(n.args[0].name, []))
        if cond is None or aten_name(cond.target) != "eq" or len(cond.args) != 2 or \
                not all(isinstance(a, Ref) for a in cond.args):
            return None
        for a, b in (cond.args, cond.args[::-1]):
            ar = w.node(w.back(b.name, []))
            # a column of one index per token against E distinct expert ids: one True per row at most
            if ar is not None and aten_name(ar.target) == "arange" and b.name in w.constants and \
                    math.prod(w.g.spec(b).shape) == E and tuple(w.g.spec(a).shape)[-2:] == (T, 1) and \
                    math.prod(w.g.spec(a).shape) == T:
                return 1
        return None
    if base == "scatter" and len(n.args) >= 3 and isinstance(n.args[1], int) and n.args[1] % 2 == 1 and \
            w.is_zero(n.args[0]) and isinstance(n.args[2], Ref) and not n.kwargs.get("reduce"):
        ishape = tuple(w.g.spec(n.args[2]).shape)
        if len(ishape) == 2 and ishape[0] == T and 1 <= ishape[1] <= E:
            return ishape[1]
    return None


def _moe_matches(graph: AtenGraph) -> list[_Moe]:
    """Every dense-masked mixture of experts of ``graph`` whose intermediates nothing else reads."""
    sem = semantic_nodes(graph)
    sem_index = {n.name: i for i, n in enumerate(sem)}
    w = _Walk(graph)
    found = []
    for node in sem:
        if aten_name(node.target) != "sum":
            continue
        try:
            m = _match_moe(w, node, sem_index)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, UnsupportedOpError):
            m = None
        if m is not None and not any(set(m.nodes) & set(f.nodes) for f in found):
            found.append(m)
    return found


def _match_moe(w: _Walk, s: AtenNode, sem_index: dict) -> _Moe | None:
    g = w.g
    if len(s.args) < 2 or not isinstance(s.args[0], Ref) or s.kwargs.get("dtype") is not None:
        return None
    src = g.spec(s.args[0])
    dims = [s.args[1]] if isinstance(s.args[1], int) else list(s.args[1] or [])
    if len(src.shape) != 3 or [d % 3 for d in dims] != [0]:
        return None
    E, T, N = src.shape
    chain: list[str] = []               # values only the region may read
    mul = w.node(w.back(s.args[0].name, chain))
    if mul is None or aten_name(mul.target) != "mul" or len(mul.args) != 2 or \
            not all(isinstance(a, Ref) for a in mul.args):
        return None
    chain.append(mul.name)
    nodes = [s, mul]
    # the gate side: G [T, E] transposed to [E, T] and unsqueezed to [E, T, 1]
    gate = eo = None
    for a, b in (mul.args, mul.args[::-1]):
        if tuple(g.spec(a).shape) != (E, T, 1):
            continue
        gpath: list[str] = []
        pn = w.node(w.back(a.name, gpath))
        if pn is None or aten_name(pn.target) not in ("permute", "t", "transpose") or len(pn.outs[0].shape) != 2:
            continue
        if aten_name(pn.target) == "permute" and [d % 2 for d in pn.args[1]] != [1, 0]:
            continue
        if tuple(g.spec(pn.args[0]).shape) != (T, E):
            continue
        gate, eo = (pn, gpath), b
        break
    if gate is None:
        return None
    pn, gpath = gate
    chain += gpath + [pn.name]
    nodes.append(pn)
    gates = pn.args[0].name
    k = _moe_nonzeros(w, gates, T, E)
    if k is None:
        return None
    # the expert outputs: [elementwise ops of one operand] after the down product
    v = w.back(eo.name, chain)
    post: list[AtenNode] = []
    while True:
        n = w.node(v)
        if n is None or row_kind(n, g) != "elementwise" or len(n.refs()) != 1 or \
                tuple(n.outs[0].shape) != (E, T, N) or n.name in w.constants:
            break
        post.append(n)
        nodes.append(n)
        chain.append(n.name)
        v = w.back(n.refs()[0].name, chain)
    post.reverse()
    down = w.node(v)
    if down is None or aten_name(down.target) != "bmm" or len(down.args) != 2 or \
            not all(isinstance(a, Ref) for a in down.args):
        return None
    chain.append(down.name)
    nodes.append(down)
    h = w.back(down.args[0].name, chain)
    F = g.spec(down.args[0]).shape[-1]

    def weight(ref: Ref, shape: tuple[int, int, int]) -> str | None:
        root = w.back(ref.name, [])
        if root in w.constants or math.prod(g.spec(root).shape) != math.prod(shape) or \
                tuple(g.spec(ref).shape) != shape:
            return None
        return root

    w_down = weight(down.args[1], (E, F, N))
    if w_down is None:
        return None
    # the up products of the expanded tokens, and the elementwise ops combining them
    up: list[tuple[AtenNode, str]] = []
    hidden: list[AtenNode] = []
    tokens: set[str] = set()
    seen: set[str] = set()

    def visit(v: str) -> bool:
        n = w.node(v)
        if n is None or n.name in w.constants:
            return False
        if n.name in seen:
            return True
        seen.add(n.name)
        chain.append(n.name)
        nodes.append(n)
        if aten_name(n.target) == "bmm" and len(n.args) == 2 and all(isinstance(a, Ref) for a in n.args):
            xe = w.node(w.back(n.args[0].name, chain))
            if xe is None or aten_name(xe.target) != "expand" or is_noop_expand(xe, g) or \
                    not isinstance(xe.args[0], Ref):
                return False
            tin = tuple(g.spec(xe.args[0]).shape)
            D = xe.outs[0].shape[-1]
            if tuple(xe.outs[0].shape) != (E, T, D) or (1,) * (3 - len(tin)) + tin != (1, T, D) or \
                    tuple(n.outs[0].shape) != (E, T, F):
                return False
            wt = weight(n.args[1], (E, D, F))
            if wt is None:
                return False
            tokens.add(w.back(xe.args[0].name, []))
            if xe.name not in seen:
                seen.add(xe.name)
                chain.append(xe.name)
                nodes.append(xe)
            up.append((n, wt))
            return True
        if row_kind(n, g) == "elementwise" and tuple(n.outs[0].shape) == (E, T, F) and n.refs():
            hidden.append(n)
            return all(visit(w.back(r.name, chain)) for r in n.refs())
        return False

    if not visit(h) or len(tokens) != 1 or not up:
        return None
    x = tokens.pop()
    D = g.spec(up[0][0].args[0]).shape[-1]
    if any(asp_dtype(g.spec(v_)) != "f32" for v_ in [gates, x, w_down] + [wt for _, wt in up]) or asp_dtype(s.outs[0]) != "f32":
        return None  # the routed kernel computes in f32 throughout, as the dense graph does
    inside = set(chain) | {n.name for n in nodes}
    if not w.exclusive(chain, inside) or any(n.name not in sem_index for n in nodes):
        return None
    hidden.sort(key=lambda n: w.order[n.name])
    up.sort(key=lambda u: w.order[u[0].name])
    return _Moe(sorted({sem_index[n.name] for n in nodes}), gates, k, x, up, hidden, h, (down, w_down), post, s,
                (E, T, D, F, N))


def moe_regions(graph: AtenGraph) -> list[Region]:
    """The graph's dense-masked mixtures of experts (gates, expert MLPs, combine) as whole regions."""
    return [Region("moe", list(m.nodes)) for m in _moe_matches(graph)]


class MoeKernel(_RegionCode):
    """A dense-masked mixture of experts, routed: per token the indices and weights of its (at most
    k) non-zero gates select the experts (``selector``); ``partition`` sends the token to them only;
    each expert's weights, held on chip (``bufferize``), are ``expand``ed over its tokens and streamed
    past an ``accum`` that computes the expert MLP one hidden tile at a time
    (``acc + act(x W_up[:, j]) W_down[j, :]``); ``merge`` puts the results back in token order, where
    they are weighted by the gates and summed over the k slots. E/k fewer flops than the dense form."""

    def build(self) -> OpKernel:
        g = self.g
        moe = self.whole_match(_moe_matches(g), "mixture of experts")
        E, T, D, F, N = moe.dims
        k = moe.k
        p = self.region.params
        tf = divisor_at_most(F, int(p.get("tk", 128)))      # hidden columns per accum step
        par, par_m, par_b = int(p.get("par", 256)), int(p.get("par_mem", 8)), int(p.get("par_buf", 128))
        par_s = min(16, par)                                # the per-token maps (routing, gating)
        kb = KernelBuilder(f"fused_{self.ri}_moe")
        kb.fns.append(f"  sizes T = {T}, D = {D}, E = {E}, F = {F}, N = {N}, TF = {tf}")
        inputs, views = [], []

        def param(name: str, shape_names: tuple, shape: tuple) -> str:
            inputs.append(name)
            views.append(shape)
            return kb.param("f32", shape_names)

        # routing: the experts with a non-zero gate, in ascending order (the order torch's sum over
        # experts adds them in), padded with zero-gate experts; and their gates
        route = kb.fn(["g"], "(i, take(g, i, axis=1))", [
            ("r", "cast(iota([1, E], axis=1), f32)"),
            ("key", f"where(abs(g) > 0.0, 0.0 - r, {asp_literal(-float(E))} - r)"),
            ("i", f"argtopk(key, k={k}, axis=1)")])
        (gs,) = kb.op(f"load({param(moe.gates, ('T', 'E'), (T, E))}, tile=[1, E], par={par_m})")
        idx, gv = kb.op(f"map({gs}, fn={route}, par={par_s})", 2)
        (sel,) = kb.op(f"selector({idx}, n=E)")
        s_part, s_merge = kb.op(f"copy({sel})", 2)
        (xs,) = kb.op(f"load({param(moe.x, ('T', 'D'), (T, D))}, tile=[1, D], par={par_m})")
        (parts,) = kb.op(f"partition({xs}, {s_part})")
        like = kb.op(f"copy({parts})", 2 + len(moe.up))
        (xr,) = kb.op(f"repeat({like[0]}, F / TF)")

        def weights(name: str, shape_names: tuple, shape: tuple, tile: str, like_: str) -> str:
            (ws,) = kb.op(f"load({param(name, shape_names, shape)}, tile={tile}, par={par_m})")
            (wb,) = kb.op(f"bufferize({ws}, rank=1, par={par_b})")      # [E] of buf[F / TF]: one expert each
            (we,) = kb.op(f"expand({wb}, like={like_})")                # over the tokens routed to it
            (wt,) = kb.op(f"streamify({we}, par={par_b})")
            return wt

        streams = [xr]
        params = ["xt"]
        self.lets = []
        for j, (node, wname) in enumerate(moe.up):
            streams.append(weights(wname, ("E", "D", "F"), (E, D, F), "[1, D, TF]", like[1 + j]))
            params.append(f"a{j}")
            self.expr[node.name] = self.let(f"matmul(xt, a{j})", "u")

        def operands(node: AtenNode) -> list[str]:
            ops, fexpr, _ = elementwise_parts(node, g, elementwise_kind(aten_name(node.target)))
            return fexpr([self.expr[self.resolve(o.value)] if o.kind == "tensor" else asp_literal(o.value) for o in ops])

        for node in moe.hidden:
            self.expr[node.name] = self.let(operands(node), "h")
        # the up products and the activation (one hidden tile per token and step), then the down
        # product accumulated over the hidden tiles: two operators, so each copy fits one PCU; both
        # are bound by reading their weight tiles, and share the ``par`` copies by the bytes they read
        up_bytes, down_bytes = D + len(moe.up) * D * tf, tf + tf * N
        par_up = max(1, round(par * up_bytes / (up_bytes + down_bytes)))
        par_down = max(1, par - par_up)
        up = kb.fn(params, self.expr[self.resolve(moe.h)], self.lets)
        (hs,) = kb.op(f"map({', '.join(streams)}, fn={up}, par={par_up})")       # [E, ?, F / TF] of f32[1, TF]
        down, wdown = moe.down
        wd = weights(wdown, ("E", "F", "N"), (E, F, N), "[1, TF, N]", like[-1])
        mac = kb.fn(["acc", "h", "b"], "acc + matmul(h, b)")
        (o,) = kb.op(f"accum({hs}, {wd}, rank=1, init=zeros([1, N]), fn={mac}, par={par_down})")
        if moe.post:
            self.lets = []
            self.expr[down.name] = "t"
            for node in moe.post:
                self.expr[node.name] = self.let(operands(node), "q")
            post = kb.fn(["t"], self.expr[moe.post[-1].name], self.lets)
            (o,) = kb.op(f"map({o}, fn={post}, par={par_s})")
        (m,) = kb.op(f"merge({o}, {s_merge})")                          # [T, k] of f32[1, N]
        if k == 1:
            (mf,) = kb.op(f"flatten({m}, dims=[0, 1])")
            scale = kb.fn(["o", "w"], "o * w")
            (ys,) = kb.op(f"map({mf}, {gv}, fn={scale}, par={par_s})")
        else:
            one = kb.fn(["w"], "w")
            (gk,) = kb.op(f"flatmap({gv}, fn={one}, split=[1, 1])")    # [T, k] of f32[1, 1]
            comb = kb.fn(["acc", "o", "w"], "acc + o * w")
            (ys,) = kb.op(f"accum({m}, {gk}, rank=1, init=zeros([1, N]), fn={comb}, par={par_s})")
        out = kb.result("f32", ("T", "N"))
        kb.do(f"store({out}, {ys}, par={par_m})")
        comment = (f"fused mixture of experts, routed (top-{k} of {E}): " +
                   ", ".join(n.target for n in self.nodes))
        return OpKernel(moe.out.name, "fused.moe", kb.text(comment), inputs, views, [moe.out.name], [(T, N)])


# ------------------------------------------------------------------ search

ROW_GRID = {"rows": (1, 4, 16, 64), "par": (16, 64, 256), "par_mem": (4, 16)}
# matmul: output tile (tm x tn, its f32 accumulator in one PMU up to 512 x 256), reduction step, accum
# copies, A's row block held on chip and re-streamed per column block (hold=1, banked over par_buf PMUs),
# all of B held too (hold=2) or both re-read from HBM (hold=0), memory and epilogue parallelism. Each key's first value is where the
# search starts (a large square GEMM's best neighbourhood); the grid is searched by coordinate descent
MM_GRID = {"tm": (256, 512, 128, 64), "tn": (256, 512, 128, 64), "tk": (128, 256, 64),
           "par": (1000, 1024, 960, 896, 768, 640, 512, 256, 64), "hold": (1, 2, 0), "par_buf": (16, 32, 64),
           "par_mem": (8, 16), "par_epi": (16, 64)}
MM_MIN_TRIES = 80  # about three rounds of coordinate descent: a matmul region is most of a layer's time
# the referee checks a plan at sizes where every tiled axis is 3 tiles long, within a budget of input,
# weight and output elements (agentforge.verify.VerifyConfig.check_elements, 2^23; docs/evaluation.md
# 2.1); a plan past it is 'uncheckable' and its tiles get halved blindly. The tuner keeps each matmul
# region's share of that budget instead, so it picks the best tiles that can be checked
CHECK_ELEMENTS = 1 << 23
LAYER_TILE_CAP = 256   # tm / tn of a plan with several matmul regions (see tune)


def mm_check_elements(region: Region, graph: AtenGraph, idx: "_GraphIndex") -> int | None:
    """The elements of A, B and C a matmul region's tiles need at their smallest check sizes (each
    tiled axis 3 tiles long, or as long as at the task's own sizes), or None if it has no matmul."""
    mm = next((idx.sem[i] for i in region.nodes if aten_name(idx.sem[i].target) in ("mm", "addmm", "bmm")), None)
    if mm is None:
        return None
    a, b = (mm.args[1], mm.args[2]) if aten_name(mm.target) == "addmm" else (mm.args[0], mm.args[1])
    sa, sb = graph.spec(a).shape, graph.spec(b).shape
    M, K, N = sa[-2], sa[-1], sb[-1]
    bt = min(sa[0], 4) if len(sa) == 3 else 1    # a batch axis of tile 1 shrinks to the sidecar's few
    p = region.params

    def dim(n: int, key: str) -> int:
        t = divisor_at_most(n, int(p.get(key, MM_TILE)))
        return t * min(3, n // t)
    m, k, n = dim(M, "tm"), dim(K, "tk"), dim(N, "tn")
    return bt * (m * k + k * n + m * n)
SINGLE_GRID = {"compute": (4, 16, 64, 256), "memory": (2, 8)}
# attention: query rows (tm) and keys (tk) per block, accum copies (each needs ceil(fn ops / stages) PCUs),
# memory and buffer parallelism, K/V held on chip (1) or re-read from HBM per query block (0)
ATTN_GRID = {"tm": (128, 64), "tk": (256, 128), "par": (510, 500, 480, 448, 400, 340, 256, 128, 64, 16, 8),
             "par_mem": (4, 16, 1), "par_buf": (8,), "kv_buf": (1, 0)}
ATTN_MIN_TRIES = 264  # the whole grid: an attention region is most of its task's time
# moe: hidden columns per accum step (tk), accum copies, banking of the on-chip expert weights (each
# token re-reads its experts' weights from SRAM: their read bandwidth bounds the kernel) and memory
# parallelism
# (no tk = 256: checking a kernel in its timed configuration needs FFN >= 3 tk, and the interpreter
# expands each routed token's expert weights, tokens x hidden x FFN elements: at tk = 256 that is
# past its caps, so the plan would be 'uncheckable', docs/evaluation.md section 2.1)
MOE_GRID = {"tk": (128, 64), "par": (960, 896, 768, 640, 512, 384, 256, 128),
            "par_buf": (448, 384, 320, 256, 192, 128, 64), "par_mem": (8,)}
MOE_MIN_TRIES = 112  # the whole grid: a moe region is most of its task's time
GRIDS = {"row": ROW_GRID, "matmul": MM_GRID, "attention": ATTN_GRID, "moe": MOE_GRID, "single": SINGLE_GRID}
MIN_TRIES = {"attention": ATTN_MIN_TRIES, "moe": MOE_MIN_TRIES, "matmul": MM_MIN_TRIES}
WHOLE_GRID = ("attention", "moe")  # searched exhaustively (MIN_TRIES is their whole grid)
PRIOR_RADIUS = 1   # with priors, only parameter sets differing from them in at most this many places


@dataclass
class Tuned:
    plan: Plan
    seconds: float
    kernels: int
    configs_tried: int
    #: per searched region: (template, best seconds after each timing evaluation)
    curves: list = field(default_factory=list)


def chain_seconds(chain: Baseline) -> float:
    return chain.time().seconds


def tune(plan: Plan, graph_own: AtenGraph, machine: Machine, priors: dict | None = None,
         budget: int = 400) -> Tuned:
    """Search each region's parameters against the timing model at the task's own sizes."""
    priors = priors or {}
    idx = _index(graph_own)
    tried = 0
    regions = []
    per_region = max(1, budget // max(1, len(plan.regions)))
    curves: list = []
    # the check budget shared by the matmul regions (a matmul region holds most of its weights)
    n_mm = sum(r.template == "matmul" for r in plan.regions)
    share = CHECK_ELEMENTS / max(1, n_mm)
    # a layer's matmuls share its sizes: a 512 tile on 3 x HIDDEN (a fused QKV) needs HIDDEN a multiple
    # of 512 at every check size, past the budget; layers keep the tiles that check (<= 256)
    cap = LAYER_TILE_CAP if n_mm > 1 else None
    for ri, region in enumerate(plan.regions):
        limit = max(per_region, MIN_TRIES.get(region.template, 0))
        best, n = _best_params(region, graph_own, machine, idx, priors, limit, curves, share, cap)
        tried += n
        if region.template != "single":
            # fusing must pay: compare with the same ops as separate kernels (+ reconfigurations)
            singles = [_best_params(Region("single", [i]), graph_own, machine, idx, priors, 8) for i in region.nodes]
            tried += sum(k for _, k in singles)
            if all(b is not None for b, _ in singles):
                split_secs = sum(b[0] for b, _ in singles) + \
                    (len(singles) - 1) * machine.reconfig.cycles / (machine.clock_ghz * 1e9)
                if best is None or split_secs < best[0]:
                    regions.extend(Region("single", [i], b[1]) for i, (b, _) in zip(region.nodes, singles))
                    continue
        if best is None:
            raise UnsupportedOpError(f"no parameters fit region {ri} ({region.template}) on {machine.name}")
        regions.append(Region(region.template, list(region.nodes), best[1]))
    tuned = Plan(regions, notes=plan.notes)
    chain = realize(tuned, graph_own, machine)
    return Tuned(tuned, chain.time().seconds, len(chain.kernels), tried, curves)


def _best_params(region: Region, graph: AtenGraph, machine: Machine, idx: _GraphIndex, priors: dict, limit: int,
                 curves: list | None = None, check_budget: float | None = None, tile_cap: int | None = None):
    """(seconds, params) of the fastest parameters for one region alone, and how many were tried.

    A grid no larger than ``limit`` is enumerated whole (with priors: only their neighbourhood,
    ``PRIOR_RADIUS``). A larger one is searched by coordinate descent from the priors (else from
    each key's first value): every value of one key at a time, moving to the best point found,
    round after round until a round finds nothing better or ``limit`` evaluations are spent. The
    search keeps going after the first win; the best time after each evaluation (the search
    curve) is appended to ``curves`` as (template, [seconds...]). With ``check_budget`` a matmul
    region's tiles whose check sizes need more elements (``mm_check_elements``) are not tried."""
    grid = GRIDS[region.template]
    prior = {k: v for k, v in dict(priors.get(region.template, {})).items() if k in grid}
    seen: dict[tuple, float | None] = {}
    curve: list[float] = []

    def secs_of(params: dict) -> float | None:
        key = tuple(params[k] for k in grid)
        if key not in seen and region.template == "matmul" and (
                check_budget is not None and
                (mm_check_elements(Region("matmul", region.nodes, params), graph, idx) or 0) > check_budget
                or tile_cap is not None and max(params.get("tm", 0), params.get("tn", 0)) > tile_cap):
            seen[key] = None   # uncheckable tiles: refused without timing them
            return None
        if key not in seen:
            try:
                seen[key] = _region_seconds(Region(region.template, list(region.nodes), params), graph, machine, idx)
            except (asp_lang.AspError, UnsupportedOpError, ValueError):
                seen[key] = None
            ok = [v for v in seen.values() if v is not None]
            curve.append(min(ok) if ok else math.inf)
        return seen[key]

    def fitted(params: dict) -> float | None:
        """Seconds of ``params``, else of the same point with the next smaller ``par`` values
        that fit (a larger tile or held operand takes PMUs the accum copies had)."""
        secs = secs_of(params)
        lower = [v for v in grid.get("par", ()) if v < params.get("par", 0)]
        for v in sorted(lower, reverse=True)[:3]:
            if secs is not None and secs != math.inf or len(seen) >= limit:
                break
            secs = secs_of({**params, "par": v})
        return secs

    size = math.prod(len(v) for v in grid.values())
    if region.template in WHOLE_GRID or size <= max(1, limit):
        cands = _grid_order(grid, prior)
        if prior:
            # experience says where good parameters are: search their neighbourhood only
            cands = [c for c in cands if sum(c[k] != prior.get(k, c[k]) for k in grid) <= PRIOR_RADIUS]
        for params in cands[:max(1, limit)]:
            secs_of(params)
    else:
        cur = {k: prior.get(k, vals[0]) for k, vals in grid.items()}
        secs_of(cur)
        while len(seen) < limit:
            before = _best_seen(seen, grid)
            for k, vals in grid.items():
                base = _best_seen(seen, grid)
                point = dict(base[1]) if base else dict(cur)
                for v in vals:
                    if len(seen) >= limit:
                        break
                    fitted({**point, k: v})
            after = _best_seen(seen, grid)
            if after is None or after[0] == math.inf or (before is not None and after[0] >= before[0]):
                break
        best = _best_seen(seen, grid)
        if best is None or best[0] == math.inf:
            # nothing near the start fits (a small machine): enumerate from the grid's start
            for params in _grid_order(grid, prior)[:max(1, limit)]:
                secs_of(params)
    if curves is not None:
        curves.append((region.template, curve))
    return _best_seen(seen, grid), len(seen)


def _best_seen(seen: dict, grid: dict):
    """The fastest (seconds, params) evaluated; a region that only runs in several sections (inf)
    is still returned when nothing better fits, so tune can weigh it against split kernels."""
    ok = [(v, dict(zip(grid, k))) for k, v in seen.items() if v is not None]
    return min(ok, key=lambda t: t[0]) if ok else None


def _grid_order(grid: dict, start: dict) -> list[dict]:
    keys = list(grid)
    combos = [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]
    if start:
        combos.sort(key=lambda c: sum(c[k] != start.get(k, c[k]) for k in keys))
    return combos


def _region_seconds(region: Region, graph: AtenGraph, machine: Machine, idx: _GraphIndex) -> float:
    """One region's kernel, alone, timed at the graph's sizes (inf if it needs sections)."""
    nodes = [idx.sem[i] for i in region.nodes]
    owner = {n.name: 0 for n in nodes}
    k = _region_kernel(region, nodes, graph, idx.fixed, owner, 0, idx.consumers, idx.outputs)
    if not isinstance(k, OpKernel):
        return 0.0
    prog = asp_lang.compile(k.source, machine, filename="region.asp")
    if len(prog.sections) > 1:
        return math.inf
    return asp_lang.profile(prog).seconds


def common_partition(graphs: list[AtenGraph], attention: bool = True, moe: bool = True) -> list[Region]:
    """Regions that are valid in every graph (the task at several sizes): the coarsest common
    refinement, so a fusion that only works because two sizes happen to be equal is split.
    Attention and mixture-of-experts regions are kept where every graph has the same pattern
    (``attention=False``: no attention region, attention is then matmul, row and matmul regions
    through HBM; ``moe=False``: no moe region, the experts then run densely, op by op)."""
    sem = semantic_nodes(graphs[0])
    n = len(sem)
    if any(len(semantic_nodes(g)) != n for g in graphs):
        raise UnsupportedOpError("the task's graph changes shape with its sizes; plans cannot be shared")
    # attention / moe regions only where every size matches the same pattern; the rest is partitioned around them
    found = [(attention_regions(g) if attention else []) + (moe_regions(g) if moe else []) for g in graphs]
    common = [r for r in found[0] if all(any(r2.nodes == r.nodes and r2.template == r.template for r2 in f)
                                         for f in found[1:])]
    taken = {i for r in common for i in r.nodes}
    parts = [partition(g, common) if any(found) or not (attention and moe) else partition(g) for g in graphs]
    ids = []
    for regs in parts:
        m = {}
        for ri, r in enumerate(regs):
            for i in r.nodes:
                m[i] = (ri, r.template)
        ids.append(m)
    out: list[Region] = []
    for i in range(n):
        if i not in ids[0] or i in taken:
            continue
        key = tuple(m.get(i) for m in ids)
        templates = {k[1] for k in key if k}
        if out and getattr(out[-1], "_key", None) == key:
            out[-1].nodes.append(i)
            continue
        r = Region(templates.pop() if len(templates) == 1 else "single", [i])
        r._key = key if len(templates) == 0 or r.template != "single" else None
        out.append(r)
    final: list[Region] = []
    for r in out:
        if r.template == "matmul" and not any(aten_name(sem[i].target) in ("mm", "addmm", "bmm") for i in r.nodes):
            final.extend(Region("single", [i]) for i in r.nodes)
        elif r.template == "row" and len(r.nodes) == 1 and row_kind(sem[r.nodes[0]], graphs[0]) == "expand":
            final.append(Region("single", list(r.nodes)))
        else:
            final.append(Region(r.template, list(r.nodes)))
    final.extend(Region(r.template, list(r.nodes)) for r in common)
    final.sort(key=lambda r: max(r.nodes))
    return _shared_activation(final, graphs)


MM_GROUP = 3   # matmuls of one activation fused into one region at most (q, k, v)


def _shared_activation(regions: list[Region], graphs: list[AtenGraph]) -> list[Region]:
    """Adjacent matmul regions whose matmuls read the same activation with same-shaped weights
    (q/k/v projections, SwiGLU's gate and up) become one region, in every graph alike: the kernel
    reads the activation once and keeps both products on chip for the epilogue."""
    views = []
    for g in graphs:
        fixed, _ = _const_and_alias_steps(g)
        views.append((semantic_nodes(g), fixed, g))

    def key(r: Region, sem, fixed, g):
        mms = [sem[i] for i in r.nodes if aten_name(sem[i].target) in ("mm", "addmm", "bmm")]
        if r.template != "matmul" or not mms or any(aten_name(n.target) == "bmm" for n in mms):
            return None
        _, a, b, _, _ = _mm_parts(mms[0])
        v = a.name
        while v in fixed and isinstance(fixed[v], Alias) and fixed[v].source != v:
            v = fixed[v].source
        return (v, tuple(g.spec(b).shape), mms[0].outs[0].dtype), len(mms)

    out: list[Region] = []
    for r in regions:
        prev = out[-1] if out else None
        if prev is not None:
            ks = [(key(prev, *v), key(r, *v)) for v in views]
            if all(k1 is not None and k2 is not None and k1[0] == k2[0] and k1[1] + k2[1] <= MM_GROUP
                   for k1, k2 in ks):
                out[-1] = Region("matmul", prev.nodes + r.nodes)
                continue
        out.append(r)
    return out


def author_plan(graph_own: AtenGraph, machine: Machine, priors: dict | None = None,
                graphs_small: list[AtenGraph] = ()) -> Tuned:
    """The offline planner: regions valid at every size, parameters from the timing model."""
    graphs = [graph_own, *graphs_small]
    plan = Plan(common_partition(graphs), notes="offline: greedy row/matmul fusion, tuned on the timing model")
    tuned = tune(plan, graph_own, machine, priors)
    dropped = {t for t in ("attention", "moe") if any(r.template == t for r in plan.regions)
               and not any(r.template == t for r in tuned.plan.regions)}
    if dropped:
        # no attention (or moe) kernel fits or pays on this machine: the ops fall back to single
        # kernels in tune; the greedy row/matmul regions over the same ops may do better
        alt = tune(Plan(common_partition(graphs, attention="attention" not in dropped, moe="moe" not in dropped),
                        notes=plan.notes), graph_own, machine, priors)
        tried = tuned.configs_tried + alt.configs_tried
        tuned = alt if alt.seconds < tuned.seconds else tuned
        tuned.configs_tried = tried
    return tuned


__all__ = ["Plan", "Region", "partition", "realize", "tune", "author_plan", "baseline_plan", "semantic_nodes",
           "Tuned", "with_par", "Any", "TEMPLATES", "attention_regions", "AttentionKernel", "moe_regions",
           "MoeKernel"]
