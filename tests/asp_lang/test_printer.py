"""The canonical printer: ``parse(format_kernel(k)) == k`` for random syntax trees, formatting
is idempotent, and the examples (already canonical) survive being re-laid-out by hand.

The strategies build trees the parser can produce: names that are not keywords, non-negative
literals (a leading minus is a unary operator), non-empty tuples and shapes, unique keyword
arguments, stripped one-line comments, and a trailing note on a fn only in its one-line form.
"""

from __future__ import annotations

import math
import re
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asp_lang import AspError, format_kernel, parse
from asp_lang.ir import (BinOp, Call, FnDef, Kernel, Let, ListExpr, Name, Num, Param, SizeDef, Stmt,
                         TupleExpr, UnOp)
from asp_lang.printer import fmt_expr
from asp_lang.syntax import DTYPES, KEYWORDS, TIERS

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.asp"))

BINARY_OPS = ("|", "&", "==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "%", "@", "**")
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# hypothesis warns that the recursive strategies below have a long repr; that is harmless here
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

# ------------------------------------------------------------------ strategies

names = st.one_of(
    st.sampled_from(["x", "y", "acc", "t", "N", "M", "TM", "f32", "bf16", "_", "inf", "pi", "exp",
                     "load", "sizes_", "kernel2", "let_", "x_1", "a0"]),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True),
).filter(lambda s: s not in KEYWORDS)

comment_text = st.text(alphabet=string.ascii_letters + string.digits + " #()[]{},.:;=+-*/<>'\"!?@~_",
                       max_size=24).map(str.strip)
comments = st.lists(comment_text, max_size=2).map(tuple) | st.just(())
notes = st.one_of(st.just(""), comment_text)

ints = st.one_of(st.integers(0, 9), st.integers(0, 2**70))
floats = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, 1e-05, 1e-06, 3.25, 1e16, 1.5e300, 5e-324, 123456.789]),
    st.floats(min_value=0.0, allow_nan=False, allow_infinity=False).filter(lambda v: math.copysign(1, v) > 0),
)
leaves = st.one_of(ints.map(Num), floats.map(Num), names.map(Name))


def _call(children):
    kwargs = st.lists(st.tuples(names, children), max_size=3, unique_by=lambda kv: kv[0]).map(tuple)
    return st.builds(Call, names, st.lists(children, max_size=3).map(tuple), kwargs)


def _extend(children):
    return st.one_of(
        st.builds(BinOp, st.sampled_from(BINARY_OPS), children, children),
        st.builds(BinOp, st.just("**"), children, children),  # right-associative: extra weight
        st.builds(UnOp, st.sampled_from(["-", "~"]), children),
        _call(children),
        st.builds(ListExpr, st.lists(children, max_size=3).map(tuple)),
        st.builds(TupleExpr, st.lists(children, min_size=1, max_size=3).map(tuple)),
    )


exprs = st.recursive(leaves, _extend, max_leaves=14)
small_exprs = st.recursive(leaves, _extend, max_leaves=5)  # inside whole kernels, which hold many
calls = _call(small_exprs)

params = st.builds(Param, names, st.sampled_from(DTYPES), st.lists(small_exprs, min_size=1, max_size=3).map(tuple),
                   st.sampled_from(TIERS))
sizedefs = st.builds(SizeDef, names, ints, comments, notes)
lets = st.builds(Let, names, small_exprs, comments, notes)


@st.composite
def fndefs(draw):
    ls = tuple(draw(st.lists(lets, max_size=2)))
    rc = draw(comments)
    # the parser keeps a trailing note only on a one-line fn (no lets, no comment before return)
    note = draw(notes) if not ls and not rc else ""
    return FnDef(draw(names), tuple(draw(st.lists(names, max_size=3))), ls, draw(small_exprs), draw(comments), rc,
                 note)


stmts = st.builds(Stmt, st.lists(names, max_size=3).map(tuple), calls, comments, notes)

kernels = st.builds(
    Kernel, names,
    st.lists(params, max_size=2).map(tuple),
    st.lists(params, min_size=1, max_size=2).map(tuple),
    st.lists(sizedefs, max_size=2).map(tuple),
    st.lists(fndefs(), max_size=2).map(tuple),
    st.lists(stmts, max_size=3).map(tuple),
    comments, comments,
)


def _expr_kernel(e) -> Kernel:
    return Kernel("k", (), (Param("y", "f32", (Name("N"),)),), (), (FnDef("f", ("x",), (), e),), ())


