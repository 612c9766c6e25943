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

from ..llm.client import estimate_tokens

PROMPTS_ENV = "AGENTFORGE_PROMPTS"
_REPO = Path(__file__).resolve().parents[2]
#: the prompt templates (prompts/NAME.j2), one per agent role; not the fusion templates (author.TEMPLATES)
PROMPT_TEMPLATES = ("planner", "worker", "reflector")

#: docs/asp.md sections, most useful first (by their number; 0 is the text before section 1; the
#: compact reference adds 11, worked kernels, and 12, the index of sections available on request)
SECTION_PRIORITY = (0, 12, 10, 2, 4, 5, 3, 11, 9, 1, 7, 6, 8)


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
                      f"{', '.join(t + '.j2' for t in PROMPT_TEMPLATES)}")


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


# ------------------------------------------------------------------ the compact reference

#: the parts of docs/asp.md every worker prompt carries: the grammar and program rules, how load
#: and store tile, the operator table, the tile-function builtins and the checklist
COMPACT_PARTS = ("2.3", "2.4", "2.5", "2.6", "2.7", "2.8", "3.1", "3.5", "3.6", "4.1", "5.3", "5.4", "10")

#: task class -> (worked kernels in docs/examples, the idiom subsections of section 9)
CLASS_EXAMPLES = {
    "attention": (("flash_attention.asp", "softmax_online.asp"), ("9.5",)),
    "moe": (("moe_top1.asp", "bmm.asp"), ("9.6",)),
    "matmul": (("gemm.asp", "bmm.asp"), ("9.3", "9.4")),
    "rope": (("rope_neox.asp", "vector_add.asp"), ("9.1",)),
    "norm": (("rmsnorm.asp", "layernorm.asp"), ("9.1",)),
    "softmax": (("softmax_online.asp", "rmsnorm.asp"), ("9.2",)),
    "elementwise": (("vector_add.asp", "rmsnorm.asp"), ("9.1",)),
}
MAX_EXAMPLES = 3

REQUEST_HELP = ("To read one, write a line `REFERENCE: <number>` (e.g. `REFERENCE: 4.3`; several numbers may be "
                "separated by commas) in your reply. A reply with such a line and no kernel gets the sections at "
                "once, in this conversation; with a kernel, they come with the next attempt.")


def task_classes(kinds: set[str]) -> list[str]:
    """The classes of a task from its op kinds (``agentforge.capture.op_kind``), most specific
    first: they choose the worked kernels of the compact reference."""
    out = []
    mm = kinds & {"mm", "addmm", "bmm", "matmul", "linear"}
    if "bmm" in kinds and kinds & {"topk", "argmax", "scatter"}:
        out.append("moe")
    if mm and kinds & {"softmax"} and "bmm" in kinds:
        out.append("attention")
    if mm:
        out.append("matmul")
    if "cat" in kinds and ("neg" in kinds or "slice" in kinds):
        out.append("rope")
    if kinds & {"layer_norm", "rsqrt", "var_mean", "var", "native_layer_norm"}:
        out.append("norm")
    if kinds & {"softmax", "log_softmax"}:
        out.append("softmax")
    out.append("elementwise")
    return list(dict.fromkeys(out))


def _sections(text: str) -> dict[str, str]:
    """Every numbered part of the reference: "0" (the preamble), "4" (a whole section), "4.3"."""
    out: dict[str, str] = {}
    for i, sec in enumerate(_split(text, "## ")):
        n = 0 if i == 0 else _number(sec)
        if n is None:
            continue
        out[str(n)] = sec
        for sub in _split(sec, "### ")[1:]:
            m = re.match(r"###\s+(\d+\.\d+)\s", sub)
            if m:
                out[m.group(1)] = sub
    return out


def _head(section: str) -> str:
    """A section's text before its first subsection."""
    return _split(section, "### ")[0]


