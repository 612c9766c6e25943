"""Compare the fast (analytic) and event-level timing models of asp_lang.

Prints one JSON object:
    {"examples": [{"name", "machine", "fast_cycles", "event_cycles", "ratio", "fast_ms", "event_ms"}, ...],
     "agreement": {"max_abs_dev", "median_abs_dev"},
     "suite": {"kernels", "max_abs_dev", "median_abs_dev", "worst": [[name, dev], ...]},
     "chunking": [{"name", "machine", "elements", "fast_cycles", "event_cycles", "element_cycles",
                   "chunked_vs_element", "fast_vs_event", "event_ms", "element_ms"}, ...],
     "decoder": [{"kernel", "batch", "model", "us_per_step", "us_per_token", "hbm_fraction", "hbm_mib",
                  "kernels", "wall_ms"}, ...]}

ratio = fast / event simulated cycles; *_ms are wall times of one profile (compile excluded).
"suite" is every kernel of the bundled suite's op-by-op baseline at its first size set (as
tests/asp_lang/test_event.py checks it). "chunking" times programs with 10^4 or more elements per
stream with the event model as it runs (at most 256 chunks per stream), element by element
(one chunk per element, as DAM simulates) and with the fast model.
The decoder rows are one Llama-2-7B layer at decode (d_model 4096, 32 x 128 heads, SwiGLU FFN
11008, RMSNorm, RoPE, 4k KV cache, bf16) on sn40l, timing only: the fused kernel of
docs/examples/timing_only/decoder_layer_decode.asp, and the op-by-op baseline (agentforge's
lowering of the same layer written in PyTorch, every kernel at its fastest par, a
reconfiguration between kernels), each timed by both models. One decode step makes one token
for each of the batch's sequences: us_per_step is the step's time for the whole batch,
us_per_token = us_per_step / batch.

    .venv/bin/python benchmarks/bench_models.py [--no-baseline] [--out benchmarks/results/models.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asp_lang  # noqa: E402
from asp_lang.event import simulate  # noqa: E402

EXAMPLES = ROOT / "docs" / "examples"
DECODER = EXAMPLES / "timing_only" / "decoder_layer_decode.asp"
MACHINES = ("sn40l", "rdu-mini")

# The same decoder layer in PyTorch, for agentforge's op-by-op lowering (a task file).
DECODE_TASK = '''"""Llama-2-7B decoder layer at decode: one token per sequence over a KV cache."""
import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 1
HIDDEN = 4096
HEADS = 32
INTERMEDIATE = 11008
CTX = 4096


def _rmsnorm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w


def _rot(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Model(nn.Module):
    def __init__(self, hidden, heads, inter):
        super().__init__()
        self.heads, self.hd = heads, hidden // heads
        self.n1 = nn.Parameter(torch.ones(hidden, dtype=torch.bfloat16))
        self.n2 = nn.Parameter(torch.ones(hidden, dtype=torch.bfloat16))
        lin = lambda i, o: nn.Linear(i, o, bias=False, dtype=torch.bfloat16)
        self.q, self.k, self.v, self.o = lin(hidden, hidden), lin(hidden, hidden), lin(hidden, hidden), lin(hidden, hidden)
        self.g, self.u, self.d = lin(hidden, inter), lin(hidden, inter), lin(inter, hidden)

    def forward(self, x, cos, sin, kc, vc):
        b = x.shape[0]
        h = _rmsnorm(x, self.n1)
        q = self.q(h).view(b, self.heads, 1, self.hd)
        k = self.k(h).view(b, self.heads, 1, self.hd)
        v = self.v(h)
        q = q * cos + _rot(q) * sin
        k = k * cos + _rot(k) * sin
        s = torch.matmul(q, kc.transpose(-2, -1)) * self.hd ** -0.5
        a = torch.matmul(torch.softmax(s, dim=-1), vc).reshape(b, -1)
        x = x + self.o(a)
        h = _rmsnorm(x, self.n2)
        return x + self.d(F.silu(self.g(h)) * self.u(h)), k.reshape(b, -1), v


def get_inputs():
    hd = HIDDEN // HEADS
    bf = torch.bfloat16
    return [torch.randn(BATCH, HIDDEN, dtype=bf), torch.randn(1, hd, dtype=bf), torch.randn(1, hd, dtype=bf),
            torch.randn(BATCH, HEADS, CTX, hd, dtype=bf), torch.randn(BATCH, HEADS, CTX, hd, dtype=bf)]


def get_init_inputs():
    return [HIDDEN, HEADS, INTERMEDIATE]
'''


def _timed(fn, prog):
    t0 = time.perf_counter()
    rep = fn(prog)
    return rep, (time.perf_counter() - t0) * 1e3


def example_rows() -> list[dict]:
    rows = []
    for path in sorted(EXAMPLES.glob("*.asp")):
        for machine in MACHINES:
            prog = asp_lang.compile_file(path, machine=machine)
            fast, fast_ms = _timed(asp_lang.profile, prog)
            event, event_ms = _timed(simulate, prog)
            rows.append({"name": path.stem, "machine": machine, "fast_cycles": round(fast.cycles, 1),
                         "event_cycles": round(event.cycles, 1), "ratio": round(fast.cycles / event.cycles, 4),
                         "fast_ms": round(fast_ms, 3), "event_ms": round(event_ms, 3)})
    return rows


def _per_step(seconds: float, batch: int) -> dict:
    """A decode step's time for the whole batch, and per token (one token per sequence)."""
    return {"us_per_step": round(seconds * 1e6, 2), "us_per_token": round(seconds * 1e6 / batch, 2)}


