"""Suite-level scores over evaluations (KernelBench's fast_p and friends).

fast_p is the fraction of *all* tasks whose candidate is verified and faster than the
op-by-op baseline by more than p (speedup > p); fast_0 is the fraction verified at all.
"""

from __future__ import annotations

import math
import statistics
from typing import Iterable

from .verify import Evaluation


def fast_p(evals: Iterable[Evaluation], p: float) -> float:
    evals = list(evals)
    if not evals:
        return 0.0
    return sum(1 for e in evals if e.verified and (e.speedup or 0.0) > p) / len(evals)


def geomean(xs: Iterable[float]) -> float | None:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def summarize(evals: Iterable[Evaluation]) -> dict:
    """Totals a report shows: counts, fast_p for p in 0, 1, 2, geomean speedup, roofline."""
    evals = list(evals)
    ok = [e for e in evals if e.verified]
    fr = [e.roofline_fraction for e in ok if e.roofline_fraction is not None]
    return {
        "tasks": len(evals),
        "verified": len(ok),
        "fast_0": fast_p(evals, 0.0),
        "fast_1": fast_p(evals, 1.0),
        "fast_2": fast_p(evals, 2.0),
        "geomean_speedup": geomean(e.speedup for e in ok),
        "median_roofline_fraction": statistics.median(fr) if fr else None,
        "rejected_by_reason": _count(e.reason_code for e in evals if not e.verified),
    }


def _count(xs) -> dict:
    out: dict = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out
