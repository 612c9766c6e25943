"""The offline author fuses ops into few kernels that verify and are never slower than op by op."""

from __future__ import annotations

from pathlib import Path

import pytest

import asp_lang
from agentforge.author import (Plan, Region, attention_regions, author_plan, baseline_plan, common_partition,
                               moe_regions, partition, realize, semantic_nodes, tune)
from agentforge.agents.offline import OfflineReflector
from agentforge.agents.roles import Candidate, Feedback
from agentforge.baseline import build_baseline
from agentforge.capture import capture_at
from agentforge.loop import task_context
from agentforge.tasks import load_task
from agentforge.verify import evaluate

SUITE = Path(__file__).resolve().parents[2] / "evals" / "suite"
SN40L = asp_lang.load_machine("sn40l")


def _graphs(name: str):
    task = load_task(SUITE / f"{name}.py")
    return task, capture_at(task, meta=True), [capture_at(task, s, meta=True) for s in task.resolved_size_sets()[:2]]


def _templates(graph, regions):
    sem = semantic_nodes(graph)
    return [(r.template, [sem[i].target.split(".")[1] for i in r.nodes]) for r in regions]


def test_a_norm_with_residual_is_one_row_region():
    _, own, small = _graphs("rmsnorm_residual")
    regions = common_partition([own, *small])
    assert [t for t, _ in _templates(own, regions)] == ["row"]


def test_a_linear_layer_reads_its_weight_transposed_in_place_and_fuses_the_epilogue():
    _, own, _ = _graphs("linear_bias_gelu")
    (region,) = partition(own)
    assert region.template == "matmul"
    assert [op for op in _templates(own, [region])[0][1]] == ["permute", "addmm", "gelu"]


def test_fusion_that_holds_only_by_coincidence_of_sizes_is_split(monkeypatch):
    # at its own sizes two ops may fuse only because two dimensions happen to be equal; at the
    # small sizes they do not: the common partition keeps what fuses at every size
    from importlib import import_module
    author = import_module("agentforge.author.partition")   # the module: common_partition calls its partition

    _, own, small = _graphs("layernorm_residual")
    n = len(semantic_nodes(own))
    fused = [Region("row", list(range(n)))]
    split = [Region("row", [0]), Region("row", list(range(1, n)))]
    monkeypatch.setattr(author, "partition", lambda g: fused if g is own else split)
    common = common_partition([own, small[0]])
    assert [r.nodes for r in common] == [[0], list(range(1, n))]


def test_plans_round_trip_through_json():
    _, own, small = _graphs("silu_mul")
    tuned = author_plan(own, SN40L, graphs_small=small)
    again = Plan.from_dict(tuned.plan.to_dict())
    assert again == tuned.plan
    with pytest.raises(ValueError):
        Plan.from_dict({"regions": [{"template": "bogus", "nodes": [0]}]})


def test_the_baseline_plan_realizes_the_op_by_op_chain():
    _, own, _ = _graphs("mse_loss")
    chain = realize(baseline_plan(own), own, SN40L)
    assert len(chain.kernels) == len(build_baseline(own, SN40L).kernels)


@pytest.mark.parametrize("name", ["rmsnorm", "layernorm_residual", "linear_bias_gelu", "softplus", "moe_gate_dense"])
def test_fused_plans_verify_and_beat_or_match_the_baseline(name):
    task, own, small = _graphs(name)
    tuned = author_plan(own, SN40L, graphs_small=small)
    ev = evaluate(task, {"kind": "plan", "plan": tuned.plan.to_dict()})
    assert ev.verified, ev.reason
    assert ev.speedup >= 1.0
    assert tuned.kernels <= len(build_baseline(own, SN40L).kernels)


def test_memory_bound_fusions_reach_the_roofline():
    task, own, small = _graphs("rmsnorm")
    tuned = author_plan(own, SN40L, graphs_small=small)
    ev = evaluate(task, {"kind": "plan", "plan": tuned.plan.to_dict()})
    assert ev.roofline_fraction > 0.85
    assert ev.speedup > 2.0  # six op-by-op kernels became one pass over HBM


