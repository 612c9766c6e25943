"""Errors of the ASP toolchain.

Every user-facing mistake is an :class:`AspError` subclass carrying a source span, so it can
be rendered as ``file:line:col: error: message`` with the line and a caret, and in a one-line
form short enough to feed back to an LLM (``ERROR[ShapeError] k.asp:12:9 ...``). Errors are
plain data and pickle, so they cross process boundaries (the evaluator runs kernels in a
subprocess).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A 1-based line/column range in one source file."""

    line: int
    col: int
    end_col: int | None = None

    def __str__(self) -> str:
        return f"{self.line}:{self.col}"


NO_SPAN = Span(0, 0)


class AspError(Exception):
    """Base of every documented ASP error. ``kind`` names it in reports and docs/asp.md."""

    kind = "AspError"

    def __init__(self, message: str, span: Span | None = None, filename: str = "<kernel>",
                 source: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span or NO_SPAN
        self.filename = filename
        self.source = source

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.span, self.filename, self.source))

    def located(self, filename: str, source: str | None) -> "AspError":
        """Attach the file this error belongs to (parsers and checkers know only spans)."""
        self.filename = filename
        self.source = source
        return self

    def location(self) -> str:
        if self.span.line <= 0:
            return self.filename
        return f"{self.filename}:{self.span.line}:{self.span.col}"

    def render(self) -> str:
        """``file:line:col: error: message`` plus the source line and a caret."""
        head = f"{self.location()}: error: {self.message} [{self.kind}]"
        if not self.source or self.span.line <= 0:
            return head
        lines = self.source.splitlines()
        if self.span.line > len(lines):
            return head
        text = lines[self.span.line - 1]
        width = max(1, (self.span.end_col or self.span.col + 1) - self.span.col)
        caret = " " * (self.span.col - 1) + "^" + "~" * (width - 1)
        return f"{head}\n{text}\n{caret}"

    def short(self) -> str:
        """One line, for feedback to an agent."""
        return f"ERROR[{self.kind}] {self.location()} {self.message}"

    def __str__(self) -> str:
        return self.render()


def _rebuild(cls, message, span, filename, source):
    return cls(message, span, filename, source)


class ParseError(AspError):
    """The text is not ASP: a bad token, a missing bracket, an unexpected word."""
    kind = "ParseError"


class NameError_(AspError):
    """A name is used before it is defined, defined twice, or names the wrong kind of thing."""
    kind = "NameError"


class TypeError_(AspError):
    """Element types do not fit: dtypes differ, a tile is given where a selector is needed."""
    kind = "TypeError"


class ShapeError(AspError):
    """Tile shapes or stream dimensions do not fit together."""
    kind = "ShapeError"


class ArgumentError(AspError):
    """An operator or tile function got a missing, unknown or ill-typed argument."""
    kind = "ArgumentError"


class SizeError(AspError):
    """A size has no value, is not a positive integer, or a tile does not divide a dimension."""
    kind = "SizeError"


class AffineError(AspError):
    """A stream is consumed twice (use copy) or never consumed."""
    kind = "AffineError"


class ResourceError(AspError):
    """The program needs more than the machine has, even time-multiplexed."""
    kind = "ResourceError"


class LimitError(AspError):
    """The interpreter's caps on elements, bytes or steps were exceeded."""
    kind = "LimitError"


class InputError(AspError):
    """Inputs given to ``run`` do not match the kernel's parameters."""
    kind = "InputError"


class MachineError(AspError):
    """A machine description is malformed or names an unknown preset."""
    kind = "MachineError"


class RoutingError(AspError):
    """Data-dependent stream lengths cannot be resolved (bad selector values or counts)."""
    kind = "RoutingError"


class CollectiveError(AspError):
    """Sockets of a group cannot complete their communication: a collective some socket of its
    group never reaches, a recv with no send before it, a send nobody receives (each would wait
    forever), or a replicated result the sockets disagree on."""
    kind = "CollectiveError"


ERROR_KINDS: tuple[type[AspError], ...] = (
    ParseError, NameError_, TypeError_, ShapeError, ArgumentError, SizeError, AffineError,
    ResourceError, LimitError, InputError, MachineError, RoutingError, CollectiveError,
)
