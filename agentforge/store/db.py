"""A small SQLite layer shared by the agent loop's persistent memory (stdlib ``sqlite3``, no ORM).

What every store built on it gets:

- **WAL journal** (readers never block the writer and the writer never blocks readers, so
  several processes may read a cache while one run writes to it), ``synchronous=NORMAL``,
  **foreign keys** on, and a **busy timeout** (a writer waits for another writer's lock
  instead of failing at once).
- **Versioned migrations**: a :class:`Schema` names a *component* ("plan_cache",
  "experience") and lists its :class:`Migration` s, numbered 1, 2, 3, ...; on open, the ones
  not yet recorded in the ``schema_version`` table are applied in order, each in its own
  transaction together with its ``schema_version`` row. Several components may share one
  database file: each has its own version.
- **Transactions** as a context manager (:meth:`Database.transaction`): ``BEGIN IMMEDIATE``
  (the write lock is taken up front, so two writers never deadlock upgrading a read lock),
  commit on success, rollback on any exception. Every write of the stores goes through it.
- **Clear errors** (subclasses of :class:`~agentforge.errors.AgentforgeError`, printed by the
  command line without a traceback): :class:`SchemaTooNewError` for a database written by a
  newer agentforge, :class:`CorruptDatabaseError` for a file that is not a SQLite database
  or fails SQLite's integrity check.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentforge.errors import AgentforgeError

__all__ = [
    "StoreError",
    "SchemaTooNewError",
    "CorruptDatabaseError",
    "UnverifiedError",
    "Migration",
    "Schema",
    "Database",
    "DEFAULT_BUSY_TIMEOUT_S",
]

#: How long a connection waits for another connection's write lock before failing.
DEFAULT_BUSY_TIMEOUT_S: float = 30.0


class StoreError(AgentforgeError):
    """A persistent-memory database cannot be used as asked."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer agentforge (a schema version this one lacks)."""

    def __init__(self, path: str, component: str, found: int, supported: int):
        self.path, self.component, self.found, self.supported = path, component, found, supported
        super().__init__(
            f"{path}: the {component} schema is version {found}, this agentforge knows versions up to "
            f"{supported}\n  how to fix: upgrade agentforge, or point it at another database file "
            f"(the file was left untouched)")


class CorruptDatabaseError(StoreError):
    """The file is not a SQLite database, or SQLite's integrity check fails on it."""

    def __init__(self, path: str, detail: str):
        self.path, self.detail = path, " ".join(detail.split())
        detail = self.detail
        super().__init__(
            f"{path}: not a usable SQLite database ({detail})\n  how to fix: move the file away or "
            f"delete it; agentforge starts a new, empty one at that path")


class UnverifiedError(StoreError, ValueError):
    """Only verified answers may enter the plan cache or the experience library."""


@dataclass(frozen=True)
class Migration:
    """One schema step: SQL statements (run in order) or a callable given the connection.

    Runs inside the transaction that also records its version, so a failed migration leaves
    the database at the previous version.
    """

    version: int
    description: str
    apply: Sequence[str] | Callable[[sqlite3.Connection], None]


@dataclass(frozen=True)
class Schema:
    """The migrations of one component, versions 1..n in order, no gaps."""

    component: str
    migrations: tuple[Migration, ...]

    def __post_init__(self) -> None:
        versions = [m.version for m in self.migrations]
        if versions != list(range(1, len(versions) + 1)):
            raise ValueError(f"{self.component}: migrations must be numbered 1..n in order, got {versions}")

    @property
    def version(self) -> int:
        return len(self.migrations)

    def upto(self, version: int) -> "Schema":
        """The same component with only its first ``version`` migrations (tests, tooling)."""
        return Schema(self.component, self.migrations[:version])


_SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " component TEXT NOT NULL,"
    " version INTEGER NOT NULL,"
    " description TEXT NOT NULL DEFAULT '',"
    " applied_at REAL NOT NULL,"
    " PRIMARY KEY (component, version))"
)