@pytest.mark.parametrize("name,dtype", [("matmul", "f32"), ("gemm_bf16", "bf16"), ("bmm", "f32")])
def test_large_gemms_hold_a_row_block_on_chip_and_run_near_peak(name, dtype):
    # re-reading A for every column block of B (and B for every row block) made a 4096^3 GEMM
    # HBM-bound at 0.70 (f32) and 0.35 (bf16) of peak; with A's [tm, K] row block held on chip
    # and streamed again per column block the accum copies are the bottleneck
    _, own, small = _graphs(name)
    tuned = author_plan(own, SN40L, graphs_small=small)
    (region,) = tuned.plan.regions
    assert region.template == "matmul" and region.params["hold"] == 1
    (k,) = realize(tuned.plan, own, SN40L).kernels
    assert f"{dtype}[" in k.source and "bufferize(" in k.source and "streamify(" in k.source
    rep = asp_lang.profile(asp_lang.compile(k.source, SN40L, filename="k.asp"))
    assert rep.roofline_limit == "compute" and rep.roofline_fraction > 0.9
    assert rep.bottleneck.startswith("accum")
    # without the held operand the same tiles are bound by HBM
    params = dict(region.params, hold=0)
    (k0,) = realize(Plan([Region("matmul", list(region.nodes), params)]), own, SN40L).kernels
    rep0 = asp_lang.profile(asp_lang.compile(k0.source, SN40L, filename="k.asp"))
    assert rep0.hbm_bytes > rep.hbm_bytes and rep0.seconds > rep.seconds


def test_a_transposed_kv_cache_is_read_in_place_by_one_batched_matmul_region(tmp_path):
    # decode: one query per head against a K cache [B, H, L, D] transposed on its last two axes;
    # the transpose is not a copy kernel of its own (the cache is read once, transposed per tile)
    path = _write_task(tmp_path, "kcache_scores", '''B = 2
H = 4
L = 512
D = 64


class Model(nn.Module):
    def forward(self, q, k_cache):
        return torch.matmul(q, k_cache.transpose(-2, -1))


def get_inputs():
    return [torch.randn(B, H, 1, D), torch.randn(B, H, L, D)]


def get_init_inputs():
    return []
''', "[[sizes]]\nB = 1\nH = 2\nL = 48\nD = 16\n\n[[sizes]]\nB = 2\nH = 2\nL = 96\nD = 32\n")
    task = load_task(path)
    own = capture_at(task, meta=True)
    small = [capture_at(task, s, meta=True) for s in task.resolved_size_sets()[:2]]
    tuned = author_plan(own, SN40L, graphs_small=small)
    assert _templates(own, tuned.plan.regions) == [("matmul", ["permute", "bmm"])]
    (k,) = realize(tuned.plan, own, SN40L).kernels
    assert "transpose(y)" in k.source and "[8, 512, 64]" in k.source   # the cache's [B * H, L, D] view
    ev = evaluate(task, {"kind": "plan", "plan": tuned.plan.to_dict()})
    assert ev.verified, ev.reason
    assert ev.speedup > 1.0


def test_gate_and_up_share_one_read_of_the_activations_and_the_swiglu_product_stays_on_chip():
    # silu(x W1^T) * (x W3^T) then W2^T: gate and up are one region whose kernel reads x once (a copy
    # feeds both accums) and multiplies their tiles in the epilogue; the down projection is the next
    task, own, small = _graphs("moe_expert_swiglu")
    tuned = author_plan(own, SN40L, graphs_small=small)
    assert [r.template for r in tuned.plan.regions] == ["matmul", "matmul"]
    first = tuned.plan.regions[0]
    assert sum(semantic_nodes(own)[i].target == "aten.mm.default" for i in first.nodes) == 2
    k0, k1 = realize(tuned.plan, own, SN40L).kernels
    assert "copy(" in k0.source and k0.source.count("accum(") == 2 and k0.source.count("store(") == 1
    ev = evaluate(task, {"kind": "plan", "plan": tuned.plan.to_dict()})
    assert ev.verified, ev.reason
    assert ev.speedup > 1.0


def test_the_search_keeps_going_after_the_first_win_and_records_its_curve():
    _, own, small = _graphs("linear_bias")
    tuned = author_plan(own, SN40L, graphs_small=small)
    curves = [c for t, c in tuned.curves if t == "matmul"]
    assert curves
    (curve,) = curves
    # best time after each evaluation: never worse, and better after the first point
    assert all(b <= a for a, b in zip(curve, curve[1:])) and curve[-1] < curve[0]
    # coordinate descent spends a bounded budget, far below the grid
    from agentforge.author import MM_GRID, MM_MIN_TRIES
    import math
    assert 8 < len(curve) <= MM_MIN_TRIES < math.prod(len(v) for v in MM_GRID.values())


