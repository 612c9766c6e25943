"""Evaluate the op-by-op baseline of every bundled task, and audit its kernels against their rooflines.

The baseline is the yardstick every speedup is measured against, so it must be what a competent
instruction-driven accelerator does: every ATen op its own kernel, intermediates through HBM,
and each kernel near *its own* roofline (its operands read once and its results written once at
full HBM bandwidth, or its FLOPs at peak: agentforge.chain.op_roofline_seconds). A kernel far
below that bound makes every speedup over the chain dishonest.

Prints one JSON object (and writes it with --out):
    {"tasks": N, "verified": V, "machine", "mean_eval_seconds", "total_seconds",
     "per_task": [{"name", "suite", "verified", "reason_code", "eval_seconds", "baseline_seconds",
                   "roofline_fraction", "checks", "chain_seconds", "kernels", "worst_op_bound_fraction",
                   "chain_seconds_before", "chain_speedup_vs_before"}, ...],
     "by_op": {"aten.select.int": {"count", "min", "median", "max", "worst": "task/node"}, ...},
     "below_floor": [{"task", "node", "target", "op_roofline_fraction", "op_bound_fraction", "bottleneck"}, ...],
     "before": {"by_op", "below_floor", "chain_seconds"}   # with --before FILE: an earlier run's, kept
    }

eval_seconds is the wall time of verification (the documented checks on the emulator) plus timing
at the task's own sizes; baseline_seconds is the *simulated* time of the chain on the machine.
--no-verify skips verification (timing only, no data: seconds for the whole suite).

    .venv/bin/python benchmarks/bench_baseline.py [--suite evals/suite evals/kernelbench_l2] [--machine sn40l]
        [--only NAME ...] [--no-verify] [--floor 0.5] [--before OLD.json] [--out benchmarks/results/baseline.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asp_lang  # noqa: E402
from agentforge.baseline import build_baseline  # noqa: E402
from agentforge.capture import capture_at  # noqa: E402
from agentforge.tasks import Task, load_suite  # noqa: E402
from agentforge.verify import VerifyConfig, evaluate  # noqa: E402

DEFAULT_SUITES = (ROOT / "evals" / "suite", ROOT / "evals" / "kernelbench_l2")


def audit_task(task: Task, machine: asp_lang.Machine) -> tuple[float, list[dict]]:
    """The chain's simulated seconds at the task's own sizes (timing only, no data) and every
    kernel of it with its fraction of its own op's roofline."""
    timing = build_baseline(capture_at(task, meta=True), machine).time()
    return timing.seconds, [{"task": task.name, "node": k["node"], "target": k["target"], "seconds": k["seconds"],
             "op_roofline_fraction": k["op_roofline_fraction"], "op_bound_fraction": k["op_bound_fraction"],
             "bottleneck": k["bottleneck"]}
            for k in timing.kernels]


def by_op(rows: list[dict]) -> dict[str, dict]:
    """Per ATen op type: how many kernels, the min / median / max of their fractions of their own
    roofline, and the min / median of the same with the kernel latency allowed (op_bound: what
    the floor is judged on, so that tiny tensors are not counted as bad lowerings)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["target"], []).append(r)
    out = {}
    for target in sorted(groups):
        fr = [r["op_roofline_fraction"] for r in groups[target]]
        bd = [r["op_bound_fraction"] for r in groups[target]]
        worst = min(groups[target], key=lambda r: r["op_bound_fraction"])
        out[target] = {"count": len(fr), "min": round(min(fr), 4), "median": round(statistics.median(fr), 4),
                       "max": round(max(fr), 4), "bound_min": round(min(bd), 4),
                       "bound_median": round(statistics.median(bd), 4), "worst": f"{worst['task']}/{worst['node']}"}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", nargs="*", default=[str(s) for s in DEFAULT_SUITES])
    ap.add_argument("--machine", default="sn40l")
    ap.add_argument("--only", nargs="*", help="task names to run (default: all)")
    ap.add_argument("--no-verify", action="store_true", help="time and audit only (no emulator runs)")
    ap.add_argument("--floor", type=float, default=0.5, help="list kernels below this fraction of their roofline")
    ap.add_argument("--before", help="an earlier output of this script: its by_op table is kept as 'before'")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)

    cfg = VerifyConfig(machine=args.machine)
    machine = asp_lang.load_machine(args.machine)
    tasks = [(Path(s).name, t) for s in args.suite for t in load_suite(s)]
    if args.only:
        tasks = [(s, t) for s, t in tasks if t.name in set(args.only)]
    per_task, rows = [], []
    t_all = time.perf_counter()
    for suite, task in tasks:
        t0 = time.perf_counter()
        entry: dict = {"name": task.name, "suite": suite}
        if not args.no_verify:
            ev = evaluate(task, {"kind": "baseline"}, cfg)
            entry.update(verified=ev.verified, reason_code=ev.reason_code, baseline_seconds=ev.baseline_seconds,
                         roofline_fraction=ev.roofline_fraction, checks=len(ev.checks))
        chain_seconds, kernels = audit_task(task, machine)
        rows += kernels
        dt = time.perf_counter() - t0
        entry.update(eval_seconds=round(dt, 3), chain_seconds=chain_seconds, kernels=len(kernels),
                     worst_op_bound_fraction=round(min((k["op_bound_fraction"] for k in kernels), default=1.0), 4))
        per_task.append(entry)
        status = "" if args.no_verify else ("ok " if entry["verified"] else f"{entry['reason_code']} ")
        print(f"{task.name}: {status}{dt:.2f}s worst kernel {entry['worst_op_bound_fraction']:.3f}",
              file=sys.stderr, flush=True)
    total = time.perf_counter() - t_all
    verified = sum(r.get("verified", False) for r in per_task)
    result = {
        "tasks": len(per_task),
        "verified": None if args.no_verify else verified,
        "machine": args.machine,
        "suites": sorted({s for s, _ in tasks}),
        "mean_eval_seconds": round(total / max(1, len(per_task)), 3),
        "total_seconds": round(total, 3),
        "kernels": len(rows),
        "floor": args.floor,
        "by_op": by_op(rows),
        "below_floor": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "seconds"}
                        for r in rows if r["op_bound_fraction"] < args.floor],
        "per_task": per_task,
    }
    if args.before:
        old = json.loads(Path(args.before).read_text())
        # a file that already carries a "before" keeps it (re-running after the fix does not lose it)
        result["before"] = old.get("before") or {
            "by_op": old["by_op"], "below_floor": old["below_floor"],
            "chain_seconds": {t["name"]: t.get("chain_seconds") for t in old["per_task"]}}
        before_s = result["before"].get("chain_seconds") or {}
        for t in per_task:  # how much faster the yardstick got: every speedup over it shrinks by this
            if before_s.get(t["name"]):
                t["chain_seconds_before"] = before_s[t["name"]]
                t["chain_speedup_vs_before"] = round(before_s[t["name"]] / t["chain_seconds"], 4)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if args.no_verify or verified == len(per_task) else 1


if __name__ == "__main__":
    sys.exit(main())
