"""Lexer and recursive-descent parser for ASP.

The grammar (docs/asp.md has the full reference)::

    kernel  := comment* 'kernel' NAME '(' params? ')' '->' '(' params ')' '{' item* '}'
    param   := NAME ':' DTYPE '[' expr (',' expr)* ']' ('@' ('hbm' | 'ddr' | 'split' '(' expr ')'))*
    item    := 'sizes' NAME '=' INT (',' NAME '=' INT)*
             | 'sockets' NAME '=' INT
             | 'fn' NAME '(' names? ')' ( '=' expr | '{' ('let' NAME '=' expr)* 'return' expr '}' )
             | (NAME (',' NAME)* '=')? NAME '(' args? ')'
    expr    := Python-like precedence: | & ; comparisons ; + - ; * / % @ ; unary - ~ ; ** ; call

Newlines are not significant. Comments (``#`` to end of line) are kept: a comment on its own
line belongs to the next item, one after code belongs to that line's item.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import ParseError, Span
from .ir import (BinOp, Call, Expr, FnDef, Kernel, Let, ListExpr, Name, Num, Param, SizeDef,
                 Stmt, TupleExpr, UnOp)

DTYPES = ("f32", "bf16", "f16", "i32", "bool")
TIERS = ("hbm", "ddr")
KEYWORDS = ("kernel", "sizes", "fn", "let", "return")


@dataclass(frozen=True)
class Token:
    kind: str  # NAME, INT, FLOAT, OP, EOF
    text: str
    line: int
    col: int

    @property
    def span(self) -> Span:
        return Span(self.line, self.col, self.col + max(1, len(self.text)))


_TOKEN_RE = re.compile(r"""
    (?P<ws>[ \t\r\f]+)
  | (?P<nl>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<float>(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+)
  | (?P<int>\d+)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>->|\*\*|==|!=|<=|>=|[()\[\]{},=:@+\-*/%<>&|~;])
