"""The output of a campaign: a directory of verified kernels with a validated manifest.

Layout (docs/library.md documents every field)::

    library/
      manifest.json              {"schema_version": 1, "format": "agentforge-library", "kernels": [...]}
      kernels/<id>/*.asp         the kernel, or the chain of kernels a plan realizes at the task's sizes
      tasks/<task>.py (+ .toml)  the task each kernel was verified against (so `verify` needs nothing else)

Every kernel entry says what it computes (op name, the task's semantic signature), where it
was verified (sizes and dtypes of every check), how fast it is on the emulated chip (simulated
time, speedup over the op-by-op baseline, fraction of roofline) and where it came from
(author, model, plan, prompt hash, date, machine, emulator version, seed, run).

Writes are atomic (temp file + ``os.replace``): a reader, or a campaign killed mid-write,
never sees half a manifest. Loading validates the manifest and says what to fix.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import AgentforgeError

SCHEMA_VERSION = 1
FORMAT = "agentforge-library"
_ID_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*-[0-9a-f]{8,}$")
_OP_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class LibraryError(AgentforgeError):
    """A library directory or manifest cannot be used as asked."""


@dataclass
class Provenance:
    author: str                         # "offline" | "openai:<model>" | "replay:<file>"
    model: str | None
    plan_source: str | None             # "planner" | "cache" | "reflector" | None (a kernel without plan)
    prompt_hash: str | None             # sha256 of the prompts that produced it (None offline)
    date: str                           # ISO 8601, UTC
    machine: str
    emulator_version: str
    agentforge_version: str
    seed: int = 0
    run: str | None = None              # the campaign's run id


@dataclass
class KernelEntry:
    """One verified kernel (or fused chain) of the library."""
    id: str
    op: str                             # the family name (torch.ops.<ns>.<op>); the task name
    task: str
    task_file: str                      # relative to the library root
    signature: dict[str, str]           # {"key", "class_key", "sized_key"}
    kind: str                           # "kernel" | "plan"
    files: list[str]                    # relative to the library root, in execution order
    verified_at: list[dict[str, Any]]   # [{"sizes": {...}, "seeds": [...], "distributions": [...]}]
    dtypes: list[str]                   # input dtypes it was verified for
    simulated_seconds: float
    baseline_seconds: float
    speedup: float
    roofline_fraction: float | None
    hbm_bytes: float | None
    bottleneck: str | None
    provenance: Provenance
    plan: dict | None = None
    own_sizes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def candidate(self, root: Path) -> dict:
        """The evaluator's candidate dict for this entry (agentforge.verify.evaluate)."""
        if self.kind == "plan":
            return {"kind": "plan", "plan": self.plan}
        return {"kind": "kernel", "source": (root / self.files[0]).read_text(), "filename": self.files[0]}


_ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,), "op": (str,), "task": (str,), "task_file": (str,), "signature": (dict,), "kind": (str,),
    "files": (list,), "verified_at": (list,), "dtypes": (list,), "simulated_seconds": (int, float),
    "baseline_seconds": (int, float), "speedup": (int, float), "roofline_fraction": (int, float, type(None)),
    "hbm_bytes": (int, float, type(None)), "bottleneck": (str, type(None)), "provenance": (dict,),
}
_PROV_REQUIRED = ("author", "date", "machine", "emulator_version", "agentforge_version")


