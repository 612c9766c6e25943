"""The offline author over the bundled suite, and what the plan cache and experience save.

Prints one JSON object:
- ``author``: verified fraction, fast_1 / fast_2 against the op-by-op baseline, median
  fraction of the roofline on memory-bound tasks, geomean speedup on fused tasks (level >= 2),
  median attempts;
- ``plan_cache`` (``--resized``): the suite solved once to fill the cache, then a copy of the
  suite at other sizes (each task's second small size set as its own sizes): planner calls
  saved and verified fraction kept (target: at least half the calls saved, nothing lost).
- ``experience`` (``--experience``): the suite solved a second time with the priors the first
  pass left in the experience library: the author's parameter-search evaluations (its
  attempts) and loop attempts per pass (target: at least 2x fewer search evaluations).

    .venv/bin/python benchmarks/bench_author.py [--tasks a,b] [--resized] [--experience] [--machine sn40l]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentforge.loop import SolveConfig, offline_roles, solve, task_context  # noqa: E402
from agentforge.scoring import fast_p, geomean  # noqa: E402
from agentforge.store.experience import ExperienceLibrary  # noqa: E402
from agentforge.store.plan_cache import PlanCache  # noqa: E402
from agentforge.tasks import load_suite  # noqa: E402


def run(tasks, machine: str, plan_cache=None, experience=None, use_priors: bool = False) -> list[dict]:
    rows = []
    for task in tasks:
        t0 = time.perf_counter()
        ctx = task_context(task, machine)
        priors = experience.priors(ctx.signature) if (experience is not None and use_priors) else None
        planner, workers, reflector = offline_roles(1, priors)
        calls = {"n": 0}
        inner = planner.plan

        def counting(ctx, demos, _inner=inner):
            calls["n"] += 1
            return _inner(ctx, demos)
        planner.plan = counting
        res = solve(task, planner, workers, reflector, machine, SolveConfig(max_attempts=4), plan_cache=plan_cache,
                    experience=experience, ctx=ctx)
        ev = res.best
        rows.append({"task": task.name, "level": task.level, "verified": res.verified,
                     "speedup": ev.speedup if ev else None, "roofline_fraction": ev.roofline_fraction if ev else None,
                     "bound": "memory" if _memory_bound(res) else "compute", "attempts": res.attempts,
                     "planner_calls": calls["n"], "plan_cache_hit": res.plan_cache_hit,
                     "search_evaluations": planner.search_evaluations, "priors": bool(priors),
                     "seconds": round(time.perf_counter() - t0, 2), "evaluation": ev})
    return rows


def _memory_bound(res) -> bool:
    from agentforge.capture import capture_at
    from agentforge.capture import signature
    from agentforge.tasks import load_task

    return signature(capture_at(load_task(ROOT / "evals" / "suite" / f"{res.task}.py"), meta=True)).bound == "memory"


def summary(rows: list[dict]) -> dict:
    evs = [r["evaluation"] for r in rows if r["evaluation"] is not None]
    mem = [r["roofline_fraction"] for r in rows if r["verified"] and r["bound"] == "memory"]
    fused = [r["speedup"] for r in rows if r["verified"] and r["level"] >= 2]
    return {"tasks": len(rows), "verified": sum(r["verified"] for r in rows),
            "verified_fraction": sum(r["verified"] for r in rows) / max(1, len(rows)),
            "fast_1": fast_p(evs, 1.0) * len(evs) / max(1, len(rows)),
            "fast_2": fast_p(evs, 2.0) * len(evs) / max(1, len(rows)),
            "median_roofline_memory_bound": statistics.median(mem) if mem else None,
            "memory_bound_tasks": len(mem),
            "geomean_speedup_fused": geomean(fused), "fused_tasks": len(fused),
            "median_attempts": statistics.median(r["attempts"] for r in rows) if rows else None,
            "planner_calls": sum(r["planner_calls"] for r in rows),
            "search_evaluations": sum(r["search_evaluations"] for r in rows),
            "wall_seconds": round(sum(r["seconds"] for r in rows), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", help="comma-separated task names (default: the whole suite)")
    ap.add_argument("--machine", default="sn40l")
    ap.add_argument("--resized", action="store_true", help="also measure the plan cache on a re-sized suite")
    ap.add_argument("--experience", action="store_true", help="also measure a second pass with the experience library")
    args = ap.parse_args()
    tasks = load_suite(ROOT / "evals" / "suite")
    if args.tasks:
        want = set(args.tasks.split(","))
        tasks = [t for t in tasks if t.name in want]
    with tempfile.TemporaryDirectory() as tmp:
        cache = PlanCache(Path(tmp) / "cache.sqlite") if args.resized else None
        library = ExperienceLibrary(Path(tmp) / "experience.sqlite") if args.experience else None
        rows = run(tasks, args.machine, cache, library)
        out = {"machine": args.machine, "author": summary(rows),
               "per_task": [{k: v for k, v in r.items() if k != "evaluation"} for r in rows]}
        if args.resized:
            resized = [replace(t, sizes=t.sizes_for(t.resolved_size_sets()[-1])) for t in tasks if t.size_sets]
            again = run(resized, args.machine, cache)
            s2 = summary(again)
            out["plan_cache"] = {"first_pass_planner_calls": out["author"]["planner_calls"],
                                 "resized_planner_calls": s2["planner_calls"],
                                 "planner_calls_saved_fraction": 1 - s2["planner_calls"] / max(1, len(again)),
                                 "verified_first": out["author"]["verified"], "verified_resized": s2["verified"],
                                 "hits": sum(r["plan_cache_hit"] for r in again), "stats": cache.stats(),
                                 "unverified_resized": {r["task"]: (getattr(r["evaluation"], "reason", "") or "no evaluation")[:300]
                                                        for r in again if not r["verified"]}}
        if args.experience:
            second = run(tasks, args.machine, None, library, use_priors=True)
            s1, s2 = out["author"], summary(second)
            out["experience"] = {
                "first_pass_search_evaluations": s1["search_evaluations"],
                "second_pass_search_evaluations": s2["search_evaluations"],
                "reduction": s1["search_evaluations"] / max(1, s2["search_evaluations"]),
                "first_pass_attempts": sum(r["attempts"] for r in rows),
                "second_pass_attempts": sum(r["attempts"] for r in second),
                "verified_first": s1["verified"], "verified_second": s2["verified"],
                "unverified_second": {r["task"]: (getattr(r["evaluation"], "reason", "") or "no evaluation")[:300]
                                      for r in second if not r["verified"]},
                "geomean_speedup_fused_first": s1["geomean_speedup_fused"],
                "geomean_speedup_fused_second": s2["geomean_speedup_fused"],
                "tasks_with_priors": sum(r["priors"] for r in second)}
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
