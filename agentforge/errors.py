"""User-facing error types of agentforge.

Every error a user can cause by what they wrote (a task file, a sidecar, a size override, a
configuration) is raised as a subclass of :class:`AgentforgeError`. The command line catches
this one class and prints ``str(error)`` without a traceback, so the message itself must be
enough to act on: *where* (the file), *what* is wrong, and *how* to fix it. Bugs in agentforge
itself stay ordinary exceptions and keep their tracebacks.
"""

from __future__ import annotations

from os import PathLike


class AgentforgeError(Exception):
    """Base class of errors caused by user input; ``str(err)`` is the message to show."""


class TaskError(AgentforgeError):
    """A task file (or its sidecar, or a size override for it) is wrong.

    The message always starts with the task file (``path`` or ``path:line``), then says what
    is wrong (``problem``) and, when there is a sensible fix, how to fix it (``hint``). The
    parts are kept as attributes so that tools (reports, the campaign log) can show them
    separately.
    """

    def __init__(
        self,
        path: str | PathLike[str],
        problem: str,
        hint: str | None = None,
        *,
        line: int | None = None,
    ) -> None:
        self.path = str(path)
        self.problem = problem
        self.hint = hint
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        message = f"{where}: {problem}"
        if hint:
            message += f"\n  how to fix: {hint}"
        super().__init__(message)

    def __reduce__(self):  # keep pickling working (multiprocessing workers raise these)
        return (_rebuild_task_error, (self.path, self.problem, self.hint, self.line))


def _rebuild_task_error(path: str, problem: str, hint: str | None, line: int | None) -> TaskError:
    return TaskError(path, problem, hint, line=line)
