"""Fitting a cached plan to another task: the structural key, plans in structural form, adaptation
and re-tuning (:mod:`agentforge.store.plan_cache` keeps the SQLite store and its counters).

- :func:`structure_of`: the :class:`Structure` key, the shape of a task's fused regions as the
  partitioner finds them (template, prologue, core, an elementwise chain as one ``ew`` slot
  whatever its ops, the kind of operands it reads, reduced dims, ranks, dtype class, memory- or
  compute-bound); :func:`structural_form` / :func:`rebind` carry a plan from one task of a
  structure to another (its node indices re-bound to the new graph's own partition).
- :func:`adapt_plan`: a cached plan checked and fitted to a graph (nodes in range, templates that
  fit their ops, parameters the template knows and tiles no larger than the new sizes), and
  realised on the machine through its :class:`agentforge.solution.Solution`.
- :func:`retune`: only what the new sizes need is searched again.

Like the store, this module imports neither torch nor the author at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .db import canonical_json

if TYPE_CHECKING:
    from asp_lang import Machine

    from agentforge.author import Plan
    from agentforge.capture import AtenGraph, Signature

#: Region parameters each template understands (the keys of author's search grids).
PARAM_KEYS: dict[str, tuple[str, ...]] = {
    "row": ("rows", "par", "par_mem"),
    "matmul": ("tm", "tn", "tk", "par", "hold", "par_buf", "par_mem", "par_epi"),
    "attention": ("tm", "tk", "par", "par_mem", "par_buf", "kv_buf"),
    "moe": ("tm", "tk", "par", "par_mem", "par_buf", "par_route"),
    "experts": ("tm", "tk", "par", "par_mem", "par_buf"),
    "decoder": ("tk", "tc", "to", "tf", "td", "par", "load_par"),
    "single": ("compute", "memory"),
}


STRUCTURE_VERSION = 1


@dataclass
class Structure:
    """The structure of a task's fused regions: what the structural tier's key holds.

    ``regions`` has one descriptor per region of the partition the offline author would start
    from (``author.common_partition`` over the task's own and small sizes), in graph order:
    ``template``; ``slots``, the region's ops as roles (``transpose_b`` a weight read transposed,
    ``mm`` the matmul core, ``ew`` a chain of elementwise ops whatever they are, with the kinds of
    operands it reads from outside the region in brackets: ``row`` a broadcast row such as a
    bias, ``full`` a tensor of the output's shape, ``col`` one value per row, ``scalar``;
    ``reduce`` a reduction over the last dim, ``total:all`` / ``total:columns`` a reduction
    across the rows, ``softmax``, ``layer_norm``, ...; a single op by its kind and reduced
    dims); ``rank`` of the region's output; ``dtype`` class (``fp32``, ``fp16``, ``int``,
    ``bool``). The key adds whether the task is memory- or compute-bound. ``partition`` and
    ``dims`` (the shapes each region touches) bind it to one graph and are not in the key.
    """

    key: str
    regions: list[dict]
    bound: str
    partition: list[list[int]]
    templates: list[str]
    dims: list[list]

    def to_dict(self) -> dict:
        return {"version": STRUCTURE_VERSION, "key": self.key, "bound": self.bound, "regions": self.regions}


_DTYPE_CLASS = {"f32": "fp32", "float32": "fp32", "f64": "fp32", "float64": "fp32", "bf16": "fp16",
                "bfloat16": "fp16", "f16": "fp16", "float16": "fp16", "bool": "bool"}


def _dtype_class(dtype: str) -> str:
    return _DTYPE_CLASS.get(dtype, "int" if ("int" in dtype or dtype.startswith(("i", "u"))) else dtype)


def _alias_roots(graph: "AtenGraph") -> dict[str, str]:
    """value -> the value it relabels (getitem, views, copies), followed to the end."""
    from agentforge.author import is_alias
    from agentforge.capture import TRANSPARENT_KINDS, op_kind

    src: dict[str, str] = {}
    for n in graph.nodes:
        refs = n.refs()
        if refs and (n.target == "getitem" or op_kind(n.target) in TRANSPARENT_KINDS or is_alias(n, graph)):
            src[n.name] = refs[0].name
            for o in n.outs:
                src.setdefault(o.name, refs[0].name)

    def root(v: str) -> str:
        seen = set()
        while v in src and v not in seen:
            seen.add(v)
            v = src[v]
        return v
    return {v: root(v) for v in src}


def _operand_class(shape: tuple[int, ...], out: tuple[int, ...]) -> str:
    numel = 1
    for d in shape:
        numel *= d
    if numel == 1:
        return "scalar"
    p = (1,) * (len(out) - len(shape)) + tuple(shape)
    if tuple(p) == tuple(out):
        return "full"
    if out and all(d == 1 for d in p[:-1]):
        return "row"
    if p and p[-1] == 1:
        return "col"
    return "other"


def _describe(nodes: list[int], template: str, sem: list, graph: "AtenGraph", roots: dict[str, str]) -> dict:
    """One region's descriptor (see :class:`Structure`)."""
    from agentforge.author import row_kind, total_kind
    from agentforge.capture import is_reduction, op_kind, operand_specs, reduced_dims
    from agentforge.lowering import ELEMENTWISE_OPS, aten_name

    members = [sem[i] for i in nodes]
    inside = {o.name for n in members for o in n.outs} | {n.name for n in members}
    slots: list[list] = []          # [token, operand classes]

    def push(token: str, classes: set[str] = frozenset()) -> None:
        if token == "ew" and slots and slots[-1][0] == "ew":
            slots[-1][1].update(classes)
        else:
            slots.append([token, set(classes)])

    def outside(n, skip: int = 0) -> set[str]:
        out = tuple(n.outs[0].shape) if n.outs else ()
        found = set()
        for r in n.refs()[skip:]:
            if roots.get(r.name, r.name) in inside or r.name in inside:
                continue
            try:
                found.add(_operand_class(tuple(graph.spec(r).shape), out))
            except (KeyError, AttributeError):
                found.add("other")
        return found

    for n in members:
        base, kind = aten_name(n.target), op_kind(n.target)
        if template == "matmul":
            if base in ("permute", "t", "transpose"):
                push("transpose_b")
            elif base == "mm":
                push("mm")
            elif base == "addmm":            # mm + a bias: the bias is an epilogue operand
                push("mm")
                push("ew", {_operand_class(tuple(graph.spec(n.args[0]).shape), tuple(n.outs[0].shape))})
            else:
                push("ew" if base in ELEMENTWISE_OPS else kind, outside(n))
            continue
        if template == "row":
            rk = row_kind(n, graph)
            if rk in ("elementwise", "expand"):
                push("ew", outside(n))
            elif rk == "total":
                push(f"total:{total_kind(n, graph)}")
            else:
                push(str(rk))
            continue
        token = "ew" if base in ELEMENTWISE_OPS and base != "expand" else kind
        if token != "ew" and is_reduction(n):
            token += "@" + ",".join(str(d) for d in reduced_dims(n, operand_specs(graph.spec_table, n)))
        push(token, outside(n) if token == "ew" else set())
    last = members[-1].outs[0] if members[-1].outs else None
    return {"template": template,
            "slots": [t + (f"[{','.join(sorted(c))}]" if c else "") for t, c in slots],
            "rank": len(last.shape) if last is not None else 0,
            "dtype": _dtype_class(last.dtype) if last is not None else "none"}


