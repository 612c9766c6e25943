"""Transport: chat calls to an OpenAI-compatible endpoint through the official openai SDK.

:class:`LLMClient` owns the retry policy (the SDK's own retries are off): 429, 5xx, timeouts
and connection errors are retried with seeded, capped exponential backoff with jitter, and a
server's ``Retry-After`` is honoured; other 4xx fail at once. Every logical call goes through
the shared :class:`~agentforge.llm.ledger.Ledger`, which enforces the hard budgets *before*
sending.

Structured output (``chat(..., schema=...)``): in mode ``json_schema`` the server is asked
for the schema directly; in ``json_object`` / ``text`` the schema is put into the prompt.
Either way the reply is extracted tolerantly, validated against the schema, and, if it does
not fit, ONE repair round sends the problem back and asks for a corrected JSON. A reply that
still does not fit comes back with ``parsed_json=None`` and ``error`` set: never an
exception, so the roles can feed the problem back.
"""

from __future__ import annotations

import email.utils
import json
import random
import threading
import time
from typing import Any, Callable

import openai

from .config import LLMConfig
from .errors import LLMCallError
from .ledger import Ledger, TokenUsage
from .parsing import ReplyParseError, extract_json
from .reply import LLMReply, Messages
from .validate import validate

Check = Callable[[Any], None]


def estimate_tokens(text: str) -> int:
    """The prompt-size estimate used everywhere here: characters / 4, rounded up."""
    return (len(text) + 3) // 4


def messages_tokens(messages: Messages) -> int:
    return sum(estimate_tokens(str(m.get("content", ""))) + 4 for m in messages)