def _entry_from_dict(d: Any, where: str) -> KernelEntry:
    def bad(msg: str) -> LibraryError:
        return LibraryError(f"{where}: {msg}\n  how to fix: regenerate the library with `agentforge campaign`, "
                            f"or correct the entry by hand (docs/library.md lists every field)")

    if not isinstance(d, dict):
        raise bad("a kernel entry must be a JSON object")
    for name, types in _ENTRY_TYPES.items():
        if name not in d:
            raise bad(f"missing field {name!r}")
        if not isinstance(d[name], types) or (isinstance(d[name], bool) and bool not in types):
            raise bad(f"field {name!r} has type {type(d[name]).__name__}, expected "
                      f"{' or '.join(t.__name__ for t in types)}")
    if not _ID_RE.match(d["id"]):
        raise bad(f"id {d['id']!r} must look like <name>-<hex digest>")
    if not _OP_RE.match(d["op"]):
        raise bad(f"op {d['op']!r} must be a Python identifier (it becomes torch.ops.<namespace>.<op>)")
    if d["kind"] not in ("kernel", "plan"):
        raise bad(f"kind {d['kind']!r} must be 'kernel' or 'plan'")
    if d["kind"] == "plan" and not isinstance(d.get("plan"), dict):
        raise bad("a 'plan' entry needs its plan (an object)")
    if not d["files"] or not all(isinstance(f, str) for f in d["files"]):
        raise bad("files must be a non-empty list of paths")
    for f in [*d["files"], d["task_file"]]:
        if Path(f).is_absolute() or ".." in Path(f).parts:
            raise bad(f"path {f!r} must be relative and stay inside the library")
    for k in ("key", "class_key", "sized_key"):
        if not isinstance(d["signature"].get(k), str):
            raise bad(f"signature.{k} is missing")
    for v in d["verified_at"]:
        if not isinstance(v, dict) or not isinstance(v.get("sizes"), dict):
            raise bad("verified_at must list objects with a 'sizes' object")
    if d["speedup"] <= 0 or d["simulated_seconds"] <= 0:
        raise bad("simulated_seconds and speedup must be positive")
    prov = d["provenance"]
    for k in _PROV_REQUIRED:
        if not isinstance(prov.get(k), str):
            raise bad(f"provenance.{k} is missing")
    known = {f for f in Provenance.__dataclass_fields__}
    prov = {k: v for k, v in prov.items() if k in known}
    prov.setdefault("model", None)
    prov.setdefault("plan_source", None)
    prov.setdefault("prompt_hash", None)
    fields = {f for f in KernelEntry.__dataclass_fields__}
    rest = {k: v for k, v in d.items() if k in fields and k != "provenance"}
    return KernelEntry(**rest, provenance=Provenance(**prov))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        mask = os.umask(0o022)   # mkstemp makes 0600; a library is shared: the mode open() would give
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _better(a: KernelEntry, b: KernelEntry) -> bool:
    """Is ``b`` a better kernel than ``a``? Faster on the chip; ties go to the older (stable)."""
    return b.simulated_seconds < a.simulated_seconds * (1 - 1e-9)


def dispatch_key(e: KernelEntry) -> tuple[str, tuple[str, ...]]:
    """One problem: the exact signature (shapes, scalars) and dtypes. A library keeps the best per key."""
    return e.signature["sized_key"], tuple(e.dtypes)


