"""Every stream operator against a small, independent numpy model, on hypothesis-chosen shapes.

Each test writes a small ASP program as text, runs it in the interpreter and compares the
results with numpy written directly from the operator's documented meaning (not with the
interpreter's own helpers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import asp_lang
from asp_lang import AspError
from asp_lang.types import StreamT, TileT, round_bf16

SET = settings(max_examples=30, deadline=None)


def run(src: str, inputs: dict, machine: str = "sn40l", routing=None):
    prog = asp_lang.compile(src, machine=machine, filename="op.asp", routing=routing)
    outs = asp_lang.run(prog, inputs)
    rep = asp_lang.profile(prog)
    assert rep.cycles >= rep.roofline_cycles
    return prog, outs


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def shape_list(s) -> str:
    return ", ".join(map(str, s))


@st.composite
def tiled(draw, rank=None, min_rank=1, max_rank=3, proper=False):
    """A tensor shape and a tile dividing it (``proper``: tile smaller on at least one axis)."""
    r = rank or draw(st.integers(min_rank, max_rank))
    shape = tuple(draw(st.sampled_from([1, 2, 3, 4, 6, 8])) for _ in range(r))
    tile = tuple(draw(st.sampled_from(divisors(s))) for s in shape)
    if proper:
        assume(tile != shape)
    return shape, tile


def model_load(x: np.ndarray, tile) -> np.ndarray:
    """Stream of a tiled tensor: grid axes (those the tile does not cover whole) then the tile,
    leading 1s of the tile dropped while it has more than two axes."""
    shape = x.shape
    grid = [s // t for s, t in zip(shape, tile)]
    inter = [v for g, t in zip(grid, tile) for v in (g, t)]
    k = len(shape)
    a = x.reshape(inter).transpose([2 * i for i in range(k)] + [2 * i + 1 for i in range(k)])
    kept = [g for g, s, t in zip(grid, shape, tile) if s != t]
    elem = list(tile)
    while len(elem) > 2 and elem[0] == 1:
        elem.pop(0)
    return a.reshape(kept + elem)


# ------------------------------------------------------------------ load / store

@SET
@given(tiled(), st.data())
def test_load_store_round_trip_with_order(st_, data):
    shape, tile = st_
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    x = rng.standard_normal(shape).astype(np.float32)
    nd = sum(1 for s, t in zip(shape, tile) if s != t)
    perm = data.draw(st.permutations(range(nd)))
    order = f", order=[{shape_list(perm)}]" if nd and data.draw(st.booleans()) else ""
    src = f"""kernel k(x: f32[{shape_list(shape)}]) -> (y: f32[{shape_list(shape)}]) {{
  xs = load(x, tile=[{shape_list(tile)}]{order})
  store(y, xs{order})
}}
"""
    prog, outs = run(src, {"x": x})
    np.testing.assert_array_equal(outs["y"], x)
    dims = tuple(s // t for s, t in zip(shape, tile) if s != t)
    if order:
        dims = tuple(dims[i] for i in perm)
    assert prog.streams["xs"].dims == dims


@SET
@given(tiled(), st.data())
def test_load_with_order_and_repeat_against_numpy(st_, data):
    shape, tile = st_
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    x = rng.standard_normal(shape).astype(np.float32)
    ref = model_load(x, tile)
    nd = sum(1 for s, t in zip(shape, tile) if s != t)
    elem = ref.shape[nd:]
    kw = ""
    if nd > 1 and data.draw(st.booleans()):
        perm = data.draw(st.permutations(range(nd)))
        ref = ref.transpose(list(perm) + list(range(nd, ref.ndim)))
        kw += f", order=[{shape_list(perm)}]"
    nrep = data.draw(st.integers(0, 2))
    if nrep == 1:
        n, at = data.draw(st.integers(2, 3)), data.draw(st.integers(0, nd))
        ref = np.repeat(np.expand_dims(ref, at), n, axis=at)
        kw += f", repeat={n}, at={at}"
    elif nrep == 2:
        ns, ats, r = [], [], nd
        for _ in range(2):
            n, at = data.draw(st.integers(2, 3)), data.draw(st.integers(0, r))
            ref = np.repeat(np.expand_dims(ref, at), n, axis=at)
            ns.append(n)
            ats.append(at)
            r += 1
        kw += f", repeat=[{shape_list(ns)}], at=[{shape_list(ats)}]"
    dims = ref.shape[:ref.ndim - len(elem)]
    out_shape = dims + elem or (1,)
    src = f"""kernel k(x: f32[{shape_list(shape)}]) -> (y: f32[{shape_list(out_shape)}]) {{
  xs = load(x, tile=[{shape_list(tile)}]{kw})
  store(y, xs)
}}
"""
    prog, outs = run(src, {"x": x})
    assert prog.streams["xs"] == StreamT(dims, TileT("f32", elem))
    np.testing.assert_array_equal(outs["y"], ref.reshape(out_shape))


def test_load_store_errors_are_located():
    base = "kernel k(x: f32[4, 6]) -> (y: f32[4, 6]) {{\n  xs = load(x, {kw})\n  store(y, xs)\n}}\n"
    for kw, kind in [("tile=[3, 6]", "SizeError"), ("tile=[4]", "ShapeError"), ("tile=[0, 6]", "SizeError"),
                     ("tile=[2, 3], order=[0, 0]", "ArgumentError"), ("tile=[2, 3], at=1", "ArgumentError"),
                     ("tile=[2, 3], repeat=2, at=3", "ArgumentError"), ("tile=[2, 3], repeat=0", "SizeError"),
                     ("tile=[2, 3], repeat=[2], at=1", "ArgumentError"), ("tile=[2, 3], bogus=1", "ArgumentError"),
                     ("tile=[2, 3], repeat=2", "ShapeError")]:
        with pytest.raises(AspError) as ei:
            asp_lang.compile(base.format(kw=kw), filename="l.asp")
        assert ei.value.kind == kind, (kw, ei.value.short())
        assert ei.value.span.line in (2, 3), (kw, ei.value.short())


@pytest.mark.parametrize("dt", ["bf16", "f16", "i32", "bool"])
def test_load_store_keeps_dtypes(dt):
    rng = np.random.default_rng(0)
    x = {"bf16": rng.standard_normal((4, 6)).astype(np.float32), "f16": rng.standard_normal((4, 6)).astype(np.float32),
         "i32": rng.integers(-9, 9, (4, 6)).astype(np.int32), "bool": rng.random((4, 6)) < 0.5}[dt]
    src = f"kernel k(x: {dt}[4, 6]) -> (y: {dt}[4, 6]) {{\n  xs = load(x, tile=[2, 3])\n  store(y, xs)\n}}\n"
    _, outs = run(src, {"x": x})
    want = {"bf16": round_bf16(x) if dt == "bf16" else None,
            "f16": x.astype(np.float16).astype(np.float32)}.get(dt, x)
    np.testing.assert_array_equal(outs["y"], want)


# ------------------------------------------------------------------ map

@st.composite
def row_tiled(draw):
    m = draw(st.sampled_from([2, 4, 6, 8]))
    n = draw(st.sampled_from([2, 4, 6, 8]))
    r = draw(st.sampled_from([d for d in divisors(m) if d < m]))
    t = draw(st.sampled_from([d for d in divisors(n) if d < n]))
    return m, n, r, t



@SET
@given(st.integers(0, 2**31), st.data())
def test_map_elementwise(seed, data):
    m, n, r, t = data.draw(row_tiled())
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, n)).astype(np.float32)
    w = rng.standard_normal((n,)).astype(np.float32)
    src = f"""kernel k(x: f32[{m}, {n}], w: f32[{n}]) -> (y: f32[{m}, {n}], z: f32[{m}, {n}]) {{
  fn f(a, b) = (a * exp(-abs(a)) + b, maximum(a, 0.5) - b)
  fn g(v) = v
  xs = load(x, tile=[{r}, {t}])
  ws = load(w, tile=[{t}], repeat={m // r}, at=0)
  ys, zs = map(xs, ws, fn=f, par=2)
  store(y, ys)
  store(z, zs)
}}
"""
    _, outs = run(src, {"x": x, "w": w})
    xe = x.astype(np.float64)
    np.testing.assert_allclose(outs["y"], xe * np.exp(-np.abs(xe)) + w, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(outs["z"], np.maximum(xe, 0.5) - w, rtol=1e-6, atol=1e-6)


def test_map_errors():
    src = """kernel k(x: f32[4, 6]) -> (y: f32[4, 6]) {{
  fn f(a) = a
  fn g(a, b) = a + b
  xs = load(x, tile=[2, 3])
  {body}
  store(y, ys)
}}
"""
    for body, kind in [("ys = map(xs, fn=g)", "ArgumentError"), ("ys = map(xs, fn=h)", "NameError"),
                       ("ys = map(xs)", "ArgumentError"), ("ys = map(fn=f)", "ArgumentError"),
                       ("ys = map(xs, xs, fn=g)", "AffineError"), ("ys = map(xs, fn=f, par=0)", "ArgumentError"),
                       ("ys = map(x, fn=f)", "TypeError"), ("ys = map(xs, fn=f, par=99999)", "ArgumentError"),
                       ("ys, zs = map(xs, fn=f)", "ArgumentError")]:
        with pytest.raises(AspError) as ei:
            asp_lang.compile(src.format(body=body), filename="m.asp")
        assert ei.value.kind == kind, (body, ei.value.short())
        assert ei.value.span.line > 0


# ------------------------------------------------------------------ accum and scan

@SET
@given(row_tiled(), st.integers(0, 2**31), st.sampled_from(["sum", "max", "min"]))
def test_accum_rank1_row_reductions(mnrt, seed, kind):
    m, n, r, t = mnrt
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, n)).astype(np.float32)
    upd = {"sum": "acc + sum(v, axis=1)", "max": "maximum(acc, max(v, axis=1))",
           "min": "minimum(min(v, axis=1), acc)"}[kind]
    init = {"sum": "zeros", "max": "full", "min": "full"}[kind]
    init = f"zeros([{r}, 1])" if init == "zeros" else f"full([{r}, 1], {'-inf' if kind == 'max' else 'inf'})"
    src = f"""kernel k(x: f32[{m}, {n}]) -> (y: f32[{m}, 1]) {{
  fn f(acc, v) = {upd}
  xs = load(x, tile=[{r}, {t}])
  a = accum(xs, rank=1, init={init}, fn=f)
  store(y, a)
}}
"""
    _, outs = run(src, {"x": x})
    ref = getattr(np, kind)(x.astype(np.float64), axis=1, keepdims=True)
    np.testing.assert_allclose(outs["y"], ref, rtol=1e-5, atol=1e-6)


@SET
@given(row_tiled(), st.integers(0, 2**31), st.sampled_from(["sum", "max"]), st.booleans())
def test_accum_rank2_blockwise(mnrt, seed, kind, fast):
    m, n, r, t = mnrt
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, n)).astype(np.float32)
    upd = "acc + v" if kind == "sum" else "maximum(acc, v)"
    # the same update written so that the fast path does not recognise it: a python loop
    fn = f"fn f(acc, v) = {upd}" if fast else \
        f"fn f(acc, v) {{\n    let b = acc\n    return {upd.replace('acc', 'b')}\n  }}"
    src = f"""kernel k(x: f32[{m}, {n}]) -> (y: f32[{r}, {t}]) {{
  {fn}
  xs = load(x, tile=[{r}, {t}])
  a = accum(xs, rank=2, init={'zeros' if kind == 'sum' else 'full'}([{r}, {t}]{'' if kind == 'sum' else ', -inf'}), fn=f)
  store(y, a)
}}
"""
    prog, outs = run(src, {"x": x})
    assert (prog.nodes[1].attrs["fast"] is not None) == fast
    blocks = x.astype(np.float64).reshape(m // r, r, n // t, t)
    ref = blocks.sum(axis=(0, 2)) if kind == "sum" else blocks.max(axis=(0, 2))
    np.testing.assert_allclose(outs["y"], ref, rtol=1e-5, atol=1e-6)


@SET
@given(row_tiled(), st.integers(0, 2**31), st.sampled_from(["f32", "bf16"]), st.integers(1, 2))
def test_accum_general_update_against_python_loop(mnrt, seed, dt, rank):
    m, n, r, t = mnrt
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, n)).astype(np.float32)
    src = f"""kernel k(x: {dt}[{m}, {n}]) -> (y: {dt}[{m if rank == 1 else r}, {t}]) {{
  fn f(acc, v) = acc * 0.5 + v
  xs = load(x, tile=[{r}, {t}])
  a = accum(xs, rank={rank}, init=full([{r}, {t}], 1.0, dtype={dt}), fn=f)
  store(y, a)
}}
"""
    _, outs = run(src, {"x": x})
    rnd = round_bf16 if dt == "bf16" else (lambda v: np.asarray(v, np.float32))
    xs = rnd(x).reshape(m // r, r, n // t, t).transpose(0, 2, 1, 3)  # [M/R, N/T] of [R, T]
    if rank == 1:
        acc = np.ones((m // r, r, t), np.float32)
        for j in range(n // t):
            acc = rnd(rnd(acc * np.float32(0.5)) + xs[:, j])
        ref = acc.reshape(m, t)
    else:
        acc = np.ones((r, t), np.float32)
        for i in range(m // r):
            for j in range(n // t):
                acc = rnd(rnd(acc * np.float32(0.5)) + xs[i, j])
        ref = acc
    np.testing.assert_allclose(outs["y"], ref, rtol=1e-6 if dt == "f32" else 0, atol=1e-6 if dt == "f32" else 0)


def test_accum_fast_path_with_a_lower_rank_term():
    """maximum(acc, v) where v is a scalar per element and acc a vector (found by fuzzing: the
    fast path broadcast the term against the stream axes)."""
    src = """kernel k(x: f32[2, 4]) -> (y: f32[2, 3]) {
  fn s(t) = cast(pos(1), f32) * 10.0 + cast(pos(0), f32)
  fn upd(a, v) = maximum(a, v)
  xs = load(x, tile=[1, 1])
  v = map(xs, fn=s)
  m = accum(v, rank=1, init=full([3], -inf), fn=upd)
  store(y, m)
}
"""
    prog, outs = run(src, {"x": np.zeros((2, 4), np.float32)})
    assert prog.streams["v"].elem.shape == ()
    np.testing.assert_array_equal(outs["y"], [[30.0] * 3, [31.0] * 3])


@SET
@given(row_tiled(), st.integers(0, 2**31), st.integers(1, 2))
def test_scan_against_cumsum(mnrt, seed, rank):
    m, n, r, t = mnrt
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, n)).astype(np.float32)
    src = f"""kernel k(x: f32[{m}, {n}]) -> (y: f32[{m}, {n}]) {{
  fn f(acc, v) = acc + v
  xs = load(x, tile=[{r}, {t}])
  s = scan(xs, rank={rank}, init=zeros([{r}, {t}]), fn=f)
  store(y, s)
}}
"""
    _, outs = run(src, {"x": x})
    blocks = x.astype(np.float64).reshape(m // r, r, n // t, t).transpose(0, 2, 1, 3)
    if rank == 1:
        ref = np.cumsum(blocks, axis=1)
    else:
        ref = np.cumsum(blocks.reshape(-1, r, t), axis=0).reshape(blocks.shape)
    np.testing.assert_allclose(outs["y"], ref.transpose(0, 2, 1, 3).reshape(m, n), rtol=1e-5, atol=1e-5)


def test_accum_and_scan_errors():
    src = """kernel k(x: f32[4, 6]) -> (y: f32[4, 1]) {{
  fn f(acc, v) = acc + sum(v, axis=1)
  fn g(acc, v) = sum(v, axis=1)
  xs = load(x, tile=[2, 3])
  a = {call}
  store(y, a)
}}
"""
    for call, kind in [("accum(xs, rank=3, init=zeros([2, 1]), fn=f)", "ShapeError"),
                       ("accum(xs, rank=1, fn=f)", "ArgumentError"),
                       ("accum(xs, rank=1, init=zeros([3]), fn=f)", "TypeError"),
                       ("accum(xs, rank=1, init=zeros([2, 1], dtype=bf16), fn=f)", "TypeError"),
                       ("accum(xs, rank=0, init=zeros([2, 1]), fn=f)", "SizeError"),
                       ("accum(xs, rank=1, init=zeros([2, 1]))", "ArgumentError"),
                       ("accum(xs, rank=1, init=[1], fn=f)", "TypeError"),
                       ("scan(xs, rank=1, init=zeros([2, 1]), fn=f)", "ShapeError")]:
        with pytest.raises(AspError) as ei:
            asp_lang.compile(src.format(call=call), filename="a.asp")
        assert ei.value.kind == kind, (call, ei.value.short())
        assert ei.value.span.line > 0


# ------------------------------------------------------------------ flatmap

@SET
@given(st.sampled_from([2, 4, 6]), st.sampled_from([2, 4, 6]), st.integers(0, 2**31), st.data())
def test_flatmap_split(r, t, seed, data):
    m, n = 2 * r, 2 * t
    p = data.draw(st.sampled_from(divisors(r)))
    q = data.draw(st.sampled_from(divisors(t)))
    k = (r // p) * (t // q)
    assume(k >= 2)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, n)).astype(np.float32)
    src = f"""kernel k(x: f32[{m}, {n}]) -> (y: f32[2, 2, {k}, {p}, {q}]) {{
  fn f(v) = v * 2.0 + 1.0
  xs = load(x, tile=[{r}, {t}])
  ps = flatmap(xs, fn=f, split=[{p}, {q}])
  store(y, ps)
}}
"""
    prog, outs = run(src, {"x": x})
    assert prog.streams["ps"] == StreamT((2, 2, k), TileT("f32", (p, q)))
    tiles = (x * 2 + 1).reshape(2, r, 2, t).transpose(0, 2, 1, 3)  # [2, 2] of [r, t]
    pieces = tiles.reshape(2, 2, r // p, p, t // q, q).transpose(0, 1, 2, 4, 3, 5).reshape(2, 2, k, p, q)
    np.testing.assert_allclose(outs["y"], pieces, rtol=1e-6)
    with pytest.raises(AspError) as ei:
        asp_lang.compile(src.replace(f"split=[{p}, {q}]", f"split=[{r + 1}, {q}]"))
    assert ei.value.kind == "ShapeError"


# ------------------------------------------------------------------ shape operators

@SET
@given(st.integers(2, 4), st.integers(2, 4), st.integers(2, 3), st.integers(0, 2**31))
def test_repeat_expand_promote_flatten_reshape(a, b, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((a, b, 3)).astype(np.float32)
    w = rng.standard_normal((a, 3)).astype(np.float32)
    src = f"""kernel k(x: f32[{a}, {b}, 3], w: f32[{a}, 3]) -> (r: f32[{a}, {b}, {n}, 3], e: f32[{a}, {b}, 3],
                                                       f: f32[{a * b}, 3], p: f32[{a * b}, 3], s: f32[{a * b}, 3]) {{
  x1 = load(x, tile=[1, 1, 3])
  rs = repeat(x1, {n})
  store(r, rs)
  ws = load(w, tile=[1, 3])
  x2 = load(x, tile=[1, 1, 3])
  es = expand(ws, like=x2)
  store(e, es)
  x3 = load(x, tile=[1, 1, 3])
  fs = flatten(x3, dims=[0, 1])
  store(f, fs)
  x4 = load(x, tile=[1, 1, 3])
  p1 = promote(x4, at=1)
  ps = flatten(p1, dims=[0, 2])
  store(p, ps)
  x5 = load(x, tile=[1, 1, 3])
  f5 = flatten(x5, dims=[0, 1])
  r5 = reshape(f5, dim=0, chunk={b})
  s5 = flatten(r5, dims=[0, 1])
  store(s, s5)
}}
"""
    prog, outs = run(src, {"x": x, "w": w})
    assert prog.streams["rs"].dims == (a, b, n)
    assert prog.streams["p1"].dims == (a, 1, b)
    assert prog.streams["r5"].dims == (a, b)
    np.testing.assert_array_equal(outs["r"], np.broadcast_to(x[:, :, None, :], (a, b, n, 3)))
    np.testing.assert_array_equal(outs["e"], np.broadcast_to(w[:, None, :], (a, b, 3)))
    for key in "fps":
        np.testing.assert_array_equal(outs[key], x.reshape(a * b, 3))


def test_shape_operator_errors():
    src = """kernel k(x: f32[4, 6]) -> (y: f32[4, 6]) {{
  xs = load(x, tile=[1, 1])
  {body}
  store(y, ys)
}}
"""
    for body, kind in [("ys = flatten(xs, dims=[1, 0])", "ArgumentError"),
                       ("ys = flatten(xs, dims=[0, 2])", "ArgumentError"),
                       ("ys = flatten(xs)", "ArgumentError"),
                       ("ys = reshape(xs, dim=1, chunk=4)", "SizeError"),
                       ("ys = reshape(xs, dim=2, chunk=1)", "ArgumentError"),
                       ("ys = reshape(xs, dim=0, chunk=0)", "SizeError"),
                       ("ys = promote(xs, at=3)", "ArgumentError"),
                       ("ys = repeat(xs, 0)", "SizeError"),
                       ("ys = repeat(xs)", "ArgumentError"),
                       ("ys = expand(xs, like=xs)", "AffineError"),
                       ("ys = expand(xs)", "ArgumentError"),
                       ("zs = repeat(xs, 2)\n  ys = expand(zs, like=xs)", "AffineError"),
                       ("a, b = copy(xs)\n  c = flatten(b, dims=[0, 1])\n  ys = expand(a, like=c)", "ShapeError"),
                       ("ys = copy(xs)", "ArgumentError"),
                       ("ys = zip(xs)", "ArgumentError"),
                       ("ys = unzip(xs)", "TypeError")]:
        with pytest.raises(AspError) as ei:
            asp_lang.compile(src.format(body=body), filename="s.asp")
        assert ei.value.kind == kind, (body, ei.value.short())
        assert ei.value.span.line > 0


@SET
@given(tiled(rank=2, proper=True), st.integers(0, 2**31), st.integers(2, 3))
def test_zip_unzip_copy(st_, seed, ncopies):
    shape, tile = st_
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    xi = rng.integers(-5, 5, shape).astype(np.int32)
    names = [f"c{i}" for i in range(ncopies)]
    results = ", ".join(f"{c}: f32[{shape_list(shape)}]" for c in names[1:])
    stores = "\n  ".join(f"store({c}, {c}s)" for c in names[1:])
    src = f"""kernel k(x: f32[{shape_list(shape)}], xi: i32[{shape_list(shape)}]) -> ({results}, a: f32[{shape_list(shape)}],
                                                                              b: i32[{shape_list(shape)}], m: f32[{shape_list(shape)}]) {{
  fn mix(u, v) = u * cast(v, f32)
  xs = load(x, tile=[{shape_list(tile)}])
  is = load(xi, tile=[{shape_list(tile)}])
  {', '.join(c + 's' for c in names)} = copy(xs)
  z = zip(c0s, is)
  z1, z2 = copy(z)
  p, q = unzip(z1)
  store(a, p)
  store(b, q)
  ms = map(z2, fn=mix)
  store(m, ms)
  {stores}
}}
"""
    prog, outs = run(src, {"x": x, "xi": xi})
    for c in names[1:]:
        np.testing.assert_array_equal(outs[c], x)
    np.testing.assert_array_equal(outs["a"], x)
    np.testing.assert_array_equal(outs["b"], xi)
    np.testing.assert_array_equal(outs["m"], x * xi.astype(np.float32))
    assert str(prog.streams["z"].elem) == f"(f32[{shape_list(prog.streams['xs'].elem.shape)}], " \
                                          f"i32[{shape_list(prog.streams['is'].elem.shape)}])"


@SET
@given(st.integers(2, 4), st.integers(2, 4), st.integers(1, 2), st.integers(1, 3), st.integers(0, 2**31))
def test_bufferize_streamify_with_repeat(a, b, rank, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((a, b, 2)).astype(np.float32)
    out_dims = (a,) * (rank == 1) + ((n,) if n > 1 else ()) + ((a,) * (rank == 2)) + (b,)
    rep = f", repeat={n}" if n > 1 else ""
    src = f"""kernel k(x: f32[{a}, {b}, 2]) -> (y: f32[{shape_list(out_dims)}, 2]) {{
  xs = load(x, tile=[1, 1, 2])
  bs = bufferize(xs, rank={rank})
  ys = streamify(bs{rep})
  store(y, ys)
}}
"""
    prog, outs = run(src, {"x": x})
    assert prog.streams["bs"].dims == ((a,) if rank == 1 else ())
    buffered = x[:, None] if rank == 1 else x[None]  # [outer..., 1, inner..., 2]
    ref = np.broadcast_to(buffered, buffered.shape[:1 if rank == 1 else 0] + (n,) + buffered.shape[2 if rank == 1 else 1:])
    np.testing.assert_array_equal(outs["y"], ref.reshape(out_dims + (2,)))


def test_bufferize_that_does_not_fit_is_a_resource_error():
    src = """kernel k(x: f32[4096, 4096]) -> (y: f32[4096, 4096]) {
  xs = load(x, tile=[64, 64])
  bs = bufferize(xs, rank=2)
  ys = streamify(bs)
  store(y, ys)
}
"""
    with pytest.raises(AspError) as ei:
        asp_lang.compile(src, machine="rdu-mini")
    assert ei.value.kind == "ResourceError" and ei.value.span.line == 3


# ------------------------------------------------------------------ gather / scatter

@SET
@given(st.integers(2, 6), st.integers(1, 6), st.integers(1, 8), st.integers(0, 2**31))
def test_gather_and_scatter(rows, d, nidx, seed):
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((rows, d)).astype(np.float32)
    idx = rng.integers(0, rows, (nidx,)).astype(np.int32)
    perm = rng.permutation(rows).astype(np.int32)
    src = f"""kernel k(t: f32[{rows}, {d}], i: i32[{nidx}], p: i32[{rows}]) -> (g: f32[{nidx}, {d}], s: f32[{rows}, {d}]) {{
  is = load(i, tile=[1])
  gs = gather(t, is, tile=[1, {d}])
  store(g, gs)
  ps = load(p, tile=[1])
  ts = load(t, tile=[1, {d}])
  scatter(s, ps, ts)
}}
"""
    prog, outs = run(src, {"t": table, "i": idx, "p": perm})
    np.testing.assert_array_equal(outs["g"].reshape(nidx, d), table[idx])
    ref = np.empty_like(table)
    ref[perm] = table
    np.testing.assert_array_equal(outs["s"], ref)


def test_scatter_leaves_unwritten_rows_undefined_and_checks_indices():
    src = """kernel k(t: f32[2, 3], p: i32[2]) -> (s: f32[4, 3]) {
  ps = load(p, tile=[1])
  ts = load(t, tile=[1, 3])
  scatter(s, ps, ts)
}
"""
    t = np.arange(6, dtype=np.float32).reshape(2, 3)
    _, outs = run(src, {"t": t, "p": np.array([3, 0], np.int32)})
    np.testing.assert_array_equal(outs["s"][[3, 0]], t)
    assert np.isnan(outs["s"][[1, 2]]).all()
    prog = asp_lang.compile(src, filename="sc.asp")
    for bad in ([4, 0], [-1, 0]):
        with pytest.raises(AspError) as ei:
            asp_lang.run(prog, {"t": t, "p": np.array(bad, np.int32)})
        assert ei.value.kind == "RoutingError"
        assert ei.value.render().startswith("sc.asp")
    gsrc = """kernel k(t: f32[2, 3], i: i32[2]) -> (g: f32[2, 3]) {
  is = load(i, tile=[1])
  gs = gather(t, is, tile=[1, 3])
  store(g, gs)
}
"""
    prog = asp_lang.compile(gsrc, filename="g.asp")
    with pytest.raises(AspError) as ei:
        asp_lang.run(prog, {"t": t, "i": np.array([0, 2], np.int32)})
    assert ei.value.kind == "RoutingError"
    for bad, kind in [("tile=[2, 3]", "ShapeError"), ("tile=[1, 1]", "ShapeError")]:
        with pytest.raises(AspError) as ei:
            asp_lang.compile(gsrc.replace("tile=[1, 3])", bad + ")"))
        assert ei.value.kind == kind


# ------------------------------------------------------------------ selector / partition / merge

@st.composite
def routing(draw):
    t = draw(st.integers(2, 8))
    n = draw(st.integers(2, 5))
    k = draw(st.sampled_from([1, 1, 2])) if n >= 2 else 1
    used = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))  # others stay empty
    if k == 2 and len(used) < 2:
        used = [0, 1]
    rows = []
    for _ in range(t):
        rows.append(draw(st.lists(st.sampled_from(used), min_size=k, max_size=k, unique=True)))
    return t, n, k, np.array(rows, np.int32)


@settings(max_examples=40, deadline=None)
@given(routing(), st.integers(1, 4), st.integers(0, 2**31))
def test_partition_merge_round_trip(route, d, seed):
    t, n, k, idx = route
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((t, d)).astype(np.float32)
    w = rng.standard_normal((n, 1, d)).astype(np.float32)
    flat = "\n  flat = flatten(merged, dims=[0, 1])" if k == 1 else ""
    out = "flat" if k == 1 else "merged"
    yshape = f"{t}, {d}" if k == 1 else f"{t}, {k}, {d}"
    src = f"""kernel k(x: f32[{t}, {d}], sel: i32[{t}, {k}], w: f32[{n}, 1, {d}]) -> (y: f32[{yshape}], s: f32[{n}, {d}],
                                                                            c: f32[{yshape}]) {{
  fn scale(u, v) = u * v
  fn add(a, u) = a + u
  ss = load(sel, tile=[1, {k}])
  sl = selector(ss, n={n})
  s1, s2, s3, s4 = copy(sl)
  xs = load(x, tile=[1, {d}])
  x1, x2, x3 = copy(xs)
  parts = partition(x1, s1)
  p1, p2 = copy(parts)
  ws = load(w, tile=[1, 1, {d}])
  we = expand(ws, like=p2)
  o = map(p1, we, fn=scale)
  merged = merge(o, s2){flat}
  store(y, {out})
  q = partition(x2, s3)
  sums = accum(q, rank=1, init=zeros([1, {d}]), fn=add)
  store(s, sums)
  r = partition(x3, s4)
  cs = scan(r, rank=1, init=zeros([1, {d}]), fn=add)
  cm = merge(cs, sl_b){'' if k != 1 else ''}
  store(c, cm2)
}}
"""
    # the running sums go back through a fifth copy of the selector
    src = src.replace("s1, s2, s3, s4 = copy(sl)", "s1, s2, s3, s4, sl_b = copy(sl)")
    src = src.replace("store(c, cm2)", "cm2 = flatten(cm, dims=[0, 1])\n  store(c, cm2)" if k == 1 else
                      "store(c, cm)")
    prog, outs = run(src, {"x": x, "sel": idx, "w": w})
    assert prog.streams["parts"].dynamic and prog.streams["parts"].dims[0] == n
    ref = x[:, None, :] * w[idx, 0, :]  # [T, k, D]
    np.testing.assert_allclose(outs["y"], ref.reshape(outs["y"].shape), rtol=1e-6)
    sums = np.zeros((n, d))
    for tok in range(t):
        for j in range(k):
            sums[idx[tok, j]] += x[tok]
    np.testing.assert_allclose(outs["s"], sums, rtol=1e-5, atol=1e-6)  # empty branches sum to 0
    run_sums = np.zeros((t, k, d))
    acc = np.zeros((n, d))
    for tok in range(t):
        for j in range(k):
            acc[idx[tok, j]] += x[tok]
            run_sums[tok, j] = acc[idx[tok, j]]
    np.testing.assert_allclose(outs["c"], run_sums.reshape(outs["c"].shape), rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(routing(), st.integers(1, 3), st.integers(0, 2**31), st.sampled_from(["scan", "accum"]))
def test_partition_with_two_accumulators(route, d, seed, op):
    """A tuple accumulator (f32 sum, i32 count) per branch, empty branches included (an empty
    branch of a scan used to lose its second accumulator: IndexError)."""
    t, n, k, idx = route
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((t, d)).astype(np.float32)
    if op == "scan":
        tail = """  ma = merge(a, s2)
  mc = merge(c, s3)
  fa = flatten(ma, dims=[0, 1])
  fc = flatten(mc, dims=[0, 1])
  store(y, fa)
  store(z, fc)""" if k == 1 else """  ma = merge(a, s2)
  mc = merge(c, s3)
  store(y, ma)
  store(z, mc)"""
        shapes = (f"{t}, {d}", f"{t}, {d}") if k == 1 else (f"{t}, {k}, {d}", f"{t}, {k}, {d}")
    else:
        tail = "  store(y, a)\n  store(z, c)"
        shapes = (f"{n}, {d}", f"{n}, {d}")
    src = f"""kernel k(x: f32[{t}, {d}], sel: i32[{t}, {k}]) -> (y: f32[{shapes[0]}], z: i32[{shapes[1]}]) {{
  fn two(a, c, u) = (a + u, c + cast(u > 0.0, i32))
  ss = load(sel, tile=[1, {k}])
  sl = selector(ss, n={n})
  s1, s2, s3 = copy(sl)
  xs = load(x, tile=[1, {d}])
  p = partition(xs, s1)
  a, c = {op}(p, rank=1, init=(zeros([1, {d}]), zeros([1, {d}], dtype=i32)), fn=two)
{tail}
}}
""".replace("s1, s2, s3 = copy(sl)", "s1, s2, s3 = copy(sl)" if op == "scan" else "s1 = copy(sl)")
    if op == "accum":
        src = src.replace("  s1 = copy(sl)\n", "").replace("partition(xs, s1)", "partition(xs, sl)")
    _, outs = run(src, {"x": x, "sel": idx})
    assert outs["z"].dtype == np.int32
    sums, cnts = np.zeros((n, d)), np.zeros((n, d), np.int64)
    run_s, run_c = np.zeros((t, k, d)), np.zeros((t, k, d), np.int64)
    for tok in range(t):
        for j in range(k):
            b = idx[tok, j]
            sums[b] += x[tok]
            cnts[b] += x[tok] > 0
            run_s[tok, j], run_c[tok, j] = sums[b], cnts[b]
    if op == "accum":
        np.testing.assert_allclose(outs["y"], sums, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(outs["z"], cnts)
    else:
        np.testing.assert_allclose(outs["y"], run_s.reshape(outs["y"].shape), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(outs["z"], run_c.reshape(outs["z"].shape))


@settings(max_examples=20, deadline=None)
@given(routing(), st.integers(2, 3), st.integers(0, 2**31))
def test_partition_of_sub_streams(route, c, seed):
    """rank=1: each element's whole row of c tiles goes to its branches, and comes back."""
    t, n, k, idx = route
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((t, c, 2)).astype(np.float32)
    src = f"""kernel k(x: f32[{t}, {c}, 2], sel: i32[{t}, {k}]) -> (y: f32[{t}, {k}, {c}, 2]) {{
  fn neg(u) = -u
  ss = load(sel, tile=[1, {k}])
  sl = selector(ss, n={n})
  s1, s2 = copy(sl)
  xs = load(x, tile=[1, 1, 2])
  parts = partition(xs, s1, rank=1)
  o = map(parts, fn=neg)
  m = merge(o, s2)
  store(y, m)
}}
"""
    if k == 1:
        src = src.replace(f"y: f32[{t}, {k}, {c}, 2]", f"y: f32[{t}, {c}, 2]").replace(
            "store(y, m)", "m2 = flatten(m, dims=[0, 1])\n  store(y, m2)")
    prog, outs = run(src, {"x": x, "sel": idx})
    assert prog.streams["parts"].dims[2:] == (c,)
    np.testing.assert_array_equal(outs["y"].reshape(t, k, c, 2), np.broadcast_to(-x[:, None], (t, k, c, 2)))


def test_top2_selector_from_argtopk():
    """A top-2 router: argtopk gives two distinct branches per token; the merge puts each token's
    two expert outputs side by side."""
    t, d, e = 6, 4, 3
    rng = np.random.default_rng(5)
    x = rng.standard_normal((t, d)).astype(np.float32)
    wr = rng.standard_normal((d, e)).astype(np.float32)
    src = f"""kernel k(x: f32[{t}, {d}], wr: f32[{d}, {e}]) -> (y: f32[{t}, 2, {d}]) {{
  fn route(v, w) = argtopk(matmul(v, w), k=2, axis=1)
  fn expert(u) = u * cast(pos(0) + 1, f32)
  xs = load(x, tile=[1, {d}])
  xa, xb = copy(xs)
  ws = load(wr, tile=[{d}, {e}], repeat={t}, at=0)
  idx = map(xa, ws, fn=route)
  sl = selector(idx, n={e})
  s1, s2 = copy(sl)
  parts = partition(xb, s1)
  o = map(parts, fn=expert)
  m = merge(o, s2)
  store(y, m)
}}
"""
    with pytest.raises(AspError) as ei:  # pos() on the routed (dynamic) dimension is refused
        asp_lang.compile(src)
    assert ei.value.kind == "ArgumentError"
    src = src.replace("fn expert(u) = u * cast(pos(0) + 1, f32)", "fn expert(u, s) = u * s").replace(
        "o = map(parts, fn=expert)",
        "p1, p2 = copy(parts)\n  sc = load(scales, tile=[1, 1])\n  se = expand(sc, like=p2)\n  o = map(p1, se, fn=expert)")
    src = src.replace(f"wr: f32[{d}, {e}])", f"wr: f32[{d}, {e}], scales: f32[{e}, 1])")
    scales = np.array([[1.0], [10.0], [100.0]], np.float32)
    _, outs = run(src, {"x": x, "wr": wr, "scales": scales})
    top2 = np.argsort(-(x.astype(np.float64) @ wr), axis=1, kind="stable")[:, :2]
    np.testing.assert_allclose(outs["y"], x[:, None, :] * scales[top2, 0][:, :, None], rtol=1e-6)


def test_bad_selectors_are_routing_errors():
    src = """kernel k(x: f32[3, 2], sel: i32[3, 2]) -> (y: f32[3, 2, 2]) {
  ss = load(sel, tile=[1, 2])
  sl = selector(ss, n=3)
  s1, s2 = copy(sl)
  xs = load(x, tile=[1, 2])
  p = partition(xs, s1)
  m = merge(p, s2)
  store(y, m)
}
"""
    prog = asp_lang.compile(src, filename="sel.asp")
    x = np.ones((3, 2), np.float32)
    ok = asp_lang.run(prog, {"x": x, "sel": np.array([[0, 2], [1, 0], [2, 1]], np.int32)})
    np.testing.assert_array_equal(ok["y"], np.ones((3, 2, 2)))
    for bad in ([[0, 3], [1, 0], [2, 1]], [[0, -1], [1, 0], [2, 1]], [[1, 1], [1, 0], [2, 1]]):
        with pytest.raises(AspError) as ei:
            asp_lang.run(prog, {"x": x, "sel": np.array(bad, np.int32)})
        assert ei.value.kind == "RoutingError", ei.value.short()
        assert ei.value.render().startswith("sel.asp")
    for body, kind in [("sl = selector(ss, n=1)", "ShapeError"), ("sl = selector(ss)", "ArgumentError"),
                       ("sl = selector(x, n=3)", "TypeError")]:
        with pytest.raises(AspError) as ei:
            asp_lang.compile(src.replace("sl = selector(ss, n=3)", body))
        assert ei.value.kind == kind, (body, ei.value.short())


def test_routing_counts_drive_the_timing_not_the_numbers():
    text = (Path(__file__).resolve().parents[2] / "docs" / "examples" / "moe_top1.asp").read_text()
    p_uniform = asp_lang.compile(text, sizes={"T": 8, "D": 8, "E": 4, "F": 8})
    p_skew = asp_lang.compile(text, sizes={"T": 8, "D": 8, "E": 4, "F": 8}, routing={"counts": [8, 0, 0, 0]})
    inputs = asp_lang.random_inputs(p_uniform, 3)
    np.testing.assert_array_equal(asp_lang.run(p_uniform, inputs)["y"], asp_lang.run(p_skew, inputs)["y"])
    assert asp_lang.profile(p_skew).routing["counts"] == [8, 0, 0, 0]
    # all tokens on one expert: the routed operators run at a quarter of their replicas
    assert asp_lang.profile(p_skew).cycles > asp_lang.profile(p_uniform).cycles
    even = asp_lang.compile(text, sizes={"T": 8, "D": 8, "E": 4, "F": 8}, routing={"counts": [2, 2, 2, 2]})
    assert asp_lang.profile(even).cycles == asp_lang.profile(p_uniform).cycles
    with pytest.raises(AspError) as ei:
        asp_lang.compile(text, sizes={"T": 8, "D": 8, "E": 4, "F": 8}, routing={"counts": [8, 0, 0]})
    assert ei.value.kind == "RoutingError"


def test_every_operator_is_exercised_here():
    import inspect
    text = inspect.getsource(inspect.getmodule(test_every_operator_is_exercised_here))
    from asp_lang.ops import OPS
    missing = [op for op in OPS if f"{op}(" not in text]
    assert not missing, missing


COMM = """kernel comm(x: f32[M, N] @split(0)) -> (s: f32[M / P, N], g: f32[M, N], r: f32[M / P, N] @split(0),
                                         t: f32[M, N] @split(0)) {
  sockets P = 2
  sizes M = 8, N = 4
  xs = load(x, tile=[1, N])
  a, b, c, d = copy(xs)
  ss = all_reduce(a)
  store(s, ss)
  gs = all_gather(b, at=0)
  gf = flatten(gs, dims=[0, 1])
  store(g, gf)
  rs = reduce_scatter(c, dim=0)
  store(r, rs)
  send(d, to=1, on=[0])
  send(d, to=0, on=[1])
  e = recv(from=1, on=[0])
  e = recv(from=0, on=[1])
  store(t, e)
}
"""


def test_communication_operators_against_numpy():
    """On 2 sockets each holding half of x's rows (x0, x1): all_reduce gives x0 + x1 on both,
    all_gather stacks x0 and x1 back into x, reduce_scatter leaves socket i block i of x0 + x1,
    and the send/recv swap gives each socket the other's rows."""
    prog = asp_lang.compile(COMM)
    x = np.arange(32, dtype=np.float32).reshape(8, 4) ** 1.5
    out = asp_lang.run(prog, {"x": x})
    x0, x1 = x[:4], x[4:]
    np.testing.assert_array_equal(out["s"], x0 + x1)
    np.testing.assert_array_equal(out["g"], x)
    np.testing.assert_array_equal(out["r"], x0 + x1)  # blocks [0:2] and [2:4], joined
    np.testing.assert_array_equal(out["t"], np.concatenate([x1, x0]))
