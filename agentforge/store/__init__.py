"""Persistent memory of the agent loop: the plan cache and the experience library (SQLite).

- :mod:`agentforge.store.db`: the SQLite layer (WAL, foreign keys, busy timeout, versioned
  migrations in a ``schema_version`` table, transactions, clear errors).
- :mod:`agentforge.store.plan_cache`: verified plans keyed by the size-free signature key.
- :mod:`agentforge.store.experience`: verified answers de-duplicated by canonical form,
  success-rate levels, the adaptive demonstration schedule, tuner priors.

Both stores may share one file (their tables are prefixed and versioned separately);
:data:`DEFAULT_PATH` is the conventional place. See docs/memory.md.
"""

from __future__ import annotations

from pathlib import Path

from .db import CorruptDatabaseError, Database, Migration, Schema, SchemaTooNewError, StoreError, UnverifiedError
from .experience import (AddResult, DemoSchedule, ExperienceLibrary, InvalidExperienceError, kernel_form,
                         plan_structure, stratify)
from .plan_cache import CachedPlan, PlanCache, cache_clear, cache_stats

#: Conventional location of the memory database, relative to the working directory.
DEFAULT_PATH = Path(".agentforge") / "memory.sqlite"

__all__ = [
    "DEFAULT_PATH",
    "Database", "Migration", "Schema",
    "StoreError", "SchemaTooNewError", "CorruptDatabaseError", "UnverifiedError", "InvalidExperienceError",
    "PlanCache", "CachedPlan", "cache_stats", "cache_clear",
    "ExperienceLibrary", "DemoSchedule", "AddResult", "kernel_form", "plan_structure", "stratify",
]
