"""The canonical printer: one layout for every kernel, so ``parse(fmt(k)) == k``.

Layout: sizes first, then tile functions, then the stream body, two-space indent, one
item per line, minimal parentheses (precedence-aware), comments kept.
"""

from __future__ import annotations

from .ir import BinOp, Call, Expr, FnDef, Kernel, ListExpr, Name, Num, Param, Stmt, TupleExpr, UnOp

# Binding strength: higher binds tighter. Matches syntax._BINARY_LEVELS.
_PREC = {"|": 1, "&": 2, "==": 3, "!=": 3, "<": 3, "<=": 3, ">": 3, ">=": 3,
         "+": 4, "-": 4, "*": 5, "/": 5, "%": 5, "@": 5}
_UNARY_PREC = 6
_POW_PREC = 7
_ATOM_PREC = 8


def _prec(e: Expr) -> int:
    if isinstance(e, BinOp):
        return _POW_PREC if e.op == "**" else _PREC[e.op]
    if isinstance(e, UnOp):
        return _UNARY_PREC
    return _ATOM_PREC


def fmt_num(v: int | float) -> str:
    if isinstance(v, bool) or isinstance(v, int):
        return str(int(v))
    r = repr(float(v))
    return r


def fmt_expr(e: Expr) -> str:
    if isinstance(e, Num):
        return fmt_num(e.value)
    if isinstance(e, Name):
        return e.id
    if isinstance(e, Call):
        parts = [fmt_expr(a) for a in e.args] + [f"{k}={fmt_expr(v)}" for k, v in e.kwargs]
        return f"{e.func}({', '.join(parts)})"
    if isinstance(e, ListExpr):
        return "[" + ", ".join(fmt_expr(i) for i in e.items) + "]"
    if isinstance(e, TupleExpr):
        inner = ", ".join(fmt_expr(i) for i in e.items)
        return f"({inner},)" if len(e.items) == 1 else f"({inner})"
    if isinstance(e, UnOp):
        inner = fmt_expr(e.operand)
        # '- -x' must not become '--x'; a power binds tighter than unary so needs no parens
        if _prec(e.operand) < _UNARY_PREC:
            inner = f"({inner})"
        return f"{e.op}{inner}"
    if isinstance(e, BinOp):
        p = _prec(e)
        left, right = fmt_expr(e.left), fmt_expr(e.right)
        if e.op == "**":
            # right-associative; the base must be an atom or call
            if _prec(e.left) <= _POW_PREC:
                left = f"({left})"
            if _prec(e.right) < _UNARY_PREC:
                right = f"({right})"
        else:
            if _prec(e.left) < p:
                left = f"({left})"
            if _prec(e.right) <= p:
                right = f"({right})"
        return f"{left} {e.op} {right}"
    raise TypeError(f"not an expression: {e!r}")


def _comment_lines(comments: tuple[str, ...], indent: str) -> list[str]:
    return [f"{indent}#{' ' + c if c else ''}" for c in comments]


def _with_note(line: str, note: str) -> str:
    return f"{line}  # {note}" if note else line


def _param(p: Param) -> str:
    shape = ", ".join(fmt_expr(s) for s in p.shape)
    return (f"{p.name}: {p.dtype}[{shape}]" + ("" if p.tier == "hbm" else f" @{p.tier}")
            + ("" if p.split is None else f" @split({fmt_expr(p.split)})"))


def _fn(f: FnDef, ind: str) -> list[str]:
    out = _comment_lines(f.comments, ind)
    head = f"{ind}fn {f.name}({', '.join(f.params)})"
    if not f.lets and not f.result_comments:
        out.append(_with_note(f"{head} = {fmt_expr(f.result)}", f.note))
        return out
    out.append(head + " {")
    for let in f.lets:
        out += _comment_lines(let.comments, ind * 2)
        out.append(_with_note(f"{ind * 2}let {let.name} = {fmt_expr(let.value)}", let.note))
    out += _comment_lines(f.result_comments, ind * 2)
    out.append(f"{ind * 2}return {fmt_expr(f.result)}")
    out.append(ind + "}")
    return out


def _stmt(s: Stmt, ind: str) -> list[str]:
    out = _comment_lines(s.comments, ind)
    lhs = f"{', '.join(s.targets)} = " if s.targets else ""
    out.append(_with_note(f"{ind}{lhs}{fmt_expr(s.call)}", s.note))
    return out


def format_kernel(k: Kernel) -> str:
    """Render ``k`` in canonical form (ends with a newline)."""
    ind = "  "
    lines = _comment_lines(k.comments, "")
    params = ", ".join(_param(p) for p in k.params)
    results = ", ".join(_param(p) for p in k.results)
    lines.append(f"kernel {k.name}({params}) -> ({results}) {{")
    for s in k.sizes:
        lines += _comment_lines(s.comments, ind)
        word = "sockets" if s.name == k.sockets else "sizes"
        lines.append(_with_note(f"{ind}{word} {s.name} = {s.value}", s.note))
    for f in k.fns:
        lines += _fn(f, ind)
    for st in k.body:
        lines += _stmt(st, ind)
    lines += _comment_lines(k.tail_comments, ind)
    lines.append("}")
    return "\n".join(lines) + "\n"
