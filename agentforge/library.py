"""The output of a campaign: a directory of verified kernels with a validated manifest.

Layout (docs/library.md documents every field)::

    library/
      manifest.json              {"schema_version": 1, "format": "agentforge-library", "kernels": [...]}
      kernels/<id>/*.asp         the kernel, or the chain of kernels a plan realizes at the task's sizes
      tasks/<digest>/<task>.py (+ .toml)  the task each kernel was verified against (`verify` needs nothing else)

Every kernel entry says what it computes (op name, the task's semantic signature), where it
was verified (sizes and dtypes of every check), how fast it is on the emulated chip (simulated
time, speedup over the op-by-op baseline, fraction of roofline) and where it came from
(author, model, plan, prompt hash, date, machine, emulator version, seed, run).

Writes are atomic (temp file + ``os.replace``): a reader, or a campaign killed mid-write,
never sees half a manifest. Loading validates the manifest and says what to fix.

A library from elsewhere is not trusted: :meth:`Library.merge` and :func:`verify_library` read
its files without following links, check them against their ids, and verify and time every
kernel again in a confined worker (agentforge.sandbox) against the receiving library's own task
definitions; docs/library.md states the rules and the threat model.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import AgentforgeError

if TYPE_CHECKING:
    from .solution import Solution

SCHEMA_VERSION = 1
FORMAT = "agentforge-library"
_ID_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*-[0-9a-f]{8,}$")
_OP_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ASP_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.asp$")
_DIGEST_RE = re.compile(r"^[0-9a-f]{12}$")
MAX_FILE_BYTES = 8 << 20    # a kernel or task file larger than this is not read from a library
MAX_MANIFEST_BYTES = 64 << 20
TIME_RTOL = 1e-6            # a recorded time must reproduce within this relative tolerance (deterministic model)


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
    #: size ranges it is verified over (agentforge.ranges: sampled points, timing at each, provenance);
    #: PyTorch dispatch uses it anywhere inside a ``verified`` one without verifying at call time
    ranges: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def candidate(self, root: Path) -> dict:
        """The evaluator's candidate dict for this entry (agentforge.verify.evaluate)."""
        return entry_candidate(self, {f: (root / f).read_text() for f in self.files[:1]} if self.plan is None else {})

    def solution(self, root: Path, machine: Any) -> Solution:
        """What this entry runs, as a :class:`~agentforge.solution.Solution` on ``machine``."""
        from .solution import solution

        return solution(self.candidate(root), machine)


def entry_candidate(e: KernelEntry, kernels: dict[str, str]) -> dict:
    """An entry as the evaluator's candidate dict: its plan, or its one kernel file ({name: text})."""
    if e.kind == "plan":
        return {"kind": "plan", "plan": e.plan}
    name, text = next(iter(kernels.items()))
    return {"kind": "kernel", "source": text, "filename": name}


_ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,), "op": (str,), "task": (str,), "task_file": (str,), "signature": (dict,), "kind": (str,),
    "files": (list,), "verified_at": (list,), "dtypes": (list,), "simulated_seconds": (int, float),
    "baseline_seconds": (int, float), "speedup": (int, float), "roofline_fraction": (int, float, type(None)),
    "hbm_bytes": (int, float, type(None)), "bottleneck": (str, type(None)), "provenance": (dict,),
}
_PROV_REQUIRED = ("author", "date", "machine", "emulator_version", "agentforge_version")


def entry_from_dict(d: Any, where: str) -> KernelEntry:
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
    problem = _ranges_problem(d.get("ranges", []))
    if problem:
        raise bad(problem)
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


def _ranges_problem(ranges: Any) -> str | None:
    """Why a ``ranges`` field is not a list of range records (None when it is): each has ``sizes``
    (name -> [lo, hi], 1 <= lo <= hi), ``fixed`` (name -> int), ``verified`` (bool) and ``points``."""
    if not isinstance(ranges, list):
        return "ranges must be a list of range records"
    for i, r in enumerate(ranges):
        if not isinstance(r, dict) or not isinstance(r.get("sizes"), dict) or not isinstance(r.get("fixed"), dict) \
                or not isinstance(r.get("verified"), bool) or not isinstance(r.get("points"), list):
            return f"ranges[{i}] must be an object with 'sizes', 'fixed', 'verified' and 'points'"
        for n, lohi in r["sizes"].items():
            if not (isinstance(lohi, list) and len(lohi) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                       for x in lohi) and 1 <= lohi[0] <= lohi[1]):
                return f"ranges[{i}].sizes.{n} must be [lo, hi] with 1 <= lo <= hi"
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in r["fixed"].values()):
            return f"ranges[{i}].fixed must map size names to integers"
    return None


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


def _path_problem(root: Path, rel: str) -> str | None:
    """Why ``root/rel`` is not a regular file reached inside the library without a symbolic link
    (None when it is). Every component is checked, so a linked folder is refused too."""
    p = Path(rel)
    if not p.parts or p.is_absolute() or ".." in p.parts:
        return "leaves the library (a path must be relative, without '..')"
    cur = root
    for part in p.parts:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return "is missing"
        except OSError as e:
            return f"cannot be read ({e.strerror})"
        if stat.S_ISLNK(st.st_mode):
            return f"is a symbolic link ({cur.relative_to(root)} points elsewhere)"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    return None


