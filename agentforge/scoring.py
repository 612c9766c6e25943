"""Suite-level scores over evaluations (KernelBench's fast_p and friends).

fast_p is the fraction of *all* tasks whose candidate is verified and faster than the
op-by-op baseline by more than p (speedup > p); fast_0 is the fraction verified at all.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

from asp_lang.timing import EmulatorError

from .signature import estimate_flops, io_bytes


class Scored(Protocol):
    """What a score reads of one task's result (a :class:`agentforge.verify.Evaluation` is one)."""
    verified: bool
    speedup: float | None
    roofline_fraction: float | None
    reason_code: str | None


def fast_fraction(verified_speedups: Iterable[float | None], tasks: int, p: float) -> float:
    """fast_p from the speedups of the verified tasks out of ``tasks`` in all: the share of all
    tasks verified and faster than the baseline by more than ``p``; 0 when there are no tasks.

    The one definition the suite scores, the campaign's totals and the review's totals use."""
    return sum(1 for s in verified_speedups if (s or 0.0) > p) / tasks if tasks else 0.0


def fast_p(evals: Iterable[Scored], p: float) -> float:
    evals = list(evals)
    return fast_fraction((e.speedup for e in evals if e.verified), len(evals), p)


def geomean(xs: Iterable[float]) -> float | None:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def summarize(evals: Iterable[Scored]) -> dict:
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


#: dtypes whose arithmetic may run at the machine's 16-bit (systolic bf16) peak; all others
#: (f32, integers, bool) are bounded by its 32-bit peak.
_SIXTEEN_BIT = ("bf16", "f16")
#: slack for float rounding between the emulator's cycle counts and this bound
_ROOF_TOLERANCE = 1e-6


@dataclass(frozen=True)
class TaskRoofline:
    """The fastest any kernel can do the task on a machine, whatever it fuses or how it is written:
    its compulsory HBM traffic (every input and parameter read once, every output written once)
    at full bandwidth, or its FLOPs at the best peak its dtypes allow, whichever is longer."""
    seconds: float
    limit: str          # "hbm" or "compute"
    hbm_bytes: float
    flops: float
    peak_tflops: float

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "limit": self.limit, "hbm_bytes": self.hbm_bytes,
                "flops": self.flops, "peak_tflops": self.peak_tflops}


def task_roofline(graph: Any, machine: Any, work_fraction: float = 1.0) -> TaskRoofline:
    """The roofline of the task captured as ``graph`` (an AtenGraph at the timed sizes) on
    ``machine``: a bound of the task, not of a kernel's own work, so a kernel that does less
    (or is credited more than the chip can do) cannot raise its own ceiling.

    ``work_fraction`` (:meth:`Task.work_fraction`) is the share of the graph's FLOPs any correct
    kernel must do: below 1 only for a task that declares work a kernel may rightly skip (the
    experts a routed mixture of experts does not run for a token)."""
    nbytes = float(io_bytes(graph))
    flops = float(estimate_flops(graph)) * min(1.0, max(0.0, work_fraction))
    dtypes = {s.dtype for s in (*graph.inputs, *graph.params)} | {graph.spec(r.name).dtype for r in graph.outputs}
    peak = max(machine.peak_tflops("bf16" if d in _SIXTEEN_BIT else "f32") for d in dtypes or {"f32"})
    mem = nbytes / (machine.hbm.bandwidth_gbs * 1e9)
    compute = flops / (peak * 1e12)
    return TaskRoofline(max(mem, compute), "hbm" if mem >= compute else "compute", nbytes, flops, peak)


def task_roofline_fraction(graph: Any, machine: Any, seconds: float, work_fraction: float = 1.0) -> float:
    """``task_roofline(graph, machine).seconds / seconds``, the fraction of the task's roofline a
    timed candidate reaches. A verified candidate timed faster than the task's roofline is an
    emulator bug (some path is credited more than the machine can do): it raises EmulatorError,
    never a fraction clamped to 1."""
    roof = task_roofline(graph, machine, work_fraction)
    if seconds <= 0 or seconds < roof.seconds * (1 - _ROOF_TOLERANCE):
        raise EmulatorError(
            f"timed at {seconds * 1e6:.3f} us, faster than the task's own roofline {roof.seconds * 1e6:.3f} us "
            f"({roof.limit}-bound: {roof.hbm_bytes / 2**20:,.1f} MiB of inputs and outputs at "
            f"{machine.hbm.bandwidth_gbs:g} GB/s, {roof.flops:.3g} FLOPs at {roof.peak_tflops:.0f} TFLOP/s): "
            f"the timing model credits more than {machine.name} can do")
    return roof.seconds / seconds


def _count(xs) -> dict:
    out: dict = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out
