"""Evaluating untrusted candidates in a worker process with a time limit and a memory cap.

A kernel is ASP text, never executed as Python, but a pathological one can still run the
interpreter for a very long time or ask for a lot of memory. The worker process holds an
address-space limit (RLIMIT_AS, set once above what its imports use) and the parent kills it
when an evaluation overruns its wall-clock limit; both outcomes become evaluation results
(``timeout`` / ``memory`` / ``crash``), never exceptions that end the caller.

A *confined* worker (``Evaluator(confine=True)``) is for task code nobody here wrote (a task
that came in with a foreign library): before it reads its first request it is locked in with
Linux Landlock so that it cannot create, write, truncate, rename or delete any file outside its
own scratch directory, cannot open or accept TCP connections (Landlock ABI >= 4) and cannot
signal processes outside itself (ABI >= 6); a root worker also moves into a network namespace of
its own (no interfaces) and drops every capability. It answers in JSON (a worker that ran hostile
code cannot make the parent unpickle anything) and is killed with its whole process group. Where
Landlock is not available, a confined worker refuses to start and every evaluation it was asked
for is a ``sandbox`` result saying why: foreign task code never runs unconfined.
"""

from __future__ import annotations

import ctypes
import os
import queue
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from .errors import AgentforgeError
from .framing import recv, recv_json, send, send_json
from .verify import Evaluation, VerifyConfig

SCRATCH_FILE_BYTES = 256 << 20      # RLIMIT_FSIZE of a confined worker: it may fill its scratch this far


class SandboxError(AgentforgeError):
    """A confined worker cannot be started here (no Landlock), so foreign task code is not run."""


def _vm_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# ------------------------------------------------------------------ confinement (Linux Landlock)

_LANDLOCK_CREATE_RULESET, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT_SELF = 444, 445, 446   # every architecture
_PR_SET_NO_NEW_PRIVS, _PR_CAPBSET_DROP = 38, 24
_CLONE_NEWNET = 0x40000000
# write-like filesystem rights, by the ABI version that introduced them
_FS_WRITE_V1 = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | \
    (1 << 11) | (1 << 12)          # WRITE_FILE, REMOVE_DIR/FILE, MAKE_CHAR/DIR/REG/SOCK/FIFO/BLOCK/SYM
_FS_REFER, _FS_TRUNCATE = 1 << 13, 1 << 14
_NET_TCP = (1 << 0) | (1 << 1)     # BIND_TCP, CONNECT_TCP
_SCOPE_ALL = (1 << 0) | (1 << 1)   # ABSTRACT_UNIX_SOCKET, SIGNAL


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where Landlock is missing or disabled."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        v = libc.syscall(_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    except (OSError, AttributeError):
        return 0
    return max(0, int(v))


