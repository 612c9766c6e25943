"""The op-by-op baseline lowers the ops real programs use (issue 15: published KernelBench
problems and decode-form layers): group, batch, instance and long-row layer norm, max/min with
indices, argmax/argmin across chunks, any/all, vector norms, float classification, cumprod,
rank-5 permutes and broadcasts over size-1 axes. Each lowering runs on the emulator at small
sizes and is compared with PyTorch, including the edge forms (keepdim, negative dims, int64
indices, eval and batch statistics, rows longer than a tile)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import asp_lang
from agentforge.baseline import build_baseline
from agentforge.capture import graph_from_export
from agentforge.aten import AtenNode, Ref, TensorSpec
from agentforge.lowering import ROW_CAP, UnsupportedOpError, lower_node, permute_view

MACHINE = asp_lang.load_machine("sn40l")


class Fn(nn.Module):
    """A forward given as a function of the module (so it can use submodules) and inputs."""

    def __init__(self, f, *mods: nn.Module):
        super().__init__()
        self.f = f
        self.mods = nn.ModuleList(mods)

    def forward(self, *xs):
        return self.f(self, *xs)


def _lower(model: nn.Module, *xs: torch.Tensor):
    model = model.eval()
    exported = torch.export.export(model, xs).run_decompositions()
    graph = graph_from_export(exported, "t", "t.py")
    return graph, build_baseline(graph, MACHINE)


def _check(model: nn.Module, *xs: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-5, labels=None):
    """Run the baseline chain on the emulator and compare every output with PyTorch (same dtype);
    ``labels`` name the outputs in a failure."""
    graph, chain = _lower(model, *xs)
    got = chain.run(list(xs))
    with torch.no_grad():
        ref = model(*xs)
    ref = list(ref) if isinstance(ref, (tuple, list)) else [ref]
    assert len(got) == len(ref)
    for i, (g, r) in enumerate(zip(got, ref)):
        what = labels[i] if labels else f"output {i}"
        assert g.dtype == r.dtype and g.shape == r.shape, (what, g.dtype, r.dtype, g.shape, r.shape)
        if r.dtype in (torch.bool, torch.int64, torch.int32):
            assert torch.equal(g, r), what
        else:
            torch.testing.assert_close(g, r, atol=atol, rtol=rtol, msg=lambda m, what=what: f"{what}: {m}")
    return graph, chain


def _targets(chain) -> list[str]:
    return [k.target for k in chain.kernels]


def _random_affine(m: nn.Module) -> nn.Module:
    """Weights, biases and running statistics away from their identity defaults (a lowering
    that ignored them would still pass with ones and zeros)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        for name, b in m.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g))
    return m


def _norm(mod: nn.Module) -> Fn:
    return Fn(lambda s, x: s.mods[0](x), _random_affine(mod))


# ------------------------------------------------------------------ norms

def test_group_norm():
    cases = [(4, 16, (2, 16, 3, 5)),        # whole rows, several groups per tile
             (8, 64, (6, 64)),              # HW = 1: a GEMM's output (KernelBench level 2)
             (2, 4, (2, 4, 256, 160)),      # rows longer than a tile, chunks inside one channel
             (2, 64, (2, 64, 64, 64))]      # rows longer than a tile, chunks of whole channels
    norms = [_random_affine(nn.GroupNorm(g, c)) for g, c, _ in cases]
    torch.manual_seed(0)
    xs = [torch.randn(*shape) + 3.0 for _, _, shape in cases]
    _, chain = _check(Fn(lambda s, *xs: tuple(m(x) for m, x in zip(s.mods, xs)), *norms), *xs,
                      labels=[f"GroupNorm{c[:2]} on {c[2]}" for c in cases])
    assert set(_targets(chain)) == {"aten.native_group_norm.default"}


def test_group_norm_statistics_are_the_ops_mean_and_rstd():
    torch.manual_seed(0)
    w, b = torch.randn(16), torch.randn(16)
    model = Fn(lambda s, x: torch.ops.aten.native_group_norm(x, w, b, 2, 16, 15, 4, 1e-5))
    _check(model, torch.randn(2, 16, 3, 5))