class Library:
    """A kernel library directory. Create with :meth:`create` or :meth:`open`, add with :meth:`add`."""

    def __init__(self, root: Path, manifest: dict, entries: list[KernelEntry]):
        self.root = root
        self.manifest = manifest
        self.entries = entries

    # ------------------------------------------------------------------ open / create

    @staticmethod
    def open(root: str | os.PathLike[str]) -> "Library":
        """Load and validate ``root/manifest.json`` (and check every file it names exists)."""
        root = Path(root)
        mpath = root / "manifest.json"
        if not mpath.is_file():
            hint = " (is it a run directory? its library is in OUT/library)" if (root / "library").is_dir() else ""
            raise LibraryError(f"{root}: not a kernel library, no manifest.json there{hint}\n"
                               f"  how to fix: point at the library folder a campaign wrote (OUT/library)")
        try:
            m = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LibraryError(f"{mpath}: not valid JSON ({e})\n  how to fix: restore it from the run "
                               f"directory (`agentforge campaign --resume` rewrites it)") from None
        if not isinstance(m, dict):
            raise LibraryError(f"{mpath}: the manifest must be a JSON object")
        if m.get("format") != FORMAT:
            raise LibraryError(f"{mpath}: format is {m.get('format')!r}, expected {FORMAT!r}")
        v = m.get("schema_version")
        if not isinstance(v, int) or v < 1:
            raise LibraryError(f"{mpath}: schema_version must be a positive integer")
        if v > SCHEMA_VERSION:
            raise LibraryError(f"{mpath}: schema_version {v} is newer than this agentforge knows "
                               f"({SCHEMA_VERSION})\n  how to fix: upgrade agentforge")
        if not isinstance(m.get("kernels"), list):
            raise LibraryError(f"{mpath}: a top-level 'kernels' list is required")
        entries = [_entry_from_dict(d, f"{mpath}: kernels[{i}]") for i, d in enumerate(m["kernels"])]
        ids = [e.id for e in entries]
        if len(set(ids)) != len(ids):
            raise LibraryError(f"{mpath}: duplicate kernel ids")
        for e in entries:
            for f in [*e.files, e.task_file]:
                if not (root / f).is_file():
                    raise LibraryError(f"{mpath}: kernel {e.id} names {f}, which is missing\n  how to fix: "
                                       f"restore the file, or remove the entry with the manifest's other fields intact")
        return Library(root, m, entries)

    @staticmethod
    def create(root: str | os.PathLike[str], machine: str, emulator_version: str) -> "Library":
        """An empty library at ``root`` (opened instead if one is already there)."""
        root = Path(root)
        if (root / "manifest.json").exists():
            return Library.open(root)
        m = {"schema_version": SCHEMA_VERSION, "format": FORMAT, "created": _now(), "updated": _now(),
             "machine": machine, "emulator_version": emulator_version, "kernels": []}
        lib = Library(root, m, [])
        lib.save()
        return lib

    # ------------------------------------------------------------------ queries

    def by_op(self) -> dict[str, list[KernelEntry]]:
        out: dict[str, list[KernelEntry]] = {}
        for e in self.entries:
            out.setdefault(e.op, []).append(e)
        return out

    def get(self, id_or_op: str) -> list[KernelEntry]:
        return [e for e in self.entries if e.id == id_or_op or e.op == id_or_op or e.task == id_or_op]

    def source(self, e: KernelEntry) -> str:
        """All ASP text of an entry (a chain's kernels one after another)."""
        return "\n".join((self.root / f).read_text() for f in e.files)

    # ------------------------------------------------------------------ writing

    def save(self) -> None:
        self.manifest["kernels"] = [e.to_dict() for e in self.entries]
        self.manifest["updated"] = _now()
        atomic_write_text(self.root / "manifest.json", json.dumps(self.manifest, indent=2, sort_keys=False) + "\n")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Writers of one library take turns (a campaign adding while a user merges into it); each
        re-reads the manifest under the lock so nobody's additions are overwritten."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            if (self.root / "manifest.json").is_file():
                fresh = Library.open(self.root)
                self.manifest, self.entries = fresh.manifest, fresh.entries
            yield

    def add(self, entry: KernelEntry, files: dict[str, str], task_files: dict[str, str]) -> bool:
        """Add ``entry`` (its files given as {relative path: text}); keep the faster kernel when the
        library already has one for the same problem. Returns whether ``entry`` was kept. Files are
        written before the manifest names them, each atomically, so a kill leaves a valid library."""
        _entry_from_dict(entry.to_dict(), f"kernel {entry.id}")   # validate before anything is written
        with self._locked():
            return self._add(entry, files, task_files)

    def _add(self, entry: KernelEntry, files: dict[str, str], task_files: dict[str, str]) -> bool:
        folder = Path(entry.task_file).parent
        if any(e.op == entry.op and Path(e.task_file).parent != folder for e in self.entries):
            # another task already owns this op name: one name, one computation (torch.ops.<ns>.<op>)
            entry = replace(entry, op=f"{entry.op}_{folder.name[:8]}")
        key = dispatch_key(entry)
        old = next((e for e in self.entries if dispatch_key(e) == key), None)
        if old is not None and not _better(old, entry):
            return False
        for rel, text in {**files, **task_files}.items():
            atomic_write_text(self.root / rel, text)
        if old is not None:
            self.entries.remove(old)
        self.entries.append(entry)
        self.entries.sort(key=lambda e: (e.op, e.id))
        self.save()
        if old is not None:   # only after the manifest stopped naming them, and only files no entry uses
            used = {f for e in self.entries for f in e.files}
            for f in old.files:
                if f not in used:
                    (self.root / f).unlink(missing_ok=True)
            folder = self.root / "kernels" / old.id
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        return True

    def merge(self, other: "Library") -> dict[str, int]:
        """Bring ``other``'s kernels in, keeping the faster verified kernel per problem."""
        if other.manifest.get("machine") != self.manifest.get("machine"):
            raise LibraryError(f"cannot merge a library for machine {other.manifest.get('machine')!r} into one for "
                               f"{self.manifest.get('machine')!r}: their timings are not comparable")
        if other.manifest.get("emulator_version") != self.manifest.get("emulator_version"):
            raise LibraryError(f"cannot merge: the libraries were timed by different emulators "
                               f"({other.manifest.get('emulator_version')!r} vs "
                               f"{self.manifest.get('emulator_version')!r}), so 'faster' is not comparable\n"
                               f"  how to fix: regenerate the older one with this agentforge's campaign")
        kept = replaced = skipped = 0
        for e in other.entries:
            before = {dispatch_key(x): x.id for x in self.entries}
            files = {f: (other.root / f).read_text() for f in e.files}
            tasks = {f: (other.root / f).read_text() for f in _task_files(other.root, e.task_file)}
            if self.add(e, files, tasks):
                if dispatch_key(e) in before:
                    replaced += 1
                else:
                    kept += 1
            else:
                skipped += 1
        return {"added": kept, "replaced": replaced, "kept_existing": skipped}


def _task_files(root: Path, task_file: str) -> list[str]:
    out = [task_file]
    side = Path(task_file).with_suffix(".toml")
    if (root / side).is_file():
        out.append(str(side))
    return out


def entry_id(op: str, sized_key: str, dtypes: list[str], files: dict[str, str], plan: dict | None) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([sized_key, dtypes, sorted(files.items()), plan], sort_keys=True, default=str).encode())
    return f"{op}-{h.hexdigest()[:12]}"


