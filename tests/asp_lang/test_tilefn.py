"""Tile-function builtins against numpy and PyTorch on random tiles, the dtype rules, shape
errors, and the registry's facets.

Each builtin is evaluated the way the interpreter does it: typed by ``check_fn`` and run by
``eval_fn`` on arrays with leading stream ("batch") axes, and compared element by element
with an independent reference.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asp_lang import AspError, parse
from asp_lang.errors import ArgumentError, NameError_, ShapeError, SizeError, TypeError_
from asp_lang.tile_builtins import BUILTINS, MAX_TILE_ELEMS
from asp_lang.tilefn import check_fn, eval_fn
from asp_lang.types import TileT, round_bf16, round_to

SET = settings(max_examples=40, deadline=None)
F32_EPS = 2.0 ** -23
BF16_EPS = 2.0 ** -7


def fn_of(expr: str, params: tuple[str, ...] = ("x",), lets: tuple[str, ...] = ()):
    body = (f"fn f({', '.join(params)}) = {expr}" if not lets else
            f"fn f({', '.join(params)}) {{\n" + "".join(f"    let {l}\n" for l in lets) + f"    return {expr}\n  }}")
    return parse(f"kernel k() -> (y: f32[1]) {{\n  {body}\n}}\n", "fn.asp").fns[0]


def typed(expr: str, types: dict[str, TileT] | None = None, sizes=None, rank: int = 0, lets=()):
    types = types or {}
    return check_fn(fn_of(expr, tuple(types), lets), tuple(types.values()), sizes or {"N": 4}, rank)


def ev(expr: str, args: dict[str, tuple[str, np.ndarray]], batch: tuple[int, ...] = (), lets=(), sizes=None):
    """Evaluate ``expr`` over arrays shaped ``batch + tile``; returns (typed fn, result arrays)."""
    types = {n: TileT(dt, a.shape[len(batch):]) for n, (dt, a) in args.items()}
    tf = typed(expr, types, sizes, len(batch), lets)
    outs = eval_fn(tf, [round_to(dt, a) for dt, a in args.values()],
                   lambda d: np.arange(batch[d]).reshape([batch[d] if i == d else 1 for i in range(len(batch))]))
    outs = [np.broadcast_to(np.asarray(o), batch + t.shape) for o, t in zip(outs, tf.results)]
    return tf, outs


def ev1(expr, args, batch=(), **kw):
    tf, outs = ev(expr, args, batch, **kw)
    return tf.results[0], outs[0]


shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)
batches = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)
seeds = st.integers(0, 2**32 - 1)


def rand(rng, shape, dtype="f32", scale=2.0):
    if dtype == "i32":
        return rng.integers(-20, 20, shape).astype(np.int32)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    return round_to(dtype, (rng.standard_normal(shape) * scale).astype(np.float32))


def t64(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


# ------------------------------------------------------------------ elementwise

UNARY_REF = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "tanh": np.tanh, "sin": np.sin, "cos": np.cos,
    "rsqrt": lambda x: 1 / np.sqrt(x), "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "erf": lambda x: torch.erf(t64(x)).numpy(),
    "abs": np.abs, "relu": lambda x: np.maximum(x, 0), "floor": np.floor,
}


@pytest.mark.parametrize("name", sorted(UNARY_REF))
@SET
@given(shape=shapes, batch=batches, seed=seeds)
def test_unary_f32(name, shape, batch, seed):
    rng = np.random.default_rng(seed)
    x = rand(rng, batch + shape)
    if name in ("log", "sqrt", "rsqrt"):
        x = np.where(rng.random(x.shape) < 0.8, np.abs(x), x).astype(np.float32)  # some NaNs too
    t, out = ev1(f"{name}(x)", {"x": ("f32", x)}, batch)
    assert t == TileT("f32", shape) and out.dtype == np.float32
    with np.errstate(all="ignore"):
        ref = UNARY_REF[name](x.astype(np.float64))
    np.testing.assert_allclose(out, ref, rtol=4 * F32_EPS, atol=1e-30, equal_nan=True)


@pytest.mark.parametrize("name", sorted(UNARY_REF))
def test_unary_bf16_and_f16_round_their_results(name):
    rng = np.random.default_rng(1)
    for dt, eps, ref_dt in (("bf16", BF16_EPS, torch.bfloat16), ("f16", 2.0 ** -10, torch.float16)):
        x = round_to(dt, np.abs(rand(rng, (4, 8), dt)) + 0.25)
        t, out = ev1(f"{name}(x)", {"x": (dt, x)})
        assert t.dtype == dt
        np.testing.assert_array_equal(round_to(dt, out), out)  # already representable
        with np.errstate(all="ignore"):
            ref = torch.from_numpy(UNARY_REF[name](x.astype(np.float64))).to(ref_dt).double().numpy()
        np.testing.assert_allclose(out, ref, rtol=eps, atol=1e-6)


def test_erf_matches_torch_to_1e6():
    x = np.concatenate([np.linspace(-6, 6, 20001), np.array([0.0, -0.0, 0.49999, 0.5, 0.50001, 1e-8, -1e-8,
                                                              3.5, 10.0, -10.0, np.inf, -np.inf])])
    x = x.astype(np.float32)
    _, out = ev1("erf(x)", {"x": ("f32", x)})
    ref = torch.erf(t64(x)).numpy()
    assert np.max(np.abs(out - ref)) <= 1e-6
    nz = np.abs(ref) > 1e-30
    assert np.max(np.abs(out[nz] - ref[nz]) / np.abs(ref[nz])) <= 1e-6
    # odd, monotone, bounded
    np.testing.assert_array_equal(ev1("erf(x)", {"x": ("f32", -x)})[1], -out)
    assert np.all(np.diff(out[:20001]) >= 0) and np.all(np.abs(out) <= 1)


def test_unary_integer_rules():
    x = np.array([[-3, 0, 5]], np.int32)
    assert ev1("abs(x)", {"x": ("i32", x)})[1].tolist() == [[3, 0, 5]]
    assert ev1("relu(x)", {"x": ("i32", x)})[1].tolist() == [[0, 0, 5]]
    assert ev1("-x", {"x": ("i32", x)})[1].tolist() == [[3, 0, -5]]
    for f in ("exp", "floor", "sqrt", "erf", "sigmoid"):
        with pytest.raises(TypeError_):
            typed(f"{f}(x)", {"x": TileT("i32", (1, 3))})
    for f in ("abs", "relu", "exp"):
        with pytest.raises(TypeError_):
            typed(f"{f}(x)", {"x": TileT("bool", (1, 3))})
    # on an integer literal a float function gives a float constant
    assert typed("exp(1)").results == (TileT("f32", ()),)


@SET
@given(a_shape=shapes, seed=seeds, op=st.sampled_from(["maximum", "minimum"]))
def test_maximum_minimum_broadcast_and_propagate_nan(a_shape, seed, op):
    rng = np.random.default_rng(seed)
    b_shape = tuple(1 if rng.random() < 0.4 else s for s in a_shape)[rng.integers(0, len(a_shape)):]
    a, b = rand(rng, (2,) + a_shape), rand(rng, (2,) + b_shape)
    a[rng.random(a.shape) < 0.1] = np.nan
    t, out = ev1(f"{op}(a, b)", {"a": ("f32", a), "b": ("f32", b)}, (2,))
    assert t.shape == np.broadcast_shapes(a_shape, b_shape)
    b_al = b.reshape((2,) + (1,) * (len(a_shape) - len(b_shape)) + b_shape)
    np.testing.assert_array_equal(out, getattr(np, op)(a, b_al))


def test_where_broadcasts_and_needs_bool():
    rng = np.random.default_rng(0)
    a, b = rand(rng, (3, 4, 1)), rand(rng, (3, 1, 5))
    c = rng.random((3, 4, 5)) < 0.5
    t, out = ev1("where(c, a, b)", {"c": ("bool", c), "a": ("f32", a), "b": ("f32", b)}, (3,))
    assert t == TileT("f32", (4, 5))
    np.testing.assert_array_equal(out, np.where(c, a, b))
    t, out = ev1("where(a > 0, a, 0)", {"a": ("f32", a)}, (3,))
    np.testing.assert_array_equal(out, np.maximum(a, 0))
    with pytest.raises(TypeError_):
        typed("where(a, a, a)", {"a": TileT("f32", (2,))})
    with pytest.raises(ShapeError):
        typed("where(c, a, b)", {"c": TileT("bool", (3,)), "a": TileT("f32", (2,)), "b": TileT("f32", (2,))})


@SET
@given(shape=shapes, batch=batches, seed=seeds)
def test_binary_operators(shape, batch, seed):
    rng = np.random.default_rng(seed)
    a, b = rand(rng, batch + shape), rand(rng, batch + shape)
    args = {"a": ("f32", a), "b": ("f32", b)}
    with np.errstate(all="ignore"):
        for op, ref in (("+", a + b), ("-", a - b), ("*", a * b), ("/", a / b), ("%", np.remainder(a, b)),
                        ("**", np.power(np.abs(a), b)), ("<", a < b), ("==", a == b), (">=", a >= b)):
            expr = f"abs(a) {op} b" if op == "**" else f"a {op} b"
            t, out = ev1(expr, args, batch)
            assert t.dtype == ("bool" if op in ("<", "==", ">=") else "f32")
            np.testing.assert_allclose(out, ref, rtol=2 * F32_EPS, equal_nan=True)
    ia, ib = rand(rng, batch + shape, "i32"), rand(rng, batch + shape, "i32")
    ib[ib == 0] = 3
    for op, ref in (("+", ia + ib), ("*", ia * ib), ("%", np.remainder(ia, ib)), ("-", ia - ib)):
        t, out = ev1(f"a {op} b", {"a": ("i32", ia), "b": ("i32", ib)}, batch)
        assert t.dtype == "i32"
        np.testing.assert_array_equal(out, ref)
    ca, cb = a > 0, b > 0
    for op, ref in (("&", ca & cb), ("|", ca | cb)):
        np.testing.assert_array_equal(ev1(f"a {op} b", {"a": ("bool", ca), "b": ("bool", cb)}, batch)[1], ref)
    np.testing.assert_array_equal(ev1("~a", {"a": ("bool", ca)}, batch)[1], ~ca)


# ------------------------------------------------------------------ casts and rounding

def _torch_round(x: np.ndarray, dt) -> np.ndarray:
    return torch.from_numpy(x).to(dt).to(torch.float32).numpy()


def test_bf16_rounding_matches_torch_on_random_bit_patterns():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    # ties, near-ties, and the edges of the range
    special = np.array([0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000,
                        0xFF800000, 0x00000001, 0x80008000, 0x007FFFFF, 0x7FC00000, 0x7F800001, 0xFFFFFFFF,
                        0x00000000, 0x80000000], np.uint32)
    x = np.concatenate([bits, special]).view(np.float32)
    got = round_bf16(x)
    ref = _torch_round(x, torch.bfloat16)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    ok = ~np.isnan(ref)
    np.testing.assert_array_equal(got[ok].view(np.uint32), ref[ok].view(np.uint32))
    # also through cast() in a tile function, and for 0-d values
    _, out = ev1("cast(x, bf16)", {"x": ("f32", x[:4096].reshape(64, 64))})
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref[:4096].reshape(64, 64)))
    assert round_bf16(np.float32(1.00390625)).shape == ()
    assert float(round_bf16(np.float32(1.00390625))) == 1.0  # a tie goes to even


def test_f16_rounding_matches_numpy_and_torch():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(50_000) * 10.0 ** rng.integers(-9, 6, 50_000),
                        [65504.0, 65520.0, 1e6, -1e6, 6e-8, 2.9e-8, np.inf, np.nan]]).astype(np.float32)
    _, out = ev1("cast(x, f16)", {"x": ("f32", x)})
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(out, x.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(out, _torch_round(x, torch.float16))
    np.testing.assert_array_equal(round_to("f16", x), out)


def test_casts_between_dtypes():
    x = np.array([[-2.7, -0.5, 0.0, 0.5, 2.7, 3e9, -3e9, np.nan, np.inf, -np.inf, 1e30, 2147483520.0]],
                 np.float32)
    _, out = ev1("cast(x, i32)", {"x": ("f32", x)})
    assert out.dtype == np.int32
    assert out.tolist() == [[-2, 0, 0, 0, 2, 2**31 - 1, -2**31, 0, 2**31 - 1, -2**31, 2**31 - 1, 2147483520]]
    fin = np.abs(x) < 2**31
    np.testing.assert_array_equal(out[fin], torch.from_numpy(x[fin]).to(torch.int32).numpy())
    _, b = ev1("cast(x, bool)", {"x": ("f32", x)})
    np.testing.assert_array_equal(b, x.astype(bool))
    i = np.array([[-3, 0, 7]], np.int32)
    _, f = ev1("cast(x, f32)", {"x": ("i32", i)})
    assert f.dtype == np.float32 and f.tolist() == [[-3.0, 0.0, 7.0]]
    _, f = ev1("cast(x > 0, f32)", {"x": ("i32", i)})
    assert f.tolist() == [[0.0, 0.0, 1.0]]
    _, big = ev1("cast(x, bf16)", {"x": ("i32", np.array([[16777217, 257]], np.int32))})
    assert big.tolist() == [[16777216.0, 256.0]]
    with pytest.raises(ArgumentError):
        typed("cast(x, f64)", {"x": TileT("f32", (2,))})


def test_bf16_arithmetic_rounds_every_operation():
    a = np.array([[1.0, 256.0]], np.float32)
    b = np.array([[2.0 ** -8, 1.0]], np.float32)
    _, out = ev1("a + b", {"a": ("bf16", a), "b": ("bf16", b)})
    assert out.tolist() == [[1.0, 256.0]]  # 1 + 2^-8 and 257 are not bf16 numbers: ties to even
    _, out = ev1("(a + b) - a", {"a": ("f32", a), "b": ("f32", b)})
    assert out.tolist() == [[2.0 ** -8, 1.0]]


# ------------------------------------------------------------------ reductions

@pytest.mark.parametrize("name", ["sum", "max", "min", "mean", "argmax", "argmin", "cumsum"])
@SET
@given(shape=shapes, batch=batches, seed=seeds, data=st.data())
def test_reductions(name, shape, batch, seed, data):
    rng = np.random.default_rng(seed)
    ax = data.draw(st.integers(-len(shape), len(shape) - 1))
    dt = data.draw(st.sampled_from(["f32", "i32"] if name != "mean" else ["f32", "bf16"]))
    x = rand(rng, batch + shape, dt)
    if dt == "i32":
        x = (x % 5).astype(np.int32)  # ties for argmax/argmin
    t, out = ev1(f"{name}(x, axis={ax})", {"x": (dt, x)}, batch)
    nax = ax % len(shape) + len(batch)
    if name == "cumsum":
        ref = np.cumsum(x.astype(np.float64), axis=nax)
        assert t == TileT(dt, shape)
    elif name in ("argmax", "argmin"):
        ref = np.expand_dims(getattr(np, name)(x, axis=nax), nax)
        tref = getattr(torch, name)(torch.from_numpy(x.astype(np.float64)), dim=nax, keepdim=True).numpy()
        np.testing.assert_array_equal(ref, tref)  # first index on ties, as torch
        assert t.dtype == "i32"
    else:
        ref = getattr(np, name)(x.astype(np.float64), axis=nax, keepdims=True)
        assert t.shape == tuple(1 if i == ax % len(shape) else s for i, s in enumerate(shape))
    assert out.shape == batch + t.shape
    tol = BF16_EPS if dt == "bf16" else 8 * F32_EPS
    np.testing.assert_allclose(out, ref, rtol=tol, atol=1e-5)


def test_reduction_axis_errors():
    for f in ("sum", "max", "mean", "argmax", "cumsum", "flip"):
        with pytest.raises(ArgumentError):
            typed(f"{f}(x, axis=2)", {"x": TileT("f32", (2, 3))})
        with pytest.raises(ArgumentError):
            typed(f"{f}(x, axis=-3)", {"x": TileT("f32", (2, 3))})
        with pytest.raises(ArgumentError):
            typed(f"{f}(x)", {"x": TileT("f32", (2, 3))})
    with pytest.raises(TypeError_):
        typed("sum(x, axis=0)", {"x": TileT("bool", (2, 3))})
    with pytest.raises(TypeError_):
        typed("mean(x, axis=0)", {"x": TileT("i32", (2, 3))})


@SET
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple), batch=batches, seed=seeds,
       data=st.data())
def test_topk_and_argtopk_match_torch(shape, batch, seed, data):
    rng = np.random.default_rng(seed)
    ax = data.draw(st.integers(-len(shape), len(shape) - 1))
    k = data.draw(st.integers(1, shape[ax]))
    x = rng.permutation(np.arange(math.prod(batch + shape))).reshape(batch + shape).astype(np.float32)  # distinct
    nax = ax % len(shape) + len(batch)
    tv = torch.topk(torch.from_numpy(x), k, dim=nax, largest=True, sorted=True)
    t, vals = ev1(f"topk(x, k={k}, axis={ax})", {"x": ("f32", x)}, batch)
    assert t.shape == tuple(k if i == ax % len(shape) else s for i, s in enumerate(shape))
    np.testing.assert_array_equal(vals, tv.values.numpy())
    t, idx = ev1(f"argtopk(x, k={k}, axis={ax})", {"x": ("f32", x)}, batch)
    assert t.dtype == "i32" and idx.dtype == np.int32
    np.testing.assert_array_equal(idx, tv.indices.numpy())
    # with ties the values still agree with torch, and indices point at those values
    xt = np.floor(x / 3).astype(np.float32)
    _, vals = ev1(f"topk(x, k={k}, axis={ax})", {"x": ("f32", xt)}, batch)
    np.testing.assert_array_equal(vals, torch.topk(torch.from_numpy(xt), k, dim=nax).values.numpy())
    _, idx = ev1(f"argtopk(x, k={k}, axis={ax})", {"x": ("f32", xt)}, batch)
    np.testing.assert_array_equal(np.take_along_axis(xt, idx, axis=nax), vals)


def test_topk_nan_ranks_highest_and_k_is_checked():
    x = np.array([[1.0, np.nan, 3.0, 2.0]], np.float32)
    _, idx = ev1("argtopk(x, k=2, axis=1)", {"x": ("f32", x)})
    assert idx.tolist() == [[1, 2]]
    for k in (0, 5):
        with pytest.raises(ArgumentError):
            typed(f"topk(x, k={k}, axis=1)", {"x": TileT("f32", (1, 4))})


# ------------------------------------------------------------------ matmul and layout

@SET
@given(m=st.integers(1, 6), k=st.integers(1, 6), n=st.integers(1, 6), lead=st.sampled_from([(), (2,), (1,)]),
       batch=batches, seed=seeds)
def test_matmul(m, k, n, lead, batch, seed):
    rng = np.random.default_rng(seed)
    a, b = rand(rng, batch + lead + (m, k)), rand(rng, batch + (2,) * bool(lead) + (k, n))
    t, out = ev1("matmul(a, b)", {"a": ("f32", a), "b": ("f32", b)}, batch)
    a_al = a.reshape(batch + (1,) * (len(t.shape) - len(lead) - 2) + lead + (m, k))
    ref = np.matmul(a_al.astype(np.float64), b.astype(np.float64))
    assert t.shape == ref.shape[len(batch):]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    _, out2 = ev1("a @ b", {"a": ("f32", a), "b": ("f32", b)}, batch)
    np.testing.assert_array_equal(out, out2)


def test_matmul_16_bit_rounds_once():
    rng = np.random.default_rng(3)
    a, b = round_bf16(rng.standard_normal((8, 64)).astype(np.float32)), round_bf16(
        rng.standard_normal((64, 8)).astype(np.float32))
    t, out = ev1("matmul(a, b)", {"a": ("bf16", a), "b": ("bf16", b)})
    assert t.dtype == "bf16"
    ref = (torch.from_numpy(a).double() @ torch.from_numpy(b).double()).to(torch.bfloat16).float().numpy()
    np.testing.assert_allclose(out, ref, rtol=BF16_EPS)
    np.testing.assert_array_equal(round_bf16(out), out)
    with pytest.raises(ShapeError):
        typed("matmul(a, b)", {"a": TileT("f32", (2, 3)), "b": TileT("f32", (2, 3))})
    with pytest.raises(ShapeError):
        typed("matmul(a, b)", {"a": TileT("f32", (3,)), "b": TileT("f32", (3, 2))})
    with pytest.raises(TypeError_):
        typed("matmul(a, b)", {"a": TileT("f32", (2, 3)), "b": TileT("bf16", (3, 2))})
    with pytest.raises(ShapeError):
        typed("matmul(a, b)", {"a": TileT("f32", (2, 2, 3)), "b": TileT("f32", (3, 3, 2))})


@SET
@given(shape=shapes, batch=batches, seed=seeds, data=st.data())
def test_layout_builtins(shape, batch, seed, data):
    rng = np.random.default_rng(seed)
    x = rand(rng, batch + shape)
    args = {"x": ("f32", x)}
    nb = len(batch)
    if len(shape) >= 2:
        np.testing.assert_array_equal(ev1("transpose(x)", args, batch)[1], np.swapaxes(x, -1, -2))
    # reshape to a random factorisation of the same size
    n = math.prod(shape)
    new = data.draw(st.sampled_from([(n,), (1, n), (n, 1)] + [(d, n // d) for d in range(1, n + 1) if n % d == 0]))
    np.testing.assert_array_equal(ev1(f"reshape(x, shape=[{', '.join(map(str, new))}])", args, batch)[1],
                                  x.reshape(batch + new))
    # broadcast size-1 axes (and new leading ones)
    src = tuple(1 if rng.random() < 0.5 else s for s in shape)
    y = rand(rng, batch + src)
    target = (2,) + shape
    np.testing.assert_array_equal(
        ev1(f"broadcast(y, shape=[{', '.join(map(str, target))}])", {"y": ("f32", y)}, batch)[1],
        np.broadcast_to(y.reshape(batch + (1,) + src), batch + target))
    ax = data.draw(st.integers(-len(shape), len(shape) - 1))
    np.testing.assert_array_equal(ev1(f"flip(x, axis={ax})", args, batch)[1], np.flip(x, nb + ax % len(shape)))
    size = shape[ax]
    start = data.draw(st.integers(0, size - 1))
    stop = data.draw(st.integers(start + 1, size))
    step = data.draw(st.integers(1, 3))
    sl = [slice(None)] * x.ndim
    sl[nb + ax % len(shape)] = slice(start, stop, step)
    t, out = ev1(f"slice(x, axis={ax}, start={start}, stop={stop}, step={step})", args, batch)
    np.testing.assert_array_equal(out, x[tuple(sl)])
    sl[nb + ax % len(shape)] = slice(start, None)
    np.testing.assert_array_equal(ev1(f"slice(x, axis={ax}, start={start})", args, batch)[1], x[tuple(sl)])
    other = list(shape)
    other[ax] = data.draw(st.integers(1, 3))
    z = rand(rng, batch + tuple(other))
    t, out = ev1(f"concat(x, z, axis={ax})", {"x": ("f32", x), "z": ("f32", z)}, batch)
    np.testing.assert_array_equal(out, np.concatenate([x, z], axis=nb + ax % len(shape)))
    # concat of a stream value with a constant tile (no batch axes)
    cshape = ", ".join(map(str, other))
    t, out = ev1(f"concat(x, ones([{cshape}]), axis={ax})", args, batch)
    np.testing.assert_array_equal(out, np.concatenate([x, np.ones(batch + tuple(other), np.float32)],
                                                      axis=nb + ax % len(shape)))


@SET
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple), batch=batches, seed=seeds,
       data=st.data())
def test_take_and_put(shape, batch, seed, data):
    rng = np.random.default_rng(seed)
    ax = data.draw(st.integers(-len(shape), len(shape) - 1))
    nax = len(batch) + ax % len(shape)
    ishape = list(shape)
    ishape[ax] = data.draw(st.integers(1, 4))
    x = rand(rng, batch + shape)
    idx = rng.integers(-2 * shape[ax], 2 * shape[ax], batch + tuple(ishape)).astype(np.int32)
    t, out = ev1(f"take(x, i, axis={ax})", {"x": ("f32", x), "i": ("i32", idx)}, batch)
    assert t == TileT("f32", tuple(ishape))
    np.testing.assert_array_equal(out, np.take_along_axis(x, np.mod(idx, shape[ax]), axis=nax))
    # put: unique positions per line so the result does not depend on write order
    perm = np.argsort(rng.random(batch + shape), axis=nax)
    k = min(ishape[ax], shape[ax])
    pidx = np.take(perm, np.arange(k), axis=nax).astype(np.int32)
    src = rand(rng, pidx.shape)
    t, out = ev1(f"put(x, i, s, axis={ax})", {"x": ("f32", x), "i": ("i32", pidx), "s": ("f32", src)}, batch)
    ref = x.copy()
    np.put_along_axis(ref, pidx, src, axis=nax)
    np.testing.assert_array_equal(out, ref)


def test_constants_and_iota():
    tf, outs = ev("(zeros([2, 3]), ones([2, 3], dtype=i32), full([2, 3], 2.5, dtype=bf16), full([1], -inf),"
                  " iota([2, 3], axis=1), iota([2, 3], axis=0), full([2], 3, dtype=bool))", {})
    assert [t.dtype for t in tf.results] == ["f32", "i32", "bf16", "f32", "i32", "i32", "bool"]
    z, o, f, ninf, i1, i0, b = outs
    assert z.tolist() == [[0.0] * 3] * 2 and o.dtype == np.int32 and o.tolist() == [[1] * 3] * 2
    assert f.tolist() == [[2.5] * 3] * 2 and ninf.tolist() == [-math.inf]
    assert i1.tolist() == [[0, 1, 2]] * 2 and i0.tolist() == [[0] * 3, [1] * 3] and b.tolist() == [True, True]
    with pytest.raises(SizeError):
        typed("zeros([0, 2])")
    with pytest.raises(SizeError):
        typed(f"zeros([{MAX_TILE_ELEMS}, 2])")
    with pytest.raises(ArgumentError):
        typed("full([2], x)", {"x": TileT("f32", (2,))})
    with pytest.raises(ArgumentError):
        typed("iota([2, 3], axis=2)")


def test_pos_indexes_the_stream():
    x = np.zeros((3, 4, 1), np.float32)
    _, out = ev1("cast(pos(0), f32) * 10.0 + cast(pos(1), f32) + x", {"x": ("f32", x)}, (3, 4))
    np.testing.assert_array_equal(out[..., 0], np.arange(3)[:, None] * 10 + np.arange(4)[None, :])
    with pytest.raises(ArgumentError):
        typed("pos(2)", {"x": TileT("f32", (1,))}, rank=2)


# ------------------------------------------------------------------ dtype rules

@pytest.mark.parametrize("dt", ["f32", "bf16", "f16", "i32"])
def test_weak_literals_take_the_tile_dtype(dt):
    x = TileT(dt, (2, 2))
    assert typed("x + 1", {"x": x}).results[0] == x
    assert typed("2 * x - N", {"x": x}).results[0] == x
    assert typed("maximum(x, 0)", {"x": x}).results[0] == x
    assert typed("where(x > 0, x, 1)", {"x": x}).results[0] == x
    if dt == "i32":
        with pytest.raises(TypeError_):
            typed("x + 1.5", {"x": x})
        with pytest.raises(TypeError_):
            typed("x / 2", {"x": x})
        with pytest.raises(TypeError_):
            typed("x / x", {"x": x})
        with pytest.raises(TypeError_):
            typed("x ** 2", {"x": x})
        assert typed("x % 3", {"x": x}).results[0] == x
    else:
        assert typed("x * 0.5 + 1e-05", {"x": x}).results[0] == x
        assert typed("x / 2 + x ** 2", {"x": x}).results[0] == x


def test_constants_fold_and_default_to_f32_or_i32():
    assert typed("1 + 2").results == (TileT("i32", ()),)
    assert typed("1 / 2").results == (TileT("f32", ()),)
    assert typed("N * 2").results == (TileT("i32", ()),)
    assert typed("pi + inf").results == (TileT("f32", ()),)
    assert typed("maximum(2, 3) - abs(-4)").results == (TileT("i32", ()),)
    tf, outs = ev("(1 + 2, 2 ** 10, 7 % 3, -2 ** 2, 0 ** -1, (-8) ** (1 / 3))", {})
    assert [float(o) for o in outs[:4]] == [3, 1024, 1, -4] and math.isinf(float(outs[4]))
    assert math.isnan(float(outs[5]))
    # a let bound to a constant is folded like the constant itself
    tf, outs = ev("x + v ** v", {"x": ("f32", np.zeros((2,), np.float32))}, lets=("v = -1",))
    assert outs[0].tolist() == [-1.0, -1.0]
    assert typed("x * v", {"x": TileT("i32", (2,))}, lets=("v = abs(-3)",)).results[0].dtype == "i32"
    with pytest.raises(ArgumentError):
        typed("x * v", {"x": TileT("i32", (2,))}, lets=("v = 4611686018427387904",))
    with pytest.raises(ArgumentError):
        typed("x + 2 ** 80", {"x": TileT("f32", (2,))})
    with pytest.raises(ArgumentError):
        typed("x + 1 % 0", {"x": TileT("f32", (2,))})
    with pytest.raises(TypeError_):
        typed("x + cast(1 < 2, f32)", {"x": TileT("f32", (2,))})


def test_dtype_mismatches_are_type_errors():
    f32, bf16, i32, b = TileT("f32", (2,)), TileT("bf16", (2,)), TileT("i32", (2,)), TileT("bool", (2,))
    for expr, types in [("a + b", {"a": f32, "b": bf16}), ("a * b", {"a": bf16, "b": TileT("f16", (2,))}),
                        ("maximum(a, b)", {"a": f32, "b": i32}), ("a + b", {"a": b, "b": b}),
                        ("a + 1", {"a": b}), ("a & b", {"a": f32, "b": b}), ("~a", {"a": f32}),
                        ("-a", {"a": b}), ("concat(a, b, axis=0)", {"a": f32, "b": bf16}),
                        ("where(c, a, b)", {"c": b, "a": f32, "b": bf16}), ("a / b", {"a": i32, "b": i32}),
                        ("take(a, b, axis=0)", {"a": f32, "b": f32}), ("a + [1, 2]", {"a": f32}),
                        ("a + (a, a)", {"a": f32})]:
        with pytest.raises(TypeError_) as ei:
            typed(expr, types)
        assert ei.value.span.line > 0


def test_shape_errors():
    for expr, types in [("a + b", {"a": TileT("f32", (4, 3)), "b": TileT("f32", (4, 2))}),
                        ("a * b", {"a": TileT("f32", (3,)), "b": TileT("f32", (2, 2))}),
                        ("maximum(a, b)", {"a": TileT("f32", (2, 3)), "b": TileT("f32", (3, 2))}),
                        ("a < b", {"a": TileT("f32", (5,)), "b": TileT("f32", (4,))}),
                        ("reshape(a, shape=[5])", {"a": TileT("f32", (2, 2))}),
                        ("broadcast(a, shape=[2, 3])", {"a": TileT("f32", (2, 2))}),
                        ("broadcast(a, shape=[3])", {"a": TileT("f32", (2, 3))}),
                        ("concat(a, b, axis=0)", {"a": TileT("f32", (2, 2)), "b": TileT("f32", (2, 3))}),
                        ("concat(a, b, axis=0)", {"a": TileT("f32", (2, 2)), "b": TileT("f32", (2,))}),
                        ("transpose(a)", {"a": TileT("f32", (3,))}),
                        ("take(a, b, axis=0)", {"a": TileT("f32", (2, 2)), "b": TileT("i32", (2, 3))}),
                        ("a @ b", {"a": TileT("f32", (2, 3)), "b": TileT("f32", (2, 3))})]:
        with pytest.raises(ShapeError) as ei:
            typed(expr, types)
        assert ei.value.span.line > 0 and ei.value.render().startswith("<kernel>:")


def test_call_argument_errors():
    x = {"x": TileT("f32", (2, 2))}
    for expr, err in [("nope(x)", NameError_), ("y + 1", NameError_), ("exp()", ArgumentError),
                      ("exp(x, x)", ArgumentError), ("sum(x, axis=0, axis2=1)", ArgumentError),
                      ("sum(x, 0, axis=0)", ArgumentError), ("zeros(shape=4)", ArgumentError),
                      ("zeros([x])", SizeError), ("slice(x, axis=0, start=2)", ArgumentError),
                      ("slice(x, axis=0, step=0)", ArgumentError), ("cast(x, dtype=y)", ArgumentError)]:
        with pytest.raises(err):
            typed(expr, x)
    with pytest.raises(NameError_):
        typed("x", {"x": TileT("f32", (1,)), "y": TileT("f32", (1,))}, lets=("x = 1",))
    assert typed("sum(x, 0)", x).results[0].shape == (1, 2)  # statics may be positional


# ------------------------------------------------------------------ the registry

KINDS = {"int", "ints", "dtype", "number"}
COSTS = {"simd", "tail", "reduce", "mm", "free"}

SAMPLE_CALLS = {  # one checked-and-evaluated use of every builtin, on x: f32[2, 3], i: i32[2, 3]
    "exp": "exp(x)", "log": "log(abs(x))", "sqrt": "sqrt(abs(x))", "tanh": "tanh(x)", "sin": "sin(x)",
    "cos": "cos(x)", "rsqrt": "rsqrt(abs(x))", "sigmoid": "sigmoid(x)", "erf": "erf(x)", "abs": "abs(x)",
    "relu": "relu(x)", "floor": "floor(x)", "maximum": "maximum(x, 0)", "minimum": "minimum(x, 0)",
    "where": "where(x > 0, x, 0)", "cast": "cast(x, bf16)", "sum": "sum(x, axis=1)", "max": "max(x, axis=1)",
    "min": "min(x, axis=0)", "mean": "mean(x, axis=1)", "argmax": "argmax(x, axis=1)",
    "argmin": "argmin(x, axis=0)", "cumsum": "cumsum(x, axis=1)", "matmul": "matmul(x, transpose(x))",
    "transpose": "transpose(x)", "reshape": "reshape(x, shape=[3, 2])", "broadcast": "broadcast(x, shape=[2, 2, 3])",
    "zeros": "zeros([2])", "ones": "ones([2], dtype=i32)", "full": "full([2], 3.5)", "iota": "iota([2, 3], axis=1)",
    "pos": "pos(0)", "slice": "slice(x, axis=1, start=1)", "concat": "concat(x, x, axis=0)",
    "topk": "topk(x, k=2, axis=1)", "argtopk": "argtopk(x, k=2, axis=1)", "flip": "flip(x, axis=1)",
    "take": "take(x, i, axis=1)", "put": "put(x, i, x, axis=1)",
}


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_builtin_has_all_facets(name):
    b = BUILTINS[name]
    assert b.name == name
    assert callable(b.rule) and callable(b.impl)
    assert b.cost in COSTS, b.cost
    assert isinstance(b.doc, str) and len(b.doc.strip()) >= 8, "every builtin is documented"
    assert isinstance(b.tiles, tuple) and all(isinstance(t, str) for t in b.tiles)
    for entry in b.static:
        sname, kind, _default = entry
        assert isinstance(sname, str) and kind in KINDS, entry
    assert len({*b.tiles, *(s for s, _, _ in b.static)}) == len(b.tiles) + len(b.static)


@pytest.mark.parametrize("name", sorted(SAMPLE_CALLS))
def test_sample_call_checks_and_runs(name):
    rng = np.random.default_rng(0)
    x = rand(rng, (3, 2, 3))
    i = rng.integers(0, 3, (3, 2, 3)).astype(np.int32)
    tf, outs = ev(SAMPLE_CALLS[name], {"x": ("f32", x), "i": ("i32", i)}, (3,))
    (t,) = tf.results
    assert outs[0].shape == (3,) + t.shape
    assert outs[0].dtype == {"f32": np.float32, "bf16": np.float32, "i32": np.int32, "bool": np.bool_}[t.dtype]
    cost = BUILTINS[name].cost
    if cost == "tail":
        assert tf.cost.tail > 0
    elif cost == "mm":
        assert tf.cost.mm32 == 2 * 2 * 3 * 2  # f32 operands: the slower systolic rate
    elif cost == "free":
        assert tf.cost.tail == 0 and tf.cost.mm == 0 and tf.cost.mm32 == 0


def test_every_builtin_has_a_sample_call():
    missing = sorted(set(BUILTINS) - set(SAMPLE_CALLS))
    assert not missing, f"builtins without a test here: {missing}"


def test_costs_count_work():
    x = {"x": TileT("f32", (4, 8))}
    tf = typed("exp(x) + 1", x)
    assert tf.cost.tail == 32 and tf.cost.simd == 32 and tf.cost.ops == 2
    tf = typed("sum(x, axis=1)", x)
    assert tf.cost.simd == 32
    tf = typed("matmul(a, b)", {"a": TileT("bf16", (4, 8)), "b": TileT("bf16", (8, 2))})
    assert tf.cost.mm == 2 * 4 * 8 * 2 and tf.cost.mm32 == 0
    tf = typed("transpose(x)", x)
    assert tf.cost.flops == 0 and tf.cost.ops == 0


def test_errors_are_asp_errors_with_spans():
    with pytest.raises(AspError) as ei:
        typed("exp(x) +\n    nope", {"x": TileT("f32", (2,))})
    assert isinstance(ei.value, NameError_)
    assert ei.value.span.line >= 2
