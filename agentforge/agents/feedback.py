"""Feedback for the model: an evaluation as a prompt shows it (the evaluation as the roles read
it is :meth:`agentforge.agents.roles.Feedback.from_evaluation`).

A rejected kernel's feedback names the failing check (its reason code and what it means), the
evaluator's message (the first mismatching index and values, or the ``file:line:col`` error
with the source line and a caret) and the sizes, seed and input distribution it failed at. A
verified kernel's feedback says where the time goes: speedup and time against the baseline,
the roofline fraction and what bounds it, HBM bytes moved against the task's minimum (its
inputs and outputs once), units used, cycles per section and the busiest operators with what
limits each, so a model that wants to go faster knows what to attack.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .roles import Feedback

MAX_OPS = 8          # operators listed for a verified kernel (the busiest)


_LOCATION = re.compile(r"(?P<file>[\w.<>/-]+\.asp):(?P<line>\d+):(?P<col>\d+)")


def locate(message: str, source: str | None) -> str | None:
    """The source line and a caret under the column that ``message``'s first ``file:line:col``
    points at (the evaluator's short form has the location but not the line)."""
    m = _LOCATION.search(message or "")
    if m is None or not source:
        return None
    lines = source.split("\n")
    line, col = int(m.group("line")), int(m.group("col"))
    if not 1 <= line <= len(lines):
        return None
    text = lines[line - 1]
    return f"{text}\n{' ' * max(0, col - 1)}^"


def _bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f} B"


def _us(sec: float | None) -> str:
    return f"{sec * 1e6:,.2f} us" if sec is not None and math.isfinite(sec) else "?"


def render_verified(fb: Feedback, ctx: Any = None) -> str:
    """Where a verified candidate's time goes (see the module docstring)."""
    lines = [fb.short()]
    if fb.simulated_seconds:
        lines.append(f"time {_us(fb.simulated_seconds)} (baseline {_us(fb.baseline_seconds)})")
    p = fb.profile or {}
    if p.get("roofline_seconds") is not None and fb.roofline_fraction is not None:
        lines.append(f"roofline {_us(p['roofline_seconds'])} ({p.get('roofline_limit')}-bound): this kernel is at "
                     f"{fb.roofline_fraction:.0%} of it")
    minimum = getattr(getattr(ctx, "signature", None), "io_bytes", None)
    if fb.hbm_bytes is not None:
        extra = (f"; the task's minimum (inputs and outputs once) is {_bytes(minimum)}, so "
                 f"{fb.hbm_bytes / minimum:.2f}x the minimum" if minimum else "")
        bw = p.get("hbm_bandwidth_fraction")
        lines.append(f"HBM traffic {_bytes(fb.hbm_bytes)}{extra}" +
                     (f"; achieved {bw:.0%} of HBM peak bandwidth" if bw is not None else ""))
    if p.get("ops") is not None:
        m = getattr(ctx, "machine", None)
        cap = (lambda unit: f" of {getattr(m, unit).count}") if m is not None else (lambda unit: "")
        lines.append(f"units: {p.get('pcu_allocated')}{cap('pcu')} PCUs (busy {p.get('pcu_utilisation', 0):.1%}), "
                     f"{p.get('pmu_allocated')}{cap('pmu')} PMUs, {p.get('agcu_allocated')}{cap('agcu')} AGCUs, "
                     f"SRAM {_bytes(p.get('sram_bytes') or 0)}")
        secs = p.get("section_cycles") or []
        lines.append(f"sections: {p.get('sections')} ({', '.join(f'{c:,.0f}' for c in secs)} cycles)"
                     + (f", reconfiguration {p.get('reconfig_cycles'):,.0f} cycles" if p.get("reconfig_cycles") else ""))
        ops = sorted(p["ops"], key=lambda o: -(o.get("busy_cycles") or 0))
        if ops:
            lines.append("busiest operators (busy cycles, what bounds each):")
            for o in ops[:MAX_OPS]:
                lines.append(f"  line {o.get('line'):>3} {o.get('op'):<10} {o.get('busy_cycles') or 0:>14,.0f} cycles  "
                             f"{o.get('limit'):<8} par={o.get('par')} PCUs={o.get('pcus')} PMUs={o.get('pmus')} "
                             f"HBM {_bytes(o.get('offchip_bytes') or 0)}"
                             + (f" section {o.get('section')}" if (p.get('sections') or 1) > 1 else ""))
            if len(ops) > MAX_OPS:
                lines.append(f"  ... {len(ops) - MAX_OPS} more operators, each busy for less")
        for n in p.get("notes") or []:
            lines.append(f"note: {n}")
    elif p.get("kernels"):
        lines.append(f"a chain of {len(p['kernels'])} kernels, {p.get('reconfigurations', 0)} reconfigurations:")
        for k in sorted(p["kernels"], key=lambda k: -(k.get("seconds") or 0))[:MAX_OPS]:
            lines.append(f"  {k.get('node')} ({k.get('target')}): {_us(k.get('seconds'))}, "
                         f"{(k.get('roofline_fraction') or 0):.0%} of its roofline, bottleneck {k.get('bottleneck')}")
    return "\n".join(lines)


def render_feedback(fb: Feedback | None, source: str | None = None, ctx: Any = None) -> str:
    """The feedback block of a prompt: the verdict, then what to act on.

    When the evaluator gave only the short form (``ERROR[Kind] file:line:col message``) and the
    candidate's ``source`` is known, the source line and a caret are added. ``ctx`` (the task
    context) gives the task's minimum HBM bytes and the machine's unit counts."""
    if fb is None:
        return ""
    if fb.verified:
        return render_verified(fb, ctx)
    from ..verify import REASON_CODES

    head = f"REJECTED ({fb.reason_code}: {REASON_CODES.get(fb.reason_code or '', 'rejected')})"
    lines = [head]
    if fb.error:
        lines.append(fb.error.rstrip())
    if fb.reason and (not fb.error or fb.reason not in fb.error):
        lines.append(fb.reason.rstrip())
        if not fb.error and (where := locate(fb.reason, source)):
            lines.append(where)
    return "\n".join(lines)


__all__ = ["render_feedback", "render_verified", "locate"]
