"""Syntax highlighting of ASP kernels for the review report and the terminal view.

A tokenizer of its own (not the parser's): a review shows *any* text a campaign stored,
including kernels that do not parse, so it never raises; every character of the input lands
in exactly one token, so the highlighted text is the source. The HTML form escapes every
token (kernel text is untrusted: an LLM wrote it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from markupsafe import Markup, escape

KEYWORDS = frozenset({"kernel", "sizes", "fn", "let", "return"})
DTYPES = frozenset({"f32", "bf16", "f16", "i32", "bool"})
TIERS = frozenset({"hbm", "ddr"})


def _names(module: str, attr: str) -> frozenset[str]:
    """Operator / builtin names from asp_lang's registries (the language's own list)."""
    try:
        mod = __import__(module, fromlist=[attr])
        return frozenset(getattr(mod, attr))
    except Exception:  # noqa: BLE001 - highlighting must not depend on the emulator importing
        return frozenset()


STREAM_OPS = _names("asp_lang.ops", "OPS")
BUILTINS = _names("asp_lang.tilefn", "BUILTINS")

_TOKEN_RE = re.compile(r"""
    (?P<comment>\#[^\n]*)
  | (?P<ws>\s+)
  | (?P<number>(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>->|\*\*|==|!=|<=|>=|[()\[\]{},=:@+\-*/%<>&|~;])
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)


@dataclass(frozen=True)
class Token:
    kind: str   # comment | ws | number | keyword | dtype | tier | stream_op | builtin | name | op | other
    text: str


def tokenize(source: str) -> list[Token]:
    """Split ``source`` into classified tokens; ``"".join(t.text for t in tokens) == source``."""
    out: list[Token] = []
    for m in _TOKEN_RE.finditer(source):
        kind, text = m.lastgroup or "other", m.group()
        if kind == "name":
            kind = ("keyword" if text in KEYWORDS else "dtype" if text in DTYPES else "tier" if text in TIERS
                    else "stream_op" if text in STREAM_OPS else "builtin" if text in BUILTINS else "name")
        out.append(Token(kind, text))
    return out


# punctuation keeps the default colour: a span per bracket and comma would double the report's size
_CSS_CLASS = {"comment": "c", "number": "n", "keyword": "k", "dtype": "t", "tier": "t", "stream_op": "o",
              "builtin": "b"}


def to_html(source: str) -> Markup:
    """The source as escaped text, tokens of a class in ``<span class=..>`` (styled by the report's CSS)."""
    parts = []
    for t in tokenize(source):
        cls = _CSS_CLASS.get(t.kind)
        parts.append(Markup('<span class="{}">{}</span>').format(cls, t.text) if cls else escape(t.text))
    return Markup("").join(parts)


RICH_STYLE = {"comment": "dim italic", "number": "cyan", "keyword": "bold magenta", "dtype": "green",
              "tier": "green", "stream_op": "bold blue", "builtin": "yellow", "op": "bright_black"}


def to_rich(source: str):
    """The source as a :class:`rich.text.Text` with the same classes as the HTML form."""
    from rich.text import Text

    text = Text()
    for t in tokenize(source):
        text.append(t.text, style=RICH_STYLE.get(t.kind, ""))
    return text


__all__ = ["Token", "tokenize", "to_html", "to_rich", "KEYWORDS", "STREAM_OPS", "BUILTINS"]