# ------------------------------------------------------------------ properties

@SETTINGS
@given(kernels)
def test_random_kernel_round_trips(k):
    text = format_kernel(k)
    assert text.endswith("\n")
    back = parse(text, "rt.asp")
    assert back == k, text
    assert format_kernel(back) == text  # idempotent


def _sloppy(text: str, seed: int) -> str:
    """The same tokens on the same lines with the same comments, spaced differently: random
    indentation, one to three blanks between tokens, stray blank lines."""
    import random

    from asp_lang.syntax import tokenize

    rng = random.Random(seed)
    toks, comments = tokenize(text)
    lines: dict[int, list[str]] = {}
    for t in toks[:-1]:
        lines.setdefault(t.line, []).append(t.text)
    notes = {c.line: c.text for c in comments}
    out = []
    for n in range(1, text.count("\n") + 2):
        code = "".join(tok + " " * rng.randint(1, 3) for tok in lines.get(n, []))
        note = f"#{' ' * rng.randint(0, 2)}{notes[n]}" if n in notes else ""
        out.append(rng.choice(["", "\t", "     "]) + code + note)
        if rng.random() < 0.2:
            out.append(rng.choice(["", "   "]))
    return "\n".join(out)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kernels, st.integers(0, 2**16))
def test_format_is_idempotent(k, seed):
    """format(parse(format(k))) == format(k), also from a sloppily re-spaced copy of the text."""
    text = format_kernel(k)
    assert format_kernel(parse(text)) == text
    sloppy = _sloppy(text, seed)
    assert format_kernel(parse(sloppy)) == text, sloppy


@settings(max_examples=500, deadline=None)
@given(exprs)
def test_random_expression_round_trips(e):
    k = _expr_kernel(e)
    text = format_kernel(k)
    assert parse(text).fns[0].result == e, text
    # the printed expression is on one line and the printer never emits '->' by accident
    assert "\n" not in fmt_expr(e) and "->" not in fmt_expr(e)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(BINARY_OPS), leaves), min_size=1, max_size=6), leaves)
def test_operator_chains_keep_their_grouping(chain, first):
    """Left-fold and right-fold chains of mixed operators both survive printing."""
    left = first
    for op, e in chain:
        left = BinOp(op, left, e)
    right = first
    for op, e in reversed(chain):
        right = BinOp(op, e, right)
    for e in (left, right, UnOp("-", left), UnOp("~", right)):
        assert parse(format_kernel(_expr_kernel(e))).fns[0].result == e


# ------------------------------------------------------------------ precedence goldens

@pytest.mark.parametrize("src, canonical", [
    ("(a - b) - c", "a - b - c"),
    ("a - (b - c)", "a - (b - c)"),
    ("a + (b * c)", "a + b * c"),
    ("(a + b) * c", "(a + b) * c"),
    ("a ** (b ** c)", "a ** b ** c"),
    ("(a ** b) ** c", "(a ** b) ** c"),
    ("-(x ** 2)", "-x ** 2"),
    ("(-x) ** 2", "(-x) ** 2"),
    ("x ** -y", "x ** -y"),
    ("x ** (-y)", "x ** -y"),
    ("x ** (a + b)", "x ** (a + b)"),
    ("- (- x)", "--x"),
    ("-(a + b)", "-(a + b)"),
    ("~(a < b)", "~(a < b)"),
    ("a * -b", "a * -b"),
    ("(a | b) & c", "(a | b) & c"),
    ("a | (b & c)", "a | b & c"),
    ("(a < b) == c", "a < b == c"),
    ("a < (b == c)", "a < (b == c)"),
    ("a @ (b @ c)", "a @ (b @ c)"),
    ("(a)", "a"),
    ("(a,)", "(a,)"),
    ("( a , b , )", "(a, b)"),
    ("f(x, k=(1, 2), j=[])", "f(x, k=(1, 2), j=[])"),
    ("f()", "f()"),
    ("1e-5 + 2.50", "1e-05 + 2.5"),
    ("1E3", "1000.0"),
    (".5", "0.5"),
    ("007", "7"),
])
def test_expression_goldens(src, canonical):
    text = f"kernel k() -> (y: f32[N]) {{\n  fn f(x) = {src}\n}}\n"
    k = parse(text)
    assert fmt_expr(k.fns[0].result) == canonical
    assert parse(format_kernel(k)) == k


