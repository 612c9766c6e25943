"""What the agent loop asks of each role, and the data passed between them.

Roles are small Protocols so the loop (agentforge.loop) can be handed any backend: the
offline author (search over fusion, tiling and parallelism against the timing model), an
LLM through an OpenAI-compatible endpoint, or a replayed transcript. Everything passed
between roles is plain, JSON-serialisable data so it can be persisted, cached and replayed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from asp_lang import Machine

from ..capture import AtenGraph, Signature
from ..tasks import Task

if TYPE_CHECKING:
    from ..solution import Solution


@dataclass
class TaskContext:
    """Everything a role may look at for one task (read-only)."""
    task: Task
    graph_own: AtenGraph            # captured at the task's own sizes, shapes only (meta)
    graphs_small: list[AtenGraph]   # captured at the small correctness size sets
    signature: Signature
    machine: Machine
    baseline_seconds: float
    asp_reference: str = ""         # docs/asp.md, for LLM prompts

    @property
    def source(self) -> str:
        return self.task.source


@dataclass
class Candidate:
    """A worker's answer: one ASP kernel, or a fusion plan realized by agentforge.author."""
    kind: str                        # "kernel" | "plan"
    source: str | None = None        # ASP text when kind == "kernel"
    plan: dict | None = None         # author.Plan.to_dict() when kind == "plan"
    author: str = "offline"          # "offline" | "openai:<model>" | "replay:<file>"
    notes: str = ""

    def for_evaluation(self) -> dict:
        if self.kind == "kernel":
            return {"kind": "kernel", "source": self.source or "", "filename": "candidate.asp"}
        return {"kind": "plan", "plan": self.plan}

    def solution(self, machine: Any) -> "Solution":
        """What this answer runs, as a :class:`~agentforge.solution.Solution` on ``machine``."""
        from ..solution import solution

        return solution(self.for_evaluation(), machine)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Feedback:
    """The evaluator's report, in the form roles read it."""
    verified: bool
    reason_code: str | None
    reason: str | None
    speedup: float | None = None
    roofline_fraction: float | None = None
    bottleneck: str | None = None
    error: str | None = None         # rendered file:line:col error with the source line, if any
    simulated_seconds: float | None = None
    baseline_seconds: float | None = None
    hbm_bytes: float | None = None
    profile: dict | None = None      # verify.Evaluation.profile: sections, units, per-operator cycles

    @classmethod
    def from_evaluation(cls, ev: Any) -> "Feedback":
        """The feedback of an ``agentforge.verify.Evaluation`` (or its dict form): the one place
        verifier results become what roles read. ``error`` carries the rendered ``file:line:col``
        message with the source line and caret when the evaluator has one; otherwise None."""
        d = ev if isinstance(ev, dict) else ev.to_dict()
        err = d.get("error") or {}
        return cls(verified=bool(d.get("verified")), reason_code=d.get("reason_code"), reason=d.get("reason"),
                   speedup=d.get("speedup"), roofline_fraction=d.get("roofline_fraction"),
                   bottleneck=d.get("bottleneck"), error=err.get("message") if isinstance(err, dict) else None,
                   simulated_seconds=d.get("simulated_seconds"), baseline_seconds=d.get("baseline_seconds"),
                   hbm_bytes=d.get("hbm_bytes"), profile=d.get("profile"))

    def short(self) -> str:
        """A few lines, for an LLM prompt."""
        if self.verified:
            return (f"VERIFIED: speedup {self.speedup:.2f}x over the op-by-op baseline, "
                    f"{(self.roofline_fraction or 0):.0%} of the roofline, bottleneck {self.bottleneck}")
        return f"REJECTED ({self.reason_code}): {self.error or self.reason}"


@dataclass
class Reflection:
    accept: bool                     # stop: good enough (or nothing left to try)
    plan: dict | None = None         # the revised plan for the next attempt
    note: str = ""


@dataclass
class Usage:
    """What a role's calls cost (LLM tokens and money; zero for offline roles)."""
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0

    def add(self, other: "Usage") -> None:
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens
        self.cost += other.cost


@dataclass
class Demo:
    """A verified example from the experience library, shown to workers."""
    task: str
    signature_key: str
    kind: str
    source: str | None
    plan: dict | None
    speedup: float | None
    level: str = "medium"            # "hard" | "medium" | "easy"
    extra: dict = field(default_factory=dict)


class Planner(Protocol):
    usage: Usage

    def plan(self, ctx: TaskContext, demos: list[Demo]) -> dict: ...


class Worker(Protocol):
    usage: Usage

    def write(self, ctx: TaskContext, plan: dict, feedback: Feedback | None, demos: list[Demo],
              attempt: int) -> Candidate: ...


class Reflector(Protocol):
    usage: Usage

    def reflect(self, ctx: TaskContext, plan: dict, candidate: Candidate, feedback: Feedback,
                attempt: int) -> Reflection: ...


__all__ = ["TaskContext", "Candidate", "Feedback", "Reflection", "Usage", "Demo", "Planner", "Worker",
           "Reflector", "Any"]