""", re.VERBOSE)


def tokenize(src: str) -> tuple[list[Token], list[Token]]:
    """Split ``src`` into tokens and comments (comments are returned apart, with positions)."""
    tokens: list[Token] = []
    comments: list[Token] = []
    pos, line, line_start = 0, 1, 0
    while pos < len(src):
        m = _TOKEN_RE.match(src, pos)
        col = pos - line_start + 1
        if m is None:
            ch = src[pos]
            raise ParseError(f"unexpected character {ch!r}", Span(line, col, col + 1))
        kind = m.lastgroup
        text = m.group()
        if kind == "nl":
            line += 1
            line_start = m.end()
        elif kind == "comment":
            comments.append(Token("COMMENT", text[1:].strip(), line, col))
        elif kind != "ws":
            tokens.append(Token({"float": "FLOAT", "int": "INT", "name": "NAME", "op": "OP"}[kind],
                                text, line, col))
        pos = m.end()
    tokens.append(Token("EOF", "", line, pos - line_start + 1))
    return tokens, comments


_BINARY_LEVELS: tuple[tuple[str, ...], ...] = (
    ("|",), ("&",), ("==", "!=", "<", "<=", ">", ">="), ("+", "-"), ("*", "/", "%", "@"),
)
_PREC = {op: i + 1 for i, ops in enumerate(_BINARY_LEVELS) for op in ops}  # higher binds tighter

# Bounds on hostile text (docs/asp.md, "Limits"): an expression tree at most this deep, a number
# literal at most this long (Python refuses to convert integers of more than 4300 digits, and no
# kernel needs a constant of more than a few dozen characters).
MAX_EXPR_DEPTH = 100
MAX_NUMBER_CHARS = 100


class _Parser:
    def __init__(self, src: str):
        self.tokens, comments = tokenize(src)
        self.comments = comments
        self.ci = 0  # next unconsumed comment
        self.i = 0
        self.nesting = 0  # brackets, calls and unary operators open while parsing (see _enter)
        self.depth: dict[int, int] = {}  # id(expr) -> depth of its tree, when over 1 (see _built)

    # --- token helpers ---
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def peek(self, k: int = 1) -> Token:
        return self.tokens[min(self.i + k, len(self.tokens) - 1)]

    def at(self, text: str) -> bool:
        return self.tok.kind in ("OP", "NAME") and self.tok.text == text

    def advance(self) -> Token:
        t = self.tok
        self.i += 1
        return t

    def expect(self, text: str, context: str = "") -> Token:
        if not self.at(text):
            where = f" {context}" if context else ""
            raise ParseError(f"expected '{text}'{where}, found {self.describe(self.tok)}", self.tok.span)
        return self.advance()

    def expect_name(self, what: str) -> Token:
        if self.tok.kind != "NAME":
            raise ParseError(f"expected {what}, found {self.describe(self.tok)}", self.tok.span)
        return self.advance()

    @staticmethod
    def describe(t: Token) -> str:
        return "end of file" if t.kind == "EOF" else repr(t.text)

    # --- comments ---
    def leading_comments(self) -> tuple[str, ...]:
        out = []
        while self.ci < len(self.comments) and self.comments[self.ci].line < self.tok.line:
            out.append(self.comments[self.ci].text)
            self.ci += 1
        return tuple(out)

    def trailing_comment(self, line: int) -> str:
        if self.ci < len(self.comments) and self.comments[self.ci].line == line:
            self.ci += 1
            return self.comments[self.ci - 1].text
        return ""

    def block_tail_comments(self) -> tuple[str, ...]:
        return self.leading_comments()

    # --- grammar ---
    def kernel(self) -> Kernel:
        comments = self.leading_comments()
        start = self.expect("kernel", "at the start of the file")
        name = self.expect_name("a kernel name").text
        self.expect("(", "after the kernel name")
        params = self.params(")")
        self.expect(")", "to close the parameter list")
        self.expect("->", "after the parameters (kernel k(x: f32[N]) -> (y: f32[N]) { ... })")
        self.expect("(", "to open the result list")
        results = self.params(")")
        self.expect(")", "to close the result list")
        if not results:
            raise ParseError("a kernel needs at least one result", self.tok.span)
        self.expect("{", "to open the kernel body")
        sizes: list[SizeDef] = []
        fns: list[FnDef] = []
        body: list[Stmt] = []
        sockets: str | None = None
        while not self.at("}"):
            if self.tok.kind == "EOF":
                raise ParseError("missing '}' to close the kernel body", self.tok.span)
            lead = self.leading_comments()
            if self.at("sockets") and self.peek().kind != "OP":
                line = self.tok
                defs = self.sizes(lead)
                if len(defs) != 1:
                    raise ParseError("a 'sockets' line names one size: sockets P = 2", line.span)
                if sockets is not None:
                    raise ParseError(f"a second 'sockets' line (the kernel already runs on '{sockets}' sockets)",
                                     line.span)
                sockets = defs[0].name
                sizes.extend(defs)
            elif self.at("sizes"):
                sizes.extend(self.sizes(lead))
            elif self.at("fn"):
                fns.append(self.fndef(lead))
            else:
                body.append(self.stmt(lead))
        tail = self.block_tail_comments()
        self.expect("}")
        if self.tok.kind != "EOF":
            raise ParseError(f"unexpected {self.describe(self.tok)} after the kernel's closing '}}'"
                             " (one kernel per file)", self.tok.span)
        tail = tail + self.leading_comments() + tuple(c.text for c in self.comments[self.ci:])
        return Kernel(name, tuple(params), tuple(results), tuple(sizes), tuple(fns), tuple(body),
                      comments, tail, start.span, sockets)

    def params(self, closer: str) -> list[Param]:
        out: list[Param] = []
        while not self.at(closer):
            t = self.expect_name("a parameter name")
            self.expect(":", f"after parameter '{t.text}' (write {t.text}: f32[N])")
            dt = self.expect_name("a dtype")
            if dt.text not in DTYPES:
                raise ParseError(f"unknown dtype '{dt.text}' (expected one of {', '.join(DTYPES)})", dt.span)
            self.expect("[", f"to open the shape of '{t.text}'")
            shape = [self.expr()]
            while self.at(","):
                self.advance()
                shape.append(self.expr())
            self.expect("]", f"to close the shape of '{t.text}'")
            tier = "hbm"
            split = None
            seen: set[str] = set()
            while self.at("@"):
                self.advance()
                tt = self.expect_name("a memory tier or split(axis)")
                what = "split" if tt.text == "split" else "tier"
                if what in seen:
                    raise ParseError(f"'{t.text}' has two {'@split' if what == 'split' else 'memory tier'} "
                                     "annotations", tt.span)
                seen.add(what)
                if tt.text == "split":  # sharded over the sockets of a group (docs/asp.md, "More than one socket")
                    self.expect("(", "after @split (write @split(axis), e.g. @split(1))")
                    if self.at(")"):
                        raise ParseError("@split needs the axis it splits, e.g. @split(0)", self.tok.span)
                    split = self.expr()
                    self.expect(")", "to close @split(axis)")
                    continue
                if tt.text not in TIERS:
                    raise ParseError(f"unknown memory tier '{tt.text}' (expected hbm or ddr, or split(axis))",
                                     tt.span)
                tier = tt.text
            out.append(Param(t.text, dt.text, tuple(shape), tier, t.span, split))
            if not self.at(closer):
                self.expect(",", "between parameters")
        return out

    def sizes(self, lead: tuple[str, ...]) -> list[SizeDef]:
        kw = self.advance()
        out: list[SizeDef] = []
        while True:
            t = self.expect_name("a size name")
            self.expect("=", f"after size '{t.text}'")
            v = self.tok
            if v.kind != "INT":
                raise ParseError(f"size '{t.text}' needs a whole number, found {self.describe(v)}", v.span)
            if len(v.text) > MAX_NUMBER_CHARS:
                raise ParseError(f"size '{t.text}' has {len(v.text)} digits (at most {MAX_NUMBER_CHARS})",
                                 Span(v.line, v.col, v.col + 1))
            self.advance()
            out.append(SizeDef(t.text, int(v.text), lead if not out else (), "", t.span))
            if not self.at(","):
                break
            self.advance()
        note = self.trailing_comment(self.tokens[self.i - 1].line)
        if note:
            out[-1] = SizeDef(out[-1].name, out[-1].value, out[-1].comments, note, out[-1].span)
        del kw
        return out

    def fndef(self, lead: tuple[str, ...]) -> FnDef:
        start = self.advance()
        name = self.expect_name("a function name").text
        self.expect("(", f"after fn {name}")
        params: list[str] = []
        while not self.at(")"):
            params.append(self.expect_name("a parameter name").text)
            if not self.at(")"):
                self.expect(",", "between parameters")
        self.expect(")", "to close the parameter list")
        if self.at("="):
            self.advance()
            result = self.expr()
            note = self.trailing_comment(self.tokens[self.i - 1].line)
            return FnDef(name, tuple(params), (), result, lead, (), note, start.span)
        self.expect("{", f"or '=' after fn {name}(...)")
        lets: list[Let] = []
        while self.at("let"):
            lc = self.leading_comments()
            self.advance()
            t = self.expect_name("a name after 'let'")
            self.expect("=", f"after let {t.text}")
            value = self.expr()
            note = self.trailing_comment(self.tokens[self.i - 1].line)
            lets.append(Let(t.text, value, lc, note, t.span))
        rc = self.leading_comments()
        self.expect("return", f"(a fn body is 'let' lines then one 'return') in fn {name}")
        result = self.expr()
        self.expect("}", f"to close fn {name}")
        return FnDef(name, tuple(params), tuple(lets), result, lead, rc, "", start.span)

    def stmt(self, lead: tuple[str, ...]) -> Stmt:
        first = self.tok
        targets: list[str] = []
        if self.tok.kind == "NAME" and (self.peek().text in ("=", ",")):
            while True:
                targets.append(self.expect_name("a stream name").text)
                if self.at(","):
                    self.advance()
                    continue
                break
            self.expect("=", "after the names being defined")
        if self.tok.kind != "NAME" or self.peek().text != "(":
            raise ParseError(f"expected an operator call like 'load(x, tile=[1, N])', found "
                             f"{self.describe(self.tok)}", self.tok.span)
        call = self.postfix()
        assert isinstance(call, Call)
        note = self.trailing_comment(self.tokens[self.i - 1].line)
        return Stmt(tuple(targets), call, lead, note, first.span)

    # --- expressions ---
    # Expressions are parsed by precedence climbing (one frame per binary operator, whatever the
    # number of levels), and two bounds keep every later tree walk (checker, tile-function
    # evaluator, printer, equality, pickling) far from Python's recursion limit: brackets, calls
    # and unary operators may nest at most MAX_EXPR_DEPTH deep while parsing, and the tree built
    # (a long chain `a + b + c ...` is a left-deep tree) may be at most MAX_EXPR_DEPTH deep. Both
    # fail with a ParseError at the token that goes too deep, never with a RecursionError.
    def _enter(self, t: Token) -> None:
        self.nesting += 1
        if self.nesting > MAX_EXPR_DEPTH:
            raise ParseError(f"expression nested more than {MAX_EXPR_DEPTH} levels deep "
                             "(split it into 'let' lines of a fn)", t.span)

    def _leave(self) -> None:
        self.nesting -= 1

    def _depth_of(self, e: Expr) -> int:
        return self.depth.get(id(e), 1)

    def _built(self, e: Expr, t: Token, children) -> Expr:
        d = 1 + max((self._depth_of(c) for c in children), default=0)
        if d > MAX_EXPR_DEPTH:
            raise ParseError(f"expression more than {MAX_EXPR_DEPTH} levels deep (a chain of about "
                             f"{MAX_EXPR_DEPTH} operators at most; split it into 'let' lines of a fn)", t.span)
        if d > 1:
            self.depth[id(e)] = d
        return e

    def expr(self, min_prec: int = 1) -> Expr:
        left = self.unary()
        while self.tok.kind == "OP" and _PREC.get(self.tok.text, 0) >= min_prec:
            op = self.advance()
            right = self.expr(_PREC[op.text] + 1)
            left = self._built(BinOp(op.text, left, right, op.span), op, (left, right))
        return left

    def unary(self) -> Expr:
        # prefix operators, then a power (right-associative: -x ** y is -(x ** y)), built without
        # a Python frame per operator so that a paren or call level costs three frames in all
        prefix: list[Token] = []
        while self.at("-") or self.at("~"):
            op = self.advance()
            self._enter(op)
            prefix.append(op)
        e = self.postfix() if self.tok.kind == "NAME" else self.atom()
        if self.at("**"):
            op = self.advance()
            self._enter(op)
            exponent = self.unary()
            self._leave()
            e = self._built(BinOp("**", e, exponent, op.span), op, (e, exponent))
        for op in reversed(prefix):
            self._leave()
            e = self._built(UnOp(op.text, e, op.span), op, (e,))
        return e

    def postfix(self) -> Expr:
        t = self.tok
        if t.kind == "NAME" and t.text in KEYWORDS:
            raise ParseError(f"'{t.text}' is a keyword and cannot start an expression", t.span)
        if t.kind == "NAME" and self.peek().text == "(":
            self.advance()
            open_tok = self.advance()
            self._enter(t)
            args: list[Expr] = []
            kwargs: list[tuple[str, Expr]] = []
            while not self.at(")"):
                if self.tok.kind == "EOF":
                    raise ParseError(f"missing ')' to close '(' opened at {open_tok.line}:{open_tok.col}",
                                     self.tok.span)
                if self.tok.kind == "NAME" and self.peek().text == "=":
                    k = self.advance()
                    self.advance()
                    if any(k.text == e for e, _ in kwargs):
                        raise ParseError(f"keyword '{k.text}' given twice", k.span)
                    kwargs.append((k.text, self.expr()))
                else:
                    if kwargs:
                        raise ParseError("positional argument after a keyword argument", self.tok.span)
                    args.append(self.expr())
                if not self.at(")"):
                    self.expect(",", "between arguments")
            self.advance()
            self._leave()
            return self._built(Call(t.text, tuple(args), tuple(kwargs), t.span), t,
                               args + [v for _, v in kwargs])
        return self.atom()

    def atom(self) -> Expr:
        t = self.tok
        if t.kind in ("INT", "FLOAT"):
            if len(t.text) > MAX_NUMBER_CHARS:
                raise ParseError(f"number literal of {len(t.text)} characters (at most {MAX_NUMBER_CHARS})",
                                 Span(t.line, t.col, t.col + 1))
            value = int(t.text) if t.kind == "INT" else float(t.text)
            if value == math.inf:  # 1e999 would print back as the name 'inf'
                raise ParseError(f"number literal {t.text[:20]}{'...' if len(t.text) > 20 else ''} is too "
                                 "large for a float (write inf)", Span(t.line, t.col, t.col + 1))
            self.advance()
            return Num(value, t.span)
        if t.kind == "NAME":
            self.advance()
            return Name(t.text, t.span)
        if self.at("("):
            self.advance()
            self._enter(t)
            first = self.expr()
            if self.at(","):
                items = [first]
                while self.at(","):
                    self.advance()
                    if self.at(")"):
                        break
                    items.append(self.expr())
                self.expect(")", f"to close '(' opened at {t.line}:{t.col}")
                self._leave()
                return self._built(TupleExpr(tuple(items), t.span), t, items)
            self.expect(")", f"to close '(' opened at {t.line}:{t.col}")
            self._leave()
            return first
        if self.at("["):
            self.advance()
            self._enter(t)
            items = []
            while not self.at("]"):
                if self.tok.kind == "EOF":
                    raise ParseError(f"missing ']' to close '[' opened at {t.line}:{t.col}", self.tok.span)
                items.append(self.expr())
                if not self.at("]"):
                    self.expect(",", "between list items")
            self.advance()
            self._leave()
            return self._built(ListExpr(tuple(items), t.span), t, items)
        raise ParseError(f"expected an expression, found {self.describe(t)}", t.span)


def parse(src: str, filename: str = "<kernel>") -> Kernel:
    """Parse one kernel. Raises :class:`ParseError` located in ``filename``."""
    try:
        return _Parser(src).kernel()
    except ParseError as e:
        raise e.located(filename, src) from None
    except RecursionError:
        raise ParseError("expression nested too deeply", Span(1, 1)).located(filename, src) from None