def confine(scratch: str | Path) -> str:
    """Lock this process in: no filesystem writes outside ``scratch`` (Landlock), no TCP, no
    signals out, no new privileges; as root also no network and no capabilities. Irreversible,
    inherited by any child. Returns what was applied; raises :class:`SandboxError` when the
    write confinement itself cannot be applied (the caller must then not run the code)."""
    abi = landlock_abi()
    if abi < 1:
        raise SandboxError("Linux Landlock is not available here (it needs Linux >= 5.13 with 'landlock' in the "
                           "LSM list), so task code from a foreign library is not run: its write access could "
                           "not be confined to a scratch directory\n  how to fix: run on a kernel with Landlock "
                           "enabled, or merge only libraries whose tasks this library already defines")
    libc = ctypes.CDLL(None, use_errno=True)
    applied = [f"landlock abi {abi}"]
    if os.geteuid() == 0:   # root: leave the host's network and give up every capability
        if libc.unshare(_CLONE_NEWNET) == 0:
            applied.append("no network")
        for cap in range(64):
            libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
        hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)      # _LINUX_CAPABILITY_VERSION_3, this process
        data = (ctypes.c_uint32 * 6)()                    # effective, permitted, inheritable: empty
        if libc.capset(hdr, data) == 0:
            applied.append("no capabilities")
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SandboxError(f"prctl(NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")
    fs = _FS_WRITE_V1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(fs, _NET_TCP if abi >= 4 else 0, _SCOPE_ALL if abi >= 6 else 0)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else 16 if abi >= 4 else 8
    rs = libc.syscall(_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if rs < 0:
        raise SandboxError(f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
    try:
        dfd = os.open(str(scratch), os.O_PATH | os.O_DIRECTORY)
        try:
            rule = _PathBeneathAttr(fs, dfd)
            if libc.syscall(_LANDLOCK_ADD_RULE, ctypes.c_int(rs), ctypes.c_int(1), ctypes.byref(rule),
                            ctypes.c_uint32(0)) != 0:
                raise SandboxError(f"landlock_add_rule failed: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(dfd)
        if libc.syscall(_LANDLOCK_RESTRICT_SELF, ctypes.c_int(rs), ctypes.c_uint32(0)) != 0:
            raise SandboxError(f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(rs)
    if abi >= 4:
        applied.append("no tcp")
    if abi >= 6:
        applied.append("no signals out")
    return ", ".join(applied)


def worker_main(memory_mb: int, threads: int, scratch: str | None = None) -> None:
    """The worker: requests on stdin, results on the real stdout as JSON (prints go to stderr).
    With ``scratch`` it confines itself (:func:`confine`) first and says how, or why it cannot."""
    import resource

    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer

    import torch

    from .tasks import load_task
    from .verify import _out_of_memory, evaluate

    torch.set_num_threads(max(1, threads))
    if memory_mb > 0:
        cap = _vm_bytes() + memory_mb * 2**20
        try:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        except (ValueError, OSError):
            pass
    if scratch is not None:
        try:
            resource.setrlimit(resource.RLIMIT_FSIZE, (SCRATCH_FILE_BYTES, SCRATCH_FILE_BYTES))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            how = confine(scratch)
        except (SandboxError, OSError, ValueError) as e:
            send_json(out, {"__error__": "sandbox", "message": str(e)})
            return
        send_json(out, {"ready": how})
    tasks = {}
    while True:
        try:
            req = recv(inp)
        except EOFError:
            return
        if req is None:
            return
        if isinstance(req, dict):        # {"op": "inspect", ...}: evaluate, and say what the task is
            task_path, candidate, cfg, baseline_seconds = req["task_path"], req["candidate"], req["cfg"], None
        else:
            task_path, candidate, cfg, baseline_seconds = req
        try:
            if task_path not in tasks:
                tasks[task_path] = load_task(task_path)
            ev = evaluate(tasks[task_path], candidate, cfg, baseline_seconds)
            reply = ev.to_dict()
            if isinstance(req, dict):
                reply = {"evaluation": reply, **(_inspect(tasks[task_path], candidate, cfg) if ev.verified else {})}
            send_json(out, reply)
        except BaseException as e:  # noqa: BLE001 - any failure of the candidate is a result
            if _out_of_memory(e):  # a MemoryError, or torch's allocator failing under the cap
                send_json(out, {"__error__": "memory",
                                 "message": f"the evaluation exceeded its {memory_mb} MiB memory cap "
                                            f"({type(e).__name__}: {str(e)[:200]})"})
                continue
            send_json(out, {"__error__": "crash", "message": f"{type(e).__name__}: {e}",
                             "traceback": traceback.format_exc(limit=12)})


def _inspect(task, candidate: dict, cfg: VerifyConfig) -> dict:
    """What a library entry must agree with, computed from the task itself: its semantic
    signature and input dtypes at its own sizes, and the ASP files the candidate's solution
    writes there."""
    import asp_lang

    from .capture import capture_at, signature
    from .solution import solution

    graph = capture_at(task, meta=True)
    sig = signature(graph)
    out = {"signature": {"key": sig.key(), "class_key": sig.class_key(), "sized_key": sig.sized_key()},
           "dtypes": list(sig.input_dtypes), "own_sizes": dict(task.sizes)}
    out["files"] = solution(candidate, asp_lang.load_machine(cfg.machine)).files(graph)
    return out


class Evaluator:
    """One worker process, reused across evaluations and restarted after a kill.

    ``confine=True``: the worker is locked into a scratch directory of its own (see the module
    docstring) before it runs any task code; for task files from a foreign library. Where that
    cannot be done every evaluation is a ``sandbox`` result, never an unconfined run."""

    def __init__(self, cfg: VerifyConfig | None = None, threads: int = 1, confine: bool = False):
        self.cfg = cfg or VerifyConfig()
        self.threads = threads
        self.confine = confine
        self.confinement: str | None = None      # what the confined worker applied ("landlock abi 7, ...")
        self.scratch: Path | None = None
        self._proc: subprocess.Popen | None = None

    def _start(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        argv = [sys.executable, "-m", "agentforge.sandbox", str(self.cfg.memory_mb), str(self.threads)]
        extra: dict = {}
        if self.confine:
            if self.scratch is None or not self.scratch.is_dir():
                self.scratch = Path(tempfile.mkdtemp(prefix="agentforge-sandbox-"))
            argv.append(str(self.scratch))
            env.update(HOME=str(self.scratch), TMPDIR=str(self.scratch), PYTHONDONTWRITEBYTECODE="1")
            extra = {"cwd": str(self.scratch), "start_new_session": True}   # killed with anything it forks
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, env=env, **extra)
        if self.confine:
            try:
                ready, _, _ = select.select([self._proc.stdout], [], [], 120)
                hello = recv_json(self._proc.stdout) if ready else {"__error__": "sandbox", "message":
                                                                     "the confined worker did not start in 120 s"}
            except (EOFError, OSError, ValueError) as e:
                hello = {"__error__": "sandbox", "message": f"the confined worker did not start ({e})"}
            if "ready" not in hello:
                self._kill()
                raise SandboxError(str(hello.get("message", "the confined worker did not start")))
            self.confinement = str(hello["ready"])

    def _kill(self) -> None:
        if self._proc is not None:
            if self.confine:
                try:
                    os.killpg(self._proc.pid, 9)
                except (ProcessLookupError, PermissionError):
                    pass
            self._proc.kill()
            self._proc.wait(5)
            for s in (self._proc.stdin, self._proc.stdout):
                try:
                    s.close()
                except OSError:
                    pass
        self._proc = None

    def _call(self, name: str, candidate: dict, request, timeout: float) -> tuple[dict | None, Evaluation | None]:
        """Send one request; the worker's JSON answer, or the failed Evaluation that replaces it."""
        t0 = time.perf_counter()
        if self._proc is None or self._proc.poll() is not None:
            try:
                self._start()
            except SandboxError as e:
                return None, _failed(name, candidate, "sandbox", str(e), time.perf_counter() - t0, self.cfg)
        try:
            send(self._proc.stdin, request)
            ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
            if not ready:
                self._kill()
                return None, _failed(name, candidate, "timeout", f"the evaluation took longer than {timeout:g} s "
                                     "and was killed", time.perf_counter() - t0, self.cfg)
            d = recv_json(self._proc.stdout)
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError, ValueError):
            code = None
            if self._proc is not None:
                try:  # EOF can arrive before the exit is visible: give the OS a moment to report it
                    code = self._proc.wait(2)
                except subprocess.TimeoutExpired:
                    code = self._proc.poll()
            self._kill()
            return None, _failed(name, candidate, "crash", f"the evaluation process died (exit code {code})",
                                 time.perf_counter() - t0, self.cfg)
        if "__error__" in d:
            if d["__error__"] == "memory":
                self._kill()  # its heap may be fragmented near the cap: start clean
            return None, _failed(name, candidate, str(d["__error__"]), str(d.get("message")),
                                 time.perf_counter() - t0, self.cfg, d.get("traceback"))
        return d, None

    def _evaluation(self, d: dict, name: str, candidate: dict) -> Evaluation:
        try:
            ev = Evaluation.from_dict(d)
        except (TypeError, ValueError, KeyError) as e:
            self._kill()
            return _failed(name, candidate, "crash", f"the worker's answer is not an evaluation ({e})", 0.0, self.cfg)
        if ev.reason_code == "memory":
            self._kill()  # it ran out of memory inside evaluate(): start clean too
        return ev

    def evaluate(self, task_path: str | Path, candidate: dict, baseline_seconds: float | None = None,
                 timeout_s: float | None = None) -> Evaluation:
        """Evaluate in the worker; a timeout, memory overrun or crash is returned as a result."""
        timeout = self.cfg.timeout_s if timeout_s is None else timeout_s
        name = Path(task_path).stem
        d, failed = self._call(name, candidate, (str(Path(task_path).resolve()), candidate, self.cfg,
                                                 baseline_seconds), timeout)
        return failed if failed is not None else self._evaluation(d, name, candidate)

    def inspect(self, task_path: str | Path, candidate: dict,
                timeout_s: float | None = None) -> tuple[Evaluation, dict]:
        """Evaluate, and when verified also return what the task says a library entry must hold:
        ``{"signature": {...}, "dtypes": [...], "own_sizes": {...}, "files": {name: text} | None}``
        (``files``: the ASP a plan builds at the task's sizes), all computed in the worker."""
        timeout = self.cfg.timeout_s if timeout_s is None else timeout_s
        name = Path(task_path).stem
        d, failed = self._call(name, candidate, {"op": "inspect", "task_path": str(Path(task_path).resolve()),
                                                 "candidate": candidate, "cfg": self.cfg}, timeout)
        if failed is not None:
            return failed, {}
        ev = self._evaluation(d.get("evaluation") if isinstance(d.get("evaluation"), dict) else {}, name, candidate)
        return ev, {k: v for k, v in d.items() if k != "evaluation"}

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None and not self.confine:   # a confined one is killed
            try:
                send(self._proc.stdin, None)
                self._proc.wait(5)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                pass
        self._kill()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

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


__all__ = ["Evaluator", "EvaluatorPool", "SandboxError", "confine", "landlock_abi"]

if __name__ == "__main__":
    worker_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
