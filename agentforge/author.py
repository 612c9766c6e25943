"""The offline author: fuses a task's ATen graph into few streaming ASP kernels.

It is a small compiler, not a lookup table:

1. **Regions** (``partition``): walking the graph in order, ops join the open region while a
   template can stream them together: *row* regions (elementwise ops, reductions, softmax,
   layer norm, cumsum, slices and concatenation along the last dimension, over one space of
   rows: one map over row tiles whose tile function holds the whole region), and *matmul*
   regions (mm / addmm, their transposed weight, and an elementwise epilogue on the output
   tiles), and *attention* regions (Q K^T, a scale, a constant mask, softmax and the product
   with V, found whole before the greedy walk: one flash-attention kernel whose online-softmax
   ``accum`` streams K/V blocks held on chip, so the scores never reach HBM). Anything else is
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
from .lowering import (_ELEMENTWISE, ALIAS_KINDS, CONST_TARGETS, MM_TILE, ROW_CAP, TILE_CAP, Alias, Const,
                       KernelBuilder, OpKernel, Step, UnsupportedOpError, _base, _dt, _fin, _kname, _list, _lit,
                       divisor_at_most, elementwise_kind, elementwise_parts, is_noop_expand, lower_node)

PLAN_VERSION = 1
TEMPLATES = ("row", "matmul", "attention", "single")


# ------------------------------------------------------------------ plans

@dataclass
class Region:
    template: str                 # "row" | "matmul" | "attention" | "single"
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
    base = _base(node.target)
    refs = [r.name for r in node.refs()]
    return base in CONST_TARGETS or (refs and all(r in constants for r in refs)) or (not refs and base != "getitem")


def _is_alias(node: AtenNode, graph: AtenGraph | None = None) -> bool:
    return node.target == "getitem" or _base(node.target) in ALIAS_KINDS or \
        (_base(node.target) == "_to_copy" and node.kwargs.get("dtype") is None) or \
        (graph is not None and is_noop_expand(node, graph))


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


def row_kind(node: AtenNode, graph: AtenGraph) -> str | None:
    """How a node works on rows (None: it cannot join a row region)."""
    base = _base(node.target)
    a = node.args
    if base in _ELEMENTWISE and base != "expand":
        return "elementwise"
    if base == "expand":
        return "expand"
    if base in ("sum", "mean", "amax", "amin", "argmax", "argmin", "var"):
        dims = a[1] if len(a) > 1 else node.kwargs.get("dim")
        return "reduce" if _last_dim(node, graph, dims) else None
    if base in ("_softmax", "_log_softmax"):
        return "softmax" if _last_dim(node, graph, a[1]) else None
    if base == "native_layer_norm":
        return "layer_norm" if len(a[1]) == 1 else None
    if base == "cumsum":
        return "cumsum" if _last_dim(node, graph, a[1]) else None
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
    return None


# ------------------------------------------------------------------ partition

class _Partitioner:
    """Greedy, in graph order, one open region at a time (regions stay convex)."""

    def __init__(self, graph: AtenGraph, attention: list[Region] = ()):
        self.g = graph
        self.attention = {i: r for r in attention for i in r.nodes}   # nodes taken by attention regions
        self.sem = semantic_nodes(graph)
        self.sem_index = {n.name: i for i, n in enumerate(self.sem)}
        self.constants: set[str] = set()
        self.alias_of: dict[str, str] = {}      # value -> value it relabels
        self.producer: dict[str, int] = {}       # value -> semantic index
        self.regions: list[Region] = []
        self.open: Region | None = None
        self.views: dict[str, tuple[int, int]] = {}  # logical (rows, cols) of values in the open row region
        self.rows = 0

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
            if i in self.attention:  # an attention region is matched whole, before the greedy walk
                self._close()
                region = self.attention[i]
                if i == max(region.nodes):
                    self.regions.append(Region("attention", list(region.nodes), dict(region.params)))
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

    def _start(self, node: AtenNode, i: int) -> None:
        base = _base(node.target)
        kind = row_kind(node, self.g)
        if kind not in (None, "expand") and self._row_start(node):
            self.open = Region("row", [i])
            return
        if base in ("permute", "t", "transpose") and self._feeds_matmul_b(node):
            self.open = Region("matmul", [i])  # the matmul reads the weight transposed, in place
            self.rows = 0
            self.views = {}
            return
        if base in ("mm", "addmm"):
            self.open = Region("matmul", [i])
            out = node.outs[0]
            self.rows = out.shape[0]
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
            if any(v[0] not in (1, self.rows) for v in views):
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
        else:
            self.views[node.name] = (self.rows, out.shape[-1])
            if kind == "cat" and any(v[0] != self.rows for v in views):
                return False
        return True

    def _join(self, node: AtenNode, i: int) -> bool:
        if self.open is None:
            return False
        if self.open.template == "row":
            ok = self._row_views(node)
        else:
            ok = self._epilogue(node)
        if ok:
            self.open.nodes.append(i)
        return ok

    def _feeds_matmul_b(self, node: AtenNode) -> bool:
        if len(node.outs[0].shape) != 2:
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
        return len(users) == 1 and _base(users[0].target) in ("mm", "addmm") and \
            isinstance(users[0].args[-1], Ref) and users[0].args[-1].name in names

    def _epilogue(self, node: AtenNode) -> bool:
        """Elementwise ops on a matmul's output tiles join its region."""
        if not any(_base(self.sem[i].target) in ("mm", "addmm") for i in self.open.nodes):
            if _base(node.target) in ("mm", "addmm"):  # the matmul after its transposed weight
                out = node.outs[0]
                self.rows = out.shape[0]
                self.views = {node.name: row_view(out.shape)}
                return True
            return False
        if row_kind(node, self.g) != "elementwise":
            return False
        out = node.outs[0]
        if len(out.shape) != 2 or out.shape[0] != self.rows:
            return False
        touches = False
        for r in node.refs():
            v = self._operand_view(r, out.shape)
            if v is None:
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


