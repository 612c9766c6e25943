"""Timing-model speed: asp_lang.profile (the fast analytic model, types only, no data) of a
4096 x 393216 row softmax on sn40l.

Both softmax kernels in docs/examples are compiled (parse + check + allocate) at the full
size and profiled; compile time and profile time are measured separately (best of
--repeats, after a warm-up). The target is on the profile alone: under 50 ms.

Prints one JSON object; exit status 1 if any configuration misses the target.

    .venv/bin/python benchmarks/bench_timing.py
    .venv/bin/python benchmarks/bench_timing.py --tiles 4x1024 8x2048
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# --asp-root DIR imports asp_lang from DIR instead (e.g. an older checkout, to compare versions)
_ASP_ROOT = next((a.split("=", 1)[1] if "=" in a else (sys.argv + [None])[i + 1]
                  for i, a in enumerate(sys.argv) if a.split("=", 1)[0] == "--asp-root"), None)
sys.path.insert(0, str(Path(_ASP_ROOT).resolve() if _ASP_ROOT else ROOT))

import asp_lang  # noqa: E402

EXAMPLES = ROOT / "docs" / "examples"
M, N = 4096, 393216
TARGET_PROFILE_MS = 50.0
KERNELS = ("softmax_online", "softmax_3pass")


def best_ms(f, repeats: int):
    out = f()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3, out


def one(kernel: str, r: int, t: int, machine: str, repeats: int) -> dict:
    if N % t or M % r:
        raise SystemExit(f"tile {r}x{t} does not divide {M}x{N}")
    path = EXAMPLES / f"{kernel}.asp"
    sizes = {"M": M, "N": N, "R": r, "T": t}
    compile_ms, prog = best_ms(lambda: asp_lang.compile_file(path, machine=machine, sizes=sizes), repeats)
    profile_ms, rep = best_ms(lambda: asp_lang.profile(prog), repeats)
    bottleneck = rep.bottleneck
    return {
        "kernel": kernel,
        "machine": machine,
        "sizes": sizes,
        "compile_ms": round(compile_ms, 3),
        "profile_ms": round(profile_ms, 3),
        "total_ms": round(compile_ms + profile_ms, 3),
        "simulated_seconds": rep.seconds,
        "simulated_cycles": rep.cycles,
        "roofline_seconds": rep.roofline_seconds,
        "roofline_fraction": round(rep.roofline_fraction, 4),
        "roofline_limit": rep.roofline_limit,
        "bottleneck": bottleneck,
        "hbm_bytes": rep.hbm_bytes,
        "sections": rep.sections,
        "target_profile_ms": TARGET_PROFILE_MS,
        "ok": profile_ms < TARGET_PROFILE_MS,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", nargs="+", default=["4x1024", "8x2048"],
                    help="RxT tile shapes to try (each must divide 4096 x 393216)")
    ap.add_argument("--machine", default="sn40l")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--asp-root", metavar="DIR", help="import asp_lang from DIR (a folder holding the asp_lang package)")
    a = ap.parse_args(argv)
    results = []
    for kernel in KERNELS:
        for spec in a.tiles:
            r, t = (int(v) for v in spec.lower().split("x"))
            results.append(one(kernel, r, t, a.machine, a.repeats))
    report = {
        "benchmark": f"asp_lang.profile of a {M} x {N} softmax (timing only, no data)",
        "target_profile_ms": TARGET_PROFILE_MS,
        "all_ok": all(r["ok"] for r in results),
        "asp_lang": str(Path(asp_lang.__file__).resolve().parent),
        "results": results,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__},
    }
    print(json.dumps(report, indent=2))
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
