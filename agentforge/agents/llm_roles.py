"""LLM implementations of the planner, worker and reflector roles (see roles.py).

Each role renders its template from ``prompts/``, sends it through a client (an
:class:`~agentforge.llm.LLMClient`, a :class:`~agentforge.llm.ReplayClient` or a
:class:`~agentforge.llm.RecordingClient`; roles of one campaign share the client and so its
:class:`~agentforge.llm.Ledger`), and turns the reply into the plain data the loop passes on.
Each role's ``usage`` adds up what its calls cost.

What can go wrong, and what the role does:

- the worker's reply holds no kernel: the Candidate carries the raw reply as its source (the
  evaluator rejects it with reason ``compile``) and the parse error in ``notes``; the next
  attempt's prompt says what was wrong. Never an exception.
- the planner's reply holds no usable plan after the repair round: the ``fallback`` planner's
  plan is used, with the reason in its ``notes``; without a fallback, :class:`ReplyError`.
- the reflector's reply is unusable: ``Reflection(accept=False, plan=None, note=<why>)``.
- transport failures (:class:`LLMCallError`) and spent budgets (:class:`BudgetExceeded`)
  propagate: the loop decides.
"""

from __future__ import annotations

import threading
from typing import Any

from ..author import semantic_nodes
from ..capture import op_kind
from ..llm.client import messages_tokens
from ..llm.errors import LLMCallError, ReplyError
from ..llm.parsing import ReplyParseError, extract_kernel
from .context import context_vars, demo_view, interface
from .feedback import render_feedback
from .prompting import (compact_reference, load_asp_reference, reference_requests, reference_sections,
                        render_messages, task_classes, trim_reference)
from .roles import Candidate, Demo, Feedback, Planner, Reflection, TaskContext, Usage
from .schemas import PLAN_SCHEMA, REFLECTION_SCHEMA, normalize_plan, plan_checker, reflection_checker

DEFAULT_MAX_PROMPT_TOKENS = 40000
REFERENCE_SHARE = 0.75       # at most this share of the prompt budget goes to the ASP reference


class Notebook:
    """What the reflector last told the workers, per task (shared by the roles of one campaign)."""

    def __init__(self) -> None:
        self._notes: dict[str, str] = {}
        self._lock = threading.Lock()

    def write(self, task: str, note: str) -> None:
        with self._lock:
            self._notes[task] = note

    def read(self, task: str) -> str:
        with self._lock:
            return self._notes.get(task, "")


class _LLMRole:
    role = "?"

    def __init__(self, client: Any):
        self.client = client
        self.usage = Usage()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.client!r})"

    def _account(self, reply: Any) -> None:
        u = Usage(calls=reply.calls, prompt_tokens=reply.usage.prompt_tokens,
                  completion_tokens=reply.usage.completion_tokens, cached_tokens=reply.usage.cached_tokens or 0,
                  cost=reply.cost)
        with self._lock:
            self.usage.add(u)


def _max_prompt_tokens(client: Any, given: int | None) -> int:
    if given is not None:
        return given
    cfg = getattr(client, "config", None) or getattr(getattr(client, "inner", None), "config", None)
    return getattr(cfg, "max_prompt_tokens", DEFAULT_MAX_PROMPT_TOKENS)


def _plan_view(plan: dict | None) -> dict:
    """A plan as prompts show it: without bookkeeping (who wrote it), so prompts are reproducible."""
    return {k: v for k, v in (plan or {}).items() if k not in ("author", "version")}


#: one line per template for the planner's catalog (the parameters and their tuner values are read
#: from agentforge.author and agentforge.agents.schemas, not written here)
TEMPLATE_HELP = {
    "row": "elementwise ops, last-dim reductions and vector norms, softmax, layer/RMS norm, cumsum, flips, "
           "slices, topk, gather and concatenation along the last dim over one space of rows (per-row 1-d values "
           "as columns), ending in sums/means across rows (a cross-entropy over class indices is one region): one "
           "map over tiles of whole rows",
    "matmul": "mm/addmm with the transposed weight it reads (linear's permute) and an elementwise epilogue",
    "attention": "a whole attention pattern (bmm(Q, K^T), scale, constant mask, softmax, bmm with V; or softmax "
                 "and bmm alone) as one flash-attention kernel",
    "moe": "a dense-masked mixture of experts whose gate has at most k non-zeros per token, routed: its tokens "
           "sorted by expert into tiles that share each weight read (two kernels), or token by token (tm = 0)",
    "experts": "expert MLPs on tokens already grouped by expert (bmm up products of x [E, C, D], an elementwise "
               "activation, bmm down product) as one kernel",
    "decoder": "a whole Llama-style decoder layer at decode (one new token per sequence against its KV cache), "
               "recognised whole, as one kernel",
    "single": "one op on its own, lowered as the baseline lowers it",
}