class Database:
    """One SQLite database file, opened for a :class:`Schema` (migrated on open).

    The connection may be used from several threads of one process (a lock serialises its
    use); other processes open their own :class:`Database` on the same file.
    """

    def __init__(self, path: str | os.PathLike[str], schema: Schema, *,
                 busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S, integrity_check: bool = True):
        self.path = str(path)
        self.schema = schema
        self._lock = threading.RLock()
        self._depth = 0
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                        check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the database ({exc})") from None
        try:
            self._open_retrying(busy_timeout_s, integrity_check)
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            if _is_corruption(exc):
                raise CorruptDatabaseError(self.path, str(exc)) from None
            raise StoreError(f"{self.path}: {exc}") from None
        except BaseException:
            self.conn.close()
            raise

    # ------------------------------------------------------------------ setup

    def _open_retrying(self, busy_timeout_s: float, integrity_check: bool) -> None:
        """Configure and migrate, retrying "database is locked" up to the busy timeout.

        Why: SQLite can return SQLITE_BUSY at once, without calling the busy handler, while
        another connection recovers the WAL or changes the journal mode; a campaign task whose
        worker opened a fresh run's ``memory.sqlite`` beside the others failed that way in 2 ms
        (Mixtral from-model campaign, 2026-12-06). Not reproduced on demand: this is a guard."""
        deadline = time.monotonic() + busy_timeout_s
        pause = 0.01
        while True:
            try:
                self._configure(busy_timeout_s, integrity_check)
                self._migrate()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                self._rollback()
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.5)

    def _configure(self, busy_timeout_s: float, integrity_check: bool) -> None:
        c = self.conn
        c.row_factory = sqlite3.Row
        c.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        # Reading the header first: a file that is not a database fails here, before any write.
        c.execute("PRAGMA schema_version").fetchone()
        if integrity_check:
            row = c.execute("PRAGMA quick_check(1)").fetchone()
            if row is None or row[0] != "ok":
                raise CorruptDatabaseError(self.path, f"integrity check: {row[0] if row else 'no answer'}")
        if self.path != ":memory:":
            c.execute("PRAGMA journal_mode = WAL").fetchone()
        c.execute("PRAGMA synchronous = NORMAL")
        c.execute("PRAGMA foreign_keys = ON")

    def _migrate(self) -> None:
        component, target = self.schema.component, self.schema.version
        found = self._stored_version()
        if found > target:
            raise SchemaTooNewError(self.path, component, found, target)
        if found == target:
            return
        with self.transaction():
            self.conn.execute(_SCHEMA_VERSION_DDL)
            # Re-read under the write lock: another process may have migrated meanwhile.
            found = self._stored_version()
            if found > target:
                raise SchemaTooNewError(self.path, component, found, target)
            for m in self.schema.migrations[found:]:
                if callable(m.apply):
                    m.apply(self.conn)
                else:
                    for stmt in m.apply:
                        self.conn.execute(stmt)
                self.conn.execute(
                    "INSERT INTO schema_version (component, version, description, applied_at) VALUES (?, ?, ?, ?)",
                    (component, m.version, m.description, time.time()))

    def _stored_version(self) -> int:
        exists = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
        if not exists:
            return 0
        row = self.conn.execute("SELECT MAX(version) FROM schema_version WHERE component = ?",
                                (self.schema.component,)).fetchone()
        return int(row[0] or 0)

    # ------------------------------------------------------------------ use

    @property
    def version(self) -> int:
        """The component's schema version recorded in the file."""
        with self._lock:
            return self._stored_version()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception); nests by joining."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.conn
                finally:
                    self._depth -= 1
                return
            self.conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self.conn
            except BaseException:
                self._depth = 0
                self._rollback()
                raise
            self._depth = 0
            try:
                self.conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A consistent read of several statements (``BEGIN DEFERRED``; never takes the write lock)."""
        with self._lock:
            if self._depth:
                yield self.conn
                return
            self.conn.execute("BEGIN DEFERRED")
            self._depth = 1
            try:
                yield self.conn
            finally:
                self._depth = 0
                if self.conn.in_transaction:
                    self.conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run one read statement and return all rows."""
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    if isinstance(exc, CorruptDatabaseError):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("not a database", "malformed", "corrupt", "file is encrypted"))


# ------------------------------------------------------------------ helpers shared by the stores

#: Fields of a verifier report (``agentforge.verify.Evaluation``) kept with a stored answer.
SUMMARY_FIELDS = ("verified", "task", "candidate", "speedup", "simulated_seconds", "baseline_seconds",
                  "roofline_fraction", "bottleneck", "hbm_bytes", "flops", "machine", "emulator",
                  "own_sizes", "kernel_sha256", "reason_code", "planner_tokens", "planner_cost",
                  "planner_search_evaluations")


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, ASCII: equal values give equal text (hashes, comparisons)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def evaluation_summary(evaluation: Any, what: str = "answer") -> dict[str, Any]:
    """The compact, JSON-ready summary of a verifier report; refuses an unverified one.

    ``evaluation`` is an ``agentforge.verify.Evaluation``, an ``agents.roles.Feedback``, any
    object with ``to_dict()``, or a mapping. It must say ``verified: true`` explicitly: a
    missing flag is refused like a false one (:class:`UnverifiedError`).
    """
    if hasattr(evaluation, "to_dict"):
        data = evaluation.to_dict()
    elif dataclasses.is_dataclass(evaluation) and not isinstance(evaluation, type):
        data = dataclasses.asdict(evaluation)
    elif isinstance(evaluation, dict):
        data = dict(evaluation)
    else:
        raise TypeError("an evaluation summary is an Evaluation, a Feedback or a dict, "
                        f"not {type(evaluation).__name__}")
    if data.get("verified") is not True:
        state = "has no 'verified' flag" if "verified" not in data else f"says verified={data.get('verified')!r}"
        raise UnverifiedError(f"refusing to store an unverified {what}: its evaluation {state}; only answers "
                              f"the verifier accepted may be stored")
    summary = {k: data[k] for k in SUMMARY_FIELDS if k in data and data[k] is not None}
    speedup = summary.get("speedup")
    if speedup is not None:
        summary["speedup"] = float(speedup)
    return summary


def speedup_of(summary: dict[str, Any]) -> float | None:
    value = summary.get("speedup")
    return float(value) if isinstance(value, (int, float)) else None


__all__ += ["SUMMARY_FIELDS", "canonical_json", "evaluation_summary", "speedup_of"]
