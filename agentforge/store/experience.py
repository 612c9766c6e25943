"""The experience library: verified answers, one per isomorphism class, shown back as demonstrations.

After the agentic ML-library system (Zhang, Liang, Hsu, Olukotun, ICML 2025): keep one
representative per AST-isomorphism class of correct answers, the shortest; stratify the
earned experiences by success rate into three levels; give demonstrations hard first, then
hard + medium, then all, restarting at hard whenever the pass rate improves.

- **Classes.** An ASP kernel's class is the hash of its *canonical text*: the parsed AST with
  comments dropped and every user identifier (kernel name, parameters, results, sizes, tile
  functions, their parameters and lets, stream names) renamed in order of first appearance
  (``v0, v1, ...`` at kernel scope, ``a0, a1, ...`` inside each tile function), printed by
  ``asp_lang.format_kernel``. A plan's class is the canonical JSON of its regions' templates
  and node groupings (parameters excluded). Classes are per signature key and kind, so the
  same grouping on two different computations is two experiences.
- **Representative.** Within a class the shortest answer is kept: for kernels the length
  of the *normalised* text (``format_kernel`` of the AST without comments, names as written:
  layout and comments do not count, identifier lengths do); for plans the canonical JSON
  length (equal within a class). At equal length the fastest (highest speedup) is kept.
- **Levels.** See :meth:`ExperienceLibrary.levels` (tertiles of the observed success rate).
- **Schedule.** :class:`DemoSchedule`, pure logic; :meth:`ExperienceLibrary.demonstrations`
  serves the levels of a stage.
- **Priors.** The region parameters of the fastest verified plans, per signature class, for
  the offline author's tuner (:meth:`ExperienceLibrary.priors`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .db import Database, Migration, Schema, StoreError, canonical_json, evaluation_summary, speedup_of

if TYPE_CHECKING:
    from agentforge.agents.roles import Demo
    from agentforge.capture import Signature

__all__ = [
    "ExperienceLibrary",
    "DemoSchedule",
    "AddResult",
    "KernelForm",
    "InvalidExperienceError",
    "EXPERIENCE_SCHEMA",
    "LEVELS",
    "STAGE_LEVELS",
    "kernel_form",
    "plan_structure",
    "stratify",
]

#: Levels, hardest first.
LEVELS: tuple[str, ...] = ("hard", "medium", "easy")
#: The levels each schedule stage shows: 0 = hard, 1 = hard + medium, 2 = all.
STAGE_LEVELS: tuple[tuple[str, ...], ...] = (("hard",), ("hard", "medium"), ("hard", "medium", "easy"))

EXPERIENCE_SCHEMA = Schema("experience", (
    Migration(1, "classes, members, attempts, plan priors, schedules", (
        "CREATE TABLE experience_classes ("
        " id INTEGER PRIMARY KEY,"
        " signature_key TEXT NOT NULL,"
        " kind TEXT NOT NULL CHECK (kind IN ('kernel', 'plan')),"
        " class_hash TEXT NOT NULL,"
        " canonical TEXT NOT NULL,"
        " task TEXT NOT NULL,"
        " class_key TEXT NOT NULL DEFAULT '',"
        " sized_key TEXT NOT NULL DEFAULT '',"
        " length INTEGER NOT NULL CHECK (length > 0),"
        " source TEXT,"
        " plan_json TEXT,"
        " speedup REAL,"
        " evaluation_json TEXT NOT NULL DEFAULT '{}',"
        " created_at REAL NOT NULL,"
        " updated_at REAL NOT NULL,"
        " UNIQUE (signature_key, kind, class_hash),"
        " CHECK ((kind = 'kernel' AND source IS NOT NULL) OR (kind = 'plan' AND plan_json IS NOT NULL)))",
        "CREATE TABLE experience_members ("
        " id INTEGER PRIMARY KEY,"
        " class_id INTEGER NOT NULL REFERENCES experience_classes (id) ON DELETE CASCADE,"
        " task TEXT NOT NULL,"
        " length INTEGER NOT NULL,"
        " speedup REAL,"
        " added_at REAL NOT NULL)",
        "CREATE INDEX experience_members_class ON experience_members (class_id)",
        "CREATE INDEX experience_members_task ON experience_members (task)",
        "CREATE TABLE experience_attempts ("
        " task TEXT PRIMARY KEY,"
        " signature_key TEXT NOT NULL DEFAULT '',"
        " attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),"
        " successes INTEGER NOT NULL DEFAULT 0 CHECK (successes >= 0 AND successes <= attempts),"
        " updated_at REAL NOT NULL)",
        "CREATE TABLE experience_priors ("
        " signature_key TEXT NOT NULL,"
        " class_key TEXT NOT NULL,"
        " template TEXT NOT NULL CHECK (template IN ('row', 'matmul', 'single')),"
        " params_json TEXT NOT NULL,"
        " speedup REAL,"
        " task TEXT NOT NULL,"
        " updated_at REAL NOT NULL,"
        " PRIMARY KEY (signature_key, class_key, template))",
        "CREATE TABLE experience_schedules ("
        " name TEXT PRIMARY KEY,"
        " state_json TEXT NOT NULL,"
        " updated_at REAL NOT NULL)",
    )),
    # SQLite cannot alter a CHECK constraint: the priors table is rebuilt with the new template
    Migration(2, "plan priors accept the 'attention' template", (
        "CREATE TABLE experience_priors_v2 ("
        " signature_key TEXT NOT NULL,"
        " class_key TEXT NOT NULL,"
        " template TEXT NOT NULL CHECK (template IN ('row', 'matmul', 'attention', 'single')),"
        " params_json TEXT NOT NULL,"
        " speedup REAL,"
        " task TEXT NOT NULL,"
        " updated_at REAL NOT NULL,"
        " PRIMARY KEY (signature_key, class_key, template))",
        "INSERT INTO experience_priors_v2 (signature_key, class_key, template, params_json, speedup, task,"
        " updated_at) SELECT signature_key, class_key, template, params_json, speedup, task, updated_at"
        " FROM experience_priors",
        "DROP TABLE experience_priors",
        "ALTER TABLE experience_priors_v2 RENAME TO experience_priors",
    )),
    Migration(3, "plan priors accept the 'moe' template (routed mixture of experts)", (
        "CREATE TABLE experience_priors_v3 ("
        " signature_key TEXT NOT NULL,"
        " class_key TEXT NOT NULL,"
        " template TEXT NOT NULL CHECK (template IN ('row', 'matmul', 'attention', 'moe', 'single')),"
        " params_json TEXT NOT NULL,"
        " speedup REAL,"
        " task TEXT NOT NULL,"
        " updated_at REAL NOT NULL,"
        " PRIMARY KEY (signature_key, class_key, template))",
        "INSERT INTO experience_priors_v3 (signature_key, class_key, template, params_json, speedup, task,"
        " updated_at) SELECT signature_key, class_key, template, params_json, speedup, task, updated_at"
        " FROM experience_priors",
        "DROP TABLE experience_priors",
        "ALTER TABLE experience_priors_v3 RENAME TO experience_priors",
    )),
    Migration(4, "plan priors accept the 'experts' (grouped expert MLPs) and 'decoder' (whole layer) templates", (
        "CREATE TABLE experience_priors_v4 ("
        " signature_key TEXT NOT NULL,"
        " class_key TEXT NOT NULL,"
        " template TEXT NOT NULL CHECK (template IN ('row', 'matmul', 'attention', 'moe', 'experts', 'decoder',"
        " 'single')),"
        " params_json TEXT NOT NULL,"
        " speedup REAL,"
        " task TEXT NOT NULL,"
        " updated_at REAL NOT NULL,"
        " PRIMARY KEY (signature_key, class_key, template))",
        "INSERT INTO experience_priors_v4 (signature_key, class_key, template, params_json, speedup, task,"
        " updated_at) SELECT signature_key, class_key, template, params_json, speedup, task, updated_at"
        " FROM experience_priors",
        "DROP TABLE experience_priors",
        "ALTER TABLE experience_priors_v4 RENAME TO experience_priors",
    )),
))


class InvalidExperienceError(StoreError, ValueError):
    """An answer offered to the library cannot be canonicalised (it does not parse)."""


# ------------------------------------------------------------------ canonical forms

@dataclass(frozen=True)
class KernelForm:
    """The two texts of a kernel: ``canonical`` (alpha-renamed: the class) and ``normalised``
    (names as written: its length ranks representatives); ``digest`` = sha256 of ``canonical``."""

    canonical: str
    normalised: str
    digest: str


class _AlphaRenamer:
    """Rename every user identifier in order of first appearance in the printed layout."""

    def __init__(self, kernel: Any):
        self.declared = {kernel.name, *(p.name for p in kernel.params), *(p.name for p in kernel.results),
                         *(s.name for s in kernel.sizes), *(f.name for f in kernel.fns),
                         *(t for st in kernel.body for t in st.targets)}
        self.fn_names = {f.name for f in kernel.fns}
        self.glob: dict[str, str] = {}
        self.local: dict[str, str] | None = None
        self.local_declared: set[str] = set()

    def g(self, name: str) -> str:
        if name not in self.declared:
            return name
        if name not in self.glob:
            self.glob[name] = f"v{len(self.glob)}"
        return self.glob[name]

    def name(self, name: str) -> str:
        if self.local is not None and name in self.local_declared:
            if name not in self.local:
                self.local[name] = f"a{len(self.local)}"
            return self.local[name]
        return self.g(name)

    def expr(self, e: Any) -> Any:
        from asp_lang.ir import BinOp, Call, ListExpr, Name, Num, TupleExpr, UnOp

        if isinstance(e, Num):
            return Num(e.value)
        if isinstance(e, Name):
            return Name(self.name(e.id))
        if isinstance(e, Call):
            shadowed = self.local is not None and e.func in self.local_declared
            func = self.g(e.func) if e.func in self.fn_names and not shadowed else e.func
            args = tuple(self.expr(a) for a in e.args)
            kwargs = tuple((k, self.expr(v)) for k, v in e.kwargs)
            return Call(func, args, kwargs)
        if isinstance(e, BinOp):
            left = self.expr(e.left)
            return BinOp(e.op, left, self.expr(e.right))
        if isinstance(e, UnOp):
            return UnOp(e.op, self.expr(e.operand))
        if isinstance(e, ListExpr):
            return ListExpr(tuple(self.expr(i) for i in e.items))
        if isinstance(e, TupleExpr):
            return TupleExpr(tuple(self.expr(i) for i in e.items))
        raise TypeError(f"not an ASP expression: {e!r}")

    def kernel(self, k: Any) -> Any:
        from asp_lang.ir import FnDef, Kernel, Let, Param, SizeDef, Stmt

        name = self.g(k.name)

        def param(p: Any) -> Any:
            pname = self.g(p.name)
            return Param(pname, p.dtype, tuple(self.expr(s) for s in p.shape), p.tier)

        params = tuple(param(p) for p in k.params)
        results = tuple(param(p) for p in k.results)
        sizes = tuple(SizeDef(self.g(s.name), s.value) for s in k.sizes)
        fns = []
        for f in k.fns:
            fname = self.g(f.name)
            self.local, self.local_declared = {}, {*f.params, *(let.name for let in f.lets)}
            fparams = tuple(self.name(p) for p in f.params)
            lets = []
            for let in f.lets:
                lname = self.name(let.name)
                lets.append(Let(lname, self.expr(let.value)))
            result = self.expr(f.result)
            fns.append(FnDef(fname, fparams, tuple(lets), result))
            self.local, self.local_declared = None, set()
        body = []
        for st in k.body:
            targets = tuple(self.g(t) for t in st.targets)
            body.append(Stmt(targets, self.expr(st.call)))
        return Kernel(name, params, results, sizes, tuple(fns), tuple(body))


def _strip_comments(k: Any) -> Any:
    return replace(
        k, comments=(), tail_comments=(),
        sizes=tuple(replace(s, comments=(), note="") for s in k.sizes),
        fns=tuple(replace(f, comments=(), result_comments=(), note="",
                          lets=tuple(replace(let, comments=(), note="") for let in f.lets)) for f in k.fns),
        body=tuple(replace(st, comments=(), note="") for st in k.body))


def kernel_form(source: str, filename: str = "<experience>") -> KernelForm:
    """Canonical and normalised text of an ASP kernel (:class:`InvalidExperienceError` if it
    does not parse)."""
    import asp_lang

    try:
        kernel = asp_lang.parse(source, filename)
    except asp_lang.AspError as exc:
        raise InvalidExperienceError(f"{filename}: the kernel does not parse, so it cannot be classed: {exc}") \
            from None
    canonical = asp_lang.format_kernel(_AlphaRenamer(kernel).kernel(kernel))
    normalised = asp_lang.format_kernel(_strip_comments(kernel))
    return KernelForm(canonical, normalised, hashlib.sha256(canonical.encode()).hexdigest())


def plan_structure(plan: Any) -> str:
    """Canonical JSON of a plan's structure: ``[[template, [nodes...]], ...]``, nodes sorted within
    a region and regions sorted by their nodes (region order does not change what a plan
    computes); parameters and notes excluded."""
    data = plan.to_dict() if hasattr(plan, "to_dict") else plan
    regions = sorted(([r["template"], sorted(int(i) for i in r["nodes"])] for r in data["regions"]),
                     key=lambda r: (r[1], r[0]))
    return canonical_json(regions)


# ------------------------------------------------------------------ levels and schedule

def stratify(rates: dict[str, float]) -> dict[str, str]:
    """Tasks -> "hard" | "medium" | "easy" by tertiles of their success rate.

    Tasks are ranked by rate, lowest first; tasks with equal rates share the mean of their
    ranks. A task's mid-rank quantile ``q = (rank + 0.5) / n`` puts it in "hard" when
    ``q < 1/3``, "medium" when ``q < 2/3``, else "easy". So three tasks with distinct rates are
    one per level, equal rates always share a level, and a lone task (or all-equal rates) is
    "medium".
    """
    n = len(rates)
    ordered = sorted(rates.items(), key=lambda kv: (kv[1], kv[0]))
    out: dict[str, str] = {}
    i = 0
    while i < n:
        j = i
        while j + 1 < n and ordered[j + 1][1] == ordered[i][1]:
            j += 1
        q = ((i + j) / 2 + 0.5) / n
        level = "hard" if q < 1 / 3 else "medium" if q < 2 / 3 else "easy"
        for task, _ in ordered[i:j + 1]:
            out[task] = level
        i = j + 1
    return out


@dataclass
class DemoSchedule:
    """The adaptive demonstration schedule, as pure logic.

    ``stage`` 0 shows hard experiences only, 1 hard + medium, 2 all (:data:`STAGE_LEVELS`).
    After each round the loop calls :meth:`update` with the round's pass rate:

    - the pass rate improved on the best so far: restart at stage 0 (hard);
    - otherwise it stalled: after ``patience`` stalled rounds in a row, widen to the next
      stage; stalling at the last stage sets ``exhausted`` (demonstrations ran out: stop).
    """

    patience: int = 1
    best_pass_rate: float = 0.0
    stage: int = 0
    stalls: int = 0
    exhausted: bool = False
    rounds: int = 0

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError("patience must be at least 1")
        if not 0 <= self.stage < len(STAGE_LEVELS):
            raise ValueError(f"stage must be 0..{len(STAGE_LEVELS) - 1}")

    @property
    def levels(self) -> tuple[str, ...]:
        return STAGE_LEVELS[self.stage]

    def update(self, pass_rate: float) -> int:
        """Record one round's pass rate; returns the stage for the next round."""
        self.rounds += 1
        if pass_rate > self.best_pass_rate + 1e-12:
            self.best_pass_rate = pass_rate
            self.stage, self.stalls, self.exhausted = 0, 0, False
            return self.stage
        self.stalls += 1
        if self.stalls >= self.patience:
            self.stalls = 0
            if self.stage + 1 < len(STAGE_LEVELS):
                self.stage += 1
            else:
                self.exhausted = True
        return self.stage

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @staticmethod
    def from_dict(d: dict) -> "DemoSchedule":
        return DemoSchedule(**{k: d[k] for k in DemoSchedule.__dataclass_fields__ if k in d})