def template_catalog() -> list[dict]:
    """The templates a plan may name, each with the parameters a plan may set and the values the
    offline tuner searches (``agentforge.author.GRIDS``)."""
    from ..author import GRIDS, TEMPLATES
    from .schemas import PARAM_HELP, PARAM_KEYS

    out = []
    for t in TEMPLATES:
        grid = GRIDS.get(t, {})
        params = [{"name": k, "help": PARAM_HELP.get(k, ""), "tried": list(grid.get(k, ()))}
                  for k in PARAM_KEYS.get(t, ())]
        tuner_only = [k for k in grid if k not in PARAM_KEYS.get(t, ())]
        out.append({"name": t, "help": TEMPLATE_HELP.get(t, ""), "params": params, "tuner_only": tuner_only})
    return out


def plan_realisation_problems(value: dict, ctx: TaskContext) -> list[str]:
    """Why a (schema-valid) plan cannot be used for ``ctx``: what :func:`agentforge.author.validate_plan`
    finds against the templates (an unknown template or parameter, a node index out of range or in
    two regions), a node that computes but is in no region, or a region the author cannot realise
    at the task's own or small sizes. Empty: usable."""
    from ..author import Plan, realize, validate_plan

    plan = normalize_plan(value)
    broken = validate_plan(plan, ctx.graph_own, cover=False)   # templates, their params, node indices
    if broken:
        return broken   # realising it would only fail on the same things, less clearly
    problems = validate_plan(plan, ctx.graph_own)             # now only a node in no region, if any
    p = Plan.from_dict(plan)
    graphs = [("the task's own sizes", ctx.graph_own)] + [("a small test size", g) for g in ctx.graphs_small[:1]]
    for where, g in graphs:
        try:
            realize(p, g, ctx.machine)
        except Exception as e:  # noqa: BLE001 - any failure to build the chain is a reason to send back
            problems.append(f"the plan cannot be realised at {where}: {type(e).__name__}: {e}")
            break
    return problems


def _after_prefix(problem: str) -> str:
    """A repair-round problem without the client's lead-in ("the JSON is not usable: ")."""
    for lead in ("the JSON is not usable: ",):
        if problem.startswith(lead):
            return problem[len(lead):]
    return problem


class LLMPlanner(_LLMRole):
    """Asks for a JSON plan (agentforge.agents.schemas.PLAN_SCHEMA). The plan is validated before any
    worker sees it: node indices, template parameters, every computing node covered, and realisable
    by the author at the task's sizes. A plan that is not goes back to the planner once, with the
    reason (the client's repair round); the reason is recorded in :attr:`returned` and in the
    plan's notes."""
    role = "planner"

    def __init__(self, client: Any, fallback: Planner | None = None):
        super().__init__(client)
        self.fallback = fallback
        self.returned: list[dict] = []     # {"task", "reason"} of every plan sent back

    def messages(self, ctx: TaskContext, demos: list[Demo]) -> list[dict[str, str]]:
        return render_messages("planner", **context_vars(ctx), demos=[demo_view(d) for d in demos],
                               templates=template_catalog())

    def plan(self, ctx: TaskContext, demos: list[Demo]) -> dict:
        n = len(semantic_nodes(ctx.graph_own))
        shape_check = plan_checker(n)

        def check(value: Any) -> None:
            shape_check(value)
            problems = plan_realisation_problems(value, ctx)
            if problems:
                raise ValueError("; ".join(problems))

        reply = self.client.chat(self.messages(ctx, demos), schema=PLAN_SCHEMA, role=self.role, check=check)
        self._account(reply)
        # the client says why a reply went back (a replayed one too: the check does not run then)
        reasons = [_after_prefix(r) for r in (getattr(reply, "first_error", None),
                                              reply.error if reply.parsed_json is None else None) if r]
        for r in reasons:
            self.returned.append({"task": ctx.task.name, "reason": r})
        if reply.parsed_json is not None:
            plan = normalize_plan(reply.parsed_json)
            if reasons:
                plan["notes"] = (f"{plan.get('notes', '')} [a first plan was returned to the planner: "
                                 f"{reasons[0]}]").strip()
            plan["author"] = self.client.author
            return plan
        if self.fallback is None:
            raise ReplyError(f"the planner's reply held no usable plan after a repair round: {reply.error}")
        plan = dict(self.fallback.plan(ctx, demos))
        plan["notes"] = (f"{plan.get('notes', '')} [the LLM planner's reply was unusable ({reply.error}); "
                         f"plan from {type(self.fallback).__name__}]").strip()
        return plan


