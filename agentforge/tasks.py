"""Tasks: loading PyTorch reference problems, instantiating them at chosen sizes, making inputs.

A *task* is a Python file in the KernelBench layout (module-level int size constants,
``class Model(nn.Module)``, ``get_inputs()``, ``get_init_inputs()``) plus an optional TOML
sidecar with the same stem (group, level, description, tolerance, extra size sets). The full
format is documented in ``docs/tasks.md``.

Why the sizes are rewritten in the source instead of patched into the module afterwards: a task
may derive values from its sizes at import time (``HIDDEN2 = HIDDEN * 2``) or use them as
default arguments; rewriting the literal before the module runs makes every such use see the
requested size, exactly as if the user had edited the file.

Task code is trusted reference code written by the user. This module is the only place in
agentforge where it is executed (``instantiate`` / ``make_inputs``); nothing an agent writes
ever reaches ``exec``.

One module (about 740 lines) because it is one thing, the task format: loading a task file and
its sidecar, instantiating it at sizes, and drawing its inputs all read the same parsed module
and the same size rules.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import math
import operator
import re
import sys
import tomllib
import traceback
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agentforge.errors import TaskError

__all__ = [
    "GROUPS",
    "DISTRIBUTIONS",
    "Task",
    "Instance",
    "load_task",
    "load_suite",
    "instantiate",
    "make_inputs",
    "derive_seed",
]

#: Task groups a sidecar may name (the published agentic-library groups plus the extra ones of
#: the agentforge suite).
GROUPS: frozenset[str] = frozenset(
    {
        "attention",
        "gemm",
        "bmm",
        "norm",
        "rope",
        "moe_index",
        "moe_expert",
        "moe",
        "activation",
        "reduction",
        "softmax",
        "cumsum",
        "loss",
        "elementwise",
        "layer",
    }
)

#: Input distributions understood by :func:`make_inputs`.
DISTRIBUTIONS: tuple[str, ...] = ("normal", "uniform", "heavy", "mixed_scale", "large", "last_max", "offset",
                                  "near_ties", "zeros")

#: Per-row offsets of the ``offset`` distribution, by dtype: far past exp's range (88 in f32 and
#: bf16, 11 in f16) yet small enough that the row's own N(0, 1) spread stays representable.
_OFFSET = {torch.float32: 1e4, torch.bfloat16: 1e2, torch.float16: 1e3, torch.float64: 1e4}
#: How far the ``last_max`` distribution lifts each row's maximum above the rest of the row:
#: more than exp's f32 range, so a softmax stabilised by any maximum but the row's overflows.
_LAST_MAX_MARGIN = 100.0

#: Level given to a task without a sidecar (or whose sidecar has no ``level``).
DEFAULT_LEVEL = 1

_REQUIRED_NAMES = ("Model", "get_inputs", "get_init_inputs")
_SIDECAR_SECTIONS = {"task", "tolerance", "sizes", "roofline", "ranges"}
_ROOFLINE_KEYS = {"active_fraction"}
#: ``active_fraction = "K/NAME"``: K of the size NAME (e.g. 2 of EXPERTS); parsed, never evaluated
_FRACTION_RE = re.compile(r"^\s*(\d{1,6})\s*/\s*([A-Za-z_][A-Za-z0-9_]*)\s*$")
_TASK_KEYS = {"group", "level", "description", "tags", "distributions", "sockets"}
#: the most sockets a task may ask for (the largest node preset, asp_lang/machines/nodes/sn40l-node16)
MAX_SOCKETS = 16
_TOLERANCE_KEYS = {"atol", "rtol"}
_HEAVY_CLIP = 1e4
_EXEC_COUNTER = itertools.count()


# --------------------------------------------------------------------------------------------
# Task
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One loaded (validated, not yet executed) task.

    ``sizes`` are the module-level int constants of the file, in file order, with their default
    values; ``size_sets`` are the sidecar's ``[[sizes]]`` tables as written (each a partial
    override of ``sizes``; use :meth:`resolved_size_sets` for the merged dicts). ``atol`` /
    ``rtol`` are ``None`` when the sidecar does not set them, so that the verifier can apply its
    own per-dtype defaults.
    """

    name: str
    path: Path
    source: str = field(repr=False)
    sizes: dict[str, int] = field(hash=False)
    group: str | None = None
    level: int = DEFAULT_LEVEL
    description: str = ""
    atol: float | None = None
    rtol: float | None = None
    size_sets: list[dict[str, int]] = field(default_factory=list, hash=False)
    tags: tuple[str, ...] = ()
    #: extra input distributions the verifier must also check (sidecar [task] distributions)
    distributions: tuple[str, ...] = ()
    #: sidecar ``[roofline] active_fraction``: the share of the graph's FLOPs a kernel must do
    #: (a float, or ``(k, SIZE)`` for k of SIZE, e.g. top-k of EXPERTS); None = all of them
    active_fraction: float | tuple[int, str] | None = None
    #: sidecar ``[task] sockets``: how many sockets of the machine's node the answer runs on (1:
    #: one chip; N > 1: a tensor-parallel kernel where the task is a shardable block, see
    #: docs/multisocket.md, "A campaign task on N sockets")
    sockets: int = 1

    def work_fraction(self, sizes: Mapping[str, int] | None = None) -> float:
        """The share of the captured graph's FLOPs that any correct kernel must perform at
        ``sizes`` (the task's own by default). A dense-masked mixture of experts, whose gates
        have at most k non-zeros per token, declares ``active_fraction = "k/EXPERTS"`` so the
        task's roofline does not count the experts a routed kernel may rightly skip; every
        other task does all of its FLOPs (1.0). Only ever lowers the task's bound."""
        frac = self.active_fraction
        if frac is None:
            return 1.0
        if isinstance(frac, tuple):
            k, name = frac
            n = self.sizes_for(sizes).get(name, 0)
            return min(1.0, k / n) if n > 0 else 1.0
        return float(frac)

    def sizes_for(self, overrides: Mapping[str, int] | None = None) -> dict[str, int]:
        """Return the task's sizes with ``overrides`` applied (a new dict, file order kept).

        Unknown names and non-int values are :class:`TaskError`: a typo in a size name would
        otherwise silently run the task at its (possibly huge) default size.
        """
        merged = dict(self.sizes)
        for key, value in (overrides or {}).items():
            if key not in self.sizes:
                raise TaskError(
                    self.path,
                    f"size override {key!r} is not a size of this task",
                    _known_sizes_hint(self.sizes),
                )
            if not _is_int(value):
                raise TaskError(
                    self.path,
                    f"size override {key}={value!r} is not an int",
                    "sizes are plain integers, e.g. BATCH = 4",
                )
            if value < 0:
                raise TaskError(
                    self.path,
                    f"size override {key}={value} is negative",
                    "use a size >= 0",
                )
            merged[key] = int(value)
        return merged

    def resolved_size_sets(self) -> list[dict[str, int]]:
        """The sidecar's ``[[sizes]]`` entries, each merged over the default sizes."""
        return [self.sizes_for(s) for s in self.size_sets]

    @property
    def sidecar_path(self) -> Path:
        """Where this task's TOML sidecar is (or would be)."""
        return self.path.with_suffix(".toml")