def region_dims(nodes: list[int], sem: list, graph: "AtenGraph") -> list:
    """The shapes a region touches (its ops' operands and results, in order): equal dims mean
    parameters tuned for one still hold for the other on the same machine."""
    out = []
    for i in nodes:
        n = sem[i]
        shapes = []
        for r in n.refs():
            try:
                shapes.append(list(graph.spec(r).shape))
            except (KeyError, AttributeError):
                shapes.append(None)
        shapes.extend(list(o.shape) for o in n.outs)
        out.append(shapes)
    return out


def structure_of(graph_own: "AtenGraph", graphs_small: "list[AtenGraph] | tuple" = (),
                 sig: "Signature | None" = None) -> Structure | None:
    """The :class:`Structure` of a task (its graph at its own sizes and at small sizes), or
    ``None`` where the partitioner cannot describe it (the graph changes shape with its sizes)."""
    from agentforge.author import common_partition, semantic_nodes
    from agentforge.capture import signature as signature_of

    try:
        regions = common_partition([graph_own, *graphs_small])
        sem = semantic_nodes(graph_own)
        roots = _alias_roots(graph_own)
        descs = [_describe(r.nodes, r.template, sem, graph_own, roots) for r in regions]
        dims = [region_dims(r.nodes, sem, graph_own) for r in regions]
    except Exception:  # noqa: BLE001 - an undescribable task has no structural tier, never an error
        return None
    bound = (sig or signature_of(graph_own)).bound
    key = _digest(canonical_json({"version": STRUCTURE_VERSION, "bound": bound, "regions": descs}))
    return Structure(key, descs, bound, [list(r.nodes) for r in regions], [r.template for r in regions], dims)


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def structural_form(plan: "Plan | dict", structure: Structure) -> list[dict] | None:
    """The plan per partition region of ``structure``: ``{"template", "params", "dims"}`` for a
    region the plan keeps whole, ``{"split": [{"template", "params", "dims"}, ...]}`` for one it
    runs op by op; ``None`` when the plan's regions are not made of the partition's regions
    (an LLM plan that fuses differently: it is cached at the exact tier only)."""
    from agentforge.author import Plan

    p = plan if isinstance(plan, Plan) else Plan.from_dict(plan)
    by_nodes = {tuple(sorted(r.nodes)): r for r in p.regions}
    form: list[dict] = []
    used = 0
    for part, dims in zip(structure.partition, structure.dims):
        whole = by_nodes.get(tuple(sorted(part)))
        if whole is not None:
            form.append({"template": whole.template, "params": dict(whole.params), "dims": dims})
            used += 1
            continue
        ones = [by_nodes.get((i,)) for i in part]
        if any(r is None for r in ones):
            return None
        form.append({"split": [{"template": r.template, "params": dict(r.params), "dims": [d]}
                               for r, d in zip(ones, dims)]})
        used += len(ones)
    return form if used == len(p.regions) else None


