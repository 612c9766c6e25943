"""Moved to :mod:`agentforge.agents.prompting` (prompt context is the agents', not the LLM transport's).

This name stays, as the same module object, until agents/llm_roles.py imports it from there."""

import sys

from ..agents import prompting as _moved

sys.modules[__name__] = _moved
