"""What a person (or a script) sees of a campaign: live progress, then a summary table.

Four modes: ``rich`` (a live progress line: tasks done / verified / failing, the tasks running,
attempts, tokens and cost so far, elapsed and an estimate of what remains), ``plain`` (one line
per finished task, for a pipe, a log or CI: ``rich`` turns into it when the output is not a
terminal, where a live line would be cut short), ``quiet`` (only the summary) and ``jsonl``
(every event as one JSON line on stdout, for scripts and CI).

The summary says what its numbers mean: speedups are summed up by their geometric mean (one
outlier cannot dominate it), shown beside the roofline fraction, and outliers are flagged.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


#: a speedup this many times above or below the geometric mean of a run's speedups is an outlier
OUTLIER_FACTOR = 10.0
#: with ``plain`` progress, a line that nothing finished comes at most this often (seconds)
HEARTBEAT_S = 30.0
#: the summary's least width when the output is not a terminal
LOG_WIDTH = 120

FAST_WORDS = ("fast_1: the share of all tasks whose kernel is verified and faster than the op-by-op "
              "baseline; fast_2: verified and more than 2x faster")
SPEEDUP_WORDS = ("speedup: the op-by-op baseline's time over the kernel's on the emulated chip; roofline: "
                 "the share of the machine's peak (compute or HBM bandwidth, whichever bounds the kernel) "
                 "the kernel reaches")


def speedup_stats(speedups: dict[str, float | None]) -> dict:
    """Speedups of verified tasks summed up for a reader: their geometric mean (a ratio's average:
    2x and 0.5x even out, and one huge value moves it far less than it moves the arithmetic
    mean), the outliers (more than :data:`OUTLIER_FACTOR` times above or below that mean, most
    often a baseline artefact worth a look) and the geometric mean without them."""
    xs = {k: v for k, v in speedups.items() if v and v > 0}

    def gm(vals: list[float]) -> float | None:
        return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None

    mean = gm(list(xs.values()))
    outliers = sorted((k for k, v in xs.items() if mean and abs(math.log(v / mean)) > math.log(OUTLIER_FACTOR)),
                      key=lambda k: -xs[k])
    rest = [v for k, v in xs.items() if k not in outliers]
    return {"n": len(xs), "geomean": mean, "outliers": outliers,
            "geomean_without_outliers": gm(rest) if outliers else mean}


def _roof(f: float | None) -> str:
    return f"{f:.0%}" if f is not None else "-"


class CampaignView:
    """An ``on_event`` sink for :func:`agentforge.campaign.run_campaign`."""

    def __init__(self, mode: str = "rich", stream: TextIO | None = None, force_terminal: bool | None = None):
        self.mode = mode
        self.stream = stream or sys.stdout
        self.console = Console(file=self.stream, stderr=False, highlight=False, force_terminal=force_terminal)
        if not self.console.is_terminal:
            # a pipe, a log file, CI: no width to fit, so 80 columns (or COLUMNS) would cut task names short
            width = max(LOG_WIDTH, int(os.environ.get("COLUMNS", "0")) if os.environ.get("COLUMNS", "").isdigit() else 0)
            self.console = Console(file=self.stream, stderr=False, highlight=False, width=width)
        if mode == "rich" and not self.console.is_terminal:
            self.mode = "plain"      # lines, not a live bar cut to "58… 0:0…"
        self.last_line = time.monotonic()
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
            if self.mode == "plain":
                self._line(f"campaign {e['run']} -> {e['run_dir']} ({'resumed, ' if e['resume'] else ''}"
                           f"{e['todo']} of {e['tasks']} tasks to do, {e['workers']} worker(s), {e['llm']}, "
                           f"{e['machine']}); a line per finished task follows")
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
            if self.mode == "plain":
                self._task_line(e)
            if self.mode == "rich" and not e["verified"]:
                why = escape(str(e.get("reason") or e.get("error_code")))   # reasons quote sizes in [..]
                self.console.print(f"  [red]failed[/] {escape(e['task'])}: {why}")
        elif kind == "campaign_end" and self.progress is not None:
            self.progress.stop()
        if self.mode == "plain" and kind not in ("campaign_start", "task_end", "campaign_end") \
                and time.monotonic() - self.last_line >= HEARTBEAT_S and self.running:
            self._line(f"[{self.done}/{self.total}] running {', '.join(list(self.running)[:4])}"
                       + (f" and {len(self.running) - 4} more" if len(self.running) > 4 else "")
                       + f"  ({self._counts()})")
        self._refresh()

    # ------------------------------------------------------------------ plain lines

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
        self.last_line = time.monotonic()

    def _counts(self) -> str:
        return f"{self.verified} verified, {self.failed} failed, {time.monotonic() - self.t0:.0f}s"

    def _task_line(self, e: dict) -> None:
        """One finished task: its name, what became of it, speedup beside roofline, the counts."""
        if e.get("stopped"):
            what = f"stopped by a budget, pending again ({e.get('reason')})"
        elif e["verified"]:
            sp = e.get("speedup")
            what = ("verified" + (f", {sp:.2f}x" if sp else "") + f", roofline {_roof(e.get('roofline_fraction'))}"
                    + (", plan cache hit" if e.get("plan_cache_hit") else ""))
        else:
            what = f"FAILED: {e.get('reason') or e.get('error_code')}"
        self._line(f"[{self.done:>{len(str(self.total))}}/{self.total}] {e['task']}: {what}  ({self._counts()})")

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
        stats = speedup_stats({r["name"]: r["speedup"] for r in result.tasks if r["status"] == "verified"})
        t = Table(title=f"campaign {result.run_id}: {result.status}"
                  + (f" ({escape(result.stop_reason)})" if result.stop_reason else ""))
        # roofline first: it is measured against the chip, the speedup against the op-by-op baseline
        for col, just in (("task", "left"), ("status", "left"), ("attempts", "right"), ("roofline", "right"),
                          ("speedup", "right"), ("plan", "left")):
            t.add_column(col, justify=just, no_wrap=col == "task",        # a task's name is never cut
                         min_width=max([len(r["name"]) for r in result.tasks] + [4]) if col == "task" else None)
        for r in result.tasks:
            style = {"verified": "green", "failed": "red"}.get(r["status"], "yellow")
            flag = " !" if r["name"] in stats["outliers"] else ""
            t.add_row(escape(r["name"]), f"[{style}]{r['status']}[/]", str(r["attempts"]),
                      _roof(r["roofline_fraction"]), f"{r['speedup']:.2f}x{flag}" if r["speedup"] else "-",
                      r["plan_source"] or "-")
        tot = result.totals
        roofs = sorted(r["roofline_fraction"] for r in result.tasks
                       if r["status"] == "verified" and r.get("roofline_fraction") is not None)
        self.console.print(t)
        self.console.print(
            f"verified {tot['verified']}/{tot['tasks']}  "
            + (f"roofline {_roof(statistics.median(roofs))} (median of {len(roofs)})  " if roofs else "")
            + f"fast_1 {tot['fast_1']:.0%}  fast_2 {tot['fast_2']:.0%}  "
            + (f"speedup {stats['geomean']:.2f}x (geometric mean of {stats['n']})  " if stats["geomean"] else "")
            + f"LLM calls {tot['llm_calls']}  tokens {tot['tokens']}  cost ${tot['cost']:.4f}  "
            f"plan-cache hit rate {tot['plan_cache_hit_rate']:.0%}  wall {result.wall_seconds:.1f}s", soft_wrap=True)
        self.console.print(f"  {FAST_WORDS}.\n  {SPEEDUP_WORDS}.", soft_wrap=True, style="dim")
        if stats["outliers"]:
            rows = {r["name"]: r for r in result.tasks}
            self.console.print(
                f"  ! outlier{'s' if len(stats['outliers']) > 1 else ''} (more than {OUTLIER_FACTOR:g}x off the "
                f"geometric mean; often a baseline artefact, worth a look): "
                + ", ".join(f"{escape(n)} {rows[n]['speedup']:.3g}x" for n in stats["outliers"])
                + f"; geometric mean without {'them' if len(stats['outliers']) > 1 else 'it'} "
                f"{stats['geomean_without_outliers']:.2f}x", soft_wrap=True)
        if result.stop_reason:
            self.console.print(f"stopped: {escape(result.stop_reason)}; continue with --resume --out {result.run_dir}",
                               soft_wrap=True)
        self.console.print(f"library: {result.library}   run: {result.run_dir}", soft_wrap=True)


__all__ = ["CampaignView", "speedup_stats", "OUTLIER_FACTOR", "FAST_WORDS", "SPEEDUP_WORDS"]
