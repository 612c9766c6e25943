"""The loop with LLM roles against a scripted server on 127.0.0.1: a verified kernel triggers
improvement rounds (best-of-k, then refinement) while attempts and budget remain, a plateau
ends them, a spent budget stops them before a call, and a solve never returns a result
slower than the baseline it is measured against."""

from __future__ import annotations

import json

import pytest

from agentforge.agents.llm_roles import make_roles
from agentforge.loop import SolveConfig, solve, task_context
from agentforge.tasks import load_task
from agentforge.verify import VerifyConfig, evaluate
from llm_server import ScriptedServer, chat
from test_llm_roles import KEY, KEY_ENV, PLAN, RELU_KERNEL, SUITE, client_for

CFG = VerifyConfig(machine="sn40l", seeds=(0,), size_sets=1)

# correct but slow: one row per tile, no parallelism (0.23x of the baseline)
SLOW_KERNEL = RELU_KERNEL.replace("sizes R = 4", "sizes R = 1").replace("par=4", "par=1").replace("par=8", "par=1")


@pytest.fixture(scope="module")
def relu():
    task = load_task(SUITE / "relu.py")
    return task, task_context(task)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with ScriptedServer() as srv:
        yield srv


def _eval(task, ctx):
    return lambda c: evaluate(task, c, CFG, baseline_seconds=ctx.baseline_seconds)


def _user(req) -> str:
    return next(m["content"] for m in req.body["messages"] if m["role"] == "user")


def test_a_verified_kernel_triggers_improvement_rounds_until_a_plateau(server, relu):
    task, ctx = relu
    server.push(chat(json.dumps(PLAN)), chat(f"```asp\n{SLOW_KERNEL}```"),
                # best of 3: one faster kernel, the same slow one, and a reply without a kernel
                chat(f"```asp\n{RELU_KERNEL}```"), chat(f"```asp\n{SLOW_KERNEL}```"), chat("no idea"),
                # refining the best: no faster -> plateau
                chat(f"```asp\n{RELU_KERNEL}```"))
    planner, workers, reflector = make_roles(client_for(server))
    cfg = SolveConfig(max_attempts=8, min_speedup=0.2, best_of=3, min_gain=0.02)
    res = solve(task, planner, workers, reflector, cfg=cfg, evaluate_fn=_eval(task, ctx), ctx=ctx)
    assert res.verified and res.best.speedup == pytest.approx(1.0, rel=1e-6)
    assert res.best_candidate.source == RELU_KERNEL
    assert res.attempts == 3                                        # first kernel, best of 3, one refinement
    assert [h["attempt"] for h in res.history] == [0, 1, 1, 1, 2]
    assert any("improvement round 1: from 0.23x, best of 3 candidates" in n for n in res.notes)
    assert any("plateau, stopped" in n for n in res.notes)
    reqs = server.chat_requests
    assert len(reqs) == 6 and reflector.usage.calls == 0
    best_of = reqs[2:5]
    assert sorted(r.body["temperature"] for r in best_of) == [0.2, 0.5, 0.8]
    assert len({r.body["seed"] for r in best_of}) == 3
    for r in best_of + [reqs[5]]:
        text = _user(r)
        assert "## The best verified kernel so far (improve it)" in text and "Try first:" in text
        assert "busiest operators" in text and "the task's minimum (inputs and outputs once)" in text
    assert "ys = map(xs, fn=f, par=1)" in _user(reqs[2])            # the slow kernel is the base of round 1
    assert "ys = map(xs, fn=f, par=8)" in _user(reqs[5])            # the best one is the base of round 2


def test_a_budget_without_room_stops_improvement_and_the_result_is_never_below_the_baseline(server, relu):
    task, ctx = relu
    server.push(chat(json.dumps(PLAN)), chat(f"```asp\n{SLOW_KERNEL}```"))
    planner, workers, reflector = make_roles(client_for(server, max_calls=3))
    cfg = SolveConfig(max_attempts=8, min_speedup=0.2, best_of=3)
    res = solve(task, planner, workers, reflector, cfg=cfg, evaluate_fn=_eval(task, ctx), ctx=ctx)
    assert len(server.chat_requests) == 2                          # nothing sent that the budget cannot pay
    assert any("the call budget (3) has no room for 3 more" in n for n in res.notes)
    # the only verified kernel is slower than the op-by-op chain: the chain is the result
    assert res.verified and res.best.speedup == pytest.approx(1.0)
    assert res.best_candidate.kind == "plan" and res.best_candidate.author == "baseline"
    assert all(r["template"] == "single" for r in res.best_candidate.plan["regions"])
    assert any("slower than the op-by-op baseline" in n and "0.23x" in n for n in res.notes)


def test_offline_workers_get_no_improvement_round(relu):
    from agentforge.loop import offline_roles

    task, ctx = relu
    planner, workers, reflector = offline_roles(1)
    res = solve(task, planner, workers, reflector, cfg=SolveConfig(max_attempts=3), evaluate_fn=_eval(task, ctx),
                ctx=ctx)
    assert res.verified and res.attempts == 1
    assert not any("improvement" in n for n in res.notes)


def test_solve_cli_returns_the_baseline_chain_when_the_llm_kernel_is_slower(server, tmp_path, capsys, monkeypatch):
    from agentforge.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.chdir(tmp_path)                   # no project agentforge.toml

    server.push(chat(json.dumps(PLAN)), chat(f"```asp\n{SLOW_KERNEL}```"))
    rc = main(["solve", str(SUITE / "relu.py"), "--llm", "openai", "--model", "test-model", "--base-url", server.url,
               "--attempts", "1", "--json", "-o", str(tmp_path / "out")])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["verified"] and res["speedup"] == pytest.approx(1.0)
    assert res["candidate"]["author"] == "baseline" and res["candidate"]["kind"] == "plan"
    assert any("slower than the op-by-op baseline" in n for n in res["notes"])
    assert (tmp_path / "out" / "plan.json").exists() and list((tmp_path / "out" / "kernels").glob("*.asp"))
    assert not (tmp_path / "out" / "kernel.asp").exists()
