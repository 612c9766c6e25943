"""The campaign controller: a suite in, a verified kernel library out, under a budget, resumable.

It owns the run directory (one campaign at a time: an exclusive lock), the run database (the
only writer), the library and the event stream; the executor owns the processes that solve
tasks. Budgets are *reserved* when a task is dispatched (attempts, tokens, cost), so tasks
running in parallel can never together pass a limit; the wall-time budget kills what is still
running when it expires (those tasks stay ``running`` and ``--resume`` continues them).

Run directory::

    RUN/run.sqlite          the run database (agentforge.campaign.rundb)
    RUN/checkpoints.sqlite  LangGraph checkpoints, one thread per task
    RUN/memory.sqlite       plan cache + experience library (unless ``memory`` names a shared one)
    RUN/events.jsonl        the structured event stream
    RUN/library/            the output library (agentforge.library)
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import sys
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from ..errors import AgentforgeError
from ..library import KernelEntry, Library, entry_from_dict, dispatch_key
from .config import Budget, CampaignConfig, ConfigError, bundled_suite, resume_conflicts
from .executor import failed_result, make_executor
from .rundb import TASK_DONE, RunDB

RUNS_DIR = "runs"


class RunDirError(AgentforgeError):
    """The run directory cannot be used as asked (busy, already used, nothing to resume)."""


@dataclass
class CampaignResult:
    run_dir: Path
    run_id: str
    status: str                      # "finished" | "stopped"
    stop_reason: str | None
    totals: dict
    tasks: list[dict]
    wall_seconds: float
    library: Path = field(default_factory=Path)

    def to_dict(self) -> dict:
        return {"run_dir": str(self.run_dir), "run_id": self.run_id, "status": self.status,
                "stop_reason": self.stop_reason, "totals": self.totals, "wall_seconds": self.wall_seconds,
                "library": str(self.library),
                "tasks": [{k: t.get(k) for k in ("name", "status", "attempts", "speedup", "roofline_fraction",
                                                  "plan_cache_hit", "kernel_id", "reason")} for t in self.tasks]}


# ------------------------------------------------------------------ the run directory

class RunLock:
    """An exclusive lock on a run directory (released by the OS even after kill -9)."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / ".lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise RunDirError(f"{run_dir}: another campaign (pid {holder}) is using this run directory\n"
                              f"  how to fix: wait for it to finish, or choose another --out") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)


def default_run_dir(suite: Path) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(RUNS_DIR) / f"{suite.name}-{stamp}"


def latest_run_dir() -> Path | None:
    runs = sorted((p for p in Path(RUNS_DIR).glob("*") if (p / "run.sqlite").is_file()),
                  key=lambda p: (p / "run.sqlite").stat().st_mtime)
    return runs[-1] if runs else None


