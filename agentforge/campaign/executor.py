"""Where a campaign's tasks run: local worker processes, or a Ray cluster.

Both executors run the same pure :func:`agentforge.campaign.job.run_job` on the same job
dicts, so they give the same results. The interface is small on purpose: ``submit`` a job
when ``free()`` says there is room, ``poll`` for messages (progress events and results),
``close``. A task that overruns its time limit is killed (the worker process, or the Ray task
with ``force=True``) and reported as a ``timeout`` result; the campaign goes on.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..framing import frame, take_frames, write_all

Message = tuple[dict, str, dict]   # (job, "event" | "result", data)


class Executor(Protocol):
    def free(self) -> int: ...
    def submit(self, job: dict) -> None: ...
    def poll(self, timeout: float) -> list[Message]: ...
    def running(self) -> list[dict]: ...
    def close(self) -> None: ...


def failed_result(job: dict, code: str, message: str, seconds: float) -> dict:
    return {"task": Path(job["task_path"]).stem, "history": [], "best": None, "best_index": None, "entry": None,
            "llm_calls": [], "notes": [], "attempts": 0, "error": message, "error_code": code, "seconds": seconds}


@dataclass
class _Slot:
    proc: subprocess.Popen | None = None
    job: dict | None = None
    started: float = 0.0
    buf: bytearray = field(default_factory=bytearray)   # bytes read from the worker, not yet a whole frame


class LocalExecutor:
    """``n`` worker processes (``python -m agentforge.campaign.job``), each solving one task at a time."""

    def __init__(self, n: int, memory_mb: int = 0):
        self.slots = [_Slot() for _ in range(n)]
        self.memory_mb = memory_mb

    def _start(self, slot: _Slot) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        env["AGENTFORGE_CONTROLLER_PID"] = str(os.getpid())   # the worker ends when this process dies
        # unbuffered: poll() reads what select() says is there with os.read, so no message can hide
        # in a Python-side buffer where select() cannot see it
        slot.proc = subprocess.Popen([sys.executable, "-m", "agentforge.campaign.job"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, bufsize=0)
        slot.buf = bytearray()

    def free(self) -> int:
        return sum(s.job is None for s in self.slots)

    def running(self) -> list[dict]:
        return [s.job for s in self.slots if s.job is not None]

    def submit(self, job: dict) -> None:
        slot = next(s for s in self.slots if s.job is None)
        if slot.proc is None or slot.proc.poll() is not None:
            self._start(slot)
        slot.job, slot.started = job, time.monotonic()
        try:
            write_all(slot.proc.stdin, frame(job))
        except (BrokenPipeError, OSError):
            self._kill(slot)
            self._start(slot)
            write_all(slot.proc.stdin, frame(job))

    def _kill(self, slot: _Slot) -> None:
        if slot.proc is not None:
            slot.proc.kill()
            try:
                slot.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            for s in (slot.proc.stdin, slot.proc.stdout):
                try:
                    s.close()
                except OSError:
                    pass
        slot.proc = None

    def poll(self, timeout: float) -> list[Message]:
        out: list[Message] = []
        now = time.monotonic()
        for s in self.slots:   # time limits first: a hung task is killed, the others go on
            if s.job is not None and now - s.started > s.job["task_timeout_s"]:
                job = s.job
                self._kill(s)
                s.job = None
                out.append((job, "result", failed_result(job, "timeout", f"the task took longer than "
                                                         f"{job['task_timeout_s']:g} s and was killed",
                                                         now - s.started)))
        if out:
            return out
        busy = {s.proc.stdout.fileno(): s for s in self.slots if s.job is not None and s.proc is not None}
        if not busy:
            time.sleep(min(timeout, 0.05))
            return out
        limit = min([timeout] + [s.job["task_timeout_s"] - (now - s.started) for s in busy.values()])
        ready, _, _ = select.select(list(busy), [], [], max(0.0, limit))
        for fd in ready:
            s = busy[fd]
            job = s.job
            try:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise EOFError("the worker closed its output")
                s.buf += chunk
                msgs = take_frames(s.buf)
            except Exception:  # noqa: BLE001 - a dead worker (or a garbled stream) is a crashed task
                code = s.proc.poll() if s.proc else None
                self._kill(s)
                s.job = None
                out.append((job, "result", failed_result(job, "crash", f"the worker process died (exit code {code})",
                                                         time.monotonic() - s.started)))
                continue
            for msg in msgs:
                if msg["kind"] == "result":
                    s.job = None
                out.append((job, msg["kind"], msg["data"]))
        return out

    def close(self) -> None:
        # every idle worker is told to stop before any is waited for: they exit at once, not in turn
        stopping = []
        for s in self.slots:
            if s.proc is not None and s.proc.poll() is None and s.job is None:
                try:
                    write_all(s.proc.stdin, frame(None))
                    stopping.append(s)
                except (BrokenPipeError, OSError):
                    pass
        deadline = time.monotonic() + 5
        for s in stopping:
            try:
                s.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for s in self.slots:
            if s.proc is not None:
                self._kill(s)
            s.job = None


class RayExecutor:
    """Tasks as Ray remote functions (``ray.init(address=...)``; a local instance by default).

    Events stream back as they happen through a Ray queue actor (progress, LLM calls booked at
    once, verified attempts kept if the task is then killed), as the local executor's pipes do.
    Jobs carry file paths (task files, the run directory's databases): on a multi-node cluster
    the run directory and the suite must be on a filesystem every node shares."""

    def __init__(self, n: int, address: str = "", memory_mb: int = 0):
        try:
            import ray
            from ray.util.queue import Queue
        except ImportError:
            from .config import ConfigError

            raise ConfigError("executor 'ray' needs Ray\n  how to fix: pip install 'agentforge[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            root = str(Path(__file__).resolve().parents[2])
            kw: dict[str, Any] = {"runtime_env": {"env_vars": {"PYTHONPATH": root, "OMP_NUM_THREADS": "1"}},
                                  "include_dashboard": False, "log_to_driver": False,
                                  "ignore_reinit_error": True}
            if address:
                kw["address"] = address
            else:
                kw["num_cpus"] = max(1, n)
            ray.init(**kw)
            self._owns = True
        else:
            self._owns = False
        self.n = n
        self._fn = ray.remote(num_cpus=1, max_retries=0)(_ray_job)
        self.events = Queue(actor_options={"num_cpus": 0})
        self.pending: dict[Any, tuple[dict, float]] = {}

    def free(self) -> int:
        return self.n - len(self.pending)

    def running(self) -> list[dict]:
        return [j for j, _ in self.pending.values()]

    def submit(self, job: dict) -> None:
        self.pending[self._fn.remote(job, self.events)] = (job, time.monotonic())

    def _drain(self) -> list[Message]:
        """Events put so far, for tasks still pending (a killed task's late events are dropped)."""
        n = self.events.qsize()
        if not n:
            return []
        jobs = {j["thread_id"]: j for j, _ in self.pending.values()}
        return [(jobs[tid], "event", ev) for tid, ev in self.events.get_nowait_batch(n) if tid in jobs]

    def poll(self, timeout: float) -> list[Message]:
        out: list[Message] = []
        now = time.monotonic()
        for ref, (job, t0) in list(self.pending.items()):
            if now - t0 > job["task_timeout_s"]:
                out.extend(m for m in self._drain() if m[0] is job)   # what it reported before the kill
                self.ray.cancel(ref, force=True)
                del self.pending[ref]
                out.append((job, "result", failed_result(job, "timeout", f"the task took longer than "
                                                         f"{job['task_timeout_s']:g} s and was killed", now - t0)))
        if out or not self.pending:
            if not self.pending:
                time.sleep(min(timeout, 0.05))
            return out
        ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        out.extend(self._drain())     # a task's events were all put before its result was ready
        for ref in ready:
            job, t0 = self.pending.pop(ref)
            try:
                res = self.ray.get(ref)
            except Exception as e:  # noqa: BLE001 - a lost worker or node is a crashed task
                res = failed_result(job, "crash", f"the Ray task failed: {type(e).__name__}: {e}", time.monotonic() - t0)
            out.append((job, "result", res))
        return out

    def close(self) -> None:
        for ref in list(self.pending):
            self.ray.cancel(ref, force=True)
        self.pending.clear()
        try:
            self.events.shutdown()
        except Exception:  # noqa: BLE001 - Ray is going down anyway
            pass
        if self._owns:
            self.ray.shutdown()


def _ray_job(job: dict, events) -> dict:
    from .job import run_job

    return run_job(job, lambda e: events.put((job["thread_id"], e)))


def make_executor(kind: str, n: int, address: str = "", memory_mb: int = 0) -> Executor:
    if kind == "ray":
        return RayExecutor(n, address, memory_mb)
    return LocalExecutor(n, memory_mb)


__all__ = ["LocalExecutor", "RayExecutor", "make_executor", "failed_result", "Executor"]
