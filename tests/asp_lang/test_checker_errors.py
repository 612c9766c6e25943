"""Specification of ASP's user-facing errors (asp_lang/errors.py).

For every documented error kind the parser, checker, interpreter or machine loader can
raise, small programs that trigger it. Each error must be of the documented class, be
located at the construct it is about (``FILE:LINE:COL: error: ...`` followed by the source
line and a caret under the column), and survive pickling (the evaluator runs kernels in a
subprocess). The rendered text of a representative set is compared with golden files in
tests/asp_lang/golden/; set ASP_REGEN_GOLDEN=1 to rewrite them after a deliberate change.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import asp_lang
from asp_lang.errors import (NO_SPAN, AffineError, ArgumentError, AspError, CollectiveError, ERROR_KINDS, InputError,
                             LimitError, MachineError, NameError_, ParseError, ResourceError,
                             RoutingError, ShapeError, SizeError, Span, TypeError_)
from asp_lang.interp import Limits

GOLDEN = Path(__file__).resolve().parent / "golden"
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
REGEN = os.environ.get("ASP_REGEN_GOLDEN") == "1"
FILE = "k.asp"

# A header most kernels below share: x, y: f32[64], an identity fn.
H = "kernel k(x: f32[N]) -> (y: f32[N]) {\n  sizes N = 64\n  fn id(t) = t\n"

# A routing kernel: rows of x go to the branch i names (T=8 rows, E=2 branches).
ROUTE = """kernel route(x: f32[T, D], i: i32[T, 1]) -> (y: f32[T, D]) {
  sizes T = 8
  sizes D = 4
  sizes E = 2
  fn id(t) = t
  xs = load(x, tile=[1, D])
  ids = load(i, tile=[1, 1])
  sel = selector(ids, n=E)
  sa, sb = copy(sel)
  parts = partition(xs, sa)
  h = map(parts, fn=id)
  merged = merge(h, sb)
  flat = flatten(merged, dims=[0, 1])
  store(y, flat)
}
"""

# A stream (4 x 32 bytes) larger than any declared array (32 bytes).
REPEATED = """kernel rep(x: f32[N]) -> (y: f32[N]) {
  sizes N = 8
  fn f(a, t) = a + t
  xs = load(x, tile=[N], repeat=4, at=0)
  a = accum(xs, rank=1, init=zeros([N]), fn=f)
  store(y, a)
}
"""

# An accumulation with a general (non-reducible) update: one interpreter step per element.
RUNNING = """kernel running(x: f32[M, N]) -> (y: f32[M, 1]) {
  sizes M = 4
  sizes N = 64
  fn step(m, t) = maximum(m * 0.5, max(t, axis=1))
  xs = load(x, tile=[1, 8])
  ys = accum(xs, rank=1, init=full([1, 1], -inf), fn=step)
  store(y, ys)
}
"""


def _route_inputs(sel_values) -> dict:
    return {"x": np.ones((8, 4), np.float32), "i": np.asarray(sel_values, np.int32).reshape(8, 1)}


@dataclass
class Case:
    """One erroneous program: what raises, and where the error must point.

    ``at`` is (line, token, occurrence): the caret goes under the ``occurrence``-th
    ``token`` on that 1-based line of the program's text.
    """
    id: str
    cls: type
    src: str
    at: tuple
    raise_: Callable[["Case"], None] | None = None
    machine: str = "rdu-mini"
    golden: bool = False
    sizes: dict | None = None
    extra: dict = field(default_factory=dict)

    def trigger(self) -> AspError:
        with pytest.raises(AspError) as ei:
            if self.raise_ is not None:
                self.raise_(self)
            else:
                asp_lang.compile(self.src, machine=self.machine, sizes=self.sizes, filename=FILE)
        return ei.value


def _run_with(inputs=None, limits=None):
    def go(case: Case):
        prog = asp_lang.compile(case.src, machine=case.machine, filename=FILE)
        ins = inputs(prog) if callable(inputs) else (inputs or asp_lang.random_inputs(prog))
        asp_lang.run(prog, ins, limits)
    return go


def _routing(counts):
    def go(case: Case):
        asp_lang.compile(case.src, machine=case.machine, filename=FILE, routing={"counts": counts})
    return go


CASES: list[Case] = [
    # ---------------------------------------------------------------- ParseError
    Case("parse_bad_character", ParseError,
         "kernel k(x: f32[N]) -> (y: f32[N]) {\n  sizes N = 64\n  xs = load(x, tile=[16]) $\n  store(y, xs)\n}\n",
         (3, "$", 1), golden=True),
    Case("parse_unclosed_call", ParseError,
         "kernel k(x: f32[N]) -> (y: f32[N]) {\n  sizes N = 64\n  xs = load(x, tile=[16]\n  store(y, xs)\n}\n",
         (4, "store", 1), golden=True),
    Case("parse_unknown_dtype", ParseError,
         "kernel k(x: f64[N]) -> (y: f32[N]) {\n  sizes N = 64\n}\n", (1, "f64", 1), golden=True),
    Case("parse_size_not_integer", ParseError,
         "kernel k(x: f32[N]) -> (y: f32[N]) {\n  sizes N = 6.4\n}\n", (2, "6.4", 1)),
    Case("parse_unknown_tier", ParseError,
         "kernel k(x: f32[N] @sram) -> (y: f32[N]) {\n  sizes N = 64\n}\n", (1, "sram", 1)),
    Case("parse_no_results", ParseError,
         "kernel k(x: f32[N]) -> () {\n  sizes N = 64\n}\n", (1, "{", 1)),
    Case("parse_missing_close_brace", ParseError,
         H + "  xs = load(x, tile=[16])\n  store(y, xs)\n", (6, "", 1)),
    Case("parse_keyword_as_expression", ParseError,
         H + "  xs = load(x, tile=[fn])\n  store(y, xs)\n}\n", (4, "fn", 1)),
    Case("parse_second_kernel", ParseError,
         H + "  xs = load(x, tile=[16])\n  store(y, xs)\n}\nkernel j() -> (z: f32[4]) {\n}\n",
         (7, "kernel", 1)),
    # ---------------------------------------------------------------- NameError
    Case("name_undefined_stream", NameError_,
         H + "  xs = load(x, tile=[16])\n  ys = map(xz, fn=id)\n  store(y, ys)\n}\n", (5, "xz", 1), golden=True),
    Case("name_stream_used_before_definition", NameError_,
         H + "  ys = map(xs, fn=id)\n  xs = load(x, tile=[16])\n  store(y, ys)\n}\n", (4, "xs", 1)),
    Case("name_unknown_fn", NameError_,
         H + "  xs = load(x, tile=[16])\n  ys = map(xs, fn=idd)\n  store(y, ys)\n}\n", (5, "idd", 1),
         golden=True),
    Case("name_assigned_twice", NameError_,
         H + "  xs = load(x, tile=[16])\n  xs = map(xs, fn=id)\n  store(y, xs)\n}\n", (5, "xs", 1)),
    Case("name_unknown_operator", NameError_,
         H + "  xs = lod(x, tile=[16])\n  store(y, xs)\n}\n", (4, "lod", 1)),
    Case("name_undefined_in_fn", NameError_,
         "kernel k(x: f32[N]) -> (y: f32[N]) {\n  sizes N = 64\n  fn f(t) = t + q\n"
         "  xs = load(x, tile=[16])\n  ys = map(xs, fn=f)\n  store(y, ys)\n}\n", (3, "q", 1)),
    Case("name_store_into_parameter", NameError_,
         H + "  xs = load(x, tile=[16])\n  store(x, xs)\n}\n", (5, "x", 1)),
    Case("name_load_from_result", NameError_,
         H + "  xs = load(y, tile=[16])\n  store(y, xs)\n}\n", (4, "y", 1)),
    Case("name_tensor_declared_twice", NameError_,
         "kernel k(x: f32[N]) -> (x: f32[N]) {\n  sizes N = 64\n}\n", (1, "x", 2)),
    # ---------------------------------------------------------------- TypeError
    Case("type_tensor_used_as_stream", TypeError_,
         H + "  ys = map(x, fn=id)\n  store(y, ys)\n}\n", (4, "x", 1), golden=True),
    Case("type_dtypes_differ_in_fn", TypeError_,
         "kernel k(x: f32[N], z: i32[N]) -> (y: f32[N]) {\n  sizes N = 64\n  fn add(a, b) = a + b\n"
         "  xs = load(x, tile=[16])\n  zs = load(z, tile=[16])\n  ys = map(xs, zs, fn=add)\n  store(y, ys)\n}\n",
         (3, "+", 1), golden=True),
    Case("type_store_wrong_dtype", TypeError_,
         "kernel k(x: f32[N]) -> (y: i32[N]) {\n  sizes N = 64\n  xs = load(x, tile=[16])\n  store(y, xs)\n}\n",
         (4, "store", 1)),
    Case("type_accum_fn_changes_accumulator", TypeError_,
         "kernel k(x: f32[M, N]) -> (y: f32[M, 1]) {\n  sizes M = 4\n  sizes N = 64\n"
         "  fn bad(acc, t) = t\n  xs = load(x, tile=[1, 8])\n"
         "  ys = accum(xs, rank=1, init=zeros([1, 1]), fn=bad)\n  store(y, ys)\n}\n", (6, "bad", 1)),
    # ---------------------------------------------------------------- ShapeError
    Case("shape_tile_rank", ShapeError,
         H + "  xs = load(x, tile=[16, 1])\n  store(y, xs)\n}\n", (4, "[", 1), golden=True),
    Case("shape_map_stream_dims_differ", ShapeError,
         "kernel k(x: f32[N], z: f32[M]) -> (y: f32[N]) {\n  sizes N = 64\n  sizes M = 128\n"
         "  fn add(a, b) = a + b\n  xs = load(x, tile=[16])\n  zs = load(z, tile=[16])\n"
         "  ys = map(xs, zs, fn=add)\n  store(y, ys)\n}\n", (7, "map", 1), golden=True),
    Case("shape_matmul_inner_sizes", ShapeError,
         "kernel k(x: f32[N, N]) -> (y: f32[N, N]) {\n  sizes N = 64\n"
         "  fn mm(a) = matmul(a, slice(a, axis=0, start=0, stop=8))\n"
         "  xs = load(x, tile=[16, 16])\n  ys = map(xs, fn=mm)\n  store(y, ys)\n}\n", (3, "matmul", 1)),
    Case("shape_store_dims_mismatch", ShapeError,
         "kernel k(x: f32[N]) -> (y: f32[M]) {\n  sizes N = 64\n  sizes M = 128\n"
         "  xs = load(x, tile=[16])\n  store(y, xs)\n}\n", (5, "store", 1)),
    # ---------------------------------------------------------------- ArgumentError
    Case("argument_load_without_tile", ArgumentError,
         H + "  xs = load(x)\n  store(y, xs)\n}\n", (4, "load", 1), golden=True),
    Case("argument_par_not_positive", ArgumentError,
         H + "  xs = load(x, tile=[16], par=0)\n  store(y, xs)\n}\n", (4, "0", 1)),
    Case("argument_order_not_permutation", ArgumentError,
         "kernel k(x: f32[M, N]) -> (y: f32[M, N]) {\n  sizes M = 64\n  sizes N = 64\n"
         "  xs = load(x, tile=[16, 16], order=[0, 0])\n  store(y, xs)\n}\n", (4, "[", 2)),
    Case("argument_copy_needs_two_targets", ArgumentError,
         H + "  xs = load(x, tile=[16])\n  a = copy(xs)\n  store(y, a)\n}\n", (5, "copy", 1)),
    Case("argument_map_without_fn", ArgumentError,
         H + "  xs = load(x, tile=[16])\n  ys = map(xs)\n  store(y, ys)\n}\n", (5, "map", 1)),
    # ---------------------------------------------------------------- SizeError
    Case("size_tile_does_not_divide", SizeError,
         H + "  xs = load(x, tile=[24])\n  store(y, xs)\n}\n", (4, "[", 1), golden=True),
    Case("size_without_value", SizeError,
         "kernel k(x: f32[N]) -> (y: f32[N]) {\n  xs = load(x, tile=[16])\n  store(y, xs)\n}\n",
         (1, "N", 1), golden=True),
    Case("size_not_positive", SizeError,
         "kernel k(x: f32[N]) -> (y: f32[N]) {\n  sizes N = 0\n}\n", (2, "N", 1)),
    Case("size_expression_not_whole", SizeError,
         "kernel k(x: f32[N / 3]) -> (y: f32[N / 3]) {\n  sizes N = 64\n}\n", (1, "/", 1)),
    Case("size_override_does_not_divide", SizeError,
         H + "  xs = load(x, tile=[16])\n  store(y, xs)\n}\n", (4, "[", 1), sizes={"N": 40}),
    # ---------------------------------------------------------------- AffineError
    Case("affine_stream_used_twice", AffineError,
         H + "  xs = load(x, tile=[16])\n  ys = map(xs, fn=id)\n  zs = map(xs, fn=id)\n  store(y, ys)\n}\n",
         (6, "xs", 1), golden=True),
    Case("affine_stream_never_used", AffineError,
         H + "  xs = load(x, tile=[16])\n  ws = load(x, tile=[16])\n  store(y, xs)\n}\n", (5, "load", 1),
         golden=True),
    Case("affine_result_never_stored", AffineError,
         "kernel k(x: f32[N]) -> (y: f32[N], z: f32[N]) {\n  sizes N = 64\n  xs = load(x, tile=[16])\n"
         "  store(y, xs)\n}\n", (1, "z", 1)),
    Case("affine_result_stored_twice", AffineError,
         H + "  xs = load(x, tile=[16])\n  a, b = copy(xs)\n  store(y, a)\n  store(y, b)\n}\n", (7, "y", 1)),
    # ---------------------------------------------------------------- ResourceError
    Case("resource_operator_alone_too_big", ResourceError,
         H + "  xs = load(x, tile=[16])\n  ys = map(xs, fn=id, par=65)\n  store(y, ys)\n}\n", (5, "map", 1),
         golden=True),
    Case("resource_buffer_bigger_than_sram", ResourceError,
         "kernel k(x: f32[M, N]) -> (y: f32[M, N]) {\n  sizes M = 2\n  sizes N = 1048576\n"
         "  xs = load(x, tile=[1, 1024])\n  b = bufferize(xs, rank=1)\n  ys = streamify(b)\n  store(y, ys)\n}\n",
         (5, "bufferize", 1), golden=True),
    Case("resource_tensors_exceed_hbm", ResourceError,
         "kernel k(x: f32[N]) -> (y: f32[N]) {\n  sizes N = 1073741824\n  xs = load(x, tile=[1024])\n"
         "  store(y, xs)\n}\n", (1, "kernel", 1)),
    Case("resource_load_needs_more_agcus", ResourceError,
         H + "  xs = load(x, tile=[16], par=9)\n  store(y, xs)\n}\n", (4, "load", 1)),
    # ---------------------------------------------------------------- LimitError (interpreter caps)
    Case("limit_elements", LimitError, ROUTE, (6, "load", 1),
         raise_=_run_with(lambda p: _route_inputs([0, 1] * 4), Limits(max_elements=10)), golden=True),
    # a declared input over the one-array cap is refused at its declaration, before allocation
    Case("limit_array_bytes", LimitError, ROUTE, (1, "x", 1),
         raise_=_run_with(lambda p: _route_inputs([0, 1] * 4), Limits(max_array_bytes=64))),
    Case("limit_stream_bytes", LimitError, REPEATED, (4, "load", 1),
         raise_=_run_with(None, Limits(max_array_bytes=64))),
    Case("limit_accumulation_steps", LimitError, RUNNING, (6, "accum", 1),
         raise_=_run_with(None, Limits(max_steps=5))),
    # ---------------------------------------------------------------- InputError
    Case("input_wrong_shape", InputError, ROUTE, (1, "x", 1),
         raise_=_run_with(lambda p: {"x": np.ones((8, 5), np.float32), "i": np.zeros((8, 1), np.int32)}),
         golden=True),
    Case("input_missing", InputError, ROUTE, (1, "i:", 1),
         raise_=_run_with(lambda p: {"x": np.ones((8, 4), np.float32)})),
    Case("input_float_for_i32", InputError, ROUTE, (1, "i:", 1),
         raise_=_run_with(lambda p: {"x": np.ones((8, 4), np.float32), "i": np.zeros((8, 1), np.float32)})),
    Case("input_unknown_name", InputError, ROUTE, (1, "kernel", 1),
         raise_=_run_with(lambda p: dict(_route_inputs([0] * 8), z=np.zeros(3)))),
    # ---------------------------------------------------------------- RoutingError
    Case("routing_counts_wrong_branches", RoutingError, ROUTE, (10, "partition", 1), raise_=_routing([8]),
         golden=True),
    Case("routing_counts_wrong_total", RoutingError, ROUTE, (10, "partition", 1), raise_=_routing([4, 5])),
    Case("routing_selector_value_out_of_range", RoutingError, ROUTE, (8, "selector", 1),
         raise_=_run_with(lambda p: _route_inputs([0, 1, 2, 0, 1, 0, 1, 0])), golden=True),
    Case("routing_negative_selector_value", RoutingError, ROUTE, (8, "selector", 1),
         raise_=_run_with(lambda p: _route_inputs([-1] * 8))),
    # ---------------------------------------------------------------- CollectiveError (kernels on several sockets)
    Case("collective_never_reached", CollectiveError,
         "kernel k(x: f32[N]) -> (y: f32[N]) {\n  sockets P = 2\n  sizes N = 64\n  xs = load(x, tile=[16])\n"
         "  ys = all_reduce(xs, on=[0])\n  store(y, ys, on=[0])\n}\n", (5, "all_reduce", 1), golden=True),
    Case("collective_recv_without_send", CollectiveError,
         "kernel k(x: f32[N]) -> (y: f32[N]) {\n  sockets P = 2\n  sizes N = 64\n  r = recv(from=1, on=[0])\n"
         "  store(y, r, on=[0])\n}\n", (4, "recv", 1)),
]


# ---------------------------------------------------------------- MachineError: located in the TOML file

def _preset(name="rdu-mini") -> str:
    return resources.files("asp_lang").joinpath("machines").joinpath(f"{name}.toml").read_text()


MACHINE_CASES = [
    # id, transform of the preset text, (token on the offending line, occurrence of that line's token)
    ("machine_negative_field", lambda t: t.replace("lanes = 16", "lanes = -16"), "lanes = -16", "lanes"),
    ("machine_unknown_field", lambda t: t.replace("[pmu]\n", "[pmu]\nports = 2\n"), "ports = 2", "ports"),
    ("machine_wrong_type", lambda t: t.replace("cycles = 4000", 'cycles = "4000"'), 'cycles = "4000"', "cycles"),
    ("machine_missing_field", lambda t: t.replace("sram_kib = 64\n", ""), "[pmu]", "["),
]


def _machine_error(tmp_path: Path, transform) -> tuple[MachineError, Path, str]:
    text = transform(_preset())
    assert text != _preset()
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(MachineError) as ei:
        asp_lang.compile(H + "  xs = load(x, tile=[16])\n  store(y, xs)\n}\n", machine=str(p), filename=FILE)
    return ei.value, p, text


# ---------------------------------------------------------------- helpers

def expected_col(text: str, line: int, token: str, occurrence: int) -> int:
    src_line = text.splitlines()[line - 1] if line <= len(text.splitlines()) else ""
    if token == "":
        return len(src_line) + 1
    pos = -1
    for _ in range(occurrence):
        pos = src_line.index(token, pos + 1)
    return pos + 1


def assert_located(e: AspError, filename: str, text: str, line: int, col: int):
    """render() = ``filename:LINE:COL: error: MESSAGE [Kind]``, the source line, a caret."""
    assert (e.span.line, e.span.col) == (line, col), e.render()
    out = e.render().splitlines()
    assert out[0].startswith(f"{filename}:{line}:{col}: error: "), out[0]
    assert out[0].endswith(f"[{e.kind}]")
    assert e.message in out[0]
    lines = text.splitlines()
    if line <= len(lines):
        assert len(out) == 3, e.render()
        assert out[1] == lines[line - 1]
        caret = out[2]
        assert caret.startswith(" " * (col - 1) + "^"), repr(caret)
        assert set(caret[col:]) <= {"~"}
        assert caret.strip().startswith("^")
    assert e.short().startswith(f"ERROR[{e.kind}] {filename}:{line}:{col} ")
    assert "\n" not in e.short()
    assert str(e) == e.render()


# ---------------------------------------------------------------- tests

def test_every_error_kind_has_at_least_two_cases():
    counts = {k: 0 for k in ERROR_KINDS}
    for c in CASES:
        counts[c.cls] += 1
    counts[MachineError] += len(MACHINE_CASES)
    assert {k.kind: n for k, n in counts.items() if n < 2} == {}


def test_error_kinds_are_distinct_asp_errors():
    kinds = [k.kind for k in ERROR_KINDS]
    assert len(set(kinds)) == len(kinds) == 13
    assert all(issubclass(k, AspError) and issubclass(k, Exception) for k in ERROR_KINDS)
    # names used in reports and docs are the Python-facing ones, without the underscore
    assert NameError_.kind == "NameError" and TypeError_.kind == "TypeError"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_error_class_and_location(case: Case):
    e = case.trigger()
    assert type(e) is case.cls, e.render()
    assert e.kind == case.cls.kind
    line, token, occ = case.at
    assert e.filename == FILE
    assert e.source == case.src
    assert_located(e, FILE, case.src, line, expected_col(case.src, line, token, occ))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_errors_pickle_with_span_and_filename(case: Case):
    e = case.trigger()
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is type(e)
    assert e2.span == e.span and isinstance(e2.span, Span)
    assert (e2.filename, e2.source, e2.message, e2.kind) == (e.filename, e.source, e.message, e.kind)
    assert e2.render() == e.render()
    assert e2.short() == e.short()
    assert e2.args == e.args


@pytest.mark.parametrize("cid,transform,line_text,token", MACHINE_CASES, ids=[c[0] for c in MACHINE_CASES])
def test_machine_errors_are_located_in_the_toml_file(tmp_path, cid, transform, line_text, token):
    e, p, text = _machine_error(tmp_path, transform)
    assert type(e) is MachineError
    line = next(i for i, s in enumerate(text.splitlines(), 1) if s.startswith(line_text))
    assert e.filename == str(p)
    assert_located(e, str(p), text, line, expected_col(text, line, token, 1))
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.span, e2.filename, e2.render()) == (e.span, e.filename, e.render())


def test_errors_of_the_examples_are_located_in_their_file(tmp_path):
    """A mistake introduced in a real example is reported in that file, at the edited line."""
    src = (EXAMPLES / "softmax_online.asp").read_text()
    assert "xr = streamify(rows, par=8)" in src  # the edit below must change the program
    bad = src.replace("xr = streamify(rows, par=8)", "xr = streamify(xb)")
    p = tmp_path / "softmax_online.asp"
    p.write_text(bad)
    with pytest.raises(AffineError) as ei:  # xb was already consumed by bufferize
        asp_lang.compile_file(p)
    e = ei.value
    line = bad.splitlines().index("  xr = streamify(xb)") + 1
    assert_located(e, str(p), bad, line, expected_col(bad, line, "xb", 1))


def test_size_override_errors_name_the_size():
    """Sizes given by the caller have no place in the source: the error names the file only."""
    with pytest.raises(SizeError) as ei:
        asp_lang.compile(H + "  xs = load(x, tile=[16])\n  store(y, xs)\n}\n", sizes={"Q": 4}, filename=FILE)
    assert "'Q'" in ei.value.message and "N" in ei.value.message
    assert ei.value.render().startswith(f"{FILE}: error: ")
    for bad in (0, -4, 2.5, True):
        with pytest.raises(SizeError):
            asp_lang.compile(H + "  xs = load(x, tile=[16])\n  store(y, xs)\n}\n", sizes={"N": bad})


def test_render_without_source_or_span_is_one_line():
    e = ShapeError("tiles differ", Span(3, 5, 8), "a.asp")
    assert e.render() == "a.asp:3:5: error: tiles differ [ShapeError]"
    e = ShapeError("tiles differ", Span(3, 5, 8), "a.asp", "l1\nl2\n  abcdef\n")
    assert e.render() == "a.asp:3:5: error: tiles differ [ShapeError]\n  abcdef\n    ^~~"
    e = ShapeError("tiles differ", None, "a.asp", "l1\n")
    assert e.span == NO_SPAN
    assert e.render() == "a.asp: error: tiles differ [ShapeError]"
    assert e.short() == "ERROR[ShapeError] a.asp tiles differ"
    # a span past the end of the source still renders its head
    assert ShapeError("x", Span(9, 1), "a.asp", "l1\n").render() == "a.asp:9:1: error: x [ShapeError]"


def test_located_attaches_the_file():
    e = ParseError("bad", Span(1, 2))
    assert e.located("z.asp", "abc\n") is e
    assert e.render() == "z.asp:1:2: error: bad [ParseError]\nabc\n ^"


# ---------------------------------------------------------------- golden files

GOLDEN_CASES = [c for c in CASES if c.golden]


def test_golden_files_cover_a_case_of_every_kind():
    kinds = {c.cls for c in GOLDEN_CASES} | {MachineError}
    assert kinds == set(ERROR_KINDS)


def _check_golden(name: str, text: str):
    path = GOLDEN / f"{name}.txt"
    if REGEN:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
        return
    assert path.is_file(), f"missing golden file {path}: run with ASP_REGEN_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{path} differs (ASP_REGEN_GOLDEN=1 rewrites it after a deliberate change)"


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=[c.id for c in GOLDEN_CASES])
def test_rendered_error_matches_golden(case: Case):
    _check_golden(case.id, case.trigger().render() + "\n")


def test_machine_error_matches_golden(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("bad.toml").write_text(_preset().replace("lanes = 16", "lanes = -16"))
    with pytest.raises(MachineError) as ei:
        asp_lang.load_machine("bad.toml")
    _check_golden("machine_negative_field", ei.value.render() + "\n")


def test_no_stale_golden_files():
    if REGEN:
        pytest.skip("regenerating")
    known = {c.id for c in GOLDEN_CASES} | {"machine_negative_field"}
    present = {p.stem for p in GOLDEN.glob("*.txt")}
    assert present <= known, f"golden files without a test: {sorted(present - known)}"


# ---------------------------------------------------------------- errors never escape as Python errors

BROKEN_SNIPPETS = [
    "", "kernel", "kernel k(", "kernel k() -> (y: f32[4]) {", "kernel k(x: f32[]) -> (y: f32[4]) {}",
    "kernel k(x: f32[4]) -> (y: f32[4]) { y = }", "kernel k(x: f32[4]) -> (y: f32[4]) { fn f( = 1 }",
    "kernel k(x: f32[4]) -> (y: f32[4]) { xs = load(x, tile=[(((((]) }",
    "kernel k(x: f32[4]) -> (y: f32[4]) { xs = load(x, tile=[4], tile=[4]) }",
    "kernel k(x: f32[4]) -> (y: f32[4]) { xs = load(tile=[4], x) }",
    "kernel k(x: f32[4]) -> (y: f32[4]) { fn f(t) { let a = t } }",
    "kernel k(x: f32[4]) -> (y: f32[4]) {\n  xs = load(x, tile=[4])\n  store(y, xs)\n}\n" + "(" * 5000,
    "kernel k(x: f32[4]) -> (y: f32[4]) {\n  fn f(t) = " + "(" * 3000 + "t" + ")" * 3000 + "\n}\n",
]


@pytest.mark.parametrize("src", BROKEN_SNIPPETS)
def test_broken_text_is_a_located_parse_error(src):
    with pytest.raises(ParseError) as ei:
        asp_lang.compile(src, filename=FILE)
    e = ei.value
    assert e.span.line >= 1 and e.span.col >= 1
    assert re.match(rf"{re.escape(FILE)}:\d+:\d+: error: ", e.render())