def read_inside(root: Path, rel: str, limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of ``root/rel``, opened one component at a time without following any
    symbolic link (O_NOFOLLOW at every step), at most ``limit`` bytes: a library's file, never a
    file it points at. Raises LibraryError saying what is wrong."""
    problem = _path_problem(root, rel)
    if problem is not None:
        raise LibraryError(f"{rel}: {problem}")
    parts = Path(rel).parts
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    except OSError as e:
        raise LibraryError(f"{rel}: cannot be opened inside the library ({e.strerror})") from None
    finally:
        os.close(fd)
    with os.fdopen(ffd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise LibraryError(f"{rel}: is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise LibraryError(f"{rel}: larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise LibraryError(f"{rel}: is not UTF-8 text") from None


def task_digest(text: str, side_text: str) -> str:
    """The digest naming a task's folder (tasks/<digest>/): the task file and its sidecar."""
    return hashlib.sha256((text + chr(0) + side_text).encode()).hexdigest()[:12]


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
        if mpath.is_symlink():
            raise LibraryError(f"{mpath}: is a symbolic link; a library's files must be its own\n"
                               f"  how to fix: copy the library with its files, not links to them")
        if not mpath.is_file():
            hint = " (is it a run directory? its library is in OUT/library)" if (root / "library").is_dir() else ""
            raise LibraryError(f"{root}: not a kernel library, no manifest.json there{hint}\n"
                               f"  how to fix: point at the library folder a campaign wrote (OUT/library)")
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise LibraryError(f"{mpath}: larger than {MAX_MANIFEST_BYTES} bytes; not a manifest this agentforge wrote")
        try:
            m = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
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
        entries = [entry_from_dict(d, f"{mpath}: kernels[{i}]") for i, d in enumerate(m["kernels"])]
        ids = [e.id for e in entries]
        if len(set(ids)) != len(ids):
            raise LibraryError(f"{mpath}: duplicate kernel ids")
        for e in entries:
            for f in [*e.files, e.task_file]:
                problem = _path_problem(root, f)
                if problem is not None:
                    raise LibraryError(f"{mpath}: kernel {e.id} names {f}, which {problem}\n  how to fix: "
                                       f"restore the file (a regular file inside the library, no symbolic links), "
                                       f"or remove the entry with the manifest's other fields intact")
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
        entry_from_dict(entry.to_dict(), f"kernel {entry.id}")   # validate before anything is written
        with self._locked():
            return self._add(entry, files, task_files)

    def set_ranges(self, entry_id: str, record: dict[str, Any]) -> KernelEntry:
        """Record that entry ``entry_id`` was verified over a range (:mod:`agentforge.ranges`): the
        record replaces an older one for the same ranged sizes and fixed sizes; others are kept."""
        problem = _ranges_problem([record])
        if problem:
            raise LibraryError(f"kernel {entry_id}: {problem}")
        with self._locked():
            e = next((x for x in self.entries if x.id == entry_id), None)
            if e is None:
                raise LibraryError(f"{self.root}: no kernel {entry_id} (it was replaced while its range was verified)")
            same = (sorted(record["sizes"]), record["fixed"])
            e.ranges = [r for r in e.ranges if (sorted(r["sizes"]), r["fixed"]) != same] + [record]
            self.save()
            return e

    def _add(self, entry: KernelEntry, files: dict[str, str], task_files: dict[str, str],
             measured: dict[str, float] | None = None) -> bool:
        """``measured``: {entry id: seconds re-timed just now} for entries already here; a merge
        compares with those, never with a recorded number it did not reproduce."""
        folder = Path(entry.task_file).parent
        if any(e.op == entry.op and Path(e.task_file).parent != folder for e in self.entries):
            # another task already owns this op name: one name, one computation (torch.ops.<ns>.<op>)
            entry = replace(entry, op=f"{entry.op}_{folder.name[:8]}")
        key = dispatch_key(entry)
        old = next((e for e in self.entries if dispatch_key(e) == key), None)
        if old is not None and measured and old.id in measured:
            old_now = replace(old, simulated_seconds=measured[old.id])
            if not _better(old_now, entry):
                return False
        elif old is not None and not _better(old, entry):
            return False
        for rel, text in {**files, **task_files}.items():
            if rel.endswith(".captures.json"):
                text = self._union_captures(rel, text)
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

    def _union_captures(self, rel: str, text: str) -> str:
        """A task's stored captures: ``text`` plus the graphs the file already holds at other sizes (another
        kernel of the same task verified elsewhere), when the file on disk is still valid for this task and
        torch (:func:`read_captures`: the loader's own checks)."""
        old = read_captures(self.root, rel[: -len(".captures.json")] + ".py")
        if not old.records or old.problem:
            return text
        # the task file is written before its captures (build_entry's order), so read_captures checked the
        # old file against the task being added
        new = json.loads(text)
        graphs = {**old.records, **{sizes_id(r["sizes"]): r for r in new["graphs"]}}
        body = {k: v for k, v in new.items() if k != "digest"}
        body["graphs"] = [graphs[k] for k in sorted(graphs)]
        return json.dumps({**body, "digest": _content_digest(body)}, separators=(",", ":")) + "\n"

    def definitions(self) -> dict[str, dict[str, str]]:
        """{task name: {task digest: task file}} from the task files' content (not folder names)."""
        out: dict[str, dict[str, str]] = {}
        seen: set[str] = set()
        for e in self.entries:
            if e.task_file in seen:
                continue
            seen.add(e.task_file)
            text = read_inside(self.root, e.task_file)
            side = str(Path(e.task_file).with_suffix(".toml"))
            side_text = read_inside(self.root, side) if os.path.lexists(self.root / side) else ""
            out.setdefault(e.task, {})[task_digest(text, side_text)] = e.task_file
        return out

    def merge(self, other: "Library", timeout_s: float = 300.0) -> dict[str, Any]:
        """Bring ``other``'s kernels in, each only after it verified and was timed here, in a
        confined worker, against this library's own definition of its task (docs/library.md,
        "Merging"). Nothing ``other``'s manifest claims is believed: not its times, signatures,
        paths nor file contents. Returns the counts and one row per incoming kernel (accepted or
        rejected, and why)."""
        if other.manifest.get("machine") != self.manifest.get("machine"):
            raise LibraryError(f"cannot merge a library for machine {other.manifest.get('machine')!r} into one for "
                               f"{self.manifest.get('machine')!r}: their timings are not comparable")
        if other.manifest.get("emulator_version") != self.manifest.get("emulator_version"):
            raise LibraryError(f"cannot merge: the libraries were timed by different emulators "
                               f"({other.manifest.get('emulator_version')!r} vs "
                               f"{self.manifest.get('emulator_version')!r}), so 'faster' is not comparable\n"
                               f"  how to fix: regenerate the older one with this agentforge's campaign")
        from .sandbox import Evaluator
        from .verify import VerifyConfig

        cfg = VerifyConfig(machine=self.manifest.get("machine", "sn40l"), timeout_s=timeout_s)
        rows: list[dict[str, Any]] = []
        groups: dict[tuple[str, str], list[tuple[KernelEntry, _Incoming]]] = {}
        with self._locked():
            own = self.definitions()
        for e in other.entries:
            try:
                inc = _read_incoming(other.root, e)
            except LibraryError as x:
                rows.append(_row(e, "rejected", "unsafe", str(x)))
                continue
            mine = own.get(e.task, {})
            if mine and inc.digest not in mine:
                rows.append(_row(e, "rejected", "conflict", _conflict_text(e, inc.digest, mine)))
                continue
            same = next((x for x in self.entries if x.id == e.id), None) if inc.digest in mine else None
            if same is not None:
                # byte for byte a kernel this library holds (the id is a digest of its files, plan and
                # signature; checked above), under the same task text: nothing to replace, nothing to run;
                # its numbers must be the ones recorded here (the timing models are deterministic)
                lies = timing_problems(e, same, now_label="this library's")
                rows.append(_row(e, "rejected", "timing", "this library holds this exact kernel, and the incoming "
                                 "manifest's numbers are not its: " + "; ".join(lies)) if lies else
                            _row(e, "kept_existing", None, "this library already holds this exact kernel"))
                continue
            groups.setdefault((e.task, inc.digest), []).append((e, inc))
        staging = Path(tempfile.mkdtemp(prefix="agentforge-merge-"))
        try:
            for (task, digest), items in groups.items():
                mine = own.get(task, {})
                if digest in mine:
                    task_path = self.root / mine[digest]
                else:   # a task new to this library: evaluated from a private copy of exactly the text read
                    inc = items[0][1]
                    task_path = staging / f"{digest}-{task}" / f"{task}.py"
                    atomic_write_text(task_path, inc.task_text)
                    if inc.side_text:
                        atomic_write_text(task_path.with_suffix(".toml"), inc.side_text)
                # one fresh confined worker per task definition: a task's code cannot reach another's checks
                with Evaluator(cfg, confine=True) as worker:
                    for e, inc in items:
                        rows.append(self._merge_one(e, inc, digest, task_path, mine.get(digest), worker, timeout_s))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        counts = {k: sum(r["status"] == k for r in rows) for k in ("added", "replaced", "kept_existing", "rejected")}
        return {**counts, "kernels": rows}

    def _merge_one(self, e: KernelEntry, inc: "_Incoming", digest: str, task_path: Path, own_task_file: str | None,
                   worker: Any, timeout_s: float) -> dict[str, Any]:
        cand = inc.candidate(e)
        ev, info = worker.inspect(task_path, cand, timeout_s=timeout_s)
        if not ev.verified:
            return _row(e, "rejected", ev.reason_code or "verify", f"does not verify here: {ev.reason}")
        problems = _agreement_problems(e, ev, info, inc.kernels)
        if problems:
            return _row(e, "rejected", problems[0][0], "; ".join(p for _, p in problems), ev)
        key = (info["signature"]["sized_key"], tuple(info["dtypes"]))
        with self._locked():
            rival = next((x for x in self.entries if dispatch_key(x) == key), None)
        measured: dict[str, float] = {}
        if rival is not None:
            rival_def = self.definitions().get(rival.task, {})
            if rival.task != e.task or digest not in rival_def:
                return _row(e, "rejected", "conflict", f"this library already holds {rival.id} for the same problem "
                            f"(signature and dtypes) under another task definition ({rival.task_file}); a merge "
                            f"never replaces a kernel of another task\n  how to fix: remove one of the two tasks' "
                            f"entries, or merge the other way round", ev)
            rev = worker.evaluate(self.root / rival.task_file, rival.candidate(self.root), timeout_s=timeout_s)
            measured[rival.id] = rev.simulated_seconds if rev.verified and rev.simulated_seconds else float("inf")
        names = list(inc.kernels)
        task_file = own_task_file or f"tasks/{digest}/{e.task}.py"
        task_files = {} if own_task_file else {task_file: inc.task_text,
                                               **({str(Path(task_file).with_suffix(".toml")): inc.side_text}
                                                  if inc.side_text else {})}
        verified_at: dict[str, dict] = {}
        for c in ev.checks:
            v = verified_at.setdefault(json.dumps(c.sizes, sort_keys=True),
                                       {"sizes": dict(c.sizes), "seeds": [], "distributions": []})
            v["seeds"].append(c.seed)
            v["distributions"].append(c.distribution)
        entry = replace(e, op=op_name(e.task), task_file=task_file, files=[f"kernels/{e.id}/{n}" for n in names],
                        signature=dict(info["signature"]), dtypes=list(info["dtypes"]),
                        own_sizes=dict(info.get("own_sizes") or {}), verified_at=list(verified_at.values()),
                        simulated_seconds=ev.simulated_seconds, baseline_seconds=ev.baseline_seconds,
                        speedup=ev.speedup, roofline_fraction=ev.roofline_fraction, hbm_bytes=ev.hbm_bytes,
                        bottleneck=ev.bottleneck, ranges=[])   # a claimed range is not believed: verify-ranges again
        files = {f"kernels/{e.id}/{n}": t for n, t in inc.kernels.items()}
        entry_from_dict(entry.to_dict(), f"kernel {entry.id}")
        with self._locked():
            before = {dispatch_key(x): x.id for x in self.entries}
            if any(x.id == entry.id for x in self.entries):
                return _row(e, "kept_existing", None, "this library already holds this exact kernel", ev)
            kept = self._add(entry, files, task_files, measured)
        if not kept:
            now = measured.get(rival.id) if rival is not None else None
            return _row(e, "kept_existing", None, f"not faster than {before.get(key)}"
                        + (f" ({now:.6g} s measured now)" if now is not None else ""), ev)
        return _row(e, "replaced" if key in before else "added", None,
                    f"replaced {before[key]}" if key in before else "new problem", ev)


class _Incoming:
    """An incoming entry's files as read (safely) from the other library, and its task's digest."""

    def __init__(self, task_text: str, side_text: str, kernels: dict[str, str]):
        self.task_text, self.side_text, self.kernels = task_text, side_text, kernels
        self.digest = task_digest(task_text, side_text)

    def candidate(self, e: KernelEntry) -> dict:
        return entry_candidate(e, self.kernels)


def _read_incoming(root: Path, e: KernelEntry) -> _Incoming:
    """Read an entry's files from a library that is not ours: regular files inside it only, names
    and content checked against the entry (its id is a digest of its content)."""
    if not e.task_file.endswith(".py") or Path(e.task_file).stem != e.task:
        raise LibraryError(f"task_file {e.task_file!r} is not the file of task {e.task!r}")
    if e.kind == "kernel" and len(e.files) != 1:
        raise LibraryError(f"a 'kernel' entry has exactly one file, this one names {len(e.files)}")
    if not isinstance(e.own_sizes, dict) or not all(isinstance(d, str) for d in e.dtypes) or \
            not isinstance(e.plan, (dict, type(None))):
        raise LibraryError("own_sizes must be an object, dtypes a list of names and plan an object or null")
    task_text = read_inside(root, e.task_file)
    side = str(Path(e.task_file).with_suffix(".toml"))
    side_text = read_inside(root, side) if os.path.lexists(root / side) else ""
    kernels: dict[str, str] = {}
    for f in e.files:
        name = Path(f).name
        if not _ASP_NAME_RE.match(name) or name in kernels:
            raise LibraryError(f"kernel file name {name!r} is not a plain, unique <name>.asp")
        kernels[name] = read_inside(root, f)
    if entry_id(op_name(e.task), e.signature["sized_key"], e.dtypes, kernels, e.plan) != e.id:
        raise LibraryError(f"its files are not the ones its manifest entry was made for (the id {e.id} is a digest "
                           f"of the signature, dtypes, kernel files and plan; it does not match them)")
    return _Incoming(task_text, side_text, kernels)


def _agreement_problems(e: KernelEntry, ev: Any, info: dict, kernels: dict[str, str],
                        rtol: float = TIME_RTOL) -> list[tuple[str, str]]:
    """How an entry disagrees with what its task and the emulator say now: (code, message) pairs."""
    out: list[tuple[str, str]] = []
    sig = info.get("signature") or {}
    if sig != {k: e.signature.get(k) for k in ("key", "class_key", "sized_key")} or \
            list(info.get("dtypes") or []) != list(e.dtypes):
        out.append(("signature", f"its recorded signature/dtypes ({e.signature.get('sized_key')}, {e.dtypes}) are "
                                 f"not its task's ({sig.get('sized_key')}, {info.get('dtypes')})"))
    if e.own_sizes and info.get("own_sizes") is not None and dict(e.own_sizes) != dict(info["own_sizes"]):
        out.append(("signature", f"own_sizes {e.own_sizes} are not its task's {info['own_sizes']}"))
    built = info.get("files") or {}
    if list(built) != list(kernels) or any(built[n] != kernels[n] for n in built):
        bad = [n for n in kernels if built.get(n) != kernels[n]] or sorted(set(built) ^ set(kernels))
        out.append(("content", f"its .asp files ({', '.join(bad)}) are not what its {e.kind} builds: an entry's "
                               f"files must be exactly what its {e.kind} builds at the task's sizes"))
    out += [("timing", p) for p in timing_problems(e, ev, rtol)]
    return out


def timing_problems(e: KernelEntry, ev: Any, rtol: float = TIME_RTOL, now_label: str = "measured now") -> list[str]:
    """Recorded numbers of ``e`` that ``ev`` (an evaluation just made, or a trusted entry of the
    same kernel) does not reproduce within ``rtol``."""
    out = []
    for name, now in (("simulated_seconds", ev.simulated_seconds), ("baseline_seconds", ev.baseline_seconds),
                      ("speedup", ev.speedup)):
        then = getattr(e, name)
        if now is None or not abs(now - then) <= rtol * abs(now):
            out.append(f"{name} recorded {then:.6g}, {now_label} {now if now is None else format(now, '.6g')} "
                       f"(tolerance {rtol:g} relative)")
    return out


def _conflict_text(e: KernelEntry, digest: str, mine: dict[str, str]) -> str:
    return (f"conflict: task {e.task!r} is defined differently here ({', '.join(sorted(mine.values()))}) than in "
            f"the incoming library (tasks/{digest}); a merge never replaces a task's definition\n  how to fix: "
            f"if the incoming definition is the one you want, remove this task's entries here first; otherwise "
            f"rename the task in the other suite and re-run its campaign")


def _row(e: KernelEntry, status: str, code: str | None, reason: str, ev: Any = None) -> dict[str, Any]:
    return {"id": e.id, "task": e.task, "status": status, "code": code, "reason": reason,
            "claimed_seconds": e.simulated_seconds,
            "measured_seconds": getattr(ev, "simulated_seconds", None) if ev is not None else None}


def entry_id(op: str, sized_key: str, dtypes: list[str], files: dict[str, str], plan: dict | None) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([sized_key, dtypes, sorted(files.items()), plan], sort_keys=True, default=str).encode())
    return f"{op}-{h.hexdigest()[:12]}"


