"""Tiny Hugging Face causal LMs (built from configs: random weights, no downloads) compiled with
``torch.compile(model, backend="agentforge")`` and a kernel library: how much of each model runs
on generated kernels, whether the answer is right, and what the first compiled forward costs.

Why this script: the user's path (my model -> library -> torch.compile) is only as good as the
share of a real model's graph the library matches; tests assert correctness, this measures
coverage and time and prints one JSON document.

    .venv/bin/python benchmarks/bench_models_hf.py --library /tmp/h6run/library [--models llama,qwen2]
    .venv/bin/python benchmarks/bench_models_hf.py --from-model --out /tmp/fm [--models llama,qwen2]

With ``--from-model`` each model gets its own library: ``agentforge campaign --from-model
CONFIG.json --out OUT/<model>`` (its config written from :func:`tiny_models`), timed
(``campaign_s``), then measured with that library.

Per model: ``ops`` (non-view ATen ops of the compiled graphs), ``offloaded_ops`` (of those,
the ones a library call computes), ``folded_ops`` (computed once per plan: no input reaches
them, e.g. positions and the causal mask), ``runtime_ops_share`` (offloaded / ops that run per
call: ops - folded; ``ops_share`` is offloaded / ops), ``flops_share`` (estimated FLOPs inside library calls /
all), ``max_abs_err`` of the logits against eager, ``first_forward_s`` (export + planning +
the first run, wall clock) and ``second_forward_s``, the offloaded library ops, and the eager
ops grouped by reason (first few). Needs ``transformers`` (``pip install agentforge[hf]``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: kinds that compute nothing: views, and sym_size (a dynamic graph reading a tensor's size, no data)
VIEW_KINDS = frozenset({"view", "permute", "expand", "getitem", "clone", "alias", "detach", "sym_size"})


#: the tiny models' configs (what ``--from-model`` writes as config.json)
CONFIGS = {
    "llama": dict(model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
    "qwen2": dict(model_type="qwen2", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
    "mixtral": dict(model_type="mixtral", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, num_local_experts=4,
                    num_experts_per_tok=2),
    "gpt2": dict(model_type="gpt2", vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=128),
}


def campaign_from_model(name: str, out: Path, seq: int, new_tokens: int) -> tuple[str, float, str]:
    """Run ``agentforge campaign --from-model`` on the model's config (prefill at ``seq`` tokens and,
    with ``new_tokens``, the decode step); (library, wall seconds, summary line)."""
    import subprocess

    out.mkdir(parents=True, exist_ok=True)
    cfg = out / f"{name}.json"
    cfg.write_text(json.dumps(CONFIGS[name]))
    run = out / name
    t0 = time.perf_counter()
    decode = ["--max-new-tokens", str(new_tokens)] if new_tokens else []
    p = subprocess.run([sys.executable, "-m", "agentforge.cli", "campaign", "--from-model", str(cfg), "--out", str(run),
                        "--prompt-tokens", str(seq), *decode, "--quiet"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("verified ")), p.stderr.strip()[-300:])
    kv = next((ln for ln in p.stdout.splitlines() if ln.startswith("ranges: ")), None)
    return str(run / "library"), wall, line + (f"; {kv}" if kv else "")


def tiny_models() -> dict[str, Any]:
    """Config factories of the tiny models: 2 layers, hidden 64, 4 heads (2 KV heads), vocab 256;
    sizes chosen to be those the default suite's tasks are verified at."""
    import transformers as tf

    common = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return {
        "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**common)),
        "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**common)),
        "mixtral": lambda: tf.MixtralForCausalLM(tf.MixtralConfig(**common, num_local_experts=4,
                                                                    num_experts_per_tok=2)),
        "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4,
                                                         n_positions=128)),
    }


def flops_of(n: Any, specs: dict[str, Any]) -> int:
    """A node's estimated FLOPs (agentforge's table; Hugging Face's grouped expert matmul, the MoE
    experts of Mixtral in this transformers, counts 2 S K N)."""
    from agentforge.capture import node_flops, operand_specs

    return node_flops(n, operand_specs(specs, n))


