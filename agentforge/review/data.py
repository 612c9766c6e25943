"""What a review shows, read from a campaign run directory or a bare kernel library.

:func:`load_review` gathers everything once into plain records (:class:`Review`,
:class:`TaskView`, :class:`CandidateView`), so the HTML report and the terminal view are pure
functions of them and cannot disagree. A run directory gives the campaign's whole story (the
tasks, every candidate's lineage and evaluation, LLM tokens and cost, events); a bare library
gives only its verified kernels, and the review says so instead of inventing the rest.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AgentforgeError
from .profile import KernelTiming, baseline_traffic, kernel_timings

NO_RUN_NOTE = ("no run database (run.sqlite): this is a bare kernel library, so the lineage of attempts, "
               "failed tasks, LLM tokens and cost are not available")


class ReviewError(AgentforgeError):
    """The path given to ``review``/``show`` is not a run directory or a kernel library."""


@dataclass
class CandidateView:
    """One attempt of one worker, with its evaluation and its diff from the worker's previous one."""
    id: int
    attempt: int
    worker: int
    parent: int | None
    kind: str                       # "kernel" | "plan" | "none" (the worker produced nothing)
    author: str | None
    text: str                       # ASP source, or the plan as pretty JSON
    evaluation: dict
    plan: dict | None = None
    diff: str = ""                  # unified diff from the parent ("" for a root or no change)
    best: bool = False
    children: list["CandidateView"] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return bool(self.evaluation.get("verified"))

    @property
    def feedback(self) -> str:
        """What the evaluator told the agent (reason, or the error message)."""
        ev = self.evaluation
        if ev.get("verified"):
            return "verified"
        msg = ev.get("reason") or ""
        err = ev.get("error")
        if isinstance(err, dict) and err.get("message") and err["message"] not in msg:
            msg = f"{msg}\n{err['message']}".strip()
        return msg or "rejected"


@dataclass
class Roofline:
    """A kernel and its op-by-op baseline placed on the machine's roofline (None where unknown)."""
    peak_flops: float
    hbm_bandwidth: float            # bytes/s
    flops: float | None = None
    kernel_bytes: float | None = None
    kernel_seconds: float | None = None
    baseline_bytes: float | None = None
    baseline_seconds: float | None = None

    def point(self, which: str) -> tuple[float, float] | None:
        """(arithmetic intensity flop/byte, attained flop/s) of 'kernel' or 'baseline'."""
        b, s = (self.kernel_bytes, self.kernel_seconds) if which == "kernel" else \
            (self.baseline_bytes, self.baseline_seconds)
        if not self.flops or not b or not s:
            return None
        return self.flops / b, self.flops / s


@dataclass
class TaskView:
    """Everything the review shows about one task."""
    index: int
    name: str
    status: str                     # pending | running | verified | failed (library-only: verified)
    group: str | None = None
    level: int | None = None
    attempts: int | None = None
    speedup: float | None = None
    roofline_fraction: float | None = None
    simulated_seconds: float | None = None
    baseline_seconds: float | None = None
    plan_cache_hit: bool | None = None
    plan_source: str | None = None
    reason: str | None = None
    reason_code: str | None = None
    started: float | None = None
    finished: float | None = None
    seconds: float | None = None
    tokens: int = 0
    cost: float = 0.0
    llm_calls: int = 0
    kernel_id: str | None = None
    kind: str | None = None         # the final answer's kind: kernel | plan
    files: list[tuple[str, str]] = field(default_factory=list)   # (file name, ASP text), execution order
    final_is_verified: bool = False
    plan: dict | None = None
    plans: list[dict] = field(default_factory=list)
    candidates: list[CandidateView] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    verified_at: list[dict] = field(default_factory=list)
    timings: list[KernelTiming] = field(default_factory=list)
    roofline: Roofline | None = None
    provenance: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def plan_cache_tier(self) -> str | None:
        """Which tier of the plan cache served the task: "exact" (same computation),
        "structural" (same structure of fused regions, the plan re-bound), "false hit" (served,
        failed verification, the planner was asked), "miss", or None (no cache was used). Read
        from the loop's notes ("plan cache: <tier> hit ..."); an older run says only "hit"."""
        tier = None
        for n in self.notes:
            if n.startswith("plan cache: false hit"):
                return "false hit"
            for t in ("exact", "structural"):
                if n.startswith(f"plan cache: {t} hit"):
                    tier = t
            if tier is None and n.startswith("plan cache: miss"):
                tier = "miss"
        if tier is None and self.plan_cache_hit:
            return "hit"
        return tier

    @property
    def roots(self) -> list[CandidateView]:
        return [c for c in self.candidates if c.parent is None or c.parent not in {x.id for x in self.candidates}]


@dataclass
class Review:
    """A whole campaign (or library) ready to render."""
    source: Path
    has_run: bool
    run: dict
    manifest: dict
    machine: str
    totals: dict
    tasks: list[TaskView]
    notes: list[str] = field(default_factory=list)

    def task(self, name: str) -> TaskView:
        for t in self.tasks:
            if t.name == name:
                return t
        names = ", ".join(t.name for t in self.tasks[:20])
        raise ReviewError(f"{self.source}: no task {name!r} in this {'run' if self.has_run else 'library'}"
                          f" (tasks: {names}{', ...' if len(self.tasks) > 20 else ''})")


