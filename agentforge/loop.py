"""The agent loop, as a LangGraph graph:

    plan (plan cache first) -> fan out N workers (Send) -> each writes a candidate and has it
    evaluated -> reflect on the reports -> accept, or revise the plan and go round again,
    until a candidate is verified and good enough or the task's attempt budget is spent.

The state holds only JSON-serialisable data (plans, candidates, evaluations), so a run can be
checkpointed and resumed; the roles and the evaluator are closed over by the node functions.
A failing node is recorded as a failed attempt, never an exception that ends the run.
"""

from __future__ import annotations

import operator
import time
import traceback
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

import asp_lang

from .agents.roles import Candidate, Demo, Feedback, Planner, Reflector, TaskContext, Usage, Worker
from .author import baseline_plan, tune
from .capture import capture_at
from .store.experience import DemoSchedule
from .capture import signature
from .tasks import Task
from .verify import Evaluation, VerifyConfig, baseline_timing, evaluate


def _stop_exceptions() -> tuple[type[BaseException], ...]:
    """Errors that end the run instead of failing one attempt: a spent budget."""
    try:
        from .llm.errors import BudgetExceeded
        return (BudgetExceeded,)
    except ImportError:  # pragma: no cover
        return ()


_STOP = _stop_exceptions()


class SolveState(TypedDict, total=False):
    attempt: int
    plan: dict | None
    plan_source: str
    history: Annotated[list[dict], operator.add]
    best: dict | None
    done: bool
    notes: Annotated[list[str], operator.add]
    plans: Annotated[list[dict], operator.add]    # every plan used, in order: {"source", "plan"}
    demo_schedule: dict                           # the adaptive demonstration schedule (DemoSchedule.to_dict)
    improve: dict                                 # improvement rounds: {"round", "before", "base", "feedback", ...}
    cache: dict                                   # the plan cache's answer: {"tier", "entry", ..., "outcome"}
    extra_rounds: int                             # rounds not counted against the budget (a false cache hit's)


@dataclass
class SolveConfig:
    max_attempts: int = 4          # rounds of (workers -> reflect)
    workers: int = 1               # candidates per round (LangGraph Send fan-out)
    min_speedup: float = 1.0       # a verified candidate at least this fast ends the loop ... unless
    demos: int = 3
    # ... workers that can improve a kernel (LLM workers: ``improve``) get improvement rounds while
    # attempts and the LLM budget remain: first best-of-k (k candidates, each with its own focus,
    # temperature and seed), then one refinement of the best per round; a round that gains less
    # than min_gain (relative speedup) is a plateau and ends the loop. improve_rounds=0: never.
    improve_rounds: int = 3
    best_of: int = 3
    min_gain: float = 0.02


@dataclass
class SolveResult:
    task: str
    best: Evaluation | None
    best_candidate: Candidate | None
    attempts: int
    plan_cache_hit: bool
    usage: Usage
    history: list[dict] = field(default_factory=list)
    plan: dict | None = None
    notes: list[str] = field(default_factory=list)
    plan_source: str | None = None          # "planner" | "cache" | "reflector" | "failed"
    plans: list[dict] = field(default_factory=list)
    plan_cache_tier: str | None = None      # "exact" | "structural" | "miss"; None: no plan cache
    plan_cache_false_hit: bool = False      # the cached plan failed verification; the planner was asked
    plan_cache: dict | None = None          # what the cache served and saved (tier, entry task, evaluations)
    sockets: int = 1                        # the sockets the best candidate runs on (task sidecar: sockets)

    @property
    def verified(self) -> bool:
        return bool(self.best and self.best.verified)

    def to_dict(self) -> dict:
        ev = self.best.to_dict() if self.best else {"task": self.task, "verified": False,
                                                      "reason": "no candidate was evaluated"}
        return {**ev, "attempts": self.attempts, "plan_cache_hit": self.plan_cache_hit,
                "plan_cache_tier": self.plan_cache_tier, "plan_cache_false_hit": self.plan_cache_false_hit,
                "llm_calls": self.usage.calls,
                "tokens": {"prompt": self.usage.prompt_tokens, "completion": self.usage.completion_tokens,
                           "cached": self.usage.cached_tokens},
                "cost": self.usage.cost, "plan": self.plan, "notes": self.notes, "sockets": self.sockets,
                "candidate": self.best_candidate.to_dict() if self.best_candidate else None}


