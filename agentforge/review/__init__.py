"""Review a campaign: a self-contained HTML report (``agentforge review``) and a terminal
view of one task (``agentforge show``). See docs/review.md.

Layers: :mod:`.data` reads a run directory or library into plain records; :mod:`.html`
(with :mod:`.charts` and :mod:`.highlight`) and :mod:`.terminal` render those records.
"""

from __future__ import annotations

from .data import Review, ReviewError, TaskView, load_review
from .html import render_html

__all__ = ["Review", "ReviewError", "TaskView", "load_review", "render_html"]
