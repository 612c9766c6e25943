"""The partitioner: a task's graph as regions that a template can stream together.

Attention and mixture-of-experts patterns are matched whole first (their templates' matchers);
then a greedy walk in graph order grows one open region at a time: *row* regions (ops over one
space of rows), *matmul* regions (a matmul, its transposed weight and an elementwise epilogue),
and *single* regions (one op, as the baseline lowers it). :func:`common_partition` keeps only
the regions valid at every size of a task, and fuses adjacent matmuls of one activation.
"""

from __future__ import annotations

import math

from ..capture import TRANSPARENT_KINDS, AtenGraph, AtenNode, Ref, op_kind
from ..lowering import ROW_CAP, Alias, UnsupportedOpError, aten_name
from .graph import (const_and_alias_steps, interleaves, is_alias, is_const, row_kind, row_period, row_view,
                    semantic_nodes, swaps_last_two, total_kind)
from .plan import Plan, Region
from .templates.attention import attention_matches
from .templates.matmul import mm_parts
from .templates.moe import experts_matches, moe_matches


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
            if is_const(node, self.constants) and node.target != "getitem":
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
            if is_alias(node, self.g):
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

    def _alias_view(self, node: AtenNode, src: str) -> None:
        """An alias stays inside the open region only if it keeps the logical row view."""
        if self.open is not None and src in self.tail:
            self.tail.add(node.name)
            return
        if self.open is None or src not in self.views:
            return
        spec = node.outs[0]
        if row_view(spec.shape) == self.views[src] or \
                (self._column(spec.shape) and self.views[src] == (self.rows, 1)):   # [R, 1] squeezed to [R]
            self.views[node.name] = self.views[src]

    def _column(self, shape: tuple[int, ...]) -> bool:
        """A 1-d value of one element per row of the open region (a per-row loss, a target index):
        logically a column [rows, 1], not one row of ``rows`` columns."""
        return self.rows > 1 and len(shape) == 1 and shape[0] == self.rows

    def _column_views(self, node: AtenNode) -> bool:
        """An elementwise op on columns (and scalars): its result is a column too."""
        for r in node.refs():
            spec = self.g.spec(r.name)
            if self._operand_in_region(r) or r.name in self.views:
                if self.views.get(r.name) != (self.rows, 1) or tuple(spec.shape) not in ((self.rows,), (self.rows, 1)):
                    return False
            elif math.prod(spec.shape) != 1 and not self._column(spec.shape):
                return False
        self.views[node.name] = (self.rows, 1)
        return True

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
        if kind == "cat" and interleaves(node, self.g, self.rows):
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
            self.tail |= {o.name for o in node.outs}
            return True
        out = node.outs[0]
        if kind == "elementwise" and self._column(out.shape):
            return self._column_views(node)
        ins = [r for r in node.refs()]
        views = []
        for r in ins:
            v = self._operand_view(r, out.shape)
            if v is None:
                return False
            if len(self.g.spec(r.name).shape) == 1 < len(out.shape) and v == (self.rows, 1) and self.rows > 1:
                return False   # a column [R] broadcasts along the last dim in PyTorch, not down the rows
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
        elif kind == "gather":   # the index is rows of its own, as long as the source's
            if any(v[0] != self.rows for v in views):
                return False
            self.views[node.name] = (self.rows, out.shape[-1])
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
            # elementwise ops on the split reductions' results, or more row ops (another split reduction)
            # as long as they do not read those results (that would take a second pass over the rows)
            ok = self._tail_join(node) or self._row_views(node)
        elif self.open.template == "row":
            ok = self._row_views(node)
        else:
            ok = self._epilogue(node)
        if ok:
            self.open.nodes.append(i)
        return ok

    def _feeds_matmul_b(self, node: AtenNode) -> bool:
        rank = len(node.outs[0].shape)
        if rank < 2 or rank > 2 and not swaps_last_two(node, self.g):
            return False
        names = {node.name}
        changed = True
        while changed:  # follow aliases of the permuted value
            changed = False
            for n in self.g.nodes:
                if n.name not in names and (is_alias(n, self.g) or op_kind(n.target) in TRANSPARENT_KINDS) and \
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
    return [Region("attention", list(a.nodes)) for a in attention_matches(graph)]


def partition(graph: AtenGraph, attention: bool | list[Region] = True, moe: bool = True) -> list[Region]:
    """Greedy regions; ``attention``: detect attention (and, with ``moe``, mixture-of-experts)
    regions first (True), or take these pre-matched regions."""
    if attention is True:
        attention = attention_regions(graph) + (moe_regions(graph) + experts_regions(graph) if moe else [])
    return _Partitioner(graph, list(attention or [])).run()


def baseline_plan(graph: AtenGraph) -> Plan:
    """Every op its own region: the op-by-op baseline as a plan."""
    return Plan([Region("single", [i]) for i in range(len(semantic_nodes(graph)))
                 if not is_alias(semantic_nodes(graph)[i], graph)], notes="op by op")


def moe_regions(graph: AtenGraph) -> list[Region]:
    """The graph's dense-masked mixtures of experts (gates, expert MLPs, combine) as whole regions."""
    return [Region("moe", list(m.nodes)) for m in moe_matches(graph)]


def experts_regions(graph: AtenGraph) -> list[Region]:
    """The graph's expert MLPs on tokens already grouped by expert (batched up products, activation,
    batched down product) as whole regions."""
    return [Region("experts", list(m.nodes)) for m in experts_matches(graph)]


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
    found = [(attention_regions(g) if attention else []) + (moe_regions(g) + experts_regions(g) if moe else [])
             for g in graphs]
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
        fixed, _ = const_and_alias_steps(g)
        views.append((semantic_nodes(g), fixed, g))

    def key(r: Region, sem, fixed, g):
        mms = [sem[i] for i in r.nodes if aten_name(sem[i].target) in ("mm", "addmm", "bmm")]
        if r.template != "matmul" or not mms or any(aten_name(n.target) == "bmm" for n in mms):
            return None
        _, a, b, _, _ = mm_parts(mms[0])
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