def task_context(task: Task, machine: asp_lang.Machine | str = "sn40l", size_sets: int = 2,
                 asp_reference: str = "") -> TaskContext:
    m = machine if isinstance(machine, asp_lang.Machine) else asp_lang.load_machine(machine)
    own = capture_at(task, meta=True)
    small = [capture_at(task, s, meta=True) for s in task.resolved_size_sets()[:size_sets]]
    bsec, _, _ = baseline_timing(task, m)
    return TaskContext(task, own, small, signature(own), m, bsec, asp_reference)


def _better(a: dict | None, b: dict) -> bool:
    """Is record b better than a? Verified first, then faster."""
    if a is None:
        return True
    ea, eb = a["evaluation"], b["evaluation"]
    if eb["verified"] != ea["verified"]:
        return eb["verified"]
    return (eb.get("speedup") or 0.0) > (ea.get("speedup") or 0.0)


def build_graph(ctx: TaskContext, planner: Planner, workers: list[Worker], reflector: Reflector,
                evaluate_fn: Callable[[dict], Evaluation], cfg: SolveConfig, plan_cache=None,
                experience=None, on_record: Callable[[dict], None] | None = None):
    """The LangGraph graph for one task (compile it with a checkpointer to make it resumable)."""
    demos_by_stage: dict[int, list[Demo]] = {}
    memory_errors: list[str] = []   # memory is an aid, never a reason to fail; but failures are reported

    def demos(stage: int = 0) -> list[Demo]:
        """Demonstrations at the schedule's stage (0 hard, 1 hard + medium, 2 all). A stage whose
        levels hold nothing yet (early in a campaign every solved task may share one level)
        widens to the next, so a worker is never shown nothing while the library has something."""
        if experience is None or memory_errors:
            return []
        for s in range(stage, 3):
            if s not in demos_by_stage:
                try:
                    demos_by_stage[s] = experience.demonstrations(cfg.demos, s, exclude_tasks=(ctx.task.name,))
                except Exception as e:  # noqa: BLE001
                    memory_errors.append(f"experience library: demonstrations failed: {type(e).__name__}: {e}")
                    return []
            if demos_by_stage[s]:
                return demos_by_stage[s]
        return []

    def note_error(what: str, e: Exception) -> None:
        memory_errors.append(f"{what} failed: {type(e).__name__}: {e}")

    structure_box: list = []

    def structure():
        """The task's structural key (the cache's second tier), computed once."""
        if not structure_box:
            from .store.plan_cache import structure_of

            structure_box.append(structure_of(ctx.graph_own, ctx.graphs_small, ctx.signature))
        return structure_box[0]

    def cached_plan() -> tuple[dict | None, list[str], dict | None]:
        """The plan cache's plan for this task (exact key first, then structure), adapted and
        re-tuned to this task's sizes (a cheap step on the timing model, not a planner call); a
        broken cache is reported and the planner is asked instead."""
        try:
            served = plan_cache.serve(ctx.signature, ctx.graph_own, ctx.machine, structure())
            if served is None:
                return None, ["plan cache: miss"], {"tier": "miss"}
            info = {"tier": served.tier, "entry": served.cached.to_dict(), "task": served.cached.task,
                    "search_evaluations": served.search_evaluations,
                    "search_evaluations_saved": served.search_evaluations_saved, "outcome": "pending"}
            return served.plan.to_dict(), [served.note()], info
        except Exception as e:  # noqa: BLE001
            return None, [f"plan cache failed, the planner was asked instead: {type(e).__name__}: {e}"], None

    def ask_planner(notes: list[str], **extra: Any) -> dict:
        try:
            plan = planner.plan(ctx, demos(0))
            return {**extra, "plan": plan, "plan_source": "planner", "notes": notes,
                    "plans": [{"source": "planner", "plan": plan}] if plan else []}
        except _STOP:
            raise
        except Exception as e:  # noqa: BLE001 - a failed planner is recorded; workers go on unplanned
            return {**extra, "plan": None, "plan_source": "failed",
                    "notes": [*notes, f"planner failed: {type(e).__name__}: {e}"]}

    def plan_node(state: SolveState) -> dict:
        notes: list[str] = []
        info = None
        if plan_cache is not None:
            plan, notes, info = cached_plan()
            if plan is not None:
                return {"plan": plan, "plan_source": "cache", "attempt": 0, "cache": info,
                        "plans": [{"source": "cache", "plan": plan}], "notes": notes}
        return ask_planner(notes, attempt=0, **({"cache": info} if info else {}))

    def settle_cache_hit(state: SolveState, this_round: list[dict]) -> dict | None:
        """After the round that followed a cached plan: a verified candidate confirms the hit
        (what it saved is recorded: planner call, tokens and cost in the ledger, the offline
        planner's search); none is a *false hit*: counted, the entry demoted, and the planner
        asked, the round not counted against the task's attempts (a false hit costs the task
        nothing but time)."""
        info = dict(state.get("cache") or {})
        if info.get("outcome") != "pending" or state.get("plan_source") != "cache":
            return None
        from .store.plan_cache import CachedPlan

        entry = CachedPlan(**info["entry"])
        if any(h["evaluation"]["verified"] for h in this_round):
            info["outcome"] = "verified"
            try:
                tokens, cost = _planner_savings(planner, ctx, entry.evaluation)
                saved = int(info.get("search_evaluations_saved") or 0)
                plan_cache.record_saved(planner_calls=1, tokens=tokens, search_evaluations=saved)
                info.update(tokens_saved=tokens, cost_saved=cost)
                ledger = getattr(getattr(planner, "client", None), "ledger", None)
                if ledger is not None and hasattr(ledger, "record_saved"):
                    ledger.record_saved("planner", tokens=tokens, cost=cost,
                                        note=f"plan cache {info['tier']} hit ({ctx.task.name})")
                if hasattr(planner, "search_evaluations_saved"):
                    planner.search_evaluations_saved += saved
            except Exception as e:  # noqa: BLE001
                note_error("plan cache: recording what the hit saved", e)
            return {"cache": info}
        info["outcome"] = "false"
        notes = [f"plan cache: false hit ({info['tier']} tier, the plan of {entry.task or entry.signature_key} "
                 "failed verification here; entry demoted, the planner was asked)"]
        try:
            plan_cache.false_hit(entry)
        except Exception as e:  # noqa: BLE001
            notes.append(f"plan cache: demoting the entry failed: {type(e).__name__}: {e}")
        return ask_planner(notes, cache=info, best=state.get("best"), done=False, attempt=state["attempt"] + 1,
                           extra_rounds=state.get("extra_rounds", 0) + 1)

    def fan_out(state: SolveState) -> list[Send]:
        imp = state.get("improve") or {}
        if imp.get("active"):
            # an improvement round: k candidates from the best verified kernel (best-of-k), then one
            k = max(1, cfg.best_of) if imp["round"] == 1 else 1
            return [Send("work", {"worker": v % len(workers), "plan": state.get("plan"), "attempt": state["attempt"],
                                  "feedback": imp["feedback"], "demo_stage": 0, "variant": v,
                                  "base": {"source": imp["base"]}, "plan_no": imp.get("plan_no")})
                    for v in range(k)]
        # each worker hears about its own last candidate (its code and its error go together)
        last = {h["worker"]: h["feedback"] for h in state.get("history", []) if h["attempt"] == state["attempt"] - 1}
        stage = (state.get("demo_schedule") or {}).get("stage", 0)
        return [Send("work", {"worker": i, "plan": state.get("plan"), "attempt": state["attempt"],
                              "feedback": last.get(i), "demo_stage": stage,
                              "plan_no": len(state.get("plans", [])) - 1}) for i in range(len(workers))]

    def work_node(payload: dict) -> dict:
        i, attempt = payload["worker"], payload["attempt"]
        plan = payload["plan"] or {}
        fb = Feedback(**payload["feedback"]) if payload.get("feedback") else None
        t0 = time.perf_counter()
        shown = demos(payload.get("demo_stage", 0))
        try:
            if payload.get("base") is not None:
                cand = workers[i].improve(ctx, plan, payload["base"], fb, shown, attempt, payload.get("variant", 0))
            else:
                cand = workers[i].write(ctx, plan, fb, shown, attempt)
        except _STOP:
            raise
        except Exception as e:  # noqa: BLE001 - a failed worker is a failed attempt
            ev = Evaluation(ctx.task.name, "none", False, f"worker failed: {type(e).__name__}: {e}",
                            reason_code="worker_error", machine=ctx.machine.name)
            ev.error = {"kind": "worker_error", "message": traceback.format_exc(limit=6)}
            return {"history": [_record(attempt, i, None, ev, t0, shown, payload.get("plan_no"))]}
        try:
            ev = evaluate_fn(cand.for_evaluation())
        except Exception as e:  # noqa: BLE001
            ev = Evaluation(ctx.task.name, cand.kind, False, f"evaluation failed: {type(e).__name__}: {e}",
                            reason_code="crash", machine=ctx.machine.name)
        rec = _record(attempt, i, cand, ev, t0, shown, payload.get("plan_no"))
        if on_record is not None:
            try:
                on_record(rec)
            except Exception as e:  # noqa: BLE001 - progress reporting must not fail an attempt
                note_error("reporting an attempt", e)
        return {"history": [rec]}

    def reflect_node(state: SolveState) -> dict:
        attempt = state["attempt"]
        this_round = [h for h in state.get("history", []) if h["attempt"] == attempt]
        best = state.get("best")
        for h in this_round:
            if _better(best, h):
                best = h
        settled = settle_cache_hit({**state, "best": best}, this_round) if plan_cache is not None else None
        if settled is not None and settled.get("plan_source"):
            return settled          # a false hit: the planner's plan, in a round of its own
        cache_update = settled or {}
        if experience is not None:
            for h in this_round:
                try:
                    experience.record_attempt(ctx.task.name, ctx.signature, h["evaluation"]["verified"])
                except Exception as e:  # noqa: BLE001
                    memory_errors.append(f"experience library: recording an attempt failed: {type(e).__name__}: {e}")
        # the adaptive schedule: restart at hard when the pass rate improves, widen when it stalls
        schedule = DemoSchedule.from_dict(state.get("demo_schedule") or {})
        if this_round:
            schedule.update(sum(h["evaluation"]["verified"] for h in this_round) / len(this_round))
        sched = {"demo_schedule": schedule.to_dict(), **cache_update}
        good = best is not None and best["evaluation"]["verified"] and \
            (best["evaluation"].get("speedup") or 0.0) >= cfg.min_speedup
        if good or attempt + 1 >= cfg.max_attempts + state.get("extra_rounds", 0):
            imp, why = next_improvement(state, best, attempt) if good else (None, None)
            if imp is not None:
                return {**sched, "best": best, "done": False, "attempt": attempt + 1, "improve": imp,
                        "notes": [why] if why else []}
            return {**sched, "best": best, "done": True, "attempt": attempt + 1,
                    "notes": [*([why] if why else []), *dict.fromkeys(memory_errors)]}
        # the reflector reads the round's most promising candidate (verified first, then fastest)
        latest = None
        for h in this_round:
            if h["candidate"] is not None and _better(latest, h):
                latest = h
        plan = state.get("plan") or {}
        if latest is None:
            return {**sched, "best": best, "done": False, "attempt": attempt + 1}
        try:
            r = reflector.reflect(ctx, plan, Candidate(**latest["candidate"]), Feedback(**latest["feedback"]), attempt)
        except _STOP:
            raise
        except Exception as e:  # noqa: BLE001
            return {**sched, "best": best, "done": False, "attempt": attempt + 1,
                    "notes": [f"reflector failed: {type(e).__name__}: {e}"]}
        if r.accept and best is not None and best["evaluation"]["verified"]:
            return {**sched, "best": best, "done": True, "attempt": attempt + 1,
                    "notes": [*([r.note] if r.note else []), *dict.fromkeys(memory_errors)]}
        revised = r.plan is not None and r.plan != plan
        return {**sched, "best": best, "done": False, "attempt": attempt + 1, "plan": r.plan if r.plan is not None else plan,
                "plan_source": "reflector" if revised else state.get("plan_source", "planner"),
                "plans": [{"source": "reflector", "plan": r.plan}] if revised else [],
                "notes": [r.note] if r.note else []}

    def next_improvement(state: SolveState, best: dict, attempt: int) -> tuple[dict | None, str | None]:
        """The next improvement round after a good verified kernel, or None and why not."""
        imp = state.get("improve") or {}
        speed = best["evaluation"].get("speedup") or 0.0
        rnd = imp.get("round", 0)
        if rnd == 0 and (cfg.improve_rounds <= 0 or not all(hasattr(w, "improve") for w in workers)):
            return None, None               # workers that cannot improve a kernel (the offline author's are tuned)
        if rnd > 0:
            gain = speed / imp["before"] - 1.0 if imp.get("before") else 0.0
            if gain < cfg.min_gain:
                return None, (f"improvement round {rnd}: {speed:.2f}x, gain {gain:+.1%} < {cfg.min_gain:.0%}: "
                              f"plateau, stopped")
        if rnd >= cfg.improve_rounds:
            return None, f"improvement rounds: the limit of {cfg.improve_rounds} is reached ({speed:.2f}x)"
        if attempt + 1 >= cfg.max_attempts + state.get("extra_rounds", 0):
            return None, (f"improvement rounds: no attempts left ({cfg.max_attempts}) at {speed:.2f}x"
                          if rnd > 0 or cfg.max_attempts > 1 else None)
        k = max(1, cfg.best_of) if rnd == 0 else 1
        short = _budget_short(workers, k)
        if short:
            return None, f"improvement rounds: stopped at {speed:.2f}x, {short}"
        if not (best.get("candidate") or {}).get("source"):   # rounds refine a kernel's text
            return None, None
        return ({"active": True, "round": rnd + 1, "before": speed, "base": best["candidate"].get("source") or "",
                 "feedback": best["feedback"], "plan_no": best.get("plan_no")},
                f"improvement round {rnd + 1}: from {speed:.2f}x, " +
                (f"best of {k} candidates" if k > 1 else "refining the best"))

    def route(state: SolveState):
        return END if state.get("done") else fan_out(state)

    g = StateGraph(SolveState)
    g.add_node("plan", plan_node)
    g.add_node("work", work_node)
    g.add_node("reflect", reflect_node)
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", fan_out, ["work"])
    g.add_edge("work", "reflect")
    g.add_conditional_edges("reflect", route, ["work", END])
    return g


