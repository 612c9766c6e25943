"""Verification and scoring: whether a candidate counts, and how good it is.

A candidate (one ASP kernel, a fusion plan, or the op-by-op baseline chain) is first bound at
the task's own sizes, the sizes it is timed at: that fixes its configuration (a kernel's free
tile sizes, a chain's tiles and ``par``). It is then run on every check: 2 check size sets x 3
seeds, each seed with its own input distribution (normal, heavy-tailed Student-t, uniform),
plus one check per distribution targeting the task's op classes (a maximum in the last tile,
large offsets, near-ties, zeros). Check sizes run exactly the timed configuration, with every
tiled dimension spanning at least 3 tiles (:mod:`agentforge.check_sizes`); a candidate that cannot
be checked that way within the size budget is rejected (``uncheckable``). Each run is compared
with the task computed in float64 from the same inputs. It counts only if every check passes:

- shapes and dtypes exactly as the task's outputs (no lower precision);
- values within dtype-aware tolerances: |c - r| <= atol * max(1, max|r|) + rtol * |r|;
- NaN and +-Inf at exactly the reference's positions (outputs start poisoned with NaN, so
  an unwritten element is caught);
- the indices of an unstable sort (``aten.sort``/``argsort`` without ``stable=True``), whose tie
  order torch leaves unspecified (its CPU sort orders the ties of rows over 16 elements its own
  way), up to ties only: a permutation along the sorted dim that gathers the sorted values; a
  top-k's indices likewise (its contract leaves ties unordered too, and a float32 kernel may order
  two values that tie within float32 otherwise than the float64 reference): distinct indices along
  the dim that gather the reference's top-k values (as a set where ``sorted=False``);
- not constant or all-zero where the reference is not;
- inputs unmodified.

Then it is timed at the task's own sizes (timing-only, no data) and scored against the
baseline. ``evaluate`` does this in-process; :class:`Evaluator` does it in a child process
with a time limit and a memory cap, so a pathological kernel cannot take the caller down.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import asp_lang
from asp_lang import AspError
from asp_lang.timing import EmulatorError

from .binding import BindingError
from .bridge import to_numpy
from .check_sizes import CHECK_MIN_TILES, Uncheckable, configured_sets
from .capture import AtenGraph, capture, capture_at, io_bytes
from .errors import AgentforgeError
from .lowering import UnsupportedOpError
from .solution import baseline_solution, solution
from .tasks import Task, instantiate, load_task, make_inputs

SCHEMA_VERSION = 1
DISTRIBUTIONS = ("normal", "heavy", "uniform")
DEFAULT_TOLERANCE = {"f32": (1e-4, 1e-4), "bf16": (2e-2, 2e-2), "f16": (1e-3, 1e-3)}
SUSPICIOUS_SPEEDUP = 10.0


@dataclass(frozen=True)
class VerifyConfig:
    machine: str = "sn40l"
    seeds: tuple[int, ...] = (0, 1, 2)
    size_sets: int = 2
    timeout_s: float = 120.0
    memory_mb: int = 4096
    limits: asp_lang.Limits = asp_lang.Limits(max_elements=1 << 28, max_steps=1 << 18, max_array_bytes=1 << 30)
    #: largest check: elements of the task's inputs, weights and outputs at a check size set
    check_elements: int = 1 << 23
    #: every dimension a candidate tiles spans at least this many tiles at check sizes
    #: (or as many as at the task's own sizes, where that is fewer)
    min_tiles: int = CHECK_MIN_TILES

    def checks(self, task: Task, sets: list[dict] | None = None,
               extra: tuple[str, ...] = ()) -> list[tuple[dict, int, str]]:
        """Every size set x every seed (seed i draws DISTRIBUTIONS[i]), then one check per extra
        distribution: those the task asks for (e.g. "large" inputs where overflow is the trap)
        and ``extra`` (targeted at the task's op classes, :func:`targeted_distributions`).

        ``sets`` are the check sizes (:func:`agentforge.check_sizes.check_size_sets`); without them, the task's sidecar
        sets (or its own sizes). The seed schedule is fixed: seed ``i`` of ``seeds`` for the
        i-th check of a size set, ``max(seeds) + 1 + j`` for the j-th extra distribution, so a
        failing check reproduces from its (sizes, seed, distribution) alone."""
        sets = sets or task.resolved_size_sets()[: self.size_sets] or [task.sizes]
        plan = [(s, seed, DISTRIBUTIONS[i % len(DISTRIBUTIONS)]) for s in sets for i, seed in enumerate(self.seeds)]
        extra_seed = max(self.seeds, default=0) + 1
        wanted = [d for d in dict.fromkeys(tuple(task.distributions) + tuple(extra)) if d not in DISTRIBUTIONS]
        plan += [(sets[0], extra_seed + j, d) for j, d in enumerate(wanted)]
        return plan


@dataclass
class Check:
    sizes: dict
    seed: int
    distribution: str
    passed: bool
    reason: str | None = None
    code: str | None = None
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    seconds: float = 0.0


@dataclass
class Evaluation:
    """One candidate's verdict and score: the documented JSON schema (docs/evaluation.md)."""
    task: str
    candidate: str
    verified: bool
    reason: str | None
    reason_code: str | None = None
    simulated_seconds: float | None = None
    baseline_seconds: float | None = None
    speedup: float | None = None
    roofline_fraction: float | None = None
    hbm_bytes: float | None = None
    flops: float | None = None
    bottleneck: str | None = None
    machine: str = ""
    emulator: str = asp_lang.EMULATOR_VERSION
    own_sizes: dict = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    #: the configuration that was checked and timed: a kernel's free sizes (tile sizes) as bound
    #: at the task's own sizes, identical in every check
    bound_sizes: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    kernel_sha256: str | None = None
    error: dict | None = None
    eval_seconds: float = 0.0
    schema_version: int = SCHEMA_VERSION
    #: where the time goes (for feedback): sections, units, per-operator cycles (a kernel) or
    #: per-kernel time (a plan's chain); see profile_summary
    profile: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Evaluation":
        d = dict(d)
        d["checks"] = [Check(**c) for c in d.get("checks", [])]
        return Evaluation(**d)


# ------------------------------------------------------------------ comparison

class Mismatch(Exception):
    """A check failed; ``code`` classifies why (see REASON_CODES)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


#: Why a candidate was rejected. Stable strings: reports and tests key on them.
REASON_CODES = {
    "shape": "an output has the wrong shape",
    "dtype": "an output or parameter has the wrong dtype (e.g. lower precision than the task)",
    "mismatch": "values outside the tolerance",
    "nonfinite": "NaN/Inf where the reference has none, or the reverse (incl. unwritten outputs)",
    "constant": "a constant output where the reference varies",
    "inputs_modified": "the candidate changed its inputs",
    "interface": "the kernel's parameters/results do not fit the task",
    "compile": "the kernel does not parse or check",
    "runtime": "the kernel failed while running (routing, inputs)",
    "limit": "the kernel exceeded the interpreter's work limits",
    "unsupported": "the baseline cannot lower an op of the task",
    "timeout": "the evaluation exceeded its time limit",
    "memory": "the evaluation exceeded its memory cap",
    "crash": "the evaluation process died",
    "emulator_bug": "the timing model contradicted itself (beat the roofline)",
    "uncheckable": "no check sizes within the size budget run the timed configuration (tiles, par)",
    "task": "the task itself is broken",
}


def check_output(out: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> tuple[float, float]:
    """Raise :class:`Mismatch` unless ``out`` matches ``ref``; return the max abs/rel errors."""
    if tuple(out.shape) != tuple(ref.shape):
        raise Mismatch("shape", f"shape {list(out.shape)} but the reference is {list(ref.shape)}")
    if not ref.dtype.is_floating_point:
        if out.dtype != ref.dtype:
            raise Mismatch("dtype", f"dtype {out.dtype} but the reference is {ref.dtype}")
        wrong = (out != ref)
        if wrong.any():
            idx = tuple(int(i) for i in wrong.nonzero()[0])
            raise Mismatch("mismatch", f"{int(wrong.sum())} of {out.numel()} values differ (first at {list(idx)}: "
                                       f"{out[idx].item()} vs {ref[idx].item()})")
        return 0.0, 0.0
    o = out.double()
    r = ref.double()
    for name, f in (("NaN", torch.isnan), ("+Inf", torch.isposinf), ("-Inf", torch.isneginf)):
        mo, mr = f(o), f(r)
        if not torch.equal(mo, mr):
            where = (mo != mr).nonzero()[0].tolist()
            extra = " (an output never written?)" if name == "NaN" and bool(mo[tuple(where)]) else ""
            raise Mismatch("nonfinite", f"{name} positions differ from the reference (first at {where}){extra}")
    finite = torch.isfinite(r)
    if not finite.any():
        return 0.0, 0.0
    of, rf = o[finite], r[finite]
    err = (of - rf).abs()
    scale = max(1.0, rf.abs().max().item())
    bound = atol * scale + rtol * rf.abs()
    max_abs = err.max().item()
    max_rel = (err / rf.abs().clamp_min(1e-30)).max().item()
    if rf.numel() > 1 and (rf.max() - rf.min()).item() > 1e-6 * scale and (of.max() - of.min()).item() == 0:
        raise Mismatch("constant", f"output is constant ({of[0].item():.6g}) where the reference varies")
    if (err > bound).any():
        i = int((err - bound).argmax())
        where = finite.nonzero()[i].tolist()
        bad = int((err > bound).sum())
        first = finite.nonzero()[int((err > bound).nonzero()[0])].tolist()
        raise Mismatch("mismatch", f"values differ: max abs error {max_abs:.3g} (at index {where}: value "
                                   f"{rf[i].item():.6g}, got {of[i].item():.6g}); {bad} of {rf.numel()} values "
                                   f"outside the tolerance, the first at index {first}; allowed {atol:g} * "
                                   f"{scale:.3g} + {rtol:g} * |ref|")
    return max_abs, max_rel


# ------------------------------------------------------------------ unstable sorts
#
# An unstable sort's contract says nothing about the order of equal values, and torch's CPU sort
# (std::sort) does order the ties of rows over 16 elements in a way of its own: the reference's
# indices are then not a function of the input, and a kernel that sorts stably (the baseline) or
# any other correct way would fail an exact comparison. Such an output is checked for what the op
# promises instead: a permutation along the sorted dim that gathers the reference's sorted values.
# Its input is the value the reference sorted, recorded while the reference runs.

_SORTS = frozenset({"aten.sort.default", "aten.sort.stable", "aten.argsort.default", "aten.argsort.stable",
                    "aten.topk.default"})
#: ops an indices output may pass through unchanged (torch.export adds copies depending on layout)
_SAME_VALUE = frozenset({"clone", "alias", "detach", "lift_fresh_copy"})


@dataclass(frozen=True)
class UnstableSort:
    """Where an output of a captured graph is the indices of an unstable sort."""
    node: str           #: the sort (or argsort) node
    dim: int            #: the sorted dim, as the op was called (may be negative)
    descending: bool
    input_dtype: str    #: dtype of the sorted tensor: sets the tolerance of the gathered values
    rank: int           #: position among the graph's unstable sorts (eager order matches it)
    ordered: bool = True    #: whether the indices are in order of their values (not a topk(sorted=False))


def _sort_call(target: str, args: tuple, kwargs: dict) -> tuple[bool, int, bool] | None:
    """(stable, dim, descending) of a sort/argsort call in ATen's argument layout, or None for
    another op. ``.default`` takes dim and descending positionally; ``.stable`` takes all three as
    keywords; a ``stable`` of None or False leaves the ties unordered. A ``topk(self, k, dim,
    largest, sorted)`` is an unstable sort whose "descending" is ``largest``."""
    if target not in _SORTS:
        return None
    if target == "aten.topk.default":
        dim = args[2] if len(args) > 2 else kwargs.get("dim", -1)
        largest = args[3] if len(args) > 3 else kwargs.get("largest", True)
        return False, int(dim), bool(largest)
    dim = args[1] if len(args) > 1 else kwargs.get("dim", -1)
    descending = args[2] if len(args) > 2 else kwargs.get("descending", False)
    return bool(kwargs.get("stable")), int(dim), bool(descending)


def unstable_sort_indices(graph: AtenGraph) -> dict[int, UnstableSort]:
    """Output index -> the unstable sort whose indices it is (``getitem(sort, 1)`` or an unstable
    argsort, through copies). Any other output, a stable sort's indices included, is absent and
    is compared exactly."""
    producer: dict[str, Any] = {n.name: n for n in graph.nodes}
    ranks: dict[str, int] = {}
    for n in graph.nodes:
        call = _sort_call(n.target, n.args, n.kwargs)
        if call is not None and not call[0]:
            ranks[n.name] = len(ranks)
    found: dict[int, UnstableSort] = {}
    for i, out in enumerate(graph.outputs):
        n = producer.get(out.name)
        while n is not None and n.target.startswith("aten.") and n.target.split(".")[1] in _SAME_VALUE and n.refs():
            n = producer.get(n.refs()[0].name)
        if n is None:
            continue
        if n.target == "getitem" and n.args[1] == 1 and n.args[0].name in producer \
                and producer[n.args[0].name].target.startswith(("aten.sort.", "aten.topk.")):
            n = producer[n.args[0].name]
        elif not n.target.startswith("aten.argsort."):
            continue
        if n.name not in ranks:
            continue
        _, dim, descending = _sort_call(n.target, n.args, n.kwargs)
        sorted_spec = graph.spec_table.get(n.refs()[0].name) if n.refs() else None
        ordered = not (n.target == "aten.topk.default" and not _topk_sorted(n.args, n.kwargs))
        found[i] = UnstableSort(n.name, dim, descending, sorted_spec.dtype if sorted_spec else "", ranks[n.name],
                                ordered)
    return found


def _topk_sorted(args: tuple, kwargs: dict) -> bool:
    return bool(args[4] if len(args) > 4 else kwargs.get("sorted", True))


@dataclass
class _SortCall:
    """One unstable sort the reference ran: what it sorted and the indices it returned."""
    input: torch.Tensor
    indices: torch.Tensor
    dim: int
    descending: bool
    ordered: bool = True


class _SortRecorder(TorchDispatchMode):
    """Records every unstable sort (and argsort) the reference runs, in order; changes nothing."""

    def __init__(self, calls: list[_SortCall]):
        super().__init__()
        self.calls = calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        call = _sort_call(str(func), args, kwargs)
        if call is not None and not call[0] and isinstance(args[0], torch.Tensor):
            indices = out[1] if isinstance(out, (tuple, list)) else out
            ordered = str(func) != "aten.topk.default" or _topk_sorted(args, kwargs)
            self.calls.append(_SortCall(args[0].detach().clone(), indices, call[1], call[2], ordered))
        return out


def _match_sorts(unstable: dict[int, UnstableSort], calls: list[_SortCall],
                 refs: list[torch.Tensor]) -> dict[int, tuple[_SortCall, str]]:
    """Output index -> (the recorded sort that produced it, the sorted tensor's dtype) for each
    output the graph says is an unstable sort's indices and that a recorded call explains."""
    found: dict[int, tuple[_SortCall, str]] = {}
    for i, where in unstable.items():
        call = _recorded_sort(calls, refs[i], where) if i < len(refs) else None
        if call is not None:
            found[i] = (call, where.input_dtype)
    return found


def _recorded_sort(calls: list[_SortCall], ref: torch.Tensor, where: UnstableSort) -> _SortCall | None:
    """The recorded sort that produced the reference output ``ref``: the very tensor, else one
    whose indices equal it (a copy) with the graph node's dim and direction, preferring the one at
    the node's place in order. None when nothing fits: the output is then compared exactly."""
    same = [c for c in calls if c.indices is ref]
    if same:
        return same[0]
    fits = [c for c in calls if c.indices.shape == ref.shape and c.dim == where.dim
            and c.descending == where.descending and c.ordered == where.ordered and torch.equal(c.indices, ref)]
    if where.rank < len(calls) and any(c is calls[where.rank] for c in fits):
        return calls[where.rank]
    return fits[0] if fits else None


def check_sort_indices(out: torch.Tensor, ref: torch.Tensor, sorted_input: torch.Tensor, dim: int,
                       atol: float, rtol: float, ordered: bool = True) -> tuple[float, float]:
    """Raise :class:`Mismatch` unless ``out`` is a valid answer for the indices of an unstable sort
    (or a top-k: ``ref`` then has k entries along ``dim``) of ``sorted_input`` along ``dim`` whose
    reference answer is ``ref``: indices in 0..n-1, distinct along ``dim`` in every row (all n of
    them, a permutation, for a sort), that gather the same values as ``ref`` (exactly for integers,
    within atol/rtol for floats; as sets where not ``ordered``). Any order of equal values passes;
    nothing else does. Returns the max abs/rel errors of the gathered values."""
    if tuple(out.shape) != tuple(ref.shape):
        raise Mismatch("shape", f"shape {list(out.shape)} but the reference is {list(ref.shape)}")
    if sorted_input.dim() == 0 or sorted_input.dim() != ref.dim():
        return check_output(out, ref, atol, rtol)
    dim = dim % sorted_input.dim()
    n, k = sorted_input.shape[dim], ref.shape[dim]
    if [s for j, s in enumerate(sorted_input.shape) if j != dim] != [s for j, s in enumerate(ref.shape) if j != dim] \
            or k > n:
        return check_output(out, ref, atol, rtol)
    sort = k == n
    what = (f"the indices of an unstable sort must be a permutation of 0..{n - 1} along dim {dim}" if sort else
            f"the indices of a top-{k} must be {k} distinct indices of 0..{n - 1} along dim {dim}")
    outside = (out < 0) | (out >= n)
    if outside.any():
        at = outside.nonzero()[0].tolist()
        raise Mismatch("mismatch", f"{what}: {int(outside.sum())} of {out.numel()} are out of range "
                                   f"(first at {at}: {out[tuple(at)].item()})")
    rows = out.movedim(dim, -1).reshape(-1, k).long()
    counts = torch.zeros(rows.shape[0], n, dtype=torch.long).scatter_add_(1, rows, torch.ones_like(rows))
    bad = (counts > 1).any(dim=1)
    if bad.any():
        j = int(bad.nonzero()[0])
        twice = int((counts[j] > 1).nonzero()[0])
        others = [s for d, s in enumerate(out.shape) if d != dim]
        row = [int(t) for t in torch.unravel_index(torch.tensor(j), others)] if others else []
        place = f" in the row at {row}" if row else ""
        never = f" and {int((counts[j] == 0).nonzero()[0])} never" if sort else ""
        raise Mismatch("mismatch", f"{what}: index {twice} appears {int(counts[j, twice])} times{place}{never} "
                                   f"({int(bad.sum())} of {rows.shape[0]} rows are not "
                                   f"{'permutations' if sort else 'distinct'})")
    got = sorted_input.gather(dim, out.long())
    want = sorted_input.gather(dim, ref.long())
    if not ordered:
        got, want = got.sort(dim=dim).values, want.sort(dim=dim).values
    try:
        return check_output(got, want, atol, rtol)
    except Mismatch as m:
        kind = "an unstable sort" if sort else f"a top-{k}"
        raise Mismatch(m.code, f"the indices of {kind} (any order of equal values is accepted) do not "
                               f"{'sort the input' if sort else 'pick its top values'}, the values they gather "
                               f"differ from the {'sorted reference' if sort else 'reference top-k'}: "
                               f"{m.message}") from None


# ------------------------------------------------------------------ candidates

_EXP_CLASS = {"_softmax", "_log_softmax", "logsumexp", "exp", "softmax", "log_softmax"}
_ARG_CLASS = {"argmax", "argmin", "max", "min", "amax", "amin", "topk", "sort", "cummax", "cummin"}
_NORM_CLASS = {"var", "var_mean", "native_layer_norm", "layer_norm", "rsqrt", "std", "std_mean"}


def targeted_distributions(graph: AtenGraph) -> tuple[str, ...]:
    """Extra input distributions aimed at the known cheats of the task's op classes.

    An op on (a view of) a task input of class: exp / softmax -> ``last_max`` (a softmax
    stabilised by part of the row overflows) and ``offset`` (values far past exp's range);
    argmax / max / top-k -> ``last_max`` and ``near_ties`` (a reduction over part of the row or
    at lower precision picks another index); variance / norm -> ``mixed_scale``. Every task
    with a floating-point input and no index op also gets ``zeros`` (a division or log a kernel
    adds shows up as inf/NaN). Ops on computed values are left out, and so are the exp-class
    ones where an index op ranks computed values: float32 results may legitimately reorder
    near-ties and saturated values (attention scores, top-k over probabilities)."""
    from .lowering import ALIAS_KINDS, aten_name

    inputs = {s.name for s in graph.inputs}
    alias_of: dict[str, str] = {}
    for n in graph.nodes:
        refs = n.refs()
        if aten_name(n.target) in ALIAS_KINDS and refs:
            src = refs[0].name
            alias_of[n.name] = alias_of.get(src, src)
            for o in n.outs:
                alias_of[o.name] = alias_of[n.name]
    out: list[str] = []
    # an index op (top-k, argmax) over computed values, e.g. top-k over softmax probabilities: a
    # maximum lifted 100 above the rest saturates the others to exact float32 zeros whose order is
    # a tie the float64 reference does not have, so the exp-class distributions are left out
    ranks_computed = any(aten_name(n.target) in _ARG_CLASS and n.refs()
                         and alias_of.get(n.refs()[0].name, n.refs()[0].name) not in inputs for n in graph.nodes)
    for n in graph.nodes:
        refs = n.refs()
        if not refs or alias_of.get(refs[0].name, refs[0].name) not in inputs:
            continue
        base = aten_name(n.target)
        if base in _EXP_CLASS:
            if not ranks_computed:
                out += ["last_max", "offset"]
        elif base in _ARG_CLASS:
            out += ["last_max", "near_ties"]
        elif base in _NORM_CLASS:
            out += ["mixed_scale"]
    ranks = any(aten_name(n.target) in _ARG_CLASS for n in graph.nodes)
    if not ranks and any(s.dtype in ("f32", "bf16", "f16") for s in graph.inputs):
        out.append("zeros")  # (not where an index op ranks values: exact zeros are ties it may order either way)
    return tuple(dict.fromkeys(out))


def _reference(model: torch.nn.Module, inputs: list[torch.Tensor],
               sorts: list[_SortCall] | None = None) -> list[torch.Tensor]:
    """The task's outputs in float64; with ``sorts``, every unstable sort it runs is appended there
    (for :func:`check_sort_indices`; the recorder is installed only then)."""
    model = model.double()
    args = [t.double() if t.dtype.is_floating_point else t for t in inputs]
    with torch.no_grad():
        if sorts is None:
            out = model(*args)
        else:
            with _SortRecorder(sorts):
                out = model(*args)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _digest(ts: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in ts:
        h.update(to_numpy(t).tobytes())
    return h.hexdigest()


def run_checks(task: Task, candidate, cfg: VerifyConfig, sets: list[dict] | None = None,
               extra: tuple[str, ...] = ()) -> list[Check]:
    """Run ``cfg.checks(task, sets, extra)`` in order; the first failure ends the list."""
    checks: list[Check] = []
    graphs: dict[tuple, AtenGraph] = {}
    unstable: dict[tuple, dict[int, UnstableSort]] = {}   # per graph: outputs that are unstable sorts' indices
    for sizes, seed, dist in cfg.checks(task, sets, extra):
        t0 = time.perf_counter()
        inst = instantiate(task, sizes, seed=seed)
        # numbers get_inputs() returns are constants of the captured graph: a seed that draws others
        # needs its own capture
        key = (tuple(sorted(inst.sizes.items())), tuple(sorted(inst.scalar_inputs.items())))
        if key not in graphs:
            graphs[key] = capture(inst)
            unstable[key] = unstable_sort_indices(graphs[key])
        g = graph = graphs[key].with_weights(inst.model)  # this seed's weights
        inputs = make_inputs(inst, sizes, seed=seed, distribution=dist)
        before = _digest(inputs)
        check = Check(dict(inst.sizes), seed, dist, False)
        try:
            fed = [t.clone() for t in inputs]
            outs = candidate.run(g, fed, cfg.limits)
            if _digest(fed) != before:
                raise Mismatch("inputs_modified", "the candidate modified its inputs")
            calls: list[_SortCall] | None = [] if unstable[key] else None
            refs = _reference(inst.model, inputs, calls)
            sorts = _match_sorts(unstable[key], calls or [], refs)
            check.max_abs_error, check.max_rel_error = _compare_all(task, outs, refs, graph, sorts)
            check.passed = True
        except Mismatch as m:
            check.code, check.reason = m.code, m.message
        except AspError as e:
            check.code, check.reason = _asp_code(e), e.short()
        except BindingError as e:
            check.code, check.reason = _binding_code(e), str(e)
        except UnsupportedOpError as e:
            check.code, check.reason = "unsupported", str(e)
        check.seconds = time.perf_counter() - t0
        checks.append(check)
        if not check.passed:
            break  # one failure decides; the rest would cost time and say nothing new
    return checks


def _binding_code(e: BindingError) -> str:
    if "dtype" in str(e) or "declared" in str(e) and "precision" in str(e):
        return "dtype"
    return getattr(e, "code", "interface")


def _asp_code(e: AspError) -> str:
    if e.kind in ("ParseError", "NameError", "TypeError", "ShapeError", "ArgumentError", "SizeError",
                  "AffineError", "ResourceError"):
        return "compile"
    if e.kind == "LimitError":
        return "limit"
    if e.kind == "EmulatorError":
        return "emulator_bug"
    return "runtime"


def _tolerance(task: Task, dtype: str) -> tuple[float, float]:
    atol, rtol = DEFAULT_TOLERANCE.get(dtype, (0.0, 0.0))
    return (task.atol if task.atol is not None else atol), (task.rtol if task.rtol is not None else rtol)


def _compare_all(task: Task, outs, refs, graph: AtenGraph,
                 sorts: dict[int, tuple[_SortCall, str]] | None = None) -> tuple[float, float]:
    """Compare every output with the reference's. ``sorts`` (:func:`_match_sorts`) names the
    outputs that are the indices of an unstable sort, checked up to ties; every other output is
    compared as it always was."""
    if len(outs) != len(refs):
        raise Mismatch("interface", f"{len(outs)} outputs but the task has {len(refs)}")
    sorts = sorts or {}
    worst = (0.0, 0.0)
    for i, (o, r, spec) in enumerate(zip(outs, refs, graph.output_specs)):
        want = spec.dtype
        atol, rtol = _tolerance(task, want)
        if o.dtype != getattr(torch, _torch_name(want)):
            raise Mismatch("dtype", f"output {i} has dtype {o.dtype}, the task's is {want}")
        ref = r if not r.dtype.is_floating_point else r.double()
        if not r.dtype.is_floating_point and o.dtype != r.dtype:
            o = o.to(r.dtype)
        try:
            if i in sorts:
                call, input_dtype = sorts[i]
                errs = check_sort_indices(o, ref, call.input, call.dim, *_tolerance(task, input_dtype),
                                          ordered=call.ordered)
            else:
                errs = check_output(o, ref, atol, rtol)
        except Mismatch as m:
            raise Mismatch(m.code, f"output {i}: {m.message}") from None
        worst = (max(worst[0], errs[0]), max(worst[1], errs[1]))
    return worst


def _torch_name(dtype: str) -> str:
    return {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "i64": "int64", "i32": "int32",
            "bool": "bool", "f64": "float64"}[dtype]


# ------------------------------------------------------------------ evaluation

_BASELINE_CACHE: dict[tuple, tuple[float, float, float]] = {}


def baseline_timing(task: Task, machine: asp_lang.Machine) -> tuple[float, float, float]:
    """Seconds, roofline seconds and HBM bytes of the op-by-op chain at the task's own sizes."""
    key = (task.name, task.source, machine)
    if key not in _BASELINE_CACHE:
        graph = capture_at(task, meta=True)
        t = baseline_solution(machine).time(graph)
        roof = max(io_bytes(graph) / (machine.hbm.bandwidth_gbs * 1e9),
                   max((k["seconds"] * k["roofline_fraction"] for k in t.kernels), default=0.0))
        _BASELINE_CACHE[key] = (t.seconds, roof, t.hbm_bytes)
    return _BASELINE_CACHE[key]


_EVAL_LOCK = threading.RLock()


def evaluate(task: Task | str | Path, candidate: dict, cfg: VerifyConfig | None = None,
             baseline_seconds: float | None = None) -> Evaluation:
    """Verify and score one candidate in this process. ``candidate`` is
    ``{"kind": "kernel", "source": str, "filename": str}``, ``{"kind": "plan", "plan": {...}}``
    or ``{"kind": "baseline"}``. Calls from several threads run one at a time (task code seeds
    torch's global RNG); evaluate in parallel with worker processes (agentforge.sandbox)."""
    with _EVAL_LOCK:
        return _evaluate(task, candidate, cfg, baseline_seconds)


def _evaluate(task, candidate: dict, cfg: VerifyConfig | None, baseline_seconds: float | None) -> Evaluation:
    cfg = cfg or VerifyConfig()
    t0 = time.perf_counter()
    task = task if isinstance(task, Task) else load_task(task)
    machine = asp_lang.load_machine(cfg.machine)
    kind = candidate.get("kind")
    ev = Evaluation(task.name, kind or "?", False, None, machine=machine.name, own_sizes=dict(task.sizes))
    try:
        sol = solution(candidate, machine)
        ev.kernel_sha256 = sol.source_sha256
        try:
            sets = configured_sets(task, sol, cfg, sol.key())
        except BindingError as e:
            where = "" if "[at sizes" in str(e) else f" [at the task's own sizes {dict(task.sizes)}]"
            ev.reason, ev.reason_code = f"{e}{where}", _binding_code(e)
            ev.error = {"kind": type(e).__name__, "message": str(e)}
            return ev
        except Uncheckable as e:
            ev.reason, ev.reason_code = str(e), "uncheckable"
            ev.error = {"kind": "Uncheckable", "message": str(e)}
            return ev
        ev.bound_sizes = sol.bound_sizes
        extra = targeted_distributions(capture_at(task, meta=True))
        ev.checks = run_checks(task, sol, cfg, sets, extra)
        failed = [c for c in ev.checks if not c.passed]
        if failed:
            c = failed[0]
            ev.reason = f"{c.reason} [sizes {c.sizes}, seed {c.seed}, {c.distribution} inputs]"
            ev.reason_code = c.code
            return ev
        # timing at the task's own sizes: shapes only
        if baseline_seconds is None:
            baseline_seconds = baseline_timing(task, machine)[0]
        t = sol.time(capture_at(task, meta=True))
        ev.simulated_seconds, ev.hbm_bytes, ev.flops = t.seconds, t.hbm_bytes, t.flops
        ev.bottleneck, ev.profile = t.bottleneck, t.profile
        # the task's own roofline bounds every timing; beating it is an emulator bug (raises)
        from .scoring import task_roofline_fraction  # scoring imports this module
        ev.roofline_fraction = task_roofline_fraction(capture_at(task, meta=True), machine, ev.simulated_seconds,
                                                      task.work_fraction())
        ev.baseline_seconds = baseline_seconds
        ev.speedup = baseline_seconds / ev.simulated_seconds if ev.simulated_seconds else None
        if ev.speedup and ev.speedup > SUSPICIOUS_SPEEDUP:
            ev.warnings.append(f"speedup {ev.speedup:.1f}x over the baseline is above {SUSPICIOUS_SPEEDUP:g}x: "
                               "check it does the task's work (e.g. routing vs a dense reference)")
        ev.verified = True
    except EmulatorError as e:
        ev.reason, ev.reason_code = f"EMULATOR BUG: {e.message}", "emulator_bug"
        ev.error = {"kind": "EmulatorError", "message": e.message}
    except AspError as e:
        ev.reason, ev.reason_code = e.short(), _asp_code(e)
        ev.error = {"kind": e.kind, "message": e.render()}
    except BindingError as e:
        ev.reason, ev.reason_code = str(e), getattr(e, "code", "interface")
        ev.error = {"kind": type(e).__name__, "message": str(e)}
    except UnsupportedOpError as e:
        ev.reason, ev.reason_code = str(e), "unsupported"
        ev.error = {"kind": type(e).__name__, "message": str(e)}
    except AgentforgeError as e:
        if _out_of_memory(e):  # task code wraps a MemoryError (e.g. under the sandbox's cap) as a TaskError
            ev.reason, ev.reason_code = ("the evaluation ran out of memory (a MemoryError while running the "
                                         "task's code, e.g. under the sandbox's memory cap)"), "memory"
            ev.error = {"kind": "MemoryError", "message": str(e)}
        else:
            ev.reason, ev.reason_code = str(e), "task"
            ev.error = {"kind": type(e).__name__, "message": str(e)}
    finally:
        ev.eval_seconds = time.perf_counter() - t0
    return ev


def _out_of_memory(e: BaseException | None) -> bool:
    """Whether ``e`` was caused by a MemoryError (followed through ``raise ... from``/context).

    Under the sandbox's address-space cap a C extension (torch.export's tracer among them) whose
    allocation fails may return NULL without setting an exception; CPython then raises
    ``SystemError: error return without exception set`` (or, from a function such as the import
    machinery, ``... returned NULL without setting an exception``). With a cap in force that is a failed
    allocation, so it counts as memory; without a cap it stays a task error. torch's own allocator
    reports a failed allocation as a RuntimeError (``DefaultCPUAllocator: can't allocate memory``)
    or ``torch.OutOfMemoryError``: memory too, cap or not."""
    capped = _address_space_capped()
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, MemoryError) or _torch_allocation_failed(e):
            return True
        if capped and isinstance(e, SystemError) and ("without exception set" in str(e)
                                                      or "without setting an exception" in str(e)):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _torch_allocation_failed(e: BaseException) -> bool:
    return isinstance(e, RuntimeError) and (type(e).__name__ == "OutOfMemoryError"
                                            or "can't allocate memory" in str(e))


def _address_space_capped() -> bool:
    """Whether this process runs under an RLIMIT_AS cap (the sandbox's memory cap)."""
    try:
        import resource
    except ImportError:  # not POSIX: no cap can be in force
        return False
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return soft != resource.RLIM_INFINITY
