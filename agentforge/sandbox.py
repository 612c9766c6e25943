"""Evaluating untrusted candidates in a worker process with a time limit and a memory cap.

A kernel is ASP text, never executed as Python, but a pathological one can still run the
interpreter for a very long time or ask for a lot of memory. The worker process holds an
address-space limit (RLIMIT_AS, set once above what its imports use) and the parent kills it
when an evaluation overruns its wall-clock limit; both outcomes become evaluation results
(``timeout`` / ``memory`` / ``crash``), never exceptions that end the caller.
"""

from __future__ import annotations

import os
import pickle
import queue
import select
import struct
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from .verify import Evaluation, VerifyConfig

_HEADER = struct.Struct("!Q")


def _vm_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exact(stream, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            raise EOFError("the worker closed its output")
        buf += chunk
    return buf


def _recv(stream):
    (n,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    return pickle.loads(_read_exact(stream, n))


def worker_main(memory_mb: int, threads: int) -> None:
    """The worker: requests on stdin, results on the real stdout (prints go to stderr)."""
    import resource

    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer

    import torch

    from .tasks import load_task
    from .verify import evaluate

    torch.set_num_threads(max(1, threads))
    if memory_mb > 0:
        cap = _vm_bytes() + memory_mb * 2**20
        try:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        except (ValueError, OSError):
            pass
    tasks = {}
    while True:
        try:
            req = _recv(inp)
        except EOFError:
            return
        if req is None:
            return
        task_path, candidate, cfg, baseline_seconds = req
        try:
            if task_path not in tasks:
                tasks[task_path] = load_task(task_path)
            ev = evaluate(tasks[task_path], candidate, cfg, baseline_seconds)
            _send(out, ev.to_dict())
        except MemoryError:
            _send(out, {"__error__": "memory", "message": f"the evaluation exceeded its {memory_mb} MiB memory cap"})
        except BaseException as e:  # noqa: BLE001 - any failure of the candidate is a result
            _send(out, {"__error__": "crash", "message": f"{type(e).__name__}: {e}",
                        "traceback": traceback.format_exc(limit=12)})


class Evaluator:
    """One worker process, reused across evaluations and restarted after a kill."""

    def __init__(self, cfg: VerifyConfig | None = None, threads: int = 1):
        self.cfg = cfg or VerifyConfig()
        self.threads = threads
        self._proc: subprocess.Popen | None = None

    def _start(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "agentforge.sandbox", str(self.cfg.memory_mb), str(self.threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(5)
            for s in (self._proc.stdin, self._proc.stdout):
                try:
                    s.close()
                except OSError:
                    pass
        self._proc = None

    def evaluate(self, task_path: str | Path, candidate: dict, baseline_seconds: float | None = None,
                 timeout_s: float | None = None) -> Evaluation:
        """Evaluate in the worker; a timeout, memory overrun or crash is returned as a result."""
        timeout = self.cfg.timeout_s if timeout_s is None else timeout_s
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        name = Path(task_path).stem
        t0 = time.perf_counter()
        try:
            _send(self._proc.stdin, (str(Path(task_path).resolve()), candidate, self.cfg, baseline_seconds))
            ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
            if not ready:
                self._kill()
                return _failed(name, candidate, "timeout", f"the evaluation took longer than {timeout:g} s and was "
                               "killed", time.perf_counter() - t0, self.cfg)
            d = _recv(self._proc.stdout)
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError, pickle.UnpicklingError):
            code = None
            if self._proc is not None:
                try:  # EOF can arrive before the exit is visible: give the OS a moment to report it
                    code = self._proc.wait(2)
                except subprocess.TimeoutExpired:
                    code = self._proc.poll()
            self._kill()
            return _failed(name, candidate, "crash", f"the evaluation process died (exit code {code})",
                           time.perf_counter() - t0, self.cfg)
        if "__error__" in d:
            if d["__error__"] == "memory":
                self._kill()  # its heap may be fragmented near the cap: start clean
            return _failed(name, candidate, d["__error__"], d["message"], time.perf_counter() - t0, self.cfg,
                           d.get("traceback"))
        ev = Evaluation.from_dict(d)
        if ev.reason_code == "memory":
            self._kill()  # it ran out of memory inside evaluate(): start clean too
        return ev

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                _send(self._proc.stdin, None)
                self._proc.wait(5)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                pass
        self._kill()

    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EvaluatorPool:
    """``size`` worker processes for callers in several threads (the loop's parallel workers).

    One :class:`Evaluator` talks over one pipe and must not be used by two threads at once; the
    pool lends each evaluation a worker of its own, starting up to ``size`` of them on demand."""

    def __init__(self, cfg: VerifyConfig | None = None, size: int = 1, threads: int = 1):
        self.cfg, self.size, self.threads = cfg or VerifyConfig(), max(1, size), threads
        self._idle: "queue.Queue[Evaluator]" = queue.Queue()
        self._all: list[Evaluator] = []
        self._lock = threading.Lock()

    def _borrow(self) -> Evaluator:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if len(self._all) < self.size:
                ev = Evaluator(self.cfg, self.threads)
                self._all.append(ev)
                return ev
        return self._idle.get()

    def evaluate(self, task_path: str | Path, candidate: dict, baseline_seconds: float | None = None,
                 timeout_s: float | None = None) -> Evaluation:
        ev = self._borrow()
        try:
            return ev.evaluate(task_path, candidate, baseline_seconds, timeout_s)
        finally:
            self._idle.put(ev)

    def close(self) -> None:
        with self._lock:
            for ev in self._all:
                ev.close()
            self._all.clear()

    def __enter__(self) -> "EvaluatorPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _failed(task: str, candidate: dict, code: str, message: str, seconds: float, cfg: VerifyConfig,
            tb: str | None = None) -> Evaluation:
    ev = Evaluation(task, candidate.get("kind", "?"), False, message, reason_code=code, machine=cfg.machine,
                    eval_seconds=seconds)
    ev.error = {"kind": code, "message": message, **({"traceback": tb} if tb else {})}
    return ev


__all__ = ["Evaluator", "EvaluatorPool"]

if __name__ == "__main__":
    worker_main(int(sys.argv[1]), int(sys.argv[2]))
