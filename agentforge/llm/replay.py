"""Transcripts: record every chat call to JSONL, and replay them for deterministic tests and demos.

A transcript line is one call: the request as the role made it (``messages``, ``schema``,
``role``) and what came back (the :class:`LLMReply` as data, or the error that ended the call).
No key, no headers, no base URL: a transcript can be shared. As a last line of defence the
current key value (if any) is scrubbed from every line before it is written.

:class:`ReplayClient` has the client interface (``chat``, ``model``, ``author``, ``ledger``):
it returns the recorded replies in order. Strict mode (the default) checks that each request
equals the recorded one and says where it differs; lenient mode just replays in order.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from .reply import LLMReply, Messages
from .errors import LLMCallError, ReplayError
from .ledger import Ledger, TokenUsage

TRANSCRIPT_VERSION = 1


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def load_transcript(path: str | Path) -> list[dict]:
    """The calls of a transcript, in order; :class:`ReplayError` if it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise ReplayError(f"transcript {p} not found (LLMConfig.replay_path)")
    entries = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
        except ValueError as err:
            raise ReplayError(f"{p}:{n}: not a JSON line ({err.msg})") from None
        if not isinstance(e, dict) or "request" not in e or ("reply" not in e and "error" not in e):
            raise ReplayError(f"{p}:{n}: not a transcript entry (needs 'request' and 'reply' or 'error')")
        entries.append(e)
    return entries


class RecordingClient:
    """Wraps a client; appends each call (request and reply, or error) to the JSONL ``path``."""

    def __init__(self, inner: Any, path: str | Path, key_env: str | None = None):
        self.inner = inner
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cfg = getattr(inner, "config", None)
        self._key_env = key_env if key_env is not None else getattr(cfg, "api_key_env", None)
        self._lock = threading.Lock()
        self._n = sum(1 for _ in self.path.open(encoding="utf-8")) if self.path.exists() else 0

    def __repr__(self) -> str:
        return f"RecordingClient({self.inner!r}, path={str(self.path)!r})"

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def author(self) -> str:
        return self.inner.author

    @property
    def ledger(self) -> Ledger:
        return self.inner.ledger

    def chat(self, messages: Messages, schema: dict | None = None, role: str = "worker", check=None,
             sampling: dict | None = None, tools: list | None = None) -> LLMReply:
        request = {"role": role, "messages": [dict(m) for m in messages], "schema": schema}
        extra = {}
        if sampling:
            request["sampling"] = extra["sampling"] = dict(sampling)
        if tools:
            request["tools"] = extra["tools"] = tools
        try:
            reply = self.inner.chat(messages, schema=schema, role=role, check=check, **extra)
        except LLMCallError as e:
            self._append({"request": request, "error": {"type": "LLMCallError", "message": str(e),
                                                        "status": e.status, "attempts": e.attempts,
                                                        "retryable": e.retryable}})
            raise
        self._append({"request": request, "reply": reply.to_dict()})
        return reply

    def _append(self, entry: dict) -> None:
        with self._lock:
            entry = {"v": TRANSCRIPT_VERSION, "i": self._n, "model": self.model, **entry}
            line = json.dumps(entry, ensure_ascii=False)
            key = os.environ.get(self._key_env, "").strip() if self._key_env else ""
            if key and len(key) >= 4:
                line = line.replace(key, "[redacted]")
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
            self._n += 1


