"""The timing breakdown of a library kernel, recomputed from its ASP text.

The run database keeps each evaluation's totals (time, speedup, roofline fraction, the
bottleneck resource) but not the per-operator picture a reviewer wants: which operator
bounds the kernel, on which unit, how busy the units and HBM are. The timing model is
deterministic and needs no data, so we recompute it: a ``kernel`` entry is bound to its task
at the task's own sizes (as the verifier timed it), a ``plan`` entry's files are already the
chain's kernels at the task's sizes and compile standalone.

Nothing here raises for a kernel that no longer compiles (an emulator upgrade, a hand-edited
library): the breakdown then carries the error instead.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class OpRow:
    """One operator of a kernel, as the timing model saw it."""
    index: int
    op: str
    line: int
    limit: str            # compute | onchip | memory | route | none
    busy_cycles: float
    share: float          # of the busiest operator's cycles (1.0 for the bottleneck operator)
    par: int
    pcus: int
    pmus: int
    offchip_bytes: float


@dataclass(frozen=True)
class SocketTiming:
    """One socket of a kernel on several sockets: its cycles and a timeline of its operators,
    each busy for ``busy_cycles`` ending at ``finish_cycles`` (from the kernel's start)."""
    socket: int
    cycles: float
    bottleneck: str
    link_cycles: float
    ops: tuple[dict, ...] = ()

    def bars(self, width: float, total: float) -> list[tuple[dict, float, float]]:
        """(op, left, length) of every operator's busy window, scaled to ``width`` over ``total``."""
        scale = width / total if total else 0.0
        out = []
        for o in self.ops:
            end = o["finish_cycles"]
            start = max(0.0, end - o["busy_cycles"])
            out.append((o, start * scale, max((end - start) * scale, 0.5)))
        return out


@dataclass(frozen=True)
class KernelTiming:
    """One kernel file's timing report (or why there is none)."""
    file: str
    kernel: str = ""
    seconds: float | None = None
    flops: float | None = None
    hbm_bytes: float | None = None
    bottleneck: str | None = None           # the resource the model names (hbm, pcu, ...)
    bottleneck_op: str | None = None        # "map (line 9)": the operator with the most busy cycles
    roofline_fraction: float | None = None
    roofline_limit: str | None = None
    pcu_utilisation: float | None = None
    pmu_utilisation: float | None = None
    sram_utilisation: float | None = None
    hbm_bandwidth_fraction: float | None = None
    units: str = ""
    sizes: dict = field(default_factory=dict)
    ops: tuple[OpRow, ...] = ()
    error: str | None = None
    at: str = ""                            # which sizes it was timed at (own sizes, or the kernel's defaults)
    sockets: tuple[SocketTiming, ...] = ()  # a kernel on several sockets: each one's timeline


def report_to_timing(file: str, rep: Any) -> KernelTiming:
    """A :class:`asp_lang.Report` as the plain record the report and terminal view show."""
    top = max((o.busy_cycles for o in rep.ops), default=0.0) or 1.0
    rows = tuple(OpRow(o.index, o.op, o.line, o.limit, o.busy_cycles, o.busy_cycles / top, o.par, o.pcus, o.pmus,
                       o.offchip_bytes) for o in rep.ops)
    busiest = max(rows, key=lambda r: r.busy_cycles, default=None)
    return KernelTiming(
        file=file, kernel=rep.kernel, seconds=rep.seconds, flops=rep.flops, hbm_bytes=rep.hbm_bytes,
        bottleneck=rep.bottleneck, bottleneck_op=f"{busiest.op} (line {busiest.line})" if busiest else None,
        roofline_fraction=rep.roofline_fraction, roofline_limit=rep.roofline_limit,
        pcu_utilisation=rep.pcu_utilisation, pmu_utilisation=rep.pmu_utilisation,
        sram_utilisation=rep.sram_utilisation, hbm_bandwidth_fraction=rep.hbm_bandwidth_fraction,
        units=f"{rep.pcu_allocated} PCUs, {rep.pmu_allocated} PMUs, {rep.agcu_allocated} AGCUs",
        sizes=dict(rep.sizes), ops=rows,
        sockets=tuple(SocketTiming(s["socket"], s["cycles"], s["bottleneck"], s["link_cycles"], tuple(s.get("ops", ())))
                      for s in getattr(rep, "sockets", ()) or ()))


@functools.lru_cache(maxsize=1024)
def _profile_text(source: str, machine: str, file: str) -> KernelTiming:
    import asp_lang

    try:
        return report_to_timing(file, asp_lang.profile(asp_lang.compile(source, machine, filename=file)))
    except Exception as e:  # noqa: BLE001 - a stored kernel that no longer compiles is shown, not fatal
        return KernelTiming(file=file, error=f"{type(e).__name__}: {e}")


_GRAPHS: dict[str, Any] = {}


def _task_digest(task_path: Path) -> str:
    """Tasks are cached by content: a library keeps one copy per task, a synthetic run many."""
    side = task_path.with_suffix(".toml")
    text = task_path.read_bytes() + b"\0" + (side.read_bytes() if side.is_file() else b"")
    return hashlib.sha256(task_path.name.encode() + b"\0" + text).hexdigest()


def _own_graph(task_path: Path) -> Any:
    """The task captured at its own sizes (shapes only); torch.export is slow, so once per task."""
    from ..capture import capture_at
    from ..tasks import load_task

    key = _task_digest(task_path)
    if key not in _GRAPHS:
        _GRAPHS[key] = capture_at(load_task(task_path), meta=True)
    return _GRAPHS[key]


def _profile_bound(source: str, machine: str, file: str, task_path: Path) -> KernelTiming | None:
    """Time a whole-task kernel at the task's own sizes (as the verifier did); None if it cannot bind."""
    import asp_lang

    from ..solution import KernelSolution

    try:
        graph = _own_graph(task_path)
        return report_to_timing(file, KernelSolution(source, file, asp_lang.load_machine(machine)).time(graph).report)
    except Exception:  # noqa: BLE001 - fall back to the kernel's default sizes
        return None


def kernel_timings(kind: str, files: list[tuple[str, str]], machine: str, task_path: Path | None) -> list[KernelTiming]:
    """The timing of every file of an entry, in execution order (see the module doc)."""
    if kind == "kernel" and len(files) == 1 and task_path is not None and task_path.is_file():
        bound = _profile_bound(files[0][1], machine, files[0][0], task_path)
        if bound is not None:
            return [replace(bound, at="the task's own sizes")]
    at = "the task's own sizes" if kind == "plan" else "the kernel's default sizes (it did not bind to its task)"
    return [replace(_profile_text(text, machine, name), at=at) for name, text in files]


@functools.lru_cache(maxsize=256)
def baseline_traffic(task_path: str, machine: str) -> tuple[float, float] | None:
    """(seconds, HBM bytes) of the task's op-by-op baseline chain; None if the task cannot be loaded."""
    import asp_lang

    from ..tasks import load_task
    from ..verify import baseline_timing

    try:
        sec, _, hbm = baseline_timing(load_task(task_path), asp_lang.load_machine(machine))
        return sec, hbm
    except Exception:  # noqa: BLE001 - the roofline chart then shows the kernel alone
        return None


__all__ = ["OpRow", "SocketTiming", "KernelTiming", "kernel_timings", "baseline_traffic", "report_to_timing"]