def fused_rows() -> list[dict]:
    rows = []
    for batch in (1, 16):
        prog = asp_lang.compile_file(DECODER, machine="sn40l", sizes={"B": batch})
        for model, fn in (("fast", asp_lang.profile), ("event", simulate)):
            rep, ms = _timed(fn, prog)
            rows.append({"kernel": "fused", "batch": batch, "model": model, **_per_step(rep.seconds, batch),
                         "hbm_fraction": round(rep.hbm_bandwidth_fraction, 4), "hbm_mib": round(rep.hbm_bytes / 2**20, 1),
                         "roofline_us_per_step": round(rep.roofline_seconds * 1e6, 2), "bottleneck": rep.bottleneck,
                         "kernels": 1, "wall_ms": round(ms, 2)})
    return rows


VECTOR_ADD = """
kernel vector_add_tiles(a: f32[N], b: f32[N]) -> (c: f32[N]) {{
  sizes N = {n}
  fn add(x, y) = x + y
  xa = load(a, tile=[{tile}], par={par})
  xb = load(b, tile=[{tile}], par={par})
  xc = map(xa, xb, fn=add, par=4)
  store(c, xc, par={par})
}}
"""


def chunking_rows(with_suite: bool) -> list[dict]:
    """Programs with 10^4..10^5 elements per stream: chunked vs element-level event model."""
    progs = [(f"vector_add tile={tile} N={n}", asp_lang.compile(VECTOR_ADD.format(n=n, tile=tile, par=par), machine="sn40l"))
             for n, tile, par in ((2**22, 256, 2), (2**20, 64, 2), (2**25, 256, 8))]
    for name, sizes, machine in (("softmax_online", {"M": 16384}, "sn40l"), ("layernorm", {"M": 65536}, "sn40l"),
                                 ("rope_neox", {"S": 32768}, "sn40l"), ("softmax_3pass", {"M": 16384}, "rdu-mini")):
        label = f"{name} " + " ".join(f"{k}={v}" for k, v in sizes.items())
        progs.append((label, asp_lang.compile_file(EXAMPLES / f"{name}.asp", machine=machine, sizes=sizes)))
    if with_suite:
        from agentforge.baseline import build_baseline
        from agentforge.capture import capture_at
        from agentforge.lowering import OpKernel
        from agentforge.tasks import load_task

        task = load_task(ROOT / "evals" / "suite" / "rope_neox.py")
        sizes = {"BATCH": 4, "HEADS": 8, "SEQ": 1024, "HEAD_DIM": 64}
        base = build_baseline(capture_at(task, sizes, meta=True), "sn40l")
        for i, step in enumerate(base.steps):
            if isinstance(step, OpKernel) and step.node == "cat":
                progs.append(("suite rope_neox baseline cat BATCH=4 HEADS=8 SEQ=1024", base.program(i, step)))
    rows = []
    for name, prog in progs:
        fast = asp_lang.profile(prog)
        event, event_ms = _timed(simulate, prog)
        element, element_ms = _timed(lambda p: simulate(p, max_chunks=10**9), prog)
        rows.append({"name": name, "machine": prog.machine.name,
                     "elements": int(max(t.count for t in prog.streams.values())),
                     "fast_cycles": round(fast.cycles, 1), "event_cycles": round(event.cycles, 1),
                     "element_cycles": round(element.cycles, 1),
                     "chunked_vs_element": round(event.cycles / element.cycles - 1, 4),
                     "fast_vs_event": round(fast.cycles / event.cycles - 1, 4),
                     "event_ms": round(event_ms, 2), "element_ms": round(element_ms, 1)})
    return rows


