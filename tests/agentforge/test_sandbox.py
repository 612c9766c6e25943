"""The sandboxed Evaluator: a timeout, a memory overrun or a dead worker is a result, and the
worker is replaced afterwards. Each worker start imports torch (several seconds), so the tests
share workers where they can."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from agentforge.sandbox import Evaluator
from agentforge.verify import Evaluation, VerifyConfig

ROOT = Path(__file__).resolve().parents[2]
SOFTMAX = ROOT / "evals" / "suite" / "softmax.py"
CONTROL = {"kind": "kernel", "source": (ROOT / "evals" / "adversarial" / "controls" / "softmax__online.asp").read_text(),
           "filename": "softmax__online.asp"}

# an accumulation whose update is not a plain reduction runs step by step: 200000 steps
# (within the interpreter's limits) take seconds, whatever the host
SLOW = {"kind": "kernel", "filename": "slow.asp", "source": """
kernel slow(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes LOTS = 200000
  fn mix(acc, t) = maximum(acc * 0.5, t - acc)
  xs = load(x, tile=[M, N], repeat=LOTS)
  s = accum(xs, rank=1, init=zeros([M, N]), fn=mix)
  store(y, s)
}
"""}

# a map over 200000 repeats of the input: ~400 MiB of f32 in one stream value
HOG = {"kind": "kernel", "filename": "hog.asp", "source": """
kernel hog(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes LOTS = 200000
  fn twice(t) = t * 2
  fn add(acc, t) = acc + t
  xs = load(x, tile=[M, N], repeat=LOTS)
  ds = map(xs, fn=twice)
  s = accum(ds, rank=1, init=zeros([M, N]), fn=add)
  store(y, s)
}
"""}


@pytest.fixture(scope="module")
def worker():
    with Evaluator(VerifyConfig(machine="sn40l")) as w:
        ev = w.evaluate(SOFTMAX, CONTROL)  # start it (imports) once for the module
        assert ev.verified, ev.reason
        yield w


def test_result_crosses_the_process_boundary(worker):
    ev = worker.evaluate(SOFTMAX, CONTROL)
    assert isinstance(ev, Evaluation) and ev.verified and ev.speedup > 0 and len(ev.checks) == 7  # 6 + "large"


def test_timeout_kills_and_the_next_evaluation_restarts(worker):
    pid = worker._proc.pid
    t0 = time.perf_counter()
    ev = worker.evaluate(SOFTMAX, SLOW, timeout_s=0.5)
    took = time.perf_counter() - t0
    assert not ev.verified and ev.reason_code == "timeout" and "0.5" in ev.reason
    assert took < 0.5 + 3.0, f"the timeout took {took:.1f} s to be reported"
    assert worker._proc is None  # killed
    with pytest.raises(ProcessLookupError):
        _wait_gone(pid)
    ev = worker.evaluate(SOFTMAX, CONTROL)  # a fresh worker
    assert ev.verified, ev.reason
    assert worker._proc.pid != pid


def test_killed_worker_is_a_crash_result(worker):
    worker.evaluate(SOFTMAX, CONTROL)  # make sure it is up and idle
    pid = worker._proc.pid

    def kill_soon():
        time.sleep(0.4)
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    try:
        ev = worker.evaluate(SOFTMAX, SLOW, timeout_s=60)
    finally:
        killer.join()
    assert not ev.verified and ev.reason_code == "crash"
    assert "died" in ev.reason and "-9" in ev.reason
    ev = worker.evaluate(SOFTMAX, CONTROL)
    assert ev.verified, ev.reason


def test_tiny_memory_cap_is_a_memory_result():
    with Evaluator(VerifyConfig(machine="sn40l", memory_mb=64)) as w:
        ev = w.evaluate(SOFTMAX, CONTROL, timeout_s=60)
    assert not ev.verified and ev.reason_code == "memory", ev.reason


def test_memory_hungry_kernel_is_a_memory_result():
    with Evaluator(VerifyConfig(machine="sn40l", memory_mb=256)) as w:
        ev = w.evaluate(SOFTMAX, HOG, timeout_s=60)
        assert not ev.verified and ev.reason_code == "memory", ev.reason
        assert "256 MiB" in ev.reason
        assert w._proc is None  # restarted clean on the next evaluation


def _wait_gone(pid: int) -> None:
    """Raise ProcessLookupError once ``pid`` no longer exists (it was reaped by the Evaluator)."""
    for _ in range(50):
        os.kill(pid, 0)
        time.sleep(0.1)


def test_a_pool_serves_threads_at_once_and_each_gets_its_own_result():
    """The loop's parallel workers share one pool: no two evaluations may cross on one pipe."""
    from agentforge.sandbox import EvaluatorPool

    bad = {"kind": "kernel", "source": CONTROL["source"].replace("exp(", "exp(2.0 * "), "filename": "bad.asp"}
    results: dict[int, Evaluation] = {}
    with EvaluatorPool(VerifyConfig(timeout_s=120.0), size=2) as pool:
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, pool.evaluate(
            SOFTMAX, CONTROL if i % 2 == 0 else bad))) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert len(pool._all) == 2
    assert [results[i].verified for i in range(4)] == [True, False, True, False]
