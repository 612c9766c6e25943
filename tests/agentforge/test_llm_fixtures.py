"""The scripted replies of benchmarks/bench_llm_scripted.py are well formed: every kernel they
name exists and is written for its task's interface, and every plan is one the planner accepts
(or, where the scenario scripts a returned plan, one it sends back)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agentforge.agents.llm_roles import plan_realisation_problems
from agentforge.agents.context import interface
from agentforge.agents.schemas import plan_problems
from test_llm_roles import make_ctx

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "llm_scripted"
SCENARIOS = json.loads((FIXTURES / "scenarios.json").read_text())["scenarios"]


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s["task"] for s in SCENARIOS])
def test_scripted_replies_fit_their_task(sc):
    ctx = make_ctx(sc["task"])
    header = interface(ctx)["header"]
    params = re.search(r"\((.*)\) ->", header).group(1)
    for r in sc["replies"]:
        if r["role"] == "worker":
            src = (FIXTURES / r["kernel"]).read_text()
            assert f"kernel {sc['task']}(" in src and params in src, r["kernel"]
    plans = [r["json"] for r in sc["replies"] if r["role"] == "planner"]
    for p in plans[:-1]:                          # a plan the planner is scripted to get back
        assert plan_realisation_problems(p, ctx)
    assert plan_problems(plans[-1], 10) == [] and plan_realisation_problems(plans[-1], ctx) == []
