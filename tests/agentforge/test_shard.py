"""agentforge/shard.py: tensor-parallel ASP for an MLP and an attention block, verified against
PyTorch at every degree, and the degree the cost model picks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import asp_lang
from agentforge.shard import attention_source, decoder_layer_source, mlp_source, pick_degree
from asp_lang.node import load_node


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


@pytest.mark.parametrize("activation", ["relu", "swiglu"])
@pytest.mark.parametrize("degree", [2, 4])
def test_tensor_parallel_mlp_matches_pytorch(activation, degree):
    prog = asp_lang.compile(mlp_source(32, 64, 256, degree, activation=activation))
    assert len(prog.programs) == degree
    i = asp_lang.random_inputs(prog, seed=degree)
    y = asp_lang.run(prog, i)["y"]
    x = _t(i["x"])
    if activation == "relu":
        ref = torch.relu(x @ _t(i["w1"])) @ _t(i["w2"])
    else:
        ref = (torch.nn.functional.silu(x @ _t(i["wg"])) * (x @ _t(i["wu"]))) @ _t(i["wd"])
    np.testing.assert_allclose(y, ref.numpy(), rtol=2e-4, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("layout", ["in_out", "out_in"])
@pytest.mark.parametrize("degree", [2, 4])
def test_head_sharded_gqa_attention_matches_pytorch(degree, layout):
    """Weights as [in, out], or as nn.Linear keeps them ([out, in]: how a task's weights bind)."""
    s, d, h, kvh, hd = 64, 128, 8, 4, 16
    prog = asp_lang.compile(attention_source(s, d, h, kvh, hd, degree, layout=layout))
    i = asp_lang.random_inputs(prog, seed=degree)
    for w in ("wq", "wk", "wv"):
        i[w] = i[w] / np.float32(np.sqrt(d))
    y = asp_lang.run(prog, i)["y"]
    x = _t(i["x"])
    w = {n: _t(i[n]).T if layout == "out_in" else _t(i[n]) for n in ("wq", "wk", "wv", "wo")}
    q = (x @ w["wq"]).reshape(s, h, hd).transpose(0, 1)
    k = (x @ w["wk"]).reshape(s, kvh, hd).transpose(0, 1).repeat_interleave(h // kvh, 0)
    v = (x @ w["wv"]).reshape(s, kvh, hd).transpose(0, 1).repeat_interleave(h // kvh, 0)
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    ref = (o.transpose(0, 1).reshape(s, h * hd) @ w["wo"]).numpy()
    np.testing.assert_allclose(y, ref, rtol=2e-4, atol=1e-5 * float(np.abs(ref).max()))


def test_the_degree_is_the_fastest_valid_one():
    """A decode-sized Llama-3.1-8B MLP streams its weights: more sockets, less time each, so
    the most sockets win; an 8-KV-head attention block cannot be split 16 ways."""
    mlp = pick_degree("mlp", {"tokens": 1, "hidden": 4096, "intermediate": 14336}, degrees=(1, 2, 4, 8, 16),
                      dtype="bf16")
    times = [mlp.seconds[p] for p in (1, 2, 4, 8, 16)]
    assert times == sorted(times, reverse=True) and mlp.degree == 16
    assert "mlp_tp" in mlp.source and "sockets P = 16" in mlp.source
    attn = pick_degree("attention", {"seq": 16, "hidden": 512, "heads": 8, "kv_heads": 8, "head_dim": 64},
                       degrees=(1, 2, 16))
    assert 16 in attn.skipped and "kv_heads" in attn.skipped[16]
    assert attn.degree == min(attn.seconds, key=attn.seconds.get)


def test_a_tiny_block_stays_on_one_socket():
    """Where the all-reduce's latency costs more than the work it splits, one socket wins."""
    c = pick_degree("mlp", {"tokens": 8, "hidden": 64, "intermediate": 256}, degrees=(1, 2, 4))
    assert c.degree == 1 and c.seconds[2] > c.seconds[1]


@pytest.mark.parametrize("call, words", [
    (lambda: pick_degree("mlp", {"tokens": 8, "hidden": 64}), "missing intermediate"),
    (lambda: pick_degree("mlp", {"tokens": 8, "hidden": 64, "intermediate": 256, "heads": 2}), "unknown heads"),
    (lambda: pick_degree("conv", {}), "block must be"),
    (lambda: mlp_source(8, 64, 100, 3), "not a multiple of the degree 3"),
    (lambda: mlp_source(8, 64, 256, 2, dtype="f64"), "dtype must be"),
    (lambda: attention_source(16, 64, 6, 4, 16, 2), "not a multiple of kv_heads"),
    (lambda: pick_degree("mlp", {"tokens": 8, "hidden": 64, "intermediate": 6}, degrees=(4,)), "no degree"),
])
def test_bad_requests_say_what_to_fix(call, words):
    with pytest.raises(ValueError) as ei:
        call()
    assert words in str(ei.value)


def test_a_sharded_kernel_is_verified_by_the_task_verifier_like_any_other():
    """The SwiGLU MLP on 2 sockets, with the weights as nn.Linear keeps them, passes agentforge's
    verifier on the suite's expert MLP task (PyTorch reference, its check sizes and seeds) and
    is timed at the task's own sizes."""
    from pathlib import Path

    from agentforge.verify import evaluate
    task = Path(__file__).resolve().parents[2] / "evals" / "suite" / "moe_expert_swiglu.py"
    src = mlp_source(1024, 4096, 14336, 2, activation="swiglu", layout="out_in")
    ev = evaluate(task, {"kind": "kernel", "source": src, "filename": "mlp_tp2.asp"}, baseline_seconds=1.0)
    assert ev.verified, ev.reason
    assert len(ev.checks) >= 6 and all(c.passed for c in ev.checks)
    one = asp_lang.profile(asp_lang.compile(src.replace("sockets P = 2", "sockets P = 1")))
    assert ev.simulated_seconds < 0.6 * one.seconds  # timed at the task's own sizes, on 2 sockets


def test_pick_degree_searches_tiles_per_degree():
    """Prefill-sized tokens want large token tiles and many replicas, decode one weight pass."""
    prefill = pick_degree("mlp", {"tokens": 1024, "hidden": 4096, "intermediate": 14336}, degrees=(4,), dtype="bf16")
    decode = pick_degree("mlp", {"tokens": 1, "hidden": 4096, "intermediate": 14336}, degrees=(4,), dtype="bf16")
    assert prefill.configs[4]["tm"] > 8 and prefill.configs[4]["par"] > 8
    assert decode.configs[4]["par"] == 8  # memory-bound: more replicas buy nothing, the smallest wins ties


@pytest.mark.parametrize("stages", [2, 4])
def test_pipeline_parallel_mlp_stack_matches_pytorch_and_both_models_agree(stages):
    """4 MLP layers over 2 or 4 sockets, passed on with send/recv: the numbers of the 4 layers in
    a row, and the stages overlap on a stream of row blocks (not one stage after the other)."""
    from agentforge.shard import mlp_stack_source
    prog = asp_lang.compile(mlp_stack_source(4, 64, 64, 128, stages))
    i = asp_lang.random_inputs(prog, seed=stages)
    ref = _t(i["x"])
    for layer in range(4):
        ref = torch.relu(ref @ _t(i[f"w1_{layer}"])) @ _t(i[f"w2_{layer}"])
    y = asp_lang.run(prog, i)["y"]
    np.testing.assert_allclose(y, ref.numpy(), rtol=2e-4, atol=1e-5 * float(ref.abs().max()))
    big = asp_lang.compile(mlp_stack_source(4, 256, 256, 512, stages))
    stage_alone = [asp_lang.profile(sp).cycles for sp in big.programs]  # as if its input were there at once
    fast, event = asp_lang.profile(big), asp_lang.simulate(big)
    assert abs(fast.cycles / event.cycles - 1) <= 0.15
    assert fast.cycles < 1.5 * max(stage_alone)  # overlapped stages, not their sum
    assert fast.sockets[-1]["cycles"] >= fast.sockets[0]["cycles"]  # the last stage waits for the first


def test_a_pipeline_needs_whole_layers_per_stage():
    from agentforge.shard import mlp_stack_source
    with pytest.raises(ValueError, match="not a multiple of the stages 3"):
        mlp_stack_source(4, 8, 16, 32, 3)


def _layer_reference(t: dict, m: int, h: int, kvh: int, hd: int) -> tuple[torch.Tensor, ...]:
    """One Llama decoder layer at decode in PyTorch (float32 on bf16-rounded inputs): the new rows
    attend to the given cache (K transposed), grouped-query; weights are [in, out]."""
    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    def rot(x):
        return torch.cat((-x[..., hd // 2:], x[..., :hd // 2]), -1)
    x = t["x"]
    a = rms(x, t["g1"])
    q = (a @ t["wq"]).view(m, h, hd).transpose(0, 1)
    k = (a @ t["wk"]).view(m, kvh, hd).transpose(0, 1)
    v = (a @ t["wv"]).view(m, kvh, hd).transpose(0, 1)
    q, k = q * t["cos"] + rot(q) * t["sin"], k * t["cos"] + rot(k) * t["sin"]
    s = q.reshape(kvh, h // kvh * m, hd) @ t["kc"] * hd ** -0.5
    o = (torch.softmax(s, -1) @ t["vc"]).reshape(h, m, hd).transpose(0, 1).reshape(m, h * hd)
    r1 = x + o @ t["wo"]
    b = rms(r1, t["g2"])
    y = r1 + (torch.nn.functional.silu(b @ t["wg"]) * (b @ t["wu"])) @ t["wd"]
    return y, k.transpose(0, 1).reshape(m, kvh * hd), v.transpose(0, 1).reshape(m, kvh * hd)


@pytest.mark.parametrize("degree,prefetch", [(2, ()), (4, ("wo", "wg", "wu", "wd"))])
def test_whole_decoder_layer_as_one_kernel_matches_pytorch(degree, prefetch):
    """Norms, q/k/v by heads, RoPE, GQA against the cache, o projection, all-reduce, residual,
    SwiGLU MLP, all-reduce, residual: one generated kernel on 2 and 4 sockets, against PyTorch."""
    m, d, h, kvh, hd, f, ctx = 2, 64, 8, 4, 16, 128, 32
    prog = asp_lang.compile(decoder_layer_source(m, d, h, kvh, hd, f, ctx, degree, tk=16, to=8, tf=32, td=8, tc=8,
                                                 prefetch=prefetch))
    assert len(prog.programs) == degree
    rng = np.random.default_rng(degree)
    shapes = {"x": (m, d), "g1": (d,), "wq": (d, h * hd), "wk": (d, kvh * hd), "wv": (d, kvh * hd),
              "cos": (m, hd), "sin": (m, hd), "kc": (kvh, hd, ctx), "vc": (kvh, ctx, hd), "wo": (h * hd, d),
              "g2": (d,), "wg": (d, f), "wu": (d, f), "wd": (f, d)}
    scale = {"g1": 0.1, "g2": 0.1, "wq": 1 / 8, "wk": 1 / 8, "wv": 1 / 8, "wo": 1 / 11, "wg": 1 / 8, "wu": 1 / 8,
             "wd": 1 / 11}
    ins = {k: (rng.standard_normal(s) * scale.get(k, 1.0) + (1.0 if k in ("g1", "g2") else 0.0)).astype(np.float32)
           for k, s in shapes.items()}
    ins["cos"], ins["sin"] = np.cos(ins["cos"]), np.sin(ins["sin"])
    t = {k: torch.from_numpy(v).to(torch.bfloat16).float() for k, v in ins.items()}
    out = asp_lang.run(prog, {k: v.numpy() for k, v in t.items()})
    for name, ref in zip(("y", "kn", "vn"), _layer_reference(t, m, h, kvh, hd)):
        got = torch.from_numpy(np.asarray(out[name], dtype=np.float32))
        assert got.shape == ref.shape
        assert (got - ref).abs().max() <= 2e-2 * ref.abs().max(), name   # bf16 activations


def test_a_decode_layer_is_one_section_streaming_its_weights_with_both_all_reduces_charged():
    """Llama-3.1-8B's layer on 16 sockets (one replicated KV head each): one section, no faster
    than its weights at HBM peak plus its two all-reduces' latency, and the two timing models
    agree within the fidelity bound."""
    node = load_node("sn40l-node16")
    src = decoder_layer_source(1, 4096, 32, 16, 128, 14336, 1024, 16, prefetch=("wg", "wu"))
    prog = asp_lang.compile(src, node=node)
    fast, event = asp_lang.profile(prog), asp_lang.simulate(prog)
    weights = 2 * (4096 * (2 + 2) * 128 + 2 * 128 * 4096 + 3 * 4096 * 896 + 2 * 4096)
    floor = weights / 1.8e12 + node.all_reduce_s(4096 * 2, 16)
    for rep in (fast, event):
        assert rep.sections == 1
        assert rep.seconds > floor
        assert sum(1 for o in rep.ops if o.op == "all_reduce") == 2
    assert abs(fast.seconds - event.seconds) <= 0.15 * event.seconds


@pytest.mark.parametrize("kw,words", [
    ({"kv_heads": 3}, "multiple of kv_heads"),
    ({"degree": 8}, "replicate"),
    ({"dtype": "f16"}, "bf16"),
    ({"tokens": 2, "batch": 4}, "tokens must be 4"),
    ({"tokens": 2, "attend_new": True}, "one new row per sequence"),
    ({"cache": "kv"}, "cache must be one of kt, k"),
    ({"rope_rows": 3}, "rope_rows must be 1"),
    ({"head_dim": 15}, "even"),
    ({"prefetch": ("wq",)}, "prefetch names weights of wo, wg, wu, wd"),
])
def test_decoder_layer_requests_say_what_to_fix(kw, words):
    args = {"tokens": 1, "hidden": 64, "heads": 8, "kv_heads": 4, "head_dim": 16, "intermediate": 128,
            "context": 32, "degree": 2} | kw
    with pytest.raises(ValueError, match=words):
        decoder_layer_source(**args)