# ------------------------------------------------------------------ the library

@dataclass(frozen=True)
class AddResult:
    """What :meth:`ExperienceLibrary.add` did: ``status`` is "new" (a new class), "replaced"
    (the answer is the class's new representative) or "duplicate" (the kept one stays)."""

    class_id: int
    class_hash: str
    status: str
    representative_task: str


def _rank(length: int, speedup: float | None) -> tuple[int, float]:
    return (length, -(speedup if speedup is not None else float("-inf")))


def _sig(signature: "Signature | str | None") -> tuple[str, str, str]:
    if signature is None:
        return "", "", ""
    if isinstance(signature, str):
        return signature, "", ""
    return signature.key(), signature.class_key(), signature.sized_key()


class ExperienceLibrary:
    """Verified answers de-duplicated by canonical form, with per-task success rates, in SQLite.

    Its tables carry the ``experience_`` prefix; the file may also hold the plan cache.
    """

    def __init__(self, path: str | os.PathLike[str], **db_options: Any):
        self.path = str(path)
        self.db = Database(self.path, EXPERIENCE_SCHEMA, **db_options)

    # ------------------------------------------------------------------ answers

    def add(self, task_name: str, signature: "Signature | str", candidate_kind: str, source_or_plan: Any,
            evaluation: Any) -> AddResult:
        """Add a *verified* answer (refused otherwise: :class:`~agentforge.store.db.UnverifiedError`).

        ``candidate_kind`` is "kernel" (``source_or_plan``: ASP text) or "plan"
        (``author.Plan`` or its dict); a :class:`~agentforge.agents.roles.Candidate` is
        accepted too. ``evaluation`` is the verifier's report (``Evaluation``, ``Feedback`` or
        a dict with ``verified: true``; its ``speedup`` ranks answers of equal length).
        """
        if hasattr(source_or_plan, "kind") and hasattr(source_or_plan, "for_evaluation"):  # a Candidate
            source_or_plan = source_or_plan.source if candidate_kind == "kernel" else source_or_plan.plan
        if candidate_kind not in ("kernel", "plan"):
            raise ValueError(f"candidate_kind must be 'kernel' or 'plan', not {candidate_kind!r}")
        summary = evaluation_summary(evaluation, candidate_kind)
        speedup = speedup_of(summary)
        key, class_key, sized_key = _sig(signature)
        source = plan_json = None
        plan_dict: dict | None = None
        if candidate_kind == "kernel":
            if not isinstance(source_or_plan, str):
                raise InvalidExperienceError("a kernel experience is ASP source text")
            form = kernel_form(source_or_plan, f"{task_name}.asp")
            canonical, digest, length, source = form.canonical, form.digest, len(form.normalised), source_or_plan
        else:
            from agentforge.author import Plan

            try:
                plan_obj = source_or_plan if isinstance(source_or_plan, Plan) else Plan.from_dict(source_or_plan)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise InvalidExperienceError(f"{task_name}: not a plan ({exc})") from None
            plan_dict = plan_obj.to_dict()
            canonical = plan_structure(plan_dict)
            digest = hashlib.sha256(canonical.encode()).hexdigest()
            length, plan_json = len(canonical), canonical_json(plan_dict)
        now = time.time()
        with self.db.transaction() as c:
            row = c.execute("SELECT id, task, length, speedup FROM experience_classes"
                            " WHERE signature_key = ? AND kind = ? AND class_hash = ?",
                            (key, candidate_kind, digest)).fetchone()
            if row is None:
                cur = c.execute(
                    "INSERT INTO experience_classes (signature_key, kind, class_hash, canonical, task, class_key,"
                    " sized_key, length, source, plan_json, speedup, evaluation_json, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, candidate_kind, digest, canonical, task_name, class_key, sized_key, length, source,
                     plan_json, speedup, canonical_json(summary), now, now))
                class_id, status, rep = int(cur.lastrowid), "new", task_name
            elif _rank(length, speedup) < _rank(row["length"], row["speedup"]):
                c.execute(
                    "UPDATE experience_classes SET task = ?, class_key = ?, sized_key = ?, length = ?, source = ?,"
                    " plan_json = ?, speedup = ?, evaluation_json = ?, updated_at = ? WHERE id = ?",
                    (task_name, class_key, sized_key, length, source, plan_json, speedup, canonical_json(summary),
                     now, row["id"]))
                class_id, status, rep = int(row["id"]), "replaced", task_name
            else:
                class_id, status, rep = int(row["id"]), "duplicate", row["task"]
            c.execute("INSERT INTO experience_members (class_id, task, length, speedup, added_at)"
                      " VALUES (?, ?, ?, ?, ?)", (class_id, task_name, length, speedup, now))
            if plan_dict is not None:
                self._update_priors(c, key, class_key, plan_dict, speedup, task_name, now)
        return AddResult(class_id, digest, status, rep)

    @staticmethod
    def _update_priors(c: Any, key: str, class_key: str, plan: dict, speedup: float | None, task: str,
                       now: float) -> None:
        per_template: dict[str, dict] = {}
        for region in plan["regions"]:
            if region.get("params") and region["template"] not in per_template:
                per_template[region["template"]] = region["params"]
        for template, params in per_template.items():
            row = c.execute("SELECT speedup FROM experience_priors WHERE signature_key = ? AND class_key = ?"
                            " AND template = ?", (key, class_key, template)).fetchone()
            if row is not None and not (speedup is not None and (row["speedup"] is None or speedup > row["speedup"])):
                continue
            c.execute("INSERT OR REPLACE INTO experience_priors (signature_key, class_key, template, params_json,"
                      " speedup, task, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (key, class_key, template, canonical_json(params), speedup, task, now))

    def experiences(self, kind: str | None = None) -> list[dict]:
        """Every class representative (dicts: id, task, signature_key, kind, class_hash, length,
        speedup, source, plan, members, member_tasks), in insertion order."""
        with self.db.snapshot() as c:
            rows = c.execute("SELECT * FROM experience_classes" + (" WHERE kind = ?" if kind else "") +
                             " ORDER BY id", (kind,) if kind else ()).fetchall()
            members: dict[int, list[str]] = {}
            for m in c.execute("SELECT class_id, task FROM experience_members ORDER BY id"):
                members.setdefault(int(m["class_id"]), []).append(m["task"])
        out = []
        for r in rows:
            tasks = members.get(int(r["id"]), [])
            out.append({
                "id": int(r["id"]), "task": r["task"], "signature_key": r["signature_key"],
                "class_key": r["class_key"], "kind": r["kind"], "class_hash": r["class_hash"],
                "canonical": r["canonical"], "length": int(r["length"]), "speedup": r["speedup"],
                "source": r["source"], "plan": json.loads(r["plan_json"]) if r["plan_json"] else None,
                "evaluation": json.loads(r["evaluation_json"]),
                "members": len(tasks), "member_tasks": sorted(set(tasks)),
            })
        return out

    # ------------------------------------------------------------------ success rates and levels

    def record_attempt(self, task_name: str, signature: "Signature | str | None", success: bool) -> None:
        """Count one attempt at ``task_name`` (verified or not)."""
        key = _sig(signature)[0]
        with self.db.transaction() as c:
            c.execute(
                "INSERT INTO experience_attempts (task, signature_key, attempts, successes, updated_at)"
                " VALUES (?, ?, 1, ?, ?) ON CONFLICT (task) DO UPDATE SET attempts = attempts + 1,"
                " successes = successes + excluded.successes,"
                " signature_key = CASE WHEN excluded.signature_key != '' THEN excluded.signature_key"
                " ELSE signature_key END, updated_at = excluded.updated_at",
                (task_name, key, 1 if success else 0, time.time()))

    def success_rates(self) -> dict[str, dict]:
        """task -> {attempts, successes, rate} for every task with a recorded attempt."""
        return {r["task"]: {"attempts": int(r["attempts"]), "successes": int(r["successes"]),
                            "rate": r["successes"] / r["attempts"] if r["attempts"] else 0.0}
                for r in self.db.query("SELECT * FROM experience_attempts ORDER BY task")}

    def levels(self) -> dict[str, str]:
        """Solved tasks -> "hard" | "medium" | "easy" (:func:`stratify` of their success rates).

        A task is solved when the library holds a verified answer of it (as a class member)
        or an attempt at it succeeded. Its rate is successes / attempts from
        :meth:`record_attempt`; a solved task with no recorded attempt counts as rate 1.0
        (no failure seen).
        """
        rates = {t: s["rate"] for t, s in self.success_rates().items()}
        solved = {r["task"] for r in self.db.query(
            "SELECT DISTINCT task FROM experience_members UNION "
            "SELECT task FROM experience_attempts WHERE successes > 0")}
        return stratify({t: rates.get(t, 1.0) for t in solved})

    # ------------------------------------------------------------------ demonstrations

    def demonstrations(self, k: int, stage: int | DemoSchedule, *, exclude_tasks: Any = (),
                       kind: str | None = None) -> list["Demo"]:
        """Up to ``k`` Demos from the levels of ``stage`` (0 hard, 1 hard + medium, 2 all).

        An experience's level is that of the hardest task among its members. Order: by level
        (hard first); within a level by the task's success rate (lowest first), taking one
        experience per task in turn (so ``k`` demos cover as many tasks as possible); within a
        task the shortest, then fastest. ``exclude_tasks``: tasks whose answers must not be shown (the
        task being solved). ``kind``: only "kernel" or only "plan" experiences.
        """
        from agentforge.agents.roles import Demo

        if isinstance(stage, DemoSchedule):
            stage = stage.stage
        if not 0 <= stage < len(STAGE_LEVELS):
            raise ValueError(f"stage must be 0..{len(STAGE_LEVELS) - 1}, not {stage}")
        if k <= 0:
            return []
        allowed = STAGE_LEVELS[stage]
        levels = self.levels()
        rates = {t: s["rate"] for t, s in self.success_rates().items()}
        excluded = set(exclude_tasks)
        order = {lv: i for i, lv in enumerate(LEVELS)}
        picked = []
        for e in self.experiences(kind):
            tasks = [t for t in e["member_tasks"] if t in levels]
            if not tasks or excluded.intersection(e["member_tasks"]):
                continue
            hardest = min(tasks, key=lambda t: (order[levels[t]], rates.get(t, 1.0), t))
            level = levels[hardest]
            if level in allowed:
                picked.append((order[level], rates.get(hardest, 1.0), hardest, e["length"],
                               -(e["speedup"] if e["speedup"] is not None else float("-inf")), e["id"], level, e))
        picked.sort(key=lambda p: p[:6])
        ordered: list[tuple] = []
        for level_rank in sorted({p[0] for p in picked}):
            # one experience per task in turn, within the level
            queues: dict[str, list] = {}
            for p in picked:
                if p[0] == level_rank:
                    queues.setdefault(p[2], []).append(p)
            while any(queues.values()):
                for queue in queues.values():
                    if queue:
                        ordered.append(queue.pop(0))
        demos: list[Demo] = []
        for _, rate, task, *_, level, e in ordered[:k]:
            demos.append(Demo(
                task=e["task"], signature_key=e["signature_key"], kind=e["kind"], source=e["source"],
                plan=e["plan"], speedup=e["speedup"], level=level,
                extra={"class_hash": e["class_hash"], "length": e["length"], "members": e["members"],
                       "success_rate": rates.get(task), "level_task": task}))
        return demos

    def save_schedule(self, name: str, schedule: DemoSchedule) -> None:
        """Persist a :class:`DemoSchedule` (so a resumed loop continues where it stopped)."""
        with self.db.transaction() as c:
            c.execute("INSERT OR REPLACE INTO experience_schedules (name, state_json, updated_at) VALUES (?, ?, ?)",
                      (name, canonical_json(schedule.to_dict()), time.time()))

    def load_schedule(self, name: str) -> DemoSchedule | None:
        rows = self.db.query("SELECT state_json FROM experience_schedules WHERE name = ?", (name,))
        return DemoSchedule.from_dict(json.loads(rows[0]["state_json"])) if rows else None

    # ------------------------------------------------------------------ priors

    def priors(self, signature: "Signature | str") -> dict[str, dict]:
        """``{template: params}`` for ``author.tune(priors=...)``: the region parameters of the
        fastest verified plan per template (row / matmul / attention / moe / single), from plans of the same
        signature class (``class_key``: same computation, same size regime) if there are any,
        else from plans of the same ``key`` (same computation, any size). ``{}`` if none."""
        key, class_key, _ = _sig(signature)
        with self.db.snapshot() as c:
            rows = []
            if class_key:
                rows = c.execute("SELECT template, params_json, speedup FROM experience_priors"
                                 " WHERE signature_key = ? AND class_key = ?", (key, class_key)).fetchall()
            if not rows:
                rows = c.execute("SELECT template, params_json, speedup FROM experience_priors"
                                 " WHERE signature_key = ?", (key,)).fetchall()
        best: dict[str, tuple[float, dict]] = {}
        for r in rows:
            s = r["speedup"] if r["speedup"] is not None else float("-inf")
            if r["template"] not in best or s > best[r["template"]][0]:
                best[r["template"]] = (s, json.loads(r["params_json"]))
        return {t: p for t, (_, p) in sorted(best.items())}

    # ------------------------------------------------------------------ housekeeping

    def stats(self) -> dict:
        with self.db.snapshot() as c:
            classes = dict(c.execute("SELECT kind, COUNT(*) FROM experience_classes GROUP BY kind").fetchall())
            members = c.execute("SELECT COUNT(*) FROM experience_members").fetchone()[0]
            attempts, successes = c.execute(
                "SELECT COALESCE(SUM(attempts), 0), COALESCE(SUM(successes), 0) FROM experience_attempts").fetchone()
        levels = self.levels()
        return {"path": self.path, "classes": sum(classes.values()), "kernel_classes": classes.get("kernel", 0),
                "plan_classes": classes.get("plan", 0), "members": int(members), "attempts": int(attempts),
                "successes": int(successes), "solved_tasks": len(levels),
                "levels": {lv: sum(1 for v in levels.values() if v == lv) for lv in LEVELS}}

    def clear(self) -> None:
        """Forget everything (classes and members, attempts, priors, schedules)."""
        with self.db.transaction() as c:
            for table in ("experience_members", "experience_classes", "experience_attempts", "experience_priors",
                          "experience_schedules"):
                c.execute(f"DELETE FROM {table}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "ExperienceLibrary":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