def partition(graph: AtenGraph, attention: bool | list[Region] = True) -> list[Region]:
    """Greedy regions; ``attention``: detect attention regions first (True), or take these ones."""
    if attention is True:
        attention = attention_regions(graph)
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
    if region.template == "single" or len(nodes) == 1 and region.template not in ("matmul", "attention"):
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
                else:
                    return True
        return False


def _reduce_expr(node: AtenNode, x: str, xdt: str, odt: str, cols: int) -> str:
    base = _base(node.target)
    cdt = "f32" if xdt in ("bf16", "f16") else xdt
    if base in ("sum", "mean") and xdt != odt and odt not in ("bf16", "f16"):
        cdt = odt
    xin = x if cdt == xdt else f"cast({x}, {cdt})"
    if base == "sum":
        return _fin(f"sum({xin}, axis=1)", cdt, odt)
    if base == "mean":
        return _fin(f"mean({xin}, axis=1)", cdt, odt)
    if base in ("amax", "amin"):
        return _fin(f"{'max' if base == 'amax' else 'min'}({xin}, axis=1)", cdt, odt)
    if base in ("argmax", "argmin"):
        return f"{base}({xin}, axis=1)"
    corr = node.kwargs.get("correction", 1)
    corr = 1 if corr is None else corr
    return _fin(f"sum(({xin} - mean({xin}, axis=1)) * ({xin} - mean({xin}, axis=1)), axis=1) / "
                f"{_lit(float(cols - corr))}", cdt, odt)


