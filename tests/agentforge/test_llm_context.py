"""What the LLM prompts say about a task (agentforge.agents.context): every graph node listed with
its shape, every dimension named by a task size (equal sizes told apart, derived sizes named),
dtype changes explained, the machine's constants read from its description, and a baseline
line that always means something."""

from __future__ import annotations

import dataclasses
import re

import pytest

import asp_lang
from agentforge.agents.llm_roles import LLMPlanner, LLMWorker
from agentforge.agents.roles import TaskContext
from agentforge.capture import capture_at
from agentforge.capture import signature
from agentforge.agents.context import context_vars, interface, machine_constants, op_graph
from agentforge.tasks import load_task
from test_llm_roles import PLAN, make_ctx


class NoClient:
    """Roles only render here; nothing is sent."""
    author = "test"
    model = "test"


def _listed(lines: list[str]) -> set[str]:
    out = set()
    for line in lines:
        m = re.match(r"(?:input|weight) (\w+):", line) or re.match(r"\[\d+\] (\w+) =", line)
        if m:
            out.add(m.group(1))
    return out


@pytest.mark.parametrize("name", ["gqa_causal_attention", "moe_router_topk"])
def test_the_op_graph_lists_every_node_it_refers_to(name):
    ctx = make_ctx(name)
    lines = op_graph(ctx.graph_own, ctx)
    listed = _listed(lines)
    values = {n.name for n in ctx.graph_own.nodes} | {s.name for s in ctx.graph_own.inputs + ctx.graph_own.params}
    for line in lines:
        m = re.match(r"\[\d+\] \w+ = [\w.]+\((.*)\) -> (.+)$", line)
        if m:
            assert re.search(r"(f32|i64|bool|bf16)\[", m.group(2)), line        # each node has its dtype/shape
            for tok in re.findall(r"[A-Za-z_]\w*", m.group(1)):
                assert tok not in values or tok in listed, f"{tok} is referred to but not listed: {line}"
    assert "clone" not in "\n".join(lines)
    # every input is listed with its shape, and the outputs are named
    assert all(f"input {s.name}: " in "\n".join(lines) for s in ctx.graph_own.inputs)
    assert lines[-1].startswith("outputs: ") or lines[-2].startswith("outputs: ")


def test_gqa_dimensions_are_named_and_the_group_is_derived():
    ctx = make_ctx("gqa_causal_attention")
    itf = interface(ctx)
    assert itf["header"] == ("kernel gqa_causal_attention(q: f32[BATCH, Q_HEADS, SEQ, HEAD_DIM], "
                             "k: f32[BATCH, KV_HEADS, SEQ, HEAD_DIM], v: f32[BATCH, KV_HEADS, SEQ, HEAD_DIM]) -> "
                             "(y: f32[BATCH, Q_HEADS, SEQ, HEAD_DIM])")
    v = context_vars(ctx)
    text = "\n".join(v["ops"])
    assert "[BATCH, KV_HEADS, Q_HEADS / KV_HEADS, SEQ, HEAD_DIM]" in text       # the expand's group dimension
    assert "[BATCH * Q_HEADS, SEQ, SEQ]" in text                                 # flattened for bmm
    assert any(n.startswith("Q_HEADS / KV_HEADS = 4") and "group" in n for n in v["dim_notes"])
    assert not re.search(r"\bD\d+\b", text + itf["header"])                      # nothing left unnamed


def test_equal_sizes_get_distinct_names():
    # M == N at every size the suite tests bmm at: a probe capture tells them apart
    ctx = make_ctx("bmm")
    assert all(s["M"] == s["N"] for s in [ctx.task.sizes, *ctx.task.resolved_size_sets()])
    assert interface(ctx)["header"] == "kernel bmm(a: f32[BATCH, M, K], b: f32[BATCH, K, N]) -> (y: f32[BATCH, M, N])"


def test_int64_becomes_int32_and_the_prompt_says_why():
    ctx = make_ctx("moe_router_topk")
    itf = interface(ctx)
    assert itf["results"][1]["decl"] == "y1: i32[TOKENS, 2]" and itf["results"][1]["task_dtype"] == "i64"
    msgs = LLMWorker(NoClient(), max_prompt_tokens=40000).messages(ctx, PLAN, None, [], 1)
    user = msgs[1]["content"]
    assert "`y1` is i64 in PyTorch; ASP has no 64-bit integers" in user
    assert "outputs: topk[0], topk[1]" in user                                  # a multi-output node's results


def test_the_prompt_carries_the_machine_constants_read_from_the_machine():
    base = asp_lang.load_machine("sn40l")
    odd = dataclasses.replace(base, clock_ghz=1.3, pcu=dataclasses.replace(base.pcu, lanes=48),
                              hbm=dataclasses.replace(base.hbm, latency_ns=333, bandwidth_gbs=2100),
                              network=dataclasses.replace(base.network, fifo_depth=7))
    ctx = dataclasses.replace(make_ctx("relu"), machine=odd)
    for role in ("worker", "planner"):
        if role == "worker":
            text = LLMWorker(NoClient(), max_prompt_tokens=40000).messages(ctx, PLAN, None, [], 1)[1]["content"]
        else:
            text = LLMPlanner(NoClient()).messages(ctx, [])[1]["content"]
        for want in ("clock: 1.3 GHz", "SIMD lanes per PCU stage: 48", "HBM latency, ns: 333",
                     "HBM bandwidth, GB/s: 2100", "FIFO depth of each stream edge, elements: 7",
                     "PCUs (compute units; each operator copy gets its own): 1040",
                     f"SRAM total {odd.sram_bytes / 2**20:.0f} MiB",
                     f"matmul {odd.peak_tflops('bf16'):.1f} TFLOPS bf16/f16, {odd.peak_tflops('f32'):.1f} TFLOPS f32"):
            assert want in text, (role, want)
    # every field of every unit of the description is there
    lines = machine_constants(odd)
    n_fields = sum(len(dataclasses.fields(getattr(odd, f.name))) for f in dataclasses.fields(odd)
                   if dataclasses.is_dataclass(getattr(odd, f.name)))
    assert len(lines) == 1 + n_fields + 3


def test_the_baseline_line_names_the_op_it_cannot_lower(tmp_path):
    task_file = tmp_path / "sort_rows.py"
    task_file.write_text('"""Sort the columns, doubled."""\nimport torch\nimport torch.nn as nn\n\nROWS = 64\nCOLS = 32\n\n\n'
                         'class Model(nn.Module):\n    def forward(self, x):\n'
                         '        return torch.sort(x, dim=0)[0] * 2\n\n\n'
                         'def get_inputs():\n    return [torch.randn(ROWS, COLS)]\n\n\n'
                         'def get_init_inputs():\n    return []\n')
    task = load_task(task_file)
    own = capture_at(task, meta=True)
    ctx = TaskContext(task, own, [], signature(own), asp_lang.load_machine("sn40l"), float("nan"))
    text = context_vars(ctx)["baseline_text"]
    assert "nan" not in text
    assert "cannot lower [0] sort (aten.sort.default)" in text
    user = LLMPlanner(NoClient()).messages(ctx, [])[1]["content"]
    assert "cannot lower [0] sort" in user and "nan us" not in user
