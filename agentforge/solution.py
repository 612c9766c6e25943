"""A solution: what every consumer of an answer holds.

An answer to a task is one of three things: an ASP kernel for the whole task (an LLM worker's,
or a library's kernel file), a fusion plan (the offline author's or an LLM planner's: a chain
of kernels the author realizes), or the op-by-op baseline chain. Every consumer -- the
verifier, the agent loop, the plan cache, the library, the PyTorch ops, the review -- needs
the same few things of it: bind it to a captured graph, run it, time it, list the structure of
what it runs (the referee's check-size question) and write its files. :func:`solution` is the
one place that turns the serialised form (``{"kind": ...}``) into an object; nothing else
branches on the kind.

Binding is the expensive step (a plan is realized into a chain of kernels, a kernel is
matched and compiled), so a solution binds once per graph shape: :meth:`Solution.at` keeps
one :class:`Bound` per graph (graphs with the same inputs, params, nodes and outputs share it,
whatever their data), and plan chains are shared between solutions of the same plan on the
same machine. :data:`BUILDS` counts the bindings made, by kind, so the claim "bound once" is
measured rather than assumed.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

import asp_lang

from .baseline import build_baseline
from .binding import bind
from .bridge import program_feed, program_results
from .capture import AtenGraph
from .chain import Chain
from .lowering import OpKernel

__all__ = ["Solution", "KernelSolution", "ChainSolution", "Bound", "Timing", "solution", "plan_solution",
           "baseline_solution", "clear_caches", "kernel_node", "structure", "profile_summary", "BUILDS"]

#: bindings made in this process, by kind ("plan", "baseline", "kernel"): what a graph cost to bind
BUILDS: Counter = Counter()

_CHAINS: "OrderedDict[tuple, _ChainBound]" = OrderedDict()
_CHAINS_KEEP = 256
_LOCK = threading.RLock()


@dataclass
class Timing:
    """A solution timed at one graph's sizes (timing model, no data)."""
    seconds: float
    hbm_bytes: float
    flops: float | None = None
    bottleneck: str | None = None
    #: what a kernel writer acts on: per-kernel rows for a chain, sections/operators for a kernel
    profile: dict | None = None
    kernels: list[dict] = field(default_factory=list)
    reconfigurations: int = 0
    report: Any = None   # the asp_lang.Report of a single kernel (None for a chain)


def _machine_key(machine: asp_lang.Machine) -> str:
    return hashlib.sha256(repr(machine).encode()).hexdigest()[:16]


def structure(prog: "asp_lang.Program") -> tuple:
    """What a checked program's configuration is: each operator with its ``par``, and every
    tiled axis (load/store/gather/scatter) as (operator, axis, tile, tiles along the axis),
    then its footprint (largest stream's bytes, all streams' elements)."""
    ops = tuple((n.op, n.par) for n in prog.nodes)
    tiles = []
    for n in prog.nodes:
        tl = (n.attrs or {}).get("tiling")
        if tl is not None:
            tiles += [(n.index, ax, tl.tile[ax], tl.grid[ax]) for ax in tl.kept]
    return (ops, tuple(tiles), *_footprint(prog))


def _footprint(prog: "asp_lang.Program") -> tuple[float, float]:
    """What running ``prog`` holds and makes: its largest stream's bytes, and the elements of all
    its streams (the interpreter caps both: ``Limits.max_array_bytes``, ``max_elements``)."""
    peak = total = 0.0
    for t in prog.streams.values():
        try:
            n = float(t.count)
            peak = max(peak, n * float(getattr(t.elem, "nbytes", 0) or 0))
            total += n * float(math.prod(getattr(t.elem, "shape", ()) or (1,)))
        except (TypeError, ValueError, AttributeError):
            continue
    return peak, total


def profile_summary(rep: asp_lang.Report) -> dict:
    """The parts of a timing report a kernel writer acts on: cycles per section and per operator
    (with what bounds each), units allocated and used, HBM traffic and the roofline's limit."""
    per_section: dict[int, float] = {}
    for o in rep.ops:
        per_section[o.section] = max(per_section.get(o.section, 0.0), float(o.finish_cycles or o.busy_cycles))
    return {"cycles": rep.cycles, "sections": rep.sections, "reconfig_cycles": rep.reconfig_cycles,
            "section_cycles": [per_section[k] for k in sorted(per_section)],
            "pcu_allocated": rep.pcu_allocated, "pmu_allocated": rep.pmu_allocated,
            "agcu_allocated": rep.agcu_allocated, "pcu_utilisation": rep.pcu_utilisation,
            "pmu_utilisation": rep.pmu_utilisation, "sram_bytes": rep.sram_bytes,
            "hbm_bandwidth_fraction": rep.hbm_bandwidth_fraction, "roofline_limit": rep.roofline_limit,
            "roofline_seconds": rep.roofline_seconds, "notes": list(rep.notes),
            "ops": [{"op": o.op, "line": o.line, "busy_cycles": o.busy_cycles, "limit": o.limit, "par": o.par,
                     "pcus": o.pcus, "pmus": o.pmus, "offchip_bytes": o.offchip_bytes, "section": o.section,
                     "finish_cycles": o.finish_cycles} for o in rep.ops]}