def coverage(graphs: list[Any]) -> dict[str, Any]:
    """Ops and FLOPs of the compiled graphs' latest plans, and how much of them library calls compute."""
    ops = off = folded = 0
    flops = off_flops = 0
    offloaded: dict[str, int] = {}
    eager: dict[str, list[str]] = {}
    for c in graphs:
        plan = c.plan
        if plan is None:
            eager.setdefault(f"graph ran eagerly: {c.error}", []).append("(whole graph)")
            continue
        covered = set().union(*(r.nodes for r in plan.regions)) if plan.regions else set()
        specs = plan.graph.spec_table
        # ATen view ops the plan classifies by their schema (split_with_sizes, slice, select, unbind:
        # they alias their input, no computation): not eager computing ops
        views = {e.node for e in plan.eager if e.view}
        for n in plan.graph.nodes:
            if n.kind in VIEW_KINDS or n.name in views:
                continue
            f = flops_of(n, specs)
            ops += 1
            flops += f
            if n.name in covered:
                off += 1
                off_flops += f
            elif n.name in getattr(plan, "folded", {}):
                folded += 1
        for r in plan.regions:
            offloaded[r.family.op] = offloaded.get(r.family.op, 0) + 1
        for e in plan.eager:
            if e.kind not in VIEW_KINDS and e.node not in views and e.node not in getattr(plan, "folded", {}):
                eager.setdefault(e.reason.splitlines()[0][:160], []).append(e.kind)
    return {"ops": ops, "offloaded_ops": off, "folded_ops": folded, "eager_ops": ops - off - folded,
            "runtime_ops_share": off / (ops - folded) if ops > folded else 0.0, "flops": flops,
            "flops_share": off_flops / flops if flops else 0.0,
            "library_ops": offloaded,
            "eager_by_reason": {k: f"{len(v)}: {', '.join(sorted(set(v)))}" for k, v in
                                sorted(eager.items(), key=lambda kv: -len(kv[1]))[:8]}}


def planning_seconds(graphs: list[Any], cpu: bool = False) -> float:
    """Export + matching seconds (wall, or this process's CPU with ``cpu``) of every plan the
    compiled graphs made (static and dynamic)."""
    return sum(s.planning_cpu_s if cpu else s.planning_s
               for c in graphs for s in [*c.specializations.values(), *c.dynamic_specs.values()])


def decode(name: str, factory: Any, library: str, seq: int, new_tokens: int, options: dict[str, Any]) -> dict[str, Any]:
    """``generate()`` with the compiled forward (dynamo's default: the decode step compiled once with
    a symbolic KV length, planned once): tokens equal to eager's, plans made, planning seconds, and
    the decode plan's offload (its KV-length-dependent ops run eagerly)."""
    from agentforge.torch.backend import compiled_graphs

    torch.manual_seed(0)
    model = factory().eval()
    ids = torch.randint(0, 256, (1, seq), generator=torch.Generator().manual_seed(2))
    kw = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    torch._dynamo.reset()
    before = {id(c) for c in compiled_graphs()}
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ref = model.generate(ids, **kw)
        model.forward = torch.compile(model.forward, backend="agentforge", options={"library": library, **options})
        t0 = time.perf_counter()
        got = model.generate(ids, **kw)
        wall = time.perf_counter() - t0
    graphs = [c for c in compiled_graphs() if id(c) not in before]
    dyn = [s for c in graphs for s in c.dynamic_specs.values()]
    row: dict[str, Any] = {"new_tokens": new_tokens, "tokens_equal_eager": bool(torch.equal(got, ref)),
                           "generate_s": round(wall, 2), "graphs": len(graphs),
                           "plans": sum(len(c.specializations) + len(c.dynamic_specs) for c in graphs),
                           "planning_s": round(planning_seconds(graphs), 2),
                           "planning_cpu_s": round(planning_seconds(graphs, cpu=True), 2),
                           "decode_planning_s": round(sum(s.planning_s for s in dyn), 2),
                           "decode_planning_cpu_s": round(sum(s.planning_cpu_s for s in dyn), 2),
                           "agentforge_warnings": sum("agentforge" in str(w.message) for w in caught)}
    dyn_graphs = [c for c in graphs if c.dynamic_specs]
    if dyn_graphs:
        for c in dyn_graphs:
            c.last = next(iter(c.dynamic_specs.values()))
        cov = coverage(dyn_graphs)
        row["decode_graph"] = {k: cov[k] for k in ("ops", "offloaded_ops", "folded_ops", "eager_ops",
                                                   "runtime_ops_share", "flops_share", "eager_by_reason")}
    torch._dynamo.reset()
    return row