#: what each candidate of a best-of-k improvement round is asked to try first (variant i gets
#: FOCUS[i % len(FOCUS)]), so that k candidates differ even from a server at temperature 0
FOCUS = ("attack the bottleneck the profile names",
         "rebalance parallelism: raise par= on the operators whose busy cycles dominate, lower it where units idle",
         "cut HBM traffic toward the task's minimum: load each input once, keep intermediates on chip")
TEMPERATURE_STEP = 0.3       # variant i samples at the configured temperature + i * this (at most 1.0)

_SOURCE = {"type": "object", "additionalProperties": False, "required": ["source"],
           "properties": {"source": {"type": "string", "description": "the whole kernel, as you would submit it"}}}
#: the tools a worker may call (openai tools API) before it answers with its kernel
TOOLS = [
    {"type": "function", "function": {
        "name": "check_kernel",
        "description": "Parse and check an ASP kernel against this task's interface at the task's own sizes "
                       "(types, shapes, single use of streams, fit on the machine). Returns OK, or the error "
                       "with file:line:col. Does not run it.",
        "parameters": _SOURCE}},
    {"type": "function", "function": {
        "name": "profile_kernel",
        "description": "Time a kernel (it must check) on the emulated machine at the task's own sizes: speedup "
                       "over the baseline, roofline fraction, HBM bytes vs the task's minimum, units, cycles per "
                       "section and of the busiest operators. Correctness is not checked.",
        "parameters": _SOURCE}},
    {"type": "function", "function": {
        "name": "reference_section",
        "description": "One section of the ASP reference by its number (e.g. 4.3), from the index in section 12.",
        "parameters": {"type": "object", "additionalProperties": False, "required": ["number"],
                       "properties": {"number": {"type": "string"}}}}},
]
MAX_TOOL_ROUNDS = 4          # tool rounds per attempt; the last call is made without tools


