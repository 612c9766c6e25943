"""Fixtures shared across test folders."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def default_campaign(tmp_path_factory) -> Path:
    """The run directory of the README's main command (`agentforge campaign`: offline, the bundled
    suite, default workers), run once per test session. Under xdist the workers share one run: the
    first to get here runs it, the others wait on a lock and reuse it."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base   # this session's folder
    run_dir = shared / "default-campaign"
    with open(shared / "default-campaign.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run_dir / "done").exists():
            proc = subprocess.run([sys.executable, "-m", "agentforge.cli", "campaign", "--out", str(run_dir),
                                   "--quiet"], cwd=shared, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            (run_dir / "done").write_text(proc.stdout)
    return run_dir