def retry_after_seconds(headers: Any) -> float | None:
    """A server's wait request: ``retry-after-ms``, else ``Retry-After`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def backoff_delay(retry: int, rng: random.Random, base: float, cap: float) -> float:
    """Delay before retry number ``retry`` (0-based): capped exponential with "equal jitter"."""
    d = min(cap, base * (2 ** retry))
    return d / 2 + rng.uniform(0, d / 2)


def schema_instruction(schema: dict) -> str:
    return ("Reply with ONE JSON object and nothing else (no prose, no code fences). It must match this "
            "JSON Schema:\n" + json.dumps(schema, indent=1))


def with_schema_instruction(messages: Messages, schema: dict) -> Messages:
    """``messages`` with the schema appended to the first system message (or a new one)."""
    out = [dict(m) for m in messages]
    text = schema_instruction(schema)
    for m in out:
        if m.get("role") == "system":
            m["content"] = f"{m['content']}\n\n{text}"
            return out
    return [{"role": "system", "content": text}] + out


def repair_message(problem: str) -> dict[str, str]:
    return {"role": "user", "content": (
        f"Your reply could not be used: {problem}\n"
        "Send the corrected answer: ONE JSON object matching the schema, with no prose and no code fences.")}


def parse_structured(text: str, schema: dict, check: Check | None = None) -> tuple[Any, str | None]:
    """(value, None) when ``text`` holds JSON matching ``schema`` (and ``check``), else (None, problem)."""
    try:
        value = extract_json(text)
    except ReplyParseError as e:
        return None, str(e)
    errors = validate(value, schema)
    if errors:
        return None, "the JSON does not match the schema: " + "; ".join(errors)
    if check is not None:
        try:
            check(value)
        except ValueError as e:
            return None, f"the JSON is not usable: {e}"
    return value, None


def _refuses_schema(e: "LLMCallError") -> bool:
    """An HTTP 400 that blames the structured-output request (vLLM, Ollama and most compatible
    servers name response_format or json_schema in the message)."""
    text = str(e).lower()
    return e.status == 400 and any(w in text for w in ("response_format", "json_schema", "schema"))


class LLMClient:
    """Chat with an OpenAI-compatible endpoint: retries, budgets, structured output.

    ``sleep`` and ``clock`` are injectable so tests can observe backoff without waiting.
    Thread-safe: workers may share one client (and one ledger)."""

    def __init__(self, config: LLMConfig, ledger: Ledger | None = None, *,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        if config.provider != "openai":
            raise ValueError(f"LLMClient serves provider 'openai'; got {config.provider!r} (use make_client)")
        self.config = config
        self.ledger = ledger if ledger is not None else Ledger.from_config(config)
        self._sleep, self._clock = sleep, clock
        self._rng = random.Random(0 if config.seed is None else config.seed)
        self._rng_lock = threading.Lock()
        self._sdk: openai.OpenAI | None = None
        self._sdk_lock = threading.Lock()
        self.delays: list[float] = []          # every backoff waited, for reports and tests
        self.schema_refused = False            # response_format "auto": the server refused json_schema
        self.notes: list[str] = []             # what the client decided on its own (said, never silent)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"LLMClient(model={self.config.model!r}, base_url={self.config.base_url!r})"

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def author(self) -> str:
        return self.config.author

    # --- the SDK client: the key is read from the environment at every request ---
    def _client(self) -> openai.OpenAI:
        with self._sdk_lock:
            if self._sdk is None:
                cfg = self.config
                self._sdk = openai.OpenAI(base_url=cfg.base_url,
                                          api_key=(lambda: cfg.read_key() or "not-needed"),
                                          timeout=cfg.timeout_s, max_retries=0)
            return self._sdk

    # --- public ---
    def chat(self, messages: Messages, schema: dict | None = None, role: str = "worker",
             check: Check | None = None, sampling: dict | None = None, tools: list | None = None) -> LLMReply:
        """One chat call (plus one repair round when a schema is given and the reply misses it).

        Raises :class:`BudgetExceeded` before a call that would pass a budget, and
        :class:`LLMCallError` when the endpoint fails for good; a reply that does not hold the
        JSON asked for is returned with ``error`` set. ``sampling`` (``temperature``, ``seed``)
        overrides the config's for this call (the candidates of a best-of-k round)."""
        self.config.read_key()                 # a missing key is a clear error before anything is sent
        self._local.sampling = dict(sampling or {})      # per thread: workers share the client
        self._local.tools = tools
        if schema is None:
            return self._call(messages, None, role, "chat")
        fmt = self.config.response_format
        if fmt == "auto":
            fmt = "json_object" if self.schema_refused else "json_schema"
        if fmt == "json_schema":
            sent = [dict(m) for m in messages]
            rf: dict | None = {"type": "json_schema", "json_schema": {
                "name": str(schema.get("title", "reply")), "schema": schema, "strict": True}}
        else:
            sent = with_schema_instruction(messages, schema)
            rf = {"type": "json_object"} if fmt == "json_object" else None
        try:
            first = self._call(sent, rf, role, "chat")
        except LLMCallError as e:
            if not (self.config.response_format == "auto" and fmt == "json_schema" and _refuses_schema(e)):
                raise
            # the server does not do json_schema: say so once, then json_object + validation from now on
            self.schema_refused = True
            self.notes.append(f"{self.config.base_url} refused json_schema structured output ({e}); "
                              f"using json_object with validation and a repair round from now on")
            return self.chat(messages, schema, role, check)
        value, problem = parse_structured(first.text, schema, check)
        if problem is None:
            first.parsed_json = value
            return first
        try:
            fixed = self._call(sent + [{"role": "assistant", "content": first.text}, repair_message(problem)],
                               rf, role, "repair")
        except LLMCallError as e:              # the first reply was paid for: return it, with both problems
            first.error = f"{problem} (the repair round failed: {e})"
            first.first_error = problem
            return first
        value, problem2 = parse_structured(fixed.text, schema, check)
        return LLMReply(text=fixed.text, parsed_json=value, usage=first.usage + fixed.usage,
                        cost=first.cost + fixed.cost, latency_s=first.latency_s + fixed.latency_s,
                        attempts=first.attempts + fixed.attempts, calls=2, model=fixed.model or first.model,
                        error=problem2, repaired=problem2 is None, finish_reason=fixed.finish_reason,
                        first_error=problem)

    # --- one logical call, with retries ---
    def _call(self, messages: Messages, response_format: dict | None, role: str, kind: str) -> LLMReply:
        cfg = self.config
        est_in = messages_tokens(messages)
        est_out = cfg.max_output_tokens or 0
        rec = self.ledger.begin(role, cfg.model, est_in + est_out, cfg.cost(est_in, est_out, 0), kind)
        kwargs: dict[str, Any] = {"model": cfg.model, "messages": messages}
        over = getattr(self._local, "sampling", None) or {}
        temperature, seed = over.get("temperature", cfg.temperature), over.get("seed", cfg.seed)
        if temperature is not None:
            kwargs["temperature"] = temperature
        if seed is not None:
            kwargs["seed"] = seed
        if cfg.max_output_tokens is not None:
            kwargs["max_completion_tokens"] = cfg.max_output_tokens
        if response_format is not None:
            kwargs["response_format"] = response_format
        if getattr(self._local, "tools", None):
            kwargs["tools"] = self._local.tools
        t0 = self._clock()
        attempts = 0
        retried: list[str] = []
        while True:
            attempts += 1
            try:
                resp = self._client().chat.completions.create(**kwargs)
                break
            except openai.APIStatusError as e:
                status = e.status_code
                retryable = status == 429 or status >= 500
                error = f"HTTP {status} from {cfg.base_url}: {_message(e)}"
                wait = retry_after_seconds(e.response.headers) if retryable else None
            except openai.APITimeoutError:
                status, retryable, wait = None, True, None
                error = f"no answer from {cfg.base_url} within {cfg.timeout_s:g} s (LLMConfig.timeout_s)"
            except openai.APIConnectionError as e:
                status, retryable, wait = None, True, None
                cause = e.__cause__ or e.__context__
                error = f"cannot connect to {cfg.base_url}" + (f": {type(cause).__name__}" if cause else "")
            except BaseException as e:         # anything else (a key gone missing, a bug): record, re-raise
                self.ledger.end(rec, None, 0.0, self._clock() - t0, attempts, f"{type(e).__name__}", retried)
                raise
            error = self._scrub(error)
            if not retryable or attempts > cfg.max_retries:
                latency = self._clock() - t0
                self.ledger.end(rec, None, 0.0, latency, attempts, error, retried)
                why = "not retried" if not retryable else f"gave up after {attempts} attempt(s)"
                raise LLMCallError(f"{role} call failed ({why}): {error}", status, attempts, retryable)
            delay = min(wait, cfg.retry_after_cap_s) if wait is not None else self._backoff(attempts - 1)
            retried.append(error)
            self.delays.append(delay)
            self._sleep(delay)
        latency = self._clock() - t0
        choice = resp.choices[0] if resp.choices else None
        msg = choice.message if choice is not None else None
        text = (getattr(msg, "content", None) or getattr(msg, "refusal", None) or "") if msg is not None else ""
        usage = _usage(resp, est_in, text)
        cost = cfg.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
        self.ledger.end(rec, usage, cost, latency, attempts, None, retried)
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments or ""}
                 for c in (getattr(msg, "tool_calls", None) or []) if getattr(c, "function", None) is not None]
        return LLMReply(text=text, usage=usage, cost=cost, latency_s=latency, attempts=attempts, calls=1,
                        model=getattr(resp, "model", None) or cfg.model,
                        finish_reason=getattr(choice, "finish_reason", None), tool_calls=calls)

    def _scrub(self, text: str) -> str:
        """``text`` without the key (servers sometimes echo what they were sent)."""
        try:
            key = self.config.read_key()
        except Exception:
            return text
        return text.replace(key, "[redacted]") if key else text

    def _backoff(self, retry: int) -> float:
        with self._rng_lock:
            return backoff_delay(retry, self._rng, self.config.backoff_base_s, self.config.backoff_cap_s)


def _message(e: openai.APIStatusError) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
    return str(getattr(e, "message", e))[:300]


def _usage(resp: Any, est_in: int, text: str) -> TokenUsage:
    u = getattr(resp, "usage", None)
    if u is None:
        return TokenUsage(est_in, estimate_tokens(text), None, estimated=True)
    details = getattr(u, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    return TokenUsage(int(u.prompt_tokens or 0), int(u.completion_tokens or 0),
                      None if cached is None else int(cached))


__all__ = ["LLMClient", "LLMReply", "estimate_tokens", "messages_tokens", "retry_after_seconds", "backoff_delay",
           "parse_structured", "with_schema_instruction", "repair_message", "Messages"]
