"""Moved to :mod:`agentforge.agents.feedback` (prompt context is the agents', not the LLM transport's).

This name stays, as the same module object, until agents/llm_roles.py imports it from there."""

import sys

from ..agents import feedback as _moved

sys.modules[__name__] = _moved