def _record(attempt: int, worker: int, cand: Candidate | None, ev: Evaluation, t0: float,
            demos: list[Demo] = (), plan_no: int | None = None) -> dict:
    """One attempt: ``plan_no`` indexes the state's ``plans`` (the plan the worker followed)."""
    return {"attempt": attempt, "worker": worker, "plan_no": plan_no, "candidate": cand.to_dict() if cand else None,
            "evaluation": ev.to_dict(), "feedback": Feedback.from_evaluation(ev).__dict__, "seconds": time.perf_counter() - t0,
            "demos": [{"task": d.task, "level": d.level} for d in demos]}


def solve(task: Task, planner: Planner, workers: list[Worker], reflector: Reflector,
          machine: asp_lang.Machine | str = "sn40l", cfg: SolveConfig | None = None,
          evaluate_fn: Callable[[dict], Evaluation] | None = None, plan_cache=None, experience=None,
          ctx: TaskContext | None = None, checkpointer=None, thread_id: str | None = None,
          on_record: Callable[[dict], None] | None = None) -> SolveResult:
    """Run the loop on one task and return the best candidate found.

    With a ``checkpointer`` every step is saved under ``thread_id``; calling again with the same
    thread continues an interrupted run from its last checkpoint (finished attempts are not
    redone) and returns a finished run's result without running anything. ``on_record`` is
    called with each attempt's record as soon as it is evaluated (progress, event streams)."""
    cfg = cfg or SolveConfig()
    ctx = ctx or task_context(task, machine)
    if evaluate_fn is None:
        vcfg = VerifyConfig(machine=ctx.machine.name)

        def evaluate_fn(c: dict) -> Evaluation:
            return evaluate(task, c, vcfg, baseline_seconds=ctx.baseline_seconds)
    graph = build_graph(ctx, planner, workers, reflector, evaluate_fn, cfg, plan_cache, experience, on_record)
    app = graph.compile(checkpointer=checkpointer)
    config = {"recursion_limit": 10 + 4 * (cfg.max_attempts + (1 if plan_cache is not None else 0))}
    final = None
    replayed = False
    planner_before = (_tokens(planner), _cost(planner), getattr(planner, "search_evaluations", 0))
    if checkpointer is not None:
        config["configurable"] = {"thread_id": thread_id or task.name}
        snap = app.get_state(config)
        if snap.values and snap.next:
            final = app.invoke(None, config)      # interrupted: go on from the last checkpoint
        elif snap.values and snap.values.get("done"):
            final, replayed = snap.values, True   # finished before: nothing to redo (or to store again)
    if final is None:
        final = app.invoke({"attempt": 0, "history": [], "notes": [], "plans": []}, config)
    usage = Usage()
    for role in [planner, reflector, *workers]:
        usage.add(getattr(role, "usage", Usage()))
    best = final.get("best")
    best_ev = Evaluation.from_dict(best["evaluation"]) if best else None
    best_cand = Candidate(**best["candidate"]) if best and best.get("candidate") else None
    cache_info = final.get("cache") or None
    false_hit = bool(cache_info and cache_info.get("outcome") == "false")
    hit = bool(cache_info and cache_info.get("tier") in ("exact", "structural")) and not false_hit
    notes = list(final.get("notes", []))
    for role in [planner, reflector, *workers]:     # what an LLM client decided on its own (e.g. json_object)
        notes.extend(n for n in getattr(getattr(role, "client", None), "notes", []) or [] if n not in notes)
    if best_ev is not None and best_ev.verified and best_cand is not None and not replayed:
        followed = _followed_plan(best, final.get("plans", []))
        cacheable = best_cand.plan or followed
        if plan_cache is not None and cacheable and _sockets(best_cand, ctx.machine) == 1:
            # (an N-socket kernel's speedup is not what its single-socket plan would earn)
            # the plan that led to the verified kernel (the offline author's candidate is the plan
            # itself; an LLM worker's kernel followed the planner's or reflector's plan)
            try:
                made = {"planner_tokens": _tokens(planner) - planner_before[0],
                        "planner_cost": _cost(planner) - planner_before[1],
                        "planner_search_evaluations": getattr(planner, "search_evaluations", 0) - planner_before[2]}
                if hit:     # the plan was the cache's: what it cost to make is what the entry cost
                    ev0 = (cache_info.get("entry") or {}).get("evaluation") or {}
                    made = {k: ev0.get(k, 0) for k in made}
                from .store.plan_cache import structure_of

                plan_cache.store(ctx.signature, cacheable,
                                 {"speedup": best_ev.speedup, "verified": True, "task": task.name,
                                  "machine": ctx.machine.name, **made},
                                 graph=ctx.graph_own,
                                 structure=structure_of(ctx.graph_own, ctx.graphs_small, ctx.signature))
            except Exception as e:  # noqa: BLE001 - reported, the verified result still stands
                notes.append(f"plan cache: storing the verified plan failed: {type(e).__name__}: {e}")
        if experience is not None and _sockets(best_cand, ctx.machine) == 1:
            # (an N-socket kernel is no demonstration for the single-socket tasks workers are shown it on)
            try:
                experience.add(task.name, ctx.signature, best_cand.kind, best_cand, best_ev)
            except Exception as e:  # noqa: BLE001 - reported, the verified result still stands
                notes.append(f"experience library: adding the verified candidate failed: {type(e).__name__}: {e}")
    if best_ev is not None and best_ev.verified and (best_ev.speedup or 0.0) < 1.0:
        # a solve never returns a result worse than the baseline it is measured against
        chain = _baseline_result(ctx, evaluate_fn)
        if chain is not None:
            notes.append(f"the best verified candidate ({best_ev.speedup:.2f}x) is slower than the op-by-op "
                         f"baseline it is measured against: the result is the baseline chain (1.00x)")
            best_ev, best_cand = chain
    sockets = _sockets(best_cand, ctx.machine)
    if getattr(task, "sockets", 1) > 1 and sockets != task.sockets:
        # the task asked for N sockets and the answer is not an N-socket kernel: say so, and why
        why = (best_cand.notes if best_cand is not None and best_cand.notes else
               "no worker wrote a kernel for that many sockets")
        notes.append(f"the task asks for {task.sockets} sockets; the result runs on {sockets}: {why}")
    rounds = len({h["attempt"] for h in final.get("history", [])})
    tier = None if plan_cache is None or cache_info is None else cache_info.get("tier")
    summary = None if cache_info is None else {k: v for k, v in cache_info.items() if k != "entry"}
    return SolveResult(task.name, best_ev, best_cand, rounds, hit, usage, final.get("history", []),
                       final.get("plan"), notes, final.get("plan_source"), list(final.get("plans", [])),
                       tier, false_hit, summary, sockets)