def test_layer_norm_over_rows_longer_than_a_tile_reads_its_weight_once():
    torch.manual_seed(0)
    shape = (4, 128, 160)
    assert math.prod(shape) > ROW_CAP
    graph, chain = _check(_norm(nn.LayerNorm(shape)), torch.randn(3, *shape) * 2 + 1)
    (k,) = chain.kernels
    # chunk-major: x read twice, weight and bias once, y written once (the op's bound is one read of each)
    row = chain.time().kernels[0]
    assert row["hbm_bytes"] <= 1.02 * (4 * 3 * math.prod(shape) * 3 + 4 * 2 * math.prod(shape))
    assert row["op_roofline_fraction"] > 0.6


def test_layer_norm_short_rows_keep_mean_and_rstd():
    torch.manual_seed(0)
    w, b = torch.randn(64), torch.randn(64)
    _check(Fn(lambda s, x: torch.ops.aten.native_layer_norm(x, [64], w, b, 1e-5)), torch.randn(3, 5, 64))


def test_batch_norm_eval_uses_running_statistics():
    torch.manual_seed(0)
    bn2, bn1 = _random_affine(nn.BatchNorm2d(6)), _random_affine(nn.BatchNorm1d(32))
    _, chain = _check(Fn(lambda s, a, b: (s.mods[0](a), s.mods[1](b)), bn2, bn1), torch.randn(2, 6, 4, 4),
                      torch.randn(8, 32), labels=["BatchNorm2d", "BatchNorm1d"])
    assert set(_targets(chain)) == {"aten._native_batch_norm_legit_no_training.default"}


def test_batch_norm_eval_reads_each_per_channel_vector_once():
    """Four [C] vectors broadcast over the rows are each read once, not once per row block."""
    _, chain = _lower(_norm(nn.BatchNorm1d(4096)), torch.randn(1024, 4096))
    row = chain.time().kernels[0]
    assert row["op_bound_fraction"] > 0.9


def test_instance_norm_and_batch_statistics_of_one_sample():
    torch.manual_seed(0)
    _, chain = _check(_norm(nn.InstanceNorm2d(6)), torch.randn(2, 6, 4, 4))
    assert _targets(chain) == ["aten._native_batch_norm_legit.no_stats"]
    w, b = torch.randn(6), torch.randn(6)
    _check(Fn(lambda s, x: torch.nn.functional.batch_norm(x, None, None, w, b, training=True)), torch.randn(1, 6, 40, 40))
    # a long row per channel (instance norm at KernelBench's 512 x 512), affine: weight.repeat(N) then rows
    _, chain = _check(_norm(nn.InstanceNorm2d(3, affine=True)), torch.randn(2, 3, 300, 256) * 3 - 1)
    assert "aten.repeat.default" in _targets(chain)


def test_batch_statistics_over_several_samples():
    """Training-mode batch norm: a channel's statistics span every sample (strided runs)."""
    torch.manual_seed(0)
    shapes = [(2, 6, 4, 4), (4, 3, 200, 100), (1024, 64), (8, 4)]
    ws = [(torch.randn(s_[1]), torch.randn(s_[1])) for s_ in shapes]
    model = Fn(lambda s, *xs: tuple(t for x, (w, b) in zip(xs, ws) for t in
                                    torch.ops.aten._native_batch_norm_legit.no_stats(x, w, b, True, 0.1, 1e-5)))
    xs = [torch.randn(*s_) * 2 + 1 for s_ in shapes]
    _, chain = _check(model, *xs, labels=[f"{what} of {s_}" for s_ in shapes for what in ("y", "mean", "rstd")])
    assert set(_targets(chain)) == {"aten._native_batch_norm_legit.no_stats"}


