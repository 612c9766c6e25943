"""Prompts: find and render the Jinja2 templates in ``prompts/``, and trim the ASP reference.

Templates live in the repository's top-level ``prompts/`` folder (fixed by the product card).
They are found, in order, in: the folder named by the environment variable
``AGENTFORGE_PROMPTS`` (an explicit override: it must exist), then ``<repo>/prompts`` next to
the ``agentforge`` package (a checkout or an editable install). Each template defines two
blocks, ``system`` and ``user``; :func:`render_messages` turns them into chat messages.

The worker's prompt carries docs/asp.md trimmed to a token budget (:func:`trim_reference`):
whole sections in priority order (checklist, structure, types, operators, tile functions,
idioms, ...), subsections of the section that no longer fits whole, and a line naming what was
left out. Tokens are estimated as characters / 4 throughout.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from .client import estimate_tokens

PROMPTS_ENV = "AGENTFORGE_PROMPTS"
_REPO = Path(__file__).resolve().parents[2]
TEMPLATES = ("planner", "worker", "reflector")

#: docs/asp.md sections, most useful first (by their number; 0 is the text before section 1)
SECTION_PRIORITY = (0, 10, 2, 3, 4, 5, 9, 1, 7, 6, 8)


class PromptError(Exception):
    """A template is missing or does not render."""


def prompts_dir() -> Path:
    """Where the templates are: ``$AGENTFORGE_PROMPTS`` if set, else ``<repo>/prompts``."""
    env = os.environ.get(PROMPTS_ENV)
    if env:
        p = Path(env)
        if not (p / "worker.j2").is_file():
            raise PromptError(f"{PROMPTS_ENV}={env} does not hold the prompt templates (worker.j2 etc.)")
        return p
    p = _REPO / "prompts"
    if (p / "worker.j2").is_file():
        return p
    raise PromptError(f"prompt templates not found in {p}; set {PROMPTS_ENV} to the folder holding "
                      f"{', '.join(t + '.j2' for t in TEMPLATES)}")


@lru_cache(maxsize=8)
def _env(folder: str) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(folder), undefined=jinja2.StrictUndefined,
                             autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["tojson_pretty"] = _tojson_pretty
    env.filters["numbered"] = numbered
    return env


def _tojson_pretty(value: Any) -> str:
    """Indented JSON with lists of numbers kept on one line (``"nodes": [0, 1, 2]``)."""
    import json

    text = json.dumps(value, indent=1, ensure_ascii=False)
    return re.sub(r"\[([^\[\]{}\"]*)\]", lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")
                                                                  if x.strip()) + "]", text)


def numbered(source: str, start: int = 1) -> str:
    """Source with line numbers (``  3 | ...``), so file:line:col errors can be found in it."""
    lines = source.rstrip("\n").split("\n")
    w = len(str(start + len(lines) - 1))
    return "\n".join(f"{i:>{w}} | {line}" for i, line in enumerate(lines, start))


def render_messages(name: str, **variables: Any) -> list[dict[str, str]]:
    """Render ``prompts/<name>.j2`` into ``[{"role": "system", ...}, {"role": "user", ...}]``."""
    env = _env(str(prompts_dir()))
    try:
        tmpl = env.get_template(f"{name}.j2")
    except jinja2.TemplateNotFound:
        raise PromptError(f"template {name}.j2 not found in {prompts_dir()}") from None
    out = []
    try:
        ctx = tmpl.new_context(variables)
        for role in ("system", "user"):
            if role not in tmpl.blocks:
                raise PromptError(f"template {name}.j2 has no {{% block {role} %}}")
            text = "".join(tmpl.blocks[role](ctx)).strip()
            out.append({"role": role, "content": text + "\n"})
    except jinja2.TemplateError as e:
        raise PromptError(f"template {name}.j2 does not render: {e}") from None
    return out


# ------------------------------------------------------------------ the ASP reference

def load_asp_reference(text: str | None = None) -> str:
    """``text`` if given (TaskContext.asp_reference), else the repository's docs/asp.md."""
    if text:
        return text
    p = _REPO / "docs" / "asp.md"
    if not p.is_file():
        raise PromptError(f"the ASP reference {p} is missing and TaskContext.asp_reference is empty")
    return p.read_text(encoding="utf-8")


def _split(text: str, level: str) -> list[str]:
    """Split at heading lines starting with ``level`` ("## " / "### "), outside code fences."""
    parts, cur, fenced = [], [], False
    for line in text.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith(level) and cur:
            parts.append("\n".join(cur))
            cur = []
        cur.append(line)
    parts.append("\n".join(cur))
    return parts


def _number(section: str) -> int | None:
    m = re.match(r"##\s+(\d+)\.", section)
    return int(m.group(1)) if m else None


def trim_reference(text: str, max_tokens: int) -> tuple[str, list[str]]:
    """``text`` (docs/asp.md) cut to about ``max_tokens`` tokens, and the headings left out.

    Whole sections are kept in :data:`SECTION_PRIORITY` order while they fit; a section that
    does not fit whole contributes the subsections that do. Kept parts stay in document order."""
    if estimate_tokens(text) <= max_tokens:
        return text, []
    sections = _split(text, "## ")
    numbered_secs = {(0 if i == 0 else (_number(s) or 100 + i)): s for i, s in enumerate(sections)}
    order = [n for n in SECTION_PRIORITY if n in numbered_secs] + \
        [n for n in numbered_secs if n not in SECTION_PRIORITY]
    budget = max_tokens - 60                     # room for the "left out" note
    kept: dict[int, str] = {}
    omitted: list[str] = []
    for n in order:
        sec = numbered_secs[n]
        cost = estimate_tokens(sec)
        if cost <= budget:
            kept[n] = sec
            budget -= cost
            continue
        subs = _split(sec, "### ")
        head, rest = subs[0], subs[1:]
        if estimate_tokens(head) > budget or not rest:
            omitted.append(_title(sec))
            continue
        parts = [head]
        budget -= estimate_tokens(head)
        for sub in rest:
            c = estimate_tokens(sub)
            if c <= budget:
                parts.append(sub)
                budget -= c
            else:
                omitted.append(_title(sub))
        kept[n] = "\n".join(parts)
    out = "\n".join(kept[n] for n in sorted(kept))
    if omitted:
        out += ("\n\n[Reference trimmed to fit the prompt; left out: " + "; ".join(omitted) + "]\n")
    return out, omitted


def _title(section: str) -> str:
    first = section.strip().split("\n", 1)[0]
    return first.lstrip("#").strip()


__all__ = ["render_messages", "prompts_dir", "trim_reference", "load_asp_reference", "numbered", "PromptError",
           "PROMPTS_ENV", "SECTION_PRIORITY"]
