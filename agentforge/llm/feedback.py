"""Feedback for the model: an evaluation as the roles read it, and as a prompt shows it."""

from __future__ import annotations

import re
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


def render_feedback(fb: Feedback | None, source: str | None = None) -> str:
    """The feedback block of a prompt: verdict line, then the rendered error when there is one.

    When the evaluator gave only the short form (``ERROR[Kind] file:line:col message``) and the
    candidate's ``source`` is known, the source line and a caret are added."""
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
        if not fb.error and (where := locate(fb.reason, source)):
            lines.append(where)
    return "\n".join(lines)


__all__ = ["feedback_from_evaluation", "render_feedback", "locate"]
