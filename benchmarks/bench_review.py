"""Benchmark of `agentforge review` on a synthetic 200-task campaign: report size, the time to
load and render it, and the page's load time in headless Chromium.

The run (agentforge.review.synthetic) has realistic content: every task a lineage of 3-6
candidates (kernels from docs/examples edited attempt by attempt, some plans), evaluations
with checks, LLM calls; 80% verified with a library entry whose kernel is real ASP. All
entries share one real task file (evals/suite/relu.py), so the op-by-op baseline is timed once;
a real campaign pays the capture and baseline per distinct task (about 1-2 s each, or nothing
with --no-timing).

    .venv/bin/python benchmarks/bench_review.py [--tasks 200] [--out benchmarks/results/review.json]

Prints one JSON object. Targets: the page loads (load event) within 2 s and the report is under
10 MB; exits 1 when missed.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAX_LOAD_MS = 2000.0
MAX_BYTES = 10_000_000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3, help="browser loads (best and median reported)")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--keep", help="keep the run directory and report here")
    args = ap.parse_args(argv)

    from agentforge.review import load_review, render_html
    from agentforge.review.browser import BrowserUnavailable, Chromium
    from agentforge.review.synthetic import example_kernels, make_synthetic_run

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-review-"))
    shutil.rmtree(work / "run", ignore_errors=True)   # a kept directory from an earlier run
    t0 = time.perf_counter()
    run = make_synthetic_run(work / "run", args.tasks, example_kernels(ROOT), ROOT / "evals/suite/relu.py")
    t_make = time.perf_counter() - t0

    t0 = time.perf_counter()
    review = load_review(run)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    page = render_html(review)
    t_render = time.perf_counter() - t0
    t0 = time.perf_counter()
    review_nt = load_review(run, timing=False)
    render_html(review_nt)
    t_no_timing = time.perf_counter() - t0

    out = work / "report.html"
    out.write_text(page)
    res: dict = {
        "tasks": args.tasks, "candidates": sum(len(t.candidates) for t in review.tasks),
        "verified": review.totals["verified"], "report_bytes": len(page.encode()),
        "make_run_s": round(t_make, 2), "load_review_s": round(t_load, 2), "render_html_s": round(t_render, 2),
        "review_total_s": round(t_load + t_render, 2), "review_no_timing_s": round(t_no_timing, 2),
        "python": platform.python_version(), "machine": platform.machine(),
    }
    try:
        with Chromium() as b:
            loads = [b.load(out) for _ in range(max(1, args.repeats))]
        ms = sorted(x.load_ms for x in loads)
        res.update(browser_load_ms_best=round(ms[0], 1), browser_load_ms_median=round(ms[len(ms) // 2], 1),
                   browser_dcl_ms_best=round(min(x.dom_content_loaded_ms for x in loads), 1),
                   browser_console_errors=len(loads[-1].errors))
    except BrowserUnavailable as e:
        res["browser"] = f"skipped: {e}"
    ok = res["report_bytes"] < MAX_BYTES and res.get("browser_load_ms_median", 0) < MAX_LOAD_MS \
        and not res.get("browser_console_errors")
    res["targets"] = {"report_bytes_lt": MAX_BYTES, "browser_load_ms_lt": MAX_LOAD_MS, "met": ok}
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
