"""Wall time of the default offline campaign over the bundled suite, with 1 and 2 workers.

Target (README): the whole suite within 5 minutes on a 2-core machine. Each run is a real
`agentforge campaign` in a fresh run directory (cold plan cache and experience library).

    .venv/bin/python benchmarks/bench_campaign.py [--workers 1,2] [--tasks a,b] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(workers: int, tasks: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "agentforge.cli", "campaign", str(ROOT / "evals" / "suite"), "--out", str(out),
               "--workers", str(workers), "--jsonl"]
        if tasks:
            cmd += ["--tasks", tasks]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        wall = time.perf_counter() - t0
        events = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        end = next((e for e in events if e["event"] == "campaign_end"), {})
        ends = [e for e in events if e["event"] == "task_end"]
        return {"workers": workers, "returncode": proc.returncode, "wall_seconds": round(wall, 1),
                "campaign_seconds": round(end.get("wall_seconds", 0.0), 1), "tasks": end.get("tasks"),
                "verified": end.get("verified"), "fast_1": end.get("fast_1"), "fast_2": end.get("fast_2"),
                "plan_cache_hit_rate": end.get("plan_cache_hit_rate"),
                "slowest_tasks": sorted(((e["task"], round(e["seconds"] or 0, 1)) for e in ends),
                                        key=lambda x: -x[1])[:5],
                "within_5_minutes": wall <= 300}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--tasks")
    ap.add_argument("--out")
    a = ap.parse_args()
    rows = [run(int(w), a.tasks) for w in a.workers.split(",")]
    res = {"benchmark": "campaign", "machine": platform.node(), "cpus": os.cpu_count(), "runs": rows}
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
