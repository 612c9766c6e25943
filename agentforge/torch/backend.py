"""``torch.compile(model, backend="agentforge")``: run the parts of a model the library covers on
the emulated chip, and the rest eagerly.

Configuration (highest first): ``options={...}`` of torch.compile, then the ``[torch]`` table
of ``agentforge.toml`` in the current directory (or the file named by ``options["config"]``):

    [torch]
    library = "runs/default/library"   # a library folder, or a campaign's run folder
    machine = "sn40l"                  # default: the library's machine
    namespace = "rdu"                  # torch.ops.<namespace>.<op>
    strict = false                     # true: raise where the backend would warn and run eagerly
    fallback = "error"                 # "torch": a library op called at unverified sizes runs the reference
    verify_new_sizes = false
    verbose = false                    # true: a warning per library op left eager for its sizes

Diagnostics are quiet: each compiled graph's plan gets one summary (what runs on library
kernels, what runs eagerly and why, grouped), logged at INFO on the ``agentforge.torch`` logger
and kept as ``compiled_graphs()[i].summary``; per-op warnings only with ``verbose = true``. A
failure that sends a whole graph back to eager (export or a kernel failed) is always a warning.

Each call is specialised on its concrete input shapes (graphs dynamo compiles with symbolic
sizes included): the first call at a shape signature exports the graph at those shapes and
matches the library's kernels (cached per signature), so every call runs the kernels verified
for its actual sizes. A library op matched at sizes no kernel is verified for runs eagerly
with a warning naming the op and its verified problems.

The backend never turns a working model into a failing one: if export, matching or a kernel
fails, it warns and runs the graph dynamo gave it, eagerly, at those shapes (``strict = true``
raises instead). Configuration mistakes (no library, unknown key) are raised: they are the
user's to fix.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import tomllib
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from agentforge.canonical import canonical_export
from agentforge.torch.ops import FALLBACKS, TorchBridgeError, TorchLibrary, UnverifiedProblemError, load_library

__all__ = ["BackendConfig", "Specialization", "agentforge_backend", "compiled_graphs", "get_library", "CONFIG_FILE",
           "MAX_SPECIALIZATIONS"]

CONFIG_FILE = "agentforge.toml"
_LOG = logging.getLogger("agentforge.torch")


@dataclass(frozen=True)
class BackendConfig:
    """What the user chose for the backend (see the module docstring for the file form)."""
    library: str | None = None
    machine: str | None = None
    namespace: str = "rdu"
    strict: bool = False
    fallback: str = "error"
    verify_new_sizes: bool = False
    verbose: bool = False

    @staticmethod
    def resolve(options: Mapping[str, Any] | None = None) -> "BackendConfig":
        """Merge ``options`` over the ``[torch]`` table of the config file; validate every field."""
        options = dict(options or {})
        explicit = options.get("config") is not None
        path = Path(options.pop("config", None) or CONFIG_FILE)
        base: dict[str, Any] = {}
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as e:
                raise TorchBridgeError(f"{path}: not valid TOML ({e})") from None
            base = dict(data.get("torch", {}))
            if "library" in base and not Path(base["library"]).is_absolute():
                base["library"] = str((path.parent / base["library"]).resolve())
        elif explicit:
            raise TorchBridgeError(f"config file {path} does not exist")
        merged = {**base, **options}
        known = {f.name: f for f in fields(BackendConfig)}
        for k, v in merged.items():
            if k not in known:
                raise TorchBridgeError(f"unknown agentforge backend option {k!r} (from {'options' if k in options else path}); "
                                       f"known: {', '.join(known)}")
            want = bool if k in ("strict", "verify_new_sizes", "verbose") else str
            if v is not None and not isinstance(v, want):
                raise TorchBridgeError(f"agentforge backend option {k!r} must be a {want.__name__}, got {v!r}")
        cfg = replace(BackendConfig(), **merged)
        if cfg.fallback not in FALLBACKS:
            raise TorchBridgeError(f"agentforge backend option fallback={cfg.fallback!r} is not one of {FALLBACKS}")
        if not cfg.library:
            raise TorchBridgeError("the agentforge backend needs a kernel library\n  how to fix: "
                                   "torch.compile(model, backend='agentforge', options={'library': 'OUT/library'}) "
                                   f"or `[torch] library = \"...\"` in {CONFIG_FILE}")
        return cfg


_LOADED: dict[tuple, TorchLibrary] = {}
_LOAD_LOCK = threading.RLock()


def get_library(cfg: BackendConfig) -> TorchLibrary:
    """The library of ``cfg``, loaded (and its ops registered) once per process."""
    key = (os.path.abspath(cfg.library or ""), cfg.namespace, cfg.machine, cfg.fallback, cfg.verify_new_sizes)
    with _LOAD_LOCK:
        if key not in _LOADED:
            _LOADED[key] = load_library(cfg.library or "", cfg.namespace, machine=cfg.machine, fallback=cfg.fallback,
                                        verify_new_sizes=cfg.verify_new_sizes)
        return _LOADED[key]


#: distinct concrete shape signatures one compiled graph keeps a plan for (oldest dropped first)
MAX_SPECIALIZATIONS = 32


@dataclass
class Specialization:
    """One compiled graph at one concrete shape signature: the plan made for it (or why none)."""
    key: tuple                      # per graph input: ("tensor", shape, dtype, device) or ("const", type, value)
    plan: Any = None                # agentforge.torch.match.OffloadPlan
    error: str | None = None        # why this signature runs eagerly (planning or running failed)
    calls: int = 0
    planning_s: float = 0.0         # export + matching, wall clock
    planning_cpu_s: float = 0.0     # the same, this process's CPU time (what the host's other load does not inflate)

    @property
    def offloaded(self) -> list[str]:
        """The library ops this signature's calls run (``torch.ops.<ns>.<op>``)."""
        return [r.op for r in self.plan.regions] if self.plan is not None else []

    @property
    def summary(self) -> str:
        """One paragraph: what this signature runs on library kernels, what eagerly and why (grouped)."""
        tensors = [f"{list(k[1])}" for k in self.key if k[0] == "tensor"]
        shapes = ", ".join(tensors[:3]) + (f", ... {len(tensors) - 3} more" if len(tensors) > 3 else "") or "?"
        if self.plan is None:
            return f"agentforge: graph at ({shapes}) runs eagerly: {self.error}"
        return f"agentforge: graph at ({shapes}): {summarize(self.plan)}"


