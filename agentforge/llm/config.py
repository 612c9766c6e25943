"""LLM settings (:class:`LLMConfig`) and the endpoint check run before a campaign (:func:`preflight`).

The API key is never a setting: ``api_key_env`` names the environment variable that holds it,
and the variable is read at call time (:meth:`LLMConfig.read_key`). The key is not kept on any
object of this package, never logged and never written to a file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import LLMConfigError, PreflightError

PROVIDERS = ("openai", "replay")
RESPONSE_FORMATS = ("auto", "json_schema", "json_object", "text")


@dataclass(frozen=True)
class LLMConfig:
    """How to reach an OpenAI-compatible endpoint, and what a campaign may spend there.

    Every field is validated on construction; an error names the field (``LLMConfig.timeout_s:
    must be > 0, got -1``). Build from a dict or a TOML file with :meth:`from_dict` /
    :meth:`from_toml` (unknown keys are errors) and override with :meth:`replace`.
    """

    provider: str = "openai"                 # "openai" (any OpenAI-compatible server) | "replay"
    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4.1-mini"
    api_key_env: str | None = "OPENAI_API_KEY"   # None: the server needs no key (local vLLM/Ollama)
    timeout_s: float = 120.0                 # per HTTP attempt
    max_retries: int = 4                     # retries after the first attempt (429, 5xx, timeouts)
    backoff_base_s: float = 1.0              # first backoff; doubles per retry, jittered
    backoff_cap_s: float = 30.0              # longest backoff
    retry_after_cap_s: float = 120.0         # longest wait a server's Retry-After may impose
    temperature: float | None = 0.2         # None: not sent (models that only take their default)
    seed: int | None = 0                     # sent to the server; also seeds the retry jitter
    max_output_tokens: int | None = None     # sent as max_completion_tokens when set
    price_per_mtok_in: float = 0.0           # USD per million prompt tokens
    price_per_mtok_out: float = 0.0          # USD per million completion tokens
    price_per_mtok_cached: float | None = None   # cached prompt tokens; None: same as price_per_mtok_in
    response_format: str = "auto"            # "auto" (json_schema, json_object if refused) | "json_schema" | "json_object" | "text"
    max_prompt_tokens: int = 40000           # prompt budget (estimated as chars / 4); trims the ASP reference
    max_calls: int | None = None             # hard budgets over a Ledger's life (None: unlimited)
    max_tokens: int | None = None
    max_cost: float | None = None
    replay_path: str | None = None           # provider "replay": the JSONL transcript to replay
    replay_strict: bool = True               # replay: requests must equal the recorded ones
    record_path: str | None = None           # append every call to this JSONL transcript
    tools: bool = False                      # workers may call check/profile/reference tools (tools API);
                                             # a server that refuses tools gets plain text instead

    def __post_init__(self) -> None:
        _validate(self)

    # --- construction ---
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LLMConfig":
        if not isinstance(data, dict):
            raise LLMConfigError("<root>", f"expected a table of settings, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise LLMConfigError(unknown[0], f"unknown setting (valid: {', '.join(names)})")
        return cls(**data)

    @classmethod
    def from_toml(cls, path: str | Path, table: str = "llm") -> "LLMConfig":
        """Read the ``[llm]`` table (or the whole file when it has no such table)."""
        with open(path, "rb") as f:
            data = tomllib.load(f)
        return cls.from_dict(data.get(table, data) if table else data)

    def replace(self, **changes: Any) -> "LLMConfig":
        """A copy with ``changes`` applied (validated again; unknown names are errors)."""
        names = {f.name for f in fields(self)}
        for k in changes:
            if k not in names:
                raise LLMConfigError(k, f"unknown setting (valid: {', '.join(sorted(names))})")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data (holds the key's variable *name*, never the key)."""
        return dataclasses.asdict(self)

    # --- derived ---
    @property
    def author(self) -> str:
        """How candidates written through this config are labelled (Candidate.author)."""
        if self.provider == "replay":
            return f"replay:{Path(self.replay_path or '?').name}"
        return f"openai:{self.model}"

    def read_key(self) -> str | None:
        """The API key, read from the environment now. None when ``api_key_env`` is None.

        Raises :class:`PreflightError` naming the variable when it is unset or empty."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key.strip():
            raise PreflightError(
                f"environment variable {self.api_key_env} is not set: export it with the API key for "
                f"{self.base_url} (LLMConfig.api_key_env names the variable; set api_key_env = None "
                f"for a server that needs no key)")
        return key.strip()

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = 0) -> float:
        """USD for one call's tokens at this config's prices."""
        cached = min(int(cached_tokens or 0), prompt_tokens)
        cached_price = self.price_per_mtok_in if self.price_per_mtok_cached is None else self.price_per_mtok_cached
        return ((prompt_tokens - cached) * self.price_per_mtok_in + cached * cached_price
                + completion_tokens * self.price_per_mtok_out) / 1e6

    def preflight(self) -> dict[str, Any]:
        """See :func:`preflight`."""
        return preflight(self)


# ------------------------------------------------------------------ validation

def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate(c: LLMConfig) -> None:
    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            raise LLMConfigError(name, f"{what}, got {getattr(c, name)!r}")

    need(c.provider in PROVIDERS, "provider", f"must be one of {', '.join(PROVIDERS)}")
    need(isinstance(c.base_url, str) and c.base_url.startswith(("http://", "https://")), "base_url",
         "must be an http:// or https:// URL (e.g. https://api.openai.com/v1)")
    need(isinstance(c.model, str) and bool(c.model.strip()), "model", "must be a non-empty model name")
    need(c.api_key_env is None or (isinstance(c.api_key_env, str) and c.api_key_env.replace("_", "a").isalnum()
                                   and not c.api_key_env[:1].isdigit()),
         "api_key_env", "must be the NAME of an environment variable (e.g. OPENAI_API_KEY), not the key itself")
    if isinstance(c.api_key_env, str) and c.api_key_env.lower().startswith(("sk-", "sk_")):
        raise LLMConfigError("api_key_env", "looks like a key; give the name of the variable that holds it")
    need(_is_num(c.timeout_s) and c.timeout_s > 0, "timeout_s", "must be a number > 0")
    need(_is_int(c.max_retries) and 0 <= c.max_retries <= 20, "max_retries", "must be an integer in 0..20")
    need(_is_num(c.backoff_base_s) and c.backoff_base_s >= 0, "backoff_base_s", "must be a number >= 0")
    need(_is_num(c.backoff_cap_s) and c.backoff_cap_s >= c.backoff_base_s, "backoff_cap_s",
         "must be a number >= backoff_base_s")
    need(_is_num(c.retry_after_cap_s) and c.retry_after_cap_s >= 0, "retry_after_cap_s", "must be a number >= 0")
    need(c.temperature is None or (_is_num(c.temperature) and 0 <= c.temperature <= 2), "temperature",
         "must be a number in 0..2 or None")
    need(c.seed is None or _is_int(c.seed), "seed", "must be an integer or None")
    need(c.max_output_tokens is None or (_is_int(c.max_output_tokens) and c.max_output_tokens > 0),
         "max_output_tokens", "must be a positive integer or None")
    for name in ("price_per_mtok_in", "price_per_mtok_out"):
        need(_is_num(getattr(c, name)) and getattr(c, name) >= 0, name, "must be a number >= 0")
    need(c.price_per_mtok_cached is None or (_is_num(c.price_per_mtok_cached) and c.price_per_mtok_cached >= 0),
         "price_per_mtok_cached", "must be a number >= 0 or None")
    need(c.response_format in RESPONSE_FORMATS, "response_format", f"must be one of {', '.join(RESPONSE_FORMATS)}")
    need(_is_int(c.max_prompt_tokens) and c.max_prompt_tokens >= 1000, "max_prompt_tokens",
         "must be an integer >= 1000")
    for name in ("max_calls", "max_tokens"):
        v = getattr(c, name)
        need(v is None or (_is_int(v) and v >= 0), name, "must be an integer >= 0 or None")
    need(c.max_cost is None or (_is_num(c.max_cost) and c.max_cost >= 0), "max_cost", "must be a number >= 0 or None")
    for name in ("replay_path", "record_path"):
        v = getattr(c, name)
        need(v is None or (isinstance(v, str) and bool(v)), name, "must be a file path or None")
    need(isinstance(c.replay_strict, bool), "replay_strict", "must be true or false")
    need(isinstance(c.tools, bool), "tools", "must be true or false")
    if c.provider == "replay" and not c.replay_path:
        raise LLMConfigError("replay_path", "provider 'replay' needs the transcript to replay")


# ------------------------------------------------------------------ preflight

def _scrub(text: str, key: str | None) -> str:
    return text.replace(key, "[redacted]") if key else text


def preflight(cfg: LLMConfig) -> dict[str, Any]:
    """Check that ``cfg`` can be used before a campaign starts; raise :class:`PreflightError` if not.

    For provider "openai": the key variable is set (unless ``api_key_env`` is None), the server
    answers ``GET /models``, and the model is listed there; a server without ``/models`` or
    that does not list the model is asked for a 1-token chat instead. For provider "replay":
    the transcript exists and parses. Returns what was checked. Never falls back to anything.
    """
    if cfg.provider == "replay":
        from .errors import ReplayError
        from .replay import load_transcript

        try:
            entries = load_transcript(cfg.replay_path or "")
        except ReplayError as e:
            raise PreflightError(str(e)) from None
        return {"provider": "replay", "path": cfg.replay_path, "replies": len(entries)}

    import openai

    key = cfg.read_key()
    client = openai.OpenAI(base_url=cfg.base_url, api_key=key or "not-needed", timeout=min(cfg.timeout_s, 30.0),
                           max_retries=0)
    where = f"{cfg.base_url} (LLMConfig.base_url)"
    keyname = f"${cfg.api_key_env}" if cfg.api_key_env else "no key (api_key_env = None)"

    def fail(exc: Exception, doing: str) -> PreflightError:
        if isinstance(exc, openai.APITimeoutError):
            return PreflightError(f"{where} did not answer {doing} within {min(cfg.timeout_s, 30.0):g} s")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            detail = f": {type(cause).__name__}: {cause}" if cause else ""
            return PreflightError(f"cannot reach {where}{_scrub(detail, key)}")
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return PreflightError(f"{where} rejected the credentials ({keyname}) with HTTP {exc.status_code} "
                                  f"{doing}: check the key and that it may use model {cfg.model!r}")
        if isinstance(exc, openai.APIStatusError):
            return PreflightError(f"{where} answered HTTP {exc.status_code} {doing}: "
                                  f"{_scrub(str(getattr(exc, 'message', exc)), key)[:300]}")
        return PreflightError(f"{doing} failed: {type(exc).__name__}: {_scrub(str(exc), key)[:300]}")

    models: list[str] | None = None
    try:
        models = [m.id for m in client.models.list()]
    except openai.APIStatusError as e:
        if isinstance(e, (openai.AuthenticationError, openai.PermissionDeniedError)) or e.status_code >= 500:
            raise fail(e, "to GET /models") from None
        models = None                     # no /models route (404/405): probe with a chat instead
    except openai.OpenAIError as e:
        raise fail(e, "to GET /models") from None
    if models is not None and cfg.model in models:
        return {"provider": "openai", "base_url": cfg.base_url, "model": cfg.model, "checked": "models"}
    try:
        client.chat.completions.create(model=cfg.model, messages=[{"role": "user", "content": "ping"}],
                                       max_completion_tokens=1)
    except openai.NotFoundError:
        listed = f"; it lists: {', '.join(models[:20])}" if models else ""
        raise PreflightError(f"model {cfg.model!r} (LLMConfig.model) is not served by {where}{listed}") from None
    except (openai.BadRequestError, openai.UnprocessableEntityError):
        pass                              # it answered and knows the model; it only disliked the 1-token probe
    except openai.OpenAIError as e:
        raise fail(e, f"to a 1-token chat with model {cfg.model!r}") from None
    return {"provider": "openai", "base_url": cfg.base_url, "model": cfg.model, "checked": "chat"}


__all__ = ["LLMConfig", "preflight", "PROVIDERS", "RESPONSE_FORMATS"]
