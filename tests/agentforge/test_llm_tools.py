"""Tool-style calls: a worker may check and profile a kernel and read reference sections through
the openai SDK's tools API before it answers; an endpoint that refuses tools gets plain text;
a recorded session with tool calls replays identically."""

from __future__ import annotations

import json

import pytest

from agentforge.agents.llm_roles import TOOLS, LLMWorker
from agentforge.llm import RecordingClient, ReplayClient
from llm_server import ScriptedServer, chat, status, tool_calls
from test_llm_roles import BAD_KERNEL, KEY, KEY_ENV, PLAN, RELU_KERNEL, client_for, make_ctx


@pytest.fixture(scope="module")
def relu_ctx():
    return make_ctx("relu")


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with ScriptedServer() as srv:
        yield srv


def _script(server):
    server.push(tool_calls(("check_kernel", {"source": BAD_KERNEL})),
                tool_calls(("profile_kernel", {"source": RELU_KERNEL}), ("reference_section", {"number": "4.3"})),
                chat(f"Checked and timed:\n```asp\n{RELU_KERNEL}```"))


def test_a_worker_checks_and_profiles_through_tools_then_answers(server, relu_ctx):
    _script(server)
    worker = LLMWorker(client_for(server), max_prompt_tokens=40000, tools=True)
    cand = worker.write(relu_ctx, PLAN, None, [], 1)
    assert cand.source == RELU_KERNEL and worker.usage.calls == 3
    reqs = server.chat_requests
    assert [t["function"]["name"] for t in reqs[0].body["tools"]] == [t["function"]["name"] for t in TOOLS]
    results = {m["tool_call_id"]: m["content"] for m in reqs[2].body["messages"] if m["role"] == "tool"}
    checked = next(m["content"] for m in reqs[1].body["messages"] if m["role"] == "tool")
    assert "AffineError" in checked and "candidate.asp:6:12" in checked
    assert results["call_0"].startswith("TIMED (correctness not checked): speedup")
    assert "busiest operators" in results["call_0"]
    assert results["call_1"].startswith("### 4.3 On-chip buffers")
    assert reqs[2].body["messages"][-3]["tool_calls"][1]["function"]["name"] == "reference_section"
    assert [t["name"] for t in worker.tool_log] == ["check_kernel", "profile_kernel", "reference_section"]


def test_a_bad_tool_call_is_answered_not_raised(relu_ctx):
    worker = LLMWorker(client=type("C", (), {"author": "t", "model": "t"})(), max_prompt_tokens=40000, tools=True)
    assert worker.run_tool(relu_ctx, "check_kernel", "{not json").startswith("error: the arguments are not JSON")
    assert worker.run_tool(relu_ctx, "rm_rf", "{}").startswith("error: no tool 'rm_rf'")
    assert "does not fit the task's interface" in worker.run_tool(
        relu_ctx, "check_kernel", json.dumps({"source": RELU_KERNEL.replace("f32[BATCH, DIM]) ->", "f32[BATCH]) ->")}))
    assert worker.run_tool(relu_ctx, "check_kernel", json.dumps({"source": RELU_KERNEL})).startswith("OK")


def test_an_endpoint_without_tools_gets_plain_text(server, relu_ctx):
    server.push(status(400, "tools are not supported by this model"), chat(f"```asp\n{RELU_KERNEL}```"))
    client = client_for(server)
    worker = LLMWorker(client, max_prompt_tokens=40000, tools=True)
    cand = worker.write(relu_ctx, PLAN, None, [], 1)
    assert cand.source == RELU_KERNEL and worker.tools is False
    assert "tools" not in server.chat_requests[1].body
    assert any("refused tool calls" in n for n in client.notes)


def test_a_session_with_tool_calls_replays_identically(server, relu_ctx, tmp_path):
    _script(server)
    path = tmp_path / "tools.jsonl"
    live = LLMWorker(RecordingClient(client_for(server), path), max_prompt_tokens=40000, tools=True)
    a = live.write(relu_ctx, PLAN, None, [], 1)
    replayed = LLMWorker(ReplayClient(path), max_prompt_tokens=40000, tools=True)
    b = replayed.write(relu_ctx, PLAN, None, [], 1)
    assert a.source == b.source == RELU_KERNEL
    assert replayed.tool_log == live.tool_log
    entries = [json.loads(x) for x in path.read_text().splitlines()]
    assert [bool(e["reply"]["tool_calls"]) for e in entries] == [True, True, False]
    assert all("tools" in e["request"] for e in entries[:2])
