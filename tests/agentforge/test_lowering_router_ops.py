"""The op-by-op baseline lowers the ops a mixture-of-experts router uses to dispatch tokens
(transformers' grouped-matmul experts: sort the chosen expert ids, gather rows in that order,
count tokens per expert with histc, invert the permutation with index_put, floor-divide
positions by top_k). Each lowering runs on the emulator and must equal PyTorch exactly,
including ties and duplicates (sort is stable; a repeated index_put position takes the later
value), negative operands (floor vs trunc division), values on and outside histc's edges,
NaN and infinities; uses outside what a lowering supports are refused with a clear error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import asp_lang
from agentforge.baseline import build_baseline
from agentforge.capture import graph_from_export
from agentforge.lowering import UnsupportedOpError

MACHINE = asp_lang.load_machine("sn40l")


class Fn(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, *xs):
        return self.f(*xs)


def _chain(f, *xs: torch.Tensor):
    exported = torch.export.export(Fn(f).eval(), xs).run_decompositions()
    graph = graph_from_export(exported, "t", "t.py")
    return graph, build_baseline(graph, MACHINE)


def _targets(chain) -> list[str]:
    return [k.target for k in chain.kernels]


def _check(f, *xs: torch.Tensor, op: str | None = None):
    """The baseline chain of ``f`` run on the emulator equals eager PyTorch bit for bit (same dtype
    and shape; NaNs in the same places); ``op`` must be lowered to a kernel, not left out."""
    graph, chain = _chain(f, *xs)
    if op is not None:
        assert op in _targets(chain), _targets(chain)
    got = chain.run(list(xs))
    with torch.no_grad():
        ref = f(*xs)
    ref = list(ref) if isinstance(ref, (tuple, list)) else [ref]
    assert len(got) == len(ref)
    for i, (g, r) in enumerate(zip(got, ref)):
        assert g.dtype == r.dtype and g.shape == r.shape, (i, g.dtype, r.dtype, g.shape, r.shape)
        torch.testing.assert_close(g, r, rtol=0, atol=0, equal_nan=True, msg=lambda m, i=i: f"output {i}: {m}")
    return chain


def _refused(f, *xs: torch.Tensor, match: str):
    with pytest.raises(UnsupportedOpError, match=match):
        _chain(f, *xs)


# ------------------------------------------------------------------ sort

def _stable_sort(descending: bool):
    return lambda x: torch.sort(x, stable=True, descending=descending)


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("x", [
    torch.tensor([1, 0, 1, 1, 0, 2, 0, 1], dtype=torch.int64),                  # many ties
    torch.randint(0, 8, [64], generator=torch.Generator().manual_seed(0)),      # expert ids
    torch.tensor([5, -3, 2 ** 31 - 1, -2 ** 31, 0, -3, 7], dtype=torch.int64),  # the whole i32 range
    torch.tensor([0.5, float("nan"), -0.0, float("inf"), 0.0, float("nan"), -float("inf"), float("inf"), 0.5]),
    torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1)).round(decimals=1),   # rows, with ties
], ids=["ties", "expert_ids", "i32_range", "nan_inf_zeros", "rows"])
def test_stable_sort_is_exact(x, descending):
    _check(_stable_sort(descending), x, op="aten.sort.stable")


@pytest.mark.parametrize("descending", [False, True])
def test_default_sort_gives_the_stable_order(descending):
    """torch's default CPU sort (std::sort) keeps ties in index order only for rows of at most 16
    elements; longer rows with ties come out in an order of its own, so beyond that the lowering
    (stable) is checked against the stable sort: same values, a valid tie order."""
    sort = lambda x: torch.ops.aten.sort.default(x, -1, descending)   # noqa: E731
    _check(sort, torch.tensor([3, 1, 3, 0, 1, 3, 2, 2, 0, 1, 3, 3, 0, 1, 2, 3]), op="aten.sort.default")
    _check(sort, torch.randperm(100, generator=torch.Generator().manual_seed(7)).float() / 7)   # no ties
    x = torch.randint(0, 2, [32], generator=torch.Generator().manual_seed(8))
    _, chain = _chain(sort, x)
    values, indices = chain.run([x])
    ref = torch.sort(x, stable=True, descending=descending)
    assert torch.equal(values, ref.values) and torch.equal(indices, ref.indices)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stable_sort_of_16_bit_floats(dtype):
    x = torch.randn(40, generator=torch.Generator().manual_seed(9)).round(decimals=1).to(dtype)
    _check(_stable_sort(False), x, op="aten.sort.stable")
    _check(_stable_sort(True), x)


def test_sort_stable_overload_and_bool():
    x = torch.tensor([3, 1, 3, 0, 1, 3])
    _check(lambda x: torch.sort(x, stable=True, descending=True), x, op="aten.sort.stable")
    _check(lambda x: torch.sort(x > 1), x)


def test_sort_along_another_dim_is_refused():
    _refused(lambda x: torch.sort(x, dim=0), torch.randn(4, 3), match="aten.sort.*dim other than the last")


# ------------------------------------------------------------------ histc

@pytest.mark.parametrize("x,bins,lo,hi", [
    (torch.tensor([0.0, 1.0, 2.0, 3.0, 3.0, 1.0, 0.0, 2.0]), 4, 0, 3),          # expert ids: x == max in the last bin
    (torch.randn(64, generator=torch.Generator().manual_seed(2)), 4, 0, 3),    # values outside [min, max] ignored
    (torch.tensor([-1.0, -0.5, 0.0, 0.1, 0.2, 0.3, 0.7, 1.0, float("nan"), float("inf")]), 10, 0.0, 1.0),  # edges, NaN
    (torch.linspace(-3, 3, 97), 7, -2.5, 2.5),                                 # values on and near bin edges
    (torch.tensor([2.0, 2.0, 5.0, 3.5]), 3, 0, 0),                             # min == max: the data's range
    (torch.tensor([4.0, 4.0]), 3, 1, 1),                                       # ... widened by 1 when constant
], ids=["expert_ids", "outside", "edges_nan", "linspace", "data_range", "constant_data"])
def test_histc_matches_torch(x, bins, lo, hi):
    _check(lambda x: torch.histc(x, bins, lo, hi), x, op="aten.histc.default")


def test_histc_of_16_bit_floats_is_refused():
    _refused(lambda x: torch.histc(x, 4, 0, 3), torch.zeros(8, dtype=torch.bfloat16), match="aten.histc.*f32 only")


# ------------------------------------------------------------------ div with rounding

_INTS = torch.tensor([7, -7, 6, -6, 0, 1, -1, 2 ** 31 - 1, -2 ** 31 + 1, 123456789, -987654321, 5])
_DIVS = torch.tensor([2, 2, -4, -4, 3, -3, 5, 7, -7, 3, 1000, 2 ** 30])


@pytest.mark.parametrize("mode", ["floor", "trunc"])
def test_integer_division_rounds_like_python_and_c(mode):
    _check(lambda a, b: torch.div(a, b, rounding_mode=mode), _INTS, _DIVS, op="aten.div.Tensor_mode")
    _check(lambda a: torch.div(a, 2, rounding_mode=mode), _INTS)
    _check(lambda a: torch.div(a, -3, rounding_mode=mode), _INTS)
    _check(lambda b: torch.div(17, b, rounding_mode=mode) if False else torch.div(torch.full_like(b, 17), b,
                                                                                   rounding_mode=mode), _DIVS)


_FA = torch.tensor([7.5, -7.5, 1.0, -1.0, 0.0, -0.0, 5.0, -5.0, float("inf"), 3.0, -2.0, 1e30, 0.3, float("nan"), 1e30])
_FB = torch.tensor([2.0, 2.0, 0.1, 0.1, -3.0, 3.0, 0.0, 0.0, 2.0, float("inf"), float("inf"), 7.0, 0.1, 1.0, -1e-30])


@pytest.mark.parametrize("mode", ["floor", "trunc"])
def test_float_division_rounds_like_torch(mode):
    _check(lambda a, b: torch.div(a, b, rounding_mode=mode), _FA, _FB, op="aten.div.Tensor_mode")
    _check(lambda a: torch.div(a, -0.7, rounding_mode=mode), _FA)
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 64, generator=g) * 100, torch.randn(64, generator=g)
    _check(lambda a, b: torch.div(a, b, rounding_mode=mode), a, b)


def test_16_bit_float_division_with_rounding_is_refused():
    _refused(lambda a: torch.div(a, 3, rounding_mode="floor"), torch.ones(4, dtype=torch.bfloat16),
             match="aten.div.Tensor_mode.*f32 and integers only")


# ------------------------------------------------------------------ index and index_put

def test_index_picks_rows_and_elements():
    g = torch.Generator().manual_seed(4)
    x1, x2 = torch.randn(32, generator=g), torch.randn(1, 16, 64, generator=g)
    perm = torch.randperm(32, generator=g)
    _check(lambda x, i: x[i], x1, perm, op="aten.index.Tensor")                       # x[perm]
    rows = torch.tensor([3, 3, 0, 15, -1, 7, 3, -16])                                  # repeats, negatives
    _check(lambda x, i: x.view(-1, 64)[i], x2, rows, op="aten.index.Tensor")
    _check(lambda x, i: x[i], torch.arange(12).view(6, 2), torch.tensor([[5, 0], [1, 1]]))  # 2-D index, ints


def test_index_with_several_indices_or_masks_is_refused():
    x = torch.randn(4, 5)
    _refused(lambda x, i: x[i, i], x, torch.tensor([0, 1]), match="aten.index.Tensor.*only one index tensor")
    _refused(lambda x, i: x[:, i], x, torch.tensor([0, 1]), match="aten.index.Tensor.*only one index tensor")


def _put(x, i, v):
    y = x.clone()
    y[i] = v
    return y


def test_index_put_writes_rows_later_duplicate_wins():
    g = torch.Generator().manual_seed(5)
    perm = torch.randperm(32, generator=g)
    _check(lambda p: _put(torch.zeros_like(p), p, torch.arange(32)), perm, op="aten.index_put.default")  # inv_perm
    x, i, v = torch.randint(0, 2, [32], generator=g), torch.randint(0, 32, [32], generator=g), torch.randint(0, 2, [32], generator=g)
    assert len(set(i.tolist())) < 32                                                   # duplicates present
    _check(_put, x, i, v)
    _check(_put, torch.randn(6, 8, generator=g), torch.tensor([4, -1, 4, 0]), torch.randn(4, 8, generator=g))
    _check(lambda x, i, v: _put(x, i, v[0]), torch.randn(6, 8), torch.tensor([1, 2]), torch.tensor([2.5]))  # one value


def test_index_put_accumulate_is_refused():
    _refused(lambda x, i, v: torch.index_put(x, (i,), v, accumulate=True), torch.zeros(4), torch.tensor([0, 0]),
             torch.ones(2), match="aten.index_put.*accumulate=True")


# ------------------------------------------------------------------ the router, op by op

def test_moe_router_dispatch_sequence_verifies_op_by_op():
    """transformers' grouped-mm experts: sort the flattened expert choices, gather token rows in that
    order (token = position // top_k), count rows per expert (histc), their offsets (cumsum) and
    the inverse permutation (index_put). transformers calls the default (unstable) sort; its tie
    order is std::sort's own, which only the stable sort pins down, so the test sorts stably."""
    E, top_k, T = 4, 2, 16
    g = torch.Generator().manual_seed(6)
    hidden = torch.randn(T, 8, generator=g)
    experts = torch.topk(torch.randn(T, E, generator=g), top_k, dim=-1).indices

    def router(h, e):
        ids = e.reshape(-1)
        sorted_ids, perm = torch.sort(ids, stable=True)
        rows = h[torch.div(perm, top_k, rounding_mode="floor")]
        counts = torch.histc(sorted_ids.float(), bins=E, min=0, max=E - 1)
        offsets = torch.cumsum(counts, dim=0).to(torch.int32)
        inv = _put(torch.empty_like(perm), perm, torch.arange(perm.numel()))
        return sorted_ids, rows, counts, offsets, inv

    chain = _check(router, hidden, experts)
    for op in ("aten.sort.stable", "aten.index.Tensor", "aten.histc.default", "aten.cumsum.default",
               "aten.index_put.default", "aten.div.Tensor_mode"):
        assert op in _targets(chain), (op, _targets(chain))


def test_cat_skips_empty_operands():
    """A KV cache that starts empty: cat([tensor([]), x], -2) is x (torch skips a legacy 1-D [0]
    operand of any rank), and an operand empty along the cat dim adds nothing."""
    x = torch.randn(1, 2, 4, 3)
    _check(lambda x: torch.cat([torch.zeros(0), x * 2], -2), x, op="aten.cat.default")
    _check(lambda x: torch.cat([torch.zeros(1, 2, 0, 3), x * 2, x], -2), x, op="aten.cat.default")
