"""Feedback for the model: an evaluation as the roles read it, and as a prompt shows it."""

from __future__ import annotations

from typing import Any

from ..agents.roles import Feedback


def feedback_from_evaluation(ev: Any) -> Feedback:
    """A :class:`Feedback` from an ``agentforge.verify.Evaluation`` (or its dict form).

    ``error`` carries the rendered ``file:line:col`` message with the source line and caret
    when the evaluator has one (compile errors); otherwise the reason."""
    d = ev if isinstance(ev, dict) else ev.to_dict()
    err = d.get("error") or {}
    rendered = err.get("message") if isinstance(err, dict) else None
    return Feedback(verified=bool(d.get("verified")), reason_code=d.get("reason_code"), reason=d.get("reason"),
                    speedup=d.get("speedup"), roofline_fraction=d.get("roofline_fraction"),
                    bottleneck=d.get("bottleneck"), error=rendered)


def render_feedback(fb: Feedback | None) -> str:
    """The feedback block of a prompt: verdict line, then the rendered error when there is one."""
    if fb is None:
        return ""
    if fb.verified:
        return fb.short()
    from ..verify import REASON_CODES

    head = f"REJECTED ({fb.reason_code}: {REASON_CODES.get(fb.reason_code or '', 'rejected')})"
    lines = [head]
    if fb.error:
        lines.append(fb.error.rstrip())
    if fb.reason and (not fb.error or fb.reason not in fb.error):
        lines.append(fb.reason.rstrip())
    return "\n".join(lines)


__all__ = ["feedback_from_evaluation", "render_feedback"]