# ---------------------------------------------------------------------------- helpers (pure)

def candidate_text(kind: str, source: str | None, plan: dict | None) -> str:
    """The text a candidate is reviewed (and diffed) as: ASP source, or the plan as pretty JSON."""
    if kind == "plan" and plan is not None:
        return json.dumps(plan, indent=2, sort_keys=True) + "\n"
    return source or ""


def unified_diff(old: str, new: str, old_name: str, new_name: str) -> str:
    """A unified diff of two candidate texts ("" when equal)."""
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        old_name, new_name, n=2))


def build_lineage(rows: list[dict], best_id: int | None) -> list[CandidateView]:
    """Candidates from run-db rows, each with its diff from its parent and its children linked."""
    by_id: dict[int, CandidateView] = {}
    out = []
    for r in rows:
        c = CandidateView(id=r["id"], attempt=r["attempt"], worker=r["worker"], parent=r.get("parent"),
                      kind=r.get("kind") or "none", author=r.get("author"),
                      text=candidate_text(r.get("kind") or "none", r.get("source"), r.get("plan")),
                      evaluation=r.get("evaluation") or {}, plan=r.get("plan"), best=r["id"] == best_id)
        parent = by_id.get(c.parent) if c.parent is not None else None
        if parent is not None:
            c.diff = unified_diff(parent.text, c.text, f"attempt {parent.attempt} (worker {parent.worker})",
                                  f"attempt {c.attempt} (worker {c.worker})")
            parent.children.append(c)
        by_id[c.id] = c
        out.append(c)
    return out


def task_usage(calls: list[dict]) -> tuple[int, float, int]:
    """(tokens, cost, calls) of a task's LLM calls."""
    tokens = sum((c.get("prompt_tokens") or 0) + (c.get("completion_tokens") or 0) for c in calls)
    return tokens, float(sum(c.get("cost") or 0.0 for c in calls)), len(calls)


def _peak(machine: str, dtypes: list[str]) -> tuple[float, float]:
    import asp_lang

    m = asp_lang.load_machine(machine)
    dt = next((d for d in dtypes if d in ("f32", "bf16", "f16")), "bf16")
    return m.peak_tflops(dt) * 1e12, m.hbm.bandwidth_gbs * 1e9


# ---------------------------------------------------------------------------- loading

def resolve(path: str | Path) -> tuple[Path | None, Path | None]:
    """(run.sqlite, library dir) of a path that is a run directory, its run.sqlite or a library."""
    p = Path(path)
    if not p.exists():
        raise ReviewError(f"{p}: no such directory\n  how to fix: give a campaign's run directory "
                          f"(the --out of `agentforge campaign`) or a kernel library directory")
    if p.is_file():
        if p.name == "run.sqlite":
            p = p.parent
        elif p.name == "manifest.json":
            return None, p.parent
        else:
            raise ReviewError(f"{p}: a file, not a run directory or a kernel library")
    db = p / "run.sqlite"
    if db.is_file():
        return db, (p / "library") if (p / "library" / "manifest.json").is_file() else None
    if (p / "manifest.json").is_file():
        return None, p
    raise ReviewError(f"{p}: neither a campaign run directory (no run.sqlite) nor a kernel library "
                      f"(no manifest.json)\n  how to fix: give the --out directory of `agentforge campaign`, "
                      f"or its library/ folder")


def load_review(path: str | Path, timing: bool = True, only: str | None = None) -> Review:
    """Read a run directory or library into a :class:`Review`.

    ``timing`` recomputes each kernel's timing breakdown and the baseline's traffic (the
    roofline chart's second point); ``only`` limits the per-task detail work to one task
    (what ``agentforge show`` needs).
    """
    from ..library import Library, LibraryError

    db_path, lib_path = resolve(path)
    lib = None
    if lib_path is not None:
        try:
            lib = Library.open(lib_path)
        except LibraryError as e:
            raise ReviewError(str(e)) from None
    entries = {}
    if lib is not None:
        for e in lib.entries:
            entries.setdefault(e.id, e)
    if db_path is None:
        assert lib is not None
        return _from_library(Path(path), lib, timing, only)
    return _from_run(Path(path), db_path, lib, entries, timing, only)


