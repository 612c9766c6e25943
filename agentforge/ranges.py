"""Shape-generic library kernels: a kernel verified over a declared range of sizes, not a size set.

Why: a campaign verifies a kernel at its task's own sizes (and the referee's check sizes), so a
model called at any other size -- another prompt length, another KV length -- finds no kernel
unless it is verified on the spot (``verify_new_sizes``: minutes per new size). A kernel written
in ASP, or a fusion plan, is symbolic in its sizes: the same code runs at every size, only the
number of tiles and the last, ragged tile change. So a kernel is verified once over a declared
range per size, at sampled points that exercise what can differ inside it:

- both **edges** of the range (``lo``, ``hi``) and one past the low edge;
- **ragged** points, not a multiple of any tile the kernel uses (``L - 1``, ``L + 1``, ``3L - 1``
  for the tile modulus ``L``: the lcm of its tiles at the task's own sizes), so the partial tile runs;
- **aligned** points (``L``, ``3L``) and **interior** points (the geometric middle, the own size).

A point too large for the interpreter's check budget (``VerifyConfig.check_elements``) is
checked at the largest checkable size with the same tiling character: the same remainder
modulo ``L`` (so exactly as ragged, the same partial tile), and the same configuration (operators,
``par``, tile sizes) as at the point itself; the record says so (``checked_at`` differs from
``sizes``). Timing is data-free (meta graphs), so every point is also timed at its own sizes,
with the op-by-op baseline beside it.

The result is recorded in the library's manifest (``KernelEntry.ranges``, docs/library.md) with
its provenance; :mod:`agentforge.torch.ops` then dispatches any call whose sizes lie inside a
verified range to the kernel without verifying at call time.

Where a range comes from: a task sidecar's ``[ranges]`` table (``TOKENS = "1..8192"``), or the
command line (``--range TOKENS=1..8192``), which wins. ``agentforge campaign --from-model`` tasks are
written with literal shapes; :func:`symbolize_sources` turns the same region captured at several
prompt lengths into one task with a ``TOKENS`` size (every literal that varies with the prompt
length written as an affine function of it).

Command line: ``agentforge library verify-ranges LIB [--range NAME=LO..HI ...] [--json]`` (also
``python -m agentforge.ranges verify-ranges ...``). It runs the library's task code in this
process (like ``agentforge.torch.load_library``): use it on libraries whose tasks you trust (your
own campaign's); a library from elsewhere is merged first (``library merge`` re-verifies in a
confined worker and drops range records it cannot reproduce).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import io
import json
import math
import re
import sys
import time
import tokenize
import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from .errors import AgentforgeError

if TYPE_CHECKING:
    from .library import KernelEntry, Library
    from .tasks import Task
    from .verify import VerifyConfig

__all__ = ["Range", "RangeError", "parse_range", "parse_ranges", "sidecar_ranges", "sample_points", "tile_modulus",
           "checkable_point", "verify_entry_ranges", "verify_library_ranges", "range_covers", "symbolize_sources",
           "symbolic_model_suite",
           "MAX_POINTS_PER_SIZE"]

_RANGE_RE = re.compile(r"^\s*(\d{1,12})\s*\.\.\s*(\d{1,12})\s*$")
#: at most this many sampled values per ranged size (each is a full check: seconds on the interpreter)
MAX_POINTS_PER_SIZE = 10
#: a tile modulus larger than this is not used for ragged points (it would leave the range)
_MAX_MODULUS = 1 << 16


class RangeError(AgentforgeError):
    """A declared size range that cannot be used (says where and how to fix it)."""


@dataclass(frozen=True)
class Range:
    """An inclusive range of one size, ``lo..hi``."""
    lo: int
    hi: int

    def __contains__(self, v: object) -> bool:
        return isinstance(v, int) and self.lo <= v <= self.hi

    def __str__(self) -> str:
        return f"{self.lo}..{self.hi}"


def parse_range(text: Any, name: str = "size", where: str = "range") -> Range:
    """``"LO..HI"`` (inclusive, 1 <= LO <= HI) as a :class:`Range`; anything else a clear :class:`RangeError`."""
    if not isinstance(text, str):
        raise RangeError(f"{where}: {name} = {text!r} is not a range\n  how to fix: write it as a string, "
                         f"e.g. {name} = \"1..8192\"")
    m = _RANGE_RE.match(text)
    if not m:
        raise RangeError(f"{where}: {name} = {text!r} is not LO..HI\n  how to fix: two positive integers joined "
                         f"by '..', e.g. {name} = \"1..8192\"")
    lo, hi = int(m.group(1)), int(m.group(2))
    if lo < 1:
        raise RangeError(f"{where}: {name} = {text!r} starts below 1\n  how to fix: a size is at least 1")
    if hi < lo:
        raise RangeError(f"{where}: {name} = {text!r} is empty (HI < LO)\n  how to fix: write LO..HI with LO <= HI")
    return Range(lo, hi)


def parse_ranges(table: Mapping[str, Any], sizes: Mapping[str, int], where: str = "ranges") -> dict[str, Range]:
    """A ``[ranges]`` table (name -> "LO..HI") checked against a task's sizes: every name is a size
    of the task and its range holds the task's own value (the size it is timed at)."""
    if not isinstance(table, Mapping):
        raise RangeError(f"{where}: [ranges] must be a table of NAME = \"LO..HI\"")
    out: dict[str, Range] = {}
    for name, text in table.items():
        if name not in sizes:
            known = ", ".join(sizes) or "(none: the task has no module-level int sizes)"
            raise RangeError(f"{where}: {name!r} is not a size of the task\n  how to fix: name one of its "
                             f"module-level int sizes: {known}")
        r = parse_range(text, name, where)
        if sizes[name] not in r:
            raise RangeError(f"{where}: {name} = \"{r}\" does not hold the task's own {name} = {sizes[name]}\n"
                             f"  how to fix: widen the range to include {sizes[name]}")
        out[name] = r
    return out


