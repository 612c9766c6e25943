"""Hostile ASP text and hostile sizes get a located user error, never an internal error.

Every entry point is covered: the Python API (parse, format, check, run, profile, pickling of
the tree), the ``asp`` command (check, fmt, run, profile: exit 2 and ``file:line:col``) and
``agentforge eval`` (the JSON reason names ``file:line:col``). The limits under test are
``asp_lang.syntax.MAX_EXPR_DEPTH`` (depth of an expression, while parsing and in the tree
built), ``MAX_NUMBER_CHARS`` (length of a number literal) and ``Limits.max_array_bytes``
(declared inputs and results count against the same cap as the kernel's own streams, checked
before anything is allocated).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import asp_lang
from asp_lang import AspError, Limits
from asp_lang.event import profile
from asp_lang.syntax import MAX_EXPR_DEPTH, MAX_NUMBER_CHARS

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
D = MAX_EXPR_DEPTH


def fn_kernel(body: str) -> str:
    """A valid kernel around one tile function; ``body`` is on line 2, from column 13."""
    return f"""kernel k(x: f32[4]) -> (y: f32[4]) {{
  fn f(p) = {body}
  s = load(x, tile=[4])
  t = map(s, fn=f)
  store(y, t)
}}
"""


BODY_COL = len("  fn f(p) = ") + 1


def _parse_error(src: str) -> AspError:
    with pytest.raises(AspError) as ei:
        asp_lang.parse(src, "h.asp")
    e = ei.value
    assert e.kind == "ParseError", e.short()
    assert re.match(r"h\.asp:[1-9]\d*:[1-9]\d*: error: ", e.render()), e.render()
    return e


# ------------------------------------------------------------------ depth of expressions

def test_long_operand_chain_is_a_parse_error_at_the_operator_that_goes_too_deep():
    body = " + ".join(["p"] * 400)  # used to raise RecursionError in the checker (exit 3)
    e = _parse_error(fn_kernel(body))
    # the D-th '+' makes a tree D + 1 deep
    col = BODY_COL + len(" + ".join(["p"] * D)) + 1
    assert (e.span.line, e.span.col) == (2, col)
    assert str(D) in e.message


@pytest.mark.parametrize("make", [
    lambda n: "(" * n + "p" + ")" * n,
    lambda n: "exp(" * n + "p" + ")" * n,
    lambda n: "[" * n + "p" + "]" * n,
    lambda n: "-" * n + "p",
    lambda n: "~" * n + "p",
    lambda n: " ** ".join(["p"] * (n + 1)),
    lambda n: "maximum(p, " * n + "p" + ")" * n,
], ids=["parens", "calls", "lists", "minus", "not", "power", "call_args"])
def test_deep_nesting_is_a_parse_error_at_the_token_that_goes_too_deep(make):
    e = _parse_error(fn_kernel(make(5000)))  # 5000 levels: far past Python's recursion limit
    assert e.span.line == 2 and BODY_COL <= e.span.col < BODY_COL + 5000 * 12
    assert "deep" in e.message


def test_nesting_in_shapes_and_call_arguments_is_bounded_too():
    src = "kernel k(x: f32[" + "(" * 3000 + "4" + ")" * 3000 + "]) -> (y: f32[4]) {\n}\n"
    assert _parse_error(src).span.line == 1
    src = fn_kernel("p").replace("tile=[4]", "tile=[" + "(" * 3000 + "4" + ")" * 3000 + "]")
    assert _parse_error(src).span.line == 3


DEEPEST = {  # expressions exactly MAX_EXPR_DEPTH deep: accepted, and every later walk survives them
    "chain": " + ".join(["p"] * D),
    "parens": "(" * (D - 1) + "p" + ")" * (D - 1),
    "calls": "exp(" * (D - 1) + "p" + ")" * (D - 1),
    "minus": "-" * (D - 1) + "p",
    "power": " ** ".join(["p"] * (D // 2)),
}


@pytest.mark.parametrize("name", sorted(DEEPEST))
def test_the_deepest_accepted_expression_goes_through_every_stage(name):
    src = fn_kernel(DEEPEST[name])
    old = sys.getrecursionlimit()
    # the walks need well under 500 frames at the bound, so a caller's own stack (pytest, a
    # LangGraph worker thread) keeps at least half of Python's default limit of 1000
    sys.setrecursionlimit(len(_stack()) + 500)
    try:
        k = asp_lang.parse(src, "h.asp")
        text = asp_lang.format_kernel(k)
        assert asp_lang.parse(text) == k
        assert pickle.loads(pickle.dumps(k)) == k and hash(k) == hash(pickle.loads(pickle.dumps(k)))
        prog = asp_lang.check(k, asp_lang.load_machine("sn40l"), None, "h.asp", src)
        inputs = asp_lang.random_inputs(prog, 0)
        outs = asp_lang.run(prog, inputs)
        profile(prog)
        profile(prog, "event")
    finally:
        sys.setrecursionlimit(old)
    assert outs["y"].shape == (4,)
    if name == "chain":
        np.testing.assert_allclose(outs["y"], inputs["x"] * D, rtol=1e-5)
    if name == "parens":
        np.testing.assert_array_equal(outs["y"], inputs["x"])


def _stack() -> list:
    f, out = sys._getframe(), []
    while f is not None:
        out.append(f)
        f = f.f_back
    return out


# ------------------------------------------------------------------ number literals

@pytest.mark.parametrize("lit", ["9" * 5000, "9" * 5000 + ".5", "1" + "0" * 4400 + "e5", "0." + "0" * 200 + "1"])
def test_huge_number_literals_are_parse_errors(lit):
    e = _parse_error(fn_kernel(f"p + {lit}"))  # int('9' * 5000) raised ValueError (4300-digit limit)
    assert (e.span.line, e.span.col) == (2, BODY_COL + 4)
    assert str(MAX_NUMBER_CHARS) in e.message


def test_huge_size_literal_is_a_parse_error():
    src = fn_kernel("p").replace("f32[4]) ->", "f32[N]) ->").replace("{\n", "{\n  sizes N = " + "7" * 5000 + "\n", 1)
    e = _parse_error(src)
    assert e.span.line == 2 and e.span.col == len("  sizes N = ") + 1


def test_long_but_allowed_literals_still_parse():
    k = asp_lang.parse(fn_kernel("p + " + "1" * MAX_NUMBER_CHARS))
    assert k.fns[0].result.right.value == int("1" * MAX_NUMBER_CHARS)
    with pytest.raises(AspError) as ei:  # a constant that big is then a located check error
        asp_lang.compile(fn_kernel("p + " + "1" * MAX_NUMBER_CHARS), filename="h.asp")
    assert ei.value.kind == "ArgumentError" and ei.value.span.line == 2


# ------------------------------------------------------------------ declared sizes vs the memory cap

BIG_INPUT = """kernel k(x: f32[N, N]) -> (y: f32[N, N]) {
  sizes N = 65536
  s = load(x, tile=[1, 64])
  store(y, s)
}
"""


def test_random_inputs_refuse_an_input_over_the_cap_before_allocating():
    prog = asp_lang.compile(BIG_INPUT, filename="big.asp")  # 16 GiB input: checks and times fine
    tracemalloc.start()
    try:
        with pytest.raises(AspError) as ei:
            asp_lang.random_inputs(prog, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ei.value.kind == "LimitError" and ei.value.location() == "big.asp:1:10", ei.value.short()
    assert peak < 1 << 20
    # under a smaller cap, a small size is refused the same way
    small = asp_lang.compile(BIG_INPUT, sizes={"N": 64}, filename="big.asp")
    assert asp_lang.random_inputs(small, 0, Limits(max_array_bytes=64 * 64 * 4))["x"].shape == (64, 64)
    with pytest.raises(AspError) as ei:
        asp_lang.random_inputs(small, 0, Limits(max_array_bytes=64 * 64 * 4 - 1))
    assert ei.value.kind == "LimitError"


def test_run_refuses_a_declared_result_over_the_cap_before_allocating():
    src = """kernel k(x: f32[4], i: i32[4]) -> (y: f32[N, 1]) {
  sizes N = 2000000000
  s = load(x, tile=[1])
  j = load(i, tile=[1])
  scatter(y, j, s)
}
"""
    prog = asp_lang.compile(src, filename="res.asp")
    inputs = asp_lang.random_inputs(prog, 0)  # the inputs are small
    with pytest.raises(AspError) as ei:
        asp_lang.run(prog, inputs)
    assert ei.value.kind == "LimitError" and ei.value.location() == "res.asp:1:36", ei.value.short()


def test_random_inputs_are_drawn_in_chunks_with_the_same_numbers():
    src = """kernel k(x: f32[N], b: bool[N], i: i32[N]) -> (y: f32[N]) {
  sizes N = 3000017
  s = load(x, tile=[1])
  store(y, s)
}
"""
    prog = _declared_only(asp_lang.parse(src))  # random_inputs needs only the declared tensors
    got = asp_lang.random_inputs(prog, 5)
    rng = np.random.default_rng(5)  # what random_inputs drew before it chunked
    want = {"x": rng.standard_normal((3000017,)).astype(np.float32), "b": rng.random((3000017,)) < 0.5,
            "i": rng.integers(0, 4, (3000017,)).astype(np.int32)}
    for name in want:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_array_equal(got[name], want[name])


def _declared_only(kernel):
    """A stand-in program with just the parameters' tensors (what random_inputs reads)."""
    from types import SimpleNamespace

    from asp_lang.checker import bind_sizes
    from asp_lang.consts import eval_int
    from asp_lang.types import TensorT

    sizes = bind_sizes(kernel)
    tensors = {p.name: TensorT(p.name, p.dtype, tuple(eval_int(e, sizes) for e in p.shape), p.tier)
               for p in kernel.params + kernel.results}
    return SimpleNamespace(kernel=kernel, tensors=tensors, params=[p.name for p in kernel.params],
                           results=[p.name for p in kernel.results], filename="k.asp", source=None)


