"""The ASP syntax tree: immutable dataclasses, one per construct.

Spans and comments ride along for error messages and the formatter but spans are excluded
from equality, so ``parse(print(tree)) == tree`` compares structure only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import NO_SPAN, Span


def _span() -> Span:
    return field(default=NO_SPAN, compare=False, repr=False)


# --- expressions (shared by operator arguments, size expressions and tile functions) ---

@dataclass(frozen=True)
class Num:
    value: int | float
    span: Span = _span()


@dataclass(frozen=True)
class Name:
    id: str
    span: Span = _span()


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple["Expr", ...] = ()
    kwargs: tuple[tuple[str, "Expr"], ...] = ()
    span: Span = _span()

    def kw(self, key: str) -> "Expr | None":
        for k, v in self.kwargs:
            if k == key:
                return v
        return None


@dataclass(frozen=True)
class BinOp:
    op: str
    left: "Expr"
    right: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class UnOp:
    op: str
    operand: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class ListExpr:
    items: tuple["Expr", ...]
    span: Span = _span()


@dataclass(frozen=True)
class TupleExpr:
    items: tuple["Expr", ...]
    span: Span = _span()


Expr = Num | Name | Call | BinOp | UnOp | ListExpr | TupleExpr


# --- declarations ---

@dataclass(frozen=True)
class Param:
    name: str
    dtype: str
    shape: tuple[Expr, ...]
    tier: str = "hbm"
    span: Span = _span()
    split: Expr | None = None  # '@split(axis)': each socket of a group holds 1/P of this axis


@dataclass(frozen=True)
class SizeDef:
    name: str
    value: int
    comments: tuple[str, ...] = ()
    note: str = ""
    span: Span = _span()


@dataclass(frozen=True)
class Let:
    name: str
    value: Expr
    comments: tuple[str, ...] = ()
    note: str = ""
    span: Span = _span()


@dataclass(frozen=True)
class FnDef:
    name: str
    params: tuple[str, ...]
    lets: tuple[Let, ...]
    result: Expr
    comments: tuple[str, ...] = ()
    result_comments: tuple[str, ...] = ()
    note: str = ""
    span: Span = _span()


@dataclass(frozen=True)
class Stmt:
    targets: tuple[str, ...]
    call: Call
    comments: tuple[str, ...] = ()
    note: str = ""
    span: Span = _span()


@dataclass(frozen=True)
class Kernel:
    name: str
    params: tuple[Param, ...]
    results: tuple[Param, ...]
    sizes: tuple[SizeDef, ...]
    fns: tuple[FnDef, ...]
    body: tuple[Stmt, ...]
    comments: tuple[str, ...] = ()
    tail_comments: tuple[str, ...] = ()
    span: Span = _span()
    sockets: str | None = None  # the size named by a 'sockets P = N' line: the kernel runs on P sockets

    def fn(self, name: str) -> FnDef | None:
        return next((f for f in self.fns if f.name == name), None)

    def default_sizes(self) -> dict[str, int]:
        return {s.name: s.value for s in self.sizes}


def names(e) -> set[str]:
    """Every identifier an expression (or call, with its keyword arguments) mentions."""
    if isinstance(e, Name):
        return {e.id}
    out: set[str] = set()
    if isinstance(e, (BinOp,)):
        return names(e.left) | names(e.right)
    if isinstance(e, UnOp):
        return names(e.operand)
    if isinstance(e, Call):
        for a in e.args:
            out |= names(a)
        for _, v in e.kwargs:
            out |= names(v)
    if isinstance(e, (ListExpr, TupleExpr)):
        for i in e.items:
            out |= names(i)
    return out