class LLMWorker(_LLMRole):
    """Asks for one ASP kernel. The prompt carries the compact ASP reference (grammar, operator
    table, builtins, checklist, worked kernels for the task's class and an index of the rest;
    ``reference="full"``: the whole docs/asp.md), trimmed to the token budget. A reply may ask
    for more sections (``REFERENCE: 4.3``): without a kernel they are sent back at once (one
    extra call), with one they come with the next attempt."""
    role = "worker"
    MAX_REQUESTED_CHARS = 24000

    def __init__(self, client: Any, max_prompt_tokens: int | None = None, notebook: Notebook | None = None,
                 reference: str = "compact", tools: bool = False):
        super().__init__(client)
        self.tools = tools                    # offer TOOLS (check, profile, reference) through the tools API
        self.tool_log: list[dict] = []        # every tool call: {"task", "name", "result"} (first 200 chars)
        self.notes: list[str] = []            # what this worker decided on its own (tools refused)
        if reference not in ("compact", "full"):
            raise ValueError(f"reference must be 'compact' or 'full', got {reference!r}")
        self.max_prompt_tokens = _max_prompt_tokens(client, max_prompt_tokens)
        self.notebook = notebook
        self.reference = reference
        self._last: dict[str, dict] = {}      # task -> {"source", "parse_error", "requests"} of the last attempt
        self.omitted: list[str] = []          # reference headings left out of the last prompt
        self.examples: list[str] = []         # worked kernels in the last prompt's reference
        self.requested: list[str] = []        # every reference section a reply asked for

    def reference_text(self, ctx: TaskContext) -> str:
        """The reference this worker puts in the system message for ``ctx`` (before trimming)."""
        full = load_asp_reference(ctx.asp_reference)
        if self.reference == "full":
            self.examples = []
            return full
        kinds = {op_kind(n.target) for n in semantic_nodes(ctx.graph_own)}
        text, self.examples = compact_reference(full, task_classes(kinds))
        return text

    def messages(self, ctx: TaskContext, plan: dict, feedback: Feedback | None, demos: list[Demo],
                 attempt: int, base: dict | None = None, focus: str = "") -> list[dict[str, str]]:
        """The chat messages of one attempt. ``base`` (improvement rounds): ``{"source": the kernel
        to improve}``, shown as the previous attempt with ``feedback`` its profile; ``focus``: what
        to try first."""
        last = self._last.get(ctx.task.name) if feedback is not None else None
        if base is not None:
            last = {"source": base.get("source") or "", "parse_error": "", "requests": []}
        plan_view = _plan_view(plan)
        review = self.notebook.read(ctx.task.name) if self.notebook is not None and feedback is not None else ""
        if review and base is None:
            plan_view["review"] = review
        sets = ctx.task.resolved_size_sets()
        full = load_asp_reference(ctx.asp_reference)
        asked, missing = reference_sections(full, (last or {}).get("requests") or [], self.MAX_REQUESTED_CHARS)
        if missing:
            asked += f"\n(no section numbered {', '.join(missing)}: see the index in section 12)\n"
        base_vars = dict(context_vars(ctx), interface=interface(ctx), plan=plan_view, attempt=attempt,
                         feedback=render_feedback(feedback, (last or {}).get("source"), ctx),
                         verified=bool(feedback and feedback.verified), improve=base is not None, focus=focus,
                         previous=(last or {}).get("source") or "", parse_error=(last or {}).get("parse_error") or "",
                         requested_reference=asked,
                         test_sizes=[", ".join(f"{k}={v}" for k, v in s.items()) for s in sets])
        views = [demo_view(d) for d in demos]
        while True:
            rest = messages_tokens(render_messages("worker", **base_vars, demos=views, reference=""))
            if rest <= self.max_prompt_tokens * (1 - REFERENCE_SHARE) or not views:
                break
            views = views[:-1]                 # demonstrations give way to the reference first
        # the reference sits in the system message: a budget that does not depend on the task
        # (when there is room) keeps that message a stable prefix the server can cache
        budget = min(self.max_prompt_tokens - rest - 64, int(self.max_prompt_tokens * REFERENCE_SHARE))
        ref = self.reference_text(ctx)
        if budget > 200:
            text, self.omitted = trim_reference(ref, budget)
        else:
            text, self.omitted = "(the ASP reference was left out: no room in the prompt budget)", ["all"]
        return render_messages("worker", **base_vars, demos=views, reference=text)

    def write(self, ctx: TaskContext, plan: dict, feedback: Feedback | None, demos: list[Demo],
              attempt: int) -> Candidate:
        return self._ask(ctx, self.messages(ctx, plan, feedback, demos, attempt), remember=True)

    def improve(self, ctx: TaskContext, plan: dict, base: dict, feedback: Feedback, demos: list[Demo],
                attempt: int, variant: int = 0) -> Candidate:
        """A faster kernel than ``base["source"]`` (a verified kernel; ``feedback`` is its report):
        variant ``i`` of a best-of-k round gets its own focus (:data:`FOCUS`) and, for ``i > 0``,
        a higher temperature and another seed."""
        focus = FOCUS[variant % len(FOCUS)]
        msgs = self.messages(ctx, plan, feedback, demos, attempt, base=base, focus=focus)
        return self._ask(ctx, msgs, remember=False, sampling=self._sampling(variant))

    def _sampling(self, variant: int) -> dict | None:
        if variant <= 0:
            return None
        cfg = getattr(self.client, "config", None) or getattr(getattr(self.client, "inner", None), "config", None)
        t0 = getattr(cfg, "temperature", None)
        seed = getattr(cfg, "seed", None)
        return {"temperature": round(min(1.0, (t0 if t0 is not None else 0.2) + TEMPERATURE_STEP * variant), 3),
                "seed": (seed or 0) + variant}

    def _chat(self, messages: list[dict[str, str]], sampling: dict | None, tools: list | None = None):
        extra: dict = {}
        if sampling is not None:
            extra["sampling"] = sampling
        if tools:
            extra["tools"] = tools
        try:
            return self.client.chat(messages, role=self.role, **extra)
        except LLMCallError as e:
            if not tools or e.status != 400 or "tool" not in str(e).lower():
                raise
            # the endpoint does not do the tools API: plain text (REFERENCE: requests) from now on
            self.tools = False
            note = f"the endpoint refused tool calls ({e}); the worker goes on without tools"
            self.notes.append(note)
            for holder in (self.client, getattr(self.client, "inner", None)):   # the loop reports clients' notes
                if isinstance(getattr(holder, "notes", None), list):
                    holder.notes.append(note)
                    break
            extra.pop("tools")
            return self.client.chat(messages, role=self.role, **extra)

    def run_tool(self, ctx: TaskContext, name: str, arguments: str) -> str:
        """What a tool call returns to the model (never raises: a bad call is told what is wrong).
        Kernels are parsed, checked and timed (shapes only), never executed as code."""
        import json

        from asp_lang import AspError

        from ..binding import BindingError
        from .feedback import render_verified
        from ..solution import KernelSolution

        try:
            args = json.loads(arguments or "{}")
        except ValueError as e:
            return f"error: the arguments are not JSON ({e})"
        if not isinstance(args, dict):
            return "error: the arguments must be a JSON object"
        if name == "reference_section":
            text, missing = reference_sections(load_asp_reference(ctx.asp_reference), [str(args.get("number", ""))],
                                               self.MAX_REQUESTED_CHARS)
            return text if text else f"no section numbered {', '.join(missing)}: see the index in section 12"
        if name not in ("check_kernel", "profile_kernel"):
            return f"error: no tool {name!r} (tools: check_kernel, profile_kernel, reference_section)"
        src = args.get("source")
        if not isinstance(src, str) or not src.strip():
            return "error: 'source' must be the kernel's text"
        try:
            sol = KernelSolution(src, "candidate.asp", ctx.machine)
            if name == "check_kernel":
                sol.check_interface(ctx.graph_own)
                return "OK: the kernel parses, checks and binds at the task's own sizes (correctness is checked " \
                       "when you submit it)"
            timing = sol.time(ctx.graph_own)
            rep = timing.report
            base = ctx.baseline_seconds
            fb = Feedback(True, None, None, speedup=base / rep.seconds if base and rep.seconds else None,
                          roofline_fraction=rep.roofline_fraction, bottleneck=rep.bottleneck,
                          simulated_seconds=rep.seconds, baseline_seconds=base, hbm_bytes=rep.hbm_bytes,
                          profile=timing.profile)
            return render_verified(fb, ctx).replace("VERIFIED:", "TIMED (correctness not checked):", 1)
        except AspError as e:
            return e.render()
        except BindingError as e:
            return f"the kernel does not fit the task's interface: {e}"
        except Exception as e:  # noqa: BLE001 - a tool failure is an answer, not a crash
            return f"{type(e).__name__}: {e}"

    def _ask(self, ctx: TaskContext, msgs: list[dict[str, str]], remember: bool,
             sampling: dict | None = None) -> Candidate:
        self.last_prompt_tokens = messages_tokens(msgs)     # what the ledger estimates a call at
        reply = self._chat(msgs, sampling, TOOLS if self.tools else None)
        self._account(reply)
        rounds = 0
        while getattr(reply, "tool_calls", None) and rounds < MAX_TOOL_ROUNDS:
            rounds += 1
            calls = reply.tool_calls
            msgs = msgs + [{"role": "assistant", "content": reply.text or "",
                            "tool_calls": [{"id": c["id"], "type": "function",
                                            "function": {"name": c["name"], "arguments": c["arguments"]}}
                                           for c in calls]}]
            for c in calls:
                result = self.run_tool(ctx, c["name"], c["arguments"])
                self.tool_log.append({"task": ctx.task.name, "name": c["name"], "result": result[:200]})
                msgs.append({"role": "tool", "tool_call_id": c["id"], "content": result})
            last = rounds >= MAX_TOOL_ROUNDS
            reply = self._chat(msgs, sampling, None if last or not self.tools else TOOLS)
            self._account(reply)
        requests = reference_requests(reply.text)
        self.requested += [r for r in requests if r not in self.requested]
        try:
            source, problem = extract_kernel(reply.text), None
        except ReplyParseError as e:
            source, problem = reply.text, str(e)
        notes = []
        if problem is not None and requests:
            # the model asked for reference sections instead of writing: send them, once
            full = load_asp_reference(ctx.asp_reference)
            asked, missing = reference_sections(full, requests, self.MAX_REQUESTED_CHARS)
            follow = msgs + [{"role": "assistant", "content": reply.text},
                             {"role": "user", "content": (
                                 "The reference sections you asked for:\n\n" + asked +
                                 (f"\n(no section numbered {', '.join(missing)})\n" if missing else "") +
                                 "\nNow write the kernel. Reply with ONE ```asp block.\n")}]
            reply = self._chat(follow, sampling)
            self._account(reply)
            notes.append(f"asked for reference {', '.join(requests)}")
            requests = []
            try:
                source, problem = extract_kernel(reply.text), None
            except ReplyParseError as e:
                source, problem = reply.text, str(e)
        if remember:
            self._last[ctx.task.name] = {"source": source if problem is None else "", "parse_error": problem,
                                         "requests": requests}
        if problem:
            notes.insert(0, f"parse error: {problem}")
        if getattr(reply, "finish_reason", None) == "length":
            notes.append("the reply hit the output token limit (max_output_tokens)")
        return Candidate(kind="kernel", source=source, author=self.client.author, notes="; ".join(notes))