def _sockets(cand: Candidate | None, machine: asp_lang.Machine) -> int:
    """The sockets a candidate runs on (1 for a plan, or a kernel that does not parse)."""
    if cand is None:
        return 1
    try:
        return cand.solution(machine).sockets
    except Exception:  # noqa: BLE001 - an unparsable kernel was never verified: it runs nowhere
        return 1


def _budget_short(workers: list, calls: int) -> str | None:
    """Why ``calls`` more worker calls would not fit the LLM ledger's budget (None: they fit).
    A call is estimated at the mean tokens and cost of the workers' calls so far."""
    ledger = next((getattr(getattr(w, "client", None), "ledger", None) for w in workers
                   if getattr(getattr(w, "client", None), "ledger", None) is not None), None)
    if ledger is None:
        return None
    used = Usage()
    for w in workers:
        used.add(getattr(w, "usage", None) or Usage())
    n = max(1, used.calls)
    per_call = max([(used.prompt_tokens + used.completion_tokens) / n] +
                   [getattr(w, "last_prompt_tokens", 0) for w in workers])
    tokens = per_call * calls
    cost = used.cost / n * calls
    if ledger.max_calls is not None and ledger.calls + calls > ledger.max_calls:
        return f"the call budget ({ledger.max_calls}) has no room for {calls} more"
    if ledger.max_tokens is not None and ledger.tokens + tokens > ledger.max_tokens:
        return f"the token budget ({ledger.max_tokens:,}) has no room for ~{tokens:,.0f} more"
    if ledger.max_cost is not None and ledger.cost + cost > ledger.max_cost:
        return f"the cost budget (${ledger.max_cost:g}) has no room for ~${cost:.4f} more"
    return None


