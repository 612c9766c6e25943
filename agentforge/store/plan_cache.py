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

How a cached plan is fitted to another task (the structural key, structural form, adaptation,
re-tuning) is :mod:`agentforge.store.plan_adapt`; this module is the store and its counters.
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
from .plan_adapt import (PARAM_KEYS, Structure, adapt_plan, rebind, region_dims, retune, structural_form,
                         structure_of, tuning_of)

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
        data = cached.plan if isinstance(cached, CachedPlan) else cached
        key = cached.signature_key if check_key and isinstance(cached, CachedPlan) else None
        return adapt_plan(data, graph, machine, key)

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
        tuning = canonical_json(tuning_of(plan_obj, graph, str(summary.get("machine", ""))))
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