def test_layout_golden():
    src = ("# head\nkernel   k( x:f32[N,2*M]@ddr , w : bf16[ N ] )->(y:f32[N]){sizes N=4, M=2 # two\n"
           "fn g(a)=a+1\n fn h(a,b){\n# c1\nlet t=a*b   # n1\nreturn t}\n"
           "# s1\n ys=load(x,tile=[1,2*M])\n  _ , zs = copy( ys ) # n2\n# tail\n}\n# after\n")
    want = ("# head\n"
            "kernel k(x: f32[N, 2 * M] @ddr, w: bf16[N]) -> (y: f32[N]) {\n"
            "  sizes N = 4\n"
            "  sizes M = 2  # two\n"
            "  fn g(a) = a + 1\n"
            "  fn h(a, b) {\n"
            "    # c1\n"
            "    let t = a * b  # n1\n"
            "    return t\n"
            "  }\n"
            "  # s1\n"
            "  ys = load(x, tile=[1, 2 * M])\n"
            "  _, zs = copy(ys)  # n2\n"
            "  # tail\n"
            "  # after\n"
            "}\n")
    out = format_kernel(parse(src))
    assert out == want
    assert format_kernel(parse(out)) == out


# ------------------------------------------------------------------ the examples

@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_example_is_a_fixed_point(path):
    src = path.read_text()
    k = parse(src, path.name)
    assert format_kernel(k) == src
    assert parse(format_kernel(k)) == k


def _relayout(src: str) -> str:
    """The same kernel written sloppily: odd indentation, spacing, blank lines, tabs."""
    out = []
    for i, line in enumerate(src.splitlines()):
        code, sep, note = line.partition("#")
        code = re.sub(r"\s*([,=(\[\]):])\s*", r" \1 ", code) if code.strip() else code
        code = code.replace(" - >", " ->").replace("- >", "->").replace("= =", "==")
        code = ("\t" if i % 2 else "      ") + code.strip()
        out.append(code + ("    " + sep + "   " + note.strip() if sep else ""))
        if i % 3 == 0:
            out.append("")
    return "\n".join(out) + "\n\n"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_example_relayout_formats_back_to_canonical(path):
    src = path.read_text()
    messy = _relayout(src)
    assert messy != src
    assert format_kernel(parse(messy)) == src


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_example_without_comments_round_trips(path):
    src = path.read_text()
    bare = "\n".join(re.sub(r"\s*#.*$", "", ln) for ln in src.splitlines() if not ln.lstrip().startswith("#"))
    k = parse(bare)
    ref = parse(src)
    assert (k.params, k.results, k.sizes[0].name, len(k.fns), len(k.body)) == \
        (ref.params, ref.results, ref.sizes[0].name, len(ref.fns), len(ref.body))
    assert [s.call for s in k.body] == [s.call for s in ref.body]
    assert [f.result for f in k.fns] == [f.result for f in ref.fns]
    assert parse(format_kernel(k)) == k


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_comments_anywhere_are_kept_and_formatting_settles(path):
    """A comment after any token (ending its line) is kept by the formatter, which is then stable."""
    import random

    from asp_lang.syntax import tokenize

    src = path.read_text()
    toks = tokenize(src)[0][:-1]
    starts = [0]
    for line in src.split("\n"):
        starts.append(starts[-1] + len(line) + 1)
    rng = random.Random(path.stem)
    for trial in range(60):
        cuts = sorted({starts[t.line - 1] + t.col - 1 + len(t.text) for t in rng.sample(toks, rng.randint(1, 4))},
                      reverse=True)
        text = src
        for j, pos in enumerate(cuts):
            text = text[:pos] + f"  # note{trial}_{j}\n" + text[pos:]
        k = parse(text)
        out = format_kernel(k)
        assert sorted(re.findall(r"note\d+_\d+", out)) == sorted(re.findall(r"note\d+_\d+", text))
        assert parse(out) == k
        assert format_kernel(parse(out)) == out


def test_printer_rejects_non_expressions():
    with pytest.raises(TypeError):
        fmt_expr("not an expression")  # type: ignore[arg-type]


def test_parse_errors_are_located():
    with pytest.raises(AspError) as ei:
        parse("kernel k() -> (y: f32[N]) {\n  fn f(x) = (a,\n}\n", "bad.asp")
    assert ei.value.render().startswith("bad.asp:")
    assert ei.value.span.line > 0
