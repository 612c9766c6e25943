"""``agentforge show``: one task of a review in the terminal (rich), the same facts as the HTML.

Built from the same :class:`~agentforge.review.data.TaskView` as the report. Untrusted text
(kernel source, task names, evaluator and LLM messages) goes into ``rich.text.Text`` objects,
never into console markup strings, so a ``[bold]`` in a kernel comment is shown, not styled.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from .data import CandidateView, Review, TaskView
from .highlight import to_rich
from .html import fmt_bytes, fmt_num, fmt_pct, fmt_seconds, fmt_x

_STATUS_STYLE = {"verified": "bold green", "failed": "bold red", "running": "yellow", "pending": "dim"}


def _kv(rows: list[tuple[str, Any]]) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="dim")
    t.add_column()
    for k, v in rows:
        t.add_row(k, v if isinstance(v, Text) else Text(str(v)))
    return t


def header(review: Review, t: TaskView) -> Panel:
    status = Text(t.status, style=_STATUS_STYLE.get(t.status, ""))
    rows: list[tuple[str, Any]] = [
        ("status", status + Text(f"  {t.reason_code}: {t.reason}" if t.reason else "")),
        ("speedup", fmt_x(t.speedup)), ("roofline", fmt_pct(t.roofline_fraction)),
        ("simulated / baseline", f"{fmt_seconds(t.simulated_seconds)} / {fmt_seconds(t.baseline_seconds)}"),
        ("answer", f"{t.kind or '-'}" + ("" if t.final_is_verified or not t.kind else " (best attempt, not verified)")),
        ("plan", (t.plan_source or "-") + ("" if t.plan_cache_hit is None else
                                           f" (plan cache {'hit' if t.plan_cache_hit else 'miss'}"
                                           + (f", {t.plan_cache_tier}" if t.plan_cache_tier in
                                              ("exact", "structural", "false hit") else "") + ")")),
    ]
    if review.has_run:
        rows += [("attempts", fmt_num(t.attempts)), ("LLM", f"{t.llm_calls} calls, {t.tokens:,} tokens, ${t.cost:.4f}")]
    if t.kernel_id:
        rows.append(("kernel id", t.kernel_id))
    for n in [*review.notes, *t.notes]:
        rows.append(("note", n))
    return Panel(_kv(rows), title=Text(t.name, style="bold"), title_align="left")


def sources(t: TaskView) -> list[Panel]:
    return [Panel(to_rich(text.rstrip("\n")), title=Text(name), title_align="left", border_style="blue")
            for name, text in t.files]


def checks_table(t: TaskView) -> Table | None:
    if not t.checks and not t.verified_at:
        return None
    tab = Table(title="correctness checks", title_justify="left")
    if t.checks:
        for col in ("sizes", "seed", "inputs", "result", "max abs err"):
            tab.add_column(col)
        for c in t.checks:
            ok = c.get("passed")
            tab.add_row(Text(" ".join(f"{k}={v}" for k, v in (c.get("sizes") or {}).items())), str(c.get("seed")),
                        Text(str(c.get("distribution"))),
                        Text("pass" if ok else str(c.get("code") or "fail"), style="green" if ok else "red"),
                        fmt_num(c.get("max_abs_error")))
    else:
        tab.add_column("sizes")
        tab.add_column("seeds / inputs")
        for v in t.verified_at:
            tab.add_row(Text(" ".join(f"{k}={s}" for k, s in v["sizes"].items())),
                        Text(f"{v.get('seeds')} {v.get('distributions')}"))
    return tab


def timing_tables(t: TaskView) -> list[Any]:
    out: list[Any] = []
    for k in t.timings:
        if k.error:
            out.append(Text(f"{k.file}: timing unavailable: {k.error}", style="red"))
            continue
        tab = Table(title=Text(f"timing: {k.file} ({fmt_seconds(k.seconds)}, roofline {fmt_pct(k.roofline_fraction)}, "
                               f"{k.roofline_limit}-bound; bottleneck {k.bottleneck_op} on {k.bottleneck}; "
                               f"PCU {fmt_pct(k.pcu_utilisation)}, HBM bw {fmt_pct(k.hbm_bandwidth_fraction)}, "
                               f"{fmt_bytes(k.hbm_bytes)} HBM; at {k.at})"), title_justify="left")
        for col in ("#", "op", "line", "limit", "busy cycles", "", "par"):
            tab.add_column(col)
        for o in k.ops:
            bar = Text("#" * max(1, round(o.share * 20)), style="red" if o.share >= 0.999 else "blue")
            tab.add_row(str(o.index), o.op, str(o.line), o.limit, f"{o.busy_cycles:,.0f}", bar, str(o.par))
        out.append(tab)
        if k.sockets:
            out.append(socket_timelines(k))
    return out


def socket_timelines(k) -> Table:
    """A kernel on several sockets: one timeline per socket, every operator's busy window as a
    bar (its last result at the bar's end), on one time scale."""
    total = max((s.cycles for s in k.sockets), default=0.0)
    tab = Table(title=Text(f"sockets: {k.file} ({len(k.sockets)} sockets, the slowest {total:,.0f} cycles)"),
                title_justify="left")
    for col in ("socket", "op", "line", "timeline", "busy cycles"):
        tab.add_column(col)
    width = 40
    for s in k.sockets:
        for i, (o, left, length) in enumerate(s.bars(width, total)):
            lo = min(int(left), width - 1)
            n = max(1, min(width - lo, round(length)))
            bar = Text(" " * lo + "=" * n + " " * (width - lo - n),
                       style="red" if o["op"] in ("all_reduce", "all_gather", "reduce_scatter", "send", "recv")
                       else "blue")
            tab.add_row(str(s.socket) if i == 0 else "", o["op"], str(o["line"]), bar, f"{o['busy_cycles']:,.0f}")
    return tab


def _cand_label(c: CandidateView) -> Text:
    ok = c.verified
    t = Text()
    t.append("verified" if ok else str(c.evaluation.get("reason_code") or "rejected"), style="green" if ok else "red")
    t.append(f"  attempt {c.attempt}, worker {c.worker}, {c.kind}")
    if c.author:
        t.append(f" by {c.author}")
    if c.evaluation.get("speedup"):
        t.append(f", {fmt_x(c.evaluation['speedup'])}")
    if c.best:
        t.append("  [best]", style="bold cyan")
    return t


def _diff_text(diff: str, max_lines: int) -> Text:
    out = Text()
    lines = diff.splitlines()
    for line in lines[:max_lines]:
        style = ("bold" if line.startswith(("---", "+++")) else "green" if line.startswith("+")
                 else "red" if line.startswith("-") else "cyan" if line.startswith("@@") else "")
        out.append(line + "\n", style=style)
    if len(lines) > max_lines:
        out.append(f"... {len(lines) - max_lines} more diff lines (see the HTML report)\n", style="dim")
    return out


def lineage_tree(review: Review, t: TaskView, max_diff_lines: int = 40) -> Tree | Text:
    if not review.has_run:
        return Text("lineage not available: no run database (bare library)", style="yellow")
    if not t.candidates:
        return Text("no candidates recorded", style="dim")
    tree = Tree(Text("lineage", style="bold"))

    def add(node: Tree, c: CandidateView) -> None:
        parts: list[Any] = [_cand_label(c)]
        if not c.verified:
            parts.append(Text("evaluator: " + c.feedback, style="yellow"))
        if c.diff:
            parts.append(_diff_text(c.diff, max_diff_lines))
        child = node.add(Group(*parts))
        for k in c.children:
            add(child, k)

    for r in t.roots:
        add(tree, r)
    return tree


def render_task(review: Review, t: TaskView, console: Console) -> None:
    """Print one task: header, final ASP, checks, timing, lineage."""
    console.print(header(review, t))
    for p in sources(t):
        console.print(p)
    tab = checks_table(t)
    if tab is not None:
        console.print(tab)
    for x in timing_tables(t):
        console.print(x)
    console.print(lineage_tree(review, t))


__all__ = ["render_task", "lineage_tree", "header", "checks_table", "timing_tables", "socket_timelines"]
