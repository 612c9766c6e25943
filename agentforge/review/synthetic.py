"""A synthetic campaign run (run.sqlite + library) of any size, for the review benchmark and tests.

Real campaigns are slow to produce; the report's size and speed depend only on how much there
is to show. :func:`make_synthetic_run` writes ``n`` tasks through the real :class:`RunDB` and
:class:`Library` APIs: each with a lineage of 3-6 candidates (kernels edited attempt by
attempt, sometimes a plan), evaluations with checks, LLM calls with tokens and cost, and, for
the verified ones, a library entry whose kernel is real ASP (variations of given kernels) and
whose task is a real task file. Everything is seeded: the same arguments give the same run.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

DISTS = ("normal", "heavy", "uniform")
REJECTIONS = (("mismatch", "output 0: values differ: max abs error 3.87 (at value 0.1667, got 4.03)"),
              ("nonfinite", "output 0: NaN where the reference is finite (an output never written?)"),
              ("check", "kernel.asp:7:3: ShapeError: tile [4, 256] cannot zip with [256, 4]"),
              ("timeout", "the evaluation took longer than 120 s"))


def _mutate(source: str, rng: random.Random) -> str:
    """A plausible next attempt: another parallelism, tile or a new comment line."""
    pars = [m for m in re.finditer(r"par=(\d+)", source)]
    if pars and rng.random() < 0.6:
        m = rng.choice(pars)
        return source[:m.start()] + f"par={rng.choice([1, 2, 4, 8, 16, 32])}" + source[m.end():]
    lines = source.splitlines(keepends=True)
    i = rng.randrange(1, max(2, len(lines)))
    return "".join(lines[:i] + [f"  # attempt note {rng.randrange(1000)}: retuned after feedback\n"] + lines[i:])


def _checks(sizes: dict, passed: bool, code: str | None) -> list[dict]:
    out = []
    for s, sz in enumerate(({k: 8 for k in sizes}, {k: 16 for k in sizes})):
        for seed in range(3):
            ok = passed or (s, seed) != (0, 0)
            out.append({"sizes": sz, "seed": seed, "distribution": DISTS[seed], "passed": ok,
                        "reason": None if ok else "failed", "code": None if ok else code,
                        "max_abs_error": 1e-7 * (seed + 1) if ok else 3.87, "max_rel_error": 1e-6, "seconds": 0.01})
            if not ok:
                return out
    return out


def make_synthetic_run(out: str | Path, n: int, kernels: Sequence[str], task_file: str | Path,
                       seed: int = 0, machine: str = "sn40l", name_prefix: str = "syn") -> Path:
    """Write a run directory with ``n`` tasks at ``out`` (see the module doc); returns ``out``."""
    import asp_lang

    from .. import __version__
    from ..campaign.rundb import RunDB
    from ..library import KernelEntry, Library, Provenance, entry_id

    rng = random.Random(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task_text = Path(task_file).read_text()
    tasks = [SimpleNamespace(name=f"{name_prefix}_{i:03d}", path=f"synthetic/{name_prefix}_{i:03d}.py",
                             group=rng.choice(["elementwise", "norm", "softmax", "matmul", "attention"]),
                             level=rng.choice([1, 2, 3])) for i in range(n)]
    manifest = {"machine": machine, "emulator_version": asp_lang.EMULATOR_VERSION, "seed": seed,
                "model": "synthetic", "packages": {"agentforge": __version__, "asp_lang": asp_lang.__version__}}
    t0 = time.time() - 3600
    db = RunDB(out / "run.sqlite")
    db.start_run(f"synthetic-{n}", "synthetic", {"workers": 2, "attempts_per_task": 6}, manifest, tasks)
    lib = Library.create(out / "library", machine, asp_lang.EMULATOR_VERSION)
    entries = []
    for i, t in enumerate(tasks):
        db.task_started(t.name)
        sizes = {"M": 4096, "N": 4096}
        src = rng.choice(list(kernels))
        history, calls = [], []
        k = rng.randint(3, 6)
        verified = rng.random() < 0.8
        speed = 1.0
        for a in range(k):
            last = a == k - 1
            ok = verified and last
            code, reason = (None, None) if ok else rng.choice(REJECTIONS)
            is_plan = a == 0 and rng.random() < 0.3
            cand = ({"kind": "plan", "plan": {"version": 1, "regions": [{"template": "row", "nodes": [0, 1],
                                                                           "params": {"par": 2 ** rng.randint(0, 5)}}]},
                     "author": "synthetic", "notes": "1 kernel(s)"} if is_plan else
                    {"kind": "kernel", "source": src, "author": "openai:synthetic", "notes": None})
            if not is_plan:
                src = _mutate(src, rng)
            speed = rng.lognormvariate(0.4, 0.6) if ok else speed
            base = 1e-4 * rng.uniform(0.5, 20)
            ev = {"task": t.name, "candidate": cand["kind"], "verified": ok, "reason": reason, "reason_code": code,
                  "simulated_seconds": base / speed if ok else None, "baseline_seconds": base,
                  "speedup": speed if ok else None, "roofline_fraction": rng.uniform(0.2, 0.99) if ok else None,
                  "hbm_bytes": 1.3e8, "flops": None, "bottleneck": "hbm" if ok else None, "machine": machine,
                  "own_sizes": sizes, "checks": _checks(sizes, ok, code), "warnings": [], "error": None}
            history.append({"attempt": a, "worker": a % 2, "candidate": cand, "evaluation": ev, "seconds": 1.0})
            calls.append({"role": "worker", "model": "synthetic", "kind": "chat", "ok": True,
                          "prompt_tokens": rng.randint(2000, 9000), "completion_tokens": rng.randint(300, 2500),
                          "cost": rng.uniform(0.001, 0.03), "latency_s": rng.uniform(1, 9), "started": t0 + i * 15})
        best_index = k - 1
        best = history[best_index]["evaluation"]
        kid = None
        if verified:
            cand = history[best_index]["candidate"]
            files_text = {"kernel.asp": cand.get("source") or src}
            sized = f"synthetic:{t.name}"
            kid = entry_id(t.name, sized, ["f32"], files_text, None)
            files = {f"kernels/{kid}/{n_}": txt for n_, txt in files_text.items()}
            task_rel = f"tasks/{t.name}/{Path(task_file).name}"
            for rel, txt in {**files, task_rel: task_text}.items():
                (out / "library" / rel).parent.mkdir(parents=True, exist_ok=True)
                (out / "library" / rel).write_text(txt)
            entries.append(KernelEntry(
                id=kid, op=t.name, task=t.name, task_file=task_rel,
                signature={"key": sized, "class_key": sized, "sized_key": sized}, kind="kernel", files=list(files),
                verified_at=[{"sizes": {"M": 8, "N": 8}, "seeds": [0, 1, 2], "distributions": list(DISTS)}],
                dtypes=["f32"], simulated_seconds=best["simulated_seconds"], baseline_seconds=best["baseline_seconds"],
                speedup=best["speedup"], roofline_fraction=best["roofline_fraction"], hbm_bytes=1.3e8,
                bottleneck="hbm", provenance=Provenance("openai:synthetic", "synthetic", "planner", None,
                                                        "2026-01-01T00:00:00+00:00", machine,
                                                        asp_lang.EMULATOR_VERSION, __version__, seed),
                own_sizes=sizes))
        result = {"history": history, "best": best, "best_index": best_index, "attempts": k,
                  "plan_cache_hit": rng.random() < 0.2, "plan_source": rng.choice(["planner", "cache", "reflector"]),
                  "plans": [], "llm_calls": calls, "notes": [], "signature_key": f"synthetic:{t.name}",
                  "seconds": rng.uniform(5, 300)}
        db.record_result(t.name, result, kid, {"event": "task_done", "task": t.name, "ts": t0 + i * 15})
    db.set_status("finished", "done")
    db.close()
    lib.entries = entries
    lib.save()
    return out


def example_kernels(root: str | Path) -> list[str]:
    """The kernels of docs/examples under ``root`` (realistic ASP text)."""
    return [p.read_text() for p in sorted(Path(root, "docs", "examples").glob("*.asp"))]


__all__ = ["make_synthetic_run", "example_kernels"]