_VIEWS = frozenset({"view", "permute", "expand", "getitem", "clone", "alias", "detach"})


def summarize(plan: Any) -> str:
    """``plan``'s offload in a few lines: library calls by op, non-view ops left eager grouped by
    why (a short reason, the op kinds and counts)."""
    calls: dict[str, int] = {}
    for r in plan.regions:
        calls[r.op] = calls.get(r.op, 0) + 1
    kinds = {n.name: n.kind for n in plan.graph.nodes}
    covered = sum(1 for r in plan.regions for n in r.semantic if kinds.get(n) not in _VIEWS)
    eager = [e for e in plan.eager if e.kind not in _VIEWS and not e.view]   # e.view: copies, picks, aliases
    total = covered + len(eager)
    groups: dict[str, list[str]] = {}
    for e in eager:
        groups.setdefault(_short_reason(e.reason), []).append(e.kind)
    folded: dict[str, int] = {}
    for n in plan.graph.nodes:
        if n.name in getattr(plan, "folded", {}) and n.kind not in _VIEWS:
            folded[n.kind] = folded.get(n.kind, 0) + 1
    lines = [f"{covered} of {total} ops (not counting views) on library kernels"
             + (f" ({', '.join(f'{op} x{n}' for op, n in calls.items())})" if calls else "")
             + f"; {len(eager)} eager"
             + (f"; {sum(folded.values())} folded once per plan (no input reaches them: "
                f"{', '.join(f'{k} x{n}' if n > 1 else k for k, n in folded.items())})" if folded else "")]
    for why, kinds in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        counted: dict[str, int] = {}
        for k in kinds:
            counted[k] = counted.get(k, 0) + 1
        lines.append(f"  {len(kinds)} {why}: {', '.join(f'{k} x{n}' if n > 1 else k for k, n in counted.items())}")
    return "\n".join(lines)


def _short_reason(reason: str) -> str:
    first = reason.splitlines()[0]
    if first.startswith("no library kernel computes it"):
        return "no library kernel computes them"
    if first.startswith("matches the structure of "):
        op = first.removeprefix("matches the structure of ").split(",")[0]
        return f"match {op} at sizes no kernel is verified for"
    if "also used outside" in first:
        return f"{first.split(',')[0]}, but an intermediate is used outside it"
    return first[:100]


