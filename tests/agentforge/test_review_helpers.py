"""Run directories for the review tests (no tests here).

* :func:`run_campaign`: a real ``agentforge campaign`` of the bundled suite on a few tasks,
  untouched: what a user reviews.
* :func:`build_real_run`: a run made the way a campaign makes it (the offline agent loop
  solves two suite tasks, results go through ``RunDB.record_result``, verified answers into a
  ``Library``) plus what an offline campaign cannot produce: a softmax task with a
  hand-written lineage whose every candidate is evaluated for real (a kernel that forgets the
  max subtraction, rejected; its fix with a hostile comment, verified; a second worker's
  plan), LLM usage, and a failed task whose name, group, reason and note are hostile markup.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "evals" / "suite"
HOSTILE_COMMENT = "# <script>alert('kernel')</script> <b>bold</b> [bold red]markup[/]"
HOSTILE_TASK = "<script>alert('task')</script><img src=x onerror=alert(1)>task"
OFFLINE_TASKS = ("relu", "add")
CAMPAIGN_TASKS = ("relu", "add")


def run_campaign(out: Path) -> Path:
    """``agentforge campaign evals/suite --tasks relu,add --out OUT`` in a child process."""
    cmd = [sys.executable, "-m", "agentforge.cli", "campaign", str(SUITE), "--tasks", ",".join(CAMPAIGN_TASKS),
           "--out", str(out), "--workers", "1", "--quiet"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return out


def _result(res, ctx, seconds: float) -> dict:
    best = res.best.to_dict() if res.best else None
    bi = [i for i, h in enumerate(res.history) if h["evaluation"] == best]
    return dict(history=res.history, best=best, best_index=bi[0] if bi else None, attempts=res.attempts,
                plan_cache_hit=res.plan_cache_hit, plan_source=res.plan_source, plans=res.plans, llm_calls=[],
                notes=res.notes, signature_key=ctx.signature.key(), seconds=seconds)


def softmax_lineage() -> tuple[str, str]:
    """(rejected kernel, its verified fix with the hostile comment)."""
    good = (REPO / "docs" / "examples" / "softmax_online.asp").read_text()
    bad = good.replace("fn normalise(t, m, l) = exp(t - m) / l", "fn normalise(t, m, l) = exp(t) / l")
    assert bad != good
    return bad, good.replace("kernel softmax_online", HOSTILE_COMMENT + "\nkernel softmax_online")


def build_real_run(out: Path) -> Path:
    import asp_lang
    from agentforge import __version__
    from agentforge.campaign.rundb import RunDB
    from agentforge.library import Library, Provenance, build_entry
    from agentforge.loop import offline_roles, solve, task_context
    from agentforge.solution import KernelSolution
    from agentforge.tasks import load_task
    from agentforge.verify import Evaluation, evaluate

    tasks = [load_task(SUITE / f"{n}.py") for n in (*OFFLINE_TASKS, "softmax")]
    hostile = SimpleNamespace(name=HOSTILE_TASK, path="nowhere.py", group="<i>g</i>", level=1)
    manifest = {"machine": "sn40l", "emulator_version": asp_lang.EMULATOR_VERSION, "seed": 0, "model": None,
                "packages": {"agentforge": __version__}}
    db = RunDB(out / "run.sqlite")
    db.start_run("review-test", "evals/suite", {"workers": 2}, manifest, [*tasks, hostile])
    lib = Library.create(out / "library", "sn40l", asp_lang.EMULATOR_VERSION)
    prov = Provenance("offline", None, "planner", None, "2026-01-01T00:00:00+00:00", "sn40l",
                      asp_lang.EMULATOR_VERSION, __version__)
    for t in tasks[:2]:
        t0 = time.time()
        db.task_started(t.name)
        ctx = task_context(t)
        res = solve(t, *offline_roles(), ctx=ctx)
        c = res.best_candidate
        e, files, tf = build_entry(t, c.solution(ctx.machine), res.best, ctx.signature, prov)
        lib.add(e, files, tf)
        db.record_result(t.name, _result(res, ctx, time.time() - t0), e.id, {"event": "task_done", "task": t.name})

    sm = tasks[2]
    db.task_started(sm.name)
    ctx = task_context(sm)
    bad, good = softmax_lineage()
    plan = {"version": 1, "regions": [{"template": "row", "nodes": [0], "params": {"rows": 1, "par": 16,
                                                                                    "par_mem": 4}}]}
    cands = [(0, 0, {"kind": "kernel", "source": bad, "filename": "kernel.asp", "author": "openai:test"}),
             (0, 1, {"kind": "plan", "plan": plan, "author": "offline"}),
             (1, 0, {"kind": "kernel", "source": good, "filename": "kernel.asp", "author": "openai:test"})]
    history = []
    for attempt, worker, cand in cands:
        ev = evaluate(sm, cand, baseline_seconds=ctx.baseline_seconds)
        history.append({"attempt": attempt, "worker": worker, "candidate": cand, "evaluation": ev.to_dict(),
                        "seconds": ev.eval_seconds})
    assert [h["evaluation"]["verified"] for h in history] == [False, True, True], history
    best_ev = Evaluation.from_dict(history[2]["evaluation"])
    e, files, tf = build_entry(sm, KernelSolution(good, "kernel.asp", ctx.machine), best_ev, ctx.signature, prov)
    lib.add(e, files, tf)
    calls = [{"role": "worker", "model": "test", "kind": "chat", "ok": True, "prompt_tokens": 1200,
              "completion_tokens": 300, "cost": 0.0125, "latency_s": 2.0, "started": time.time()}]
    db.record_result(sm.name, dict(history=history, best=history[2]["evaluation"], best_index=2, attempts=2,
                                   plan_cache_hit=False, plan_source="planner", plans=[], llm_calls=calls,
                                   notes=["<script>alert('note')</script>"], signature_key=ctx.signature.key(),
                                   seconds=3.0), e.id)

    db.task_started(hostile.name)
    rej = dict(history[0]["evaluation"], task=hostile.name, reason="<script>alert('reason')</script>")
    db.record_result(hostile.name, dict(history=[{"attempt": 0, "worker": 0, "candidate": cands[0][2],
                                                  "evaluation": rej}], best=rej, best_index=0, attempts=1,
                                        llm_calls=[], notes=[], seconds=1.0), None)
    db.set_status("finished", "done")
    db.close()
    return out
