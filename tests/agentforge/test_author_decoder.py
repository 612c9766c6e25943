"""The author's decoder template: a Llama-style decoder layer at decode (benchmarks/bench_decoder.py's
task) recognised whole and planned as ONE kernel (agentforge/shard.py's generator on one socket),
verified against PyTorch by the referee at small sizes, and faster by the timing model than the
greedy multi-kernel plan the author made before."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import asp_lang
import numpy as np
import pytest
import torch

from agentforge.author import Plan, author_plan, realize
from agentforge.author.partition import common_partition
from agentforge.author.templates.decoder import decoder_matches
from agentforge.author.tune import whole_layer
from agentforge.capture import capture_at
from agentforge.shard import decoder_layer_source
from agentforge.tasks import load_task
from agentforge.verify import VerifyConfig, evaluate

ROOT = Path(__file__).resolve().parents[2]
SN40L = asp_lang.load_machine("sn40l")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_decoder", ROOT / "benchmarks" / "bench_decoder.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _decode_task(tmp_path: Path, source: str | None = None, **sizes: int):
    """bench_decoder's decode-step task with its module-level sizes set to ``sizes``."""
    src = source or _bench().DECODE_SOURCE
    for k, v in sizes.items():
        src, n = re.subn(rf"^{k} = \d+$", f"{k} = {v}", src, flags=re.M)
        assert n == 1, k
    path = tmp_path / "llama_decode_step.py"
    path.write_text(src)
    # the referee checks at these sizes (one set: a fast test), f32 tolerances as the suite's layer
    (tmp_path / "llama_decode_step.toml").write_text(
        "[tolerance]\natol = 1e-3\nrtol = 1e-3\n\n[[sizes]]\n" + "".join(f"{k} = {v}\n" for k, v in sizes.items()))
    return load_task(path)


SMALL = {"BATCH": 2, "CACHE": 48, "HIDDEN": 128, "HEADS": 4, "INTERMEDIATE": 192}


def test_the_decode_layer_is_one_kernel_faster_than_the_greedy_plan_and_verifies(tmp_path):
    task = _decode_task(tmp_path, **SMALL)
    graph = capture_at(task, meta=True)
    tuned = author_plan(graph, SN40L)
    assert [r.template for r in tuned.plan.regions] == ["decoder"] and tuned.kernels == 1
    # the plan the author made before this template: greedy row/matmul regions, a dozen kernels; the
    # reconfigurations between them alone take longer than the one kernel, whatever their tiles
    greedy = realize(Plan(common_partition([graph])), graph, SN40L)
    assert len(greedy.kernels) >= 10
    reconfig = SN40L.reconfig.cycles / (SN40L.clock_ghz * 1e9)
    assert tuned.seconds < (len(greedy.kernels) - 1) * reconfig / 10
    ev = evaluate(task, {"kind": "plan", "plan": tuned.plan.to_dict()}, VerifyConfig(seeds=(0, 1), size_sets=1),
                  baseline_seconds=1.0)
    assert ev.verified, ev.reason
    assert [c.passed for c in ev.checks] == [True] * len(ev.checks) and len(ev.checks) >= 2
    assert ev.simulated_seconds == pytest.approx(tuned.seconds)


def test_a_layer_computing_something_else_is_not_taken_for_a_decoder(tmp_path):
    """The operands fit (same shapes), but the MLP is ReLU, not SwiGLU: the canonical forms differ,
    so the greedy regions plan it; and the prefill-sized suite layer is no decode layer at all."""
    src = _bench().DECODE_SOURCE.replace("F.silu(self.gate_proj(h))", "F.relu(self.gate_proj(h))")
    assert src != _bench().DECODE_SOURCE
    relu = capture_at(_decode_task(tmp_path, src, **SMALL), meta=True)
    assert decoder_matches(relu) == [] and whole_layer([relu]) is None   # what author_plan asks
    prefill = capture_at(load_task(ROOT / "evals" / "suite" / "llama_decoder_block.py"), {"SEQ": 16, "HIDDEN": 64,
                                                                                            "HEADS": 4,
                                                                                            "INTERMEDIATE": 128},
                         meta=True)
    assert decoder_matches(prefill) == []


