"""Fixtures shared across test folders."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _session_folder(tmp_path_factory) -> Path:
    """This test session's folder, the same for every xdist worker (their basetemps are below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


#: small tasks whose kernels match subgraphs of the PyTorch test models (test_torch_*.py)
TORCH_TASKS = tuple(str(p) for p in sorted((ROOT / "tests" / "agentforge" / "fixtures" / "torch_tasks").glob("*.py"))) \
    + (str(ROOT / "evals" / "suite" / "softmax.py"),)


@pytest.fixture(scope="session")
def torch_library(tmp_path_factory) -> Path:
    """A library of :data:`TORCH_TASKS`, solved by the offline author once per test session and
    shared by every test file and xdist worker that needs it (tests only read it): building it
    is one of the suite's most expensive setups, and was repeated once per worker."""
    from agentforge.torch._build import build_library

    shared = _session_folder(tmp_path_factory)
    out = shared / "torch-library" / "library"
    with open(shared / "torch-library.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out.parent / "done").exists():
            if out.exists():
                shutil.rmtree(out)      # a build that died half way
            _, notes = build_library(list(TORCH_TASKS), out)   # what is missing, a test names
            (out.parent / "done").write_text("\n".join([*TORCH_TASKS, *notes]))
    return out


@pytest.fixture(scope="session")
def default_campaign(tmp_path_factory) -> Path:
    """The run directory of the README's main command (`agentforge campaign`: offline, the bundled
    suite, default workers), run once per test session as a user runs it, stdout a pipe (what it
    printed is in RUN/done) and umask 022. Under xdist the workers share one run: the first to get
    here runs it, the others wait on a lock and reuse it. Tests that change a run work on a copy."""
    shared = _session_folder(tmp_path_factory)
    run_dir = shared / "default-campaign"
    with open(shared / "default-campaign.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run_dir / "done").exists():
            proc = subprocess.run([sys.executable, "-m", "agentforge.cli", "campaign", "--out", str(run_dir)],
                                  cwd=shared, capture_output=True, text=True, preexec_fn=lambda: os.umask(0o022))
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            (run_dir / "done").write_text(proc.stdout)
    return run_dir