class ReplayClient:
    """Returns a transcript's replies in order, with the client interface.

    ``strict``: each request (role, messages, schema) must equal the recorded one, else
    :class:`ReplayError` says which call and where the text differs. Replayed usage and cost
    go to the ledger, so budgets behave as in the recorded run."""

    def __init__(self, path: str | Path, ledger: Ledger | None = None, strict: bool = True):
        self.path = Path(path)
        self.entries = load_transcript(self.path)
        self.strict = strict
        self.ledger = ledger if ledger is not None else Ledger()
        self._next = 0
        self._used: set[int] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ReplayClient({str(self.path)!r}, strict={self.strict}, next={self._next}/{len(self.entries)})"

    @property
    def model(self) -> str:
        return self.entries[0].get("model", "replay") if self.entries else "replay"

    @property
    def author(self) -> str:
        return f"replay:{self.path.name}"

    @property
    def remaining(self) -> int:
        return len(self.entries) - len(self._used)

    def chat(self, messages: Messages, schema: dict | None = None, role: str = "worker", check=None,
             sampling: dict | None = None, tools: list | None = None) -> LLMReply:
        with self._lock:
            while self._next < len(self.entries) and self._next in self._used:
                self._next += 1
            i = self._next
            if i >= len(self.entries):
                raise ReplayError(f"transcript {self.path} holds {len(self.entries)} call(s); call {i + 1} "
                                  f"({role}) has nothing left to replay")
            now = {"role": role, "messages": messages, "schema": schema}
            if self.strict:
                # candidates written in parallel (several workers, a best-of-k round) may call in
                # another order than they were recorded in: an exact match further on is theirs
                j = next((j for j in range(i, len(self.entries)) if j not in self._used
                          and _same(self.entries[j]["request"], now, sampling)
                          and _canon(self.entries[j]["request"].get("tools") or None) == _canon(tools or None)), None)
                if j is None:
                    _compare(self.path, i, self.entries[i]["request"], now)
                    raise ReplayError(f"transcript {self.path}, call {i + 1} ({role}): sampling {sampling or None} "
                                      f"differs from the recorded {self.entries[i]['request'].get('sampling')}")
                i = j
            entry = self.entries[i]
            self._used.add(i)
        reply = LLMReply.from_dict(entry["reply"]) if "reply" in entry else None
        usage = reply.usage if reply else TokenUsage()
        rec = self.ledger.begin(role, entry.get("model", "replay"), usage.total_tokens,
                                reply.cost if reply else 0.0, "replay")
        if reply is None:
            err = entry["error"]
            self.ledger.end(rec, None, 0.0, 0.0, int(err.get("attempts", 1)), err.get("message", "error"))
            raise LLMCallError(err.get("message", "recorded error"), err.get("status"), int(err.get("attempts", 1)),
                               bool(err.get("retryable", False)))
        self.ledger.end(rec, usage, reply.cost, 0.0, reply.attempts, None)
        return reply


def _same(recorded: dict, now: dict, sampling: dict | None) -> bool:
    return (recorded.get("role") == now["role"] and _canon(recorded.get("schema")) == _canon(now["schema"])
            and _canon(recorded.get("messages", [])) == _canon([dict(m) for m in now["messages"]])
            and _canon(recorded.get("sampling") or None) == _canon(sampling or None))


def _compare(path: Path, i: int, recorded: dict, now: dict) -> None:
    where = f"transcript {path}, call {i + 1}"
    if recorded.get("role") != now["role"]:
        raise ReplayError(f"{where}: recorded a {recorded.get('role')!r} call, now a {now['role']!r} call "
                          "(use strict=False to replay in order regardless)")
    if _canon(recorded.get("schema")) != _canon(now["schema"]):
        raise ReplayError(f"{where} ({now['role']}): the schema differs from the recorded one")
    rm, nm = recorded.get("messages", []), [dict(m) for m in now["messages"]]
    if len(rm) != len(nm):
        raise ReplayError(f"{where} ({now['role']}): {len(nm)} messages, the recording has {len(rm)}")
    for k, (a, b) in enumerate(zip(rm, nm)):
        if _canon(a) == _canon(b):
            continue
        ta, tb = str(a.get("content", "")), str(b.get("content", ""))
        at = next((j for j, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
        raise ReplayError(f"{where} ({now['role']}): message {k} ({b.get('role')}) differs from the recording at "
                          f"character {at}: recorded {ta[at:at + 40]!r}, now {tb[at:at + 40]!r}")


__all__ = ["RecordingClient", "ReplayClient", "load_transcript", "TRANSCRIPT_VERSION"]
