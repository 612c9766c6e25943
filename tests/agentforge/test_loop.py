"""The agent loop: plan, fan out workers, evaluate, reflect, revise or accept, within budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentforge.agents.offline import OfflineReflector, OfflineWorker
from agentforge.agents.roles import Candidate, Demo, Reflection, Usage
from agentforge.author import Plan, Region, partition
from agentforge.loop import SolveConfig, offline_roles, solve, task_context
from agentforge.tasks import load_task
from test_llm_roles import RELU_KERNEL

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


class _StagedMemory:
    """An experience library with one demonstration per level: stage s shows s + 1 of them."""

    def __init__(self, empty_stages=()):
        self.empty_stages = set(empty_stages)
        self.recorded = []

    def demonstrations(self, k, stage, exclude_tasks=()):
        if stage in self.empty_stages:
            return []
        return [Demo(f"task_{lv}", "key", "kernel", "kernel k() {}", None, 1.0, lv)
                for lv in ("hard", "medium", "easy")[:stage + 1]]

    def record_attempt(self, task, signature, success):
        self.recorded.append(success)

    def add(self, *a, **k):
        pass


class _FailsFirst:
    """Fails its first attempt, then writes what the offline worker writes."""
    usage = Usage()

    def __init__(self):
        self.inner = OfflineWorker()

    def write(self, ctx, plan, feedback, demos, attempt):
        if attempt == 0:
            return Candidate("kernel", source="kernel nope(", author="test")
        return self.inner.write(ctx, plan, feedback, demos, attempt)


class _NeverAccepts:
    usage = Usage()

    def reflect(self, ctx, plan, candidate, feedback, attempt):
        return Reflection(accept=False)


def test_workers_get_demonstrations_on_the_adaptive_schedule(rmsnorm):
    # hard first; a round with no verified candidate widens to hard + medium; the pass rate
    # improving restarts at hard; stalling again widens again
    task, ctx = rmsnorm
    planner, _, _ = offline_roles()
    res = solve(task, planner, [_FailsFirst()], _NeverAccepts(), ctx=ctx, experience=_StagedMemory(),
                cfg=SolveConfig(max_attempts=4, min_speedup=1e9))
    shown = [[d["level"] for d in h["demos"]] for h in res.history]
    assert shown == [["hard"], ["hard", "medium"], ["hard"], ["hard", "medium"]]
    assert [h["evaluation"]["verified"] for h in res.history] == [False, True, True, True]


def test_a_stage_with_no_demonstrations_widens_to_the_next(rmsnorm):
    # early in a campaign every solved task can share one level: hard is empty, show the next
    task, ctx = rmsnorm
    planner, workers, reflector = offline_roles()
    res = solve(task, planner, workers, reflector, ctx=ctx, experience=_StagedMemory(empty_stages={0}))
    assert [d["level"] for d in res.history[0]["demos"]] == ["hard", "medium"]


class _BrokenCache:
    def lookup(self, *args, **kwargs):
        raise OSError("database is locked")

    store = serve = lookup


def test_a_failing_plan_cache_falls_back_to_the_planner_and_says_so(rmsnorm):
    task, ctx = rmsnorm
    planner, workers, reflector = offline_roles()
    res = solve(task, planner, workers, reflector, ctx=ctx, plan_cache=_BrokenCache())
    assert res.verified and res.plan_source == "planner" and not res.plan_cache_hit
    assert any("plan cache failed" in n and "database is locked" in n for n in res.notes)
    assert any("storing the verified plan failed" in n for n in res.notes)


def test_a_failing_progress_callback_does_not_fail_the_attempt(rmsnorm):
    task, ctx = rmsnorm
    planner, workers, reflector = offline_roles()

    def on_record(rec):
        raise BrokenPipeError("the console went away")

    res = solve(task, planner, workers, reflector, ctx=ctx, on_record=on_record)
    assert res.verified
    assert any("reporting an attempt failed" in n and "console went away" in n for n in res.notes)


class _KernelWorker:
    """Writes a kernel, as an LLM worker does (not a plan)."""
    usage = Usage()

    def write(self, ctx, plan, feedback, demos, attempt):
        return Candidate("kernel", source=RELU_KERNEL, author="llm-like")


class _TokenPlanner:
    """The offline planner's plan, billed like an LLM planner's."""

    def __init__(self):
        self.inner = offline_roles()[0]
        self.usage = Usage()

    def plan(self, ctx, demos):
        self.usage.add(Usage(calls=1, prompt_tokens=900, completion_tokens=100))
        return self.inner.plan(ctx, demos)


def test_a_plan_that_led_to_a_verified_kernel_enters_the_cache_with_its_tokens(tmp_path):
    from agentforge.store.plan_cache import PlanCache

    task = load_task(SUITE / "relu.py")
    ctx = task_context(task)
    with PlanCache(tmp_path / "cache.sqlite") as cache:
        first = solve(task, _TokenPlanner(), [_KernelWorker()], OfflineReflector(), ctx=ctx, plan_cache=cache)
        assert first.verified and first.best_candidate.kind == "kernel" and not first.plan_cache_hit
        assert len(cache.entries()) == 1
        planner = _TokenPlanner()
        second = solve(task, planner, [_KernelWorker()], OfflineReflector(), ctx=ctx, plan_cache=cache)
        assert second.verified and second.plan_cache_hit and planner.usage.calls == 0
        stats = cache.stats()
        assert stats["planner_calls_saved"] == 1 and stats["tokens_saved"] == 1000


class _RecordingReflector:
    usage = Usage()

    def __init__(self):
        self.seen = []

    def reflect(self, ctx, plan, candidate, feedback, attempt):
        self.seen.append(feedback.verified)
        return Reflection(accept=False)


def test_the_reflector_reads_the_rounds_most_promising_candidate(rmsnorm):
    # worker 0 fails to compile, worker 1 verifies (slower than asked): the reflection is about worker 1's
    task, ctx = rmsnorm
    planner, _, _ = offline_roles()
    reflector = _RecordingReflector()
    solve(task, planner, [_NeverVerifies(), OfflineWorker()], reflector, ctx=ctx,
          cfg=SolveConfig(workers=2, max_attempts=2, min_speedup=1e9))
    assert reflector.seen == [True]


def test_an_uncheckable_plan_gets_smaller_tiles_not_split_regions(rmsnorm):
    """A plan whose timed tiles need check sizes past the budget is checked (and timed) with
    halved tiles: splitting its regions would keep the same tiles and stay uncheckable."""
    from agentforge.agents.roles import Feedback
    task, ctx = rmsnorm
    plan = Plan([Region("row", [r for reg in partition(ctx.graph_own) for r in reg.nodes], {"rows": 8, "par": 16})])
    fb = Feedback(False, "uncheckable", "the candidate cannot be checked within the size budget")
    out = OfflineReflector().reflect(ctx, plan.to_dict(), Candidate("plan", plan=plan.to_dict()), fb, 1)
    assert not out.accept
    revised = Plan.from_dict(out.plan)
    assert [r.template for r in revised.regions] == ["row"]
    assert revised.regions[0].params == {"rows": 4, "par": 16}
