"""The plan cache: verified fusion plans, found by two keys (two tiers).

After "Agentic plan caching" (Zhang, Wornow, Wan, Olukotun, NeurIPS 2025): templates extracted
from completed, *correct* runs are stored stripped of task-specific detail, matched on
extracted keywords, adapted with a cheap step on a hit, and a miss calls the full planner.

- **Exact tier** (preferred): the size-free signature key
  (:meth:`agentforge.capture.Signature.key`: the same op sequence and wiring, any sizes), kept
  per (key, class key); the class key adds the bound class and the size regime. A plan
  verified in the task's own size class is preferred, else the fastest of the key.
- **Structural tier**: the :class:`Structure` key, the shape of the task's fused regions as
  the partitioner finds them (template, prologue, core, an elementwise chain as one ``ew``
  slot whatever its ops, the kind of operands it reads, reduced dims, ranks, dtype class,
  memory- or compute-bound). ``gelu(linear(x))`` and ``leaky_relu(linear(x) * 2)`` share it.
  A structural entry keeps the plan in *structural form* (per partition region: fused with
  its parameters, or split into single ops) and a hit re-binds it to the new graph's own
  partition (node indices; the ``ew`` slot holds the new task's ops).
- :meth:`PlanCache.serve` looks up both tiers, adapts (validates) the plan, and re-tunes only
  what the new sizes need (:func:`retune`: a region whose shapes are those it was tuned at
  keeps its parameters; others search the neighbourhood of the cached ones). It counts an
  exact hit, a structural hit (``class_hits``) or a miss.
- :meth:`PlanCache.false_hit`: a served plan that failed verification; counted and its entry
  demoted (never served again at that tier until a new verified plan replaces it).
- :meth:`PlanCache.store` accepts verified plans only; it keeps the fastest per (key, class
  key) and, where the plan has a structural form, per (structural key, signature key).
- :meth:`PlanCache.record_saved` accounts what the hits saved (planner calls, tokens, the
  offline planner's timing evaluations).

Everything lives in SQLite (:mod:`agentforge.store.db`); the schema is in docs/memory.md.
This module imports neither torch nor the author at import time, so ``agentforge cache
stats`` stays fast; the author is imported lazily where plans are built.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .db import Database, Migration, Schema, canonical_json, speedup_of
from .db import evaluation_summary as _summarise

if TYPE_CHECKING:
    from asp_lang import Machine

    from agentforge.author import Plan
    from agentforge.capture import AtenGraph, Signature

__all__ = ["PlanCache", "CachedPlan", "Served", "Structure", "PLAN_CACHE_SCHEMA", "PARAM_KEYS", "cache_stats",
           "cache_clear", "structure_of", "structural_form", "rebind", "retune", "region_dims"]

COUNTERS = ("hits", "class_hits", "size_class_hits", "false_hits", "misses", "planner_calls_saved",
            "tokens_saved", "search_evaluations_saved", "adapt_failures")
TIERS = ("exact", "structural")

PLAN_CACHE_SCHEMA = Schema("plan_cache", (
    Migration(1, "plan entries and cache counters", (
        "CREATE TABLE plan_cache_entries ("
        " signature_key TEXT PRIMARY KEY,"
        " plan_json TEXT NOT NULL,"
        " speedup REAL,"
        " verifications INTEGER NOT NULL DEFAULT 1 CHECK (verifications >= 1),"
        " task TEXT NOT NULL DEFAULT '',"
        " class_key TEXT NOT NULL DEFAULT '',"
        " signature_json TEXT NOT NULL DEFAULT '{}',"
        " evaluation_json TEXT NOT NULL DEFAULT '{}',"
        " created_at REAL NOT NULL,"
        " updated_at REAL NOT NULL)",
        "CREATE TABLE plan_cache_counters ("
        " name TEXT PRIMARY KEY,"
        " value INTEGER NOT NULL DEFAULT 0 CHECK (value >= 0))",
        "INSERT INTO plan_cache_counters (name, value) VALUES"
        " ('hits', 0), ('misses', 0), ('planner_calls_saved', 0), ('tokens_saved', 0)",
    )),
    Migration(2, "per-entry hit count and last use; adaptation failures counter", (
        "ALTER TABLE plan_cache_entries ADD COLUMN hits INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE plan_cache_entries ADD COLUMN last_hit_at REAL",
        "CREATE INDEX plan_cache_entries_last_hit ON plan_cache_entries (last_hit_at)",
        "INSERT OR IGNORE INTO plan_cache_counters (name, value) VALUES ('adapt_failures', 0)",
    )),
    Migration(3, "one entry per (signature key, class key): bound class and size regime", (
        "CREATE TABLE plan_cache_entries_v3 ("
        " signature_key TEXT NOT NULL,"
        " class_key TEXT NOT NULL DEFAULT '',"
        " plan_json TEXT NOT NULL,"
        " speedup REAL,"
        " verifications INTEGER NOT NULL DEFAULT 1 CHECK (verifications >= 1),"
        " task TEXT NOT NULL DEFAULT '',"
        " signature_json TEXT NOT NULL DEFAULT '{}',"
        " evaluation_json TEXT NOT NULL DEFAULT '{}',"
        " created_at REAL NOT NULL,"
        " updated_at REAL NOT NULL,"
        " hits INTEGER NOT NULL DEFAULT 0,"
        " last_hit_at REAL,"
        " PRIMARY KEY (signature_key, class_key))",
        "INSERT INTO plan_cache_entries_v3 (signature_key, class_key, plan_json, speedup, verifications, task,"
        " signature_json, evaluation_json, created_at, updated_at, hits, last_hit_at)"
        " SELECT signature_key, class_key, plan_json, speedup, verifications, task, signature_json,"
        " evaluation_json, created_at, updated_at, hits, last_hit_at FROM plan_cache_entries",
        "DROP TABLE plan_cache_entries",
        "ALTER TABLE plan_cache_entries_v3 RENAME TO plan_cache_entries",
        "CREATE INDEX plan_cache_entries_last_hit ON plan_cache_entries (last_hit_at)",
        "INSERT OR IGNORE INTO plan_cache_counters (name, value) VALUES ('class_hits', 0)",
    )),
    Migration(4, "structural tier, false hits and demotion, shapes each plan was tuned at", (
        "CREATE TABLE plan_cache_structures ("
        " structural_key TEXT NOT NULL,"
        " signature_key TEXT NOT NULL,"
        " form_json TEXT NOT NULL,"
        " structure_json TEXT NOT NULL DEFAULT '{}',"
        " speedup REAL,"
        " verifications INTEGER NOT NULL DEFAULT 1 CHECK (verifications >= 1),"
        " task TEXT NOT NULL DEFAULT '',"
        " evaluation_json TEXT NOT NULL DEFAULT '{}',"
        " hits INTEGER NOT NULL DEFAULT 0,"
        " false_hits INTEGER NOT NULL DEFAULT 0,"
        " demoted INTEGER NOT NULL DEFAULT 0 CHECK (demoted IN (0, 1)),"
        " created_at REAL NOT NULL,"
        " updated_at REAL NOT NULL,"
        " last_hit_at REAL,"
        " PRIMARY KEY (structural_key, signature_key))",
        "ALTER TABLE plan_cache_entries ADD COLUMN false_hits INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE plan_cache_entries ADD COLUMN demoted INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE plan_cache_entries ADD COLUMN tuning_json TEXT NOT NULL DEFAULT '{}'",
        # v3's class_hits counted hits in the task's own size class; class_hits now counts structural hits
        "UPDATE plan_cache_counters SET name = 'size_class_hits' WHERE name = 'class_hits'",
        "INSERT OR IGNORE INTO plan_cache_counters (name, value) VALUES ('class_hits', 0), ('size_class_hits', 0),"
        " ('false_hits', 0), ('search_evaluations_saved', 0)",
    )),
))

#: Region parameters each template understands (the keys of author's search grids).
PARAM_KEYS: dict[str, tuple[str, ...]] = {
    "row": ("rows", "par", "par_mem"),
    "matmul": ("tm", "tn", "tk", "par", "hold", "par_buf", "par_mem", "par_epi"),
    "attention": ("tm", "tk", "par", "par_mem", "par_buf", "kv_buf"),
    "moe": ("tk", "par", "par_mem", "par_buf"),
    "single": ("compute", "memory"),
}


@dataclass
class CachedPlan:
    """One cache entry: the fastest verified plan seen for a key (exact tier) or for a
    (structural key, source signature key) pair (structural tier, ``plan`` already re-bound to
    the task that looked it up)."""

    signature_key: str              # the computation the plan was verified on
    plan: dict                      # author.Plan.to_dict(), size-free
    speedup: float | None
    verifications: int              # verified stores seen for this entry (all, not only the kept one)
    task: str = ""                  # the task whose run produced the kept plan
    class_key: str = ""
    evaluation: dict = field(default_factory=dict)
    hits: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    last_hit_at: float | None = None
    match: str = "key"              # exact tier: "class" (the task's own size class) or "key"; structural: "structure"
    tier: str = "exact"             # "exact" | "structural"
    structural_key: str = ""
    tuning: dict = field(default_factory=dict)   # {"machine": name, "dims": [shapes per plan region]}
    false_hits: int = 0
    demoted: bool = False

    def to_plan(self) -> "Plan":
        from agentforge.author import Plan

        return Plan.from_dict(self.plan)

    def priors(self) -> dict[str, dict]:
        """``{template: params}`` of the kept plan, for ``author.tune(priors=...)``."""
        out: dict[str, dict] = {}
        for region in self.plan.get("regions", []):
            params = region.get("params") or {}
            if params and region.get("template") not in out:
                out[region["template"]] = dict(params)
        return out

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Served:
    """What :meth:`PlanCache.serve` hands the loop: the plan fitted and re-tuned to the task."""

    plan: "Plan"
    cached: CachedPlan
    tier: str                       # "exact" | "structural"
    search_evaluations: int         # timing evaluations the re-tuning spent
    kept_regions: int               # regions whose parameters were kept as cached (same shapes, same machine)

    @property
    def search_evaluations_saved(self) -> int:
        """The planner's search when the cached plan was made, less the re-tuning's (an estimate:
        a search of the same structure costs about the same)."""
        made = self.cached.evaluation.get("planner_search_evaluations")
        return max(0, int(made) - self.search_evaluations) if isinstance(made, (int, float)) else 0

    def note(self) -> str:
        c = self.cached
        if self.tier == "exact":
            where = "its own size class" if c.match == "class" else f"another size class ({c.task})"
            what = f"key {c.signature_key}, verified in {where}"
        else:
            what = f"structure {c.structural_key}, plan of {c.task or c.signature_key} re-bound to this graph"
        return (f"plan cache: {self.tier} hit ({what}; {self.kept_regions}/{len(self.plan.regions)} regions kept "
                f"their parameters, {self.search_evaluations} timing evaluations re-tuning)")


# the entry for an exact lookup: the task's own class first, then the fastest of the key's other classes
_BEST = ("SELECT * FROM plan_cache_entries WHERE signature_key = ? AND demoted = 0 "
         "ORDER BY (class_key = ?) DESC, speedup IS NULL, speedup DESC, updated_at DESC LIMIT 1")
# the entry for a structural lookup: the fastest plan of another computation with the same structure
_BEST_STRUCTURE = ("SELECT * FROM plan_cache_structures WHERE structural_key = ? AND signature_key != ? "
                   "AND demoted = 0 ORDER BY speedup IS NULL, speedup DESC, updated_at DESC LIMIT 1")


def _class_of(signature: "Signature | str") -> str:
    return "" if isinstance(signature, str) else signature.class_key()


def _key_of(signature: "Signature | str") -> str:
    return signature if isinstance(signature, str) else signature.key()


# ---------------------------------------------------------------------------- the structural key

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
            token += "@" + ",".join(str(d) for d in reduced_dims(n, operand_specs(graph._spec_table, n)))
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


def _tuning_of(plan: "Plan", graph: "AtenGraph | None", machine: str) -> dict:
    from agentforge.author import semantic_nodes

    if graph is None:
        return {}
    sem = semantic_nodes(graph)
    try:
        return {"machine": machine, "dims": [region_dims(r.nodes, sem, graph) for r in plan.regions]}
    except (IndexError, KeyError, AttributeError):
        return {}


class PlanCache:
    """Verified plans found by the exact signature key or by the structural key, in a SQLite file.

    Several processes may share the file (WAL; writes are short ``BEGIN IMMEDIATE``
    transactions). The plan cache's tables carry the ``plan_cache_`` prefix, so the file may
    also hold the experience library.
    """

    def __init__(self, path: str | os.PathLike[str], **db_options: Any):
        self.path = str(path)
        self.db = Database(self.path, PLAN_CACHE_SCHEMA, **db_options)

    # ------------------------------------------------------------------ lookups

    def lookup(self, signature: "Signature | str", structure: Structure | None = None) -> CachedPlan | None:
        """The entry for ``signature`` (exact tier) or else, with ``structure``, for its
        structure (structural tier, the plan re-bound to ``structure``'s graph); counts an
        exact hit, a structural hit (``class_hits``) or a miss.

        Exact: entries are kept per (size-free key, class key); the class key adds the bound
        class and the size regime. A plan verified in the task's own class is preferred
        (``match == "class"``, counted in ``size_class_hits``); otherwise the fastest plan of the
        same computation at other sizes (``match == "key"``). Demoted entries are not served."""
        found = self._find(signature, structure)
        self._count(found, signature)
        return found

    def peek(self, signature: "Signature | str", structure: Structure | None = None) -> CachedPlan | None:
        """Like :meth:`lookup` but counts nothing (reports, tooling)."""
        return self._find(signature, structure)

    def _find(self, signature: "Signature | str", structure: Structure | None,
              tiers: tuple[str, ...] = TIERS) -> CachedPlan | None:
        cls = _class_of(signature)
        if "exact" in tiers:
            rows = self.db.query(_BEST, (_key_of(signature), cls))
            if rows:
                return _entry(rows[0], cls)
        if "structural" in tiers and structure is not None:
            rows = self.db.query(_BEST_STRUCTURE, (structure.key, _key_of(signature)))
            if rows:
                return _structural_entry(rows[0], structure)
        return None

    def _count(self, found: CachedPlan | None, signature: "Signature | str") -> None:
        now = time.time()
        with self.db.transaction() as c:
            if found is None:
                self._bump(c, "misses")
                return
            self._bump(c, "hits")
            if found.tier == "structural":
                self._bump(c, "class_hits")
                c.execute("UPDATE plan_cache_structures SET hits = hits + 1, last_hit_at = ? "
                          "WHERE structural_key = ? AND signature_key = ?",
                          (now, found.structural_key, found.signature_key))
                return
            if found.match == "class":
                self._bump(c, "size_class_hits")
            c.execute("UPDATE plan_cache_entries SET hits = hits + 1, last_hit_at = ? "
                      "WHERE signature_key = ? AND class_key = ?", (now, found.signature_key, found.class_key))
        found.hits += 1
        found.last_hit_at = now

    def entries(self) -> list[CachedPlan]:
        """Every exact-tier entry, most recently updated first."""
        return [_entry(r) for r in self.db.query(
            "SELECT * FROM plan_cache_entries ORDER BY updated_at DESC, signature_key")]

    def structural_entries(self) -> list[dict]:
        """Every structural-tier entry (its form, not re-bound), most recently updated first."""
        out = []
        for r in self.db.query("SELECT * FROM plan_cache_structures ORDER BY updated_at DESC, structural_key"):
            d = dict(r)
            d["form"] = json.loads(d.pop("form_json"))
            d["structure"] = json.loads(d.pop("structure_json"))
            d["evaluation"] = json.loads(d.pop("evaluation_json"))
            d["demoted"] = bool(d["demoted"])
            out.append(d)
        return out

    # ------------------------------------------------------------------ serving a task

    def serve(self, signature: "Signature", graph: "AtenGraph", machine: "Machine",
              structure: Structure | None = None) -> Served | None:
        """The plan for a task, from the exact tier, else the structural tier: adapted
        (:meth:`adapt`) and re-tuned (:func:`retune`), ready to realise and verify. Counts one
        exact hit, one structural hit or one miss (an entry that does not fit is counted in
        ``adapt_failures`` and the next tier is tried). ``None``: ask the planner."""
        for tier in TIERS:
            cached = self._find(signature, structure, (tier,))
            if cached is None:
                continue
            plan = self._adapt(cached, graph, machine, check_key=tier == "exact")
            if plan is not None:
                try:
                    tuning = cached.tuning or {}
                    plan, tried, kept = retune(plan, graph, machine, tuning.get("dims"),
                                               same_machine=tuning.get("machine") == machine.name)
                except Exception:  # noqa: BLE001 - no parameters fit: the entry does not fit this task
                    plan = None
            if plan is None:
                with self.db.transaction() as c:
                    self._bump(c, "adapt_failures")
                continue
            self._count(cached, signature)
            return Served(plan, cached, tier, tried, kept)
        self._count(None, signature)
        return None

    def false_hit(self, cached: CachedPlan) -> None:
        """A served plan failed verification: count a false hit and demote its entry (it is no
        longer served at its tier until a newly verified plan replaces it)."""
        with self.db.transaction() as c:
            self._bump(c, "false_hits")
            if cached.tier == "structural":
                c.execute("UPDATE plan_cache_structures SET false_hits = false_hits + 1, demoted = 1 "
                          "WHERE structural_key = ? AND signature_key = ?",
                          (cached.structural_key, cached.signature_key))
            else:
                c.execute("UPDATE plan_cache_entries SET false_hits = false_hits + 1, demoted = 1 "
                          "WHERE signature_key = ? AND class_key = ?", (cached.signature_key, cached.class_key))

    # ------------------------------------------------------------------ adaptation

    def adapt(self, cached: CachedPlan | dict, graph: "AtenGraph", machine: "Machine | None" = None,
              *, check_key: bool = True) -> "Plan | None":
        """The cached plan fitted to ``graph`` (a task with the same key), or ``None``.

        Checks, in order: the plan parses; (``check_key``, exact-tier entries) ``graph``'s
        signature has the entry's key; every region is non-empty, names semantic nodes in range
        (``0 <= i < len(author.semantic_nodes(graph))``), and no node is in two regions; a
        ``single`` region holds one node, a ``matmul`` region holds an ``mm``/``addmm``, a
        ``row`` region holds ops that work on rows. Parameters are then kept only where they
        apply: keys the template knows (:data:`PARAM_KEYS`), positive integers, and tiles no
        larger than the region's dimension at the new sizes (``tm <= M``, ``tn <= N``,
        ``tk <= K``, ``rows <=`` number of rows). With ``machine``, the plan must also realize
        (``author.realize``) on it. A ``None`` is counted as an adaptation failure in
        :meth:`stats`. (:meth:`serve` then re-tunes what the new sizes need.)
        """
        if isinstance(cached, CachedPlan) and cached.tier == "structural":
            check_key = False
        plan = self._adapt(cached, graph, machine, check_key)
        if plan is None:
            with self.db.transaction() as c:
                self._bump(c, "adapt_failures")
        return plan

    @staticmethod
    def _adapt(cached: CachedPlan | dict, graph: "AtenGraph", machine: "Machine | None",
               check_key: bool) -> "Plan | None":
        from agentforge.author import Plan, Region, row_kind, row_view, semantic_nodes
        from agentforge.capture import op_kind, signature
        from agentforge.solution import plan_solution

        data = cached.plan if isinstance(cached, CachedPlan) else cached
        try:
            plan = Plan.from_dict(data)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        if check_key and isinstance(cached, CachedPlan) and signature(graph).key() != cached.signature_key:
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

    # ------------------------------------------------------------------ writes

    def store(self, signature: "Signature | str", plan: "Plan | dict", evaluation_summary: Any,
              task: str | None = None, *, graph: "AtenGraph | None" = None,
              structure: Structure | None = None) -> CachedPlan:
        """Record a *verified* plan for ``signature``; keep the fastest per (key, class key).

        ``evaluation_summary`` is the verifier's report (``Evaluation``, ``Feedback`` or a
        dict) and must say ``verified: true`` (else :class:`~agentforge.store.db.UnverifiedError`).
        Every store counts one verification; the plan replaces the kept one only when its
        speedup is higher (a missing speedup ranks lowest) or the kept one was demoted.
        With ``graph`` the shapes each region was tuned at are kept (so a hit at the same
        shapes re-tunes nothing); with ``structure`` (the task's :func:`structure_of`) and a
        plan made of its regions, the plan also enters the structural tier.
        Returns the exact-tier entry after the store.
        """
        from agentforge.author import Plan

        summary = _summarise(evaluation_summary, "plan")
        plan_obj = plan if isinstance(plan, Plan) else Plan.from_dict(plan)
        plan_json = canonical_json(plan_obj.to_dict())
        key = _key_of(signature)
        class_key = "" if isinstance(signature, str) else signature.class_key()
        sig_json = "{}" if isinstance(signature, str) else signature.canonical_json("key")
        task_name = task if task is not None else str(summary.get("task", ""))
        speedup = speedup_of(summary)
        tuning = canonical_json(_tuning_of(plan_obj, graph, str(summary.get("machine", ""))))
        form = structural_form(plan_obj, structure) if structure is not None else None
        now = time.time()
        with self.db.transaction() as c:
            where = "WHERE signature_key = ? AND class_key = ?"
            row = c.execute(f"SELECT speedup, demoted FROM plan_cache_entries {where}", (key, class_key)).fetchone()
            if row is None:
                c.execute(
                    "INSERT INTO plan_cache_entries (signature_key, plan_json, speedup, verifications, task,"
                    " class_key, signature_json, evaluation_json, created_at, updated_at, tuning_json)"
                    " VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?)",
                    (key, plan_json, speedup, task_name, class_key, sig_json, canonical_json(summary), now, now,
                     tuning))
            else:
                faster = speedup is not None and (row["speedup"] is None or speedup > row["speedup"])
                better = bool(row["demoted"]) or faster
                if better:
                    c.execute(
                        "UPDATE plan_cache_entries SET plan_json = ?, speedup = ?, task = ?,"
                        " signature_json = ?, evaluation_json = ?, verifications = verifications + 1,"
                        f" updated_at = ?, tuning_json = ?, demoted = 0 {where}",
                        (plan_json, speedup, task_name, sig_json, canonical_json(summary), now, tuning, key, class_key))
                else:
                    c.execute(f"UPDATE plan_cache_entries SET verifications = verifications + 1 {where}",
                              (key, class_key))
            if form is not None:
                self._store_structural(c, structure, key, form, speedup, task_name, summary, now)
            row = c.execute(f"SELECT * FROM plan_cache_entries {where}", (key, class_key)).fetchone()
        return _entry(row, class_key)

    @staticmethod
    def _store_structural(c: Any, structure: Structure, key: str, form: list[dict], speedup: float | None,
                          task_name: str, summary: dict, now: float) -> None:
        form_json = canonical_json(form)
        where = "WHERE structural_key = ? AND signature_key = ?"
        row = c.execute(f"SELECT speedup, demoted, form_json FROM plan_cache_structures {where}",
                        (structure.key, key)).fetchone()
        if row is None:
            c.execute("INSERT INTO plan_cache_structures (structural_key, signature_key, form_json, structure_json,"
                      " speedup, task, evaluation_json, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (structure.key, key, form_json, canonical_json(structure.to_dict()), speedup, task_name,
                       canonical_json(summary), now, now))
            return
        faster = speedup is not None and (row["speedup"] is None or speedup > row["speedup"])
        # a demoted entry stays demoted while it holds the same plan shape: that shape failed to transfer
        other_shape = _shape_of(form) != _shape_of(json.loads(row["form_json"]))
        if faster or (row["demoted"] and other_shape):
            c.execute("UPDATE plan_cache_structures SET form_json = ?, speedup = ?, task = ?, evaluation_json = ?,"
                      " verifications = verifications + 1, updated_at = ?,"
                      f" demoted = CASE WHEN ? THEN 0 ELSE demoted END {where}",
                      (form_json, speedup, task_name, canonical_json(summary), now, int(other_shape),
                       structure.key, key))
        else:
            c.execute(f"UPDATE plan_cache_structures SET verifications = verifications + 1 {where}",
                      (structure.key, key))

    def record_saved(self, planner_calls: int = 1, tokens: int = 0, search_evaluations: int = 0) -> None:
        """Account what a hit saved: planner calls not made, their (estimated) tokens, and the
        offline planner's timing evaluations not spent."""
        for name, value in (("planner_calls", planner_calls), ("tokens", tokens),
                            ("search_evaluations", search_evaluations)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"record_saved: {name} must be a non-negative integer, got {value!r}")
        with self.db.transaction() as c:
            self._bump(c, "planner_calls_saved", planner_calls)
            self._bump(c, "tokens_saved", tokens)
            self._bump(c, "search_evaluations_saved", search_evaluations)

    def clear(self) -> int:
        """Remove every entry (both tiers) and reset the counters; returns the number of entries removed."""
        with self.db.transaction() as c:
            n = c.execute("DELETE FROM plan_cache_entries").rowcount
            n += c.execute("DELETE FROM plan_cache_structures").rowcount
            c.execute("UPDATE plan_cache_counters SET value = 0")
        return n

    # ------------------------------------------------------------------ accounting

    def stats(self) -> dict:
        """See :func:`_stats` (and docs/memory.md, "Reading the stats")."""
        with self.db.snapshot() as c:
            counters = {r["name"]: int(r["value"]) for r in c.execute("SELECT name, value FROM plan_cache_counters")}
            entries, verifications, demoted = c.execute(
                "SELECT COUNT(*), COALESCE(SUM(verifications), 0), COALESCE(SUM(demoted), 0)"
                " FROM plan_cache_entries").fetchone()
            structural, s_demoted, structures = c.execute(
                "SELECT COUNT(*), COALESCE(SUM(demoted), 0), COUNT(DISTINCT structural_key)"
                " FROM plan_cache_structures").fetchone()
        return _stats(self.path, int(entries), int(verifications), counters, PLAN_CACHE_SCHEMA.version,
                      structural=int(structural), structures=int(structures), demoted=int(demoted) + int(s_demoted))

    @staticmethod
    def _bump(c: Any, name: str, by: int = 1) -> None:
        c.execute("UPDATE plan_cache_counters SET value = value + ? WHERE name = ?", (by, name))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "PlanCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shape_of(form: list[dict]) -> list:
    """A structural form without parameters: which regions are fused, which split."""
    return [("split", len(f["split"])) if "split" in f else ("whole", f.get("template")) for f in form]


def _entry(row: Any, wanted_class: str = "") -> CachedPlan:
    keys = row.keys()
    return CachedPlan(
        match="class" if wanted_class and row["class_key"] == wanted_class else "key",
        signature_key=row["signature_key"],
        plan=json.loads(row["plan_json"]),
        speedup=row["speedup"],
        verifications=int(row["verifications"]),
        task=row["task"],
        class_key=row["class_key"],
        evaluation=json.loads(row["evaluation_json"]),
        hits=int(row["hits"]) if "hits" in keys else 0,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_hit_at=row["last_hit_at"] if "last_hit_at" in keys else None,
        tuning=json.loads(row["tuning_json"]) if "tuning_json" in keys else {},
        false_hits=int(row["false_hits"]) if "false_hits" in keys else 0,
        demoted=bool(row["demoted"]) if "demoted" in keys else False,
    )


def _structural_entry(row: Any, structure: Structure) -> CachedPlan | None:
    """A structural entry with its plan re-bound to ``structure``'s graph (None: it cannot be)."""
    form = json.loads(row["form_json"])
    bound = rebind(form, structure)
    if bound is None:
        return None
    plan, dims = bound
    evaluation = json.loads(row["evaluation_json"])
    return CachedPlan(
        signature_key=row["signature_key"], plan=plan, speedup=row["speedup"],
        verifications=int(row["verifications"]), task=row["task"], evaluation=evaluation,
        hits=int(row["hits"]), created_at=row["created_at"], updated_at=row["updated_at"],
        last_hit_at=row["last_hit_at"], match="structure", tier="structural", structural_key=row["structural_key"],
        tuning={"machine": evaluation.get("machine", ""), "dims": dims}, false_hits=int(row["false_hits"]),
        demoted=bool(row["demoted"]))


def _stats(path: str, entries: int, verifications: int, counters: dict[str, int], version: int,
           structural: int = 0, structures: int = 0, demoted: int = 0) -> dict:
    """hits (served, both tiers) = exact_hits + class_hits (structural); false_hits (served plans
    that failed verification; each fell back to the planner); misses; hit_rate = hits / (hits +
    misses); false_hit_rate = false_hits / hits; planner_calls_saved (hits that verified: each
    skipped one planner call), tokens_saved, search_evaluations_saved; size_class_hits (exact
    hits in the task's own size class); adapt_failures (entries found that did not fit);
    entries (exact tier), structural_entries, structures (distinct structural keys), demoted."""
    hits, misses = counters.get("hits", 0), counters.get("misses", 0)
    class_hits, false_hits = counters.get("class_hits", 0), counters.get("false_hits", 0)
    return {
        "path": path,
        "entries": entries,
        "structural_entries": structural,
        "structures": structures,
        "demoted": demoted,
        "verifications": verifications,
        "hits": hits,
        "exact_hits": hits - class_hits,
        "class_hits": class_hits,
        "size_class_hits": counters.get("size_class_hits", 0),
        "false_hits": false_hits,
        "misses": misses,
        "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
        "false_hit_rate": false_hits / hits if hits else 0.0,
        "planner_calls_saved": counters.get("planner_calls_saved", 0),
        "tokens_saved": counters.get("tokens_saved", 0),
        "search_evaluations_saved": counters.get("search_evaluations_saved", 0),
        "adapt_failures": counters.get("adapt_failures", 0),
        "schema_version": version,
    }


def cache_stats(path: str | os.PathLike[str]) -> dict:
    """``agentforge cache stats``: the cache's :meth:`PlanCache.stats` (zeros when no file exists;
    none is created)."""
    if not Path(path).exists():
        return _stats(str(path), 0, 0, {}, 0)
    with PlanCache(path) as cache:
        return cache.stats()


def cache_clear(path: str | os.PathLike[str]) -> int:
    """``agentforge cache clear``: remove every entry and reset the counters; returns the number
    of entries removed (0 when no file exists; none is created)."""
    if not Path(path).exists():
        return 0
    with PlanCache(path) as cache:
        return cache.clear()
