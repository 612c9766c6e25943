"""The referee's check sizes: where a candidate is checked so that what is checked is what is timed.

A candidate is configured at the task's own sizes, the sizes it is timed at (a kernel's free
tile sizes, a chain's tiles and ``par``). Its checks must run exactly that configuration with
every tiled axis spanning at least :data:`CHECK_MIN_TILES` tiles, at sizes small enough for the
interpreter's budget (``VerifyConfig.check_elements``). This module finds those sizes: from the
task's sidecar sets where they qualify, otherwise by scaling the own sizes down a ladder or
searching per size (a kernel on operand shapes predicted without capturing). No such sizes
within the budget: the candidate is :class:`Uncheckable`, never trusted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .binding import BindingError
from .capture import AtenGraph, capture_at
from .solution import KernelSolution
from .tasks import Task

if TYPE_CHECKING:
    from .verify import VerifyConfig

CHECK_MIN_TILES = 3
#: How far a size may go below its floor (:func:`_floors`) when the check sizes at the floors are past
#: the budget: a dimension a kernel covers whole still has several elements, and a check that small
#: is still a check, where the alternative is none (a batched GEMM's batch of 16 over the budget)
LAST_FLOOR = 2


class Uncheckable(Exception):
    """No check sizes within the budget run the candidate's timed configuration."""


def covers(timed: list[tuple], checked: list[tuple], min_tiles: int = CHECK_MIN_TILES) -> str | None:
    """Why programs ``checked`` (at check sizes) do not exercise the configuration ``timed`` (at
    the task's own sizes), or None when they do: the same kernels and operators with the same
    ``par`` and tiles, and every tiled axis at least ``min_tiles`` tiles long (as long as timed
    where that is shorter), so carries, cross-tile reductions and the last tile all run."""
    if len(timed) != len(checked):
        return f"{len(checked)} kernels at the check sizes but {len(timed)} timed"
    for k, ((ops_t, tiles_t, *_), (ops_c, tiles_c, *_)) in enumerate(zip(timed, checked)):
        if ops_t != ops_c:
            return f"kernel {k}: other operators or par at the check sizes"
        if len(tiles_t) != len(tiles_c):
            return f"kernel {k}: other tiled axes at the check sizes"
        for (i, ax, t, g), (i2, ax2, t2, g2) in zip(tiles_t, tiles_c):
            if (i, ax, t) != (i2, ax2, t2):
                return f"kernel {k}: operator {i} axis {ax} tiled {t2} at the check sizes, {t} timed"
            if g2 < min(min_tiles, g):
                return f"kernel {k}: operator {i} axis {ax} spans {g2} tile(s), needs {min(min_tiles, g)}"
    return None


def _elements(graph: AtenGraph) -> int:
    return sum(math.prod(s.shape or (1,)) for s in list(graph.inputs) + list(graph.params) + graph.output_specs)


@contextlib.contextmanager
def _quiet_probes():
    """Silence torch's fake-tensor dispatcher while probing sizes: a size the task refuses (a
    broadcast that needs two sizes equal, a group count that must divide the features) is an
    expected answer of the search, but torch logs each one at ERROR with a full traceback."""
    log = logging.getLogger("torch._subclasses.fake_tensor")
    old = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(old)


_SETS_CACHE: "dict[tuple, list[dict]]" = {}
_SHAPE_MODELS: "dict[tuple, _ShapeModel]" = {}


@dataclass
class _Shapes:
    """The operand and output shapes of a task at some sizes: all a kernel binding reads."""
    inputs: list
    params: list
    output_specs: list