def rebind(form: list[dict], structure: Structure) -> tuple[dict, list] | None:
    """A structural-form plan bound to another graph of the same structure: (plan dict, the dims
    each region was tuned at, or None where unknown). The new graph's partition supplies the
    node indices, so its ``ew`` slots hold its own elementwise ops."""
    if len(form) != len(structure.partition):
        return None
    regions, dims = [], []
    for f, part, template in zip(form, structure.partition, structure.templates):
        if "split" in f:
            same = len(f["split"]) == len(part)
            for k, i in enumerate(part):
                s = f["split"][k] if same else {"template": "single", "params": {}, "dims": None}
                regions.append({"template": s["template"], "nodes": [i], "params": dict(s.get("params") or {})})
                dims.append(s.get("dims"))
        else:
            if f.get("template") != template and len(part) > 1:
                return None
            regions.append({"template": f["template"], "nodes": list(part), "params": dict(f.get("params") or {})})
            dims.append(f.get("dims"))
    return {"regions": regions, "version": 1, "notes": ""}, dims


def retune(plan: "Plan", graph: "AtenGraph", machine: "Machine", tuned_at: list | None = None,
           same_machine: bool = True, budget: int = 400) -> tuple["Plan", int, int]:
    """Re-tune only what the new sizes need: a region whose shapes are those its parameters were
    tuned at (``tuned_at``, per region) on the same machine keeps them; any other region searches
    the neighbourhood of its cached parameters (``author``'s prior radius), and the whole grid
    only when none of that fits. The fused-or-split decisions are the cached plan's. Returns
    (plan, timing evaluations spent, regions kept); raises when the plan does not realise."""
    from agentforge.author import GRIDS, MIN_TRIES, Plan, Region, UnsupportedOpError, best_params, graph_index
    from agentforge.solution import plan_solution

    idx = graph_index(graph)
    per_region = max(1, budget // max(1, len(plan.regions)))
    tried = kept = 0
    out = []
    for k, region in enumerate(plan.regions):
        grid = GRIDS[region.template]
        full = set(grid) <= set(region.params)
        was = tuned_at[k] if tuned_at is not None and k < len(tuned_at) else None
        if same_machine and full and was is not None and was == region_dims(region.nodes, idx.sem, graph):
            out.append(Region(region.template, list(region.nodes), dict(region.params)))
            kept += 1
            continue
        limit = max(per_region, MIN_TRIES.get(region.template, 0))
        prior = {region.template: region.params} if region.params else {}
        best, n = best_params(region, graph, machine, idx, prior, limit)
        tried += n
        if best is None and prior:
            best, n = best_params(region, graph, machine, idx, {}, limit)
            tried += n
        if best is None:
            raise UnsupportedOpError(f"no parameters fit region {k} ({region.template}) on {machine.name}")
        out.append(Region(region.template, list(region.nodes), best[1]))
    tuned = Plan(out, notes=plan.notes)
    # realised through its solution: the chain is kept, and the loop's evaluation of this plan binds it again
    plan_solution(tuned, machine).chain(graph)
    return tuned, tried, kept


def tuning_of(plan: "Plan", graph: "AtenGraph | None", machine: str) -> dict:
    """What a stored plan was tuned at: the machine and each region's dims (:func:`region_dims`), so
    :func:`retune` keeps the parameters of regions whose shapes have not changed."""
    from agentforge.author import semantic_nodes

    if graph is None:
        return {}
    sem = semantic_nodes(graph)
    try:
        return {"machine": machine, "dims": [region_dims(r.nodes, sem, graph) for r in plan.regions]}
    except (IndexError, KeyError, AttributeError):
        return {}


def adapt_plan(data: Any, graph: "AtenGraph", machine: "Machine | None", signature_key: str | None = None
               ) -> "Plan | None":
    """The plan dict ``data`` fitted to ``graph``, or ``None`` (the checks:
    :meth:`agentforge.store.plan_cache.PlanCache.adapt`);
    ``signature_key``: the key ``graph``'s signature must have (exact-tier entries)."""
    from agentforge.author import Plan, Region, row_kind, row_view, semantic_nodes
    from agentforge.capture import op_kind, signature
    from agentforge.solution import plan_solution

    try:
        plan = Plan.from_dict(data)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if signature_key is not None and signature(graph).key() != signature_key:
        return None
    sem = semantic_nodes(graph)
    seen: set[int] = set()
    regions: list[Region] = []
    for region in plan.regions:
        nodes = region.nodes
        if not nodes or any(not 0 <= i < len(sem) for i in nodes) or seen.intersection(nodes) \
                or len(set(nodes)) != len(nodes):
            return None
        seen.update(nodes)
        kinds = [op_kind(sem[i].target) for i in nodes]
        if region.template == "single" and len(nodes) != 1:
            return None
        if region.template == "matmul" and not any(k in ("mm", "addmm") for k in kinds):
            return None
        try:
            if region.template == "row" and any(row_kind(sem[i], graph) is None for i in nodes):
                return None
        except (KeyError, IndexError, TypeError):
            return None
        limits: dict[str, int] = {}
        if region.template == "matmul":
            mm_kind, mm = next((k, sem[i]) for i, k in zip(nodes, kinds) if k in ("mm", "addmm"))
            a, b = (mm.args[1], mm.args[2]) if mm_kind == "addmm" else (mm.args[0], mm.args[1])
            try:
                (m, k_dim), n = graph.spec(a).shape, graph.spec(b).shape[-1]
            except (KeyError, ValueError, IndexError, AttributeError):
                return None
            limits = {"tm": m, "tn": n, "tk": k_dim}
        elif region.template == "row":
            first = sem[min(nodes)]
            refs = first.refs()
            shape = graph.spec(refs[0]).shape if refs else first.outs[0].shape
            limits = {"rows": row_view(tuple(shape))[0]}
        params = {}
        for name, value in region.params.items():
            if name not in PARAM_KEYS[region.template]:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                continue
            if name in limits and value > limits[name]:
                continue
            params[name] = value
        regions.append(Region(region.template, list(nodes), params))
    adapted = Plan(regions, plan.version, (plan.notes + " | adapted from the plan cache").strip(" |"))
    if machine is not None:
        try:
            plan_solution(adapted, machine).chain(graph)   # kept: retune's plan is often this one
        except Exception:  # noqa: BLE001 - any failure to realize means "does not fit"
            return None
    return adapted