class RowKernel(_RegionCode):
    """One map over tiles of R rows; the tile function computes the whole region."""

    def build(self) -> OpKernel:
        g = self.g
        first = self.nodes[0]
        rows = row_view(first.outs[0].shape)[0]
        cols = [row_view(o.shape)[1] for n in self.nodes for o in n.outs if o.dtype != "none"]
        widest = max(cols + [row_view(g.spec(r.name).shape)[1] for n in self.nodes for r in n.refs()
                             if self.resolve(r.name) not in self.inside])
        r_tile = divisor_at_most(rows, max(1, min(self.region.params.get("rows", TILE_CAP), TILE_CAP // widest)))
        par_c = int(self.region.params.get("par", 16))
        par_m = int(self.region.params.get("par_mem", 4))
        kb = KernelBuilder(f"fused_{self.ri}_{_kname(first)[2:]}")
        streams, params, inputs, views = [], [], [], []

        def operand(ref: Ref, out_shape) -> str:
            name = self.resolve(ref.name)
            if name in self.expr:
                return self.expr[name]
            spec = g.spec(ref.name)
            p = (1,) * (len(out_shape) - len(spec.shape)) + tuple(spec.shape) if out_shape else tuple(spec.shape)
            lead_full = tuple(p[:-1]) == tuple(out_shape[:-1]) if out_shape else False
            c = p[-1] if p else 1
            if not lead_full and any(d != 1 for d in p[:-1]):
                raise UnsupportedOpError(f"plan does not fit this graph: '{ref.name}' {list(spec.shape)} is neither "
                                         f"a full-row nor a broadcast operand of a row region over {rows} rows")
            pname = kb.param(_dt(spec), (rows, c) if lead_full else (1, c))
            if lead_full:
                (s,) = kb.op(f"load({pname}, tile={_list([r_tile, c])}, par={par_m})")
            else:
                (s,) = kb.op(f"load({pname}, tile={_list([1, c])})")
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

        for node in self.nodes:
            kind = row_kind(node, g)
            out = node.outs[0]
            if kind == "elementwise":
                ops, fexpr, odt = elementwise_parts(node, g, elementwise_kind(_base(node.target)))
                xs = [operand(Ref(o.value), out.shape) if o.kind == "tensor" else _lit(o.value) for o in ops]
                self.expr[node.name] = self.let(fexpr(xs))
            elif kind == "expand":
                x = operand(node.args[0], out.shape)
                self.expr[node.name] = self.let(f"broadcast({x}, {_list([r_tile, out.shape[-1]])})")
            elif kind == "reduce":
                x = operand(node.args[0], g.spec(node.args[0]).shape)
                xs = g.spec(node.args[0])
                self.expr[node.name] = self.let(_reduce_expr(node, x, _dt(xs), _dt(out), xs.shape[-1]))
            elif kind == "softmax":
                xs = g.spec(node.args[0])
                x = operand(node.args[0], xs.shape)
                xin = x if _dt(xs) == "f32" else f"cast({x}, f32)"
                z = self.let(f"{xin} - max({xin}, axis=1)")
                if _base(node.target) == "_softmax":
                    e = self.let(f"exp({z})")
                    res = f"{e} / sum({e}, axis=1)"
                else:
                    res = f"{z} - log(sum(exp({z}), axis=1))"
                self.expr[node.name] = self.let(_fin(res, "f32", _dt(out)))
            elif kind == "layer_norm":
                xs = g.spec(node.args[0])
                x = operand(node.args[0], xs.shape)
                xin = x if _dt(xs) == "f32" else f"cast({x}, f32)"
                u = self.let(f"mean({xin}, axis=1)")
                d = self.let(f"{xin} - {u}")
                rs = self.let(f"rsqrt(mean({d} * {d}, axis=1) + {_lit(float(node.args[4] if len(node.args) > 4 else 1e-5))})")
                y = f"{d} * {rs}"
                for ref in node.args[2:4]:
                    if isinstance(ref, Ref):
                        w = operand(ref, xs.shape)
                        wdt = _dt(g.spec(ref))
                        y = f"({y}) {'*' if ref is node.args[2] else '+'} {w if wdt == 'f32' else f'cast({w}, f32)'}"
                outs = node.outs
                self.expr[outs[0].name] = self.let(_fin(y, "f32", _dt(outs[0])))
                self.expr[outs[1].name] = self.let(_fin(u, "f32", _dt(outs[1])))
                self.expr[outs[2].name] = self.let(_fin(rs, "f32", _dt(outs[2])))
            elif kind == "cumsum":
                xs = g.spec(node.args[0])
                x = operand(node.args[0], xs.shape)
                odt = _dt(out)
                self.expr[node.name] = self.let(f"cumsum({x if _dt(xs) == odt else f'cast({x}, {odt})'}, axis=1)")
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
            elif kind == "cat":
                parts = [operand(r, out.shape) for r in node.args[0]]
                e = parts[0]
                for p in parts[1:]:
                    e = f"concat({e}, {p}, axis=1)"
                self.expr[node.name] = self.let(e)
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
            else:
                raise UnsupportedOpError(f"not supported in a row region: {node.target}")
        results = []
        for node in self.nodes:
            for o in node.outs:
                if o.dtype != "none" and self.used_outside(o.name) and o.name in self.expr:
                    results.append(o)
        if not results:
            raise UnsupportedOpError("a row region with no result used outside it")
        names = [self.expr[o.name] for o in results]
        f = kb.fn(params, names[0] if len(names) == 1 else "(" + ", ".join(names) + ")", self.lets)
        outs = kb.op(f"map({', '.join(streams)}, fn={f}, par={par_c})", len(results))
        out_views = []
        for s, o in zip(outs, results):
            c = row_view(o.shape)[1] if not self._reduced(o) else 1
            view = (rows, c)
            oname = kb.result(_dt(o), view)
            kb.do(f"store({oname}, {s}, par={par_m})")
            out_views.append(view)
        comment = "fused row region: " + ", ".join(n.target for n in self.nodes)
        return OpKernel(self.nodes[-1].name, "fused.row", kb.text(comment), inputs, views,
                        [o.name for o in results], out_views)

    def _reduced(self, o: TensorSpec) -> bool:
        for n in self.nodes:
            if n.name == o.name and row_kind(n, self.g) == "reduce":
                return True
            if row_kind(n, self.g) == "layer_norm" and o.name in (n.outs[1].name, n.outs[2].name):
                return True
        return False


class MatmulKernel(_RegionCode):
    """C = A @ B (+ bias) in TM x TN tiles accumulated over K, then an elementwise epilogue."""

    def build(self) -> OpKernel:
        g = self.g
        mm = next(n for n in self.nodes if _base(n.target) in ("mm", "addmm"))
        epilogue = self.nodes[self.nodes.index(mm) + 1:]
        base = _base(mm.target)
        if base == "addmm":
            bias, a, b = mm.args[0], mm.args[1], mm.args[2]
            alpha, beta = mm.kwargs.get("alpha", 1), mm.kwargs.get("beta", 1)
        else:
            bias, a, b = None, mm.args[0], mm.args[1]
            alpha = beta = 1
        sa, sb, out = g.spec(a), g.spec(b), mm.outs[0]
        M, K = sa.shape
        N = sb.shape[1]
        dt = _dt(out)
        p = self.region.params
        tm = divisor_at_most(M, int(p.get("tm", MM_TILE)))
        tn = divisor_at_most(N, int(p.get("tn", MM_TILE)))
        tk = divisor_at_most(K, int(p.get("tk", MM_TILE)))
        par, par_m, par_e = int(p.get("par", 64)), int(p.get("par_mem", 4)), int(p.get("par_epi", 16))
        kb = KernelBuilder(f"fused_{self.ri}_{_kname(mm)[2:]}")
        inputs, views, streams, params = [], [], [], []
        # a transposed weight (B = W^T, W: [N, K]) is read in place, transposing each tile
        b_src, trans = b.name, False
        src_node = next((n for n in g.nodes if n.name == self.resolve(b.name)), None)
        if src_node is not None and _base(src_node.target) in ("permute", "t", "transpose") and \
                len(g.spec(src_node.args[0]).shape) == 2:
            b_src, trans = src_node.args[0].name, True
        pa = kb.param(dt, (M, K))
        inputs.append(a.name)
        views.append((M, K))
        m_kept, n_kept = tm < M, tn < N
        call = f"load({pa}, tile={_list([tm, tk])}"
        if n_kept:
            call += f", repeat={N // tn}, at={1 if m_kept else 0}"
        (xa,) = kb.op(call + f", par={par_m})")
        if trans:
            pb = kb.param(_dt(g.spec(b_src)), (N, K))
            inputs.append(b_src)
            views.append((N, K))
            call = f"load({pb}, tile={_list([tn, tk])}"
        else:
            pb = kb.param(dt, (K, N))
            inputs.append(b.name)
            views.append((K, N))
            call = f"load({pb}, tile={_list([tk, tn])}"
            if tk < K and n_kept:
                call += ", order=[1, 0]"
        if m_kept:
            call += f", repeat={M // tm}, at=0"
        (xb,) = kb.op(call + f", par={par_m})")
        yb = "transpose(y)" if trans else "y"
        prod = f"matmul(x, {yb})" if dt == "f32" else f"cast(matmul(x, {yb}), f32)"
        if tk < K:
            mac = kb.fn(["acc", "x", "y"], f"acc + {prod}")
            (c,) = kb.op(f"accum({xa}, {xb}, rank=1, init=zeros({_list([tm, tn])}), fn={mac}, par={par})")
        else:
            f = kb.fn(["x", "y"], prod)
            (c,) = kb.op(f"map({xa}, {xb}, fn={f}, par={par})")
        streams.append(c)
        params.append("c")
        cexpr = "c" if alpha == 1 else f"c * {_lit(alpha)}"

        def operand(ref: Ref) -> str:
            name = self.resolve(ref.name)
            if name in self.expr:
                return self.expr[name]
            spec = g.spec(ref.name)
            shape = (1,) * (2 - len(spec.shape)) + tuple(spec.shape)
            if shape[0] == M:
                pn_ = kb.param(_dt(spec), (M, shape[1]))
                tile = [tm, tn if shape[1] == N else 1]
                (s,) = kb.op(f"load({pn_}, tile={_list(tile)}, par={par_m})")
                views.append((M, shape[1]))
            else:
                pn_ = kb.param(_dt(spec), (1, shape[1]))
                tile = [1, tn if shape[1] == N else 1]
                c_ = f"load({pn_}, tile={_list(tile)}"
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

        if isinstance(bias, Ref):
            bv = operand(bias)
            bdt = _dt(g.spec(bias))
            cexpr = f"{cexpr} + {bv if bdt == 'f32' else f'cast({bv}, f32)'}" + (f" * {_lit(beta)}" if beta != 1 else "")
        self.expr[mm.name] = self.let(_fin(cexpr, "f32", dt))
        for node in epilogue:
            ops, fexpr, odt = elementwise_parts(node, g, elementwise_kind(_base(node.target)))
            xs = [operand(Ref(o.value)) if o.kind == "tensor" else _lit(o.value) for o in ops]
            self.expr[node.name] = self.let(fexpr(xs))
        results = [n.outs[0] for n in [mm] + epilogue if self.used_outside(n.outs[0].name)]
        names = [self.expr[o.name] for o in results]
        f = kb.fn(params, names[0] if len(names) == 1 else "(" + ", ".join(names) + ")", self.lets)
        outs = kb.op(f"map({', '.join(streams)}, fn={f}, par={par_e})", len(results))
        for s, o in zip(outs, results):
            oname = kb.result(_dt(o), (M, N))
            kb.do(f"store({oname}, {s}, par={par_m})")
        comment = "fused matmul region: " + ", ".join(n.target for n in self.nodes)
        return OpKernel(self.nodes[-1].name, "fused.matmul", kb.text(comment), inputs, views,
                        [o.name for o in results], [(M, N)] * len(results))


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
        if _base(node.target) != "bmm":
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
        if n is None or _base(n.target) != "expand" or is_noop_expand(n, graph):
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
    if soft is None or _base(soft.target) != "_softmax" or not _last_dim(soft, graph, soft.args[1]) or \
            (len(soft.args) > 2 and soft.args[2]):
        return None
    chain.append(soft.name)
    nodes.append(soft)
    ops: list[tuple] = []
    path: list[str] = []
    x = back(soft.args[0].name, path)
    while True:
        n = node_of(x)
        base = _base(n.target) if n is not None else ""
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
                if fnode is None or _base(fnode.target) != "scalar_tensor":
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
    if first is not None and _base(first.target) == "bmm" and len(first.args) == 2:
        kpath: list[str] = []
        qv = back(first.args[0].name, [])
        kt = back(first.args[1].name, kpath)
        pn = node_of(kt)
        if pn is not None and _base(pn.target) in ("permute", "transpose", "t"):
            rank = len(pn.outs[0].shape)
            if _base(pn.target) == "permute":
                dims = [d % rank for d in pn.args[1]]
                ok = dims == list(range(rank - 2)) + [rank - 1, rank - 2]
            elif _base(pn.target) == "transpose":
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
    dts = {_dt(graph.spec(x_)) for x_ in ([q, k] if mode == "qk" else [s]) + [v]} | {_dt(bmm2.outs[0])}
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
        sem = semantic_nodes(g)
        names = {n.name for n in self.nodes}
        att = next((a for a in _attention_matches(g) if a.out.name in names), None)
        if att is None or {sem[i].name for i in att.nodes} != names:
            raise UnsupportedOpError("plan does not fit this graph: the region is not a whole attention pattern")
        BH, Sq, Sk, D, Dv = att.dims
        G = att.group
        p = self.region.params
        bq = divisor_at_most(Sq, int(p.get("tm", 128)))    # query rows per block
        bk = divisor_at_most(Sk, int(p.get("tk", 128)))    # keys per block
        par, par_m, par_b = int(p.get("par", 128)), int(p.get("par_mem", 4)), int(p.get("par_buf", 8))
        kv_buf = bool(p.get("kv_buf", 1))
        dt = _dt(att.out.outs[0])
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
                cur = self.let(f"{cur} * {_lit(op[1])}", "s")
                continue
            mspec = g.spec(op[1])
            pm = kb.param(_dt(mspec), ("SM" if G > 1 else "SQ", "SK"))
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
                cur = self.let(f"where({mt}, {_lit(op[2])}, {cur})", "s")
            else:
                cur = self.let(f"{cur} + {mt if _dt(mspec) == 'f32' else f'cast({mt}, f32)'}", "s")
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
        kb.body.append(f"  _, {acc} = accum({', '.join(streams)}, rank=1, init=(full([BQ, 1], {_lit(M_FLOOR)}), "
                       f"zeros([BQ, DV + 1])), fn={step}, par={par})")
        (os_,) = kb.op(f"map({acc}, fn={fin}, par={min(16, par)})")
        oname = kb.result(dt, ("BH", "SQ", "DV"))
        kb.do(f"store({oname}, {os_}, par={par_m})")
        comment = "fused attention region (online softmax): " + ", ".join(n.target for n in self.nodes)
        return OpKernel(att.out.name, "fused.attention", kb.text(comment), inputs, views, [att.out.name],
                        [(BH, G * Sq, Dv)])


# ------------------------------------------------------------------ search

ROW_GRID = {"rows": (1, 4, 16, 64), "par": (16, 64, 256), "par_mem": (4, 16)}
MM_GRID = {"tm": (64, 128, 256), "tn": (64, 128, 256), "tk": (128, 256), "par": (64, 256, 1024),
           "par_mem": (8, 16), "par_epi": (16, 64)}
SINGLE_GRID = {"compute": (4, 16, 64, 256), "memory": (2, 8)}
# attention: query rows (tm) and keys (tk) per block, accum copies (each needs ceil(fn ops / stages) PCUs),
# memory and buffer parallelism, K/V held on chip (1) or re-read from HBM per query block (0)
ATTN_GRID = {"tm": (128, 64), "tk": (256, 128), "par": (510, 500, 480, 448, 400, 340, 256, 128, 64, 16, 8),
             "par_mem": (4, 16, 1), "par_buf": (8,), "kv_buf": (1, 0)}
ATTN_MIN_TRIES = 264  # the whole grid: an attention region is most of its task's time
GRIDS = {"row": ROW_GRID, "matmul": MM_GRID, "attention": ATTN_GRID, "single": SINGLE_GRID}
PRIOR_RADIUS = 1   # with priors, only parameter sets differing from them in at most this many places


@dataclass
class Tuned:
    plan: Plan
    seconds: float
    kernels: int
    configs_tried: int


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
    for ri, region in enumerate(plan.regions):
        limit = max(per_region, ATTN_MIN_TRIES) if region.template == "attention" else per_region
        best, n = _best_params(region, graph_own, machine, idx, priors, limit)
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
    return Tuned(tuned, chain.time().seconds, len(chain.kernels), tried)


def _best_params(region: Region, graph: AtenGraph, machine: Machine, idx: _GraphIndex, priors: dict, limit: int):
    """(seconds, params) of the fastest parameters for one region alone, and how many were tried."""
    grid = GRIDS[region.template]
    best = None
    prior = {k: v for k, v in dict(priors.get(region.template, {})).items() if k in grid}
    cands = _grid_order(grid, prior)
    if prior:
        # experience says where good parameters are: search their neighbourhood only
        cands = [c for c in cands if sum(c[k] != prior.get(k, c[k]) for k in grid) <= PRIOR_RADIUS]
    cands = cands[:max(1, limit)]
    for params in cands:
        try:
            secs = _region_seconds(Region(region.template, list(region.nodes), params), graph, machine, idx)
        except (asp_lang.AspError, UnsupportedOpError, ValueError):
            continue
        if best is None or secs < best[0]:
            best = (secs, params)
    return best, len(cands)


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


def common_partition(graphs: list[AtenGraph], attention: bool = True) -> list[Region]:
    """Regions that are valid in every graph (the task at several sizes): the coarsest common
    refinement, so a fusion that only works because two sizes happen to be equal is split.
    Attention regions are kept where every graph has the same pattern (``attention=False``:
    none, attention is then matmul, row and matmul regions through HBM)."""
    sem = semantic_nodes(graphs[0])
    n = len(sem)
    if any(len(semantic_nodes(g)) != n for g in graphs):
        raise UnsupportedOpError("the task's graph changes shape with its sizes; plans cannot be shared")
    # attention regions only where every size matches the same pattern; the rest is partitioned around them
    found = [attention_regions(g) if attention else [] for g in graphs]
    common = [r for r in found[0] if all(any(r2.nodes == r.nodes for r2 in f) for f in found[1:])]
    taken = {i for r in common for i in r.nodes}
    parts = [partition(g, common) if any(found) or not attention else partition(g) for g in graphs]
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
        if r.template == "matmul" and not any(_base(sem[i].target) in ("mm", "addmm") for i in r.nodes):
            final.extend(Region("single", [i]) for i in r.nodes)
        elif r.template == "row" and len(r.nodes) == 1 and row_kind(sem[r.nodes[0]], graphs[0]) == "expand":
            final.append(Region("single", list(r.nodes)))
        else:
            final.append(Region(r.template, list(r.nodes)))
    final.extend(Region("attention", list(r.nodes)) for r in common)
    final.sort(key=lambda r: max(r.nodes))
    return final


def author_plan(graph_own: AtenGraph, machine: Machine, priors: dict | None = None,
                graphs_small: list[AtenGraph] = ()) -> Tuned:
    """The offline planner: regions valid at every size, parameters from the timing model."""
    graphs = [graph_own, *graphs_small]
    plan = Plan(common_partition(graphs), notes="offline: greedy row/matmul fusion, tuned on the timing model")
    tuned = tune(plan, graph_own, machine, priors)
    if any(r.template == "attention" for r in plan.regions) and \
            not any(r.template == "attention" for r in tuned.plan.regions):
        # no attention kernel fits or pays on this machine: the ops fall back to single kernels in
        # tune; the greedy row/matmul regions over the same ops may do better
        alt = tune(Plan(common_partition(graphs, attention=False), notes=plan.notes), graph_own, machine, priors)
        tried = tuned.configs_tried + alt.configs_tried
        tuned = alt if alt.seconds < tuned.seconds else tuned
        tuned.configs_tried = tried
    return tuned


__all__ = ["Plan", "Region", "partition", "realize", "tune", "author_plan", "baseline_plan", "semantic_nodes",
           "Tuned", "with_par", "Any", "TEMPLATES", "attention_regions", "AttentionKernel"]
