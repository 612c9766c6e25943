"""Tolerant extraction of what a reply should hold: one ASP kernel, or one JSON value.

Models wrap answers in code fences and prose; both extractors accept that. What they cannot
use raises :class:`ReplyParseError`, whose message is short and written to be sent back to
the model as feedback ("no ASP kernel in the reply: ...", "invalid JSON: trailing comma ...").
Extraction never executes anything: a kernel is text handed to the evaluator.
"""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_KERNEL = re.compile(r"^[ \t]*kernel[ \t]+[A-Za-z_][A-Za-z0-9_]*[ \t]*\(", re.M)
_TRAILING_COMMA = re.compile(r",(\s*)([}\]])")


class ReplyParseError(ValueError):
    """The reply does not hold what was asked; the message is short feedback for the model."""


# ------------------------------------------------------------------ ASP kernels

def _fences(text: str) -> list[tuple[str, str]]:
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


def _cut_kernel(text: str, start: int) -> str:
    """From ``start`` (a ``kernel`` header) to the brace closing its body; to the end if unbalanced."""
    depth, i, opened = 0, start, False
    n = len(text)
    while i < n:
        c = text[i]
        if c == "#":                     # comment to end of line: braces there do not count
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c == "{":
            depth += 1
            opened = True
        elif c == "}":
            depth -= 1
            if opened and depth == 0:
                return text[start:i + 1]
        i += 1
    return text[start:]


def _leading_comments(text: str, start: int) -> int:
    """Move ``start`` back over comment lines directly above the kernel header."""
    lines_before = text[:start].split("\n")
    keep = len(lines_before) - 1           # the (partial) line of the header itself
    k = keep
    while k > 0 and lines_before[k - 1].lstrip().startswith("#"):
        k -= 1
    return len("\n".join(lines_before[:k])) + (1 if k else 0)


def extract_kernel(text: str) -> str:
    """The ASP kernel in ``text``: the last ```` ```asp ```` block holding a ``kernel`` header, else
    the last other fenced block holding one, else bare text from a ``kernel NAME(`` line to
    the end of its body. Raises :class:`ReplyParseError` when there is none."""
    if not isinstance(text, str) or not text.strip():
        raise ReplyParseError("the reply is empty: answer with one ```asp block holding the kernel")
    fences = _fences(text)
    asp = [body for lang, body in fences if lang == "asp"]
    with_kernel = [body for body in asp if _KERNEL.search(body)]
    if with_kernel:
        return with_kernel[-1].strip() + "\n"
    others = [body for lang, body in fences if lang != "asp" and _KERNEL.search(body)]
    if others:
        return others[-1].strip() + "\n"
    if asp:
        raise ReplyParseError("the ```asp block holds no `kernel NAME(params) -> (results) { ... }` header")
    m = None
    for m in _KERNEL.finditer(text):
        pass                              # the last bare header: prose may mention an earlier one
    if m is not None:
        start = _leading_comments(text, m.start())
        return _cut_kernel(text, start).strip() + "\n"
    raise ReplyParseError("no ASP kernel in the reply: answer with one ```asp block holding "
                          "`kernel NAME(params) -> (results) { ... }`")


# ------------------------------------------------------------------ JSON

def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads(s: str) -> Any:
    return json.loads(s, parse_constant=_reject_constant)


def _explain(s: str, err: Exception, offset: int = 0) -> str:
    """A short reason why ``s`` (from ``offset`` on) is not JSON."""
    if isinstance(err, json.JSONDecodeError):
        for m in _TRAILING_COMMA.finditer(s, offset):
            if m.end() - 1 == err.pos:   # the decoder stopped at the bracket after a comma
                line = s.count("\n", 0, m.start()) + 1
                col = m.start() - (s.rfind("\n", 0, m.start()) + 1) + 1
                return (f"invalid JSON: trailing comma before {m.group(2)!r} at line {line} column {col} "
                        "(JSON does not allow trailing commas)")
        if "property name enclosed in double quotes" in err.msg and "'" in s:
            return f"invalid JSON at line {err.lineno} column {err.colno}: keys and strings need double quotes"
        return f"invalid JSON: {err.msg} at line {err.lineno} column {err.colno}"
    return f"invalid JSON: {err}"


def extract_json(text: str) -> Any:
    """The JSON value in ``text``: the whole text, else a ```` ```json ```` (or plain) fenced
    block, else the first ``{...}`` object embedded in prose. Trailing commas, single quotes,
    NaN/Infinity and truncated objects are rejected with a short reason
    (:class:`ReplyParseError`); nothing is repaired silently."""
    if not isinstance(text, str) or not text.strip():
        raise ReplyParseError("the reply is empty: answer with one JSON object")
    s = text.strip()
    first_error: str | None = None
    candidates: list[str] = []
    if s[:1] in "{[":
        candidates.append(s)
    fences = _fences(text)
    candidates += [b.strip() for lang, b in fences if lang == "json"]
    candidates += [b.strip() for lang, b in fences if lang in ("", "jsonc", "javascript", "js")]
    for c in candidates:
        if not c:
            continue
        try:
            return _loads(c)
        except ValueError as e:
            first_error = first_error or _explain(c, e)
    if first_error is None:
        # prose around an object: decode from each '{' until one parses; if none does, report
        # the attempt that got furthest (the real object, not a brace in the prose)
        dec = json.JSONDecoder(parse_constant=_reject_constant)
        furthest = -1
        for m in re.finditer(r"\{", s):
            try:
                value, _ = dec.raw_decode(s, m.start())
                return value
            except ValueError as e:
                progress = (e.pos - m.start()) if isinstance(e, json.JSONDecodeError) else 0
                if progress > furthest:
                    furthest, first_error = progress, _explain(s, e, m.start())
    raise ReplyParseError(first_error or "no JSON object in the reply: answer with one JSON object")


__all__ = ["extract_kernel", "extract_json", "ReplyParseError"]