def test_batch_norm_updating_running_statistics_is_refused_by_name():
    graph, _ = _lower(Fn(lambda s, x: x * 2.0), torch.randn(2, 3))
    node = AtenNode("bn", "aten._native_batch_norm_legit_functional.default", (Ref("x"), None, None, None, None, True,
                                                                            0.1, 1e-5), {},
                    tuple(TensorSpec(f"bn.{i}", (2, 3) if i == 0 else (3,), "f32") for i in range(5)))
    with pytest.raises(UnsupportedOpError, match="not supported"):
        lower_node(node, graph, set())


# ------------------------------------------------------------------ reductions

#: (what, f, input shape): one exported model computes them all (an export per case would cost the
#: suite seconds); a mismatch names the case
INDEX_CASES = [
    ("max.dim", lambda x: torch.max(x, dim=1), (4, 7, 3)),
    ("min.dim keepdim, negative dim", lambda x: torch.min(x, dim=-1, keepdim=True), (4, 7)),
    ("max.dim over a row longer than a tile", lambda x: torch.max(x, dim=1), (2, ROW_CAP + 4464)),
    ("argmax over a middle dim, chunked", lambda x: torch.argmax(x, dim=1), (2, 300, 4095)),
    ("argmin over a middle dim", lambda x: torch.argmin(x, dim=1), (3, 40, 5)),
    ("argmax of the flattened tensor", lambda x: torch.argmax(x), (3, 40, 5)),
    ("argmax over a row longer than a tile", lambda x: torch.argmax(x, dim=-1, keepdim=True), (2, 2 * ROW_CAP)),
]


def _many(cases, make=torch.randn):
    """One model over several inputs computing every case: (model, inputs, labels per output)."""
    torch.manual_seed(0)
    xs = [make(*shape) if isinstance(shape, tuple) else shape for _, _, shape in cases]
    labels = []
    for (what, f, _), x in zip(cases, xs):
        out = f(x)
        labels += [what] * (len(out) if isinstance(out, tuple) else 1)

    def forward(s, *xs):
        outs = []
        for (_, f, _), x in zip(cases, xs):
            out = f(x)
            outs += list(out) if isinstance(out, tuple) else [out]
        return tuple(outs)
    return Fn(forward), xs, labels


def test_index_reductions_match_pytorch_values_and_int64_indices():
    model, xs, labels = _many(INDEX_CASES)
    _check(model, *xs, labels=labels)


def test_index_reductions_across_chunks_keep_the_first_index_on_ties_and_nan_wins():
    torch.manual_seed(0)
    ties = torch.randint(0, 3, (4, 2 * ROW_CAP)).float()
    _check(Fn(lambda s, x: torch.argmax(x, dim=-1)), ties)
    _check(Fn(lambda s, x: torch.min(x, dim=-1)), ties)
    x = torch.randn(2, 2 * ROW_CAP)
    x[0, ROW_CAP + 17] = float("nan")
    _check(Fn(lambda s, x: torch.argmax(x, dim=-1)), x)


def test_any_and_all():
    model, xs, labels = _many([
        ("any over a compare", lambda x: torch.any(x > 0.5, dim=1), (4, 7)),
        ("any of floats", lambda x: torch.any(x, dim=-1), torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 0.0]])),
        ("all", lambda x: torch.all(x > -1.5, dim=0), (4, 7)),
        ("any over a row longer than a tile", lambda x: torch.any(x > 3.0, dim=1), (2, ROW_CAP * 2)),
    ])
    _check(model, *xs, labels=labels)


def _with_a_zero(*shape):
    x = torch.randn(*shape)
    x.view(-1)[0] = 0.0
    return x


