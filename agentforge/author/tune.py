"""The tuner: each region's parameters searched against the timing model at the task's own sizes
(timing only, no data), and :func:`author_plan`, the offline planner (partition, then tune).

A template's grid and minimum tries are its own (:mod:`agentforge.author.templates`); this module
decides how the budget is spent: a small grid whole, a large one by coordinate descent, around
experience priors where there are some, and a fused region only where it beats its ops apart.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import asp_lang
from asp_lang import Machine

from ..capture import AtenGraph
from ..lowering import MM_TILE, OpKernel, UnsupportedOpError, aten_name, divisor_at_most
from .partition import common_partition
from .plan import Plan, Region
from .realize import GraphIndex, graph_index, realize, region_kernel
from .templates import GRIDS, MIN_TRIES, WHOLE_GRID
from .templates.decoder import decoder_matches

# the referee checks a plan at sizes where every tiled axis is 3 tiles long, within a budget of input,
# weight and output elements (agentforge.verify.VerifyConfig.check_elements, 2^23; docs/evaluation.md
# 2.1); a plan past it is 'uncheckable' and its tiles get halved blindly. The tuner keeps each matmul
# region's share of that budget instead, so it picks the best tiles that can be checked
CHECK_ELEMENTS = 1 << 23
LAYER_TILE_CAP = 256   # tm / tn of a plan with several matmul regions (see tune)


def mm_check_elements(region: Region, graph: AtenGraph, idx: "GraphIndex") -> int | None:
    """The elements of A, B and C a matmul region's tiles need at their smallest check sizes (each
    tiled axis 3 tiles long, or as long as at the task's own sizes), or None if it has no matmul."""
    mm = next((idx.sem[i] for i in region.nodes if aten_name(idx.sem[i].target) in ("mm", "addmm", "bmm")), None)
    if mm is None:
        return None
    a, b = (mm.args[1], mm.args[2]) if aten_name(mm.target) == "addmm" else (mm.args[0], mm.args[1])
    sa, sb = graph.spec(a).shape, graph.spec(b).shape
    M, K, N = sa[-2], sa[-1], sb[-1]
    bt = min(sa[0], 4) if len(sa) == 3 else 1    # a batch axis of tile 1 shrinks to the sidecar's few
    p = region.params

    def dim(n: int, key: str) -> int:
        t = divisor_at_most(n, int(p.get(key, MM_TILE)))
        return t * min(3, n // t)
    m, k, n = dim(M, "tm"), dim(K, "tk"), dim(N, "tn")
    return bt * (m * k + k * n + m * n)
PRIOR_RADIUS = 1   # with priors, only parameter sets differing from them in at most this many places


@dataclass
class Tuned:
    """A tuned plan, its simulated seconds at the task's own sizes and what the search spent."""
    plan: Plan
    seconds: float
    kernels: int
    configs_tried: int
    #: per searched region: (template, best seconds after each timing evaluation)
    curves: list = field(default_factory=list)


def tune(plan: Plan, graph_own: AtenGraph, machine: Machine, priors: dict | None = None,
         budget: int = 400) -> Tuned:
    """Search each region's parameters against the timing model at the task's own sizes."""
    priors = priors or {}
    idx = graph_index(graph_own)
    tried = 0
    regions = []
    per_region = max(1, budget // max(1, len(plan.regions)))
    curves: list = []
    # the check budget shared by the matmul regions (a matmul region holds most of its weights)
    n_mm = sum(r.template == "matmul" for r in plan.regions)
    share = CHECK_ELEMENTS / max(1, n_mm)
    # a layer's matmuls share its sizes: a 512 tile on 3 x HIDDEN (a fused QKV) needs HIDDEN a multiple
    # of 512 at every check size, past the budget; layers keep the tiles that check (<= 256)
    cap = LAYER_TILE_CAP if n_mm > 1 else None
    for ri, region in enumerate(plan.regions):
        limit = max(per_region, MIN_TRIES.get(region.template, 0))
        best, n = best_params(region, graph_own, machine, idx, priors, limit, curves, share, cap)
        tried += n
        if region.template not in ("single", "decoder"):   # a whole layer is weighed against the greedy plan
            # fusing must pay: compare with the same ops as separate kernels (+ reconfigurations)
            singles = [best_params(Region("single", [i]), graph_own, machine, idx, priors, 8) for i in region.nodes]
            tried += sum(k for _, k in singles)
            if all(b is not None for b, _ in singles):
                split_secs = sum(b[0] for b, _ in singles) + \
                    (len(singles) - 1) * machine.reconfig.cycles / (machine.clock_ghz * 1e9)
                if best is None or split_secs < best[0]:
                    regions.extend(Region("single", [i], b[1]) for i, (b, _) in zip(region.nodes, singles))
                    continue
        if best is None:
            raise UnsupportedOpError(f"no parameters fit region {ri} ({region.template}) on {machine.name}")
        regions.append(Region(region.template, list(region.nodes), best[1]))
    tuned = Plan(regions, notes=plan.notes)
    chain = realize(tuned, graph_own, machine)
    return Tuned(tuned, chain.time().seconds, len(chain.kernels), tried, curves)


def best_params(region: Region, graph: AtenGraph, machine: Machine, idx: GraphIndex, priors: dict, limit: int,
                 curves: list | None = None, check_budget: float | None = None, tile_cap: int | None = None):
    """(seconds, params) of the fastest parameters for one region alone, and how many were tried.

    A grid no larger than ``limit`` is enumerated whole (with priors: only their neighbourhood,
    ``PRIOR_RADIUS``). A larger one is searched by coordinate descent from the priors (else from
    each key's first value): every value of one key at a time, moving to the best point found,
    round after round until a round finds nothing better or ``limit`` evaluations are spent. The
    search keeps going after the first win; the best time after each evaluation (the search
    curve) is appended to ``curves`` as (template, [seconds...]). With ``check_budget`` a matmul
    region's tiles whose check sizes need more elements (``mm_check_elements``) are not tried."""
    grid = GRIDS[region.template]
    prior = {k: v for k, v in dict(priors.get(region.template, {})).items() if k in grid}
    seen: dict[tuple, float | None] = {}
    curve: list[float] = []

    def secs_of(params: dict) -> float | None:
        key = tuple(params[k] for k in grid)
        if key not in seen and region.template == "matmul" and (
                check_budget is not None and
                (mm_check_elements(Region("matmul", region.nodes, params), graph, idx) or 0) > check_budget
                or tile_cap is not None and max(params.get("tm", 0), params.get("tn", 0)) > tile_cap):
            seen[key] = None   # uncheckable tiles: refused without timing them
            return None
        if key not in seen:
            try:
                seen[key] = _region_seconds(Region(region.template, list(region.nodes), params), graph, machine, idx)
            except (asp_lang.AspError, UnsupportedOpError, ValueError):
                seen[key] = None
            ok = [v for v in seen.values() if v is not None]
            curve.append(min(ok) if ok else math.inf)
        return seen[key]

    def fitted(params: dict) -> float | None:
        """Seconds of ``params``, else of the same point with the next smaller ``par`` values
        that fit (a larger tile or held operand takes PMUs the accum copies had)."""
        secs = secs_of(params)
        lower = [v for v in grid.get("par", ()) if v < params.get("par", 0)]
        for v in sorted(lower, reverse=True)[:3]:
            if secs is not None and secs != math.inf or len(seen) >= limit:
                break
            secs = secs_of({**params, "par": v})
        return secs

    size = math.prod(len(v) for v in grid.values())
    if region.template in WHOLE_GRID or size <= max(1, limit):
        cands = _grid_order(grid, prior)
        if prior:
            # experience says where good parameters are: search their neighbourhood only
            cands = [c for c in cands if sum(c[k] != prior.get(k, c[k]) for k in grid) <= PRIOR_RADIUS]
        for params in cands[:max(1, limit)]:
            secs_of(params)
    else:
        cur = {k: prior.get(k, vals[0]) for k, vals in grid.items()}
        secs_of(cur)
        while len(seen) < limit:
            before = _best_seen(seen, grid)
            for k, vals in grid.items():
                base = _best_seen(seen, grid)
                point = dict(base[1]) if base else dict(cur)
                for v in vals:
                    if len(seen) >= limit:
                        break
                    fitted({**point, k: v})
            after = _best_seen(seen, grid)
            if after is None or after[0] == math.inf or (before is not None and after[0] >= before[0]):
                break
        best = _best_seen(seen, grid)
        if best is None or best[0] == math.inf:
            # nothing near the start fits (a small machine): enumerate from the grid's start
            for params in _grid_order(grid, prior)[:max(1, limit)]:
                secs_of(params)
    if curves is not None:
        curves.append((region.template, curve))
    return _best_seen(seen, grid), len(seen)


def _best_seen(seen: dict, grid: dict):
    """The fastest (seconds, params) evaluated; a region that only runs in several sections (inf)
    is still returned when nothing better fits, so tune can weigh it against split kernels."""
    ok = [(v, dict(zip(grid, k))) for k, v in seen.items() if v is not None]
    return min(ok, key=lambda t: t[0]) if ok else None


def _grid_order(grid: dict, start: dict) -> list[dict]:
    keys = list(grid)
    combos = [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]
    if start:
        combos.sort(key=lambda c: sum(c[k] != start.get(k, c[k]) for k in keys))
    return combos


def _region_seconds(region: Region, graph: AtenGraph, machine: Machine, idx: GraphIndex) -> float:
    """One region's kernel, alone, timed at the graph's sizes (inf if it needs sections)."""
    nodes = [idx.sem[i] for i in region.nodes]
    owner = {n.name: 0 for n in nodes}
    built = region_kernel(region, nodes, graph, idx.fixed, owner, 0, idx.consumers, idx.outputs)
    kernels = [k for k in (built if isinstance(built, list) else [built]) if isinstance(k, OpKernel)]
    secs = 0.0
    for k in kernels:   # a region of several kernels: each one, and a reconfiguration between them
        prog = asp_lang.compile(k.source, machine, filename="region.asp")
        if len(prog.sections) > 1:
            return math.inf
        secs += asp_lang.profile(prog).seconds
    return secs + max(0, len(kernels) - 1) * machine.reconfig.cycles / (machine.clock_ghz * 1e9)


def author_plan(graph_own: AtenGraph, machine: Machine, priors: dict | None = None,
                graphs_small: list[AtenGraph] = ()) -> Tuned:
    """The offline planner: regions valid at every size, parameters from the timing model."""
    graphs = [graph_own, *graphs_small]
    plan = Plan(common_partition(graphs), notes="offline: greedy row/matmul fusion, tuned on the timing model")
    tuned = tune(plan, graph_own, machine, priors)
    dropped = {t for t in ("attention", "moe", "experts") if any(r.template == t for r in plan.regions)
               and not any(r.template == t for r in tuned.plan.regions)}
    if dropped:
        # no attention (or moe) kernel fits or pays on this machine: the ops fall back to single
        # kernels in tune; the greedy row/matmul regions over the same ops may do better
        routed = not dropped & {"moe", "experts"}   # the moe flag covers both expert templates
        alt = tune(Plan(common_partition(graphs, attention="attention" not in dropped, moe=routed),
                        notes=plan.notes), graph_own, machine, priors)
        tried = tuned.configs_tried + alt.configs_tried
        tuned = alt if alt.seconds < tuned.seconds else tuned
        tuned.configs_tried = tried
    layer = whole_layer(graphs)
    if layer is not None:
        # a decoder layer at decode, found whole at every size: its one kernel against the greedy
        # plan, the faster kept (the timing model decides, as for every other fusion)
        try:
            one = tune(Plan([layer], notes="offline: the whole decoder layer at decode as one kernel"), graph_own,
                       machine, priors)
        except UnsupportedOpError:   # no tiles fit this machine in one kernel: the greedy plan stands
            one = None
        if one is not None:
            tried = tuned.configs_tried + one.configs_tried
            tuned = one if one.seconds < tuned.seconds else tuned
            tuned.configs_tried = tried
    return tuned


def whole_layer(graphs: list[AtenGraph]) -> Region | None:
    """The region of a decoder layer at decode (the ``decoder`` template) covering every graph's
    same nodes, or None when a graph is no such layer."""
    found = [decoder_matches(g) for g in graphs]
    if not all(found) or any(f[0].nodes != found[0][0].nodes for f in found):
        return None
    return Region("decoder", list(found[0][0].nodes))
