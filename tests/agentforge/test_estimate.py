"""Specification of whole-model estimates and model switching (agentforge/estimate.py, the
``agentforge estimate`` command; docs/multisocket.md).

One mid-sized Llama-style config (weights dominate its decode, as in real models) is estimated
on 1 and 8 sockets once per module; every check reads those estimates.
"""

from __future__ import annotations

import json

import pytest

from agentforge.cli import main
from agentforge.estimate import (ConfigError, bundled_models, estimate, load_model, model_from_dict,
                                 switch_schedule, weight_streaming_bound)
from asp_lang.node import load_node

CFG = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 4, "num_attention_heads": 16,
       "num_key_value_heads": 8, "vocab_size": 8192, "torch_dtype": "bfloat16"}
PROMPT = 32


@pytest.fixture(scope="module")
def cfg_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("model") / "config.json"
    p.write_text(json.dumps(CFG))
    return p


@pytest.fixture(scope="module")
def runs(cfg_path):
    node = load_node("sn40l-node8")
    return {n: estimate(str(cfg_path), node, n, prompt_tokens=PROMPT) for n in (1, 8)}


@pytest.mark.parametrize("change,field", [
    ({"hidden_size": None}, "hidden_size"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ({"intermediate_size": "big"}, "intermediate_size"),
    ({"num_attention_heads": 3}, "num_attention_heads"),      # does not divide hidden_size
    ({"num_key_value_heads": 3}, "num_key_value_heads"),      # does not divide the heads
    ({"torch_dtype": "int4"}, "torch_dtype"),
    ({"vocab_size": True}, "vocab_size"),
])
def test_bad_config_names_the_field(change, field):
    d = dict(CFG)
    for k, v in change.items():
        if v is None:
            del d[k]
        else:
            d[k] = v
    with pytest.raises(ConfigError, match=field):
        model_from_dict(d, "config.json")


def test_bundled_llamas_have_their_published_sizes():
    assert {"llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b"} <= set(bundled_models())
    sizes = {n: load_model(f"llama-3.1-{n}").params / 1e9 for n in ("8b", "70b", "405b")}
    assert sizes["8b"] == pytest.approx(8.03, abs=0.05)
    assert sizes["70b"] == pytest.approx(70.6, abs=0.2)
    assert sizes["405b"] == pytest.approx(405.9, abs=1.0)
    # the bf16 weight-streaming bounds at 16 sn40l sockets: ~1790 / 204 / 35
    node = load_node("sn40l-node16")
    bounds = [weight_streaming_bound(load_model(f"llama-3.1-{n}"), node, 16) for n in ("8b", "70b", "405b")]
    assert bounds == pytest.approx([1790, 204, 35.4], rel=0.01)


def test_more_sockets_decode_faster_and_stay_under_the_bound(runs):
    one, eight = runs[1], runs[8]
    assert eight["decode_tokens_per_s_per_user"] > 2 * one["decode_tokens_per_s_per_user"]
    assert eight["ttft_seconds"] < one["ttft_seconds"]
    # the bound counts every weight; decode gathers embedding rows instead of streaming the table
    streamed = one["params"] - CFG["vocab_size"] * CFG["hidden_size"]
    for r in (one, eight):
        assert 0 < r["fraction_of_bound"] <= one["params"] / streamed
        assert r["decode_step_seconds"] == pytest.approx(1 / r["decode_tokens_per_s_per_user"])


def test_collectives_are_charged_with_the_node_costs(runs):
    node = load_node("sn40l-node8")
    hidden_bytes = 1 * 1 * CFG["hidden_size"] * 2
    assert runs[1]["per_layer"]["decode_all_reduce_s"] == 0.0
    assert runs[8]["per_layer"]["decode_all_reduce_s"] == pytest.approx(2 * node.all_reduce_s(hidden_bytes, 8))
    assert runs[8]["per_layer"]["prefill_all_reduce_s"] == pytest.approx(
        2 * node.all_reduce_s(hidden_bytes * PROMPT, 8))
    lay = runs[8]["decode_breakdown"]["per_layer"]
    assert lay["seconds"] == pytest.approx(lay["attention_s"] + lay["mlp_s"] + lay["all_reduce_s"])
    assert (lay["heads_per_socket"], lay["kv_heads_per_socket"], lay["intermediate_per_socket"]) == (2, 1, 1024)
    # every weight of the shard is read by some kernel, once
    per_sock = (runs[8]["params"] - 2 * CFG["vocab_size"] * CFG["hidden_size"]) / CFG["num_hidden_layers"] / 8 * 2
    assert lay["weight_bytes_per_socket"] == pytest.approx(per_sock, rel=0.01)


def test_narrow_weights_and_speculation_raise_tokens_per_second(cfg_path, runs):
    node = load_node("sn40l-node8")
    fp8 = estimate(str(cfg_path), node, 8, prompt_tokens=PROMPT, weight_dtype="fp8")
    base = runs[8]["decode_tokens_per_s_per_user"]
    assert base < fp8["decode_tokens_per_s_per_user"] < 2 * base
    assert fp8["weight_streaming_bound_dtype"] == pytest.approx(2 * fp8["weight_streaming_bound_bf16"])
    spec = estimate(str(cfg_path), node, 8, prompt_tokens=PROMPT, spec_accept=2.0)
    assert base < spec["decode_tokens_per_s_per_user"] <= 2 * base
    chain = estimate(str(cfg_path), node, 8, prompt_tokens=PROMPT, reconfig="chain")
    assert chain["decode_tokens_per_s_per_user"] < base   # reconfiguring between kernels costs time
    with pytest.raises(ConfigError, match="spec-accept"):
        estimate(str(cfg_path), node, 8, spec_accept=0.5)
    with pytest.raises(ConfigError, match="sockets"):
        estimate(str(cfg_path), node, 9)


def test_pipeline_stages_add_point_to_point_sends(cfg_path, runs):
    """8 stages of 1 socket: the 1-socket layers (timed already) plus 7 sends of the hidden state;
    a per-user token gains nothing from pipelining."""
    node = load_node("sn40l-node8")
    pp = estimate(str(cfg_path), node, 8, prompt_tokens=PROMPT, pipeline=8)
    assert (pp["pipeline"], pp["tensor_parallel"]) == (8, 1)
    send = node.send_recv_s(CFG["hidden_size"] * 2, 0, 1)
    assert pp["decode_step_seconds"] == pytest.approx(runs[1]["decode_step_seconds"] + 7 * send)
    assert pp["decode_tokens_per_s_per_user"] < runs[8]["decode_tokens_per_s_per_user"]
    with pytest.raises(ConfigError, match="pipeline"):
        estimate(str(cfg_path), node, 8, pipeline=3)


def test_cli_json_has_the_documented_keys(cfg_path, runs, capsys):
    assert main(["estimate", str(cfg_path), "--machine", "sn40l-node8", "--sockets", "8",
                 "--prompt-tokens", str(PROMPT), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("decode_tokens_per_s_per_user", "ttft_seconds", "sockets", "per_layer", "decode_breakdown",
                "prefill_breakdown", "weight_streaming_bound_bf16", "fraction_of_bound"):
        assert key in out, key
    assert out["sockets"] == 8
    assert out["decode_tokens_per_s_per_user"] == pytest.approx(runs[8]["decode_tokens_per_s_per_user"])
    bad = cfg_path.parent / "bad.json"
    bad.write_text(json.dumps({k: v for k, v in CFG.items() if k != "vocab_size"}))
    assert main(["estimate", str(bad), "--sockets", "2"]) == 2
    assert "vocab_size" in capsys.readouterr().err


def test_switching_charges_a_copy_only_when_not_resident():
    node = load_node("sn40l-node8")
    gb = 13.5e9
    # three models, HBM room for two: A B A C A -> A, B, C and the A evicted by C... (LRU)
    res = switch_schedule(node, 8, [gb, gb, gb], [0, 1, 0, 0, 2, 1], 0.1, hbm_bytes=2.5 * gb)
    sw = [r["switch_s"] > 0 for r in res.requests]
    assert sw == [True, True, False, False, True, True]     # B was least recently used when C came
    ddr_copy = node.ddr_to_hbm_s(gb / 8)
    assert [r["switch_s"] for r in res.requests if r["switch_s"]] == pytest.approx([ddr_copy] * 4)
    assert res.host_loads == 0 and res.switches == 4
    assert res.total_s == pytest.approx(4 * ddr_copy + 6 * 0.1)
    # not in DDR: the first use also loads host -> DDR
    cold = switch_schedule(node, 8, [gb, gb], [0, 1, 0], 0.0, preloaded_ddr=False)
    assert [r["host_load"] for r in cold.requests] == [True, True, False]
    assert cold.requests[0]["switch_s"] == pytest.approx(node.host_to_ddr_s(gb / 8) + ddr_copy)
    assert cold.requests[2]["switch_s"] == 0.0   # both fit in HBM
    # GPU-style: host -> HBM over the PCIe-class link, slower than DDR -> HBM
    gpu = switch_schedule(node, 8, [gb, gb, gb], [0, 1, 0, 0, 2, 1], 0.1, style="gpu", hbm_bytes=2.5 * gb)
    assert gpu.switches == res.switches
    assert gpu.switch_s / res.switch_s == pytest.approx(node.host_to_hbm_s(gb / 8) / ddr_copy)
    assert gpu.switch_s > 5 * res.switch_s


def test_a_decode_layer_is_one_fused_kernel_faster_than_the_author_chain(cfg_path, runs):
    """At decode (batch 1) each socket's layer is one generated tensor-parallel kernel, charged the
    slower of the fast and event models; it streams every weight of the shard and is no faster
    than that at HBM peak, and it beats the author's chain of kernels of the same shard."""
    node = load_node("sn40l-node8")
    lay = runs[8]["decode_breakdown"]["per_layer"]
    assert (runs[8]["layer"], lay["kernels"], lay["all_reduce_in_kernel"]) == ("fused", 1, True)
    f = lay["fused"]
    assert f["seconds"] == max(f["fast_s"], f["event_s"]) and f["sections"] == 1
    streaming = lay["weight_bytes_per_socket"] / (node.socket.hbm.bandwidth_gbs * 1e9)
    assert lay["seconds"] > streaming + lay["all_reduce_s"] / 2   # weights at peak, and at least one all-reduce
    author = estimate(str(cfg_path), node, 8, prompt_tokens=PROMPT, layer="author")
    alay = author["decode_breakdown"]["per_layer"]
    assert (author["layer"], alay["all_reduce_in_kernel"]) == ("author", False) and alay["kernels"] > 5
    assert alay["weight_bytes_per_socket"] == pytest.approx(lay["weight_bytes_per_socket"], rel=0.01)
    assert runs[8]["decode_tokens_per_s_per_user"] > author["decode_tokens_per_s_per_user"]
    assert author["ttft_seconds"] == pytest.approx(runs[8]["ttft_seconds"])   # prefill keeps the author's kernels
    # nothing stays configured: the fused layer pays one reconfiguration per layer, not one per kernel
    chain = estimate(str(cfg_path), node, 8, prompt_tokens=PROMPT, reconfig="chain")
    reconf = node.socket.reconfig.cycles / (node.socket.clock_ghz * 1e9)
    assert chain["decode_breakdown"]["per_layer"]["seconds"] == pytest.approx(lay["seconds"] + reconf)
    # several users have separate caches: the fused kernel is written for one; the author's chain times them
    assert estimate(str(cfg_path), node, 8, batch=2, prompt_tokens=PROMPT)["layer"] == "author"
    with pytest.raises(ConfigError, match="layer"):
        estimate(str(cfg_path), node, 8, layer="whole")