def run_manifest(cfg: CampaignConfig, machine: Any) -> dict:
    """What a number from this run depends on (provenance): machine, emulator, seed, model, versions."""
    import asp_lang

    versions = {}
    for pkg in ("agentforge", "numpy", "torch", "langgraph", "openai", "jinja2", "ray"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    mtext = json.dumps(machine.__dict__ if hasattr(machine, "__dict__") else str(machine), sort_keys=True, default=str)
    return {"machine": machine.name, "machine_sha256": hashlib.sha256(mtext.encode()).hexdigest()[:16],
            "emulator_version": asp_lang.EMULATOR_VERSION, "seed": cfg.seed,
            "llm": cfg.llm, "model": cfg.llm_config.get("model") if cfg.llm != "offline" else None,
            "python": sys.version.split()[0], "platform": platform.platform(), "host": platform.node(),
            "cpus": os.cpu_count(), "packages": versions}


# ------------------------------------------------------------------ budgets

class BudgetBook:
    """Spent and reserved amounts of each limit; a dispatch reserves, a result settles."""

    def __init__(self, budget: Budget, spent: dict[str, float]):
        self.budget = budget
        self.spent = {"attempts": 0.0, "tokens": 0.0, "cost": 0.0, **spent}
        self.reserved: dict[str, dict[str, float]] = {}

    def _free(self, k: str) -> float | None:
        limit = getattr(self.budget, k)
        if limit is None:
            return None
        return limit - self.spent[k] - sum(r.get(k, 0.0) for r in self.reserved.values())

    def reserve(self, task: str, attempts_wanted: int, slots: int) -> dict[str, float] | None:
        """Reserve for one task (None: a budget is spent, dispatch nothing more)."""
        r: dict[str, float] = {}
        free = self._free("attempts")
        if free is not None:
            if free < 1:
                return None
            r["attempts"] = min(float(attempts_wanted), free)
        for k, floor in (("tokens", 1.0), ("cost", 1e-9)):
            free = self._free(k)
            if free is not None:
                share = free / max(1, slots)
                if share < floor:
                    return None
                r[k] = share
        self.reserved[task] = r
        return r

    def spend(self, task: str, tokens: float, cost: float) -> None:
        """A call of a running task, booked as it happens (its reservation shrinks by as much)."""
        self.spent["tokens"] += tokens
        self.spent["cost"] += cost
        r = self.reserved.get(task)
        if r is not None:
            for k, v in (("tokens", tokens), ("cost", cost)):
                if k in r:
                    r[k] = max(0.0, r[k] - v)

    def settle(self, task: str, attempts: float, tokens: float, cost: float) -> None:
        self.reserved.pop(task, None)
        self.spent["attempts"] += attempts
        self.spent["tokens"] += tokens
        self.spent["cost"] += cost

    def exhausted(self) -> str | None:
        """The name and state of a spent budget, if any."""
        for k in ("attempts", "tokens", "cost"):
            limit = getattr(self.budget, k)
            if limit is not None and self.spent[k] >= limit - (1e-9 if k == "cost" else 0.5):
                return f"{k} budget reached ({_fmt(self.spent[k])} of {_fmt(limit)} used)"
        return None


def _least(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _fmt(x: float) -> str:
    return f"{x:.4g}" if isinstance(x, float) and x != int(x) else str(int(x))


# ------------------------------------------------------------------ the campaign

def _open_run(cfg: CampaignConfig, resume: bool) -> tuple[Path, CampaignConfig]:
    if cfg.out:
        run_dir = Path(cfg.out)
    elif resume:
        run_dir = latest_run_dir()
        if run_dir is None:
            raise RunDirError(f"nothing to resume: no run directory under {RUNS_DIR}/\n  how to fix: pass --out RUN_DIR")
    else:
        run_dir = default_run_dir(Path(cfg.suite or bundled_suite()))
    return run_dir, cfg


def _suite_tasks(cfg: CampaignConfig):
    from ..tasks import load_suite

    suite = Path(cfg.suite) if cfg.suite else bundled_suite()
    if not suite.is_dir():
        raise ConfigError(f"{suite}: no such suite folder\n  how to fix: pass a folder of task .py files "
                          f"(the bundled one is evals/suite)")
    tasks = load_suite(suite)
    if not tasks:
        raise ConfigError(f"{suite}: the suite holds no tasks (task files are *.py with Model and get_inputs)")
    if cfg.tasks:
        names = {t.name for t in tasks}
        unknown = [n for n in cfg.tasks if n not in names]
        if unknown:
            raise ConfigError(f"--tasks: {', '.join(unknown)} not in {suite}\n  known: {', '.join(sorted(names))}")
        tasks = [t for t in tasks if t.name in cfg.tasks]
    return suite, tasks


def _llm_job_config(cfg: CampaignConfig) -> dict:
    """The [llm] table as a validated LLMConfig (dict), preflighted: a missing key or unreachable
    server stops the campaign here, before anything runs, never a silent fallback to offline."""
    if cfg.llm == "offline":
        return {"provider": "offline"}
    from ..llm import LLMConfig, preflight

    table = dict(cfg.llm_config)
    if cfg.llm == "replay":
        table["provider"] = "replay"
    try:
        lc = LLMConfig.from_dict(table)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"[llm]: {e}") from None
    preflight(lc)
    return {"provider": cfg.llm, "config": lc.to_dict()}


def run_campaign(cfg: CampaignConfig, resume: bool = False, on_event: Callable[[dict], None] | None = None,
                 overrides: dict | None = None, expect: dict | None = None) -> CampaignResult:
    """Run (or with ``resume`` continue) a campaign. ``overrides`` (resume only): settings given
    on the command line that replace the stored ones (budget, workers, executor, timeouts).
    ``expect`` (resume only): fixed settings repeated on the command line (flag -> value, see
    :data:`RESUME_FIXED`); the same values are accepted, a different one is refused."""
    import asp_lang

    run_dir, cfg = _open_run(cfg, resume)
    fresh = None
    if not resume:   # a bad suite or LLM setting is refused before the run directory is touched
        fresh = _suite_tasks(cfg)
        asp_lang.load_machine(cfg.machine)
        llm_job = _llm_job_config(cfg)
    lock = RunLock(run_dir)
    db = None
    t_start = time.monotonic()
    try:
        db = RunDB(run_dir / "run.sqlite")
        run = db.run()
        if run is not None and not resume:
            raise RunDirError(f"{run_dir}: already holds run {run['id']} ({run['status']})\n  how to fix: add "
                              f"--resume to continue it, or choose another --out")
        if run is None and resume:
            raise RunDirError(f"{run_dir}: no campaign to resume there\n  how to fix: drop --resume to start one")
        if run is not None:
            stored = dict(run["config"])
            changed = resume_conflicts(stored, expect or {})
            if changed:
                flags = ", ".join(c.split(" ", 1)[0] for c in changed)
                raise RunDirError(f"{run_dir}: --resume continues a run with the settings it started with; "
                                  f"{flags} cannot change: {'; '.join(changed)}\n  how to fix: drop {flags} or "
                                  f"give the run's own value "
                                  f"(--workers, --executor, --budget and --task-timeout may change on resume), "
                                  f"or start a new run with another --out")
            stored["budget"] = Budget(**stored["budget"])
            stored["tasks"] = tuple(stored.get("tasks", ()))
            cfg = CampaignConfig(**stored).replace(**(overrides or {}), out=str(run_dir))
            run_id = run["id"]
        machine = asp_lang.load_machine(cfg.machine)
        if resume:
            llm_job = _llm_job_config(cfg)
        if run is None:
            suite, tasks = fresh
            cfg = cfg.replace(suite=str(suite), out=str(run_dir))
            run_id = uuid.uuid4().hex[:12]
            db.start_run(run_id, str(suite), cfg.to_dict() | {"budget": cfg.budget.to_dict()},
                         run_manifest(cfg, machine), tasks)
        else:
            db.set_status("running")
        library = Library.create(run_dir / "library", machine.name, asp_lang.EMULATOR_VERSION)
        events_path = run_dir / "events.jsonl"

        def emit(e: dict, store: bool = True) -> None:
            e = {"ts": time.time(), **e}
            with open(events_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(e, sort_keys=True, default=str) + "\n")
            if store:
                db.event(e)
            if on_event is not None:
                on_event(e)

        if llm_job["provider"] != "offline":   # [llm] max_tokens / max_cost are campaign-wide limits too
            lc, b = llm_job["config"], cfg.budget
            cfg = cfg.replace(budget=Budget(b.attempts, _least(b.tokens, lc.get("max_tokens")),
                                            _least(b.cost, lc.get("max_cost")), b.minutes))
        rows = db.tasks()
        calls = db.llm_calls()
        book = BudgetBook(cfg.budget, {"attempts": float(db.candidate_count()),
                                       "tokens": float(sum((c["prompt_tokens"] or 0) + (c["completion_tokens"] or 0)
                                                           for c in calls)),
                                       "cost": float(sum(c["cost"] or 0.0 for c in calls))})
        todo = [r for r in rows if r["status"] not in TASK_DONE]
        before = db.totals()     # what earlier sessions of this run did (a resume goes on counting)
        emit({"event": "campaign_start", "run": run_id, "run_dir": str(run_dir), "resume": resume,
              "tasks": len(rows), "todo": len(todo), "done": len(rows) - len(todo), "workers": cfg.workers,
              "executor": cfg.executor, "llm": cfg.llm, "machine": machine.name,
              "verified": before["verified"], "failed": before["failed"], "attempts": before["attempts"],
              "tokens": before["tokens"], "cost": before["cost"]})
        stop_reason = _drive(cfg, db, library, todo, book, emit, run_dir, run_id, llm_job, t_start)
        db.repoint_kernels({json.dumps(dispatch_key(e)): e.id for e in library.entries})
        status = "stopped" if stop_reason else "finished"
        db.set_status(status, stop_reason)
        totals = db.totals()
        wall = time.monotonic() - t_start
        emit({"event": "campaign_end", "status": status, "stop_reason": stop_reason, "wall_seconds": wall, **totals})
        return CampaignResult(run_dir, run_id, status, stop_reason, totals, db.tasks(), wall, run_dir / "library")
    finally:
        if db is not None:
            db.close()
        lock.release()


def _drive(cfg: CampaignConfig, db: RunDB, library: Library, todo: list[dict], book: BudgetBook,
           emit: Callable[..., None], run_dir: Path, run_id: str, llm_job: dict, t_start: float) -> str | None:
    """Dispatch tasks and collect results until all are done or a budget stops the campaign."""
    memory = cfg.memory or str(run_dir / "memory.sqlite")
    deadline = t_start + cfg.budget.minutes * 60 if cfg.budget.minutes else None
    queue = list(todo)
    stop_reason: str | None = None
    streamed: dict[str, dict] = {}     # per running task: LLM call ids and attempts already reported
    executor = make_executor(cfg.executor, min(cfg.workers, max(1, len(queue))), cfg.ray_address, cfg.memory_mb)
    try:
        while queue or executor.running():
            while queue and executor.free() > 0 and stop_reason is None:
                row = queue[0]
                caps = book.reserve(row["name"], cfg.attempts_per_task * cfg.workers_per_task, executor.free())
                if caps is not None and caps.get("attempts", cfg.workers_per_task) < cfg.workers_per_task:
                    book.reserved.pop(row["name"], None)   # not even one round fits
                    caps = None
                if caps is None:   # all that is left is reserved by running tasks: wait for them
                    if not executor.running():
                        stop_reason = book.exhausted() or "a budget is spent"
                    break
                queue.pop(0)
                rounds = max(1, int(caps.get("attempts", cfg.attempts_per_task * cfg.workers_per_task))
                             // cfg.workers_per_task)
                job = {"task_path": row["path"], "task": row["name"], "machine": cfg.machine, "llm": llm_job,
                       "attempts_per_task": min(cfg.attempts_per_task, rounds),
                       "workers_per_task": cfg.workers_per_task, "eval_timeout_s": cfg.eval_timeout_s,
                       "task_timeout_s": cfg.task_timeout_s, "memory_mb": cfg.memory_mb,
                       "isolate": llm_job["provider"] != "offline", "memory_path": memory,
                       "checkpoint_path": str(run_dir / "checkpoints.sqlite"), "thread_id": f"{run_id}:{row['name']}",
                       "seed": cfg.seed, "run_id": run_id,
                       "caps": {k: (int(v) if k == "tokens" else v) for k, v in caps.items() if k != "attempts"}}
                streamed[row["name"]] = {"calls": set(), "attempts": 0}
                db.task_started(row["name"])
                emit({"event": "task_start", "task": row["name"], "try": row["tries"] + 1})
                executor.submit(job)
            if stop_reason and not executor.running():
                break
            if not queue and not executor.running():
                break
            if deadline is not None and time.monotonic() >= deadline:
                stop_reason = f"minutes budget reached ({cfg.budget.minutes:g} min); running tasks were stopped " \
                              f"and resume from their checkpoints"
                for job in executor.running():     # a stopped task keeps the kernel it already verified
                    if (streamed.get(job["task"]) or {}).get("entry"):
                        _finish(job, failed_result(job, "timeout", stop_reason, 0.0), db, library, book, emit,
                                streamed.pop(job["task"]))
                break
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            for job, kind, data in executor.poll(wait):
                if kind == "event":
                    seen = streamed.setdefault(job["task"], {"calls": set(), "attempts": 0})
                    if data.get("event") == "llm_call":     # booked at once: paid even if the task dies
                        call = data["call"]
                        seen["calls"].add(call["id"])
                        db.add_llm_calls(job["task"], [call])
                        book.spend(job["task"], (call.get("prompt_tokens") or 0) + (call.get("completion_tokens") or 0),
                                   call.get("cost") or 0.0)
                    elif data.get("event") == "attempt":
                        seen["attempts"] += 1
                        private = data.pop("_private", None) or {}
                        seen.setdefault("records", []).append(private.get("record"))
                        if private.get("entry"):
                            seen["entry"] = private["entry"]
                    emit(data)
                else:
                    _finish(job, data, db, library, book, emit, streamed.pop(job["task"], None))
                    if stop_reason is None and data.get("error_code") == "budget":
                        # an LLM call would have passed the task's share of a budget: nothing more fits
                        stop_reason = book.exhausted() or f"LLM budget reached ({data.get('error')})"
                    if stop_reason is None and book.exhausted() and queue:
                        stop_reason = book.exhausted()
        return stop_reason
    finally:
        executor.close()


def _salvage(res: dict, streamed: dict) -> dict:
    """A task killed (time limit), crashed or stopped by a budget after it had verified a kernel:
    keep the best one it reported, with the attempts it reported, instead of losing it."""
    records = [r for r in streamed.get("records", []) if r]
    best_i = max((i for i, r in enumerate(records) if r["evaluation"]["verified"]),
                 key=lambda i: records[i]["evaluation"].get("speedup") or 0.0)
    why = res.get("error")
    return {**res, "history": records, "best": records[best_i]["evaluation"], "best_index": best_i,
            "entry": streamed["entry"], "attempts": len({r["attempt"] for r in records}),
            "notes": [*res.get("notes", []), f"the task ended early ({why}); its best verified kernel was kept"],
            "error_code": None}


def _finish(job: dict, res: dict, db: RunDB, library: Library, book: BudgetBook, emit: Callable[..., None],
            streamed: dict | None = None) -> None:
    """Record one task's result: the kernel into the library first (atomic files), then the run
    database in one transaction, so a kill between the two only makes resume re-add the same kernel."""
    streamed = streamed or {"calls": set(), "attempts": 0}
    if res.get("error_code") in ("timeout", "crash", "budget") and streamed.get("entry") \
            and not (res.get("best") or {}).get("verified"):
        res = _salvage(res, streamed)
    name = job["task"]
    kernel_id = None
    replaced: tuple[str, str] | None = None
    notes = list(res.get("notes", []))
    if res.get("entry"):
        e = res["entry"]
        entry: KernelEntry = entry_from_dict(e["entry"], f"kernel of {name}")
        old = next((x.id for x in library.entries if dispatch_key(x) == dispatch_key(entry)), None)
        kept = library.add(entry, e["files"], e["task_files"])
        kernel_id = entry.id if kept else (old or entry.id)
        if kept and old is not None and old != entry.id:
            replaced = (old, entry.id)   # tasks that pointed at the slower kernel now point at this one
            notes.append(f"replaced the slower kernel {old} of the same problem")
        if not kept:
            notes.append(f"the library already held a kernel at least as fast for this problem ({kernel_id})")
    res["notes"] = notes
    calls = res.get("llm_calls", [])
    res["llm_calls"] = [c for c in calls if c.get("id") not in streamed["calls"]]   # the rest are booked
    tokens = sum((c.get("prompt_tokens") or 0) + (c.get("completion_tokens") or 0) for c in calls)
    cost = sum(c.get("cost") or 0.0 for c in calls)
    attempts = max(len(res.get("history", [])), streamed["attempts"])
    book.settle(name, attempts, sum((c.get("prompt_tokens") or 0) + (c.get("completion_tokens") or 0)
                                    for c in res["llm_calls"]), sum(c.get("cost") or 0.0 for c in res["llm_calls"]))
    if res.get("error_code") == "budget" and not (res.get("best") or {}).get("verified"):
        # stopped by a budget, not failed: back to pending (its checkpoint keeps what it did), its
        # LLM calls are kept for the accounts, and --resume with a larger budget goes on with it
        db.task_pending(name, res.get("llm_calls", []))
        emit({"event": "task_end", "task": name, "verified": False, "stopped": True, "reason": res.get("error"),
              "error_code": "budget", "tokens": tokens, "cost": cost, "attempts": res.get("attempts", 0),
              "candidates": attempts, "seconds": res.get("seconds")})
        return
    best = res.get("best") or {}
    event = {"event": "task_end", "task": name, "verified": bool(best.get("verified")),
             "attempts": res.get("attempts", 0), "candidates": attempts, "speedup": best.get("speedup"),
             "roofline_fraction": best.get("roofline_fraction"), "plan_cache_hit": bool(res.get("plan_cache_hit")),
             "kernel": kernel_id, "tokens": tokens, "cost": cost, "seconds": res.get("seconds"),
             "reason": None if best.get("verified") else (best.get("reason") or res.get("error")),
             "error_code": res.get("error_code")}
    event["ts"] = time.time()
    problem = json.dumps(dispatch_key(entry)) if res.get("entry") else None
    db.record_result(name, res, kernel_id, event, replaced, problem)    # the event is stored with the result, atomically
    emit(event, store=False)


__all__ = ["run_campaign", "CampaignResult", "RunDirError", "RunLock", "BudgetBook", "latest_run_dir"]