def simulate_decode(factory: Any, library: str, seq: int) -> dict[str, Any]:
    """The simulated decode step (one token over a KV cache of ``seq`` tokens, the graph dynamo
    compiles inside ``generate()``) with the library vs op by op."""
    from agentforge.torch.from_model import decode_steps
    from agentforge.torch.report import report

    torch.manual_seed(0)
    model = factory().eval()
    prompt = torch.randint(0, 256, (1, seq - 1), generator=torch.Generator().manual_seed(0))
    _, fn, tensors = decode_steps(model, prompt, steps=1)[0]
    r = report(fn, tensors, library=library)
    return simulated(r)


def simulated(r: Any) -> dict[str, Any]:
    return {"error": r.error, "chip_s": r.chip_seconds, "op_by_op_s": r.op_by_op_seconds,
            "speedup": r.speedup if r.error is None else None, "offloaded_regions": len(r.regions),
            "eager_ops": len(r.eager), "not_lowerable_ops": len(r.not_lowerable)}


def bench(name: str, factory: Any, library: str, seq: int, options: dict[str, Any],
          simulate: bool = False, new_tokens: int = 0) -> dict[str, Any]:
    from agentforge.torch.backend import compiled_graphs

    torch.manual_seed(0)
    model = factory().eval()
    ids = torch.randint(0, 256, (1, seq))
    torch._dynamo.reset()
    before = {id(c) for c in compiled_graphs()}
    compiled = torch.compile(model, backend="agentforge", dynamic=False, options={"library": library, **options})
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0, c0 = time.perf_counter(), time.process_time()
        out = compiled(ids, use_cache=False).logits
        first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        compiled(ids, use_cache=False)
        second = time.perf_counter() - t0
        ref = model(ids, use_cache=False).logits
    graphs = [c for c in compiled_graphs() if id(c) not in before]
    row = {"model": name, "input": [1, seq], "graphs": len(graphs),
           "max_abs_err": float((out - ref).abs().max()), "first_forward_s": round(first, 2),
           "first_forward_cpu_s": round(first_cpu, 2), "planning_s": round(planning_seconds(graphs), 2),
           "planning_cpu_s": round(planning_seconds(graphs, cpu=True), 2), "second_forward_s": round(second, 2),
           "agentforge_warnings": sum("agentforge" in str(w.message) for w in caught)}
    row.update(coverage(graphs))
    row["ops_share"] = row["offloaded_ops"] / row["ops"] if row["ops"] else 0.0
    torch._dynamo.reset()
    if simulate:
        from agentforge.torch.report import report

        row["simulated"] = simulated(report(model, [ids], library=library))
        row["simulated_decode"] = simulate_decode(factory, library, seq)
    if new_tokens:
        row["generate"] = decode(name, factory, library, seq, new_tokens, options)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--library", help="a library folder (e.g. a campaign's OUT/library)")
    ap.add_argument("--from-model", action="store_true", help="build each model's library with campaign --from-model")
    ap.add_argument("--out", default="/tmp/bench_models_hf", help="--from-model: where the runs go")
    ap.add_argument("--models", default="llama,qwen2,mixtral,gpt2")
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=8,
                    help="decode: the campaign captures the decode step too, and generate() this many tokens with the "
                         "compiled forward is checked against eager (0: prefill only)")
    ap.add_argument("--verify-new-sizes", action="store_true")
    ap.add_argument("--simulate", action="store_true", help="also the emulator's time of the whole forward with the "
                                                            "library vs op by op (agentforge.torch.report)")
    a = ap.parse_args(argv)
    try:
        factories = tiny_models()
    except ImportError:
        print(json.dumps({"error": "transformers is not installed (pip install 'agentforge[hf]')"}))
        return 2
    opts = {"verify_new_sizes": True} if a.verify_new_sizes else {}
    if not a.library and not a.from_model:
        ap.error("give --library DIR or --from-model")
    rows = []
    for m in a.models.split(","):
        if a.from_model:
            lib, wall, line = campaign_from_model(m, Path(a.out), a.seq, a.max_new_tokens)
            row = bench(m, factories[m], lib, a.seq, opts, a.simulate, a.max_new_tokens)
            row.update({"library": lib, "campaign_s": round(wall, 1), "campaign": line})
        else:
            row = bench(m, factories[m], a.library, a.seq, opts, a.simulate, a.max_new_tokens)
        rows.append(row)
    print(json.dumps({"library": a.library or "per model (--from-model)", "torch": torch.__version__, "models": rows},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
