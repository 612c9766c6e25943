"""Scripted evaluation of the LLM path: a capable model's recorded replies, served by a local
OpenAI-compatible server, through the real loop (planner -> workers -> evaluation -> reflector
or improvement rounds), then replayed from the transcript the run recorded.

The replies are fixtures (tests/agentforge/fixtures/llm_scripted/: scenarios.json and the .asp
kernels it names), written as a capable model given the rendered prompts would write them; the
kernels were verified with `agentforge eval`. Per task the script reports: verified, speedup over
the op-by-op baseline (and the offline author's, from benchmarks/results/author.json), roofline
fraction, rounds used, calls per role, whether the planner's first plan was sent back, the
improvement notes, the prompt sizes the server received (characters, and tokens as chars / 4),
and whether a replay of the transcript (no server) gives the same result.

    .venv/bin/python benchmarks/bench_llm_scripted.py [--tasks rmsnorm,matmul] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "agentforge"))

from llm_server import ScriptedServer, chat  # noqa: E402

from agentforge.agents.llm_roles import llm_roles  # noqa: E402
from agentforge.agents.offline import OfflinePlanner  # noqa: E402
from agentforge.llm import LLMConfig  # noqa: E402
from agentforge.loop import SolveConfig, solve, task_context  # noqa: E402
from agentforge.tasks import load_task  # noqa: E402
from agentforge.verify import VerifyConfig, evaluate  # noqa: E402

FIXTURES = ROOT / "tests" / "agentforge" / "fixtures" / "llm_scripted"
MODEL = "scripted-capable-model"
KEY_ENV = "AGENTFORGE_SCRIPTED_KEY"
SOLVE = SolveConfig(max_attempts=6, workers=1, best_of=3, improve_rounds=3, min_gain=0.02)


def reply_text(r: dict) -> str:
    """A scripted reply as the model sent it: JSON for the planner and reflector, a kernel in a fence."""
    if "json" in r:
        return json.dumps(r["json"])
    src = (FIXTURES / r["kernel"]).read_text(encoding="utf-8")
    return f"Here is the kernel.\n\n```asp\n{src}```\n"


def _role_of(body: dict) -> str:
    system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
    for role, lead in (("planner", "You are the planner"), ("worker", "You write kernels"),
                       ("reflector", "You review attempts")):
        if system.startswith(lead):
            return role
    return "other"


def est_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def run(task_name: str, client_cfg: LLMConfig, ctx, task) -> dict:
    planner, workers, reflector = llm_roles(client_cfg, workers=1, fallback_planner=OfflinePlanner(),
                                            check=client_cfg.provider != "replay")
    vcfg = VerifyConfig(machine=ctx.machine.name)
    t0 = time.perf_counter()
    res = solve(task, planner, workers, reflector, cfg=SOLVE, ctx=ctx,
                evaluate_fn=lambda c: evaluate(task, c, vcfg, baseline_seconds=ctx.baseline_seconds))
    return {"res": res, "planner": planner, "workers": workers, "reflector": reflector,
            "seconds": time.perf_counter() - t0}


def summary_of(out: dict) -> dict:
    res = out["res"]
    hist = [{"attempt": h["attempt"], "verified": h["evaluation"]["verified"],
             "reason_code": h["evaluation"].get("reason_code"),
             "speedup": round(h["evaluation"]["speedup"], 4) if h["evaluation"].get("speedup") else None}
            for h in res.history]
    # the candidates of a best-of-k round finish in any order: compare rounds as sets
    hist.sort(key=lambda h: (h["attempt"], json.dumps(h, sort_keys=True)))
    return {"verified": res.verified, "speedup": res.best.speedup if res.best else None,
            "roofline_fraction": res.best.roofline_fraction if res.best else None,
            "rounds": res.attempts, "history": hist,
            "calls": {"planner": out["planner"].usage.calls, "worker": sum(w.usage.calls for w in out["workers"]),
                      "reflector": out["reflector"].usage.calls},
            "plan_returned": [r["reason"] for r in out["planner"].returned],
            "best_author": res.best_candidate.author if res.best_candidate else None,
            "notes": [n for n in res.notes if "improvement" in n or "baseline" in n or "plateau" in n]}


def offline_speedups() -> dict:
    p = ROOT / "benchmarks" / "results" / "author.json"
    try:
        rows = json.loads(p.read_text())["per_task"]
        return {r["task"]: r.get("speedup") for r in rows}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def geomean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", help="comma-separated subset of the scenarios")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    scenarios = json.loads((FIXTURES / "scenarios.json").read_text())["scenarios"]
    if args.tasks:
        keep = set(args.tasks.split(","))
        scenarios = [s for s in scenarios if s["task"] in keep]
    os.environ[KEY_ENV] = "sk-scripted-not-a-real-key"
    offline = offline_speedups()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sc in scenarios:
            task = load_task(ROOT / "evals" / "suite" / f"{sc['task']}.py")
            ctx = task_context(task)
            transcript = Path(tmp) / f"{sc['task']}.jsonl"
            with ScriptedServer(models=[MODEL]) as srv:
                srv.push(*[chat(reply_text(r), prompt_tokens=0, completion_tokens=est_tokens(reply_text(r)),
                                model=MODEL) for r in sc["replies"]])
                cfg = LLMConfig(base_url=srv.url, model=MODEL, api_key_env=KEY_ENV, timeout_s=30, max_retries=0,
                                record_path=str(transcript))
                live = run(sc["task"], cfg, ctx, task)
                sent = [r.body for r in srv.chat_requests]
                unused = len(srv.queue)
            by_role: dict[str, dict] = {}
            for body in sent:                  # every request the server got (repair rounds included)
                role = _role_of(body)
                chars = sum(len(m["content"]) for m in body["messages"])
                d = by_role.setdefault(role, {"calls": 0, "prompt_chars": 0})
                d["calls"] += 1
                d["prompt_chars"] += chars
            for d in by_role.values():
                d["prompt_tokens_est"] = (d["prompt_chars"] + 3) // 4
                d["prompt_chars_per_call"] = d["prompt_chars"] // d["calls"]
            replayed = run(sc["task"], LLMConfig(provider="replay", replay_path=str(transcript)), ctx, task)
            a, b = summary_of(live), summary_of(replayed)
            row = {"task": sc["task"], **a, "offline_author_speedup": offline.get(sc["task"]),
                   "prompts": by_role, "scripted_replies_unused": unused,
                   "completion_tokens_est": sum(est_tokens(reply_text(r)) for r in sc["replies"]),
                   "replay_identical": {k: a[k] for k in ("verified", "speedup", "rounds", "history")} ==
                                       {k: b[k] for k in ("verified", "speedup", "rounds", "history")},
                   "seconds": round(live["seconds"], 1), "replay_seconds": round(replayed["seconds"], 1)}
            if not row["replay_identical"]:
                row["replayed"] = {k: b[k] for k in ("verified", "speedup", "rounds", "history", "calls")}
                row["replayed"]["reasons"] = [(h["evaluation"].get("reason") or "")[:300]
                                              for h in replayed["res"].history if not h["evaluation"]["verified"]]
            rows.append(row)
            print(f"{sc['task']}: verified={row['verified']} speedup={row['speedup']:.2f}x rounds={row['rounds']} "
                  f"calls={row['calls']} replay_identical={row['replay_identical']}", file=sys.stderr)
    out = {"model": MODEL + " (recorded replies, tests/agentforge/fixtures/llm_scripted)",
           "solve_config": {"max_attempts": SOLVE.max_attempts, "best_of": SOLVE.best_of,
                            "improve_rounds": SOLVE.improve_rounds, "min_gain": SOLVE.min_gain},
           "tokens": "estimated as characters / 4 (no tokenizer is available offline)",
           "tasks": rows,
           "summary": {"tasks": len(rows), "verified": sum(r["verified"] for r in rows),
                       "geomean_speedup": geomean([r["speedup"] for r in rows]),
                       "geomean_offline_author_speedup": geomean([r["offline_author_speedup"] for r in rows]),
                       "beats_offline_author": sum((r["speedup"] or 0) > (r["offline_author_speedup"] or 0) * 1.001
                                                   for r in rows),
                       "mean_rounds": sum(r["rounds"] for r in rows) / max(1, len(rows)),
                       "llm_calls": sum(sum(r["calls"].values()) for r in rows),
                       "plans_returned": sum(len(r["plan_returned"]) for r in rows),
                       "replay_identical": all(r["replay_identical"] for r in rows)}}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
