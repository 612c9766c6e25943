"""Evaluate the op-by-op baseline of every bundled task, in-process and sequentially.

Prints one JSON object:
    {"tasks": N, "verified": V, "mean_eval_seconds": ..., "total_seconds": ...,
     "per_task": [{"name", "verified", "reason_code", "eval_seconds", "baseline_seconds",
                   "roofline_fraction", "kernels"}, ...]}

eval_seconds is the wall time of verification (6 checks on the emulator) plus timing at the
task's own sizes; baseline_seconds is the *simulated* time of the chain on the machine.

    .venv/bin/python benchmarks/bench_baseline.py [--suite evals/suite] [--machine sn40l] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentforge.tasks import load_suite  # noqa: E402
from agentforge.verify import VerifyConfig, evaluate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default=str(ROOT / "evals" / "suite"))
    ap.add_argument("--machine", default="sn40l")
    ap.add_argument("--only", nargs="*", help="task names to run (default: all)")
    args = ap.parse_args(argv)

    cfg = VerifyConfig(machine=args.machine)
    tasks = load_suite(args.suite)
    if args.only:
        tasks = [t for t in tasks if t.name in set(args.only)]
    per_task = []
    t_all = time.perf_counter()
    for task in tasks:
        t0 = time.perf_counter()
        ev = evaluate(task, {"kind": "baseline"}, cfg)
        dt = time.perf_counter() - t0
        per_task.append({
            "name": task.name,
            "verified": ev.verified,
            "reason_code": ev.reason_code,
            "eval_seconds": round(dt, 3),
            "baseline_seconds": ev.baseline_seconds,
            "roofline_fraction": ev.roofline_fraction,
            "checks": len(ev.checks),
        })
        print(f"{task.name}: {'ok' if ev.verified else ev.reason_code} {dt:.2f}s", file=sys.stderr, flush=True)
    total = time.perf_counter() - t_all
    verified = sum(r["verified"] for r in per_task)
    print(json.dumps({
        "tasks": len(per_task),
        "verified": verified,
        "machine": args.machine,
        "mean_eval_seconds": round(total / max(1, len(per_task)), 3),
        "total_seconds": round(total, 3),
        "per_task": per_task,
    }, indent=2))
    return 0 if verified == len(per_task) else 1


if __name__ == "__main__":
    sys.exit(main())
