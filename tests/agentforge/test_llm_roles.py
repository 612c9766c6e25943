"""The LLM roles (agentforge.agents.llm_roles) against a scripted server on 127.0.0.1: plans,
candidates and reflections from scripted replies, feedback into the next prompt, the prompt
budget, the shared ledger, and record/replay of a whole session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import asp_lang
from agentforge.agents.llm_roles import LLMPlanner, LLMReflector, LLMWorker, make_roles
from agentforge.agents.roles import Candidate, Demo, Feedback, Planner, Reflector, TaskContext, Worker
from agentforge.capture import capture_at, signature
from agentforge.llm import LLMClient, LLMConfig, Ledger, RecordingClient, ReplayClient, ReplyError
from agentforge.llm.client import messages_tokens
from agentforge.agents.context import interface
from agentforge.agents.prompting import PROMPTS_ENV, PromptError, prompts_dir, render_messages
from agentforge.tasks import load_task
from agentforge.verify import VerifyConfig, evaluate
from llm_server import ScriptedServer, chat

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "evals" / "suite"
KEY_ENV = "AGENTFORGE_TEST_LLM_KEY"
KEY = "sk-test-SECRET-roles-0123456789"
CFG = VerifyConfig(machine="sn40l", seeds=(0, 1), size_sets=1)

RELU_KERNEL = """\
# relu over row tiles: one load, one map, one store
kernel relu(x: f32[BATCH, DIM]) -> (y: f32[BATCH, DIM]) {
  sizes R = 4
  fn f(t) = relu(t)
  xs = load(x, tile=[R, DIM], par=4)
  ys = map(xs, fn=f, par=8)
  store(y, ys, par=4)
}
"""

# uses the stream xs twice: the checker rejects it (AffineError), with file:line:col
BAD_KERNEL = """\
kernel relu(x: f32[BATCH, DIM]) -> (y: f32[BATCH, DIM]) {
  sizes R = 4
  fn f(t) = relu(t)
  xs = load(x, tile=[R, DIM])
  ys = map(xs, fn=f)
  zs = map(xs, fn=f)
  store(y, ys)
}
"""

PLAN = {"regions": [{"template": "row", "nodes": [0],
                     "params": {"rows": 4, "tm": None, "tn": None, "tk": None, "par": 8, "par_mem": 4,
                                "par_epi": None, "compute": None, "memory": None},
                     "why": "a single elementwise op"}],
        "strategy": "load whole rows [R, DIM], one map applying relu, store", "rewrites": [], "notes": ""}


def make_ctx(name: str) -> TaskContext:
    task = load_task(SUITE / f"{name}.py")
    own = capture_at(task, meta=True)
    small = [capture_at(task, s) for s in task.resolved_size_sets()]
    return TaskContext(task, own, small, signature(own), asp_lang.load_machine("sn40l"), 2.5e-5)


@pytest.fixture(scope="module")
def relu_ctx() -> TaskContext:
    return make_ctx("relu")


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with ScriptedServer() as srv:
        yield srv


def client_for(srv: ScriptedServer, ledger: Ledger | None = None, **kw) -> LLMClient:
    cfg = LLMConfig(base_url=srv.url, model="test-model", api_key_env=KEY_ENV, timeout_s=5.0, max_retries=1,
                    backoff_base_s=0.0, backoff_cap_s=0.0, price_per_mtok_in=1.0, price_per_mtok_out=4.0, **kw)
    return LLMClient(cfg, ledger)


def user_text(req) -> str:
    return next(m["content"] for m in req.body["messages"] if m["role"] == "user")


def system_text(req) -> str:
    return next(m["content"] for m in req.body["messages"] if m["role"] == "system")


class FixedPlanner:
    usage = None

    def plan(self, ctx, demos):
        return {"regions": [{"template": "single", "nodes": [0], "params": {}}], "notes": "offline"}


# ------------------------------------------------------------------ protocol and the scripted kernel

def test_roles_satisfy_the_protocols():
    from agentforge.agents import llm_roles

    for cls, proto in ((llm_roles.LLMPlanner, Planner), (llm_roles.LLMWorker, Worker),
                       (llm_roles.LLMReflector, Reflector)):
        names = [n for n in vars(proto) if not n.startswith("_")]
        assert all(hasattr(cls, n) or n == "usage" for n in names), cls


def test_the_scripted_kernel_is_correct():
    ev = evaluate(SUITE / "relu.py", {"kind": "kernel", "source": RELU_KERNEL, "filename": "relu.asp"}, CFG)
    assert ev.verified, ev.reason


# ------------------------------------------------------------------ planner

def test_planner_returns_a_checked_plan(server, relu_ctx):
    server.push(chat(json.dumps(PLAN), prompt_tokens=3000, completion_tokens=200, cached_tokens=1024))
    planner = LLMPlanner(client_for(server))
    plan = planner.plan(relu_ctx, [])
    assert plan["regions"] == [{"template": "row", "nodes": [0], "params": {"rows": 4, "par": 8, "par_mem": 4},
                                "why": "a single elementwise op"}]
    assert plan["author"] == "openai:test-model" and plan["strategy"].startswith("load whole rows")
    assert planner.usage.calls == 1 and planner.usage.prompt_tokens == 3000 and planner.usage.cached_tokens == 1024
    assert planner.usage.cost == pytest.approx((3000 * 1.0 + 200 * 4.0) / 1e6)
    req = server.chat_requests[0]
    assert req.body["response_format"]["type"] == "json_schema"
    text = user_text(req)
    assert "[0] relu = aten.relu.default(x) -> f32[BATCH, DIM]" in text
    assert "torch.relu(x)" in text and "25.00 us" in text


def test_planner_repairs_then_falls_back(server, relu_ctx):
    out_of_range = dict(PLAN, regions=[dict(PLAN["regions"][0], nodes=[3])])
    server.push(chat("{not json"), chat(json.dumps(out_of_range)))
    plan = LLMPlanner(client_for(server), fallback=FixedPlanner()).plan(relu_ctx, [])
    assert plan["regions"][0]["template"] == "single"
    assert "unusable" in plan["notes"] and "node 3 does not exist" in plan["notes"]
    server.push(chat("nothing useful"), chat("still nothing"))
    with pytest.raises(ReplyError):
        LLMPlanner(client_for(server)).plan(relu_ctx, [])


# ------------------------------------------------------------------ worker

def test_worker_writes_a_kernel_that_verifies(server, relu_ctx):
    server.push(chat(f"Here is the kernel.\n\n```asp\n{RELU_KERNEL}```\n\nIt streams whole rows."))
    worker = LLMWorker(client_for(server))
    cand = worker.write(relu_ctx, PLAN, None, [], 1)
    assert cand == Candidate(kind="kernel", source=RELU_KERNEL, author="openai:test-model", notes="")
    assert worker.usage.calls == 1
    ev = evaluate(relu_ctx.task, cand.for_evaluation(), CFG)
    assert ev.verified, ev.reason
    req = server.chat_requests[0]
    assert "response_format" not in req.body
    assert "# ASP language reference" in system_text(req)            # the reference travels in the system message
    assert "kernel relu(x: f32[BATCH, DIM]) -> (y: f32[BATCH, DIM])" in user_text(req)


def test_worker_reply_without_kernel_is_fed_back(server, relu_ctx):
    server.push(chat("I am not able to write ASP, sorry."), chat(f"```asp\n{RELU_KERNEL}```"))
    worker = LLMWorker(client_for(server))
    cand = worker.write(relu_ctx, PLAN, None, [], 1)
    assert cand.kind == "kernel" and cand.source == "I am not able to write ASP, sorry."
    assert cand.notes.startswith("parse error: no ASP kernel")
    ev = evaluate(relu_ctx.task, cand.for_evaluation(), CFG)
    assert not ev.verified and ev.reason_code == "compile"
    fb = Feedback.from_evaluation(ev)
    again = worker.write(relu_ctx, PLAN, fb, [], 2)
    assert again.source == RELU_KERNEL
    text = user_text(server.chat_requests[1])
    assert "Your previous reply could not be used: no ASP kernel in the reply" in text
    assert "REJECTED (compile" in text and "attempt 2" in text


def test_worker_sees_the_rendered_error_and_its_previous_kernel(server, relu_ctx):
    server.push(chat(f"```asp\n{BAD_KERNEL}```"), chat(f"```asp\n{RELU_KERNEL}```"))
    worker = LLMWorker(client_for(server))
    cand = worker.write(relu_ctx, PLAN, None, [], 1)
    ev = evaluate(relu_ctx.task, cand.for_evaluation(), CFG)
    assert ev.reason_code == "compile"
    fb = Feedback.from_evaluation(ev)
    assert "candidate.asp:6:12" in fb.reason
    worker.write(relu_ctx, PLAN, fb, [], 2)
    text = user_text(server.chat_requests[1])
    assert "## Your previous attempt" in text
    assert "6 |   zs = map(xs, fn=f)" in text                         # numbered, so line:col can be found
    # file:line:col, then the source line with a caret under the column
    assert "ERROR[AffineError] candidate.asp:6:12" in text
    assert "  zs = map(xs, fn=f)\n           ^" in text


def test_worker_prompt_fits_the_token_budget(server, relu_ctx):
    client = client_for(server)
    full = LLMWorker(client, max_prompt_tokens=40000)
    msgs = full.messages(relu_ctx, PLAN, None, [], 1)
    assert full.omitted == [] and messages_tokens(msgs) <= 40000
    demo = Demo("softmax", "k", "kernel", (ROOT / "docs/examples/softmax_online.asp").read_text(), None, 1.9,
                level="hard")
    small = LLMWorker(client, max_prompt_tokens=8000)
    msgs = small.messages(relu_ctx, PLAN, None, [demo] * 3, 1)
    assert small.omitted and messages_tokens(msgs) <= 8000
    sys_text = msgs[0]["content"]
    assert "## 10. Checklist of common mistakes" in sys_text and "Reference trimmed" in sys_text
    # with room, the reference depends only on the task's class: a stable, cacheable system message
    other = full.messages(make_ctx("sigmoid"), PLAN, None, [], 1)
    assert other[0]["content"] == full.messages(relu_ctx, PLAN, None, [], 1)[0]["content"]
    softmax = full.messages(make_ctx("softmax"), PLAN, None, [], 1)[0]["content"]
    assert "### softmax_online.asp" in softmax and "### softmax_online.asp" not in other[0]["content"]


def test_interface_names_dimensions_after_task_sizes():
    ctx = make_ctx("linear_bias")
    itf = interface(ctx)
    assert itf["header"] == ("kernel linear_bias_kernel(x: f32[TOKENS, IN_FEATURES], linear_weight: "
                             "f32[OUT_FEATURES, IN_FEATURES], linear_bias: f32[OUT_FEATURES]) -> "
                             "(y: f32[TOKENS, OUT_FEATURES])")
    assert [p["origin"].split()[0] for p in itf["params"]] == ["input", "weight", "weight"]
    assert itf["params"][0]["small_shape"] == [32, 64]


# ------------------------------------------------------------------ reflector

def test_reflector_verdicts_and_notes_reach_the_worker(server, relu_ctx):
    revised = dict(PLAN, notes="use par=16")
    server.push(chat(json.dumps({"accept": False, "plan": revised, "note": "raise the map's par to 16"})),
                chat(f"```asp\n{RELU_KERNEL}```"),
                chat(json.dumps({"accept": True, "plan": None, "note": "good enough"})))
    client = client_for(server)
    planner, (worker,), reflector = make_roles(client)
    fb = Feedback(True, None, None, speedup=1.0, roofline_fraction=0.9, bottleneck="hbm")
    cand = Candidate("kernel", RELU_KERNEL, "openai:test-model")
    r = reflector.reflect(relu_ctx, PLAN, cand, fb, 1)
    assert not r.accept and r.plan["notes"] == "use par=16" and r.note == "raise the map's par to 16"
    assert "VERIFIED: speedup 1.00x" in user_text(server.chat_requests[0])
    worker.write(relu_ctx, r.plan, fb, [], 2)
    assert "raise the map's par to 16" in user_text(server.chat_requests[1])
    r2 = reflector.reflect(relu_ctx, r.plan, cand, fb, 2)
    assert r2.accept and r2.plan is None
    assert reflector.usage.calls == 2 and worker.usage.calls == 1
    # one ledger for all roles
    assert client.ledger.calls == 3
    assert set(client.ledger.summary()["by_role"]) == {"reflector", "worker"}


def test_unusable_reflection_keeps_going(server, relu_ctx):
    server.push(chat("maybe?"), chat('{"accept": "yes"}'))
    r = LLMReflector(client_for(server)).reflect(relu_ctx, PLAN, Candidate("kernel", "x"),
                                                 Feedback(False, "compile", "bad"), 1)
    assert r.accept is False and r.plan is None and "unusable" in r.note


# ------------------------------------------------------------------ record and replay a session

def test_recorded_session_replays_identically(server, relu_ctx, tmp_path):
    server.push(chat(json.dumps(PLAN)), chat(f"```asp\n{RELU_KERNEL}```"),
                chat(json.dumps({"accept": True, "plan": None, "note": "done"})))
    path = tmp_path / "session.jsonl"
    fb = Feedback(True, None, None, speedup=1.0, roofline_fraction=0.9, bottleneck="hbm")

    def session(client):
        planner, (worker,), reflector = make_roles(client, max_prompt_tokens=20000)
        plan = planner.plan(relu_ctx, [])
        cand = worker.write(relu_ctx, plan, None, [], 1)
        refl = reflector.reflect(relu_ctx, plan, cand, fb, 1)
        return plan, cand, refl

    rec_plan, rec_cand, rec_refl = session(RecordingClient(client_for(server), path))
    rep_plan, rep_cand, rep_refl = session(ReplayClient(path))
    assert {k: v for k, v in rep_plan.items() if k != "author"} == {k: v for k, v in rec_plan.items() if k != "author"}
    assert rep_cand.source == rec_cand.source == RELU_KERNEL and rep_cand.author == "replay:session.jsonl"
    assert rep_refl == rec_refl
    assert KEY not in path.read_text()


def test_llm_roles_from_a_replay_config(server, relu_ctx, tmp_path):
    from agentforge.agents.llm_roles import llm_roles
    from agentforge.llm import PreflightError

    path = tmp_path / "t.jsonl"
    server.push(chat(f"```asp\n{RELU_KERNEL}```"))
    rec_cfg = LLMConfig(base_url=server.url, model="test-model", api_key_env=KEY_ENV, record_path=str(path),
                        max_prompt_tokens=20000)
    _, (w,), _ = llm_roles(rec_cfg)                                   # preflight: GET /models answers
    w.write(relu_ctx, PLAN, None, [], 1)
    cfg = LLMConfig(provider="replay", replay_path=str(path), max_prompt_tokens=20000)
    planner, workers, reflector = llm_roles(cfg, workers=2)
    assert len(workers) == 2 and workers[0].notebook is workers[1].notebook is reflector.notebook
    assert workers[0].write(relu_ctx, PLAN, None, [], 1).source == RELU_KERNEL
    with pytest.raises(PreflightError):
        llm_roles(cfg.replace(replay_path=str(tmp_path / "missing.jsonl")))


# ------------------------------------------------------------------ templates

def test_templates_found_in_repo_and_via_env(monkeypatch, tmp_path, relu_ctx):
    monkeypatch.delenv(PROMPTS_ENV, raising=False)
    assert prompts_dir() == ROOT / "prompts"
    custom = tmp_path / "prompts"
    shutil.copytree(ROOT / "prompts", custom)
    (custom / "planner.j2").write_text("{% block system %}S{% endblock %}{% block user %}U {{ task.name }}"
                                       "{% endblock %}")
    monkeypatch.setenv(PROMPTS_ENV, str(custom))
    assert prompts_dir() == custom
    assert render_messages("planner", task={"name": "relu"}) == [{"role": "system", "content": "S\n"},
                                                                 {"role": "user", "content": "U relu\n"}]
    monkeypatch.setenv(PROMPTS_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(PromptError, match=PROMPTS_ENV):
        prompts_dir()
