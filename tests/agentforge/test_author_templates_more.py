"""Issue 17's templates for what fell back to op by op: a cross-entropy over class indices is one
row region (log-softmax, the target logit's gather, the per-row loss and the mean over valid rows:
two split reductions in one pass), per-row 1-d values are columns of a row region, and a 1-d value
that PyTorch broadcasts along the last dim is never mistaken for one."""

from __future__ import annotations

from pathlib import Path

import pytest

import asp_lang
from agentforge.author import Plan, author_plan, common_partition, semantic_nodes
from agentforge.baseline import build_baseline
from agentforge.capture import capture_at
from agentforge.tasks import load_task
from agentforge.verify import evaluate

SUITE = Path(__file__).resolve().parents[2] / "evals" / "suite"
SN40L = asp_lang.load_machine("sn40l")


def _task(tmp_path: Path, name: str, forward: str, inputs: str, sizes: str = "TOKENS = 16\nVOCAB = 64") -> Path:
    """A small task file (own sizes TOKENS x VOCAB) with its sidecar's two size sets."""
    (tmp_path / f"{name}.py").write_text(f'''"""{name}."""
import torch
import torch.nn as nn

TOKENS = 256
VOCAB = 512


class Model(nn.Module):
    def forward(self, x, t):
        return {forward}


def get_inputs():
    return {inputs}


def get_init_inputs():
    return []
''')
    (tmp_path / f"{name}.toml").write_text(f'''[task]
group = "loss"
level = 1
description = "{name}"

[[sizes]]
{sizes}

[[sizes]]
TOKENS = 32
VOCAB = 128
''')
    return tmp_path / f"{name}.py"


def _authored(task):
    """The author's regions valid at every size (untuned: the search is not what these tests are about)."""
    own = capture_at(task, meta=True)
    small = [capture_at(task, s, meta=True) for s in task.resolved_size_sets()[:2]]
    return own, Plan(common_partition([own] + small))


def _verified(task, plan):
    ev = evaluate(task, {"kind": "plan", "plan": plan.to_dict()})
    assert ev.verified, ev.reason
    return ev


def _kinds(graph, region):
    sem = semantic_nodes(graph)
    return [sem[i].target.split(".")[1] for i in region.nodes]


def test_cross_entropy_over_class_indices_is_one_pass_over_the_logits():
    task = load_task(SUITE / "cross_entropy_index.py")
    own, plan = _authored(task)
    (region,) = plan.regions   # log_softmax, the ignore_index masks, gather, neg, both sums, div: one kernel
    assert region.template == "row"
    assert {"_log_softmax", "gather", "sum", "div"} <= set(_kinds(own, region))
    # op by op writes and re-reads the log-probabilities: the tuned fused pass reads the logits once
    small = [capture_at(task, s, meta=True) for s in task.resolved_size_sets()[:2]]
    tuned = author_plan(own, SN40L, graphs_small=small)
    assert tuned.kernels == 1 < len(build_baseline(own, SN40L).kernels)
    ev = _verified(task, tuned.plan)
    assert ev.roofline_fraction > 0.9 and ev.speedup > 2.0


def test_ignored_targets_are_left_out_of_the_mean(tmp_path):
    # ignore_index=-100 rows: neither in the sum nor in the count (the second split reduction)
    path = _task(tmp_path, "ce_ignore", "torch.nn.functional.cross_entropy(x, t)",
                 "[torch.randn(TOKENS, VOCAB), torch.where(torch.arange(TOKENS) % 3 == 0, -100, "
                 "torch.randint(0, VOCAB, (TOKENS,)))]")
    task = load_task(path)
    own, plan = _authored(task)
    assert [r.template for r in plan.regions] == ["row"]
    _verified(task, plan)


def test_a_hand_written_nll_of_log_softmax_gathers_in_the_row_region(tmp_path):
    path = _task(tmp_path, "nll_by_hand",
                 "-torch.log_softmax(x, dim=-1).gather(1, t.unsqueeze(1)).squeeze(1).mean()",
                 "[torch.randn(TOKENS, VOCAB), torch.randint(0, VOCAB, (TOKENS,))]")
    task = load_task(path)
    own, plan = _authored(task)
    assert [r.template for r in plan.regions] == ["row"]
    _verified(task, plan)


def test_a_1d_value_broadcast_along_the_last_dim_is_not_a_column(tmp_path):
    # x.sum(-1) is [N]; x - it broadcasts it along the columns (x is square): it is one row of N values
    # there, not one value per row, so the subtraction must not read it as a column of the region
    path = _task(tmp_path, "row_broadcast", "x - x.sum(-1) + t.float()",
                 "[torch.randn(TOKENS, TOKENS), torch.randint(0, 4, (TOKENS,))]",
                 sizes="TOKENS = 16")
    task = load_task(path)
    own, plan = _authored(task)
    _verified(task, plan)


def test_two_totals_of_one_pass_and_what_combines_them_share_one_kernel(tmp_path):
    path = _task(tmp_path, "two_totals", "(x * x).sum() / (x > t.float().unsqueeze(1)).sum()",
                 "[torch.randn(TOKENS, VOCAB), torch.randint(-1, 2, (TOKENS,))]")
    task = load_task(path)
    own, plan = _authored(task)
    assert [r.template for r in plan.regions] == ["row"]
    assert _verified(task, plan).speedup > 1.5


def test_a_vector_norm_over_rows_is_a_row_reduction_fused_with_its_divide(tmp_path):
    _, plan = _authored(load_task(SUITE / "l2_norm.py"))
    assert [r.template for r in plan.regions] == ["row"]   # op by op: the norm, then the divide re-reads x
    # ord 2, 1 and inf: the row norms the template takes, checked by the referee
    path = _task(tmp_path, "norm_ord", "x / x.norm(dim=-1, keepdim=True) + "
                 "torch.linalg.vector_norm(x, ord=1, dim=-1, keepdim=True) + "
                 "torch.linalg.vector_norm(x, ord=float('inf'), dim=-1, keepdim=True) + t.float().unsqueeze(1)",
                 "[torch.randn(TOKENS, VOCAB), torch.randint(0, 4, (TOKENS,))]")
    task = load_task(path)
    own, plan = _authored(task)
    assert [r.template for r in plan.regions] == ["row"]
    assert _verified(task, plan).speedup > 1.4
