"""Build a small kernel library from task files without a campaign (tests, quick experiments).

Why it exists: the campaign is the product's way to fill a library; this is the shortest path
from a few task files to a valid library (the offline roles solve each task, the verified
answer goes in with ``build_entry``), so the PyTorch bridge can be tried on a laptop in seconds.
"""

from __future__ import annotations

import datetime as _dt
import os
import functools
import tempfile
from pathlib import Path

import asp_lang

from agentforge import __version__
from agentforge.library import Library, Provenance, build_entry


def build_library(task_paths: list[str | os.PathLike[str]], out: str | os.PathLike[str],
                  machine: str = "sn40l") -> tuple[Library, list[str]]:
    """Solve each task offline and add the verified kernels to the library at ``out``.

    Returns the library and one note per task that did not yield a verified kernel (a task
    the offline author cannot solve is reported, not raised: the rest of the library is still
    useful)."""
    from agentforge.loop import offline_roles, solve, task_context
    from agentforge.tasks import load_task

    lib = Library.create(out, machine, asp_lang.EMULATOR_VERSION)
    notes: list[str] = []
    date = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    for path in task_paths:
        task = load_task(path)
        ctx = task_context(task, machine)
        planner, workers, reflector = offline_roles()
        res = solve(task, planner, workers, reflector, ctx=ctx)
        if not res.verified or res.best_candidate is None:
            notes.append(f"{task.name}: no verified kernel ({res.best.reason if res.best else 'no candidate'})")
            continue
        c = res.best_candidate
        prov = Provenance("offline", None, "planner" if c.plan else None, None, date, machine,
                          asp_lang.EMULATOR_VERSION, __version__)
        entry, files, task_files = build_entry(task, c.solution(ctx.machine), res.best, ctx.signature, prov)
        lib.add(entry, files, task_files)
    return Library.open(out), notes


@functools.lru_cache(maxsize=8)
def cached_library(task_paths: tuple[str, ...], machine: str = "sn40l") -> Path:
    """A library of ``task_paths`` built once per process in a temporary folder (test fixtures
    in several test files share it without a conftest)."""
    out = Path(tempfile.mkdtemp(prefix="agentforge-torch-lib-")) / "library"
    build_library(list(task_paths), out, machine)
    return out