# ------------------------------------------------------------------ the asp command

def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([PYTHON, "-m", "asp_lang.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


HOSTILE = {
    "chain": (fn_kernel(" + ".join(["p"] * 400)), 2),
    "parens": (fn_kernel("(" * 3000 + "p" + ")" * 3000), 2),
    "digits": (fn_kernel("p + " + "9" * 5000), 2),
    "big_input": (BIG_INPUT, 1),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_asp_commands_report_hostile_files_as_located_errors(name, tmp_path):
    src, line = HOSTILE[name]
    f = tmp_path / f"{name}.asp"
    f.write_text(src)
    commands = [["run"], ["profile"]] if name == "big_input" else [["check"], ["fmt"], ["run"], ["profile"]]
    for cmd in commands:
        res = _cli(*cmd, str(f))
        assert res.returncode == 2, (cmd, res.returncode, res.stderr)
        assert "internal error" not in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert re.match(rf"{re.escape(str(f))}:{line}:[1-9]\d*: error: ", res.stderr), (cmd, res.stderr[:300])
    if name == "big_input":  # timing needs no data: the same file profiles with --timing-only
        assert _cli("profile", "--timing-only", str(f)).returncode == 0


def test_asp_run_refuses_an_inputs_file_that_expands_past_the_cap(tmp_path):
    src = tmp_path / "k.asp"
    src.write_text(fn_kernel("p"))
    bomb = tmp_path / "bomb.npz"  # a small file whose array header claims 32 GiB
    header = {"descr": "<f4", "fortran_order": False, "shape": (1 << 33,)}
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z, z.open("x.npy", "w") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(bytes(1 << 16))
    single = tmp_path / "x.npy"
    np.save(single, np.ones(4, np.float32))
    for path in (bomb, single):
        res = _cli("run", str(src), "--inputs", str(path))
        assert res.returncode == 2 and res.stderr.startswith("asp: error: --inputs"), res.stderr
        assert "internal error" not in res.stderr


# ------------------------------------------------------------------ agentforge eval

@pytest.mark.parametrize("name", ["chain", "parens", "digits"])
def test_eval_reports_hostile_kernels_as_compile_errors_with_a_location(name):
    from agentforge.verify import evaluate

    src, line = HOSTILE[name]
    src = src.replace("x: f32[4]) -> (y: f32[4])", "x: f32[B, D]) -> (y: f32[B, D])").replace(
        "tile=[4]", "tile=[1, D]")
    ev = evaluate(ROOT / "evals" / "suite" / "relu.py", {"kind": "kernel", "source": src, "filename": "h.asp"})
    assert not ev.verified and ev.reason_code == "compile", ev.reason
    assert ev.reason.startswith(f"ERROR[ParseError] h.asp:{line}:"), ev.reason
    assert ev.error["kind"] == "ParseError" and ev.error["message"].startswith(f"h.asp:{line}:")


def test_eval_command_json_names_the_location(tmp_path):
    f = tmp_path / "chain.asp"
    f.write_text(HOSTILE["chain"][0])
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([PYTHON, "-m", "agentforge.cli", "eval", str(ROOT / "evals" / "suite" / "relu.py"), str(f),
                          "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 1, res.stderr
    out = json.loads(res.stdout)
    assert out["reason_code"] == "compile" and out["reason"].startswith(f"ERROR[ParseError] {f}:2:"), out["reason"]
    assert "Traceback" not in res.stdout + res.stderr


# ------------------------------------------------------------------ ranks and element counts (found by benchmarks/fuzz_asp.py)

def _ones(n: int) -> str:
    return ", ".join(["1"] * n)


RANKS = {
    # 90 dimensions of 4096: the HBM total overflowed a float (OverflowError in the checker)
    "declared_elements": ("kernel k(x: f32[4]) -> (y: f32[4], z: f32[" + ", ".join(["4096"] * 90) + "]) {\n"
                          "  s = load(x, tile=[4])\n  store(y, s)\n}\n", "ShapeError", (1, 36)),
    # a rank-70 tensor loaded with a matching tile: numpy refuses arrays of more than 64 dimensions
    "declared_rank": (f"kernel k(x: f32[{_ones(70)}]) -> (y: f32[{_ones(70)}]) {{\n"
                      f"  s = load(x, tile=[{_ones(70)}])\n  store(y, s)\n}}\n", "ShapeError", (1, 10)),
    # a tile of rank 100 built inside a tile function (ValueError when it ran)
    "tile_rank": (fn_kernel(f"p + reshape(zeros([{_ones(100)}]), shape=[1])"), "ShapeError", (2, BODY_COL + 12)),
    # 70 promotes make a stream of rank 71 (ValueError when it ran)
    "stream_rank": ("kernel k(x: f32[4]) -> (y: f32[4]) {\n  fn f(p) = p + 1\n  s0 = load(x, tile=[1])\n"
                    + "".join(f"  s{i + 1} = promote(s{i}, at=0)\n" for i in range(70))
                    + "  t = map(s70, fn=f)\n  u = flatten(t, dims=[0, 70])\n  store(y, u)\n}\n", "ShapeError", (19, 9)),
}


@pytest.mark.parametrize("name", sorted(RANKS))
def test_ranks_and_element_counts_are_bounded(name):
    from asp_lang.consts import MAX_RANK

    src, kind, (line, col) = RANKS[name]
    with pytest.raises(AspError) as ei:
        asp_lang.compile(src, filename="r.asp")
    e = ei.value
    assert e.kind == kind and (e.span.line, e.span.col) == (line, col), e.short()
    assert name == "declared_elements" or str(MAX_RANK) in e.message


# ------------------------------------------------------------------ found by benchmarks/fuzz_asp.py

def test_a_float_literal_that_overflows_is_a_parse_error():
    # 1e999 became Num(inf), which the printer wrote as the name 'inf': the round trip broke
    e = _parse_error(fn_kernel("p * -1e999"))
    assert (e.span.line, e.span.col) == (2, BODY_COL + 5)
    k = asp_lang.parse(fn_kernel("p * -inf + 1e308"))
    assert asp_lang.parse(asp_lang.format_kernel(k)) == k


@pytest.mark.parametrize("change, line", [
    (("sizes R = 4", "sizes R = 0"), 3),                   # bind_sizes: a size that is not positive
    (("-> (y: f32[M, N])", "-> (y: f32[M, 1.5])"), 2),     # eval_int: a shape that is not whole
])
def test_eval_names_the_file_for_errors_raised_while_binding(change, line):
    from agentforge.verify import evaluate

    src = (ROOT / "evals" / "adversarial" / "softmax__poly_exp.asp").read_text().replace(*change)
    ev = evaluate(ROOT / "evals" / "suite" / "softmax.py", {"kind": "kernel", "source": src, "filename": "b.asp"})
    assert not ev.verified and ev.reason_code == "compile", ev.reason
    assert ev.reason.startswith("ERROR[") and f" b.asp:{line}:" in ev.reason, ev.reason