def compact_reference(text: str, classes: list[str], examples_dir: Path | None = None) -> tuple[str, list[str]]:
    """The compact ASP reference for a task of ``classes``: :data:`COMPACT_PARTS`, the idioms and
    up to :data:`MAX_EXAMPLES` worked kernels of the classes, and an index of every other section
    (available on request, see :func:`reference_requests`). Returns the text and the worked
    kernels' file names. Keeps docs/asp.md's "## N." headings, so :func:`trim_reference` can cut it."""
    secs = _sections(text)
    examples_dir = examples_dir or (_REPO / "docs" / "examples")
    files: list[str] = []
    idioms: list[str] = []
    for c in classes:
        ex, idi = CLASS_EXAMPLES.get(c, CLASS_EXAMPLES["elementwise"])
        files += [f for f in ex if f not in files]
        idioms += [i for i in idi if i not in idioms]
    files = files[:MAX_EXAMPLES]
    wanted = set(COMPACT_PARTS) | set(idioms)
    parts = [secs.get("0", "").split("\nContents")[0].rstrip() + "\n\nThis is a compact reference: the parts "
             "needed to write a kernel, worked kernels like yours, and an index of the other sections, which you "
             "can ask for (section 12).\n"]
    index: list[str] = []
    for top in sorted((k for k in secs if "." not in k and k != "0"), key=int):
        subs = sorted((k for k in secs if k.startswith(top + ".")), key=lambda k: int(k.split(".")[1]))
        kept = [k for k in subs if k in wanted]
        if top in wanted:
            parts.append(secs[top])
            continue
        if kept:
            parts.append("\n".join([_head(secs[top]).rstrip()] + [secs[k].rstrip() for k in kept]) + "\n")
        index += [_title(secs[k]) for k in subs if k not in kept]
        if not subs:
            index.append(_title(secs[top]))
        elif not kept:
            index.insert(len(index) - len(subs), _title(secs[top]) + " (whole section)")
    ex_text = ["## 11. Worked kernels for tasks like this one\n",
               "Complete kernels from docs/examples/, verified against PyTorch:\n"]
    for f in files:
        p = examples_dir / f
        if p.is_file():
            ex_text.append(f"### {f}\n\n```asp\n{p.read_text(encoding='utf-8').rstrip()}\n```\n")
    parts.append("\n".join(ex_text))
    parts.append("## 12. More reference on request\n\nLeft out here, available by number:\n" +
                 "\n".join(f"- {t}" for t in index) + "\n\n" + REQUEST_HELP + "\n")
    return "\n".join(p.rstrip("\n") + "\n" for p in parts), files


_REQUEST = re.compile(r"^\s*REFERENCE:\s*(.+?)\s*$", re.MULTILINE | re.IGNORECASE)


def reference_requests(reply: str) -> list[str]:
    """The section numbers a reply asks for (``REFERENCE: 4.3, 6``), in order, without repeats."""
    out: list[str] = []
    for m in _REQUEST.finditer(reply or ""):
        for part in re.split(r"[,;]", m.group(1)):
            num = re.match(r"\s*(?:section\s*)?(\d+(?:\.\d+)?)", part, re.IGNORECASE)
            if num and num.group(1) not in out:
                out.append(num.group(1))
    return out


def reference_sections(text: str, numbers: list[str], max_chars: int = 40000) -> tuple[str, list[str]]:
    """The requested sections of the reference (whole, as docs/asp.md has them), and the numbers
    that do not exist; at most ``max_chars`` characters (a request for everything is cut, and says so)."""
    secs = _sections(text)
    found, missing = [], []
    for n in numbers:
        (found if n in secs else missing).append(n)
    out = "\n".join(secs[n].rstrip() + "\n" for n in found)
    if len(out) > max_chars:
        out = out[:max_chars] + "\n[cut: ask for fewer sections at a time]\n"
    return out, missing


__all__ = ["render_messages", "prompts_dir", "trim_reference", "load_asp_reference", "numbered", "PromptError",
           "PROMPTS_ENV", "SECTION_PRIORITY", "compact_reference", "task_classes", "reference_requests",
           "reference_sections", "COMPACT_PARTS", "CLASS_EXAMPLES"]
