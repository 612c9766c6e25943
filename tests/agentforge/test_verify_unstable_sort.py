"""The indices of an unstable sort are verified up to ties, and only up to ties.

torch's CPU sort without ``stable=True`` (std::sort) orders the ties of rows over 16 elements a
way of its own, so a task that sorts expert ids (Mixtral's router: 32 ids, all 0 or 1) has
reference indices that no correct kernel can be expected to reproduce. By the op's contract any
order of equal values is right: such an output must be a permutation along the sorted dim that
gathers the reference's sorted values, and nothing else passes. A stable sort's indices, values
outputs and every other output are compared exactly, as before."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agentforge.capture import capture_at
from agentforge.tasks import load_task
from agentforge.verify import Mismatch, VerifyConfig, check_sort_indices, evaluate, run_checks, unstable_sort_indices

CFG = VerifyConfig(machine="sn40l", size_sets=1)

_TASK = '''import torch
import torch.nn as nn


class Model(nn.Module):
    def forward(self, x0):
        {body}


def get_inputs():
    return [{inputs}]


def get_init_inputs():
    return []
'''
EXPERT_IDS = "torch.randint(0, 2, [32], dtype=torch.int64)"   # Mixtral's router: 32 ids, all 0 or 1
UNSTABLE = "v = torch.ops.aten.sort.default(x0)\n        return (v[0], v[1])"


def _task(tmp_path: Path, body: str, inputs: str = EXPERT_IDS, name: str = "sort_task"):
    path = tmp_path / f"{name}.py"
    path.write_text(_TASK.format(body=body, inputs=inputs))
    return load_task(path)


def _ties_reversed(x: torch.Tensor, dim: int = -1, descending: bool = False) -> torch.Tensor:
    """Sort indices along ``dim`` with each run of equal values in descending index order: a
    valid answer of an unstable sort that is not the stable one."""
    srt = torch.sort(x, dim=dim, stable=True, descending=descending)
    n = x.shape[dim]
    values = srt.values.movedim(dim, -1).reshape(-1, n)
    indices = srt.indices.movedim(dim, -1).reshape(-1, n).clone()
    for row in range(values.shape[0]):
        start = 0
        while start < n:
            end = start + 1
            while end < n and values[row, end] == values[row, start]:
                end += 1
            indices[row, start:end] = indices[row, start:end].flip(0)
            start = end
    return indices.reshape(srt.indices.movedim(dim, -1).shape).movedim(-1, dim)


class _Fake:
    """A candidate whose outputs are computed by ``f`` from the inputs (no kernel: the verdict
    depends on the comparison alone)."""

    def __init__(self, f):
        self.f = f

    def run(self, graph, inputs, limits):
        return list(self.f(*inputs))


def _verdict(task, f) -> tuple[bool, str | None]:
    checks = run_checks(task, _Fake(f), CFG)
    last = checks[-1]
    return last.passed, last.reason


# ------------------------------------------------------------------ the Mixtral router's sort

def test_a_stable_kernel_verifies_against_torchs_unstable_tie_order(tmp_path):
    task = _task(tmp_path, UNSTABLE)
    torch.manual_seed(0)
    x = torch.randint(0, 2, [32])
    # the premise: torch's own tie order is not the stable one (an exact comparison fails)
    assert not torch.equal(torch.ops.aten.sort.default(x)[1], torch.sort(x, stable=True).indices)
    ev = evaluate(task, {"kind": "baseline"}, CFG)   # the baseline lowers sort stably
    assert ev.verified, ev.reason
    assert len(ev.checks) >= 3 and all(c.passed for c in ev.checks)


def test_any_tie_order_passes(tmp_path):
    task = _task(tmp_path, UNSTABLE)
    assert _verdict(task, lambda x: (torch.sort(x, stable=True).values, _ties_reversed(x))) == (True, None)


@pytest.mark.parametrize("wrong,why", [
    (lambda x: torch.zeros_like(x), "index 0 appears 32 times"),                 # not a permutation
    (lambda x: torch.cat([_ties_reversed(x)[:-1], _ties_reversed(x)[:1]]), "not permutations"),  # one index twice
    (lambda x: torch.sort(x, stable=True).indices + 1, "out of range"),         # off by one
    (lambda x: torch.arange(32), "do not sort the input"),                       # a permutation that does not sort
    (lambda x: torch.sort(x, stable=True, descending=True).indices, "do not sort the input"),   # the other direction
], ids=["all_zero", "repeated", "out_of_range", "identity", "descending"])
def test_indices_that_are_no_valid_answer_fail_with_a_reason(tmp_path, wrong, why):
    task = _task(tmp_path, UNSTABLE)
    passed, reason = _verdict(task, lambda x: (torch.sort(x, stable=True).values, wrong(x)))
    assert not passed
    assert reason.startswith("output 1: ") and why in reason, reason


def test_the_values_output_is_still_compared_exactly(tmp_path):
    task = _task(tmp_path, UNSTABLE)
    passed, reason = _verdict(task, lambda x: (torch.sort(x, stable=True).values.flip(0), _ties_reversed(x)))
    assert not passed and reason.startswith("output 0: ") and "values differ" in reason


def test_a_stable_sorts_indices_are_compared_exactly(tmp_path):
    task = _task(tmp_path, "v = torch.sort(x0, stable=True)\n        return (v[0], v[1])")
    assert unstable_sort_indices(capture_at(task)) == {}
    stable = lambda x: torch.sort(x, stable=True)   # noqa: E731
    assert _verdict(task, stable) == (True, None)
    passed, reason = _verdict(task, lambda x: (stable(x).values, _ties_reversed(x)))
    assert not passed and reason.startswith("output 1: ") and "values differ" in reason


# ------------------------------------------------------------------ which outputs, which overloads

def test_unstable_sorts_are_found_through_overloads_and_copies(tmp_path):
    body = ("a = torch.sort(x0, stable=False)\n"
            "        b = torch.argsort(x0, dim=0, descending=True)\n"
            "        c = torch.sort(x0, stable=True)\n"
            "        d = torch.sort(x0, stable=None)\n"
            "        return (a[0], a[1], b.clone(), c[1], d[1], x0 + 1)")
    task = _task(tmp_path, body, inputs="torch.randint(0, 3, [4, 24], dtype=torch.int64)")
    found = unstable_sort_indices(capture_at(task))
    assert sorted(found) == [1, 2, 4]   # not a's values, not the stable sort, not the sum
    assert (found[2].dim, found[2].descending) == (0, True)
    assert found[1].input_dtype == "i64"


def test_float_rows_with_ties_along_another_dim_and_descending(tmp_path):
    body = "return torch.argsort(x0, dim=0, descending=True).clone()"
    task = _task(tmp_path, body, inputs="torch.randn(40, 3).round()")   # few values: many ties per column
    ok = lambda x: (_ties_reversed(x, dim=0, descending=True),)   # noqa: E731
    assert _verdict(task, ok) == (True, None)
    # ascending indices do not sort descending (the gathered values differ)
    passed, reason = _verdict(task, lambda x: (torch.sort(x, dim=0, stable=True).indices,))
    assert not passed and "do not sort the input" in reason


# ------------------------------------------------------------------ check_sort_indices itself

def test_check_sort_indices_accepts_exactly_the_tie_permutations():
    x = torch.tensor([[2.0, 1.0, 2.0, 1.0], [0.5, 0.5, 0.5, 0.25]], dtype=torch.float64)
    ref = torch.tensor([[1, 3, 0, 2], [3, 2, 1, 0]])   # one valid answer, ties in any order
    assert check_sort_indices(torch.tensor([[3, 1, 2, 0], [3, 0, 1, 2]]), ref, x, -1, 1e-4, 1e-4) == (0.0, 0.0)
    with pytest.raises(Mismatch, match=r"index 1 appears 2 times in the row at \[0\] and 0 never"):
        check_sort_indices(torch.tensor([[1, 3, 1, 2], [3, 0, 1, 2]]), ref, x, -1, 1e-4, 1e-4)
    with pytest.raises(Mismatch, match="do not sort the input") as e:
        check_sort_indices(torch.tensor([[1, 0, 3, 2], [3, 0, 1, 2]]), ref, x, 1, 1e-4, 1e-4)
    assert e.value.code == "mismatch"
    with pytest.raises(Mismatch, match="shape"):
        check_sort_indices(ref[:, :3], ref, x, -1, 1e-4, 1e-4)


def test_check_sort_indices_lets_float_near_ties_swap_within_tolerance():
    x = torch.tensor([1.0, 1.0 + 1e-9, 0.0], dtype=torch.float64)
    ref = torch.tensor([2, 0, 1])
    assert check_sort_indices(torch.tensor([2, 1, 0]), ref, x, 0, 1e-4, 1e-4)[0] < 1e-8
    with pytest.raises(Mismatch):
        check_sort_indices(torch.tensor([2, 1, 0]), ref, x, 0, 0.0, 0.0)   # no tolerance: no swap


# ------------------------------------------------------------------ top-k: ties unordered too

TOPK = "v = torch.topk(x0, 3, dim=-1)\n        return (v[0], v[1])"
FEW_VALUES = "torch.randint(0, 3, [8, 16]).float()"      # rows of 16 with 3 values: ties at the top


def _topk_ties_reversed(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    return _ties_reversed(x, dim=-1, descending=True)[..., :k]


def test_a_topk_with_its_ties_in_another_order_verifies(tmp_path):
    """torch.topk leaves the order of equal values unspecified; a kernel that picks tied values in
    another order (or a float32 kernel ordering two values that tie within float32 otherwise than
    the float64 reference) is right."""
    task = _task(tmp_path, TOPK, inputs=FEW_VALUES, name="topk_task")
    (found,) = unstable_sort_indices(capture_at(task)).values()
    assert (found.dim, found.descending, found.ordered) == (-1, True, True)
    x = torch.randint(0, 3, [8, 16]).float()
    assert not torch.equal(torch.topk(x, 3).indices, _topk_ties_reversed(x))      # another valid answer
    assert _verdict(task, lambda x: (torch.topk(x, 3).values, _topk_ties_reversed(x))) == (True, None)


@pytest.mark.parametrize("wrong,why", [
    (lambda x: torch.zeros(x.shape[0], 3, dtype=torch.int64), "appears 3 times"),          # not distinct
    (lambda x: torch.arange(3).expand(x.shape[0], 3).contiguous(), "do not pick its top values"),
    (lambda x: _topk_ties_reversed(x) + 16, "out of range"),
    (lambda x: torch.topk(x, 3, largest=False).indices, "do not pick its top values"),     # the smallest
], ids=["repeated", "first_three", "out_of_range", "smallest"])
def test_topk_indices_that_are_no_valid_answer_fail_with_a_reason(tmp_path, wrong, why):
    task = _task(tmp_path, TOPK, inputs="torch.randn(8, 16)", name="topk_task")
    passed, reason = _verdict(task, lambda x: (torch.topk(x, 3).values, wrong(x)))
    assert not passed and reason.startswith("output 1: ") and why in reason, reason


def test_check_sort_indices_on_a_topk_compares_values_as_a_set_when_unsorted():
    x = torch.tensor([[1.0, 1.0 + 1e-9, 0.5, 2.0]], dtype=torch.float64)
    ref = torch.tensor([[3, 1]])                        # top-2, sorted
    assert check_sort_indices(torch.tensor([[3, 0]]), ref, x, -1, 1e-4, 1e-4)[0] < 1e-8    # a near tie swapped
    with pytest.raises(Mismatch, match="do not pick its top values"):
        check_sort_indices(torch.tensor([[1, 3]]), ref, x, -1, 1e-4, 1e-4)               # out of order
    assert check_sort_indices(torch.tensor([[1, 3]]), ref, x, -1, 1e-4, 1e-4, ordered=False)[0] < 1e-8
    with pytest.raises(Mismatch, match="2 distinct indices"):
        check_sort_indices(torch.tensor([[3, 3]]), ref, x, -1, 1e-4, 1e-4, ordered=False)