class LLMReflector(_LLMRole):
    """Asks whether to stop and how to revise the plan (REFLECTION_SCHEMA)."""
    role = "reflector"
    MAX_SOURCE_CHARS = 12000

    def __init__(self, client: Any, notebook: Notebook | None = None):
        super().__init__(client)
        self.notebook = notebook

    def messages(self, ctx: TaskContext, plan: dict, candidate: Candidate, feedback: Feedback,
                 attempt: int) -> list[dict[str, str]]:
        cand = candidate.to_dict()
        if cand.get("source") and len(cand["source"]) > self.MAX_SOURCE_CHARS:
            cand["source"] = cand["source"][: self.MAX_SOURCE_CHARS] + "\n# ... (cut)"
        return render_messages("reflector", **context_vars(ctx), plan=_plan_view(plan), candidate=cand,
                               feedback=render_feedback(feedback, candidate.source, ctx), attempt=attempt)

    def reflect(self, ctx: TaskContext, plan: dict, candidate: Candidate, feedback: Feedback,
                attempt: int) -> Reflection:
        n = len(semantic_nodes(ctx.graph_own))
        reply = self.client.chat(self.messages(ctx, plan, candidate, feedback, attempt), schema=REFLECTION_SCHEMA,
                                 role=self.role, check=reflection_checker(n))
        self._account(reply)
        if reply.parsed_json is None:
            return Reflection(accept=False, plan=None, note=f"the reflector's reply was unusable: {reply.error}")
        d = reply.parsed_json
        revised = normalize_plan(d["plan"]) if isinstance(d.get("plan"), dict) else None
        if revised is not None:
            revised["author"] = self.client.author
        note = str(d.get("note", ""))
        if self.notebook is not None:
            self.notebook.write(ctx.task.name, "" if d["accept"] else note)
        return Reflection(accept=bool(d["accept"]), plan=revised, note=note)


