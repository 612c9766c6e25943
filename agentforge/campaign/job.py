"""One task of a campaign, solved where an executor puts it (a local worker process or a Ray task).

:func:`run_job` is a pure function of its job dict (plus the shared memory files it names), so
every executor gives the same answer for the same job. It opens the run's LangGraph checkpoint
store, so a task interrupted by a crash or kill -9 continues from its last checkpoint; it
returns plain data: the loop's history, the best evaluation, the library entry (with its
kernel files) when verified, and the LLM calls made.

The worker process (``python -m agentforge.campaign.job``) reads jobs from stdin and writes
events and results to stdout in :mod:`agentforge.framing`'s frames (the sandbox's format).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import sqlite3
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

Emit = Callable[[dict], None]


def _checkpointer(path: str):
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(path, check_same_thread=False, timeout=60.0)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA busy_timeout = 60000")
    return SqliteSaver(conn), conn


def _roles(job: dict, ctx: Any, experience: Any, emit: Emit):
    """The planner, workers and reflector the job names; LLM roles share one budgeted ledger."""
    from ..loop import offline_roles

    if job["llm"]["provider"] == "offline":
        priors = experience.priors(ctx.signature) if experience is not None else None
        p, w, r = offline_roles(job["workers_per_task"], priors)
        return p, w, r, None
    from ..agents.llm_roles import llm_roles
    from ..agents.offline import OfflinePlanner
    from ..llm import LLMConfig
    from ..llm.ledger import Ledger

    class StreamingLedger(Ledger):
        """Reports each finished call at once, so the controller books what was paid even if this
        process is killed before the task ends (timeouts, the minutes budget, kill -9)."""

        def end(self, rec, *args, **kwargs):
            rec = super().end(rec, *args, **kwargs)
            emit({"event": "llm_call", "task": ctx.task.name, "call": rec.to_dict()})
            return rec

    cfg = LLMConfig.from_dict(job["llm"]["config"])
    caps = job.get("caps", {})
    ledger = StreamingLedger(cfg.max_calls, caps.get("tokens"), caps.get("cost"))   # max_calls: per task
    p, w, r = llm_roles(cfg, workers=job["workers_per_task"], fallback_planner=OfflinePlanner(), ledger=ledger,
                        check=False)
    return p, w, r, ledger


def prompt_hash() -> str:
    """sha256 over the prompt templates (prompts/*.j2): which prompts an LLM kernel came from."""
    from ..agents.prompting import prompts_dir

    h = hashlib.sha256()
    for f in sorted(prompts_dir().glob("*.j2")):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def run_job(job: dict, emit: Emit | None = None) -> dict:
    """Solve one task as ``job`` says; never raises for the task's own failures (they are results)."""
    import asp_lang

    from .. import __version__
    from ..library import Provenance, build_entry
    from ..loop import SolveConfig, solve, task_context
    from ..agents.roles import Candidate
    from ..tasks import load_task
    from ..verify import Evaluation, VerifyConfig, evaluate

    emit = emit or (lambda e: None)
    t0 = time.perf_counter()
    name = Path(job["task_path"]).stem
    out: dict[str, Any] = {"task": name, "history": [], "best": None, "best_index": None, "entry": None,
                           "llm_calls": [], "notes": [], "attempts": 0}
    conn = evaluator = plan_cache = experience = ledger = None
    try:
        task = load_task(job["task_path"])
        machine = asp_lang.load_machine(job["machine"])
        if job.get("memory_path"):
            from ..store.experience import ExperienceLibrary
            from ..store.plan_cache import PlanCache

            plan_cache = PlanCache(job["memory_path"])
            experience = ExperienceLibrary(job["memory_path"])
        ctx = task_context(task, machine)
        out["signature_key"] = ctx.signature.key()
        planner, workers, reflector, ledger = _roles(job, ctx, experience, emit)
        vcfg = VerifyConfig(machine=machine.name, timeout_s=job["eval_timeout_s"], memory_mb=job["memory_mb"])
        if job["isolate"]:
            from ..sandbox import EvaluatorPool

            evaluator = EvaluatorPool(vcfg, size=job["workers_per_task"])   # the loop's workers evaluate at once

            def evaluate_fn(c: dict):
                return evaluator.evaluate(task.path, c, baseline_seconds=ctx.baseline_seconds)
        else:
            def evaluate_fn(c: dict):
                return evaluate(task, c, vcfg, baseline_seconds=ctx.baseline_seconds)
        checkpointer, conn = _checkpointer(job["checkpoint_path"])

        def entry_payload(cand: Any, ev: Any, plan_source: str | None) -> dict:
            llm = job["llm"]
            prov = Provenance(
                author=cand.author, model=llm.get("config", {}).get("model") if llm["provider"] != "offline" else None,
                plan_source=plan_source, prompt_hash=prompt_hash() if llm["provider"] != "offline" else None,
                date=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
                machine=machine.name, emulator_version=asp_lang.EMULATOR_VERSION, agentforge_version=__version__,
                seed=job.get("seed", 0), run=job.get("run_id"))
            entry, files, task_files = build_entry(task, cand.solution(machine), ev, ctx.signature, prov)
            return {"entry": entry.to_dict(), "files": files, "task_files": task_files}

        lock = threading.Lock()
        best_seen = [0.0]

        def on_record(rec: dict) -> None:
            ev = rec["evaluation"]
            private: dict[str, Any] = {"record": rec}
            if ev["verified"] and rec.get("candidate") and (ev.get("speedup") or 0.0) > best_seen[0]:
                # the controller keeps this, so a task killed later (time limit) keeps its best kernel
                best_seen[0] = ev.get("speedup") or 0.0
                try:
                    private["entry"] = entry_payload(Candidate(**rec["candidate"]), Evaluation.from_dict(ev), None)
                except Exception:  # noqa: BLE001 - only a safety net; the final result builds it again
                    pass
            with lock:
                emit({"event": "attempt", "task": name, "attempt": rec["attempt"], "worker": rec["worker"],
                      "verified": ev["verified"], "reason_code": ev.get("reason_code"),
                      "speedup": ev.get("speedup"), "tokens": ledger.tokens if ledger else 0,
                      "cost": ledger.cost if ledger else 0.0, "_private": private})

        cfg = SolveConfig(max_attempts=job["attempts_per_task"], workers=job["workers_per_task"])
        res = solve(task, planner, workers, reflector, machine, cfg, evaluate_fn, plan_cache, experience, ctx,
                    checkpointer=checkpointer, thread_id=job["thread_id"], on_record=on_record)
        out.update(history=res.history, attempts=res.attempts, plan_cache_hit=res.plan_cache_hit,
                   plan_source=res.plan_source, plans=res.plans, notes=res.notes,
                   best=res.best.to_dict() if res.best else None)
        if res.best is not None:
            bi = [i for i, h in enumerate(res.history) if h["evaluation"] == out["best"]]
            out["best_index"] = bi[0] if bi else None
        if res.verified and res.best_candidate is not None:
            out["entry"] = entry_payload(res.best_candidate, res.best, res.plan_source)
    except Exception as e:  # noqa: BLE001 - the task failed; the campaign goes on
        from ..llm.errors import BudgetExceeded

        if isinstance(e, BudgetExceeded):
            out["error"], out["error_code"] = str(e), "budget"
        else:
            out["error"] = f"{type(e).__name__}: {e}"
            out["error_code"] = "task" if type(e).__name__ == "TaskError" else "crash"
            out["traceback"] = traceback.format_exc(limit=8)
    finally:
        if ledger is not None:
            out["llm_calls"] = [r.to_dict() for r in ledger.records]
        for closeable in (evaluator, plan_cache, experience, conn):
            if closeable is not None:
                try:
                    closeable.close()
                except Exception:  # noqa: BLE001
                    pass
        out["seconds"] = time.perf_counter() - t0
    return out


def _exit_with_parent(interval_s: float = 0.5) -> None:
    """End this worker when the controller dies (kill -9 included): an orphan would go on writing
    the task's checkpoints beside the worker a resumed campaign starts for the same task."""
    # the controller says who it is: by the time this runs (after imports) it may already be gone
    parent = int(os.environ.get("AGENTFORGE_CONTROLLER_PID") or os.getppid())

    def watch() -> None:
        if os.getppid() != parent:
            os._exit(1)
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def worker_main() -> None:
    """The local executor's worker: jobs on stdin, events and results on the real stdout."""
    from ..framing import recv, send

    _exit_with_parent()
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)           # a print anywhere below must not corrupt the message stream
    inp = sys.stdin.buffer
    import torch

    torch.set_num_threads(1)
    lock = threading.Lock()

    def emit(e: dict) -> None:
        with lock:
            send(out, {"kind": "event", "data": e})

    while True:
        try:
            job = recv(inp)
        except EOFError:
            job = None
        if job is None:
            # as multiprocessing's workers end: every job closed what it opened (run_job's finally) and
            # its result is sent, so the interpreter's teardown (torch's, about a second) buys nothing
            out.flush()
            os._exit(0)
        res = run_job(job, emit)
        with lock:
            send(out, {"kind": "result", "data": res})


if __name__ == "__main__":
    worker_main()