def parse_range_args(items: Sequence[str] | None) -> dict[str, Range]:
    """``["TOKENS=1..64", ...]`` (the command line's ``--range``) as {name: Range}."""
    out: dict[str, Range] = {}
    for it in items or ():
        name, sep, text = it.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*(\[\d+\])?", name.strip()):
            raise RangeError(f"--range {it!r}: expected NAME=LO..HI, e.g. --range TOKENS=1..8192")
        out[name.strip()] = parse_range(text, name.strip(), "--range")
    return out


def sidecar_ranges(task: "Task") -> dict[str, Range]:
    """The ``[ranges]`` table of the task's sidecar (empty when it has none)."""
    side = task.path.with_suffix(".toml")
    if not side.is_file():
        return {}
    try:
        data = tomllib.loads(side.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RangeError(f"{side}: not valid TOML ({e})") from None
    return parse_ranges(data.get("ranges", {}), task.sizes, str(side)) if "ranges" in data else {}


# ---------------------------------------------------------------------- sampling


def _plan_tile_params() -> frozenset[str]:
    """The fusion templates' tile-size parameters (``rows`` of a row region, ``tm``/``tn``/``tk``... of a
    matmul), read off the templates' parameter names (agentforge.store.plan_adapt.PARAM_KEYS)."""
    from .store.plan_adapt import PARAM_KEYS

    return frozenset(k for keys in PARAM_KEYS.values() for k in keys if k == "rows" or re.fullmatch(r"t[a-z]", k))


def tile_modulus(structures: Iterable[tuple], plan: Mapping[str, Any] | None = None) -> int:
    """The lcm of every tile size in ``structures`` (:func:`agentforge.solution.structure`'s
    ``(ops, tiles, ...)``, tiles as (operator, axis, tile, tiles along it)) and, for a fusion plan,
    of its regions' tile parameters (a fused kernel's row or matmul tiles are the plan's, not an
    operator's tiling); 1 when nothing is tiled."""
    m = 1
    for st in structures:
        for _, _, t, _ in st[1]:
            if isinstance(t, int) and t > 1:
                m = math.lcm(m, t)
    names = _plan_tile_params() if plan else frozenset()
    for region in (plan or {}).get("regions", []):
        for k, v in (region.get("params") or {}).items():
            if k in names and isinstance(v, int) and not isinstance(v, bool) and v > 1:
                m = math.lcm(m, v)
    return m if m <= _MAX_MODULUS else 1


def _values(r: Range, own: int, modulus: int) -> list[tuple[int, str]]:
    """Sampled values of one size: (value, why), at most :data:`MAX_POINTS_PER_SIZE`, taken in
    this order of priority: edges, ragged, aligned, own size, interior."""
    L = max(1, modulus)
    want: list[tuple[int, str]] = [(r.lo, "edge: low"), (r.hi, "edge: high")]
    if L > 1:
        want += [(L - 1, "ragged: L - 1"), (L + 1, "ragged: L + 1"), (3 * L - 1, "ragged: 3L - 1"),
                 (L, "aligned: L"), (3 * L, "aligned: 3L")]
    else:   # nothing tiled at the own sizes: odd and even values still exercise any per-row remainder
        want += [(3, "odd: 3"), (17, "odd: 17")]
    want += [(own, "interior: own size"), (int(round(math.sqrt(r.lo * r.hi))), "interior: geometric middle"),
             (r.lo + 1, "edge: low + 1"), ((r.lo + r.hi) // 2 + 1, "interior: middle + 1")]
    out: dict[int, str] = {}
    for v, why in want:
        if v in r and v not in out:
            out[v] = why
        if len(out) >= MAX_POINTS_PER_SIZE:
            break
    return sorted(out.items())


def sample_points(own: Mapping[str, int], ranges: Mapping[str, Range], modulus: int) -> list[tuple[dict[str, int], str]]:
    """Size sets to verify ranges at: each ranged size over its sampled values (edges, ragged and
    aligned to ``modulus``, interior) with the other sizes at their own values, then the corners
    where every ranged size is at its low (and its high) edge. (sizes, why) pairs, no repeats."""
    out: list[tuple[dict[str, int], str]] = []
    seen: set[tuple] = set()

    def add(sizes: dict[str, int], why: str) -> None:
        k = tuple(sorted(sizes.items()))
        if k not in seen:
            seen.add(k)
            out.append((sizes, why))

    for name, r in ranges.items():
        for v, why in _values(r, own[name], modulus):
            add({**own, name: v}, f"{name} {why}")
    if len(ranges) > 1:
        add({**own, **{n: r.lo for n, r in ranges.items()}}, "corner: every ranged size at its low edge")
        add({**own, **{n: r.hi for n, r in ranges.items()}}, "corner: every ranged size at its high edge")
    return out


def _elements(graph: Any) -> int:
    return sum(math.prod(s.shape or (1,)) for s in [*graph.inputs, *graph.params, *graph.output_specs])


def _config(structures: list[tuple]) -> list[tuple]:
    """A program's configuration without its grid counts: operators with par, tiled axes with tile sizes."""
    return [(ops, tuple((i, ax, t) for i, ax, t, _ in tiles)) for ops, tiles, *_ in structures]


def checkable_point(task: "Task", sol: Any, sizes: dict[str, int], ranged: Sequence[str], modulus: int,
                    budget: int) -> tuple[dict[str, int] | None, str]:
    """Where to check the point ``sizes``: itself when its inputs, weights and outputs fit ``budget``
    elements; else the largest sizes below it that fit, each ranged size lowered by whole multiples
    of ``modulus`` (the same remainder: as ragged, the same last tile) and with the same
    configuration as at the point. (None, why) when there are none."""
    from .capture import capture_at

    g = capture_at(task, sizes, meta=True)
    if _elements(g) <= budget:
        return dict(sizes), "checked at its own sizes"
    want = _config(sol.structure(g))
    L = max(1, modulus)
    big = [n for n in ranged if sizes[n] > L]
    if not big:
        return None, f"{_elements(g)} elements, over the check budget {budget}, and no ranged size to lower"

    K = max(sizes[n] // L for n in big)          # k of K steps removes k / K of every big size's whole tiles

    def at(k: int) -> dict[str, int]:
        return {**sizes, **{n: max(sizes[n] % L or L, sizes[n] - L * ((sizes[n] // L) * k // K)) for n in big}}

    def fits(k: int) -> bool:
        return _elements(capture_at(task, at(k), meta=True)) <= budget

    if not fits(K):
        return None, f"over the check budget {budget} even with every ranged size at its last tile"
    lo, hi = 1, K                # bisect on the fewest steps that fit: one tile per step for a single ranged size
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    for k in range(lo, min(K, lo + 16) + 1):     # the first of those that also runs the point's configuration
        s = at(k)
        if _config(sol.structure(capture_at(task, s, meta=True))) == want:
            return s, (f"{_elements(g)} elements at the point, over the check budget {budget}: checked at the "
                       f"largest checkable sizes with the same remainder modulo the tile modulus {L} and the same "
                       f"configuration")
    return None, f"no checkable sizes below the point run its configuration (tile modulus {L})"


# ---------------------------------------------------------------------- verifying an entry over ranges


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def verify_entry_ranges(lib: "Library", e: "KernelEntry", ranges: Mapping[str, Range],
                        cfg: "VerifyConfig | None" = None, machine: Any = None) -> dict[str, Any]:
    """Verify entry ``e`` of ``lib`` over ``ranges`` (its task's sizes): the task's checks at every
    sampled point (or its checkable stand-in), and the kernel and the op-by-op baseline timed at
    each point's own sizes. Returns the manifest record (docs/library.md, ``ranges``); its
    ``verified`` is whether every point passed."""
    import asp_lang

    from . import __version__
    from .capture import capture_at
    from .solution import baseline_solution
    from .tasks import load_task
    from .verify import VerifyConfig, run_checks

    cfg = cfg or VerifyConfig(machine=lib.manifest.get("machine", "sn40l"))
    machine = machine or asp_lang.load_machine(cfg.machine)
    task = load_task(lib.root / e.task_file)
    own = dict(task.sizes)
    if e.own_sizes and dict(e.own_sizes) != own:
        raise RangeError(f"kernel {e.id}: its task's sizes {own} are not the ones it was timed at {e.own_sizes}")
    parse_ranges({n: str(r) for n, r in ranges.items()}, own, f"kernel {e.id} ({e.task})")
    sol = e.solution(lib.root, machine)
    base = baseline_solution(machine)
    modulus = tile_modulus(sol.structure(capture_at(task, own, meta=True)), e.plan)
    points = []
    ok = True
    t0 = time.perf_counter()
    for sizes, why in sample_points(own, ranges, modulus):
        row: dict[str, Any] = {"sizes": sizes, "why": why}
        g = capture_at(task, sizes, meta=True)
        try:
            t = sol.time(g)
            row["seconds"] = float(t.seconds)
            row["baseline_seconds"] = float(base.time(g).seconds)
        except Exception as x:  # noqa: BLE001 - the kernel does not build or time at this point: a failed point
            row.update(passed=False, reason=f"does not build at these sizes: {type(x).__name__}: {x}")
            points.append(row)
            ok = False
            continue
        at, how = checkable_point(task, sol, sizes, list(ranges), modulus, cfg.check_elements)
        row["checked_at"] = at
        row["how"] = how
        if at is None:
            row.update(passed=False, reason=how)
            ok = False
        else:
            checks = run_checks(dataclasses.replace(task, size_sets=[]), sol, cfg, sets=[at])
            bad = next((c for c in checks if not c.passed), None)
            row["passed"] = bool(checks) and bad is None
            row["seeds"] = [c.seed for c in checks]
            row["distributions"] = [c.distribution for c in checks]
            if bad is not None:
                row["reason"] = bad.reason
            if checks and bad is None:
                row["max_abs_error"] = max(c.max_abs_error or 0.0 for c in checks)
            ok = ok and row["passed"]
        points.append(row)
    return {"sizes": {n: [r.lo, r.hi] for n, r in ranges.items()},
            "fixed": {n: v for n, v in own.items() if n not in ranges},
            "tile_modulus": modulus, "verified": ok, "points": points,
            "provenance": {"date": _now(), "machine": cfg.machine, "emulator_version": asp_lang.EMULATOR_VERSION,
                           "agentforge_version": __version__, "seeds": list(cfg.seeds),
                           "wall_seconds": round(time.perf_counter() - t0, 3)}}


def range_covers(record: Mapping[str, Any], sizes: Mapping[str, int]) -> bool:
    """Whether a verified range record covers the task sizes ``sizes``: every ranged size inside its
    range, every other size at the value the range was verified with."""
    if not record.get("verified"):
        return False
    for n, (lo, hi) in record.get("sizes", {}).items():
        v = sizes.get(n)
        if not isinstance(v, int) or not lo <= v <= hi:
            return False
    return all(sizes.get(n) == v for n, v in record.get("fixed", {}).items())


def verify_library_ranges(lib: "Library", overrides: Mapping[str, Range] | None = None, only: str | None = None,
                          cfg: "VerifyConfig | None" = None, progress: Any = None,
                          workers: int = 1) -> list[dict[str, Any]]:
    """Verify every kernel of ``lib`` (or those ``only`` names: id, op or task) over its ranges: the
    sizes of ``overrides`` its task has, else its sidecar's ``[ranges]``. Kernels with neither are
    skipped (a row says so). Records are written to the manifest (replacing older ones for the same
    sizes), by this process only. One row per kernel, in the library's order: id, op, ranges,
    verified, points, failed points, wall seconds. ``workers`` > 1 verifies that many kernels at
    once, each in a process of its own (a kernel's points run one after another)."""
    rows: list[dict[str, Any]] = []
    from .tasks import load_task

    entries = lib.get(only) if only else lib.entries
    if only and not entries:
        raise RangeError(f"{lib.root}: no kernel {only!r} (an id, op or task name; see `agentforge library list`)")
    todo: list[tuple[Any, dict[str, Range]]] = []
    for e in list(entries):
        task = load_task(lib.root / e.task_file)
        ranges = sidecar_ranges(task)
        for n, r in (overrides or {}).items():
            if n in task.sizes:
                ranges[n] = r
        todo.append((e, parse_ranges({n: str(r) for n, r in ranges.items()}, task.sizes, f"kernel {e.id} ({e.task})")
                     if ranges else {}))
    pool = None
    if workers > 1 and sum(1 for _, r in todo if r) > 1:
        import concurrent.futures
        import multiprocessing

        pool = concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)),
                                                      mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {e.id: pool.submit(_verify_one, str(lib.root), e.id, r, cfg) for e, r in todo if r} if pool else {}
        for e, ranges in todo:
            if not ranges:
                task = load_task(lib.root / e.task_file)
                rows.append({"id": e.id, "op": e.op, "ranges": {}, "verified": None,
                             "reason": f"no range declared (task sizes: {', '.join(task.sizes) or 'none'})"})
                continue
            rec = futures[e.id].result() if pool else verify_entry_ranges(lib, e, ranges, cfg)
            rows.append(_range_row(lib, e, ranges, rec))
            if progress is not None:
                progress(rows[-1])
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return rows


def _verify_one(root: str, entry_id: str, ranges: dict[str, Range], cfg: Any) -> dict[str, Any]:
    """:func:`verify_entry_ranges` in a worker process: the record, written by the caller."""
    from .library import Library

    lib = Library.open(root)
    (e,) = [x for x in lib.entries if x.id == entry_id]
    return verify_entry_ranges(lib, e, ranges, cfg)


def _range_row(lib: "Library", e: Any, ranges: dict[str, Range], rec: dict[str, Any]) -> dict[str, Any]:
    """Record ``rec`` in the manifest; the row :func:`verify_library_ranges` returns for it."""
    lib.set_ranges(e.id, rec)
    bad = [p for p in rec["points"] if not p.get("passed")]
    return {"id": e.id, "op": e.op, "ranges": {n: str(r) for n, r in ranges.items()},
            "verified": rec["verified"], "points": len(rec["points"]),
            "failed": [{"sizes": p["sizes"], "reason": p.get("reason")} for p in bad],
            "wall_seconds": rec["provenance"]["wall_seconds"]}


# ---------------------------------------------------------------------- symbolic tasks from literal ones


def _fit(xs: Sequence[int], vs: Sequence[int]) -> tuple[int, int, int] | None:
    """Integers (a2, a1, b) with v = a2 x^2 + a1 x + b at every point, preferring the affine form; None if none."""
    if len(set(vs)) == 1:
        return 0, 0, vs[0]
    (x0, v0), (x1, v1) = (xs[0], vs[0]), (xs[1], vs[1])
    if (v1 - v0) % (x1 - x0) == 0:
        a = (v1 - v0) // (x1 - x0)
        b = v0 - a * x0
        if all(a * x + b == v for x, v in zip(xs, vs)):
            return 0, a, b
    if all(v % (x * x) == 0 for x, v in zip(xs, vs)) and len({v // (x * x) for x, v in zip(xs, vs)}) == 1:
        return vs[0] // (xs[0] * xs[0]), 0, 0
    return None


def _expr(a2: int, a1: int, b: int, name: str) -> str:
    terms = []
    if a2:
        terms.append(f"{name} * {name}" if a2 == 1 else f"{a2} * {name} * {name}")
    if a1:
        terms.append(name if a1 == 1 else f"{a1} * {name}")
    expr = " + ".join(terms) if terms else "0"
    if b:
        expr += f" + {b}" if b > 0 else f" - {-b}"
    return f"({expr})" if (b or len(terms) > 1) else expr


def symbolize_sources(sources: Mapping[int, str], name: str = "TOKENS") -> str | None:
    """One task source symbolic in ``name`` from the same task written at several values of it.

    ``sources`` maps a value of the size (a prompt length, say) to the task's source at that value
    (literal shapes, as ``campaign --from-model`` writes them). The sources must be the same token
    for token except integer literals; each integer that varies is written as an affine function of
    ``name`` (or ``c * name * name``) fitted on all values -- at least 3 values, so a coincidence
    (a model dimension equal to the prompt length at one value) cannot be mistaken for a size.
    ``name = <first value>`` is added as a module-level size after the imports. None when the
    sources differ otherwise, a varying integer fits no such form, or ``name`` is already used."""
    if len(sources) < 3:
        raise RangeError(f"symbolize_sources needs the source at 3 or more values of {name}, got {len(sources)}")
    xs = list(sources)
    streams = []
    for x in xs:
        try:
            streams.append(list(tokenize.generate_tokens(io.StringIO(sources[x]).readline)))
        except (tokenize.TokenError, SyntaxError):
            return None
    first = streams[0]
    if any(len(s) != len(first) for s in streams) or any(t.type == tokenize.NAME and t.string == name
                                                          for t in first):
        return None
    edits: list[tuple[tuple[int, int], tuple[int, int], str]] = []     # (start, end, new text) in the first source
    for i, tok in enumerate(first):
        toks = [s[i] for s in streams]
        if any(t.type != tok.type for t in toks):
            return None
        if len({t.string for t in toks}) == 1:
            continue
        if tok.type != tokenize.NUMBER or not all(re.fullmatch(r"\d+", t.string) for t in toks):
            return None
        fit = _fit(xs, [int(t.string) for t in toks])
        if fit is None:
            return None
        edits.append((tok.start, tok.end, _expr(*fit, name)))
    if not edits:
        return None
    lines = sources[xs[0]].splitlines()
    for (r0, c0), (r1, c1), text in reversed(edits):      # a number is one token on one line
        ln = lines[r0 - 1]
        lines[r0 - 1] = ln[:c0] + text + ln[c1:]
    # put the size after the last top-level import (a module-level int: the evaluator rewrites it)
    at = max((i for i, ln in enumerate(lines) if ln.startswith(("import ", "from "))), default=-1) + 1
    lines[at:at] = ["", f"{name} = {xs[0]}"]
    return "\n".join(lines) + "\n"


def symbolic_model_suite(spec: str, out: Any, prompt: int = 16, batch: int = 1,
                         max_tokens: int | None = None) -> tuple[Any, dict[str, Any]]:
    """``campaign --from-model``'s suite with tasks symbolic in the prompt length: the model is
    captured at ``prompt``, ``prompt + 1`` and ``prompt + 2`` tokens and each region whose program
    changes with it becomes one task with a ``TOKENS`` size (own value ``prompt``) and a sidecar
    ``[ranges] TOKENS = "1..max_tokens"`` (default: the config's ``max_position_embeddings``;
    :func:`agentforge.torch.from_model.model_tasks` with ``prompt_ranges``, as ``campaign
    --from-model`` does by default). A region that cannot be written so (its program differs at the
    other lengths, e.g. two regions that are one program only where the prompt length equals the
    head dimension) stays literal. Returns the suite folder and {"tasks", "symbolic", "literal":
    [names], "tokens": "1..N"}."""
    from pathlib import Path

    from .torch.from_model import load_model_spec, model_tasks, write_suite

    if prompt < 1 or batch < 1:
        raise RangeError(f"--prompt-tokens {prompt} / --batch {batch}: give positive integers")
    m = load_model_spec(spec)
    if m.example_inputs is not None:
        raise RangeError(f"{spec}: a factory's model is captured at its example inputs only, so no prompt length "
                         f"varies\n  how to fix: give a Hugging Face config.json (a causal LM) instead")
    hi = max_tokens or getattr(getattr(m.module, "config", None), "max_position_embeddings", None) or prompt
    if hi < prompt:
        raise RangeError(f"--max-tokens {hi} is below the prompt length {prompt}")
    tasks = model_tasks(m, batch, [prompt], prompt_ranges=True, max_tokens=hi)
    folder = write_suite(tasks, Path(out) / "suite", m.name)
    symbolic = [t.name for t in tasks if t.ranges]
    return folder, {"tasks": len(tasks), "symbolic": len(symbolic), "literal": [t.name for t in tasks if not t.ranges],
                    "tokens": f"1..{hi}"}


# ---------------------------------------------------------------------- command line


def cmd_verify_ranges(args: argparse.Namespace) -> int:
    """``agentforge library verify-ranges LIB [--range NAME=LO..HI ...] [--only NAME] [--json]``."""
    from .library import Library
    from .verify import VerifyConfig

    lib = Library.open(args.path)
    overrides = parse_range_args(args.range)
    cfg = VerifyConfig(machine=lib.manifest.get("machine", "sn40l"),
                       seeds=tuple(range(args.seeds)) if args.seeds else VerifyConfig.seeds)

    def say(row: dict) -> None:
        if not args.json:
            mark = "ok  " if row["verified"] else "FAIL"
            print(f"{mark} {row['id']}  {', '.join(f'{k}={v}' for k, v in row['ranges'].items())}  "
                  f"{row['points']} points, {row['wall_seconds']:.1f} s", flush=True)
            for f in row["failed"]:
                print(f"       at {f['sizes']}: {f['reason']}")

    if args.workers < 1:
        raise RangeError(f"--workers {args.workers}: give a positive number of processes")
    rows = verify_library_ranges(lib, overrides, args.only, cfg, say, workers=args.workers)
    skipped = [r for r in rows if r["verified"] is None]
    if args.json:
        print(json.dumps({"kernels": rows}, indent=1))
    elif skipped:
        print(f"{len(skipped)} kernel(s) without a declared range (give --range NAME=LO..HI, or [ranges] in the "
              f"task's sidecar)")
    if not any(r["verified"] is not None for r in rows):
        raise RangeError(f"{lib.root}: no kernel has a declared range to verify\n  how to fix: give "
                         f"--range NAME=LO..HI for a size of its tasks, or a [ranges] table in their sidecars")
    return 0 if all(r["verified"] is not False for r in rows) else 1


def add_parser(sub: Any) -> None:
    """The ``verify-ranges`` subcommand (under ``agentforge library``, or standalone)."""
    p = sub.add_parser("verify-ranges", help="verify a library's kernels over declared size ranges",
                       description="Verify each kernel over a range per size (edges, ragged and interior points), "
                                   "time it there, and record it in the manifest: PyTorch dispatch then uses it at "
                                   "any size inside without verifying (docs/library.md).")
    p.add_argument("path", help="a library folder (a campaign's OUT/library)")
    p.add_argument("--range", action="append", metavar="NAME=LO..HI",
                   help="a size's range (repeatable); overrides the task sidecar's [ranges]")
    p.add_argument("--only", help="only the kernels of this id, op or task")
    p.add_argument("--seeds", type=int, default=None, help="seeds (input draws) per point (default: the verifier's)")
    p.add_argument("--workers", type=int, default=1, help="kernels verified at once, a process each (default 1)")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(func=cmd_verify_ranges)


def cmd_model_suite(args: argparse.Namespace) -> int:
    """``python -m agentforge.ranges model-suite SPEC --out OUT``: the symbolic suite, and what to run next."""
    folder, info = symbolic_model_suite(args.spec, args.out, args.prompt_tokens, args.batch, args.max_tokens)
    print(f"{folder}: {info['tasks']} tasks, {info['symbolic']} symbolic in TOKENS ({info['tokens']})"
          + (f", literal: {', '.join(info['literal'])}" if info["literal"] else ""))
    print(f"next: agentforge campaign {folder} --out {args.out}\n      "
          f"agentforge library verify-ranges {args.out}/library")
    return 0


def add_parsers(sub: Any) -> None:
    """Both subcommands, for ``python -m agentforge.ranges``."""
    add_parser(sub)
    p = sub.add_parser("model-suite", help="a model's campaign suite with tasks symbolic in the prompt length")
    p.add_argument("spec", help="a Hugging Face config.json of a causal LM")
    p.add_argument("--out", required=True, help="run folder: the suite goes to OUT/suite")
    p.add_argument("--prompt-tokens", type=int, default=16, help="the prompt length tasks are timed at (own size; P + 1 or P + 2 where two of the "
                        "model's programs would be one problem at P, e.g. P equal to the head dimension)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=None,
                   help="the top of the TOKENS range (default: the config's max_position_embeddings)")
    p.set_defaults(func=cmd_model_suite)


def main(argv: list[str] | None = None) -> int:
    from .command import standalone_main

    return standalone_main(add_parsers, argv)


if __name__ == "__main__":
    sys.exit(main())