def make_roles(client: Any, workers: int = 1, fallback_planner: Planner | None = None,
               max_prompt_tokens: int | None = None, reference: str = "compact",
               tools: bool = False) -> tuple[LLMPlanner, list[LLMWorker], LLMReflector]:
    """A planner, ``workers`` workers and a reflector over one client (so one ledger), the
    reflector's notes wired to the workers; the shape of ``agentforge.loop.offline_roles``.
    ``reference``: the ASP reference workers get, "compact" (default) or "full"."""
    notebook = Notebook()
    return (LLMPlanner(client, fallback=fallback_planner),
            [LLMWorker(client, max_prompt_tokens=max_prompt_tokens, notebook=notebook, reference=reference,
                       tools=tools) for _ in range(workers)],
            LLMReflector(client, notebook=notebook))


def llm_roles(config: Any, workers: int = 1, fallback_planner: Planner | None = None, ledger: Any = None,
              check: bool = True) -> tuple[LLMPlanner, list[LLMWorker], LLMReflector]:
    """Roles for an :class:`~agentforge.llm.LLMConfig`: :func:`~agentforge.llm.preflight` first
    (``check``; raises PreflightError), then :func:`~agentforge.llm.make_client` (recording when
    ``config.record_path`` is set) and :func:`make_roles`."""
    from ..llm import make_client, preflight

    if check:
        preflight(config)
    return make_roles(make_client(config, ledger), workers, fallback_planner, config.max_prompt_tokens,
                      tools=bool(getattr(config, "tools", False)))


__all__ = ["LLMPlanner", "LLMWorker", "LLMReflector", "Notebook", "make_roles", "llm_roles"]
