"""Plans that transfer: the default campaign's plan cache serving a suite it has never seen.

1. **Build**: the bundled suite (``evals/suite``) solved as the default campaign solves it (the
   offline author, 4 attempts, 1 worker) with a fresh plan cache: that is the campaign's cache.
2. **Without the cache**: a different suite of structurally related tasks
   (``evals/kernelbench_l2``: KernelBench level-2 matmul + elementwise-epilogue problems and a
   few norm / softmax variants) solved with no cache.
3. **With the cache**: the same related suite solved with the campaign's cache (a copy of it,
   so the build is reused unchanged): exact hits, structural hits (``class_hits``), false hits
   and misses per task, planner calls and the offline planner's timing evaluations.

Prints one JSON object (and writes it with ``--out``); the targets of issue 21 are in
``targets``: planner calls saved >= 50%, false hits counted, verified count equal and median
speedup within 2% of the run without the cache.

    .venv/bin/python benchmarks/bench_plan_cache.py [--out benchmarks/results/plan_cache.json]
        [--suite evals/suite] [--related evals/kernelbench_l2] [--suite-tasks a,b] [--machine sn40l]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentforge.loop import SolveConfig, offline_roles, solve, task_context  # noqa: E402
from agentforge.store.plan_cache import PlanCache  # noqa: E402
from agentforge.tasks import load_suite  # noqa: E402


def run(tasks, machine: str, plan_cache: PlanCache | None) -> list[dict]:
    """Solve each task in turn as the default campaign does; one row per task."""
    rows = []
    for task in tasks:
        t0 = time.perf_counter()
        ctx = task_context(task, machine)
        planner, workers, reflector = offline_roles(1)
        calls = {"n": 0}
        inner = planner.plan

        def counting(ctx, demos, _inner=inner):
            calls["n"] += 1
            return _inner(ctx, demos)
        planner.plan = counting
        res = solve(task, planner, workers, reflector, machine, SolveConfig(max_attempts=4), plan_cache=plan_cache,
                    ctx=ctx)
        ev = res.best
        info = res.plan_cache or {}
        rows.append({"task": task.name, "verified": res.verified, "speedup": ev.speedup if ev else None,
                     "attempts": res.attempts, "planner_calls": calls["n"], "plan_source": res.plan_source,
                     "tier": res.plan_cache_tier, "false_hit": res.plan_cache_false_hit,
                     "served_from": info.get("task"),
                     "search_evaluations": planner.search_evaluations + int(info.get("search_evaluations") or 0),
                     "search_evaluations_saved": planner.search_evaluations_saved,
                     "seconds": round(time.perf_counter() - t0, 2)})
        print(f"  {task.name}: verified={res.verified} speedup={rows[-1]['speedup']} tier={res.plan_cache_tier} "
              f"planner_calls={calls['n']} ({rows[-1]['seconds']} s)", file=sys.stderr, flush=True)
    return rows


def summary(rows: list[dict]) -> dict:
    speedups = [r["speedup"] for r in rows if r["verified"] and r["speedup"]]
    return {"tasks": len(rows), "verified": sum(r["verified"] for r in rows),
            "median_speedup": statistics.median(speedups) if speedups else None,
            "planner_calls": sum(r["planner_calls"] for r in rows),
            "search_evaluations": sum(r["search_evaluations"] for r in rows),
            "tiers": {t: sum(r["tier"] == t for r in rows) for t in ("exact", "structural", "miss")},
            "false_hits": sum(r["false_hit"] for r in rows),
            "wall_seconds": round(sum(r["seconds"] for r in rows), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default=str(ROOT / "evals" / "suite"), help="the campaign's suite (builds the cache)")
    ap.add_argument("--related", default=str(ROOT / "evals" / "kernelbench_l2"), help="the unseen, related suite")
    ap.add_argument("--suite-tasks", help="comma-separated names: build the cache from these suite tasks only")
    ap.add_argument("--related-tasks", help="comma-separated names: only these related tasks")
    ap.add_argument("--machine", default="sn40l")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    suite = load_suite(args.suite)
    if args.suite_tasks:
        want = set(args.suite_tasks.split(","))
        suite = [t for t in suite if t.name in want]
    related = load_suite(args.related)
    if args.related_tasks:
        want = set(args.related_tasks.split(","))
        related = [t for t in related if t.name in want]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / "campaign.sqlite"
        print(f"building the campaign's plan cache from {len(suite)} suite tasks", file=sys.stderr)
        with PlanCache(built) as cache:
            build_rows = run(suite, args.machine, cache)
            build_stats = cache.stats()
        print(f"the related suite ({len(related)} tasks) without the cache", file=sys.stderr)
        without = run(related, args.machine, None)
        copy = Path(tmp) / "serving.sqlite"
        shutil.copy(built, copy)
        print("the related suite with the campaign's cache", file=sys.stderr)
        with PlanCache(copy) as cache:
            before = cache.stats()
            with_cache = run(related, args.machine, cache)
            after = cache.stats()
    s0, s1 = summary(without), summary(with_cache)
    counters = ("hits", "exact_hits", "class_hits", "false_hits", "misses", "planner_calls_saved", "tokens_saved",
                "search_evaluations_saved", "adapt_failures")
    serving = {k: after[k] - before[k] for k in counters}
    saved_fraction = 1 - s1["planner_calls"] / s0["planner_calls"] if s0["planner_calls"] else 0.0
    ratio = (s1["median_speedup"] / s0["median_speedup"]) if s0["median_speedup"] and s1["median_speedup"] else None
    out = {
        "machine": args.machine, "host": platform.node(), "python": platform.python_version(),
        "campaign_cache": {"suite": str(Path(args.suite).relative_to(ROOT)) if Path(args.suite).is_relative_to(ROOT)
                           else args.suite, **summary(build_rows),
                           "entries": build_stats["entries"], "structural_entries": build_stats["structural_entries"],
                           "structures": build_stats["structures"]},
        "related_suite": str(Path(args.related).relative_to(ROOT)) if Path(args.related).is_relative_to(ROOT)
        else args.related,
        "without_cache": s0,
        "with_cache": s1,
        "cache_counters_while_serving": serving,
        "targets": {
            "planner_calls_saved_fraction": round(saved_fraction, 3),
            "planner_calls_saved_at_least_half": saved_fraction >= 0.5,
            "false_hits_counted": serving["false_hits"],
            "verified_without": s0["verified"], "verified_with": s1["verified"],
            "verified_equal": s0["verified"] == s1["verified"],
            "median_speedup_ratio": round(ratio, 4) if ratio else None,
            "median_speedup_within_2pct": ratio is not None and abs(ratio - 1) <= 0.02,
        },
        "per_task": [{"task": a["task"], "verified_without": a["verified"], "verified_with": b["verified"],
                      "speedup_without": a["speedup"], "speedup_with": b["speedup"], "tier": b["tier"],
                      "false_hit": b["false_hit"], "served_from": b["served_from"],
                      "planner_calls_without": a["planner_calls"], "planner_calls_with": b["planner_calls"],
                      "search_evaluations_without": a["search_evaluations"],
                      "search_evaluations_with": b["search_evaluations"]}
                     for a, b in zip(without, with_cache)],
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    text = json.dumps(out, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    t = out["targets"]
    met = t["planner_calls_saved_at_least_half"] and t["verified_equal"] and t["median_speedup_within_2pct"]
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
