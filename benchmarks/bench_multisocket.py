"""Sharded ASP kernels (issue 19): fast vs event timing, link cost, overlap, and the degree the
cost model picks.

Prints one JSON object (and writes it with --out):
    {"examples": [{"name", "sockets", "fast_cycles", "event_cycles", "ratio", "link_cycles"}, ...],
     "agreement": {"max_abs_dev", "median_abs_dev"},
     "link_sweep": [{"peer_gbs", "fast_cycles", "event_cycles", "link_busy", "compute_cycles"}, ...],
     "pipeline": {"fast_cycles", "event_cycles", "sockets": [...]},
     "pick": [{"block", "sizes", "degree", "us": {degree: us}, "config"}, ...]}

ratio = fast / event cycles of the whole group (its slowest socket). The examples are
docs/examples/multisocket at their default sizes on 1, 2 and 4 sockets and the send/recv
pipeline and the asymmetric all_reduce (one socket waits for the other) of
tests/asp_lang/test_multisocket.py; the link sweep times the 2-socket MLP with the
sn40l-node8 peer links at other bandwidths (compute_cycles: the same kernel with a free link);
"pick" is agentforge.shard.pick_degree for Llama-3.1-8B's MLP at decode and prefill and its
attention block at prefill, bf16, on 1-16 sockets.

    .venv/bin/python benchmarks/bench_multisocket.py [--out benchmarks/results/multisocket.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asp_lang  # noqa: E402
from asp_lang.node import load_node  # noqa: E402

MULTI = ROOT / "docs" / "examples" / "multisocket"


def _link(rep) -> float:
    return max(s["link_cycles"] for s in rep.sockets)


def examples() -> list[dict]:
    rows = []
    for path in sorted(MULTI.glob("*.asp")):
        for p in (1, 2, 4):
            prog = asp_lang.compile_file(path, sizes={"P": p})
            f, e = asp_lang.profile(prog), asp_lang.simulate(prog)
            rows.append({"name": path.stem, "sockets": p, "fast_cycles": round(f.cycles, 1),
                         "event_cycles": round(e.cycles, 1), "ratio": round(f.cycles / e.cycles, 4),
                         "link_cycles": round(_link(f), 1)})
    sys.path.insert(0, str(ROOT / "tests" / "asp_lang"))
    from test_multisocket import ASYMMETRIC, PIPELINE  # send/recv pipeline; a socket waiting at an all_reduce
    for name, src in (("pipeline (send/recv)", PIPELINE), ("asymmetric all_reduce", ASYMMETRIC)):
        prog = asp_lang.compile(src)
        f, e = asp_lang.profile(prog), asp_lang.simulate(prog)
        rows.append({"name": name, "sockets": 2, "fast_cycles": round(f.cycles, 1),
                     "event_cycles": round(e.cycles, 1), "ratio": round(f.cycles / e.cycles, 4),
                     "link_cycles": round(_link(f), 1)})
    return rows


def link_sweep() -> list[dict]:
    base = load_node("sn40l-node8")
    free = base.with_peer(bandwidth_gbs=1e6, latency_ns=0)
    compute = asp_lang.profile(asp_lang.compile_file(MULTI / "mlp_tp.asp", sizes={"P": 2}, node=free)).cycles
    rows = []
    for gbs in (256, 64, 16, 5, 1):
        prog = asp_lang.compile_file(MULTI / "mlp_tp.asp", sizes={"P": 2}, node=base.with_peer(bandwidth_gbs=gbs))
        f, e = asp_lang.profile(prog), asp_lang.simulate(prog)
        rows.append({"peer_gbs": gbs, "fast_cycles": round(f.cycles, 1), "event_cycles": round(e.cycles, 1),
                     "link_busy": round(_link(f), 1), "compute_cycles": round(compute, 1)})
    return rows


def pick() -> list[dict]:
    from agentforge.shard import pick_degree
    cases = [("mlp", {"tokens": 1, "hidden": 4096, "intermediate": 14336}),
             ("mlp", {"tokens": 1024, "hidden": 4096, "intermediate": 14336}),
             ("attention", {"seq": 1024, "hidden": 4096, "heads": 32, "kv_heads": 8, "head_dim": 128})]
    rows = []
    for block, sizes in cases:
        c = pick_degree(block, sizes, degrees=(1, 2, 4, 8, 16), dtype="bf16")
        rows.append({"block": block, "sizes": sizes, "degree": c.degree,
                     "us": {p: round(s * 1e6, 1) for p, s in c.seconds.items()}, "config": c.configs[c.degree],
                     "skipped": c.skipped})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    ex = examples()
    devs = [abs(r["ratio"] - 1) for r in ex]
    out = {"examples": ex,
           "agreement": {"max_abs_dev": round(max(devs), 4), "median_abs_dev": round(statistics.median(devs), 4)},
           "link_sweep": link_sweep(), "pick": pick()}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