class Bound:
    """A solution bound to one graph's shapes: what runs, its timing and its files."""

    graph: AtenGraph

    def run(self, inputs: list[torch.Tensor], params: Mapping[str, torch.Tensor],
            limits: asp_lang.Limits | None = None) -> list[torch.Tensor]:  # pragma: no cover - abstract
        """Run with these weights: a bound is shared by every graph of its shape, whose weights differ."""
        raise NotImplementedError

    def time(self) -> Timing:  # pragma: no cover - abstract
        raise NotImplementedError

    def structures(self) -> list[tuple[bool, tuple]]:  # pragma: no cover - abstract
        """Every kernel's structure, each with whether it is trusted (see :meth:`Solution.structures`)."""
        raise NotImplementedError

    def files(self) -> dict[str, str]:  # pragma: no cover - abstract
        """ASP text of what runs, {file name: text} in execution order."""
        raise NotImplementedError


class _KernelBound(Bound):
    def __init__(self, graph: AtenGraph, prog: "asp_lang.Program", source: str):
        self.graph, self.prog, self.source = graph, prog, source
        self._timing: Timing | None = None

    def run(self, inputs, params, limits=None):
        g, prog = self.graph, self.prog
        feed = program_feed(prog, [*inputs, *(params[p.name] for p in g.params)])
        return program_results(prog, asp_lang.run(prog, feed, limits), g.output_specs)

    def time(self) -> Timing:
        if self._timing is None:
            rep = asp_lang.profile(self.prog)
            self._timing = Timing(rep.seconds, rep.hbm_bytes, rep.flops, rep.bottleneck, profile_summary(rep),
                                  report=rep)
        return self._timing

    def structures(self):
        return [(False, structure(self.prog))]   # the candidate's own code: never trusted

    def files(self):
        return {"kernel.asp": self.source}


class _ChainBound(Bound):
    def __init__(self, chain: Chain, trusted: Callable[[OpKernel], bool], label: str | None, profiled: bool):
        self.graph, self.chain = chain.graph, chain
        self._trusted, self._label, self._profiled = trusted, label, profiled
        self._timing: Timing | None = None

    def run(self, inputs, params, limits=None):
        return self.chain.run(inputs, params=params, limits=limits)

    def time(self) -> Timing:
        if self._timing is None:
            t = self.chain.time()
            bottleneck = self._label or (max(t.kernels, key=lambda k: k["seconds"])["bottleneck"]
                                         if t.kernels else None)
            profile = ({"kernels": [{k: row.get(k) for k in ("node", "target", "seconds", "hbm_bytes",
                                                               "roofline_fraction", "bottleneck")}
                                    for row in t.kernels], "reconfigurations": t.reconfigurations}
                       if self._profiled else None)
            self._timing = Timing(t.seconds, t.hbm_bytes, None, bottleneck, profile, t.kernels, t.reconfigurations)
        return self._timing

    def structures(self):
        ch = self.chain
        return [(self._trusted(s), structure(ch.program(i, s))) for i, s in enumerate(ch.steps)
                if isinstance(s, OpKernel)]

    def files(self):
        return {f"{i:03d}_{k.node}.asp": k.source for i, k in enumerate(self.chain.kernels)}


