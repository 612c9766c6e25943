"""The campaign's console: live counts that match the run database's totals (tokens and cost as
each LLM call returns, not twice at the task's end; a budget-stopped task is pending, not
failed; a resume goes on from what the run already did), JSON lines for scripts, and task text
shown literally, never as rich markup."""

from __future__ import annotations

import io
import json

import pytest

from agentforge.campaign.console import CampaignView

START = {"event": "campaign_start", "run": "r1", "run_dir": "/tmp/r", "resume": False, "tasks": 3, "todo": 3,
         "done": 0, "workers": 1, "executor": "local", "llm": "openai", "machine": "sn40l"}


def call(task, tokens, cost):
    return {"event": "llm_call", "task": task, "call": {"prompt_tokens": tokens - 10, "completion_tokens": 10,
                                                        "cost": cost}}


def feed(view, *events):
    for e in events:
        view(e)
    return view


def test_tokens_and_cost_count_as_calls_return_and_not_again_at_the_task_end():
    v = feed(CampaignView("quiet", io.StringIO()), START, {"event": "task_start", "task": "a"},
             call("a", 100, 0.01), call("a", 50, 0.005))
    assert (v.tokens, round(v.cost, 6)) == (150, 0.015)          # live, before the task ends
    feed(v, {"event": "attempt", "task": "a", "attempt": 0},
         {"event": "task_end", "task": "a", "verified": True, "tokens": 170, "cost": 0.02, "seconds": 1.0})
    assert (v.tokens, round(v.cost, 6)) == (170, 0.02)           # the end adds only what was not streamed
    assert (v.done, v.verified, v.failed, v.attempts) == (1, 1, 0, 1)


def test_a_task_stopped_by_a_budget_is_pending_not_failed():
    v = feed(CampaignView("quiet", io.StringIO()), START, {"event": "task_start", "task": "a"},
             {"event": "task_end", "task": "a", "verified": False, "stopped": True, "tokens": 0, "cost": 0.0})
    assert (v.done, v.failed) == (0, 0)


def test_a_resumed_campaign_goes_on_from_what_the_run_already_did():
    resumed = dict(START, resume=True, todo=1, done=2, verified=1, failed=1, attempts=7, tokens=900, cost=0.5)
    v = feed(CampaignView("quiet", io.StringIO()), resumed)
    assert (v.done, v.verified, v.failed, v.attempts, v.tokens, v.cost) == (2, 1, 1, 7, 900, 0.5)


def test_jsonl_mode_writes_one_json_object_per_event():
    out = io.StringIO()
    feed(CampaignView("jsonl", out), START, {"event": "task_start", "task": "a"})
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["campaign_start", "task_start"]


@pytest.mark.parametrize("terminal", [True, False])     # the live view, and plain lines for a pipe
def test_task_names_and_reasons_are_shown_literally(terminal):
    out = io.StringIO()
    feed(CampaignView("rich", out, force_terminal=terminal), START, {"event": "task_start", "task": "[bold]x[/]"},
         {"event": "task_end", "task": "[bold]x[/]", "verified": False, "reason": "tile [4, 64] too big"},
         {"event": "campaign_end"})
    text = out.getvalue()
    assert "[bold]x[/]" in text and "tile [4, 64] too big" in text


def test_the_summary_puts_the_roofline_fraction_first_and_the_speedup_beside_it():
    """The roofline fraction is measured against the chip; the speedup against the op-by-op baseline
    (only as honest as that yardstick): the summary leads with the first (issue 17)."""
    from pathlib import Path

    from agentforge.campaign.runner import CampaignResult

    tasks = [{"name": n, "status": "verified", "attempts": 1, "speedup": sp, "roofline_fraction": rf,
              "plan_source": "author"} for n, sp, rf in (("a", 2.0, 0.9), ("b", 1.5, 0.5), ("c", 3.0, 0.7))]
    totals = {"verified": 3, "tasks": 3, "fast_1": 1.0, "fast_2": 1 / 3, "llm_calls": 0, "tokens": 0, "cost": 0.0,
              "plan_cache_hit_rate": 0.0}
    out = io.StringIO()
    view = CampaignView("plain", out)
    view.summary(CampaignResult(Path("/tmp/r"), "r1", "finished", None, totals, tasks, 1.0))
    text = out.getvalue()
    header = next(line for line in text.splitlines() if "task" in line and "speedup" in line)
    assert header.index("roofline") < header.index("speedup")
    line = next(line for line in text.splitlines() if line.startswith("verified 3/3"))
    assert "roofline 70" in line and "(median of 3)" in line and line.index("roofline") < line.index("speedup")