def _known_sizes_hint(sizes: Mapping[str, int]) -> str:
    if not sizes:
        return "this task defines no module-level int sizes, so none can be overridden"
    return "known sizes: " + ", ".join(sizes)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


def load_task(path: str | Path) -> Task:
    """Load and validate one task file (and its sidecar, if any) without executing it.

    Validation is static (``ast`` + ``tomllib``) so that a whole suite can be checked quickly
    and so that broken files are reported with the file and line before any code runs.
    """
    path = Path(path).resolve()
    if path.is_dir():
        raise TaskError(path, "is a folder, not a task file", "use load_suite() for a folder of tasks")
    if not path.is_file():
        raise TaskError(path, "task file does not exist", "check the path (a task is a .py file)")
    if path.suffix != ".py":
        raise TaskError(path, "a task file must be a .py file", "rename it to <name>.py")
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TaskError(path, f"task file is not valid UTF-8 ({exc})", "save it as UTF-8") from None
    tree = _parse(path, source)
    sizes = _module_sizes(tree)
    _check_required_names(path, tree)
    meta = _load_sidecar(path, sizes)
    description = meta.get("description") or _docstring_summary(tree)
    return Task(
        name=path.stem,
        path=path,
        source=source,
        sizes=sizes,
        group=meta.get("group"),
        level=meta.get("level", DEFAULT_LEVEL),
        description=description,
        atol=meta.get("atol"),
        rtol=meta.get("rtol"),
        size_sets=meta.get("size_sets", []),
        tags=tuple(meta.get("tags", ())),
        distributions=tuple(meta.get("distributions", ())),
        active_fraction=meta.get("active_fraction"),
        sockets=meta.get("sockets", 1),
    )