class Solution:
    """A candidate answer to a task on one machine; see the module docstring.

    ``kind`` is the serialised form's name ("kernel", "plan" or "baseline"): for records and
    display, never for deciding what to do (the methods do that)."""

    kind: str
    machine: asp_lang.Machine
    #: whether its structure follows from operand shapes alone (a kernel binds on shapes; a chain
    #: is realized from the captured graph's nodes): see :meth:`KernelSolution.predicted_structure`
    binds_on_shapes: bool = False

    def __init__(self, machine: asp_lang.Machine):
        self.machine = machine
        self._bound: "OrderedDict[tuple, Bound]" = OrderedDict()

    # what subclasses define
    def key(self) -> str:  # pragma: no cover - abstract
        """A digest of what the solution is (kernel text, plan, or the baseline): equal keys, equal answers."""
        raise NotImplementedError

    def candidate(self) -> dict:  # pragma: no cover - abstract
        """The serialised form (:func:`solution` reads it back), e.g. for a sandboxed evaluation."""
        raise NotImplementedError

    def _bind(self, graph: AtenGraph) -> Bound:  # pragma: no cover - abstract
        raise NotImplementedError

    def _bind_key(self) -> tuple:
        return ()

    # what every consumer uses
    def at(self, graph: AtenGraph) -> Bound:
        """This solution bound to ``graph`` (built once per graph shape, then reused)."""
        k = (graph.structure_key, *self._bind_key())
        with _LOCK:
            if k in self._bound:
                self._bound.move_to_end(k)
                return self._bound[k]
        b = self._bind(graph)
        with _LOCK:
            self._bound[k] = b
            while len(self._bound) > 32:
                self._bound.popitem(last=False)
        return b

    def configure(self, own: AtenGraph) -> list[tuple]:
        """Fix what is timed at the task's own sizes; the structures later checks must cover."""
        return [st for trusted, st in self.structures(own) if not trusted]

    def structures(self, graph: AtenGraph) -> list[tuple[bool, tuple]]:
        """Every kernel's structure at ``graph``'s sizes, each with whether it is a trusted per-op
        lowering (the baseline's own code, its tiles following each graph as the baseline's do:
        checked at any sizes it runs at) rather than a kernel held to the tiles it was timed with."""
        return self.at(graph).structures()

    def structure(self, graph: AtenGraph) -> list[tuple]:
        return [st for _, st in self.structures(graph)]

    def run(self, graph: AtenGraph, inputs: list[torch.Tensor], limits: asp_lang.Limits | None = None,
            params: Mapping[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Run on the emulator at ``graph``'s sizes with ``graph``'s weights (or ``params``)."""
        return self.at(graph).run(inputs, graph.param_values if params is None else params, limits)

    def time(self, graph: AtenGraph) -> Timing:
        return self.at(graph).time()

    def files(self, graph: AtenGraph) -> dict[str, str]:
        return self.at(graph).files()

    @property
    def source_sha256(self) -> str | None:
        """The kernel text's digest (a single kernel only: what an evaluation records)."""
        return None

    @property
    def sockets(self) -> int:
        """How many sockets it runs on (a kernel's ``sockets`` line; a chain runs on one)."""
        return 1

    @property
    def bound_sizes(self) -> dict[str, int]:
        """Free sizes fixed by :meth:`configure` (a single kernel's tile sizes; none for a chain)."""
        return {}

    @property
    def plan_record(self) -> dict | None:
        """The fusion plan as recorded (a library entry's ``plan``); None for a kernel or the baseline."""
        return None


def kernel_node(kernel: "asp_lang.Kernel", machine: asp_lang.Machine):
    """The node a kernel with a ``sockets P = N`` line runs on: the machine's node cut to N
    sockets (``asp_lang.node.node_for``), so its collectives are charged at that node's links;
    None for a one-socket kernel, or a machine with no node preset (asp_lang's default links)."""
    if kernel.sockets is None:
        return None
    from asp_lang.errors import MachineError
    from asp_lang.node import node_for

    try:
        return node_for(machine.name, kernel.default_sizes().get(kernel.sockets))
    except MachineError:
        return None


class KernelSolution(Solution):
    """One ASP kernel for the whole task. :meth:`configure` binds it at the task's own sizes and
    fixes its free sizes (tile sizes); every later binding (checks, timing) reuses exactly those.
    A kernel for several sockets (a ``sockets`` line) binds the same way, on the machine's node
    (:func:`kernel_node`): the interpreter runs every socket's shard and the collectives, so it is
    checked against the task's single-device reference like any other kernel."""

    kind = "kernel"
    binds_on_shapes = True

    def __init__(self, source: str, filename: str, machine: asp_lang.Machine):
        super().__init__(machine)
        self.source, self.filename = source, filename
        self.kernel = asp_lang.parse(source, filename)
        self.node = kernel_node(self.kernel, machine)
        self.fixed: dict[str, int] | None = None

    def key(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def candidate(self) -> dict:
        return {"kind": "kernel", "source": self.source, "filename": self.filename}

    @property
    def source_sha256(self) -> str | None:
        return self.key()

    @property
    def sockets(self) -> int:
        k = self.kernel
        return 1 if k.sockets is None else int(k.default_sizes()[k.sockets])

    @property
    def bound_sizes(self) -> dict[str, int]:
        return dict(self.fixed or {})

    def _bind_key(self) -> tuple:
        return tuple(sorted((self.fixed or {}).items()))

    def _bind(self, graph: AtenGraph) -> Bound:
        BUILDS[self.kind] += 1
        _, prog = bind(self.kernel, graph, self.machine, self.filename, self.source, fixed=self.fixed,
                       node=self.node)
        return _KernelBound(graph, prog, self.source)

    def predicted_structure(self, shapes: Any) -> list[tuple]:
        """The structure at shapes predicted without a capture (a kernel binds on operand shapes
        alone, so the referee's check-size search can skip capturing the task at every guess)."""
        return [structure(bind(self.kernel, shapes, self.machine, self.filename, self.source, fixed=self.fixed,
                               node=self.node)[1])]

    def check_interface(self, graph: AtenGraph) -> None:
        """Raise the :class:`BindingError` binding at ``graph`` gives with free tile sizes."""
        bind(self.kernel, graph, self.machine, self.filename, self.source, node=self.node)

    def configure(self, own: AtenGraph) -> list[tuple]:
        """Bind at the task's own sizes (free sizes halved there if they must be) and fix them."""
        self.fixed = None
        binding, prog = bind(self.kernel, own, self.machine, self.filename, self.source, node=self.node)
        self.fixed = dict(binding.free)
        return [structure(prog)]


class ChainSolution(Solution):
    """A chain of kernels: a fusion plan realized by the author, or (``plan`` None) the op-by-op
    baseline, lowered afresh for each graph shape."""

    def __init__(self, plan: Any, machine: asp_lang.Machine):
        super().__init__(machine)
        from .author import Plan

        self.plan = None if plan is None else (plan if isinstance(plan, Plan) else Plan.from_dict(plan))
        self.kind = "baseline" if self.plan is None else "plan"
        # the plan as given (a record's digest covers it), and its canonical text (the cache key)
        self._record = None if self.plan is None else (dict(plan) if isinstance(plan, dict) else self.plan.to_dict())
        self._plan_json = None if self.plan is None else json.dumps(self.plan.to_dict(), sort_keys=True)

    def key(self) -> str:
        return "baseline" if self._plan_json is None else self._plan_json

    def candidate(self) -> dict:
        return {"kind": "baseline"} if self._record is None else {"kind": "plan", "plan": self._record}

    @property
    def plan_record(self) -> dict | None:
        return self._record

    def trusted(self, step: OpKernel) -> bool:
        # a plan's one-op regions are the baseline's lowering of that op (only its par is the
        # plan's, which replicates work and never changes what is computed); its fused kernels
        # are the plan's own code, held to the tiles they are timed with
        return self.plan is None or not step.target.startswith("fused.")

    def chain(self, graph: AtenGraph) -> Chain:
        return self.at(graph).chain  # type: ignore[attr-defined]

    def _bind(self, graph: AtenGraph) -> Bound:
        # chains (and their timings) are shared by every solution of the same plan on the same
        # machine: the baseline is timed once per task, whoever asks
        k = (self.key(), graph.structure_key, _machine_key(self.machine))
        with _LOCK:
            bound = _CHAINS.get(k)
            if bound is not None:
                _CHAINS.move_to_end(k)
                return bound
        BUILDS[self.kind] += 1
        if self.plan is None:
            chain = build_baseline(graph, self.machine)
        else:
            from .author import realize

            chain = realize(self.plan, graph, self.machine)
        bound = _ChainBound(chain, self.trusted, "op-by-op chain" if self.plan is None else None,
                            profiled=self.plan is not None)
        with _LOCK:
            _CHAINS[k] = bound
            while len(_CHAINS) > _CHAINS_KEEP:
                _CHAINS.popitem(last=False)
        return bound


def clear_caches() -> None:
    """Forget every shared chain (and its timing): the next binding of any plan builds again."""
    with _LOCK:
        _CHAINS.clear()


def plan_solution(plan: Any, machine: asp_lang.Machine) -> ChainSolution:
    """A fusion plan (an ``author.Plan`` or its dict) as a solution."""
    return ChainSolution(plan, machine)


def baseline_solution(machine: asp_lang.Machine) -> ChainSolution:
    """The op-by-op baseline chain as a solution."""
    return ChainSolution(None, machine)


def solution(candidate: Mapping[str, Any], machine: asp_lang.Machine) -> Solution:
    """The solution a serialised candidate describes: ``{"kind": "kernel", "source", "filename"}``,
    ``{"kind": "plan", "plan": {...}}`` or ``{"kind": "baseline"}``."""
    kind = candidate.get("kind")
    if kind == "kernel":
        return KernelSolution(candidate["source"], candidate.get("filename", "kernel.asp"), machine)
    if kind == "plan":
        return ChainSolution(candidate["plan"], machine)
    if kind == "baseline":
        return ChainSolution(None, machine)
    raise ValueError(f"unknown candidate kind {kind!r} (expected 'kernel', 'plan' or 'baseline')")