def test_vector_norms():
    model, xs, labels = _many([
        ("frobenius", lambda x: torch.norm(x, p="fro"), (4, 8, 5)),
        ("l2 keepdim", lambda x: torch.linalg.vector_norm(x, 2, dim=1, keepdim=True), (4, 8)),
        ("F.normalize", lambda x: torch.nn.functional.normalize(x, p=2, dim=1), (4, 8)),
        ("l1, negative dim", lambda x: torch.linalg.vector_norm(x, 1, dim=-1), (4, 8)),
        ("inf over dim 0", lambda x: torch.linalg.vector_norm(x, float("inf"), dim=0), (4, 8)),
        ("ord 3", lambda x: torch.linalg.vector_norm(x, 3, dim=1), (4, 8)),
        ("ord 0 counts non-zeros", lambda x: torch.linalg.vector_norm(x, 0, dim=1), (4, 8)),
        ("l2 over a row longer than a tile", lambda x: torch.linalg.vector_norm(x, 2, dim=1), (2, 100_000)),
    ], make=_with_a_zero)
    _check(model, *xs, rtol=1e-5, atol=1e-4, labels=labels)


# ------------------------------------------------------------------ elementwise

def test_float_classification_and_bool_arithmetic():
    x = torch.tensor([[0.0, 1.0, -0.0, 2.0, -3.0, float("nan"), float("inf"), -1.0]])
    _check(Fn(lambda s, x: (torch.isnan(x), torch.isinf(x), torch.isfinite(x))), x)
    _check(Fn(lambda s, x: torch.isfinite(torch.log(x))), torch.randn(4, 8))   # isfinite decomposes to a bool mul


def test_broadcast_over_size1_axes_in_the_decode_form():
    """q * cos at decode shapes: [B, H, 1, D] * [1, D] (a size-1 axis between a broadcast run and a
    whole run used to merge them into one axis the table did not cover: ShapeError)."""
    torch.manual_seed(0)
    shapes = [((1, 32, 1, 128), (1, 128)), ((2, 8, 1, 16), (1, 16)), ((2, 1, 8, 16), (8, 16))]
    xs = [torch.randn(*s_) for pair in shapes for s_ in pair]
    _check(Fn(lambda s, *t: tuple(t[i] * t[i + 1] for i in range(0, len(t), 2))), *xs)


# ------------------------------------------------------------------ structural

def test_cumprod():
    model, xs, labels = _many([
        ("last dim", lambda x: torch.cumprod(x, dim=1), (4, 37)),
        ("middle dim", lambda x: torch.cumprod(x, dim=1), (3, 9, 5)),
        ("negative dim", lambda x: torch.cumprod(x, dim=-1), (2, 300)),
        ("a dim of one", lambda x: torch.cumprod(x, dim=0), (1, 3)),
        ("signs and zeros", lambda x: torch.cumprod(x, dim=-1),
         torch.tensor([[1.0, -2.0, 0.0, 3.0, 5.0], [2.0, 2.0, -1.0, 0.5, -4.0]])),
    ], make=lambda *s_: torch.rand(*s_) + 0.5)
    _check(model, *xs, rtol=1e-5, atol=1e-6, labels=labels)


def test_permutes_that_move_the_last_axis():
    cases = [((2, 3, 4, 1, 0), (3, 4, 5, 6, 7)), ((4, 3, 0, 1, 2), (3, 4, 5, 6, 7)), ((0, 2, 3, 1), (3, 4, 5, 6)),
             ((0, 3, 1, 2), (3, 4, 5, 6)), ((2, 0, 1), (300, 4, 260))]
    model, xs, labels = _many([(f"permute {p}", lambda x, p=p: x.permute(*p).contiguous() * 2.0, s_)
                               for p, s_ in cases])
    _check(model, *xs, labels=labels)


def test_repeat():
    model, xs, labels = _many([
        ("1-D", lambda x: x.repeat(3), (5,)),
        ("new leading dim", lambda x: x.repeat(2, 1, 3), (4, 5)),
        ("last dim", lambda x: x.repeat(1, 2), (4, 5)),
        ("both dims, several tiles", lambda x: x.repeat(2, 2), (300, 70)),
    ])
    _check(model, *xs, labels=labels)


def test_einsum_of_kernelbench_level1_11():
    torch.manual_seed(0)
    w = torch.randn(6, 5)
    _check(Fn(lambda s, x: torch.einsum("bijl,lk->bijk", x, w)), torch.randn(2, 3, 4, 6), atol=1e-4)


