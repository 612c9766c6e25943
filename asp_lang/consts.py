"""Compile-time integer expressions: sizes, tile shapes, axes, repeat counts.

They are evaluated once sizes are bound, with exact division (a size expression that does
not divide evenly is an error, not a silent floor) and bounds that keep a fuzzed program from
building astronomically large numbers.
"""

from __future__ import annotations

from .errors import ArgumentError, SizeError
from .ir import BinOp, Expr, ListExpr, Name, Num, UnOp

MAX_INT = 2**62
MAX_RANK = 16  # dimensions of a tensor or a tile: stream and tile dimensions together stay within numpy's 64


def eval_int(e: Expr, sizes: dict[str, int], what: str = "this value") -> int:
    """Evaluate an integer expression over bound sizes."""
    if isinstance(e, Num):
        if isinstance(e.value, float):
            raise ArgumentError(f"{what} must be a whole number, got {e.value!r}", e.span)
        v = e.value
    elif isinstance(e, Name):
        if e.id not in sizes:
            raise SizeError(f"'{e.id}' is not a size (known sizes: {', '.join(sorted(sizes)) or 'none'})", e.span)
        v = sizes[e.id]
    elif isinstance(e, UnOp) and e.op == "-":
        v = -eval_int(e.operand, sizes, what)
    elif isinstance(e, BinOp) and e.op in ("+", "-", "*", "/", "%"):
        a = eval_int(e.left, sizes, what)
        b = eval_int(e.right, sizes, what)
        if e.op == "+":
            v = a + b
        elif e.op == "-":
            v = a - b
        elif e.op == "*":
            v = a * b
        else:
            if b == 0:
                raise SizeError(f"division by zero in {what}", e.span)
            if e.op == "%":
                v = a % b
            else:
                if a % b:
                    raise SizeError(f"{a} / {b} is not a whole number in {what}", e.span)
                v = a // b
    else:
        raise ArgumentError(f"{what} must be an integer expression over sizes "
                            "(numbers, size names, + - * / %)", getattr(e, "span", None))
    if abs(v) > MAX_INT:
        raise SizeError(f"{what} is too large ({v})", getattr(e, "span", None))
    return v


def eval_int_list(e: Expr, sizes: dict[str, int], what: str) -> tuple[int, ...]:
    if not isinstance(e, ListExpr):
        raise ArgumentError(f"{what} must be a list like [4, N]", getattr(e, "span", None))
    return tuple(eval_int(i, sizes, what) for i in e.items)


def eval_positive(e: Expr, sizes: dict[str, int], what: str) -> int:
    v = eval_int(e, sizes, what)
    if v <= 0:
        raise SizeError(f"{what} must be positive, got {v}", getattr(e, "span", None))
    return v