class _ShapeModel:
    """A task's operand and output dimensions as monomials of its sizes, learned from captures.

    Each dimension is taken as ``own * prod((s / own_s) ** e)``, the exponents ``e`` read off one
    capture per size with that size doubled (or halved). Predicting is free, so the search for
    check sizes binds a kernel at hundreds of candidate sizes for the price of a few captures;
    the sizes it settles on are always confirmed on a real capture. A size whose effect is not a
    monomial (``SEQ + 1``), or that the task refuses to change, is not searched."""

    def __init__(self, task: Task):
        own = capture_at(task, meta=True)
        self.own_sizes = dict(task.sizes)
        self.specs = list(own.inputs) + list(own.params) + list(own.output_specs)
        self.n_in, self.n_par = len(own.inputs), len(own.params)
        self.exps: dict[str, list[tuple[int, ...]]] = {}
        for name, v in task.sizes.items():
            for probe in (v * 2, v // 2 if v % 2 == 0 else None):
                if not probe:
                    continue
                try:
                    with _quiet_probes():
                        g = capture_at(task, {name: probe}, meta=True)
                except Exception:  # noqa: BLE001 - the task refuses this size: try the other probe
                    continue
                got = list(g.inputs) + list(g.params) + list(g.output_specs)
                exps = self._exponents(got, v, probe)
                if exps is not None:
                    self.exps[name] = exps
                break

    def _exponents(self, got: list, v: int, probe: int) -> list[tuple[int, ...]] | None:
        if len(got) != len(self.specs):
            return None
        out = []
        for a, b in zip(self.specs, got):
            if len(a.shape) != len(b.shape):
                return None
            row = []
            for da, db in zip(a.shape, b.shape):
                if da == db:
                    row.append(0)
                    continue
                if da <= 0 or db <= 0:
                    return None
                e = round(math.log(db / da) / math.log(probe / v))
                if e == 0 or da * (probe / v) ** e != db:
                    return None
                row.append(e)
            out.append(tuple(row))
        return out

    def searchable(self) -> list[str]:
        return list(self.exps)

    def shapes(self, sizes: dict) -> _Shapes | None:
        specs = []
        for i, spec in enumerate(self.specs):
            dims = []
            for d, dim in enumerate(spec.shape):
                x = float(dim)
                for name, exps in self.exps.items():
                    e = exps[i][d]
                    if e:
                        x *= (sizes[name] / self.own_sizes[name]) ** e
                if x < 1 or abs(x - round(x)) > 1e-9:
                    return None
                dims.append(int(round(x)))
            specs.append(dataclasses.replace(spec, shape=tuple(dims)))
        return _Shapes(specs[: self.n_in], specs[self.n_in: self.n_in + self.n_par], specs[self.n_in + self.n_par:])


def _shape_model(task: Task) -> _ShapeModel:
    key = (str(task.path), hash(task.source))
    if key not in _SHAPE_MODELS:
        if len(_SHAPE_MODELS) > 64:
            _SHAPE_MODELS.clear()
        _SHAPE_MODELS[key] = _ShapeModel(task)
    return _SHAPE_MODELS[key]


def _candidates(v: int, floor: int) -> list[int]:
    """Values a size is tried at, ascending, from ``floor`` to below its own value ``v``:
    3 x 2^j (an odd number of tiles of any power-of-two tile that divides it) and v / 2^j."""
    out = {3 << j for j in range(62) if (3 << j) < v}
    out |= {v >> j for j in range(1, 62) if v % (1 << j) == 0}
    return sorted(c for c in out if c >= floor)


def _lowest(fits, cur: dict, cost, name: str, cands: list[int]) -> tuple[dict, tuple]:
    """``cur`` with size ``name`` lowered to the smallest of ``cands`` (ascending) at which ``fits``
    holds, by bisection (the candidates are ordered so that a larger one runs the configuration
    when a smaller one does); ``cur`` unchanged when none is found. Returns (sizes, cost)."""
    lo, hi = 0, len(cands)
    while lo < hi:
        mid = (lo + hi) // 2
        got = fits({**cur, name: cands[mid]})
        if got is not None:
            hi = mid
            cur, cost = {**cur, name: cands[mid]}, got
        else:
            lo = mid + 1
    return cur, cost


def _below_floors(fits, cfg: "VerifyConfig", cur: dict, cost, names: list[str]) -> tuple[dict, tuple]:
    """Sizes past the budget at their floors, lowered below them towards :data:`LAST_FLOOR`, as
    little as the budget allows: each size in turn (largest first) takes the largest value that
    brings the set within the budget, else the smallest that runs the configuration, and the next
    size goes on from there (an attention's batch and heads, 32 x 32 at their floors 4 x 4, both 2)."""
    for name in sorted(names, key=lambda k: -cur[k]):
        smallest = None
        for c in sorted(_candidates(cur[name], LAST_FLOOR), reverse=True):
            got = fits({**cur, name: c})
            if got is None:
                continue
            if _within(got, cfg):
                return {**cur, name: c}, got
            smallest = (c, got)
        if smallest is not None:
            cur, cost = {**cur, name: smallest[0]}, smallest[1]
    return cur, cost


def _primes_below(n: int) -> list[int]:
    sieve = bytearray([1]) * max(n, 2)
    sieve[:2] = b"\0\0"
    for i in range(2, int(n ** 0.5) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytearray(len(sieve[i * i::i]))
    return [i for i in range(n) if sieve[i]]


def _prime_factors(v: int) -> list[int]:
    out, p = [], 2
    while p * p <= v:
        while v % p == 0:
            out.append(p)
            v //= p
        p += 1
    return out + ([v] if v > 1 else [])


def _factor_families(v: int, floor: int, limit: int = 1 << 16) -> list[list[int]]:
    """Values for an odd size that the power-of-two candidates cannot lower: a kernel tiles such a
    size by one of its divisors (8205 = 15 x 547 by 15, 547 tiles). Each family replaces one distinct
    prime factor ``p`` of ``v`` by every smaller prime ``q`` (ascending): 15 x q keeps the tile 15
    once q is past the largest tile, q x 191 keeps the tile 191 with q tiles, so within a family the
    configuration runs from some q on and a bisection finds the smallest. Largest prime first (the
    largest reduction); none for a size without a prime factor above 3 or past ``limit``."""
    primes = sorted(set(_prime_factors(v)), reverse=True)
    out = []
    for p in primes:
        if p <= 3 or p > limit:
            continue
        fam = [v // p * q for q in _primes_below(p) if v // p * q >= floor]
        if fam:
            out.append(fam)
    return out


def _floors(task: Task) -> dict[str, int]:
    """How far the search may lower each size: the smallest value the task's sidecar uses for it
    (its author's idea of a small but meaningful size: a dimension a kernel covers whole never
    shrinks to 1), else 16 (or the size itself, if smaller)."""
    sets = task.resolved_size_sets()
    return {k: min([s[k] for s in sets] + [v]) if sets else min(v, 16) for k, v in task.sizes.items()}


def _scaled(task: Task, num: int, shift: int, floors: dict[str, int]) -> dict[str, int]:
    """Every size times num / 2^shift (never below its floor, never above its own value)."""
    out = {}
    for k, v in task.sizes.items():
        x = v * num / (1 << shift)
        out[k] = v if x >= v else max(floors[k], int(round(x)))
    return out


def _cost(elements: int, structures: list[tuple]) -> tuple[int, float, float]:
    """A check size set's cost: I/O elements, the largest stream's bytes, all streams' elements."""
    return elements, max((st[2] for st in structures), default=0.0), sum(st[3] for st in structures)


def _within(cost: tuple | None, cfg: "VerifyConfig") -> bool:
    """Whether a check size set of this cost (:func:`_cost`) fits the budget: ``cfg.check_elements``
    elements of inputs, weights and outputs, and streams within half the interpreter's caps on one
    array and on all elements made (the rest of the check, references and copies, must fit the
    memory cap too)."""
    if cost is None:
        return False
    cap = cfg.limits.max_array_bytes / 2 if cfg.limits.max_array_bytes else math.inf
    work = cfg.limits.max_elements / 2 if cfg.limits.max_elements else math.inf
    return cost[0] <= cfg.check_elements and cost[1] <= cap and cost[2] <= work


def _ladder(task: Task, fits, cfg: "VerifyConfig", floors: dict[str, int], sets: list[dict]) -> list[dict] | None:
    """Check sizes for a candidate that must be realised on a real capture at every probe (a chain):
    all sizes scaled together by 3 / 2^m (ratios such as a head dimension stay as timed), the
    smallest such set that runs the timed configuration found by bisection over m (a few captures
    instead of a search per size), then the same at 5 / 2^m. None when no scaled set is within
    the budget (the caller searches per size)."""
    top = 2
    while any(v * 3 / (1 << top) > floors[k] for k, v in task.sizes.items()) and top < 40:
        top += 1
    lo, hi, best = 2, top, None  # the largest m (smallest sizes) that runs the configuration
    while lo <= hi:
        mid = (lo + hi) // 2
        cand = _scaled(task, 3, mid, floors)
        cost = fits(cand)
        if cost is not None:
            best, lo = (mid, cand, cost), mid + 1
        else:
            hi = mid - 1
    if best is None or not _within(best[2], cfg):
        return None
    out = list(sets)
    if best[1] not in out:
        out.append(best[1])
    if len(out) < cfg.size_sets:
        five = _scaled(task, 5, best[0], floors)
        if five not in out and _within(fits(five), cfg):
            out.append(five)
    return out[: cfg.size_sets]


def check_size_sets(task: Task, fits, cfg: "VerifyConfig", what: str = "", names: list[str] | None = None,
                    confirm=None, ladder: bool = False) -> list[dict]:
    """The check sizes: up to ``cfg.size_sets`` size sets at which ``fits(sizes)`` holds (it
    returns the cost there, the elements of the task's inputs, weights and outputs and the
    largest stream's bytes, or None when the candidate's timed configuration does not run there,
    see :func:`covers`), each within the budget (:func:`_within`).

    The task's sidecar sets come first where they fit. The rest are derived from the task's own
    sizes (which run the configuration by construction: they are what is timed): each size of
    ``names`` in turn, largest first, is lowered to the smallest value that still runs it (a
    bisection over 3 x 2^j and v / 2^j, never below :func:`_floors`), then a second set takes
    5 x 2^j where the first took 3 x 2^j. ``confirm(sizes)`` (default ``fits``) must also hold
    for a derived set (the search may run on predicted shapes; confirmation runs on a real
    capture). With ``ladder`` (chains, whose every probe is a capture) all sizes are first
    scaled together (:func:`_ladder`). Raises :class:`Uncheckable` when no set is within the
    budget."""
    confirm = confirm or fits
    sets: list[dict] = []
    for s in task.resolved_size_sets():
        if _within(confirm(s), cfg):
            sets.append(s)
        if len(sets) >= cfg.size_sets:
            return sets
    floors = _floors(task)
    if ladder:
        found = _ladder(task, fits, cfg, floors, sets)
        if found:
            return found
    cur = dict(task.sizes)
    cost = fits(cur)
    if cost is None:
        raise Uncheckable(f"{what}does not run its own configuration at the task's own sizes {cur}")
    for name in sorted(names if names is not None else cur, key=lambda k: -cur[k]):
        own = cur[name]
        cur, cost = _lowest(fits, cur, cost, name, _candidates(own, floors[name]))
        if cur[name] == own:  # an odd size (8205 = 15 x 547) tiled by a divisor: keep the tile, fewer tiles
            for family in _factor_families(own, floors[name]):
                cur, cost = _lowest(fits, cur, cost, name, family)
                if cur[name] != own:
                    break
    if not _within(cost, cfg):  # past the budget at the floors: lower what the floors kept (a bmm's batch)
        cur, cost = _below_floors(fits, cfg, cur, cost, names if names is not None else list(cur))
    if not _within(cost, cfg):
        raise Uncheckable(f"{what}cannot be checked within the size budget: the smallest sizes that run its "
                          f"timed configuration with every tiled dimension {cfg.min_tiles} tiles long are {cur} "
                          f"({cost[0]} elements of inputs, weights and outputs, a largest stream of "
                          f"{cost[1]:.3g} bytes, {cost[2]:.3g} stream elements in all; the budget is "
                          f"{cfg.check_elements} elements, VerifyConfig.check_elements, and half the "
                          f"interpreter's caps of {cfg.limits.max_array_bytes} bytes per array and "
                          f"{cfg.limits.max_elements} elements)")
    if cur not in sets and (confirm is fits or _within(confirm(cur), cfg)):
        sets.append(cur)
    if len(sets) < cfg.size_sets:
        five = {k: (v // 3) * 5 if v % 3 == 0 and v < task.sizes[k] and (v // 3) & (v // 3 - 1) == 0 else v
                for k, v in cur.items()}
        if five != cur and five not in sets and _within(fits(five), cfg) \
                and (confirm is fits or _within(confirm(five), cfg)):
            sets.append(five)
    if not sets:
        raise Uncheckable(f"{what}has no check sizes that run its timed configuration (derived {cur} did not "
                          "hold on the captured task)")
    return sets[: cfg.size_sets]


def configured_sets(task: Task, cand, cfg: "VerifyConfig", key) -> list[dict]:
    """Bind ``cand`` at the task's own sizes (fixing its configuration) and find its check sizes."""
    own = capture_at(task, meta=True)
    timed = cand.configure(own)

    def real(sizes: dict) -> tuple | None:
        try:
            with _quiet_probes():
                g = capture_at(task, sizes, meta=True)
            pairs = cand.structures(g)
        except Exception:  # noqa: BLE001 - a size the task, the binding or a template refuses does not fit
            return None
        got = [st for _, st in pairs]
        # the baseline (the bar itself) and a plan's one-op regions are trusted per-op lowerings whose
        # tiles follow each graph: checked at small sizes they run at (the sidecar's, or derived), not
        # held to the timed tiles; every kernel still counts towards the size budget
        held = [st for trusted, st in pairs if not trusted]
        return _cost(_elements(g), got) if covers(timed, held, cfg.min_tiles) is None else None

    # the task's own sizes and sidecar sets belong to the key: a task replaced with other sets (a test
    # library, a caller checking other sizes) must not be given the sets found for the original
    ck = (str(task.path), hash(task.source), json.dumps(task.sizes, sort_keys=True),
          json.dumps(task.resolved_size_sets(), sort_keys=True), key, cfg.machine, cfg.size_sets,
          cfg.check_elements, cfg.min_tiles)
    if ck in _SETS_CACHE:
        return [dict(s) for s in _SETS_CACHE[ck]]
    if cand.binds_on_shapes:  # a kernel binds on shapes alone: search on predicted shapes
        model = _shape_model(task)

        def predicted(sizes: dict) -> int | None:
            shapes = model.shapes(sizes)
            if shapes is None:
                return None
            try:
                got = cand.predicted_structure(shapes)
            except Exception:  # noqa: BLE001 - the binding refuses these sizes
                return None
            return _cost(_elements(shapes), got) if covers(timed, got, cfg.min_tiles) is None else None

        try:
            try:
                sets = check_size_sets(task, predicted, cfg, "the kernel ", model.searchable(), confirm=real)
            except Uncheckable as e:
                if "budget" in str(e):
                    raise
                sets = check_size_sets(task, real, cfg, "the kernel ")
        except Uncheckable:
            _interface_at_small_sizes(task, cand)
            raise
    else:
        sets = check_size_sets(task, real, cfg, "the candidate ", ladder=True)
    if len(_SETS_CACHE) > 256:
        _SETS_CACHE.clear()
    _SETS_CACHE[ck] = sets
    return [dict(s) for s in sets]


def _interface_at_small_sizes(task: Task, cand: KernelSolution) -> None:
    """Raise what is wrong with ``cand`` at the task's first small size set whatever its tile sizes
    (a kernel that binds only at the task's own sizes, e.g. with its sizes written as numbers or
    its parameters swapped on a square task): that, not the size budget, is why it is rejected."""
    small = (task.resolved_size_sets() or [{k: min(v, 16) for k, v in task.sizes.items()}])[0]
    try:
        graph = capture_at(task, small, meta=True)
    except Exception:  # noqa: BLE001 - the task's own problem is reported elsewhere
        return
    try:
        cand.check_interface(graph)
    except BindingError as e:
        raise BindingError(f"{e} [at sizes {small}]", getattr(e, "code", "interface")) from None


__all__ = ["CHECK_MIN_TILES", "Uncheckable", "covers", "check_size_sets", "configured_sets"]