def _baseline_result(ctx: TaskContext, evaluate_fn: Callable[[dict], Evaluation]) -> tuple | None:
    """The op-by-op chain as a verified result: a plan of one region per op, each with the
    parallelism the baseline's timing chose (so it times as the baseline does)."""
    from .author import semantic_nodes
    from .solution import baseline_solution

    try:
        plan = baseline_plan(ctx.graph_own).to_dict()
        rows = {r["node"]: r.get("par") for r in baseline_solution(ctx.machine).time(ctx.graph_own).kernels}
        sem = semantic_nodes(ctx.graph_own)
        for r in plan["regions"]:
            par = rows.get(sem[r["nodes"][0]].name)
            if par:
                r["params"] = dict(par)
        cand = Candidate(kind="plan", plan=plan, author="baseline",
                         notes="the op-by-op baseline chain (every verified candidate was slower)")
        ev = evaluate_fn(cand.for_evaluation())
    except Exception:  # noqa: BLE001 - without a chain the best verified candidate stands
        return None
    return (ev, cand) if ev.verified else None


def _tokens(role) -> int:
    """Prompt + completion tokens a role has used so far (0 for roles without usage)."""
    u = getattr(role, "usage", None) or Usage()
    return u.prompt_tokens + u.completion_tokens


def _cost(role) -> float:
    """USD a role has spent so far (0 for roles without usage)."""
    return float(getattr(getattr(role, "usage", None), "cost", 0.0) or 0.0)


