"""Token and cost accounting, and the hard budgets of a campaign's LLM use.

One :class:`Ledger` is shared by every role (and every client) of a campaign. Each logical
call (a chat request, retries included; a repair round is a call of its own) is recorded as a
:class:`CallRecord`. Before a call the client asks the ledger to :meth:`~Ledger.begin` it with
an estimate of what it will use; the ledger raises :class:`BudgetExceeded` when the estimate
would take a budget past its limit, so nothing is sent. Calls in flight hold their estimate
as a reservation, so concurrent workers cannot together overrun a budget.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import asdict, dataclass, field

from .errors import BudgetExceeded


@dataclass(frozen=True)
class TokenUsage:
    """Tokens of one call (or a sum of calls). ``cached_tokens`` is None where the server does not
    report it (many OpenAI-compatible servers); ``estimated`` when the server reported no usage
    and the numbers are chars / 4."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "TokenUsage") -> "TokenUsage":
        cached = None if self.cached_tokens is None and other.cached_tokens is None else \
            (self.cached_tokens or 0) + (other.cached_tokens or 0)
        return TokenUsage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens,
                          cached, self.estimated or other.estimated)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "TokenUsage":
        return TokenUsage(int(d.get("prompt_tokens", 0)), int(d.get("completion_tokens", 0)),
                          None if d.get("cached_tokens") is None else int(d["cached_tokens"]),
                          bool(d.get("estimated", False)))


@dataclass
class CallRecord:
    """One logical call as the ledger saw it."""
    id: int
    role: str
    model: str
    kind: str = "chat"                 # "chat" | "repair" | "replay"
    ok: bool = False
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None
    cost: float = 0.0
    latency_s: float = 0.0
    attempts: int = 0
    started: float = field(default_factory=time.time)
    retry_errors: list[str] = field(default_factory=list)   # why each retried HTTP attempt failed

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Reservation:
    record: CallRecord
    tokens: int
    cost: float


class Ledger:
    """Every call of a campaign, with hard budgets on calls, tokens and cost (None: unlimited)."""

    def __init__(self, max_calls: int | None = None, max_tokens: int | None = None, max_cost: float | None = None):
        self.max_calls, self.max_tokens, self.max_cost = max_calls, max_tokens, max_cost
        self.records: list[CallRecord] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Reservation] = {}
        self.saved: list[dict] = []     # calls not made (a plan cache hit skipped the planner): role, tokens, cost, note

    @classmethod
    def from_config(cls, cfg) -> "Ledger":
        return cls(cfg.max_calls, cfg.max_tokens, cfg.max_cost)

    # --- totals ---
    @property
    def calls(self) -> int:
        return len(self.records)

    @property
    def tokens(self) -> int:
        return sum(r.prompt_tokens + r.completion_tokens for r in self.records)

    @property
    def cost(self) -> float:
        return sum(r.cost for r in self.records)

    def record_saved(self, role: str, tokens: int = 0, cost: float = 0.0, note: str = "") -> None:
        """A call the campaign did not need to make (a plan cache hit skipped the planner), with
        the tokens and USD it would have cost (estimates); never counted against a budget."""
        with self._lock:
            self.saved.append({"role": role, "tokens": int(tokens), "cost": float(cost), "note": note,
                               "at": time.time()})

    def summary(self) -> dict:
        """Totals overall and per role (for reports)."""
        with self._lock:
            recs = list(self.records)
        roles: dict[str, dict] = {}
        for r in recs:
            s = roles.setdefault(r.role, {"calls": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                          "cached_tokens": 0, "cost": 0.0, "latency_s": 0.0})
            s["calls"] += 1
            s["errors"] += 0 if r.ok else 1
            s["prompt_tokens"] += r.prompt_tokens
            s["completion_tokens"] += r.completion_tokens
            s["cached_tokens"] += r.cached_tokens or 0
            s["cost"] += r.cost
            s["latency_s"] += r.latency_s
        return {"calls": len(recs), "errors": sum(not r.ok for r in recs),
                "tokens": sum(r.prompt_tokens + r.completion_tokens for r in recs),
                "cost": sum(r.cost for r in recs), "by_role": roles,
                "saved": {"calls": len(self.saved), "tokens": sum(s["tokens"] for s in self.saved),
                          "cost": sum(s["cost"] for s in self.saved)},
                "limits": {"max_calls": self.max_calls, "max_tokens": self.max_tokens, "max_cost": self.max_cost}}

    # --- the protocol clients follow ---
    def begin(self, role: str, model: str, est_tokens: int = 0, est_cost: float = 0.0,
              kind: str = "chat") -> CallRecord:
        """Reserve one call; raise :class:`BudgetExceeded` if it would pass a budget."""
        with self._lock:
            calls = len(self.records) + len(self._pending)
            tokens = sum(r.prompt_tokens + r.completion_tokens for r in self.records) + \
                sum(p.tokens for p in self._pending.values())
            cost = sum(r.cost for r in self.records) + sum(p.cost for p in self._pending.values())
            if self.max_calls is not None and calls + 1 > self.max_calls:
                raise BudgetExceeded("calls", calls, 1, self.max_calls)
            if self.max_tokens is not None and tokens + est_tokens > self.max_tokens:
                raise BudgetExceeded("tokens", tokens, est_tokens, self.max_tokens)
            if self.max_cost is not None and cost + est_cost > self.max_cost + 1e-12:
                raise BudgetExceeded("cost (USD)", round(cost, 6), round(est_cost, 6), self.max_cost)
            rec = CallRecord(next(self._ids), role, model, kind)
            self._pending[rec.id] = _Reservation(rec, est_tokens, est_cost)
            return rec

    def end(self, rec: CallRecord, usage: TokenUsage | None = None, cost: float = 0.0, latency_s: float = 0.0,
            attempts: int = 1, error: str | None = None, retry_errors: list[str] | None = None) -> CallRecord:
        """Record what a reserved call used (also for a failed call: ``error`` set); ``retry_errors``:
        the failures of earlier HTTP attempts of this call (429s, 5xx, timeouts) that were retried."""
        usage = usage or TokenUsage()
        rec.ok = error is None
        rec.error = error
        rec.prompt_tokens, rec.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        rec.cached_tokens = usage.cached_tokens
        rec.cost, rec.latency_s, rec.attempts = cost, latency_s, attempts
        rec.retry_errors = list(retry_errors or [])
        with self._lock:
            self._pending.pop(rec.id, None)
            self.records.append(rec)
        return rec


__all__ = ["Ledger", "CallRecord", "TokenUsage"]