def _signature(args: Sequence[Any]) -> tuple | None:
    """What a plan depends on: each tensor input's shape, dtype and device, and the value of each
    other input (the sizes a symbolic-size graph receives). None: an input of another kind."""
    key = []
    for a in args:
        if isinstance(a, torch.Tensor):
            key.append(("tensor", tuple(int(d) for d in a.shape), a.dtype, a.device.type))
        elif isinstance(a, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            return None                  # not concrete: nothing to specialise on
        elif a is None or isinstance(a, (bool, int, float, str)):
            key.append(("const", type(a).__name__, a))
        else:
            return None
    return tuple(key)


class _Bound(torch.nn.Module):
    """A graph with its non-tensor inputs (the concrete sizes of a symbolic-size graph) fixed,
    so that torch.export sees a static graph of tensors only."""

    def __init__(self, gm: torch.fx.GraphModule, args: Sequence[Any]):
        super().__init__()
        self.gm = gm
        self.slots = [None if isinstance(a, torch.Tensor) else (a,) for a in args]

    def forward(self, *tensors: torch.Tensor) -> Any:
        it = iter(tensors)
        return self.gm(*(next(it) if s is None else s[0] for s in self.slots))


def bound_graph(gm: torch.fx.GraphModule, args: Sequence[Any]) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """A graph dynamo hands a backend, as the backend exports it for one call: its non-tensor
    arguments fixed (:class:`_Bound`), and the call's tensors (``campaign --from-model`` captures
    recorded graphs the same way)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return (gm if len(tensors) == len(args) else _Bound(gm, args)), tensors


class _Derived(torch.nn.Module):
    """A graph dynamo compiled with symbolic sizes, its size inputs read from its tensors' dims
    (``slots``: ("t", k) the k-th tensor, ("s", k, d) dim d of the k-th tensor), so torch.export
    can keep those dims dynamic: one plan for every size (decode at every KV length)."""

    def __init__(self, gm: torch.fx.GraphModule, slots: list[tuple]):
        super().__init__()
        self.gm = gm
        self.slots = slots

    def forward(self, *tensors: torch.Tensor) -> Any:
        return self.gm(*(tensors[s[1]] if s[0] == "t" else tensors[s[1]].shape[s[2]] for s in self.slots))


def _dynamic_slots(gm: torch.fx.GraphModule) -> tuple[list[tuple], list[set[int]]] | None:
    """For a graph with symbolic-size inputs: how each size is read from a tensor input, and each
    tensor input's symbolic dims. None: a static graph, or a size that is no tensor's dim (such a
    graph keeps one plan per concrete signature)."""
    vals = [n.meta.get("example_value") for n in gm.graph.nodes if n.op == "placeholder"]
    if not any(isinstance(v, torch.SymInt) for v in vals):
        return None
    tens = [i for i, v in enumerate(vals) if isinstance(v, torch.Tensor)]
    if len(tens) + sum(isinstance(v, torch.SymInt) for v in vals) != len(vals):
        return None
    pos = {i: k for k, i in enumerate(tens)}
    dims = [{d for d, x in enumerate(vals[i].shape) if isinstance(x, torch.SymInt)} for i in tens]
    slots: list[tuple] = []
    for i, v in enumerate(vals):
        if isinstance(v, torch.Tensor):
            slots.append(("t", pos[i]))
            continue
        found = next(((pos[j], d) for j in tens for d, x in enumerate(vals[j].shape)
                      if isinstance(x, torch.SymInt) and x.node.expr == v.node.expr), None)
        if found is None:
            return None
        slots.append(("s", *found))
    return slots, dims


def _fits(ep: Any, tensors: Sequence[torch.Tensor]) -> bool:
    """Whether ``tensors`` are inside what ``ep`` (exported with dynamic dims) was traced for: each
    static dim equal, each dynamic dim within its range constraint."""
    phs = [n for n in ep.graph.nodes if n.op == "placeholder"]
    user = dict(zip(ep.graph_signature.user_inputs, tensors))
    for n in phs:
        if n.name not in user:
            continue
        t, v = user[n.name], n.meta.get("val")
        if not isinstance(v, torch.Tensor) or v.dim() != t.dim() or v.dtype != t.dtype:
            return False
        for want, got in zip(v.shape, t.shape):
            if isinstance(want, int):
                if want != got:
                    return False
                continue
            r = ep.range_constraints.get(want.node.expr)
            if r is None:
                continue
            if got < _bound(r.lower, -1) or got > _bound(r.upper, got):
                return False
    return True


def _bound(x: Any, unbounded: int) -> int:
    try:
        return int(x)
    except (TypeError, ValueError, OverflowError, AttributeError):     # sympy's int_oo (no _mpf_: AttributeError)
        return unbounded


class _Compiled:
    """What the backend hands back to dynamo. Each call is specialised on its concrete input
    shapes: the first call at a shape signature exports the graph at those shapes and plans the
    offload (cached per signature), every call runs the plan of its own signature. So a graph
    dynamo compiled with symbolic sizes dispatches each call to the kernels verified for its
    actual sizes, and a failure at one signature leaves the others offloaded."""

    def __init__(self, gm: torch.fx.GraphModule, cfg: BackendConfig):
        self.gm = gm
        self.cfg = cfg
        self.calls = 0
        self.specializations: OrderedDict[tuple, Specialization] = OrderedDict()
        self.last: Specialization | None = None
        self._lock = threading.RLock()
        #: a symbolic-size graph is planned once, its dynamic dims kept dynamic (None: per signature);
        #: a call at sizes where the library has a kernel for a part that plan leaves eager gets a
        #: plan of its own signature (in ``specializations``)
        self.dynamic = _dynamic_slots(gm)
        self.dynamic_specs: dict[tuple, Specialization] = {}
        self._warned: set = set()

    @property
    def plan(self) -> Any:
        """The plan of the latest call's shape signature (None: it ran eagerly)."""
        return self.last.plan if self.last is not None else None

    @property
    def error(self) -> str | None:
        """Why the latest call's shape signature runs eagerly (None: planned and ran)."""
        return self.last.error if self.last is not None else None

    @property
    def summary(self) -> str:
        """The latest call's shape signature's offload in a few lines (see :func:`summarize`)."""
        return self.last.summary if self.last is not None else "agentforge: not called yet"

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        spec = self._specialization(args)
        spec.calls += 1
        if spec.plan is not None:
            try:
                return spec.plan.run([a for a in args if isinstance(a, torch.Tensor)])
            except UnverifiedProblemError as e:    # these values (not sizes) are not for the chip
                if self.cfg.strict:
                    raise
                warnings.warn(f"agentforge backend: {e}; running this call eagerly (strict=True raises instead)",
                              stacklevel=2)
                return self.gm(*args)
            except Exception as e:  # noqa: BLE001
                self._fail(spec, "running the offloaded graph", e)
        return self.gm(*args)

    def _specialization(self, args: Sequence[Any]) -> Specialization:
        if self.dynamic is not None:
            spec = self._dynamic_specialization(args)
            if spec is not None:
                return spec
        key = _signature(args)
        with self._lock:
            if key is not None and key in self.specializations:
                self.specializations.move_to_end(key)
                self.last = self.specializations[key]
                return self.last
            spec = Specialization(key if key is not None else ())
            self.last = spec
            if key is None:
                self._fail(spec, "planning the offload", TorchBridgeError(
                    f"the graph takes an input of a kind the backend cannot specialise on "
                    f"({', '.join(sorted({type(a).__name__ for a in args}))})"))
                return spec
            self._plan(spec, args)
            self.specializations[key] = spec
            while len(self.specializations) > MAX_SPECIALIZATIONS:
                self.specializations.popitem(last=False)
            return spec

    def _dynamic_specialization(self, args: Sequence[Any]) -> Specialization | None:
        """The one plan of a symbolic-size graph (exported with its symbolic dims dynamic; the ops
        whose shapes depend on them run eagerly, the rest on verified kernels), or None when these
        arguments are outside it or it could not be made (then plans are per signature)."""
        slots, dims = self.dynamic
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if len(tensors) != len(dims):
            return None
        key = tuple(("tensor", tuple("*" if d in ds else int(x) for d, x in enumerate(t.shape)), t.dtype,
                     t.device.type) for t, ds in zip(tensors, dims)) + (("const", "dynamic", True),)
        with self._lock:
            spec = self.dynamic_specs.get(key)
            if spec is None:
                spec = Specialization(key)
                t0, c0 = time.perf_counter(), time.process_time()
                try:
                    from agentforge.torch.match import export_graph, plan_offload, weight_inputs

                    tl = get_library(self.cfg)
                    shapes = tuple({d: torch.export.Dim.AUTO for d in ds} or None for ds in dims)
                    ep, graph = export_graph(_Derived(self.gm, slots), tensors, "compiled graph",
                                             dynamic_shapes=(shapes,))
                    graph = canonical_export(ep, graph, "compiled graph")
                    spec.plan = plan_offload(tl, ep, graph, weight_inputs(ep, tensors))
                except Exception as e:  # noqa: BLE001 - fall back to a plan per concrete signature
                    if self.cfg.strict:
                        raise
                    _LOG.info("agentforge: a graph with dynamic sizes could not be planned once (%s: %s); "
                              "planning per signature", type(e).__name__, e)
                    self.dynamic = None
                    return None
                spec.planning_s, spec.planning_cpu_s = time.perf_counter() - t0, time.process_time() - c0
                self.dynamic_specs[key] = spec
                _LOG.info("%s", spec.summary)
            if spec.plan is None:
                return spec     # running it failed once (a warning said why): this graph runs eagerly
            if not _fits(spec.plan.exported, tensors):
                return None
            from agentforge.torch.match import Unverified, dynamic_sizes

            left = []
            sizes = dynamic_sizes(spec.plan.exported, tensors)
            try:
                outside = spec.plan.dynamic_unverified(sizes)
            except Exception:  # noqa: BLE001 - the task did not capture or time at these sizes: not verified here
                if self.cfg.strict:
                    raise
                outside = True
            if outside:
                return None     # outside the verified range of a kernel the plan calls: plan this signature
            for fam, problem, nodes in spec.plan.blocked_at(sizes):
                if fam.covered(problem):
                    return None     # a kernel is verified at this call's sizes: plan this signature
                left.append(Unverified(fam, problem, nodes))
            if left and self.cfg.strict:     # the largest block the library would cover at other sizes
                raise max(left, key=lambda u: len(u.nodes)).error()
            if self.cfg.verbose:
                for u in left:
                    if (u.family.op, u.key) not in self._warned:
                        self._warned.add((u.family.op, u.key))
                        warnings.warn(f"agentforge backend: {u.message()}; running those ops eagerly (strict=True "
                                      f"raises instead)", stacklevel=4)
            self.last = spec
            return spec

    def _plan(self, spec: Specialization, args: Sequence[Any]) -> None:
        try:
            from agentforge.torch.match import export_graph, plan_offload, weight_inputs

            tl = get_library(self.cfg)
            fn, tensors = bound_graph(self.gm, args)
            t0, c0 = time.perf_counter(), time.process_time()
            ep, graph = export_graph(fn, tensors, "compiled graph")
            graph = canonical_export(ep, graph, "compiled graph")   # as from_model captured its tasks
            spec.plan = plan_offload(tl, ep, graph, weight_inputs(ep, tensors))
            spec.planning_s, spec.planning_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        except Exception as e:  # noqa: BLE001 - anything: the model must keep working
            self._fail(spec, "planning the offload", e)
            return
        left = sorted(spec.plan.unverified, key=lambda u: -len(u.nodes))
        if left and self.cfg.strict:       # the largest block the library would cover at other sizes
            raise left[0].error()
        _LOG.info("%s", spec.summary)
        if self.cfg.verbose:
            for u in left:
                warnings.warn(f"agentforge backend: {u.message()}; running those ops eagerly (strict=True raises "
                              f"instead)", stacklevel=4)

    def _fail(self, spec: Specialization, what: str, e: Exception) -> None:
        if self.cfg.strict:
            raise e
        spec.plan = None
        spec.error = f"{what} failed: {type(e).__name__}: {e}"
        shapes = ", ".join(f"{list(k[1])}" if k[0] == "tensor" else repr(k[2]) for k in spec.key) or "?"
        warnings.warn(f"agentforge backend: {spec.error}; running this graph eagerly at these input shapes "
                      f"({shapes}) (strict=True raises instead)", stacklevel=4)


_ORDER: list[weakref.ref] = []


def compiled_graphs() -> list[_Compiled]:
    """The graphs the backend compiled in this process, oldest first (``.plan`` and ``.error`` of the
    latest call, ``.calls``, ``.specializations``: one plan per concrete shape signature seen)."""
    return [c for c in (r() for r in _ORDER) if c is not None]


def agentforge_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], options: Mapping[str, Any] | None = None,
                       **_: Any) -> Callable[..., Any]:
    """The torch.compile backend (entry point ``torch_dynamo_backends: agentforge``)."""
    cfg = BackendConfig.resolve(options)
    compiled = _Compiled(gm, cfg)
    _ORDER.append(weakref.ref(compiled))
    return compiled
