"""Issue 17's before/after table: every bundled task's roofline fraction and speedup, and the baseline's own
roofline fraction per op type.

    python benchmarks/author_table.py BEFORE_author.json AFTER_author.json [--baseline results/baseline.json]
        [--markdown] [--out table.json]

BEFORE/AFTER are ``bench_author.py`` results (``per_task`` rows with ``roofline_fraction``, ``speedup``,
``bound``); a path may be ``REV:path`` to read a committed file (``git show REV:path``), e.g.
``7ce8504:benchmarks/results/author.json``, the results on main when issue 17 was filed. The baseline
figures come from ``bench_baseline.py`` (``by_op``, and ``before.by_op``, the audit's starting point).

A speedup is only as honest as the baseline under it: the "before" speedups were measured against the
baseline before the yardstick audit, so the table prints the roofline fraction first (comparable across
runs: it depends on the task and the machine only) and the speedup beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def load(spec: str) -> dict:
    """A results file from disk, or from git when written as ``REV:path``."""
    if ":" in spec and not Path(spec).exists():
        text = subprocess.run(["git", "show", spec], check=True, capture_output=True, text=True).stdout
        return json.loads(text)
    return json.loads(Path(spec).read_text())


def _by_task(results: dict) -> dict[str, dict]:
    return {row["task"]: row for row in results["per_task"]}


def _summary(rows: dict[str, dict]) -> dict:
    def med(bound: str) -> float | None:
        fr = [r["roofline_fraction"] for r in rows.values()
              if r.get("bound") == bound and r.get("roofline_fraction") is not None]
        return statistics.median(fr) if fr else None

    return {"tasks": len(rows), "verified": sum(1 for r in rows.values() if r.get("verified")),
            "median_roofline_compute_bound": med("compute"), "median_roofline_memory_bound": med("memory")}


def table(before: dict, after: dict, baseline: dict | None) -> dict:
    b, a = _by_task(before), _by_task(after)
    tasks = []
    for name in sorted(set(a) | set(b)):
        rb, ra = b.get(name, {}), a.get(name, {})
        tasks.append({"task": name, "bound": ra.get("bound") or rb.get("bound"),
                      "roofline_before": rb.get("roofline_fraction"), "roofline_after": ra.get("roofline_fraction"),
                      "speedup_before": rb.get("speedup"), "speedup_after": ra.get("speedup"),
                      "verified_after": ra.get("verified")})
    out: dict = {"before": _summary(b), "after": _summary(a), "tasks": tasks}
    if baseline is not None:
        now, was = baseline.get("by_op", {}), baseline.get("before", {}).get("by_op", {})
        out["baseline_by_op"] = [{"op": op, "kernels": now[op]["count"],
                                  "median_before": was.get(op, {}).get("median"), "median_after": now[op]["median"],
                                  "min_before": was.get(op, {}).get("min"), "min_after": now[op]["min"],
                                  "worst_after": now[op].get("worst")}
                                 for op in sorted(now)]
    return out


def _f(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def markdown(t: dict) -> str:
    lines = ["| task | bound | roofline before | roofline after | speedup before | speedup after |",
             "|---|---|---|---|---|---|"]
    for r in t["tasks"]:
        lines.append(f"| {r['task']} | {r['bound'] or ''} | {_f(r['roofline_before'])} | {_f(r['roofline_after'])} "
                     f"| {_f(r['speedup_before'], 2)} | {_f(r['speedup_after'], 2)} |")
    if "baseline_by_op" in t:
        lines += ["", "| baseline op | kernels | median before | median after | min before | min after |",
                  "|---|---|---|---|---|---|"]
        for r in t["baseline_by_op"]:
            lines.append(f"| {r['op']} | {r['kernels']} | {_f(r['median_before'])} | {_f(r['median_after'])} "
                         f"| {_f(r['min_before'])} | {_f(r['min_after'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--baseline", default=None, help="bench_baseline.py results (by_op and before.by_op)")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables instead of JSON")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    t = table(load(args.before), load(args.after), load(args.baseline) if args.baseline else None)
    if args.out:
        args.out.write_text(json.dumps(t, indent=1) + "\n")
    print(markdown(t) if args.markdown else json.dumps(t, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