def op_name(task_name: str) -> str:
    """A task name as a Python identifier (torch.ops.<ns>.<op> needs one)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", task_name)
    return name if _OP_RE.match(name) else f"op_{name}"


__all__ = ["Library", "KernelEntry", "entry_from_dict", "Provenance", "LibraryError", "SCHEMA_VERSION", "FORMAT", "atomic_write_text",
           "entry_id", "op_name", "dispatch_key"]


def build_entry(task: Any, sol: Solution, evaluation: Any, signature: Any,
                provenance: Provenance) -> tuple[KernelEntry, dict[str, str], dict[str, str]]:
    """A library entry for a verified answer, with its kernel files (what ``sol`` runs at the
    task's own sizes, in execution order) and its task's files."""
    if not evaluation.verified:
        raise LibraryError(f"{task.name}: only verified kernels enter a library")
    from .capture import capture_at

    op = op_name(task.name)
    names = sol.files(capture_at(task, meta=True))
    kind, plan = sol.kind, sol.plan_record
    sig = {"key": signature.key(), "class_key": signature.class_key(), "sized_key": signature.sized_key()}
    dtypes = list(signature.input_dtypes)
    eid = entry_id(op, sig["sized_key"], dtypes, names, plan)
    files = {f"kernels/{eid}/{n}": t for n, t in names.items()}
    # tasks/<digest>/<file>: two suites may hold different tasks under one file name
    text = Path(task.path).read_text()
    side = Path(task.path).with_suffix(".toml")
    side_text = side.read_text() if side.is_file() else ""
    folder = f"tasks/{task_digest(text, side_text)}"
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
    # what PyTorch dispatch and matching need of the task, so loading the library does not capture it again
    stored = captures_text(task, [v["sizes"] for v in entry.verified_at] + [{}], task_digest(text, side_text))
    if stored is not None:
        task_files[captures_path(task_file)] = stored
    return entry, files, task_files


def verify_library(lib: Library, timeout_s: float = 300.0, rtol: float = TIME_RTOL) -> list[dict]:
    """Re-check every kernel of ``lib`` on its machine: its files are regular files inside the
    library and are the ones its id was made for, its task's file is the one it was verified
    against, it verifies again, its task gives the recorded signature and dtypes, a plan's .asp
    files are exactly what the plan builds, and the recorded simulated time, baseline time and
    speedup reproduce within ``rtol``. Task code runs only in confined workers, a fresh one per
    task definition. One row per kernel; ``ok`` is whether all of it holds. Each row also has
    ``captures``: its task's stored captures as the loader would judge them (:func:`captures_status`;
    shared by the task's kernels, so a stale file does not make a kernel fail)."""
    from .sandbox import Evaluator
    from .verify import VerifyConfig

    cfg = VerifyConfig(machine=lib.manifest.get("machine", "sn40l"), timeout_s=timeout_s)
    rows: dict[str, dict] = {}
    groups: dict[str, list[tuple[KernelEntry, _Incoming]]] = {}
    for e in lib.entries:
        try:
            inc = _read_incoming(lib.root, e)
            folder = Path(e.task_file).parent.name
            if _DIGEST_RE.match(folder) and folder != inc.digest:
                raise LibraryError(f"its task file {e.task_file} is not the one it was verified against (the folder "
                                   f"names digest {folder}, the files now have {inc.digest})")
        except LibraryError as x:
            rows[e.id] = _verify_row(e, None, [str(x)])
            continue
        groups.setdefault(e.task_file, []).append((e, inc))
    task_sizes: dict[str, dict[str, int]] = {}   # each task's sizes as its code declares them (worker-computed)
    for task_file, items in groups.items():
        with Evaluator(cfg, confine=True) as worker:
            for e, inc in items:
                ev, info = worker.inspect(lib.root / task_file, inc.candidate(e), timeout_s=timeout_s)
                if isinstance(info.get("own_sizes"), dict):
                    task_sizes.setdefault(task_file, dict(info["own_sizes"]))
                if ev.verified:
                    problems = [p for _, p in _agreement_problems(e, ev, info, inc.kernels, rtol)]
                else:
                    problems = [f"does not verify: {ev.reason}"]
                rows[e.id] = _verify_row(e, ev, problems, rtol)
    caps = {tf: captures_status(lib, tf, task_sizes.get(tf, {})) for tf in {e.task_file for e in lib.entries}}
    return [{**rows[e.id], "captures": caps[e.task_file]} for e in lib.entries]


def _verify_row(e: KernelEntry, ev: Any, problems: list[str], rtol: float = TIME_RTOL) -> dict:
    now = getattr(ev, "simulated_seconds", None)
    return {"id": e.id, "op": e.op, "ok": not problems, "verified": bool(ev is not None and ev.verified),
            "reason": getattr(ev, "reason", None) if ev is not None else problems[0],
            "problems": problems, "simulated_seconds": now, "recorded_seconds": e.simulated_seconds,
            "timing_matches": now is not None and abs(now - e.simulated_seconds) <= rtol * abs(now)}


__all__ += ["build_entry", "entry_candidate", "verify_library", "read_inside", "task_digest", "timing_problems",
            "TIME_RTOL"]


# ---------------------------------------------------------------------- stored captures

#: What :func:`agentforge.torch.load_library` needs of a task to dispatch and match its kernels: the
#: task captured (meta, shapes only) at each size set its kernels are verified at. Capturing is
#: torch.export + decomposition, ~0.5 s per size set, so a 37-task model library took ~20 s of a
#: model's first forward to load; stored here when the library is written, it loads in milliseconds.
#: The file sits next to the task (``tasks/<digest>/<task>.captures.json``; it depends on the task's
#: text only, so every kernel of the task shares it) and is used only when everything it was made from
#: still holds: its format version, the torch version and signature version that captured it, the
#: task's digest (file and sidecar as read now), a digest of its own content, and each graph's sized
#: signature. Anything else falls back to capturing, with the reason: never a stale graph (a stale
#: graph would match model subgraphs the kernel was not verified for).
CAPTURES_FORMAT = "agentforge-captures"
CAPTURES_VERSION = 1


def captures_path(task_file: str) -> str:
    """Where the stored captures of the task at ``task_file`` (relative to the library) live."""
    return str(Path(task_file).with_suffix(".captures.json"))


def sizes_id(sizes: dict[str, int]) -> str:
    """One size set as a lookup key (the task's full sizes, order-free)."""
    return json.dumps({k: int(v) for k, v in sizes.items()}, sort_keys=True)


def _enc(v: Any) -> Any:
    """A graph argument value as JSON that decodes to exactly the same Python value (tuples stay
    tuples, ints stay ints, inf/nan survive, Refs are tagged)."""
    from .aten import Ref

    if isinstance(v, Ref):
        return {"ref": v.name}
    if isinstance(v, tuple):
        return {"tuple": [_enc(x) for x in v]}
    if isinstance(v, list):
        return [_enc(x) for x in v]
    if isinstance(v, dict):
        return {"dict": {str(k): _enc(x) for k, x in v.items()}}
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return {"float": repr(v)}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise ValueError(f"cannot store a graph argument of type {type(v).__name__}")


def _dec(v: Any) -> Any:
    from .aten import Ref

    if isinstance(v, list):
        return [_dec(x) for x in v]
    if isinstance(v, dict):
        if set(v) == {"ref"} and isinstance(v["ref"], str):
            return Ref(v["ref"])
        if set(v) == {"tuple"} and isinstance(v["tuple"], list):
            return tuple(_dec(x) for x in v["tuple"])
        if set(v) == {"dict"} and isinstance(v["dict"], dict):
            return {k: _dec(x) for k, x in v["dict"].items()}
        if set(v) == {"float"} and v["float"] in ("inf", "-inf", "nan"):
            return float(v["float"])
        raise ValueError(f"unknown tagged value {sorted(v)}")
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise ValueError(f"unexpected value {v!r}")


def _enc_spec(s: Any) -> list:
    return [s.name, list(s.shape), s.dtype]


def _dec_spec(d: Any) -> Any:
    from .aten import TensorSpec

    if not (isinstance(d, list) and len(d) == 3 and isinstance(d[0], str) and isinstance(d[2], str)
            and isinstance(d[1], list) and all(isinstance(x, int) and not isinstance(x, bool) for x in d[1])):
        raise ValueError(f"not a tensor spec: {d!r}"[:200])
    return TensorSpec(d[0], tuple(d[1]), d[2])


def encode_graph(g: Any) -> dict:
    """An :class:`~agentforge.aten.AtenGraph` (shapes only) as JSON; :func:`decode_graph` inverts it.
    Parameter values are data, not structure, and are not stored (a meta capture has none)."""
    return {"inputs": [_enc_spec(s) for s in g.inputs], "params": [_enc_spec(s) for s in g.params],
            "nodes": [[n.name, n.target, _enc(n.args), _enc(n.kwargs),
                       [_enc_spec(o) for o in n.out] if isinstance(n.out, tuple) else _enc_spec(n.out)]
                      for n in g.nodes],
            "outputs": [r.name for r in g.outputs], "param_targets": dict(g.param_targets)}


def decode_graph(d: Any) -> Any:
    """The graph :func:`encode_graph` wrote (ValueError naming what is malformed)."""
    from .aten import AtenGraph, AtenNode, Ref

    if not isinstance(d, dict) or not {"inputs", "params", "nodes", "outputs", "param_targets"} <= set(d):
        raise ValueError("a graph needs inputs, params, nodes, outputs and param_targets")
    nodes = []
    for n in d["nodes"]:
        if not (isinstance(n, list) and len(n) == 5 and isinstance(n[0], str) and isinstance(n[1], str)):
            raise ValueError(f"not a node: {n!r}"[:200])
        args, kwargs = _dec(n[2]), _dec(n[3])
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise ValueError(f"node {n[0]}: args must be a tuple and kwargs a dict")
        out = tuple(_dec_spec(o) for o in n[4]) if n[4] and isinstance(n[4][0], list) else _dec_spec(n[4])
        nodes.append(AtenNode(n[0], n[1], args, kwargs, out))
    if not all(isinstance(r, str) for r in d["outputs"]) or not isinstance(d["param_targets"], dict):
        raise ValueError("outputs must be names and param_targets an object")
    return AtenGraph([_dec_spec(s) for s in d["inputs"]], [_dec_spec(s) for s in d["params"]], nodes,
                     [Ref(r) for r in d["outputs"]], {}, {str(k): str(v) for k, v in d["param_targets"].items()})


def _captures_header(digest: str) -> dict[str, Any]:
    import torch

    from .signature import SIGNATURE_VERSION

    return {"format": CAPTURES_FORMAT, "version": CAPTURES_VERSION, "torch": torch.__version__,
            "signature_version": SIGNATURE_VERSION, "task_digest": digest}


def _content_digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def captures_text(task: Any, size_sets: list[dict[str, int]], digest: str) -> str | None:
    """The stored-captures file of ``task`` (``digest``: its folder's task digest) at each of
    ``size_sets``, or None when no graph could be stored (:meth:`Library.add` merges it with the graphs
    an earlier file of the same task holds). A graph is stored only if it round-trips
    exactly (the loader compares nothing it could not reproduce) and holds no data."""
    from .capture import capture_at
    from .signature import signature

    graphs: dict[str, dict] = {}
    for sizes in size_sets:
        full = task.sizes_for(sizes)
        sid = sizes_id(full)
        if sid in graphs:
            continue
        g = capture_at(task, full, meta=True)
        if any(getattr(v, "device", None) is not None and v.device.type != "meta" for v in g.param_values.values()):
            continue    # a constant with real values: the loader would not have them, so it captures
        try:
            enc = encode_graph(g)
            back = decode_graph(json.loads(json.dumps(enc)))
        except ValueError:
            continue
        if back != g or repr(back) != repr(g) or back.param_targets != g.param_targets:
            continue
        graphs[sid] = {"sizes": full, "sized_key": signature(g).sized_key(), "graph": enc}
    if not graphs:
        return None
    body = {**_captures_header(digest), "graphs": [graphs[k] for k in sorted(graphs)]}
    return json.dumps({**body, "digest": _content_digest(body)}, separators=(",", ":")) + "\n"


@dataclass
class StoredCaptures:
    """A task's stored captures as loaded: graphs by sizes id, or why none can be used."""
    graphs: dict[str, Any] = field(default_factory=dict)   # sizes id -> AtenGraph
    records: dict[str, dict] = field(default_factory=dict)  # sizes id -> the stored record (JSON)
    #: why the file is not used ("" when it is, or when there is none: an older library)
    problem: str = ""
    present: bool = False


def read_captures(root: Path, task_file: str) -> StoredCaptures:
    """The stored captures of the task at ``task_file`` in the library at ``root``, validated against
    the task as it is now (see :data:`CAPTURES_FORMAT`); never raises for a bad file, says why."""
    from .signature import signature

    rel = captures_path(task_file)
    if not os.path.lexists(root / rel):
        return StoredCaptures()
    try:
        text = read_inside(root, rel, MAX_MANIFEST_BYTES)
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        side = str(Path(task_file).with_suffix(".toml"))
        digest = task_digest(read_inside(root, task_file),
                             read_inside(root, side) if os.path.lexists(root / side) else "")
        want = _captures_header(digest)
        for k in ("format", "version", "torch", "signature_version"):
            if d.get(k) != want[k]:
                raise ValueError(f"written for {k} {d.get(k)!r}, this is {want[k]!r}")
        if d.get("task_digest") != digest:
            raise ValueError(f"made from another version of the task (digest {d.get('task_digest')!r}, the task "
                             f"file and sidecar now have {digest})")
        body = {k: v for k, v in d.items() if k != "digest"}
        if d.get("digest") != _content_digest(body):
            raise ValueError("its content does not match its digest (edited or damaged)")
        if not isinstance(d.get("graphs"), list):
            raise ValueError("no 'graphs' list")
        out = StoredCaptures(present=True)
        for rec in d["graphs"]:
            if not isinstance(rec, dict) or not isinstance(rec.get("sizes"), dict) or \
                    not isinstance(rec.get("sized_key"), str):
                raise ValueError("a graph record needs 'sizes' and 'sized_key'")
            g = decode_graph(rec.get("graph"))
            if signature(g).sized_key() != rec["sized_key"]:
                raise ValueError(f"the graph at {rec['sizes']} does not have its recorded signature")
            sid = sizes_id(rec["sizes"])
            out.graphs[sid], out.records[sid] = g, rec
        return out
    except Exception as e:  # noqa: BLE001 - whatever is wrong with the file, the loader captures instead
        return StoredCaptures(problem=f"{rel}: {e}", present=True)


def stored_captures(root: Path, task_file: str, entries: Iterable[KernelEntry],
                    task_sizes: Mapping[str, int]) -> StoredCaptures:
    """The stored captures of the task at ``task_file`` as the loader may use them, or why not: what
    :func:`read_captures` checks (the file against the task as it is now), then the manifest: the stored
    graph at each of ``entries``' own sizes (over ``task_sizes``, the task's declared sizes) must have the
    signature the entry records, the kernel's id being a digest of it; else neither can be trusted to
    describe the other. One check for both of its users, ``load_library`` and ``library verify``, so
    verify calls a file fine exactly when loading would use it."""
    st = read_captures(root, task_file)
    for x in entries:
        mine = st.records.get(sizes_id({**task_sizes, **(x.own_sizes or {})}))
        if mine is not None and mine["sized_key"] != x.signature.get("sized_key"):
            return StoredCaptures(problem=f"{captures_path(task_file)}: the stored graph at the task's own sizes "
                                          f"does not have the signature manifest entry {x.id} records", present=True)
    return st


def captures_status(lib: Library, task_file: str, task_sizes: Mapping[str, int]) -> dict[str, Any]:
    """How ``library verify`` reports a task's stored captures: ``status`` "ok" (loading uses them),
    "missing" (a library written before them, or a kernel merged in: loading captures the task, which is
    fine) or "stale" (damaged, edited, another torch or task version: loading warns and captures again);
    ``reason`` says why in words. Judged by :func:`stored_captures`, the loader's own check."""
    rel = captures_path(task_file)
    st = stored_captures(lib.root, task_file, [e for e in lib.entries if e.task_file == task_file], task_sizes)
    if st.problem:
        return {"file": rel, "status": "stale", "graphs": 0, "reason": st.problem}
    if not st.present:
        return {"file": rel, "status": "missing", "graphs": 0,
                "reason": "no stored captures (a library written before them, or a kernel merged in): loading "
                          "captures this task with torch.export instead"}
    return {"file": rel, "status": "ok", "graphs": len(st.graphs), "reason": ""}


def recapture(lib: Library, task_file: str) -> dict[str, Any]:
    """Write the stored captures of the task at ``task_file`` again, from the task as it is in the library,
    at every size set its kernels are verified at (the writer :func:`build_entry` uses: :func:`captures_text`),
    and return their :func:`captures_status`. The task's code runs in this process (``torch.export``), as
    ``load_library`` runs it: for a library one would load, never one merely being vetted. No storable graph
    removes the file (the loader then captures, as for an older library)."""
    from .tasks import load_task

    entries = [e for e in lib.entries if e.task_file == task_file]
    side = str(Path(task_file).with_suffix(".toml"))
    digest = task_digest(read_inside(lib.root, task_file),
                         read_inside(lib.root, side) if os.path.lexists(lib.root / side) else "")
    task = load_task(lib.root / task_file)
    text = captures_text(task, [v["sizes"] for e in entries for v in e.verified_at] + [{}], digest)
    with lib._locked():
        if text is None:
            (lib.root / captures_path(task_file)).unlink(missing_ok=True)
        else:
            atomic_write_text(lib.root / captures_path(task_file), text)
    return captures_status(lib, task_file, dict(task.sizes))


__all__ += ["captures_path", "captures_text", "read_captures", "encode_graph", "decode_graph", "StoredCaptures",
            "sizes_id", "stored_captures", "captures_status", "recapture", "CAPTURES_VERSION"]
