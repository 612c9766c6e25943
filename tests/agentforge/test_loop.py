"""The agent loop: plan, fan out workers, evaluate, reflect, revise or accept, within budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentforge.agents.offline import OfflineReflector, OfflineWorker
from agentforge.agents.roles import Candidate, Usage
from agentforge.author import Plan, Region, partition
from agentforge.loop import SolveConfig, offline_roles, solve, task_context
from agentforge.tasks import load_task

SUITE = Path(__file__).resolve().parents[2] / "evals" / "suite"


@pytest.fixture(scope="module")
def rmsnorm():
    task = load_task(SUITE / "rmsnorm.py")
    return task, task_context(task)


def test_offline_solve_verifies_and_beats_the_baseline(rmsnorm):
    task, ctx = rmsnorm
    planner, workers, reflector = offline_roles(workers=2)
    res = solve(task, planner, workers, reflector, ctx=ctx, cfg=SolveConfig(workers=2))
    assert res.verified and res.best.speedup > 1.0
    assert res.attempts == 1
    assert len(res.history) == 2          # both workers' candidates were evaluated and recorded
    assert res.usage.calls == 0           # offline roles make no LLM calls


class _BrokenPlanner:
    """Fuses the whole graph into one matmul region: realizing it fails for a row task."""
    usage = Usage()

    def plan(self, ctx, demos):
        return Plan([Region("matmul", [r for reg in partition(ctx.graph_own) for r in reg.nodes])]).to_dict()


def test_a_rejected_plan_is_revised_by_the_reflector_until_it_verifies(rmsnorm):
    task, ctx = rmsnorm
    res = solve(task, _BrokenPlanner(), [OfflineWorker()], OfflineReflector(), ctx=ctx,
                cfg=SolveConfig(max_attempts=3))
    first = res.history[0]["evaluation"]
    assert not first["verified"] and first["reason_code"] is not None
    assert res.verified                     # the split plan (op by op at worst) verifies
    assert res.attempts >= 2
    assert any("split" in n for n in res.notes)


class _CrashingWorker:
    usage = Usage()

    def write(self, ctx, plan, feedback, demos, attempt):
        raise RuntimeError("boom")


def test_a_crashing_worker_is_a_recorded_failure_not_a_crash(rmsnorm):
    task, ctx = rmsnorm
    planner, _, reflector = offline_roles()
    res = solve(task, planner, [_CrashingWorker(), OfflineWorker()], reflector, ctx=ctx,
                cfg=SolveConfig(workers=2, max_attempts=1))
    codes = sorted(str(h["evaluation"]["reason_code"]) for h in res.history)
    assert "worker_error" in codes
    assert res.verified


class _NeverVerifies:
    usage = Usage()

    def write(self, ctx, plan, feedback, demos, attempt):
        return Candidate("kernel", source="kernel nope(", author="test")


def test_the_attempt_budget_ends_the_loop(rmsnorm):
    task, ctx = rmsnorm
    planner, _, reflector = offline_roles()
    res = solve(task, planner, [_NeverVerifies()], reflector, ctx=ctx, cfg=SolveConfig(max_attempts=2))
    assert not res.verified
    assert res.attempts == 2
    assert all(h["evaluation"]["reason_code"] == "compile" for h in res.history)


class _BrokenMemory:
    """An experience library whose every call fails (a locked or corrupt database)."""

    def demonstrations(self, *a, **k):
        raise OSError("database is locked")

    record_attempt = add = demonstrations


def test_a_failing_memory_is_reported_not_fatal_and_not_silent(rmsnorm):
    task, ctx = rmsnorm
    planner, workers, reflector = offline_roles()
    res = solve(task, planner, workers, reflector, ctx=ctx, experience=_BrokenMemory())
    assert res.verified
    assert any("experience library" in n and "database is locked" in n for n in res.notes)
