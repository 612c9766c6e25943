"""Plans are validated before workers start: the planner's prompt carries the template catalog
(each template's parameters, read from agentforge.author), and a plan that leaves a computing
node uncovered or cannot be realised goes back to the planner once, with the reason, which is
recorded."""

from __future__ import annotations

import json

import pytest

from agentforge.agents.llm_roles import LLMPlanner, template_catalog
from agentforge.author import GRIDS, TEMPLATES
from llm_server import ScriptedServer, chat
from test_llm_roles import KEY, KEY_ENV, FixedPlanner, client_for, make_ctx


def region(template, nodes, **params):
    keys = ("rows", "tm", "tn", "tk", "par", "par_mem", "par_epi", "compute", "memory")
    return {"template": template, "nodes": nodes, "params": {k: params.get(k) for k in keys}, "why": ""}


def plan(*regions):
    return {"regions": list(regions), "strategy": "", "rewrites": [], "notes": ""}


@pytest.fixture(scope="module")
def silu_mul():
    return make_ctx("silu_mul")          # [0] sigmoid, [1] mul, [2] mul_1


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with ScriptedServer() as srv:
        yield srv


def test_the_planner_prompt_carries_the_template_catalog(server, silu_mul):
    cat = {t["name"]: t for t in template_catalog()}
    assert list(cat) == list(TEMPLATES)
    assert [p["tried"] for p in cat["row"]["params"]] == [list(GRIDS["row"][k]) for k in ("rows", "par", "par_mem")]
    system = LLMPlanner(client_for(server)).messages(silu_mul, [])[0]["content"]
    for t in TEMPLATES:
        assert f'- "{t}": ' in system
    assert "rows (row template: rows per tile: 1, 4, 16, 64)" in system
    assert "Tuned by the author only: par_buf, kv_buf" in system


def test_a_plan_leaving_a_node_uncovered_goes_back_with_the_reason(server, silu_mul):
    partial = plan(region("row", [0, 1]))
    whole = plan(region("row", [0, 1, 2], rows=4))
    server.push(chat(json.dumps(partial)), chat(json.dumps(whole)))
    planner = LLMPlanner(client_for(server), fallback=FixedPlanner())
    got = planner.plan(silu_mul, [])
    assert got["regions"][0]["nodes"] == [0, 1, 2]
    sent_back = server.chat_requests[1].body["messages"][-1]["content"]
    assert "node(s) [2] mul_1 are in no region" in sent_back
    assert planner.returned == [{"task": "silu_mul", "reason": planner.returned[0]["reason"]}]
    assert "[2] mul_1 are in no region" in planner.returned[0]["reason"]
    assert "a first plan was returned to the planner" in got["notes"]


def test_an_unrealisable_plan_goes_back_then_falls_back_with_the_reason(server, silu_mul):
    wrong = plan(region("attention", [0, 1, 2]))
    server.push(chat(json.dumps(wrong)), chat(json.dumps(wrong)))
    planner = LLMPlanner(client_for(server), fallback=FixedPlanner())
    got = planner.plan(silu_mul, [])
    assert len(server.chat_requests) == 2                            # one round back, no more
    assert "cannot be realised at the task's own sizes" in server.chat_requests[1].body["messages"][-1]["content"]
    assert got["notes"].startswith("offline") and "cannot be realised" in got["notes"]   # the fallback, with why
    assert len(planner.returned) == 2