def _attach_entry(t: TaskView, lib: Any, e: Any, machine: str, timing: bool) -> None:
    """Fill a task's final kernel, plan, checks, timing and roofline from its library entry."""
    t.kernel_id, t.kind, t.plan, t.final_is_verified = e.id, e.kind, e.plan, True
    t.files = [(Path(f).name, (lib.root / f).read_text(errors="replace")) for f in e.files]
    t.verified_at = list(e.verified_at)
    t.provenance = dict(vars(e.provenance))
    t.speedup = t.speedup if t.speedup is not None else e.speedup
    t.roofline_fraction = t.roofline_fraction if t.roofline_fraction is not None else e.roofline_fraction
    t.simulated_seconds = t.simulated_seconds or e.simulated_seconds
    t.baseline_seconds = t.baseline_seconds or e.baseline_seconds
    if t.plan_source is None:
        t.plan_source = e.provenance.plan_source
    if not timing:
        return
    task_path = lib.root / e.task_file
    t.timings = kernel_timings(e.kind, [(Path(f).name, txt) for f, (_, txt) in zip(e.files, t.files)], machine,
                               task_path)
    try:
        peak, bw = _peak(machine, list(e.dtypes))
    except Exception:  # noqa: BLE001 - an unknown machine: no roofline chart
        return
    ok = [k for k in t.timings if k.error is None]
    flops = sum(k.flops or 0.0 for k in ok) if ok and len(ok) == len(t.timings) else None
    kbytes = sum(k.hbm_bytes or 0.0 for k in ok) if flops is not None else e.hbm_bytes
    base = baseline_traffic(str(task_path), machine)
    t.roofline = Roofline(peak, bw, flops, kbytes, e.simulated_seconds,
                          base[1] if base else None, e.baseline_seconds)


def _from_library(src: Path, lib: Any, timing: bool, only: str | None) -> Review:
    from ..scoring import fast_fraction

    machine = lib.manifest.get("machine", "sn40l")
    tasks = []
    for i, e in enumerate(lib.entries):
        t = TaskView(index=i, name=e.task, status="verified", plan_source=e.provenance.plan_source)
        _attach_entry(t, lib, e, machine, timing and (only is None or only == e.task))
        t.finished = _iso_ts(e.provenance.date)
        tasks.append(t)
    verified = len(tasks)
    totals = {"tasks": verified, "verified": verified, "failed": 0, "pending": 0, "attempts": None,
              "tokens": None, "cost": None, "llm_calls": None,
              "fast_1": fast_fraction((t.speedup for t in tasks), verified, 1.0),
              "fast_2": fast_fraction((t.speedup for t in tasks), verified, 2.0)}
    manifest = {k: v for k, v in lib.manifest.items() if k != "kernels"}
    return Review(src, False, {}, manifest, machine, totals, tasks, [NO_RUN_NOTE])


def _iso_ts(s: str | None) -> float | None:
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(s).timestamp() if s else None
    except ValueError:
        return None


def _from_run(src: Path, db_path: Path, lib: Any, entries: dict, timing: bool, only: str | None) -> Review:
    from ..campaign.rundb import RunDB

    db = RunDB(db_path)
    try:
        run = db.run()
        if run is None:
            raise ReviewError(f"{db_path}: the run database holds no run (was the campaign started?)")
        manifest = run.get("manifest") or {}
        machine = manifest.get("machine") or (lib.manifest.get("machine") if lib else None) or "sn40l"
        notes = []
        if lib is None:
            notes.append("no library/ next to run.sqlite: final kernels come from the run database's best "
                         "candidates, without a timing breakdown")
        all_calls = db.llm_calls()
        tasks = []
        for i, r in enumerate(db.tasks()):
            detail = only is None or only == r["name"]
            calls = [c for c in all_calls if c.get("task") == r["name"]]
            tok, cost, n = task_usage(calls)
            t = TaskView(
                index=i, name=r["name"], status=r["status"], group=r.get("group_name"), level=r.get("level"),
                attempts=r.get("attempts"), speedup=r.get("speedup"), roofline_fraction=r.get("roofline_fraction"),
                simulated_seconds=r.get("simulated_seconds"), baseline_seconds=r.get("baseline_seconds"),
                plan_cache_hit=None if r.get("plan_cache_hit") is None else bool(r["plan_cache_hit"]),
                plan_source=r.get("plan_source"), reason=r.get("reason"), reason_code=r.get("reason_code"),
                started=r.get("started"), finished=r.get("finished"), seconds=r.get("seconds"),
                tokens=tok, cost=cost, llm_calls=n, kernel_id=r.get("kernel_id"), notes=list(r.get("notes") or []))
            if detail:
                t.candidates = build_lineage(db.candidates(r["name"]), r.get("best_candidate"))
                t.plans = db.plans(r["name"])
                best = next((c for c in t.candidates if c.best), None)
                if best is not None:
                    t.checks = list(best.evaluation.get("checks") or [])
                    t.kind = best.kind
                    t.plan = best.plan if best.plan is not None else next((p["plan"] for p in t.plans), None)
                    if best.kind == "kernel":
                        t.files = [("kernel.asp", best.text)]
                e = entries.get(r.get("kernel_id") or "")
                if e is not None:
                    _attach_entry(t, lib, e, machine, timing)
            tasks.append(t)
        totals = db.totals()
        events = db.events()
    finally:
        db.close()
    run = dict(run)
    run["events"] = len(events)
    return Review(src, True, run, manifest, machine, totals, tasks, notes)


__all__ = ["Review", "TaskView", "CandidateView", "Roofline", "ReviewError", "load_review", "resolve",
           "build_lineage", "unified_diff", "candidate_text", "task_usage", "NO_RUN_NOTE"]
