"""The plan cache: verified fusion plans, keyed by the size-free signature key.

After "Agentic plan caching" (Zhang, Wornow, Wan, Olukotun, NeurIPS 2025): templates extracted
from completed, *correct* runs are stored stripped of task-specific detail, matched on
extracted keywords (here: :meth:`agentforge.capture.Signature.key`, which ignores sizes, so
softmax at 8x64 and at 4096x4096 share an entry), adapted with a cheap step on a hit, and a
miss calls the full planner.

- Entries are kept per (key, class key): the class key adds the bound class and the size
  regime (:meth:`~agentforge.capture.Signature.class_key`). :meth:`PlanCache.lookup` prefers
  the plan verified in the task's own class and falls back to the fastest of the same key at
  other sizes; it counts a hit (and a class hit) or a miss.
- :meth:`PlanCache.adapt` fits a cached plan to the graph of the new task: plans already
  name nodes by semantic index (:func:`agentforge.author.semantic_nodes`) and carry no sizes,
  so adaptation *validates* (indices in range and used once, templates that fit the nodes)
  and drops per-region parameters that do not apply at the new sizes; the tuner then
  re-tunes every region, starting from :meth:`CachedPlan.priors`. ``None`` when it does not fit.
- :meth:`PlanCache.store` accepts verified plans only and keeps the fastest per (key, class),
  with the number of verifications seen.
- :meth:`PlanCache.record_saved` accounts what the hits saved (planner calls, tokens).

Everything lives in SQLite (:mod:`agentforge.store.db`); the schema is in docs/memory.md.
This module imports neither torch nor the author at import time, so ``agentforge cache
stats`` stays fast; :meth:`PlanCache.adapt` and :meth:`PlanCache.store` import them lazily.
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

__all__ = ["PlanCache", "CachedPlan", "PLAN_CACHE_SCHEMA", "PARAM_KEYS", "cache_stats", "cache_clear"]

COUNTERS = ("hits", "misses", "planner_calls_saved", "tokens_saved", "adapt_failures")

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
))

#: Region parameters each template understands (the keys of author's search grids).
PARAM_KEYS: dict[str, tuple[str, ...]] = {
    "row": ("rows", "par", "par_mem"),
    "matmul": ("tm", "tn", "tk", "par", "par_mem", "par_epi"),
    "attention": ("tm", "tk", "par", "par_mem", "par_buf", "kv_buf"),
    "moe": ("tk", "par", "par_mem", "par_buf"),
    "single": ("compute", "memory"),
}


@dataclass
class CachedPlan:
    """One cache entry: the fastest verified plan seen for a signature key."""

    signature_key: str
    plan: dict                      # author.Plan.to_dict(), size-free
    speedup: float | None
    verifications: int              # verified stores seen for this key (all, not only the kept one)
    task: str = ""                  # the task whose run produced the kept plan
    class_key: str = ""
    evaluation: dict = field(default_factory=dict)
    hits: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    last_hit_at: float | None = None
    match: str = "key"              # "class": verified in the task's own bound class and size regime

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


# the entry for a lookup: the task's own class first, then the fastest of the key's other classes
_BEST = ("SELECT * FROM plan_cache_entries WHERE signature_key = ? "
         "ORDER BY (class_key = ?) DESC, speedup IS NULL, speedup DESC, updated_at DESC LIMIT 1")


def _class_of(signature: "Signature | str") -> str:
    return "" if isinstance(signature, str) else signature.class_key()


def _key_of(signature: "Signature | str") -> str:
    return signature if isinstance(signature, str) else signature.key()


class PlanCache:
    """Verified plans keyed by the size-free signature key, in a SQLite file.

    Several processes may share the file (WAL; writes are short ``BEGIN IMMEDIATE``
    transactions). The plan cache's tables carry the ``plan_cache_`` prefix, so the file may
    also hold the experience library.
    """

    def __init__(self, path: str | os.PathLike[str], **db_options: Any):
        self.path = str(path)
        self.db = Database(self.path, PLAN_CACHE_SCHEMA, **db_options)

    # ------------------------------------------------------------------ lookups

    def lookup(self, signature: "Signature | str") -> CachedPlan | None:
        """The entry for ``signature``, counting a hit (entry found) or a miss.

        Entries are kept per (size-free key, class key); the class key adds the bound class and
        the size regime. A plan verified in the task's own class is preferred (a ``class`` hit);
        otherwise the fastest plan of the same computation at other sizes (a ``key`` hit), which
        adaptation and re-tuning fit to the new sizes."""
        key, cls = _key_of(signature), _class_of(signature)
        now = time.time()
        with self.db.transaction() as c:
            row = c.execute(_BEST, (key, cls)).fetchone()
            if row is None:
                self._bump(c, "misses")
                return None
            self._bump(c, "hits")
            if cls and row["class_key"] == cls:
                self._bump(c, "class_hits")
            c.execute("UPDATE plan_cache_entries SET hits = hits + 1, last_hit_at = ? "
                      "WHERE signature_key = ? AND class_key = ?", (now, key, row["class_key"]))
            row = c.execute("SELECT * FROM plan_cache_entries WHERE signature_key = ? AND class_key = ?",
                            (key, row["class_key"])).fetchone()
        return _entry(row, cls)

    def peek(self, signature: "Signature | str") -> CachedPlan | None:
        """Like :meth:`lookup` but counts nothing (reports, tooling)."""
        cls = _class_of(signature)
        rows = self.db.query(_BEST, (_key_of(signature), cls))
        return _entry(rows[0], cls) if rows else None

    def entries(self) -> list[CachedPlan]:
        """Every entry, most recently updated first."""
        return [_entry(r) for r in self.db.query(
            "SELECT * FROM plan_cache_entries ORDER BY updated_at DESC, signature_key")]

    # ------------------------------------------------------------------ adaptation

    def adapt(self, cached: CachedPlan | dict, graph: "AtenGraph", machine: "Machine | None" = None,
              *, check_key: bool = True) -> "Plan | None":
        """The cached plan fitted to ``graph`` (a task with the same key), or ``None``.

        Checks, in order: the plan parses; (``check_key``) ``graph``'s signature has the
        entry's key; every region is non-empty, names semantic nodes in range
        (``0 <= i < len(author.semantic_nodes(graph))``), and no node is in two regions; a
        ``single`` region holds one node, a ``matmul`` region holds an ``mm``/``addmm``, a
        ``row`` region holds ops that work on rows. Parameters are then kept only where they
        apply: keys the template knows (:data:`PARAM_KEYS`), positive integers, and tiles no
        larger than the region's dimension at the new sizes (``tm <= M``, ``tn <= N``,
        ``tk <= K``, ``rows <=`` number of rows); the tuner re-tunes every region anyway
        (``author.tune(plan, graph, machine, priors=cached.priors())``). With ``machine``,
        the plan must also realize (``author.realize``) on it. A ``None`` is counted as an
        adaptation failure in :meth:`stats`.
        """
        plan = self._adapt(cached, graph, machine, check_key)
        if plan is None:
            with self.db.transaction() as c:
                self._bump(c, "adapt_failures")
        return plan

    @staticmethod
    def _adapt(cached: CachedPlan | dict, graph: "AtenGraph", machine: "Machine | None",
               check_key: bool) -> "Plan | None":
        from agentforge.author import Plan, Region, realize, row_kind, row_view, semantic_nodes
        from agentforge.capture import op_kind, signature

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
                realize(adapted, graph, machine)
            except Exception:  # noqa: BLE001 - any failure to realize means "does not fit"
                return None
        return adapted

    # ------------------------------------------------------------------ writes

    def store(self, signature: "Signature | str", plan: "Plan | dict", evaluation_summary: Any,
              task: str | None = None) -> CachedPlan:
        """Record a *verified* plan for ``signature``; keep the fastest per (key, class key).

        ``evaluation_summary`` is the verifier's report (``Evaluation``, ``Feedback`` or a
        dict) and must say ``verified: true`` (else :class:`~agentforge.store.db.UnverifiedError`).
        Every store counts one verification; the plan replaces the kept one only when its
        speedup is higher (a missing speedup ranks lowest). Returns the entry after the store.
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
        now = time.time()
        with self.db.transaction() as c:
            where = "WHERE signature_key = ? AND class_key = ?"
            row = c.execute(f"SELECT speedup FROM plan_cache_entries {where}", (key, class_key)).fetchone()
            if row is None:
                c.execute(
                    "INSERT INTO plan_cache_entries (signature_key, plan_json, speedup, verifications, task,"
                    " class_key, signature_json, evaluation_json, created_at, updated_at)"
                    " VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?)",
                    (key, plan_json, speedup, task_name, class_key, sig_json, canonical_json(summary), now, now))
            else:
                better = speedup is not None and (row["speedup"] is None or speedup > row["speedup"])
                if better:
                    c.execute(
                        "UPDATE plan_cache_entries SET plan_json = ?, speedup = ?, task = ?,"
                        f" signature_json = ?, evaluation_json = ?, verifications = verifications + 1,"
                        f" updated_at = ? {where}",
                        (plan_json, speedup, task_name, sig_json, canonical_json(summary), now, key, class_key))
                else:
                    c.execute(f"UPDATE plan_cache_entries SET verifications = verifications + 1 {where}",
                              (key, class_key))
            row = c.execute(f"SELECT * FROM plan_cache_entries {where}", (key, class_key)).fetchone()
        return _entry(row, class_key)

    def record_saved(self, planner_calls: int = 1, tokens: int = 0) -> None:
        """Account what a hit saved: planner calls not made and their (estimated) tokens."""
        for name, value in (("planner_calls", planner_calls), ("tokens", tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"record_saved: {name} must be a non-negative integer, got {value!r}")
        with self.db.transaction() as c:
            self._bump(c, "planner_calls_saved", planner_calls)
            self._bump(c, "tokens_saved", tokens)

    def clear(self) -> int:
        """Remove every entry and reset the counters; returns the number of entries removed."""
        with self.db.transaction() as c:
            n = c.execute("DELETE FROM plan_cache_entries").rowcount
            c.execute("UPDATE plan_cache_counters SET value = 0")
        return n

    # ------------------------------------------------------------------ accounting

    def stats(self) -> dict:
        """entries, verifications, hits, misses, hit_rate, planner_calls_saved, tokens_saved,
        adapt_failures, path, schema_version."""
        with self.db.snapshot() as c:
            counters = {r["name"]: int(r["value"]) for r in c.execute("SELECT name, value FROM plan_cache_counters")}
            entries, verifications = c.execute(
                "SELECT COUNT(*), COALESCE(SUM(verifications), 0) FROM plan_cache_entries").fetchone()
        return _stats(self.path, int(entries), int(verifications), counters, PLAN_CACHE_SCHEMA.version)

    @staticmethod
    def _bump(c: Any, name: str, by: int = 1) -> None:
        c.execute("UPDATE plan_cache_counters SET value = value + ? WHERE name = ?", (by, name))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "PlanCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    )


def _stats(path: str, entries: int, verifications: int, counters: dict[str, int], version: int) -> dict:
    hits, misses = counters.get("hits", 0), counters.get("misses", 0)
    return {
        "path": path,
        "entries": entries,
        "verifications": verifications,
        "hits": hits,
        "class_hits": counters.get("class_hits", 0),
        "misses": misses,
        "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
        "planner_calls_saved": counters.get("planner_calls_saved", 0),
        "tokens_saved": counters.get("tokens_saved", 0),
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