def op_name(task_name: str) -> str:
    """A task name as a Python identifier (torch.ops.<ns>.<op> needs one)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", task_name)
    return name if _OP_RE.match(name) else f"op_{name}"


__all__ = ["Library", "KernelEntry", "Provenance", "LibraryError", "SCHEMA_VERSION", "FORMAT", "atomic_write_text",
           "entry_id", "op_name", "dispatch_key"]


def solution_files(kind: str, source: str | None, plan: dict | None, task: Any, machine: Any) -> dict[str, str]:
    """The ASP text of a verified answer at the task's own sizes, {file name: text} in execution
    order: the kernel itself, or the chain of kernels a fusion plan realizes."""
    if kind == "kernel":
        return {"kernel.asp": source or ""}
    from .author import Plan, realize
    from .baseline import capture_at

    chain = realize(Plan.from_dict(plan or {}), capture_at(task, meta=True), machine)
    return {f"{i:03d}_{k.node}.asp": k.source for i, k in enumerate(chain.kernels)}


def build_entry(task: Any, kind: str, source: str | None, plan: dict | None, evaluation: Any, signature: Any,
                provenance: Provenance, machine: Any) -> tuple[KernelEntry, dict[str, str], dict[str, str]]:
    """A library entry for a verified answer, with its kernel files and its task's files."""
    if not evaluation.verified:
        raise LibraryError(f"{task.name}: only verified kernels enter a library")
    op = op_name(task.name)
    names = solution_files(kind, source, plan, task, machine)
    sig = {"key": signature.key(), "class_key": signature.class_key(), "sized_key": signature.sized_key()}
    dtypes = list(signature.input_dtypes)
    eid = entry_id(op, sig["sized_key"], dtypes, names, plan)
    files = {f"kernels/{eid}/{n}": t for n, t in names.items()}
    # tasks/<digest>/<file>: two suites may hold different tasks under one file name
    text = Path(task.path).read_text()
    side = Path(task.path).with_suffix(".toml")
    side_text = side.read_text() if side.is_file() else ""
    folder = f"tasks/{hashlib.sha256((text + chr(0) + side_text).encode()).hexdigest()[:12]}"
    task_file = f"{folder}/{Path(task.path).name}"
    task_files = {task_file: text}
    if side_text:
        task_files[f"{folder}/{side.name}"] = side_text
    verified_at: dict[str, dict] = {}
    for c in evaluation.checks:
        k = json.dumps(c.sizes, sort_keys=True)
        v = verified_at.setdefault(k, {"sizes": dict(c.sizes), "seeds": [], "distributions": []})
        v["seeds"].append(c.seed)
        v["distributions"].append(c.distribution)
    entry = KernelEntry(
        id=eid, op=op, task=task.name, task_file=task_file, signature=sig, kind=kind, files=list(files),
        verified_at=list(verified_at.values()), dtypes=dtypes, simulated_seconds=evaluation.simulated_seconds,
        baseline_seconds=evaluation.baseline_seconds, speedup=evaluation.speedup,
        roofline_fraction=evaluation.roofline_fraction, hbm_bytes=evaluation.hbm_bytes,
        bottleneck=evaluation.bottleneck, provenance=provenance, plan=plan, own_sizes=dict(task.sizes))
    return entry, files, task_files


def verify_library(lib: Library, timeout_s: float = 300.0, isolate: bool = True) -> list[dict]:
    """Re-check every kernel against its task (the copy kept in the library) on the library's
    machine. Returns one row per kernel: id, verified, reason, simulated time then and now."""
    from .tasks import load_task
    from .verify import VerifyConfig, evaluate

    cfg = VerifyConfig(machine=lib.manifest.get("machine", "sn40l"), timeout_s=timeout_s)
    rows = []
    evaluator = None
    if isolate:
        from .sandbox import Evaluator

        evaluator = Evaluator(cfg)
    try:
        for e in lib.entries:
            task_path = lib.root / e.task_file
            cand = e.candidate(lib.root)
            ev = evaluator.evaluate(task_path, cand) if evaluator else evaluate(load_task(task_path), cand, cfg)
            same_time = ev.simulated_seconds is not None and \
                abs(ev.simulated_seconds - e.simulated_seconds) <= 1e-6 * e.simulated_seconds
            rows.append({"id": e.id, "op": e.op, "verified": ev.verified, "reason": ev.reason,
                         "simulated_seconds": ev.simulated_seconds, "recorded_seconds": e.simulated_seconds,
                         "timing_matches": same_time})
    finally:
        if evaluator is not None:
            evaluator.close()
    return rows


__all__ += ["build_entry", "solution_files", "verify_library"]
