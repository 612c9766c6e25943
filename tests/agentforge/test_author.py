"""The offline author fuses ops into few kernels that verify and are never slower than op by op."""

from __future__ import annotations

from pathlib import Path

import pytest

import asp_lang
from agentforge.author import Plan, Region, author_plan, baseline_plan, common_partition, partition, realize, \
    semantic_nodes
from agentforge.baseline import build_baseline, capture_at
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
    import agentforge.author as author

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


def test_a_plan_for_another_graph_is_refused_not_miscompiled():
    _, own, _ = _graphs("rmsnorm")
    with pytest.raises(ValueError):
        realize(Plan([Region("row", [999])]), own, SN40L)