def test_a_plan_for_another_graph_is_refused_not_miscompiled():
    _, own, _ = _graphs("rmsnorm")
    with pytest.raises(ValueError):
        realize(Plan([Region("row", [999])]), own, SN40L)


# ------------------------------------------------------------------ attention

ATTENTION_TASKS = ["attention", "causal_attention", "gqa_causal_attention", "decode_attention", "multihead_attention",
                   "self_attention_proj", "transformer_encoder_block", "llama_decoder_block", "softmax_matmul"]


@pytest.mark.parametrize("name", ATTENTION_TASKS)
def test_attention_tasks_get_one_attention_region_in_canonical_asp(name):
    _, own, small = _graphs(name)
    regions = common_partition([own, *small])
    attention = [r for r in regions if r.template == "attention"]
    assert len(attention) == 1
    ops = _templates(own, attention)[0][1]
    assert ops.count("bmm") == (1 if name == "softmax_matmul" else 2) and "_softmax" in ops
    for graph in (own, *small):  # the plan realizes at every size, as one kernel for the region
        chain = realize(Plan(regions), graph, SN40L)
        (kernel,) = [k for k in chain.kernels if k.target == "fused.attention"]
        assert kernel.source == asp_lang.format_kernel(asp_lang.parse(kernel.source, "k.asp"))
        assert "accum(" in kernel.source and "bufferize(" in kernel.source


@pytest.mark.parametrize("name", ["causal_attention", "gqa_causal_attention", "decode_attention", "softmax_matmul"])
def test_attention_plans_verify_and_beat_the_matmul_row_matmul_plan(name):
    task, own, small = _graphs(name)
    tuned = author_plan(own, SN40L, graphs_small=small)
    assert any(r.template == "attention" for r in tuned.plan.regions)
    ev = evaluate(task, {"kind": "plan", "plan": tuned.plan.to_dict()})
    assert ev.verified, ev.reason
    unfused = tune(Plan(common_partition([own, *small], attention=False)), own, SN40L)
    assert not any(r.template == "attention" for r in unfused.plan.regions)
    # the scores no longer go through HBM; in decode (one query per head) they are tiny and the unfused
    # plan's batched matmuls read K transposed in place too, so there the fused kernel only has to win
    assert tuned.seconds < (1.0 if name == "decode_attention" else 0.8) * unfused.seconds
    assert ev.speedup > 1.5