def load_suite(folder: str | Path) -> list[Task]:
    """Load every task in ``folder`` (not recursive), sorted by name.

    Files whose name starts with ``_`` (``__init__.py``, helpers) are not tasks. A folder
    without any task is an error rather than an empty list, because an empty campaign is
    almost always a wrong path. A ``.toml`` file with a ``[task]`` table but no matching
    ``.py`` is reported too: it is a sidecar whose task was renamed or misspelt.
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise TaskError(folder, "suite folder does not exist", "pass a folder that holds task .py files")
    files = sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))
    for toml_path in sorted(folder.glob("*.toml")):
        if toml_path.with_suffix(".py").exists():
            continue
        try:
            data = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            data = {}
        if "task" in data:
            raise TaskError(
                toml_path,
                "sidecar has no task file next to it",
                f"create {toml_path.with_suffix('.py').name} or rename the sidecar to match its task",
            )
    if not files:
        raise TaskError(
            folder,
            "no task files (*.py) in this folder",
            "add task files in the KernelBench layout (see docs/tasks.md) or pass another folder",
        )
    tasks = [load_task(p) for p in files]
    return sorted(tasks, key=lambda t: t.name)


def _parse(path: Path, source: str) -> ast.Module:
    try:
        return ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        col = f", column {exc.offset}" if exc.offset else ""
        raise TaskError(
            path,
            f"syntax error: {exc.msg} (line {exc.lineno}{col})",
            "fix the Python syntax at that line",
            line=exc.lineno,
        ) from None


#: Operators a size may be written with (``N = 2048 * 2``, ``K = 1 << 20``): integer arithmetic,
#: evaluated by :func:`_const_int` on the parsed tree, never by ``eval``.
_SIZE_OPS: dict[type, Any] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod, ast.Pow: operator.pow, ast.LShift: operator.lshift,
}
#: A constant expression whose value (or any intermediate) passes this is not a size (and is never
#: computed: ``10 ** 10 ** 10`` is refused before it is evaluated).
_MAX_SIZE = 1 << 62


def _const_int(node: ast.expr) -> int | None:
    """The value of ``node`` when it is a constant integer expression (int literals combined with
    ``+ - * // % ** <<`` and unary ``+ -``, no names, no calls), else None. Evaluated here on the
    tree, so a task file's text is never executed to learn its sizes; operands are bounded so a
    hostile expression cannot make this slow."""
    if isinstance(node, ast.Constant):
        return node.value if _is_int(node.value) and abs(node.value) <= _MAX_SIZE else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _const_int(node.operand)
        return None if v is None else (v if isinstance(node.op, ast.UAdd) else -v)
    if isinstance(node, ast.BinOp) and type(node.op) in _SIZE_OPS:
        a, b = _const_int(node.left), _const_int(node.right)
        if a is None or b is None:
            return None
        if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and b == 0:
            return None
        if isinstance(node.op, ast.Pow) and not (0 <= b <= 64 and (abs(a) <= 1 or b * abs(a).bit_length() <= 64)):
            return None
        if isinstance(node.op, ast.LShift) and not 0 <= b <= 62:
            return None
        v = _SIZE_OPS[type(node.op)](a, b)
        return v if abs(v) <= _MAX_SIZE else None
    return None


def _stmt_sizes(stmt: ast.stmt) -> dict[str, int]:
    """The sizes a module-level statement defines, by name, with their values.

    A size is a non-negative int written as a constant integer expression (``N = 4096``,
    ``N = 2048 * 2``, ``M = 256 * 8  # 2048``), bound to one or more plain names (``A = B = 8``:
    sizes ``A`` and ``B``), or such an element of a tuple or list bound to one name
    (``input_shape = (32768,)``: the size ``input_shape[0]``; a published problem writes a
    feature dimension that way and builds ``torch.rand(batch_size, *input_shape)``).

    An expression that names another variable (``K = 4 * N``, ``shape = (N,)``) is not a size of its
    own: it stays as written when sizes are rewritten, so it follows the sizes it names, and the
    relation the author wrote (the model may rely on ``K == 4 * N``) holds at every size set. A
    negative constant (``hardtanh_min = -2``) is a parameter, never a size."""
    if isinstance(stmt, ast.Assign):
        value, targets = stmt.value, stmt.targets
    elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None and stmt.simple:
        value, targets = stmt.value, [stmt.target]
    else:
        return {}
    if not all(isinstance(t, ast.Name) for t in targets):
        return {}
    names = [t.id for t in targets]  # type: ignore[attr-defined]
    v = _const_int(value)
    if v is not None:
        return {n: v for n in names} if v >= 0 else {}
    if isinstance(value, (ast.Tuple, ast.List)) and len(names) == 1:
        out = {}
        for i, elt in enumerate(value.elts):
            e = _const_int(elt)
            if e is not None and e >= 0:
                out[f"{names[0]}[{i}]"] = e
        return out
    return {}


def _module_sizes(tree: ast.Module) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for stmt in tree.body:
        sizes.update(_stmt_sizes(stmt))
    return sizes


def _module_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(stmt.name)
        elif isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            names.add(stmt.target.id)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for alias in stmt.names:
                names.add((alias.asname or alias.name).split(".")[0])
    return names


def _check_required_names(path: Path, tree: ast.Module) -> None:
    defined = _module_names(tree)
    missing = [n for n in _REQUIRED_NAMES if n not in defined]
    if missing:
        what = {
            "Model": "class Model(nn.Module) with forward(*inputs)",
            "get_inputs": "def get_inputs(): return [tensors...]",
            "get_init_inputs": "def get_init_inputs(): return [constructor args...] (or [])",
        }
        raise TaskError(
            path,
            "missing module-level " + ", ".join(missing),
            "a task defines " + "; ".join(what[n] for n in missing),
        )


def _docstring_summary(tree: ast.Module) -> str:
    doc = ast.get_docstring(tree)
    return doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""


def _active_fraction(sidecar: Path, value: Any, sizes: Mapping[str, int]) -> float | tuple[int, str]:
    hint = 'write active_fraction = "2/EXPERTS" (k of a size of the task) or a number in (0, 1]'
    if isinstance(value, str):
        m = _FRACTION_RE.match(value)
        if not m:
            raise TaskError(sidecar, f"active_fraction {value[:40]!r} is not K/SIZE", hint)
        k, name = int(m.group(1)), m.group(2)
        if name not in sizes:
            raise TaskError(sidecar, f"active_fraction names {name!r}, which is not a size of the task",
                            _known_sizes_hint(sizes))
        if k < 1:
            raise TaskError(sidecar, "active_fraction's K must be at least 1", hint)
        return (k, name)
    if _is_number(value) and 0 < value <= 1:
        return float(value)
    raise TaskError(sidecar, f"active_fraction must be in (0, 1] or K/SIZE, not {value!r}", hint)


def _table(sidecar: Path, data: dict, name: str, keys: set[str]) -> dict:
    """The sidecar's ``[name]`` table (empty when absent); not a table, or a key not in ``keys``,
    is a :class:`TaskError` saying what to write."""
    tbl = data.get(name, {})
    if not isinstance(tbl, dict):
        raise TaskError(sidecar, f"'{name}' must be a table", f"write it as [{name}]")
    unknown = set(tbl) - keys
    if unknown:
        raise TaskError(sidecar, f"unknown key(s) {sorted(unknown)} in [{name}]",
                        "allowed keys: " + ", ".join(sorted(keys)))
    return tbl


def _load_sidecar(path: Path, sizes: Mapping[str, int]) -> dict[str, Any]:
    """Read and validate ``<stem>.toml``; returns the normalised fields (empty when absent)."""
    sidecar = path.with_suffix(".toml")
    if not sidecar.exists():
        return {}
    try:
        data = tomllib.loads(sidecar.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise TaskError(sidecar, f"malformed TOML: {exc}", "fix the TOML syntax of the sidecar") from None
    except UnicodeDecodeError as exc:
        raise TaskError(sidecar, f"sidecar is not valid UTF-8 ({exc})", "save it as UTF-8") from None

    out: dict[str, Any] = {}
    unknown = set(data) - _SIDECAR_SECTIONS
    if unknown:
        raise TaskError(
            sidecar,
            f"unknown section(s) {sorted(unknown)}",
            "a sidecar has only [task], [tolerance], [roofline], [ranges] and [[sizes]]",
        )

    task_tbl = _table(sidecar, data, "task", _TASK_KEYS)
    if "group" in task_tbl:
        group = task_tbl["group"]
        if group not in GROUPS:
            raise TaskError(
                sidecar,
                f"unknown group {group!r}",
                "use one of: " + ", ".join(sorted(GROUPS)),
            )
        out["group"] = group
    if "level" in task_tbl:
        level = task_tbl["level"]
        if not _is_int(level) or not 1 <= level <= 3:
            raise TaskError(sidecar, f"level must be 1, 2 or 3, not {level!r}", "set level = 1, 2 or 3")
        out["level"] = level
    if "description" in task_tbl:
        if not isinstance(task_tbl["description"], str):
            raise TaskError(sidecar, "description must be a string", 'write description = "..."')
        out["description"] = task_tbl["description"]
    if "distributions" in task_tbl:
        dists = task_tbl["distributions"]
        if not isinstance(dists, list) or not all(isinstance(d, str) and d in DISTRIBUTIONS for d in dists):
            raise TaskError(sidecar, f"distributions must be a list of names from {list(DISTRIBUTIONS)}",
                            'write distributions = ["large"]')
        out["distributions"] = dists
    if "sockets" in task_tbl:
        sockets = task_tbl["sockets"]
        if not _is_int(sockets) or not 1 <= sockets <= MAX_SOCKETS:
            raise TaskError(sidecar, f"sockets must be an integer from 1 to {MAX_SOCKETS}, not {sockets!r}",
                            "write e.g. sockets = 2 (the task's kernel then runs on 2 sockets of the machine's node)")
        out["sockets"] = sockets
    if "tags" in task_tbl:
        tags = task_tbl["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise TaskError(sidecar, "tags must be a list of strings", 'write tags = ["a", "b"]')
        out["tags"] = tags

    tol = _table(sidecar, data, "tolerance", _TOLERANCE_KEYS)
    for key in ("atol", "rtol"):
        if key in tol:
            value = tol[key]
            if not _is_number(value) or value < 0 or not math.isfinite(value):
                raise TaskError(
                    sidecar,
                    f"{key} must be a finite number >= 0, not {value!r}",
                    f"write e.g. {key} = 1e-4",
                )
            out[key] = float(value)

    if "ranges" in data:  # validated here, read by agentforge.ranges (shape-generic library kernels)
        from .ranges import RangeError, parse_ranges

        try:
            parse_ranges(data["ranges"], sizes, where="[ranges]")
        except RangeError as e:
            text, _, hint = str(e).partition("\n  how to fix: ")
            raise TaskError(sidecar, text, hint or 'write e.g. TOKENS = "1..8192"') from None

    roof = _table(sidecar, data, "roofline", _ROOFLINE_KEYS)
    if "active_fraction" in roof:
        out["active_fraction"] = _active_fraction(sidecar, roof["active_fraction"], sizes)

    size_sets = data.get("sizes", [])
    if not isinstance(size_sets, list) or not all(isinstance(s, dict) for s in size_sets):
        raise TaskError(sidecar, "'sizes' must be an array of tables", "write each size set as [[sizes]]")
    checked: list[dict[str, int]] = []
    for i, entry in enumerate(size_sets, start=1):
        for key, value in entry.items():
            if key not in sizes:
                raise TaskError(
                    sidecar,
                    f"size set #{i} names {key!r}, which is not a module-level int size of "
                    f"{path.name}",
                    _known_sizes_hint(sizes),
                )
            if not _is_int(value) or value < 0:
                raise TaskError(
                    sidecar,
                    f"size set #{i}: {key} = {value!r} is not a non-negative int",
                    f"sizes are plain integers, e.g. {key} = 4",
                )
        checked.append(dict(entry))
    out["size_sets"] = checked
    return out


# --------------------------------------------------------------------------------------------
# Executing a task
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Instance:
    """A task executed at concrete sizes: the model (in eval mode) and its inputs.

    Instances are not meant to be pickled (the model's class lives in a module that exists only
    in this process); a worker process should call :func:`instantiate` itself: the same task,
    sizes and seed give the same weights and inputs.
    """

    task: Task
    model: nn.Module
    inputs: list[torch.Tensor]
    sizes: dict[str, int]
    seed: int = 0
    init_inputs: list[Any] = field(default_factory=list)
    namespace: dict[str, Any] = field(default_factory=dict, repr=False)
    #: numbers ``get_inputs()`` returned, by position, bound into ``model`` (see _BoundScalars)
    scalar_inputs: dict[int, Any] = field(default_factory=dict)


def derive_seed(seed: int, purpose: str) -> int:
    """A stable 63-bit seed for ``purpose`` derived from ``seed`` (same in every process).

    Weights and inputs use different derived streams so that, e.g., ``torch.randn(H)`` in the
    constructor and ``torch.randn(B, H)`` in ``get_inputs`` do not start with the same numbers
    (correlated weights and inputs can hide a kernel that swaps operands).
    """
    digest = hashlib.sha256(f"{int(seed)}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _rewrite_sizes(tree: ast.Module, sizes: Mapping[str, int]) -> ast.Module:
    """Replace the constant expression of every module-level size (:func:`_stmt_sizes`) by its
    value in ``sizes``; everything else, derived sizes included, stays as written."""
    new_body: list[ast.stmt] = []
    for stmt in tree.body:
        own = _stmt_sizes(stmt)
        names = [n for n in own if n in sizes]
        value = stmt.value if names else None  # type: ignore[attr-defined]
        if not names:
            new_body.append(stmt)
        elif isinstance(value, (ast.Tuple, ast.List)):  # sizes inside a tuple: ``shape = (32768,)``
            prefix = next(iter(own)).split("[")[0]
            for i, elt in enumerate(value.elts):
                if f"{prefix}[{i}]" in sizes:
                    value.elts[i] = ast.copy_location(ast.Constant(sizes[f"{prefix}[{i}]"]), elt)
            new_body.append(stmt)
        elif len({sizes[n] for n in names}) == 1 and len(names) == len(own):
            stmt.value = ast.copy_location(ast.Constant(sizes[names[0]]), value)  # type: ignore[attr-defined]
            new_body.append(stmt)
        else:  # ``A = B = 4`` with A and B given different sizes: one assignment per name
            for name, default in own.items():
                assign = ast.Assign(
                    targets=[ast.Name(id=name, ctx=ast.Store())],
                    value=ast.Constant(sizes.get(name, default)),
                )
                new_body.append(ast.copy_location(assign, stmt))
    tree.body = new_body
    ast.fix_missing_locations(tree)
    return tree


def _task_failure(task: Task, phase: str, exc: BaseException) -> TaskError:
    """Turn an exception raised by task code into a TaskError pointing at the task's line."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == str(task.path):
            line = frame.lineno
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return TaskError(
        task.path,
        f"{phase} raised {detail}",
        "the task's own code failed; run it directly with these sizes to debug it",
        line=line,
    )


def _load_namespace(task: Task, sizes: Mapping[str, int]) -> dict[str, Any]:
    """Execute the task module (sizes rewritten) in a fresh namespace and return it."""
    tree = _rewrite_sizes(ast.parse(task.source, filename=str(task.path)), sizes)
    code = compile(tree, str(task.path), "exec")
    module = types.ModuleType(f"agentforge_task_{task.name}_{next(_EXEC_COUNTER)}")
    module.__file__ = str(task.path)
    namespace = module.__dict__
    # Registered while it runs so that dataclasses / typing inside the task can find their
    # module; removed afterwards so that instances never share state and nothing leaks.
    sys.modules[module.__name__] = module
    try:
        exec(code, namespace)  # noqa: S102 - trusted user reference code, see module docstring
    except (Exception, SystemExit) as exc:
        raise _task_failure(task, "importing the task", exc) from None
    finally:
        sys.modules.pop(module.__name__, None)
    for name in _REQUIRED_NAMES:
        if not callable(namespace.get(name)):
            raise TaskError(task.path, f"{name} is not callable after import", f"define {name} at module level")
    return namespace


def _call(task: Task, phase: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except (Exception, SystemExit) as exc:
        raise _task_failure(task, phase, exc) from None


def _call_get_inputs(task: Task, namespace: Mapping[str, Any], seed: int) -> tuple[list[torch.Tensor], dict[int, Any]]:
    """The tensors ``get_inputs()`` returns, and its plain Python numbers by position.

    A published problem may pass a scalar to ``forward`` (``return [A, 3.14]``): it is a constant of
    the problem, not an input a kernel reads, so it is bound into the model (:class:`_BoundScalars`)
    and every tensor keeps its place in the list that candidates and references are called with."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "inputs"))
        inputs = _call(task, "get_inputs()", namespace["get_inputs"])
    if not isinstance(inputs, (list, tuple)):
        raise TaskError(
            task.path,
            f"get_inputs() returned {type(inputs).__name__}, not a list",
            "return a list of tensors: return [x, y]",
        )
    tensors: list[torch.Tensor] = []
    scalars: dict[int, Any] = {}
    for i, value in enumerate(inputs):
        if isinstance(value, torch.Tensor):
            tensors.append(value)
        elif isinstance(value, (bool, int, float)):
            scalars[i] = value
        else:
            raise TaskError(
                task.path,
                f"get_inputs() item {i} is a {type(value).__name__}, not a tensor or a number",
                "pass other non-tensor arguments to the constructor via get_init_inputs()",
            )
    if not tensors:
        raise TaskError(task.path, "get_inputs() returned no tensor", "return at least one input tensor")
    return tensors, scalars


class _BoundScalars(nn.Module):
    """A task's model with the numbers ``get_inputs()`` returns bound as constants: ``forward`` takes
    the tensors alone, in order, and calls the task's model with the numbers back in their places.
    The task's model is the submodule ``inner`` (so weights keep their names under ``inner.``)."""

    def __init__(self, inner: nn.Module, scalars: Mapping[int, Any], arity: int):
        super().__init__()
        self.inner = inner
        self.scalars = dict(scalars)
        self.arity = arity

    def forward(self, *tensors: torch.Tensor) -> Any:
        it = iter(tensors)
        return self.inner(*[self.scalars[i] if i in self.scalars else next(it) for i in range(self.arity)])


def instantiate(task: Task, sizes: Mapping[str, int] | None = None, seed: int = 0) -> Instance:
    """Execute ``task`` at ``sizes`` (overrides merged over the defaults) with ``seed``.

    Torch's global RNG is seeded before ``get_init_inputs()``/``Model(...)`` (with ``seed``) and
    before ``get_inputs()`` (with ``derive_seed(seed, "inputs")``), inside ``fork_rng`` so the
    caller's RNG state is untouched. The same task, sizes and seed give bit-identical weights
    and inputs in any process.
    """
    resolved = task.sizes_for(sizes)
    namespace = _load_namespace(task, resolved)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        init_inputs = _call(task, "get_init_inputs()", namespace["get_init_inputs"])
        if not isinstance(init_inputs, (list, tuple)):
            raise TaskError(
                task.path,
                f"get_init_inputs() returned {type(init_inputs).__name__}, not a list",
                "return a list of constructor arguments (or [])",
            )
        model = _call(task, "Model(*get_init_inputs())", namespace["Model"], *init_inputs)
    if not isinstance(model, nn.Module):
        raise TaskError(
            task.path,
            f"Model(...) built a {type(model).__name__}, not an nn.Module",
            "make Model a subclass of torch.nn.Module",
        )
    model.eval()
    inputs, scalars = _call_get_inputs(task, namespace, seed)
    if scalars:
        model = _BoundScalars(model, scalars, len(inputs) + len(scalars)).eval()
    return Instance(
        task=task,
        model=model,
        inputs=inputs,
        sizes=resolved,
        seed=int(seed),
        init_inputs=list(init_inputs),
        namespace=namespace,
        scalar_inputs=scalars,
    )


# --------------------------------------------------------------------------------------------
# Input distributions
# --------------------------------------------------------------------------------------------


def make_inputs(
    source: Instance | Task,
    sizes: Mapping[str, int] | None = None,
    seed: int = 0,
    distribution: str = "normal",
) -> list[torch.Tensor]:
    """Inputs for ``source`` at ``sizes`` with floating-point values drawn from ``distribution``.

    Why: a kernel that is only ever checked on ``randn`` inputs can pass with analytic
    shortcuts or precision bugs that other value ranges expose. The task's own ``get_inputs()``
    always runs first (seeded as in :func:`instantiate`, so ``"normal"`` reproduces
    ``instantiate(task, sizes, seed).inputs`` exactly); integer and bool tensors (indices,
    masks) are kept as it made them, floating-point tensors are replaced:

    - ``"normal"``: unchanged, the task's own values;
    - ``"uniform"``: U(-1, 1);
    - ``"heavy"``: Student-t with 2 degrees of freedom (infinite variance), clipped to +-1e4;
    - ``"mixed_scale"``: N(0, 1) times 10**U(-3, 3), one scale per row (last dim);
    - ``"large"``: N(0, 1) x 100, past exp's float32 range;
    - ``"last_max"``: N(0, 1) with each row's (last dim) maximum moved to its last element and
      lifted 100 above the rest: the maximum lies in the last tile whatever the tiling, and a
      softmax stabilised by a partial maximum overflows;
    - ``"offset"``: N(0, 1) plus one offset per row drawn from U(-L, L), L = 1e4 for f32
      (1e3 f16, 1e2 bf16): shift-invariant ops must not care, an exp that is not stabilised
      by the row maximum overflows;
    - ``"near_ties"``: per row one N(0, 1) value plus distinct multiples of its ulp in a random
      order: every element within a few hundred ulps of the maximum, so an argmax, max or top-k
      computed at lower precision or over part of the row picks another index;
    - ``"zeros"``: N(0, 1) with a quarter of the elements exactly 0 (a division or log that a
      kernel adds where the task has none shows up as inf/NaN).

    Shapes and dtypes are preserved exactly. Values come from a ``torch.Generator`` seeded from
    ``(seed, distribution)``, so results are reproducible and independent of global RNG state.
    With an :class:`Instance` and ``sizes=None`` its sizes are used, and its already-executed
    module is reused when the sizes match.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; choose from {', '.join(DISTRIBUTIONS)}")
    if isinstance(source, Instance):
        task = source.task
        resolved = task.sizes_for(source.sizes if sizes is None else {**source.sizes, **sizes})
        namespace = source.namespace if resolved == source.sizes and source.namespace else None
    else:
        task = source
        resolved = task.sizes_for(sizes)
        namespace = None
    if namespace is None:
        namespace = _load_namespace(task, resolved)
    base, _ = _call_get_inputs(task, namespace, seed)
    if distribution == "normal":
        return base
    gen = torch.Generator().manual_seed(derive_seed(seed, f"distribution:{distribution}"))
    return [_redraw(t, distribution, gen) if t.is_floating_point() else t for t in base]


def _redraw(t: torch.Tensor, distribution: str, gen: torch.Generator) -> torch.Tensor:
    work = torch.float64 if t.dtype == torch.float64 else torch.float32
    shape = tuple(t.shape)
    if distribution == "uniform":
        values = torch.rand(shape, generator=gen, dtype=work) * 2 - 1
    elif distribution == "heavy":
        # Student-t(2) = Z / sqrt(V / 2) with V ~ chi2(2) = Exp(mean 2), i.e. V / 2 = -log(U).
        z = torch.randn(shape, generator=gen, dtype=work)
        u = torch.rand(shape, generator=gen, dtype=work).clamp_min(torch.finfo(work).tiny)
        values = (z / torch.sqrt(-torch.log(u))).clamp(-_HEAVY_CLIP, _HEAVY_CLIP)
    elif distribution == "large":
        # standard normal x 100: past exp's float32 range (88), so an unguarded exp overflows
        values = torch.randn(shape, generator=gen, dtype=work) * 100.0
    elif distribution == "mixed_scale":
        z = torch.randn(shape, generator=gen, dtype=work)
        row_shape = shape[:-1] + (1,) if len(shape) >= 1 else ()
        exponent = torch.rand(row_shape, generator=gen, dtype=work) * 6 - 3
        values = z * torch.pow(10.0, exponent)
    elif distribution == "last_max":
        values = torch.randn(shape, generator=gen, dtype=work)
        if values.numel():
            values[..., -1] = values.amax(dim=-1) + _LAST_MAX_MARGIN
    elif distribution == "offset":
        z = torch.randn(shape, generator=gen, dtype=work)
        row_shape = shape[:-1] + (1,) if len(shape) >= 1 else ()
        limit = _OFFSET.get(t.dtype, 1e4)
        values = z + (torch.rand(row_shape, generator=gen, dtype=work) * 2 - 1) * limit
    elif distribution == "near_ties":
        values = _near_ties(shape, gen, t.dtype)
        return values
    elif distribution == "zeros":
        z = torch.randn(shape, generator=gen, dtype=work)
        values = torch.where(torch.rand(shape, generator=gen, dtype=work) < 0.25, torch.zeros_like(z), z)
    else:  # pragma: no cover - guarded by make_inputs
        raise ValueError(distribution)
    return values.to(t.dtype)


def _near_ties(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """One value per row plus distinct multiples of its ulp, shuffled (computed in ``dtype``)."""
    if not shape or not math.prod(shape):
        return torch.zeros(shape, dtype=dtype)
    n = shape[-1]
    rows = math.prod(shape[:-1])
    base = (torch.randn((rows, 1), generator=gen) + 4.0).to(dtype)  # positive, away from a binade edge at 0
    ulp = torch.nextafter(base, torch.full_like(base, math.inf)) - base
    order = torch.argsort(torch.rand((rows, n), generator=gen), dim=1).to(dtype)
    return (base + order * ulp).reshape(shape)