def test_permute_view_drops_size1_axes_and_merges_runs():
    assert permute_view((256, 768, 1, 1, 1), [2, 3, 4, 1, 0]) == ((256, 768), [1, 0])
    assert permute_view((2, 5, 4, 8), [0, 2, 1, 3]) == ((2, 5, 4, 8), [0, 2, 1, 3])
    assert permute_view((2, 5, 4, 8), [2, 3, 0, 1]) == ((10, 32), [1, 0])


# ------------------------------------------------------------------ near their own roofline

@pytest.mark.parametrize("name, model, shape, floor", [
    ("group norm, long rows", _norm(nn.GroupNorm(8, 64)), (16, 64, 128, 128), 0.6),
    ("group norm, GEMM output", _norm(nn.GroupNorm(16, 8192)), (1024, 8192), 0.9),
    ("instance norm, long rows", _norm(nn.InstanceNorm2d(64)), (16, 64, 512, 512), 0.6),
    ("batch norm eval", _norm(nn.BatchNorm2d(64)), (16, 64, 128, 128), 0.9),
    ("batch statistics", Fn(lambda s, x: torch.nn.functional.batch_norm(x, None, None, training=True)),
     (16, 64, 128, 128), 0.6),
    ("batch statistics, HW = 1", Fn(lambda s, x: torch.nn.functional.batch_norm(x, None, None, training=True)),
     (16384, 4096), 0.6),
    ("layer norm, long rows", _norm(nn.LayerNorm((64, 256, 256))), (16, 64, 256, 256), 0.6),
    ("argmax, middle dim", Fn(lambda s, x: torch.argmax(x, dim=1)), (128, 4096, 4095), 0.9),
    ("max with indices", Fn(lambda s, x: torch.max(x, dim=1)), (128, 4096, 4095), 0.9),
    ("vector norm", Fn(lambda s, x: torch.linalg.vector_norm(x, 2, dim=1)), (32768, 65535), 0.9),
    ("cumprod", Fn(lambda s, x: torch.cumprod(x, dim=1)), (32768, 32768), 0.9),
    ("rank-5 permute", Fn(lambda s, x: x.permute(2, 3, 4, 1, 0).contiguous()), (8, 256, 512, 1, 256), 0.9),
])
def test_new_lowerings_reach_their_own_roofline_at_kernelbench_sizes(name, model, shape, floor):
    """Timing only (meta tensors): a long-row norm reads its input twice (2/3 of the bound of one
    read and one write), the rest stream once. The audit's floor (test_baseline_roofline) is 0.45."""
    with torch.device("meta"):
        graph, chain = _lower(copy.deepcopy(model).to("meta"), torch.empty(*shape))
    rows = [r for r in chain.time().kernels if "permute" not in r["target"] or "permute" in name]
    assert rows
    for r in rows:
        assert r["op_bound_fraction"] >= floor, (name, r)


# ------------------------------------------------------------------ data-dependent shapes

MASK_TASK = '''import torch
import torch.nn as nn

N = 16


class Model(nn.Module):
    def forward(self, x, mask):
        return x[mask] * 2.0


def get_inputs():
    return [torch.randn(N, 4), torch.rand(N, 4) > 0.5]


def get_init_inputs():
    return []
'''


def test_a_data_dependent_shape_is_a_clear_task_error_not_an_internal_one(tmp_path):
    """x[mask] exports with an unbacked size; capture says which op and how to keep shapes
    static (it was a GuardOnDataDependentSymNode traceback, exit 3)."""
    from agentforge.capture import capture_at
    from agentforge.errors import TaskError
    from agentforge.tasks import load_task

    path = tmp_path / "bool_mask.py"
    path.write_text(MASK_TASK)
    with pytest.raises(TaskError) as err:
        capture_at(load_task(path), meta=True)
    text = str(err.value)
    assert "unsupported: data-dependent shape from aten.index.Tensor" in text
    assert "bool_mask.py:9" in text and "torch.where(mask, x, 0)" in text
