"""What one chat call gave back (:class:`LLMReply`) and what it was sent (:data:`Messages`).

Its own module because every transport makes and reads these (the live :mod:`.client`, the
:mod:`.replay` clients that record and replay transcripts) and the config's preflight reads
a transcript: keeping the record type apart from the HTTP client lets each import it
without importing the others (no client -> config -> replay -> client circle).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .ledger import TokenUsage

__all__ = ["LLMReply", "Messages"]

Messages = list[dict[str, str]]


@dataclass
class LLMReply:
    """What one ``chat`` call gave (a repair round included: usage and cost are the sum)."""
    text: str
    parsed_json: Any = None            # the validated JSON when a schema was given, else None
    usage: TokenUsage = field(default_factory=TokenUsage)
    cost: float = 0.0                  # USD at the config's prices
    latency_s: float = 0.0             # wall time of all attempts, backoff included
    attempts: int = 1                  # HTTP attempts (retries and the repair round included)
    calls: int = 1                     # logical calls: 2 when a repair round was needed
    model: str = ""
    error: str | None = None           # why parsed_json is None despite a schema (after the repair round)
    repaired: bool = False             # the JSON came from the repair round
    finish_reason: str | None = None
    first_error: str | None = None     # why the first reply was sent back (a repair round was needed)
    tool_calls: list = field(default_factory=list)   # [{"id", "name", "arguments"}] when the model called tools

    def to_dict(self) -> dict:
        d = asdict(self)
        d["usage"] = self.usage.to_dict()
        return d

    @staticmethod
    def from_dict(d: dict) -> "LLMReply":
        d = dict(d)
        d["usage"] = TokenUsage.from_dict(d.get("usage") or {})
        return LLMReply(**d)
