"""Prompt sizes per role, before (the whole docs/asp.md in every worker prompt) and after (the
compact reference for the task's class), in characters and tokens, and the share of each prompt
that is reference (the system message: the same for every task of a class, a cacheable prefix)
versus task-specific (the user message).

Tokens: tiktoken's o200k_base when it is installed (`pip install agentforge[tokens]`) and its
encoding file is available; otherwise characters / 4, the estimate the client's budgets use
(the JSON says which).

    .venv/bin/python benchmarks/bench_prompts.py [--tasks relu,matmul] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from agentforge.agents.llm_roles import LLMPlanner, LLMReflector, LLMWorker  # noqa: E402
from agentforge.agents.roles import Candidate, Feedback  # noqa: E402
from agentforge.loop import task_context  # noqa: E402
from agentforge.tasks import load_task  # noqa: E402

TASKS = ("relu", "softmax", "rmsnorm", "matmul", "attention", "gqa_causal_attention", "moe_layer_top1",
         "llama_decoder_block")
KERNEL = (ROOT / "docs" / "examples" / "rmsnorm.asp").read_text()


class NoClient:
    """The roles only render prompts here."""
    author = "bench"
    model = "bench"


def tokenizer():
    try:
        import tiktoken

        enc = tiktoken.get_encoding("o200k_base")
        return "tiktoken o200k_base", lambda s: len(enc.encode(s))
    except Exception as e:  # noqa: BLE001 - not installed, or no encoding file offline
        return f"characters / 4 (tiktoken unavailable: {type(e).__name__})", lambda s: (len(s) + 3) // 4


def measure(msgs: list[dict], count) -> dict:
    system = next((m["content"] for m in msgs if m["role"] == "system"), "")
    user = "".join(m["content"] for m in msgs if m["role"] != "system")
    total = len(system) + len(user)
    return {"chars": total, "tokens": count(system) + count(user), "system_chars": len(system),
            "user_chars": len(user), "reference_fraction": round(len(system) / total, 3) if total else 0.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", help="comma-separated suite tasks (default: a spread of classes)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    names = args.tasks.split(",") if args.tasks else TASKS
    how, count = tokenizer()
    plan = {"regions": [], "strategy": "", "rewrites": [], "notes": ""}
    fb = Feedback(False, "compile", "ERROR[AffineError] candidate.asp:6:12 stream 'xs' is already consumed")
    rows = []
    for name in names:
        ctx = task_context(load_task(ROOT / "evals" / "suite" / f"{name}.py"))
        row = {"task": name}
        for ref in ("full", "compact"):
            w = LLMWorker(NoClient(), max_prompt_tokens=40000, reference=ref)
            first = measure(w.messages(ctx, plan, None, [], 1), count)
            w._last[ctx.task.name] = {"source": KERNEL, "parse_error": None, "requests": []}
            retry = measure(w.messages(ctx, plan, fb, [], 2), count)
            row[f"worker_{ref}"] = {"first": first, "retry": retry, "examples": w.examples,
                                    "reference_left_out": w.omitted}
        row["planner"] = measure(LLMPlanner(NoClient()).messages(ctx, []), count)
        row["reflector"] = measure(LLMReflector(NoClient()).messages(ctx, plan, Candidate("kernel", KERNEL), fb, 1),
                                   count)
        rows.append(row)
        print(f"{name}: worker {row['worker_full']['first']['chars']:,} -> {row['worker_compact']['first']['chars']:,} "
              f"chars", file=sys.stderr)

    def mean(path):
        vals = []
        for r in rows:
            v = r
            for k in path:
                v = v[k]
            vals.append(v)
        return round(sum(vals) / len(vals), 3)

    out = {"tokens": how, "max_prompt_tokens": 40000, "tasks": rows,
           "summary": {"worker_first_chars_before": mean(("worker_full", "first", "chars")),
                       "worker_first_chars_after": mean(("worker_compact", "first", "chars")),
                       "worker_first_tokens_before": mean(("worker_full", "first", "tokens")),
                       "worker_first_tokens_after": mean(("worker_compact", "first", "tokens")),
                       "worker_reference_fraction_before": mean(("worker_full", "first", "reference_fraction")),
                       "worker_reference_fraction_after": mean(("worker_compact", "first", "reference_fraction")),
                       "worker_retry_tokens_after": mean(("worker_compact", "retry", "tokens")),
                       "planner_tokens": mean(("planner", "tokens")),
                       "planner_reference_fraction": mean(("planner", "reference_fraction")),
                       "reflector_tokens": mean(("reflector", "tokens"))}}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
