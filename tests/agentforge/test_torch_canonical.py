"""Matching that survives real graphs: the same computation written the way Hugging Face writes
it (``weight * x``, linears on ``[B, S, H]`` lowered to view -> mm -> view) finds the library's
kernels for the task form (``x * weight``, ``[T, H]``), runs on them (not recomputed by PyTorch),
and a graph that is not row-wise (a reduction over a leading dim) is never flattened into a match."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from agentforge.canonical import canonical_key, order_operands, row_safe, strip_row_views
from agentforge.torch._build import cached_library
from agentforge.torch.backend import compiled_graphs

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "agentforge" / "fixtures"
TASKS = tuple(str(p) for p in sorted((FIX / "torch_tasks").glob("*.py"))) + (str(ROOT / "evals" / "suite" / "softmax.py"),)
SWIGLU_2D = (str(FIX / "hf_tasks" / "swiglu_mlp_tokens.py"),)    # [TOKENS, HIDDEN] = [16, 64], FFN 128


@pytest.fixture(scope="module")
def lib() -> str:
    return str(cached_library(TASKS))


@pytest.fixture(scope="module")
def lib2d() -> str:
    return str(cached_library(SWIGLU_2D))


@pytest.fixture
def poisoned(monkeypatch):
    """Every library kernel answers 7s: an offloaded region must change the model's output."""
    from agentforge.torch.ops import OpFamily

    real = OpFamily._run
    monkeypatch.setattr(OpFamily, "_run", lambda self, v, args: [torch.full_like(o, 7) for o in real(self, v, args)])


def _run(model, inputs, lib):
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend="agentforge", dynamic=False, options={"library": lib})(*inputs)
    return out, compiled_graphs()[-1]


class HFRMSNorm(torch.nn.Module):
    """transformers' LlamaRMSNorm: the weight multiplies from the left."""

    def __init__(self, hidden: int):
        super().__init__()
        self.weight = torch.nn.Parameter(1.0 + 0.1 * torch.randn(hidden))

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + 1e-6))


class HFMLP(torch.nn.Module):
    """transformers' LlamaMLP on [B, S, H] (each linear lowers to view -> mm -> view)."""

    def __init__(self, hidden: int = 64, ffn: int = 128):
        super().__init__()
        self.gate_proj = torch.nn.Linear(hidden, ffn, bias=False)
        self.up_proj = torch.nn.Linear(hidden, ffn, bias=False)
        self.down_proj = torch.nn.Linear(ffn, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def test_weight_times_x_is_the_same_problem_as_x_times_weight():
    from agentforge.capture import capture
    from agentforge.tasks import Instance

    class XW(torch.nn.Module):
        def __init__(self, left: bool):
            super().__init__()
            self.w, self.left = torch.nn.Parameter(torch.ones(64)), left

        def forward(self, x):
            return self.w * x if self.left else x * self.w

    from agentforge.torch.match import export_graph

    keys = {canonical_key(export_graph(XW(left), [torch.randn(16, 64)])[1]) for left in (True, False)}
    assert len(keys) == 1
    g = export_graph(XW(True), [torch.randn(16, 64)])[1]
    assert [r.name for r in order_operands(g).nodes[0].refs()] == ["x", "p_w"]     # activation first


def test_a_reduction_over_a_leading_dim_is_not_row_wise():
    from agentforge.torch.match import export_graph

    class Cols(torch.nn.Module):
        def forward(self, x):
            return torch.softmax(x, dim=1)

    class Rows(torch.nn.Module):
        def forward(self, x):
            return torch.softmax(x, dim=-1)

    x = torch.randn(2, 4, 64)
    assert row_safe(strip_row_views(export_graph(Rows(), [x])[1]))
    assert not row_safe(strip_row_views(export_graph(Cols(), [x])[1]))
    # the same softmax on [8, 64] rows is the same problem as on [2, 4, 64]; over dim 1 it is not
    flat = canonical_key(export_graph(Rows(), [torch.randn(8, 64)])[1])
    assert canonical_key(export_graph(Rows(), [x])[1]) == flat
    assert canonical_key(export_graph(Cols(), [x])[1]) != flat


def test_hf_rmsnorm_weight_first_runs_on_the_rmsnorm_kernel(lib, poisoned):
    torch.manual_seed(0)
    model, x = HFRMSNorm(64), torch.randn(1, 16, 64)
    out, c = _run(model, [x], lib)
    assert [r.family.op for r in c.plan.regions] == ["rmsnorm_small"]
    assert torch.equal(out, torch.full_like(out, 7))          # the kernel's answer, not PyTorch's


def test_hf_rmsnorm_compiled_matches_eager(lib):
    torch.manual_seed(0)
    model, x = HFRMSNorm(64), torch.randn(1, 16, 64)
    out, c = _run(model, [x], lib)
    assert [r.family.op for r in c.plan.regions] == ["rmsnorm_small"]
    torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(1, 16, 64), (2, 8, 64)])