def _reference(t: dict, batch: int, h: int, kvh: int, hd: int, eps: float, attend_new: bool, cache: str):
    """The layer in PyTorch for the generator's model forms: nn.Linear weights, per-sequence caches
    (``batch`` > 1) or one cache for all rows, the new rows' own key/value attended to or not."""
    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def rot(x):
        return torch.cat((-x[..., hd // 2:], x[..., :hd // 2]), -1)
    x = t["x"]
    m, g = x.shape[0], h // kvh
    a = rms(x, t["g1"])
    q, k, v = ((a @ t[w].T).view(m, n, hd).transpose(0, 1) for w, n in (("wq", h), ("wk", kvh), ("wv", kvh)))
    q, k = q * t["cos"] + rot(q) * t["sin"], k * t["cos"] + rot(k) * t["sin"]
    kc = t["kc"] if cache == "k" else t["kc"].transpose(-1, -2)
    kc, vc = (kc, t["vc"]) if batch > 1 else (kc[None], t["vc"][None])
    outs = []
    for b in range(batch):
        qb = q[:, b:b + 1].reshape(kvh, g, hd) if batch > 1 else q.reshape(kvh, g * m, hd)
        kk, vv = kc[b], vc[b]
        if attend_new:
            kk, vv = torch.cat([kk, k[:, b:b + 1]], 1), torch.cat([vv, v[:, b:b + 1]], 1)
        outs.append((torch.softmax(qb @ kk.transpose(-1, -2) * hd ** -0.5, -1) @ vv).reshape(h, -1, hd))
    r1 = x + torch.cat(outs, 1).transpose(0, 1).reshape(m, h * hd) @ t["wo"].T
    b2 = rms(r1, t["g2"])
    y = r1 + (torch.nn.functional.silu(b2 @ t["wg"].T) * (b2 @ t["wu"].T)) @ t["wd"].T
    return y, k.transpose(0, 1).reshape(m, kvh * hd), v.transpose(0, 1).reshape(m, kvh * hd)


@pytest.mark.parametrize("batch,kvh,attend_new,cache,rope_rows,degree", [
    (1, 8, False, "kt", 1, 1), (1, 4, True, "k", 1, 1), (2, 8, True, "k", 1, 1), (4, 2, True, "kt", 4, 1),
    (2, 4, False, "k", 2, 1), (2, 4, True, "k", 1, 2)])
def test_the_generator_model_forms_match_pytorch(batch, kvh, attend_new, cache, rope_rows, degree):
    """decoder_layer_source in the forms a task is written in (f32, nn.Linear weights, the cache
    untransposed or not, one cache per sequence, the new token attending to itself, one RoPE row),
    grouped-query or not, on one socket and on two."""
    h, d, hd, f, ctx = 8, 64, 16, 128, 32
    src = decoder_layer_source(batch, d, h, kvh, hd, f, ctx, degree, dtype="f32", tk=16, to=8, tf=32, td=8, tc=8,
                               layout="out_in", cache=cache, batch=batch, attend_new=attend_new, eps=1e-6,
                               rope_rows=rope_rows)
    prog = asp_lang.compile(src)
    assert len(prog.programs) == degree
    rng = np.random.default_rng(batch * 10 + kvh)
    lead = (batch,) if batch > 1 else ()
    shapes = {"x": (batch, d), "g1": (d,), "wq": (h * hd, d), "wk": (kvh * hd, d), "wv": (kvh * hd, d),
              "cos": (rope_rows, hd), "sin": (rope_rows, hd),
              "kc": lead + ((kvh, hd, ctx) if cache == "kt" else (kvh, ctx, hd)), "vc": lead + (kvh, ctx, hd),
              "wo": (d, h * hd), "g2": (d,), "wg": (f, d), "wu": (f, d), "wd": (d, f)}
    scale = {"g1": 0.1, "g2": 0.1, "wq": 1 / 8, "wk": 1 / 8, "wv": 1 / 8, "wo": 1 / 11, "wg": 1 / 8, "wu": 1 / 8,
             "wd": 1 / 11}
    ins = {k: (rng.standard_normal(s) * scale.get(k, 1.0) + (1.0 if k in ("g1", "g2") else 0.0)).astype(np.float32)
           for k, s in shapes.items()}
    ins["cos"], ins["sin"] = np.cos(ins["cos"]), np.sin(ins["sin"])
    out = asp_lang.run(prog, ins)
    refs = _reference({k: torch.from_numpy(v.copy()) for k, v in ins.items()}, batch, h, kvh, hd, 1e-6, attend_new,
                      cache)
    for name, ref in zip(("y", "kn", "vn"), refs):
        got = torch.from_numpy(np.array(out[name], dtype=np.float32))
        assert got.shape == ref.shape
        assert (got - ref).abs().max() <= 1e-5 * ref.abs().max(), name
