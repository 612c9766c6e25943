"""Fixtures shared across test folders."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
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


#: runs the README's main command into RUN (argv[1]) and leaves RUN/done (its stdout) or RUN.failed
_CAMPAIGN_RUNNER = """
import subprocess, sys
from pathlib import Path
run = Path(sys.argv[1])
p = subprocess.run([sys.executable, "-m", "agentforge.cli", "campaign", "--out", str(run)], capture_output=True,
                   text=True)
if p.returncode == 0:
    (run / "done").write_text(p.stdout)
else:
    Path(str(run) + ".failed").write_text(f"exit {p.returncode}\\n" + p.stdout[-3000:] + p.stderr[-3000:])
"""


def _start_default_campaign(shared: Path) -> None:
    """Start the README's main command in the background (once per session, whoever asks first), so
    it runs beside other tests instead of holding a worker that waits for it idle."""
    with open(shared / "default-campaign.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (shared / "default-campaign.started").exists() or (shared / "default-campaign" / "done").exists():
            return
        subprocess.Popen([sys.executable, "-c", _CAMPAIGN_RUNNER, str(shared / "default-campaign")], cwd=shared,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                         preexec_fn=lambda: os.umask(0o022))
        (shared / "default-campaign.started").write_text(str(os.getpid()))


def pytest_collection_modifyitems(session, config, items) -> None:
    """Where a collected test needs the default campaign, start it now (see :func:`default_campaign`)."""
    if any("default_campaign" in getattr(i, "fixturenames", ()) for i in items):
        _start_default_campaign(_session_folder(config._tmp_path_factory))


@pytest.fixture(scope="session")
def default_campaign(tmp_path_factory) -> Path:
    """The run directory of the README's main command (`agentforge campaign`: offline, the bundled
    suite, default workers), run once per test session as a user runs it, stdout a pipe (what it
    printed is in RUN/done) and umask 022. It starts in the background when collection finds a test
    that needs it; every xdist worker waits for that one run and reuses it. Tests that change a run
    work on a copy."""
    shared = _session_folder(tmp_path_factory)
    run_dir = shared / "default-campaign"
    failed = shared / "default-campaign.failed"
    _start_default_campaign(shared)
    deadline = time.monotonic() + 1200
    while not (run_dir / "done").exists() and not failed.exists():
        assert time.monotonic() < deadline, "the default campaign did not finish in 20 minutes"
        time.sleep(0.5)
    assert not failed.exists(), failed.read_text()
    return run_dir