def _planner_savings(planner, ctx: TaskContext, made: dict) -> tuple[int, float]:
    """(tokens, USD) a cache hit saved: what the cached plan cost its planner when it was made, or,
    for an LLM planner where that was nothing (a plan from the offline author), its prompt for this
    task as the client would estimate it, at the client's prices."""
    tokens, cost = int(made.get("planner_tokens") or 0), float(made.get("planner_cost") or 0.0)
    messages = getattr(planner, "messages", None)
    if tokens == 0 and callable(messages):
        from .llm.client import messages_tokens

        tokens = messages_tokens(messages(ctx, []))
        client = getattr(planner, "client", None)
        cfg = getattr(client, "config", None) or getattr(getattr(client, "inner", None), "config", None)
        if cost == 0.0 and cfg is not None and hasattr(cfg, "cost"):
            cost = float(cfg.cost(tokens, 0, 0))
    return tokens, cost


def _followed_plan(best: dict, plans: list[dict]) -> dict | None:
    """The plan (from the planner or the reflector, not the cache) a record's worker followed."""
    no = best.get("plan_no")
    if no is None or not 0 <= no < len(plans) or plans[no]["source"] == "cache":
        return None
    plan = plans[no]["plan"]
    return plan if isinstance(plan, dict) and plan.get("regions") else None


def offline_roles(workers: int = 1, priors: dict | None = None):
    from .agents.offline import OfflinePlanner, OfflineReflector, OfflineWorker

    return OfflinePlanner(priors), [OfflineWorker(i) for i in range(workers)], OfflineReflector()


__all__ = ["solve", "build_graph", "SolveConfig", "SolveResult", "task_context", "offline_roles", "baseline_plan",
           "Any"]