def test_a_batched_mlp_runs_on_the_kernel_of_its_two_dimensional_task(lib2d, shape):
    torch.manual_seed(0)
    model, x = HFMLP(), torch.randn(*shape)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="agentforge", dynamic=False, options={"library": lib2d})
    with torch.no_grad():
        compiled(x)
        with torch.profiler.profile() as prof:
            out = compiled(x)
        ref = model(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    (region,) = compiled_graphs()[-1].plan.regions
    assert region.family.op == "swiglu_mlp_tokens" and region.arg_shapes[0] == (16, 64)
    counts = {e.key: e.count for e in prof.key_averages()}
    assert counts.get("rdu::swiglu_mlp_tokens") == 1 and "aten::mm" not in counts


def test_a_batched_mlp_offloaded_through_row_views_gives_the_kernels_answer(lib2d, poisoned):
    torch.manual_seed(0)
    out, c = _run(HFMLP(), [torch.randn(1, 16, 64)], lib2d)
    assert [r.family.op for r in c.plan.regions] == ["swiglu_mlp_tokens"]
    assert out.shape == (1, 16, 64) and torch.equal(out, torch.full_like(out, 7))


def test_softmax_over_rows_of_a_3d_tensor_runs_on_the_2d_kernel_and_over_columns_does_not(lib):
    class Soft(torch.nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.dim = dim

        def forward(self, x):
            return torch.softmax(x, dim=self.dim) * 2

    x = torch.randn(2, 4, 64)                                # 8 rows of 64: softmax is verified at [8, 64]
    out, c = _run(Soft(-1), [x], lib)
    assert [r.family.op for r in c.plan.regions] == ["softmax"]
    torch.testing.assert_close(out, Soft(-1)(x))
    # [1, 8, 64] over dim 1: flattened to rows it would look like the verified [8, 64] problem, but
    # each output depends on a column: not row-wise, so it keeps its own shape and runs eagerly
    y = torch.randn(1, 8, 64)
    out, c = _run(Soft(1), [y], lib)
    assert c.plan.regions == []
    torch.testing.assert_close(out, Soft(1)(y))


def test_with_verify_new_sizes_a_match_inside_a_larger_region_is_never_verified(lib, monkeypatch):
    """Overlapping matches: the largest verified region wins, and the smaller matches it covers are
    not checked at all (with verify_new_sizes each check runs the task's checks at new sizes)."""
    from agentforge.torch.ops import OpFamily
    from agentforge.torch.report import load_model_file, report

    checked: list[str] = []
    real = OpFamily._verify_at_new_sizes

    def spy(self, key):
        checked.append(self.op)
        return real(self, key)

    monkeypatch.setattr(OpFamily, "_verify_at_new_sizes", spy)
    model, inputs = load_model_file(FIX / "torch_models" / "llama_block.py")
    r = report(model, inputs, library=lib, options={"verify_new_sizes": True, "namespace": "rdu_largest"})
    assert "torch.ops.rdu_largest.causal_attention_small" in r.offloaded_ops
    assert "softmax" not in checked          # the attention's softmax ([64 rows, 16]) is inside the attention call


def test_data_dependent_shapes_are_named_not_internal_errors():
    """A boolean-mask index or nonzero makes a shape depend on values: capture says so, naming the
    op and the model line, instead of failing inside the converter; max with indices captures."""
    from agentforge.torch.match import export_graph
    from agentforge.torch.ops import ModelCaptureError

    class Masked(torch.nn.Module):
        def forward(self, x):
            return x[x > 0].sum()

    class NonZero(torch.nn.Module):
        def forward(self, x):
            return torch.nonzero(x).float().sum()

    class MaxIdx(torch.nn.Module):
        def forward(self, x):
            v, i = x.max(dim=-1)
            return v * 2, i

    for model, op in ((Masked(), "aten.index.Tensor"), (NonZero(), "aten.nonzero")):
        with pytest.raises(ModelCaptureError, match=f"unsupported: data-dependent shape from {op}") as e:
            export_graph(model, [torch.randn(4, 8)])
        assert "test_torch_canonical.py" in str(e.value) and "how to fix" in str(e.value)
    _, g = export_graph(MaxIdx(), [torch.randn(4, 8)])
    assert [n.kind for n in g.nodes][:1] == ["max"]


def test_values_no_input_reaches_are_folded_once_per_plan_and_random_ones_never(lib):
    """A causal mask built from arange inside forward does not depend on any input: it is computed
    once when the plan is made and not run per call; a seeded-random value is never folded."""

    class Masked(torch.nn.Module):
        def forward(self, x):
            n = x.shape[-1]
            mask = torch.arange(n)[None, :] > torch.arange(n)[:, None]
            return x.masked_fill(mask, 0.0) + 1.0

    class Noisy(torch.nn.Module):
        def forward(self, x):
            return x + torch.rand(x.shape)

    x = torch.randn(8, 8)
    out, c = _run(Masked(), [x], lib)
    torch.testing.assert_close(out, Masked()(x))
    kinds = {n.kind for n in c.plan.graph.nodes if n.name in c.plan.folded}
    assert {"arange", "gt"} <= kinds and "where" not in kinds          # the mask, not what reads x
    assert "folded once per plan" in c.summary
    y = torch.randn(8, 8)
    compiled = torch.compile(Masked(), backend="agentforge", dynamic=False, options={"library": lib})
    with torch.no_grad():
        torch.testing.assert_close(compiled(y), Masked()(y))

    torch._dynamo.reset()
    noisy = torch.compile(Noisy(), backend="agentforge", dynamic=False, options={"library": lib})
    with torch.no_grad():
        a, b = noisy(x), noisy(x)
    assert not torch.equal(a, b) and not compiled_graphs()[-1].plan.folded
    torch._dynamo.reset()


def test_a_constant_two_ops_read_is_rematerialised_for_each_so_each_region_can_make_it():
    """One causal mask read by two layers' attention: two regions cannot share an op, so shared it
    would stay outside both kernels. The export gives each reader its own copy of the constant ops
    it reads (XLA duplicates iotas into each fusion the same way): same values, no op shared, and
    no dead original left for a region to take as an input. Random values are never copied."""
    from agentforge.torch.match import constant_nodes, export_graph

    class TwoLayers(torch.nn.Module):
        def forward(self, a, b):
            n = a.shape[-1]
            mask = (torch.arange(n)[None, :] > torch.arange(n)[:, None]).float() * -1e9
            noise = torch.rand(n)
            return torch.softmax(a + mask, -1), torch.softmax(b + mask, -1) + noise * 0

    a, b = torch.randn(4, 8, 8), torch.randn(4, 8, 8)
    ep, graph = export_graph(TwoLayers(), [a, b], "two")
    const = constant_nodes(ep)
    computing = [n for n in ep.graph.nodes if n.op == "call_function" and "assert" not in str(n.target)]
    readers = [n for n in computing if n.name not in const and any(x.name in const for x in n.all_input_nodes)]
    assert len(readers) == 2                                      # the two adds
    for n in computing:
        if n.name in const:                                      # every constant op has one reader
            assert len([u for u in n.users if "assert" not in str(u.target)]) == 1, n
    assert sum(str(n.target) == "aten.arange.start_step" or str(n.target).startswith("aten.arange")
               for n in ep.graph.nodes) == 4                     # two aranges per reader
    assert sum("rand" in str(n.target) for n in ep.graph.nodes) == 1
    got = ep.module()(a, b)
    ref = TwoLayers()(a, b)
    for x, y in zip(got, ref):
        torch.testing.assert_close(x, y)


class _MaskedSDPA(torch.nn.Module):
    """SDPA with a boolean mask: its decomposition guards fully masked rows with any(...)."""

    def forward(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def test_the_sdpa_fully_masked_row_guard_is_rewritten_without_any_and_computes_the_same():
    from agentforge.canonical import canonical_export
    from agentforge.torch.match import export_graph

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 4, generator=g) for _ in range(3))
    mask = torch.rand(1, 1, 8, 8, generator=g) < 0.6
    mask[..., 2, :] = False                      # a fully masked row: SDPA answers zeros there, not NaN
    ep, graph = export_graph(_MaskedSDPA(), [q, k, v, mask], "sdpa")
    assert "any" in {n.kind for n in graph.nodes}
    want = ep.module()(q, k, v, mask)
    new = canonical_export(ep, graph, "sdpa")
    kinds = [n.kind for n in new.nodes]
    assert "any" not in kinds and "amax" in kinds
    # the ops that fed only the old guard are gone (the softmax's own row max is not one of them)
    assert kinds.count("eq") < [n.kind for n in graph.nodes].count("eq")
    got = ep.module()(q, k, v, mask)
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.allclose(got.nan_to_num(), want.nan_to_num())
    assert torch.all(got[..., 2, :] == 0)
    for x in (torch.full((1, 1, 8, 8), float("nan")), torch.full((1, 1, 8, 8), float("-inf"))):
        # the two forms agree on NaN and -inf rows (amax propagates NaN, and NaN is not -inf)
        old = torch.ops.aten.any.dim(torch.ops.aten.logical_not(torch.ops.aten.eq.Scalar(x, float("-inf"))), -1, True)
        assert torch.equal(old, torch.ops.aten.ne.Scalar(torch.ops.aten.amax(x, [-1], True), float("-inf")))


class _AddSoftmax(torch.nn.Module):
    def forward(self, s, m):
        return torch.softmax(s + m, -1)


class _SumFirst(torch.nn.Module):
    def forward(self, s, m):
        return s + m.sum(0)


def test_a_broadcast_operand_compares_without_its_leading_ones_only_where_elementwise_ops_read_it():
    from agentforge.torch.match import export_graph

    s = torch.randn(1, 4, 8, 8)

    def key(mod, m):
        return canonical_key(export_graph(mod, [s, m], "m")[1])

    # a mask made [S, S] (then broadcast) and one made [1, 1, S, S]: the same operand of scores + mask
    assert key(_AddSoftmax(), torch.randn(1, 1, 8, 8)) == key(_AddSoftmax(), torch.randn(8, 8))
    # a leading 1 that a reduction reads by position is part of the problem: kept
    from agentforge.canonical import squeeze_broadcast_operands

    g = export_graph(_SumFirst(), [s, torch.randn(1, 8, 8)], "m")[1]
    assert [tuple(x.shape) for x in squeeze_broadcast_operands(g).inputs] == [(4, 8, 8), (1, 8, 8)]
    g = export_graph(_AddSoftmax(), [s, torch.randn(1, 1, 8, 8)], "m")[1]
    assert [tuple(x.shape) for x in squeeze_broadcast_operands(g).inputs] == [(4, 8, 8), (8, 8)]


def test_the_guard_over_a_dynamic_kv_length_is_rewritten_too():
    """In a decode step exported with a dynamic KV length the guard's row is a symbol whose range
    excludes 0 (dynamo's default is 2..): it is rewritten as at fixed sizes, so the masked softmax
    matches the task captured at fixed sizes; the program still answers as before at other lengths."""
    from agentforge.canonical import canonical_export
    from agentforge.torch.match import export_graph

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 1, 4, generator=g)
    k, v = (torch.randn(1, 2, 9, 4, generator=g) for _ in range(2))
    mask = torch.ones(1, 1, 1, 9, dtype=torch.bool)
    dims = ({}, {2: torch.export.Dim.AUTO}, {2: torch.export.Dim.AUTO}, {3: torch.export.Dim.AUTO})
    ep, graph = export_graph(_MaskedSDPA(), [q, k, v, mask], "decode", dynamic_shapes=dims)
    assert "any" in {n.kind for n in graph.nodes}
    new = canonical_export(ep, graph, "decode")
    assert "any" not in {n.kind for n in new.nodes} and "amax" in {n.kind for n in new.nodes}
    k2, v2 = (torch.randn(1, 2, 13, 4, generator=g) for _ in range(2))
    m2 = torch.rand(1, 1, 1, 13, generator=g) < 0.5
    torch.testing.assert_close(ep.module()(q, k2, v2, m2), _MaskedSDPA()(q, k2, v2, m2))