def _write_task(tmp_path, name: str, body: str, sizes: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text("import torch\nimport torch.nn as nn\n\n" + body)
    path.with_suffix(".toml").write_text(f'[task]\ngroup = "attention"\nlevel = 2\ndescription = "{name}"\n\n'
                                         + sizes)
    return path


_ATTN_SIZES = "[[sizes]]\nB = 2\nS = 16\nD = 8\n\n[[sizes]]\nB = 3\nS = 32\nD = 16\n"


def test_attention_with_a_shared_intermediate_falls_back_to_matmul_row_matmul(tmp_path):
    # the probabilities are also an output: they must reach HBM, so no flash kernel
    path = _write_task(tmp_path, "attn_probs", '''B = 4
S = 64
D = 32


class Model(nn.Module):
    def forward(self, q, k, v):
        p = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * 0.25, dim=-1)
        return torch.matmul(p, v), p


def get_inputs():
    return [torch.randn(B, S, D), torch.randn(B, S, D), torch.randn(B, S, D)]


def get_init_inputs():
    return []
''', _ATTN_SIZES)
    task = load_task(path)
    own = capture_at(task, meta=True)
    small = [capture_at(task, s, meta=True) for s in task.resolved_size_sets()[:2]]
    tuned = author_plan(own, SN40L, graphs_small=small)
    assert not any(r.template == "attention" for r in tuned.plan.regions)
    ev = evaluate(task, {"kind": "plan", "plan": tuned.plan.to_dict()})
    assert ev.verified, ev.reason


def test_attention_with_a_per_batch_mask_keeps_the_scores_out_of_the_kernel(tmp_path):
    # a mask that differs per batch element is not a constant [Sq, Sk] tile shared by every head:
    # Q K^T and the mask stay outside, the region streams the scores from HBM (softmax @ V only)
    path = _write_task(tmp_path, "attn_batch_mask", '''B = 4
S = 64
D = 32


class Model(nn.Module):
    def forward(self, q, k, v, bias):
        s = torch.matmul(q, k.transpose(-2, -1)) * 0.25 + bias
        return torch.matmul(torch.softmax(s, dim=-1), v)


def get_inputs():
    return [torch.randn(B, S, D), torch.randn(B, S, D), torch.randn(B, S, D), torch.randn(B, S, S)]


def get_init_inputs():
    return []
''', _ATTN_SIZES)
    task = load_task(path)
    own = capture_at(task, meta=True)
    small = [capture_at(task, s, meta=True) for s in task.resolved_size_sets()[:2]]
    (region,) = attention_regions(own)
    assert [op for op in _templates(own, [region])[0][1]] == ["_softmax", "bmm"]
    tuned = author_plan(own, SN40L, graphs_small=small)
    ev = evaluate(task, {"kind": "plan", "plan": tuned.plan.to_dict()})
    assert ev.verified, ev.reason


def test_attention_with_a_window_mask_and_small_blocks_guards_fully_masked_blocks(tmp_path):
    # a sliding window masks whole key blocks of some rows; with 4 x 4 blocks the online softmax
    # meets rows whose first blocks are all -inf and must not turn them into NaN
    path = _write_task(tmp_path, "attn_window", '''B = 2
S = 64
D = 16


class Model(nn.Module):
    def forward(self, q, k, v):
        seq = q.shape[-2]
        i = torch.arange(seq, device=q.device)
        mask = (i[None, :] > i[:, None]) | (i[None, :] < i[:, None] - 3)
        s = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        s = s.masked_fill(mask, float("-inf")) + (i[None, :] - i[:, None]).float() * 0.01
        return torch.matmul(torch.softmax(s, dim=-1), v)


def get_inputs():
    return [torch.randn(B, S, D), torch.randn(B, S, D), torch.randn(B, S, D)]


def get_init_inputs():
    return []
''', _ATTN_SIZES)
    task = load_task(path)
    own = capture_at(task, meta=True)
    small = [capture_at(task, s, meta=True) for s in task.resolved_size_sets()[:2]]
    regions = common_partition([own, *small])
    assert [r.template for r in regions if r.template != "single"] == ["attention"]
    for r in regions:
        if r.template == "attention":
            r.params = {"tm": 4, "tk": 4, "par": 16}
    ev = evaluate(task, {"kind": "plan", "plan": Plan(regions).to_dict()})
    assert ev.verified, ev.reason


def test_where_no_attention_kernel_pays_the_greedy_regions_come_back():
    # on the small preset the flash kernel does not beat the ops it covers: the plan is then the
    # matmul / row regions of today, not one kernel per op
    mini = asp_lang.load_machine("rdu-mini")
    _, own, small = _graphs("attention")
    tuned = author_plan(own, mini, graphs_small=small)
    assert not any(r.template == "attention" for r in tuned.plan.regions)
    unfused = tune(Plan(common_partition([own, *small], attention=False)), own, mini)
    assert tuned.seconds <= unfused.seconds * (1 + 1e-9)
    assert any(r.template == "row" for r in tuned.plan.regions)


# ------------------------------------------------------------------ mixture of experts: routing

MOE_TASKS = {"moe_layer_top1": 1, "moe_layer_top2": 2}   # task: experts per token (k)


@pytest.mark.parametrize("name", sorted(MOE_TASKS))
def test_dense_masked_moe_layers_get_one_routed_region(name):
    _, own, small = _graphs(name)
    regions = common_partition([own, *small])
    (moe,) = [r for r in regions if r.template == "moe"]
    ops = _templates(own, [moe])[0][1]
    # the tokens' expansion to every expert, the expert MLP, the gates' transpose and the weighted sum
    assert ops.count("bmm") == (2 if name == "moe_layer_top1" else 3) and ops[-2:] == ["mul", "sum"]
    for graph in (own, *small):  # one routed kernel at every size: each token through its k experts only
        chain = realize(Plan(regions), graph, SN40L)
        (kernel,) = [k for k in chain.kernels if k.target == "fused.moe"]
        src = kernel.source
        assert src == asp_lang.format_kernel(asp_lang.parse(src, "k.asp"))
        for op in ("selector(", "partition(", "merge(", "bufferize(", "expand("):
            assert op in src, op
        assert f"argtopk(key, k={MOE_TASKS[name]}, axis=1)" in src


@pytest.mark.parametrize("name", sorted(MOE_TASKS))
def test_routed_moe_verifies_and_beats_the_dense_experts_by_the_flops_it_saves(name):
    task, own, small = _graphs(name)
    tuned = author_plan(own, SN40L, graphs_small=small)
    assert any(r.template == "moe" for r in tuned.plan.regions)
    # evaluated as the offline loop does (docs/agents.md): a plan whose timed tiles cannot be checked
    # within the size budget (`uncheckable`, docs/evaluation.md section 2.1: top-2's tiles need check
    # sizes whose expanded expert weights pass the interpreter's caps) has its fused regions' tiles
    # halved by the reflector; the routed region must survive that, verify and still pay
    plan, ctx = tuned.plan.to_dict(), task_context(task)
    for attempt in range(1, 4):
        ev = evaluate(task, {"kind": "plan", "plan": plan})
        if ev.reason_code != "uncheckable":
            break
        plan = OfflineReflector().reflect(ctx, plan, Candidate("plan", plan=plan), Feedback.from_evaluation(ev), attempt).plan
    assert ev.verified, ev.reason
    assert any(r.template == "moe" for r in Plan.from_dict(plan).regions)
    dense = tune(Plan(common_partition([own, *small], moe=False)), own, SN40L)
    assert not any(r.template == "moe" for r in dense.plan.regions)
    (region,) = moe_regions(own)
    experts = own.spec(semantic_nodes(own)[max(region.nodes)].args[0]).shape[0]   # the sum over [E, T, D]
    k = MOE_TASKS[name]
    # the routed kernel does k / E of the expert flops; on the timing model it must keep at least a
    # third of that advantage (it re-reads each expert's weights from SRAM for every token, and its
    # checkable tiles are the halved ones; the dense experts' matmuls hold their activations on chip
    # and run at ~0.95 of peak since the matmul template's operand reuse, so the bar is a fast plan)
    assert ev.simulated_seconds * experts / (3 * k) < dense.seconds   # the verified (timed = checked) plan
    # against the op-by-op baseline (each op near its own roofline since the issue-17 yardstick, so
    # the bar is ~3x lower than when this asked for 5x)
    assert ev.speedup > 1.5


def test_experts_without_masked_gates_are_not_routed():
    # grouped experts (tokens already dispatched) and a single expert have no gates to route by
    for name in ("moe_experts_grouped", "moe_expert_swiglu"):
        _, own, small = _graphs(name)
        assert moe_regions(own) == []
        assert not any(r.template == "moe" for r in common_partition([own, *small]))


_MOE_SIZES = "[[sizes]]\nT = 16\nD = 8\nF = 16\nE = 4\n\n[[sizes]]\nT = 32\nD = 16\nF = 32\nE = 6\n"


def _moe_task(tmp_path, name: str, gates: str) -> Path:
    return _write_task(tmp_path, name, f'''T = 64
D = 32
F = 64
E = 6


class Model(nn.Module):
    def __init__(self, d, f, e):
        super().__init__()
        self.e = e
        self.router = nn.Linear(d, e, bias=False)
        self.w_in = nn.Parameter(torch.randn(e, d, f) * d ** -0.5)
        self.w_out = nn.Parameter(torch.randn(e, f, d) * f ** -0.5)

    def forward(self, x):
        probs = torch.softmax(self.router(x), dim=-1)
{gates}
        h = torch.nn.functional.gelu(torch.matmul(x, self.w_in))
        out = torch.matmul(h, self.w_out) * 0.5
        return (gates.t().unsqueeze(-1) * out).sum(dim=0)


def get_inputs():
    return [torch.randn(T, D)]


def get_init_inputs():
    return [D, F, E]
''', _MOE_SIZES)


def test_top3_routing_with_a_post_op_verifies(tmp_path):
    # three experts per token: the k slots are summed in expert order, as the dense sum adds them;
    # the scale after the down product is applied per expert, before the gates
    task = load_task(_moe_task(tmp_path, "moe_top3", '''        w, idx = torch.topk(probs, 3, dim=-1)
        gates = torch.zeros_like(probs).scatter(1, idx, w / w.sum(dim=-1, keepdim=True))'''))
    own = capture_at(task, meta=True)
    small = [capture_at(task, s, meta=True) for s in task.resolved_size_sets()[:2]]
    regions = common_partition([own, *small])
    (region,) = [r for r in regions if r.template == "moe"]
    (kernel,) = [k for k in realize(Plan(regions), own, SN40L).kernels if k.target == "fused.moe"]
    assert "argtopk(key, k=3, axis=1)" in kernel.source and "erf(" in kernel.source
    region.params = {"tk": 8, "par": 4, "par_buf": 2}   # several hidden tiles per token
    ev = evaluate(task, {"kind": "plan", "plan": Plan(regions).to_dict()})
    assert ev.verified, ev.reason


def test_soft_gates_are_not_routed(tmp_path):
    # every gate non-zero (a soft mixture): routing to a few experts would change the result
    task = load_task(_moe_task(tmp_path, "moe_soft", "        gates = probs"))
    own = capture_at(task, meta=True)
    assert moe_regions(own) == []
    # nor gates masked by a comparison that may hold for several experts per token
    task = load_task(_moe_task(tmp_path, "moe_threshold", "        gates = torch.where(probs > 0.2, probs, 0.0)"))
    assert moe_regions(capture_at(task, meta=True)) == []


def test_where_the_expert_weights_do_not_fit_on_chip_the_dense_plan_comes_back():
    mini = asp_lang.load_machine("rdu-mini")
    _, own, small = _graphs("moe_layer_top1")
    tuned = author_plan(own, mini, graphs_small=small)
    assert not any(r.template == "moe" for r in tuned.plan.regions)
    dense = tune(Plan(common_partition([own, *small], moe=False)), own, mini)
    assert tuned.seconds <= dense.seconds * (1 + 1e-9)


# ------------------------------------------------------------------ split reductions and row ops


@pytest.mark.parametrize("name, ops", [
    ("mse_loss", ["sub", "pow", "mean"]),
    ("cross_entropy_onehot", ["_log_softmax", "mul", "sum", "mean", "neg"]),
    ("moe_expert_counts", ["eq", "sum"]),
])
def test_a_reduction_across_the_rows_is_split_and_ends_its_row_region(name, ops):
    task, own, small = _graphs(name)
    tuned = author_plan(own, SN40L, graphs_small=small)
    (region,) = [r for r in tuned.plan.regions if r.template != "single"]
    assert region.template == "row" and _templates(own, [region])[0][1] == ops
    (kernel,) = realize(tuned.plan, own, SN40L).kernels
    # stage 1: a partial per row tile in the parallel map; stage 2: one accum combines them
    assert "map(" in kernel.source and "accum(" in kernel.source and "axis=0)" in kernel.source
    ev = evaluate(task, {"kind": "plan", "plan": tuned.plan.to_dict()})
    assert ev.verified, ev.reason
    assert ev.speedup > 1.5


def test_the_split_loss_kernel_is_faster_than_the_loss_reduced_on_its_own():
    task, own, small = _graphs("mse_loss")
    tuned = author_plan(own, SN40L, graphs_small=small)
    apart = tune(Plan([Region("row", [0, 1]), Region("single", [2])]), own, SN40L)
    assert tuned.kernels == 1 and tuned.seconds < 0.7 * apart.seconds
    ev = evaluate(task, {"kind": "plan", "plan": tuned.plan.to_dict()})
    assert ev.verified and ev.roofline_fraction > 0.9


@pytest.mark.parametrize("name", ["rope_gptj", "rope_neox", "cumsum_reverse"])
def test_rotary_embeddings_and_reversed_scans_are_one_pass_over_hbm(name):
    # rope: cos/sin [S, D/2] repeat over the heads (held on chip); gptj's pairs are strided
    # slices of the row and interleave back; the reversed cumsum's flips are row ops
    task, own, small = _graphs(name)
    tuned = author_plan(own, SN40L, graphs_small=small)
    assert tuned.kernels == 1
    ev = evaluate(task, {"kind": "plan", "plan": tuned.plan.to_dict()})
    assert ev.verified, ev.reason
    assert ev.roofline_fraction > 0.9 and ev.speedup > 3


@pytest.mark.parametrize("name", ["bias_add", "mul_broadcast"])
def test_a_lone_broadcast_op_takes_the_row_kernel_where_it_is_faster(name):
    # one op is a row region of one node: the row kernel (the broadcast operand loaded once and
    # repeated on chip) competes with the op's baseline lowering, and the faster is kept
    task, own, small = _graphs(name)
    tuned = author_plan(own, SN40L, graphs_small=small)
    assert [r.template for r in tuned.plan.regions] == ["row"]
    ev = evaluate(task, {"kind": "plan", "plan": tuned.plan.to_dict()})
    assert ev.verified, ev.reason
    # the op-by-op baseline reads the broadcast operand once too since issue 17's yardstick fix, so
    # the row kernel matches it at the roofline rather than beating it
    assert ev.roofline_fraction > 0.95 and ev.speedup >= 0.999