def suite_agreement() -> dict:
    """|fast / event - 1| on every kernel of the bundled suite's baseline (first size set)."""
    from agentforge.baseline import build_baseline
    from agentforge.capture import capture_at
    from agentforge.lowering import OpKernel
    from agentforge.tasks import load_suite

    dev = {}
    for task in load_suite(ROOT / "evals" / "suite"):
        base = build_baseline(capture_at(task, task.resolved_size_sets()[0], meta=True), "sn40l")
        for i, step in enumerate(base.steps):
            if isinstance(step, OpKernel):
                prog = base.program(i, step)
                dev[f"{task.name}/{step.node}"] = abs(asp_lang.profile(prog).cycles / simulate(prog).cycles - 1)
    worst = sorted(dev, key=dev.get, reverse=True)[:5]
    return {"kernels": len(dev), "max_abs_dev": round(max(dev.values()), 4),
            "median_abs_dev": round(statistics.median(dev.values()), 4),
            "worst": [[n, round(dev[n], 4)] for n in worst]}


def baseline_rows() -> list[dict]:
    """The op-by-op chain of the same layer; each kernel at the par the baseline picks (fast
    model), then timed by both models; reconfigurations between kernels are charged to both."""
    from agentforge.baseline import build_baseline
    from agentforge.capture import capture_at
    from agentforge.tasks import load_task

    rows = []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "llama_decode_layer.py"
        path.write_text(DECODE_TASK)
        task = load_task(path)
        m = asp_lang.load_machine("sn40l")
        for batch in (1, 16):
            t0 = time.perf_counter()
            base = build_baseline(capture_at(task, {"BATCH": batch}, meta=True), m)
            timing = base.time()
            chosen = {}
            for step in base.kernels:
                _, par = base._fastest(step)
                chosen[step.node] = (step, par)
            fast_ms = (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            ev_cycles = ev_hbm = 0.0
            for step, par in chosen.values():
                src = step.with_par(par["compute"], par["memory"]) if par else step.source
                rep = simulate(asp_lang.compile(src, m, filename=f"{step.node}.asp"))
                ev_cycles += rep.cycles
                ev_hbm += rep.hbm_bytes
            ev_cycles += timing.reconfigurations * m.reconfig.cycles
            event_ms = (time.perf_counter() - t0) * 1e3
            hz = m.clock_ghz * 1e9
            for model, cycles, hbm, ms in (("fast", timing.cycles, timing.hbm_bytes, fast_ms),
                                           ("event", ev_cycles, ev_hbm, event_ms)):
                secs = cycles / hz
                rows.append({"kernel": "op-by-op", "batch": batch, "model": model, **_per_step(secs, batch),
                             "hbm_fraction": round(hbm / secs / 1e9 / m.hbm.bandwidth_gbs, 4),
                             "hbm_mib": round(hbm / 2**20, 1), "kernels": len(chosen),
                             "reconfigurations": timing.reconfigurations, "wall_ms": round(ms, 2)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip what needs agentforge and torch: the op-by-op decoder, the suite kernels")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    rows = example_rows()
    dev = [abs(r["ratio"] - 1) for r in rows]
    decoder = fused_rows() + ([] if args.no_baseline else baseline_rows())
    out = {"examples": rows,
           "agreement": {"max_abs_dev": round(max(dev), 4), "median_abs_dev": round(statistics.median(dev), 4)},
           "suite": None if args.no_baseline else suite_agreement(),
           "chunking": chunking_rows(with_suite=not args.no_baseline),
           "decoder": decoder}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    ok = max(dev) <= 0.15 and (out["suite"] is None or out["suite"]["max_abs_dev"] <= 0.15)
    ok = ok and all(abs(r["chunked_vs_element"]) <= 0.03 for r in out["chunking"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
