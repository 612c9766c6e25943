"""The compact ASP reference (grammar, operator table, builtins, checklist, worked kernels for the
task's class, an index of the rest with sections on request) and the feedback a model gets
(the failing check with its first mismatching index; for a verified kernel where the time goes)."""

from __future__ import annotations

import pytest

from agentforge.agents.llm_roles import LLMWorker
from agentforge.agents.feedback import render_feedback
from agentforge.agents.roles import Feedback
from agentforge.agents.prompting import (compact_reference, load_asp_reference, reference_requests,
                                      reference_sections, task_classes)
from agentforge.verify import VerifyConfig, evaluate
from llm_server import ScriptedServer, chat
from test_llm_roles import KEY, KEY_ENV, PLAN, RELU_KERNEL, client_for, make_ctx

CFG = VerifyConfig(machine="sn40l", seeds=(0,), size_sets=1)


@pytest.fixture(scope="module")
def relu_ctx():
    return make_ctx("relu")


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with ScriptedServer() as srv:
        yield srv


def test_the_compact_reference_holds_the_grammar_the_operators_and_worked_kernels_for_the_class():
    full = load_asp_reference()
    text, examples = compact_reference(full, task_classes({"mm", "add"}))
    assert examples == ["gemm.asp", "bmm.asp", "vector_add.asp"]
    for part in ("### 2.3 Grammar (EBNF)", "| [`load`](#load) |", "| [`accum`](#accum) |", "### 5.4 Builtins",
                 "## 10. Checklist of common mistakes", "### 9.3 Tiled matrix multiplication", "### gemm.asp",
                 "## 12. More reference on request", "- 4.3 On-chip buffers", "REFERENCE: 4.3"):
        assert part in text, part
    assert "#### `bufferize`" not in text                       # the operator's full entry is on request
    assert len(text) < len(full) / 2.5
    attention, ex = compact_reference(full, task_classes({"bmm", "softmax", "mul"}))
    assert ex[0] == "flash_attention.asp" and "### 9.5 Flash attention" in attention


def test_reference_requests_are_parsed_and_served():
    assert reference_requests("text\nREFERENCE: 4.3, section 6.2\nreference: 4.3; 9") == ["4.3", "6.2", "9"]
    text, missing = reference_sections(load_asp_reference(), ["4.3", "13.1"])
    assert text.startswith("### 4.3 On-chip buffers") and "#### `bufferize`" in text and missing == ["13.1"]


def test_a_reply_asking_for_reference_gets_it_at_once_then_writes(server, relu_ctx):
    server.push(chat("Before writing I need the buffer operators.\nREFERENCE: 4.3"),
                chat(f"```asp\n{RELU_KERNEL}```"),
                chat(f"REFERENCE: 6.2\n```asp\n{RELU_KERNEL}```"), chat(f"```asp\n{RELU_KERNEL}```"))
    worker = LLMWorker(client_for(server), max_prompt_tokens=40000)
    cand = worker.write(relu_ctx, PLAN, None, [], 1)
    assert cand.source == RELU_KERNEL and "asked for reference 4.3" in cand.notes
    follow = server.chat_requests[1].body["messages"]
    assert follow[-2] == {"role": "assistant", "content": "Before writing I need the buffer operators.\nREFERENCE: 4.3"}
    assert "#### `bufferize`" in follow[-1]["content"]
    # a request that comes with a kernel is answered in the next attempt's prompt
    fb = Feedback.from_evaluation(evaluate(relu_ctx.task, cand.for_evaluation(), CFG))
    worker.write(relu_ctx, PLAN, fb, [], 2)
    worker.write(relu_ctx, PLAN, fb, [], 3)
    user = server.chat_requests[3].body["messages"][1]["content"]
    assert "## Reference sections you asked for" in user and "### 6.2 Busy cycles per operator" in user
    assert worker.requested == ["4.3", "6.2"]


def test_a_mismatch_names_the_check_the_first_bad_index_and_the_sizes(relu_ctx):
    wrong = RELU_KERNEL.replace("fn f(t) = relu(t)", "fn f(t) = abs(t)")
    ev = evaluate(relu_ctx.task, {"kind": "kernel", "source": wrong, "filename": "candidate.asp"}, CFG)
    text = render_feedback(Feedback.from_evaluation(ev), wrong, relu_ctx)
    assert text.startswith("REJECTED (mismatch: values outside the tolerance)")
    assert "the first at index [" in text and "values outside the tolerance" in text
    assert "[sizes {'BATCH': " in text and "seed 0, normal inputs]" in text


def test_a_verified_kernel_is_told_where_its_time_goes(relu_ctx):
    ev = evaluate(relu_ctx.task, {"kind": "kernel", "source": RELU_KERNEL, "filename": "candidate.asp"}, CFG,
                  baseline_seconds=relu_ctx.baseline_seconds)
    assert ev.profile["ops"] and ev.profile["section_cycles"]
    text = render_feedback(Feedback.from_evaluation(ev), RELU_KERNEL, relu_ctx)
    assert text.startswith("VERIFIED: speedup")
    assert f"the task's minimum (inputs and outputs once) is {relu_ctx.signature.io_bytes / 1e6:,.2f} MB" in text
    assert "-bound): this kernel is at" in text and "of HBM peak bandwidth" in text
    assert "PCUs (busy" in text and "of 1040 PCUs" in text and "sections: 1 (" in text
    assert "busiest operators (busy cycles, what bounds each):" in text
    assert "line   6 map" in text and "line   5 load" in text and "line   7 store" in text
