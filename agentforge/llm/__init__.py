"""The LLM backend of the agent roles: any OpenAI-compatible endpoint through the openai SDK.

Small modules, one concern each (the layout of helion's ``autotuner/llm/``):

- ``config``: :class:`LLMConfig` (validated settings) and :func:`preflight`;
- ``client``: :class:`LLMClient` (retries, budgets, structured output) and :class:`LLMReply`;
- ``ledger``: :class:`Ledger` (every call, hard budgets) and :class:`TokenUsage`;
- ``replay``: :class:`RecordingClient` / :class:`ReplayClient` (JSONL transcripts);
- ``reply``: :class:`LLMReply` (what a call gave), shared by the live and the replay clients;
- ``parsing``: kernel and JSON extraction from replies; ``validate``: a JSON Schema subset.

This package is transport only. What the prompts say (templates, the ASP reference, a task's
context, feedback, the plan schema) is the agents': :mod:`agentforge.agents.prompting`,
``context``, ``feedback``, ``schemas``.

:func:`make_client` builds the client a config asks for (providers are a plain registry).
"""

from __future__ import annotations

from typing import Any, Callable

from .client import LLMClient, LLMReply
from .config import LLMConfig, preflight
from .errors import BudgetExceeded, LLMCallError, LLMConfigError, LLMError, PreflightError, ReplayError, ReplyError
from .ledger import CallRecord, Ledger, TokenUsage
from .parsing import ReplyParseError, extract_json, extract_kernel
from .replay import RecordingClient, ReplayClient, load_transcript


def _openai(cfg: LLMConfig, ledger: Ledger, **kw: Any) -> LLMClient:
    return LLMClient(cfg, ledger, **kw)


def _replay(cfg: LLMConfig, ledger: Ledger, **kw: Any) -> ReplayClient:
    return ReplayClient(cfg.replay_path or "", ledger, strict=cfg.replay_strict)


#: provider name -> factory(config, ledger, **kwargs)
PROVIDER_REGISTRY: dict[str, Callable[..., Any]] = {"openai": _openai, "replay": _replay}


def make_client(config: LLMConfig, ledger: Ledger | None = None, **kwargs: Any):
    """The client ``config`` asks for, sharing ``ledger`` (a new one with the config's budgets
    if None), wrapped in a :class:`RecordingClient` when ``config.record_path`` is set."""
    if config.provider not in PROVIDER_REGISTRY:
        raise LLMConfigError("provider", f"unknown provider {config.provider!r} "
                                         f"(valid: {', '.join(PROVIDER_REGISTRY)})")
    ledger = ledger if ledger is not None else Ledger.from_config(config)
    client = PROVIDER_REGISTRY[config.provider](config, ledger, **kwargs)
    if config.record_path:
        client = RecordingClient(client, config.record_path, key_env=config.api_key_env)
    return client


__all__ = ["LLMConfig", "preflight", "LLMClient", "LLMReply", "Ledger", "CallRecord", "TokenUsage",
           "RecordingClient", "ReplayClient", "load_transcript", "make_client", "PROVIDER_REGISTRY",
           "extract_kernel", "extract_json", "ReplyParseError", "LLMError", "LLMConfigError", "PreflightError",
           "BudgetExceeded", "LLMCallError", "ReplayError", "ReplyError"]
