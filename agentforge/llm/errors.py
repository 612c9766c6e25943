"""Errors of the LLM backend: one class per kind of failure, all under :class:`LLMError`.

What the agent loop should do with each:

- :class:`LLMConfigError`, :class:`PreflightError`: fix the configuration; nothing was sent.
- :class:`BudgetExceeded`: stop asking (the campaign's LLM budget is spent); raised *before*
  the call that would exceed a budget, so nothing was sent or charged.
- :class:`LLMCallError`: the endpoint failed (a 4xx other than 429, or retries exhausted on
  429 / 5xx / timeouts / connection errors); ``status`` and ``attempts`` say which.
- :class:`ReplyError`: the planner got no usable plan (even after the repair round) and has
  no fallback planner.
- :class:`ReplayError`: a replayed transcript does not fit the calls being made.

A reply whose text does not hold the JSON/kernel asked for is *not* an exception: it comes
back as data (``LLMReply.error``) so the roles can feed the problem back to the model.
"""

from __future__ import annotations


class LLMError(Exception):
    """Base class of every error of agentforge.llm."""


class LLMConfigError(LLMError, ValueError):
    """An invalid setting; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"LLMConfig.{field}: {message}")
        self.field = field

    def __reduce__(self):
        return (type(self), (self.field, str(self).split(": ", 1)[1]))


class PreflightError(LLMError):
    """The endpoint cannot be used as configured (no key, unreachable, key rejected, no model)."""


class BudgetExceeded(LLMError):
    """A hard budget (calls, tokens or cost) would be exceeded by the next call."""

    def __init__(self, what: str, used: float, next_call: float, limit: float):
        super().__init__(f"LLM budget exceeded: {what} would reach {used + next_call:g} "
                         f"(used {used:g} + next call {next_call:g}) but the limit is {limit:g}")
        self.what, self.used, self.next_call, self.limit = what, used, next_call, limit

    def __reduce__(self):
        return (type(self), (self.what, self.used, self.next_call, self.limit))


class LLMCallError(LLMError):
    """A chat call failed for good; ``status`` is the HTTP status (None: timeout/connection)."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 1, retryable: bool = False):
        super().__init__(message)
        self.status, self.attempts, self.retryable = status, attempts, retryable

    def __reduce__(self):
        return (type(self), (str(self), self.status, self.attempts, self.retryable))


class ReplyError(LLMError):
    """The model's reply held no usable answer even after the repair round (planner without a fallback)."""


class ReplayError(LLMError):
    """A transcript is missing, malformed, exhausted, or recorded other requests."""


__all__ = ["LLMError", "LLMConfigError", "PreflightError", "BudgetExceeded", "LLMCallError", "ReplyError",
           "ReplayError"]
