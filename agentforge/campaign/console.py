"""What a person (or a script) sees of a campaign: live progress, then a summary table.

Three modes: ``rich`` (a live progress line: tasks done / verified / failing, the tasks running,
attempts, tokens and cost so far, elapsed and an estimate of what remains), ``quiet`` (only the
summary) and ``jsonl`` (every event as one JSON line on stdout, for scripts and CI).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class CampaignView:
    """An ``on_event`` sink for :func:`agentforge.campaign.run_campaign`."""

    def __init__(self, mode: str = "rich", stream: TextIO | None = None):
        self.mode = mode
        self.stream = stream or sys.stdout
        self.console = Console(file=self.stream, stderr=False, highlight=False)
        self.progress: Progress | None = None
        self.bar = None
        self.running: dict[str, int] = {}
        self.total = self.done = self.verified = self.failed = self.attempts = 0
        self.tokens, self.cost = 0, 0.0
        self.streamed: dict[str, list] = {}     # per running task: tokens and cost of its streamed calls
        self.t0 = time.monotonic()
        self.durations: list[float] = []
        self.workers = 1

    # ------------------------------------------------------------------ events

    def __call__(self, e: dict) -> None:
        if self.mode == "jsonl":
            self.stream.write(json.dumps(e, sort_keys=True, default=str) + "\n")
            self.stream.flush()
            return
        kind = e["event"]
        if kind == "campaign_start":
            self.total, self.done, self.workers = e["tasks"], e["done"], max(1, e.get("workers", 1))
            self.verified, self.failed = e.get("verified", 0), e.get("failed", 0)
            self.attempts, self.tokens, self.cost = e.get("attempts", 0), e.get("tokens", 0), e.get("cost", 0.0)
            if self.mode == "rich":
                self.console.print(f"[bold]campaign[/] {e['run']} -> {escape(e['run_dir'])} "
                                   f"({'resumed, ' if e['resume'] else ''}{e['todo']} of {e['tasks']} tasks to do, "
                                   f"{e['workers']} worker(s), {e['llm']}, {e['machine']})")
                self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                         TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                                         console=self.console, transient=False)
                self.progress.start()
                self.bar = self.progress.add_task("tasks", total=self.total, completed=self.done, status="")
        elif kind == "task_start":
            self.running[e["task"]] = 0
        elif kind == "llm_call":      # counted as it happens; task_end adds only what was not streamed
            call = e.get("call") or {}
            used = (call.get("prompt_tokens") or 0) + (call.get("completion_tokens") or 0)
            self.tokens += used
            self.cost += call.get("cost") or 0.0
            seen = self.streamed.setdefault(e.get("task"), [0, 0.0])
            seen[0] += used
            seen[1] += call.get("cost") or 0.0
        elif kind == "attempt":
            self.attempts += 1
            self.running[e["task"]] = e["attempt"] + 1
        elif kind == "task_end":
            self.running.pop(e["task"], None)
            if not e.get("stopped"):        # a task stopped by a budget is pending again, not done
                self.done += 1
                self.verified += bool(e["verified"])
                self.failed += not e["verified"]
            seen = self.streamed.pop(e["task"], [0, 0.0])
            self.tokens += max(0, (e.get("tokens") or 0) - seen[0])
            self.cost += max(0.0, (e.get("cost") or 0.0) - seen[1])
            if e.get("seconds"):
                self.durations.append(e["seconds"])
            if self.mode == "rich" and not e["verified"]:
                why = escape(str(e.get("reason") or e.get("error_code")))   # reasons quote sizes in [..]
                self.console.print(f"  [red]failed[/] {escape(e['task'])}: {why}")
        elif kind == "campaign_end" and self.progress is not None:
            self.progress.stop()
        self._refresh()

    def _refresh(self) -> None:
        if self.progress is None or self.bar is None:
            return
        elapsed = time.monotonic() - self.t0
        left = self.total - self.done
        eta = ""
        if self.durations and left:
            per = sum(self.durations) / len(self.durations) / self.workers
            eta = f", ~{per * left:.0f}s left"
        cur = escape(", ".join(f"{t}#{a}" for t, a in list(self.running.items())[:3]))
        status = (f"verified {self.verified} failing {self.failed} | attempts {self.attempts} | "
                  f"tokens {self.tokens} ${self.cost:.4f} | {elapsed:.0f}s{eta}" + (f" | {cur}" if cur else ""))
        self.progress.update(self.bar, completed=self.done, status=status)

    # ------------------------------------------------------------------ the end

    def summary(self, result: Any) -> None:
        if self.mode == "jsonl":
            self.stream.write(json.dumps({"event": "summary", **result.to_dict()}, default=str) + "\n")
            return
        t = Table(title=f"campaign {result.run_id}: {result.status}"
                  + (f" ({escape(result.stop_reason)})" if result.stop_reason else ""))
        for col, just in (("task", "left"), ("status", "left"), ("attempts", "right"), ("speedup", "right"),
                          ("roofline", "right"), ("plan", "left")):
            t.add_column(col, justify=just)
        for r in result.tasks:
            style = {"verified": "green", "failed": "red"}.get(r["status"], "yellow")
            t.add_row(escape(r["name"]), f"[{style}]{r['status']}[/]", str(r["attempts"]),
                      f"{r['speedup']:.2f}x" if r["speedup"] else "-",
                      f"{r['roofline_fraction']:.0%}" if r["roofline_fraction"] is not None else "-",
                      r["plan_source"] or "-")
        tot = result.totals
        self.console.print(t)
        self.console.print(
            f"verified {tot['verified']}/{tot['tasks']}  fast_1 {tot['fast_1']:.2f}  fast_2 {tot['fast_2']:.2f}  "
            f"LLM calls {tot['llm_calls']}  tokens {tot['tokens']}  cost ${tot['cost']:.4f}  "
            f"plan-cache hit rate {tot['plan_cache_hit_rate']:.0%}  wall {result.wall_seconds:.1f}s")
        if result.stop_reason:
            self.console.print(f"stopped: {escape(result.stop_reason)}; continue with --resume --out {result.run_dir}",
                               soft_wrap=True)
        self.console.print(f"library: {result.library}   run: {result.run_dir}", soft_wrap=True)


__all__ = ["CampaignView"]
