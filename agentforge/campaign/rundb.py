"""The run database of a campaign: one SQLite file in the run directory (``run.sqlite``).

It holds everything a campaign did, so that it can be resumed, reviewed and audited:

- ``run``: one row; the run id, suite, configuration (secrets never enter it), the run
  manifest (machine preset, emulator version, seed, model, package versions), status;
- ``tasks``: one row per task of the suite, in suite order, with its status
  (``pending`` -> ``running`` -> ``verified`` | ``failed``; ``running`` after a crash means
  *interrupted*: ``--resume`` restarts it from its LangGraph checkpoint) and its result;
- ``plans``, ``candidates`` (with ``parent``: the same worker's previous candidate, the
  lineage a review shows as a tree), ``evaluations`` (the full evaluation JSON);
- ``llm_calls`` (tokens, cost, latency, errors per call) and ``events`` (the JSONL event
  stream, also kept here).

A task's whole result is written in one transaction, so a kill -9 leaves either all of it or
none of it. The schema is versioned with :mod:`agentforge.store.db` migrations.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..scoring import fast_fraction
from ..store.db import Database, Migration, Schema

RUN_SCHEMA = Schema("run", (
    Migration(1, "campaign run database", [
        "CREATE TABLE run (id TEXT PRIMARY KEY, created REAL NOT NULL, suite TEXT NOT NULL,"
        " config_json TEXT NOT NULL, manifest_json TEXT NOT NULL, status TEXT NOT NULL,"
        " stop_reason TEXT, finished REAL)",
        "CREATE TABLE tasks (name TEXT PRIMARY KEY, ord INTEGER NOT NULL, path TEXT NOT NULL,"
        " group_name TEXT, level INTEGER, signature_key TEXT,"
        " status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','running','verified','failed')),"
        " tries INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, plan_cache_hit INTEGER,"
        " plan_source TEXT, best_candidate INTEGER, speedup REAL, roofline_fraction REAL,"
        " simulated_seconds REAL, baseline_seconds REAL, reason TEXT, reason_code TEXT, kernel_id TEXT,"
        " started REAL, finished REAL, seconds REAL, notes_json TEXT NOT NULL DEFAULT '[]')",
        "CREATE TABLE plans (id INTEGER PRIMARY KEY, task TEXT NOT NULL REFERENCES tasks(name),"
        " source TEXT NOT NULL, plan_json TEXT NOT NULL, created REAL NOT NULL)",
        "CREATE TABLE candidates (id INTEGER PRIMARY KEY, task TEXT NOT NULL REFERENCES tasks(name),"
        " attempt INTEGER NOT NULL, worker INTEGER NOT NULL, parent INTEGER REFERENCES candidates(id),"
        " kind TEXT NOT NULL, author TEXT, source TEXT, plan_json TEXT, notes TEXT, seconds REAL,"
        " created REAL NOT NULL)",
        "CREATE TABLE evaluations (candidate INTEGER PRIMARY KEY REFERENCES candidates(id),"
        " verified INTEGER NOT NULL, reason_code TEXT, reason TEXT, speedup REAL, simulated_seconds REAL,"
        " roofline_fraction REAL, bottleneck TEXT, json TEXT NOT NULL)",
        "CREATE TABLE llm_calls (id INTEGER PRIMARY KEY, task TEXT, role TEXT, model TEXT, kind TEXT,"
        " ok INTEGER, error TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, cached_tokens INTEGER,"
        " cost REAL, latency_s REAL, started REAL)",
        "CREATE TABLE events (id INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, task TEXT,"
        " data_json TEXT NOT NULL)",
        "CREATE INDEX candidates_task ON candidates(task, attempt, worker)",
        "CREATE INDEX events_ts ON events(ts)",
    ]),
    Migration(2, "the problem (library dispatch key) of each task's kernel", [
        "ALTER TABLE tasks ADD COLUMN problem_key TEXT",
    ]),
    Migration(3, "HTTP attempts of each LLM call and the errors of the attempts that were retried", [
        "ALTER TABLE llm_calls ADD COLUMN attempts INTEGER",
        "ALTER TABLE llm_calls ADD COLUMN retry_errors TEXT",
    ]),
))

TASK_DONE = ("verified", "failed")


class RunDB:
    """The campaign's run database (one writer: the campaign process; any number of readers)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = Database(self.path, RUN_SCHEMA)

    # ------------------------------------------------------------------ the run

    def run(self) -> dict | None:
        rows = self.db.query("SELECT * FROM run")
        if not rows:
            return None
        r = dict(rows[0])
        r["config"] = json.loads(r.pop("config_json"))
        r["manifest"] = json.loads(r.pop("manifest_json"))
        return r

    def start_run(self, run_id: str, suite: str, config: dict, manifest: dict, tasks: list[Any]) -> None:
        """Record a new run and its tasks (all pending)."""
        with self.db.transaction() as c:
            c.execute("INSERT INTO run (id, created, suite, config_json, manifest_json, status) VALUES (?,?,?,?,?,?)",
                      (run_id, time.time(), suite, json.dumps(config, sort_keys=True),
                       json.dumps(manifest, sort_keys=True), "running"))
            for i, t in enumerate(tasks):
                c.execute("INSERT INTO tasks (name, ord, path, group_name, level) VALUES (?,?,?,?,?)",
                          (t.name, i, str(t.path), t.group, t.level))

    def set_status(self, status: str, stop_reason: str | None = None) -> None:
        with self.db.transaction() as c:
            c.execute("UPDATE run SET status = ?, stop_reason = ?, finished = ? WHERE 1",
                      (status, stop_reason, time.time() if status != "running" else None))

    # ------------------------------------------------------------------ tasks

    def tasks(self) -> list[dict]:
        rows = self.db.query("SELECT * FROM tasks ORDER BY ord")
        out = []
        for r in rows:
            d = dict(r)
            d["notes"] = json.loads(d.pop("notes_json") or "[]")
            out.append(d)
        return out

    def task_started(self, name: str) -> None:
        with self.db.transaction() as c:
            c.execute("UPDATE tasks SET status = 'running', tries = tries + 1, started = COALESCE(started, ?)"
                      " WHERE name = ?", (time.time(), name))

    def task_pending(self, name: str, llm_calls: list[dict]) -> None:
        """A task stopped by a budget: pending again; the LLM calls it made are kept (they were paid for)."""
        with self.db.transaction() as c:
            c.execute("UPDATE tasks SET status = 'pending' WHERE name = ?", (name,))
            self._insert_calls(c, name, llm_calls)

    def add_llm_calls(self, name: str, llm_calls: list[dict]) -> None:
        with self.db.transaction() as c:
            self._insert_calls(c, name, llm_calls)

    @staticmethod
    def _insert_calls(c: Any, name: str, llm_calls: list[dict]) -> None:
        for call in llm_calls:
            c.execute("INSERT INTO llm_calls (task, role, model, kind, ok, error, prompt_tokens,"
                      " completion_tokens, cached_tokens, cost, latency_s, started, attempts, retry_errors)"
                      " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                      (name, call.get("role"), call.get("model"), call.get("kind"), int(bool(call.get("ok"))),
                       call.get("error"), call.get("prompt_tokens", 0), call.get("completion_tokens", 0),
                       call.get("cached_tokens"), call.get("cost", 0.0), call.get("latency_s", 0.0),
                       call.get("started"), call.get("attempts"), json.dumps(call.get("retry_errors") or [])))

    def record_result(self, name: str, result: dict, kernel_id: str | None, event: dict | None = None,
                      replaced: tuple[str, str] | None = None, problem_key: str | None = None) -> None:
        """Everything one finished task produced, in one transaction (see module doc)."""
        now = time.time()
        with self.db.transaction() as c:
            c.execute("DELETE FROM evaluations WHERE candidate IN (SELECT id FROM candidates WHERE task = ?)", (name,))
            c.execute("DELETE FROM candidates WHERE task = ?", (name,))
            c.execute("DELETE FROM plans WHERE task = ?", (name,))
            for p in result.get("plans", []):
                c.execute("INSERT INTO plans (task, source, plan_json, created) VALUES (?,?,?,?)",
                          (name, p["source"], json.dumps(p["plan"], sort_keys=True), now))
            last: dict[int, int] = {}
            best_id = None
            for h in sorted(result.get("history", []), key=lambda h: (h["attempt"], h["worker"])):
                cand = h.get("candidate") or {}
                cur = c.execute(
                    "INSERT INTO candidates (task, attempt, worker, parent, kind, author, source, plan_json, notes,"
                    " seconds, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (name, h["attempt"], h["worker"], last.get(h["worker"]), cand.get("kind", "none"),
                     cand.get("author"), cand.get("source"),
                     json.dumps(cand["plan"], sort_keys=True) if cand.get("plan") is not None else None,
                     cand.get("notes"), h.get("seconds"), now))
                cid = cur.lastrowid
                last[h["worker"]] = cid
                ev = h["evaluation"]
                c.execute("INSERT INTO evaluations (candidate, verified, reason_code, reason, speedup,"
                          " simulated_seconds, roofline_fraction, bottleneck, json) VALUES (?,?,?,?,?,?,?,?,?)",
                          (cid, int(bool(ev.get("verified"))), ev.get("reason_code"), ev.get("reason"),
                           ev.get("speedup"), ev.get("simulated_seconds"), ev.get("roofline_fraction"),
                           ev.get("bottleneck"), json.dumps(ev, sort_keys=True)))
                if result.get("best_index") is not None and h is result["history"][result["best_index"]]:
                    best_id = cid
            self._insert_calls(c, name, result.get("llm_calls", []))
            best = result.get("best") or {}
            verified = bool(best.get("verified"))
            c.execute(
                "UPDATE tasks SET status = ?, attempts = ?, plan_cache_hit = ?, plan_source = ?, best_candidate = ?,"
                " speedup = ?, roofline_fraction = ?, simulated_seconds = ?, baseline_seconds = ?, reason = ?,"
                " reason_code = ?, kernel_id = ?, signature_key = ?, finished = ?, seconds = ?, notes_json = ?"
                " WHERE name = ?",
                ("verified" if verified else "failed", result.get("attempts", 0), int(bool(result.get("plan_cache_hit"))),
                 result.get("plan_source"), best_id, best.get("speedup"), best.get("roofline_fraction"),
                 best.get("simulated_seconds"), best.get("baseline_seconds"),
                 None if verified else (best.get("reason") or result.get("error")),
                 None if verified else (best.get("reason_code") or result.get("error_code")), kernel_id,
                 result.get("signature_key"), now, result.get("seconds"), json.dumps(result.get("notes", [])), name))
            if problem_key is not None:
                c.execute("UPDATE tasks SET problem_key = ? WHERE name = ?", (problem_key, name))
            if replaced is not None:
                c.execute("UPDATE tasks SET kernel_id = ? WHERE kernel_id = ?", (replaced[1], replaced[0]))
            if event is not None:
                self._event(c, event)

    # ------------------------------------------------------------------ events and reading back

    @staticmethod
    def _event(c: Any, event: dict) -> None:
        c.execute("INSERT INTO events (ts, kind, task, data_json) VALUES (?,?,?,?)",
                  (event.get("ts", time.time()), event["event"], event.get("task"),
                   json.dumps(event, sort_keys=True, default=str)))

    def event(self, event: dict) -> None:
        with self.db.transaction() as c:
            self._event(c, event)

    def events(self) -> list[dict]:
        return [json.loads(r["data_json"]) for r in self.db.query("SELECT data_json FROM events ORDER BY id")]

    def candidates(self, task: str) -> list[dict]:
        """A task's candidates in order, each with its evaluation (the lineage a review shows)."""
        rows = self.db.query(
            "SELECT c.*, e.json AS evaluation_json FROM candidates c LEFT JOIN evaluations e ON e.candidate = c.id"
            " WHERE c.task = ? ORDER BY c.attempt, c.worker", (task,))
        out = []
        for r in rows:
            d = dict(r)
            d["plan"] = json.loads(d.pop("plan_json")) if d.get("plan_json") else None
            ej = d.pop("evaluation_json")
            d["evaluation"] = json.loads(ej) if ej else None
            out.append(d)
        return out

    def repoint_kernels(self, current: dict[str, str]) -> int:
        """Point every task whose kernel is no longer in the library at the library's kernel for the
        same problem (``current``: problem key -> kernel id). Repairs what a kill between a library
        replacement and the run database's update left behind. Returns how many were re-pointed."""
        with self.db.transaction() as c:
            rows = c.execute("SELECT name, kernel_id, problem_key FROM tasks WHERE kernel_id IS NOT NULL"
                             " AND problem_key IS NOT NULL").fetchall()
            n = 0
            for r in rows:
                new = current.get(r["problem_key"])
                if new is not None and new != r["kernel_id"]:
                    c.execute("UPDATE tasks SET kernel_id = ? WHERE name = ?", (new, r["name"]))
                    n += 1
            return n

    def candidate_count(self) -> int:
        return int(self.db.query("SELECT COUNT(*) FROM candidates")[0][0])

    def plans(self, task: str) -> list[dict]:
        return [{"source": r["source"], "plan": json.loads(r["plan_json"]), "created": r["created"]}
                for r in self.db.query("SELECT * FROM plans WHERE task = ? ORDER BY id", (task,))]

    def llm_calls(self, task: str | None = None) -> list[dict]:
        if task is None:
            return [dict(r) for r in self.db.query("SELECT * FROM llm_calls ORDER BY id")]
        return [dict(r) for r in self.db.query("SELECT * FROM llm_calls WHERE task = ? ORDER BY id", (task,))]

    def totals(self) -> dict:
        """Campaign totals: tasks by status, fast_1/fast_2, LLM calls, tokens, cost, plan-cache hits."""
        tasks = self.tasks()
        done = [t for t in tasks if t["status"] in TASK_DONE]
        ver = [t for t in tasks if t["status"] == "verified"]
        calls = self.db.query("SELECT COUNT(*) AS n, COALESCE(SUM(prompt_tokens),0) AS p,"
                              " COALESCE(SUM(completion_tokens),0) AS c, COALESCE(SUM(cost),0) AS cost FROM llm_calls")[0]
        return {
            "tasks": len(tasks), "done": len(done), "verified": len(ver),
            "failed": sum(t["status"] == "failed" for t in tasks),
            "pending": sum(t["status"] == "pending" for t in tasks),
            "interrupted": sum(t["status"] == "running" for t in tasks),
            "fast_1": fast_fraction((t["speedup"] for t in ver), len(tasks), 1.0),
            "fast_2": fast_fraction((t["speedup"] for t in ver), len(tasks), 2.0),
            "attempts": sum(t["attempts"] for t in tasks),
            "llm_calls": calls["n"], "prompt_tokens": calls["p"], "completion_tokens": calls["c"],
            "tokens": calls["p"] + calls["c"], "cost": calls["cost"],
            "plan_cache_hits": sum(bool(t["plan_cache_hit"]) for t in done),
            "plan_cache_hit_rate": (sum(bool(t["plan_cache_hit"]) for t in done) / len(done)) if done else 0.0,
        }

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "RunDB":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["RunDB", "RUN_SCHEMA", "TASK_DONE"]
