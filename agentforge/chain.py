"""A chain of ASP kernels for one captured graph: run step by step on the emulator, timed kernel
by kernel with the machine's reconfiguration cost between kernels.

Every answer that is not a single kernel is a chain: the op-by-op baseline (every ATen op its
own kernel, :mod:`agentforge.baseline`) and a fusion plan realized by the author. Steps come
from :mod:`agentforge.lowering` (a kernel, a host-evaluated constant, or an alias of another
value). ``tune_par`` (the baseline) gives each kernel the parallelism that makes it fastest on
the machine within one configuration (:meth:`agentforge.lowering.OpKernel.with_par`); a plan's kernels carry their own.
The per-op roofline and latency (:func:`op_roofline_seconds`, :func:`kernel_latency_seconds`)
are what each kernel's row in :meth:`Chain.time` is judged against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

import asp_lang
from asp_lang import AspError, Machine

from .aten import AtenGraph, AtenNode, Ref
from .bridge import to_asp, to_numpy, to_torch, torch_dtype
from .lowering import PAR_BESIDE_MATMUL, Alias, Const, OpKernel, Step
from .signature import node_flops

__all__ = ["Chain", "ChainTiming", "eval_const", "op_roofline_seconds", "kernel_latency_seconds",
           "PAR_COMPUTE", "PAR_MEMORY", "PAR_BESIDE_MATMUL"]


def _to_torch_arg(v: Any, env: dict[str, torch.Tensor]) -> Any:
    if isinstance(v, Ref):
        return env[v.name]
    if isinstance(v, list):
        return [_to_torch_arg(x, env) for x in v]
    if isinstance(v, tuple):
        return tuple(_to_torch_arg(x, env) for x in v)
    return v


def _torch_kwargs(kwargs: dict, env) -> dict:
    out = {}
    for k, v in kwargs.items():
        if k == "dtype" and isinstance(v, str):
            out[k] = torch_dtype(v)
        elif k == "device":
            out[k] = torch.device("cpu")
        elif k == "layout":
            out[k] = torch.strided
        elif k == "memory_format":
            out[k] = torch.contiguous_format if v else None
        else:
            out[k] = _to_torch_arg(v, env)
    return out


def eval_const(node: AtenNode, env: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Evaluate a data-independent node on the host (it becomes a tensor preloaded in HBM)."""
    ns, name, overload = node.target.split(".")
    op = getattr(getattr(getattr(torch.ops, ns), name), overload)
    res = op(*_to_torch_arg(node.args, env), **_torch_kwargs(node.kwargs, env))
    return list(res) if isinstance(res, (tuple, list)) else [res]


@dataclass
class ChainTiming:
    seconds: float
    cycles: float
    hbm_bytes: float
    kernels: list[dict]
    reconfigurations: int


@dataclass
class Chain:
    """A chain of ASP kernels for one captured graph, run and timed kernel by kernel with every
    intermediate through HBM: the op-by-op baseline (:func:`agentforge.baseline.build_baseline`)
    and a realized fusion plan (:func:`agentforge.author.realize`) alike."""
    graph: AtenGraph
    steps: list[Step]
    machine: Machine
    tune_par: bool = True   # the op-by-op baseline picks each kernel's parallelism; plans carry their own
    _programs: dict[int, Any] = field(default_factory=dict, repr=False)

    @property
    def kernels(self) -> list[OpKernel]:
        return [s for s in self.steps if isinstance(s, OpKernel)]

    def program(self, i: int, step: OpKernel):
        if i not in self._programs:
            try:
                self._programs[i] = asp_lang.compile(step.source, self.machine, filename=f"{step.node}.asp")
            except AspError as e:
                # the op-by-op baseline fits the machine it runs on (par never changes results):
                # a default par larger than this machine's units falls back to the smallest
                if not (self.tune_par and e.kind == "ResourceError"):
                    raise
                self._programs[i] = asp_lang.compile(step.with_par(PAR_COMPUTE[0], PAR_MEMORY[0]),
                                                     self.machine, filename=f"{step.node}.asp")
        return self._programs[i]

    def run(self, inputs: list[torch.Tensor], params: Mapping[str, torch.Tensor] | None = None,
            limits: asp_lang.Limits | None = None) -> list[torch.Tensor]:
        """Run the chain on the emulator; returns the graph's outputs as tensors."""
        g = self.graph
        params = dict(g.param_values if params is None else params)
        tenv: dict[str, torch.Tensor] = {}
        for spec, t in zip(g.inputs, inputs):
            tenv[spec.name] = t
        for spec in g.params:
            tenv[spec.name] = params[spec.name]
        env: dict[str, np.ndarray] = {k: to_numpy(v) for k, v in tenv.items()}
        node_by_name = {n.name: n for n in g.nodes}
        out_specs = {o.name: o for n in g.nodes for o in n.outs}
        out_specs.update({n.name: n.outs[0] for n in g.nodes})
        for i, step in enumerate(self.steps):
            node = node_by_name[step.node]
            if isinstance(step, Const):
                for r in node.refs():
                    if r.name in tenv:
                        continue
                    spec = g.spec(r)
                    if r.name in env:
                        tenv[r.name] = to_torch(env[r.name], spec.dtype)
                    else:  # a *_like constant reads only the shape of a value not computed yet
                        tenv[r.name] = torch.empty(spec.shape, dtype=torch_dtype(spec.dtype))
                for spec, val in zip(node.outs, eval_const(node, tenv)):
                    tenv[spec.name] = val
                    env[spec.name] = to_numpy(val)
            elif isinstance(step, Alias):
                src = env[step.source]
                spec = node.outs[0]
                env[spec.name] = src.reshape(spec.shape)
                if step.source in tenv:
                    tenv[spec.name] = tenv[step.source].reshape(spec.shape)
            else:
                prog = self.program(i, step)
                feed = {pname: to_asp(env[name], view)
                        for pname, name, view in zip(prog.params, step.inputs, step.input_views)}
                outs = asp_lang.run(prog, feed, limits)
                for rname, name in zip(prog.results, step.outputs):
                    env[name] = outs[rname].reshape(out_specs[name].shape)
        result = []
        for ref in g.outputs:
            spec = g.spec(ref)
            result.append(to_torch(env[ref.name], spec.dtype).reshape(spec.shape))
        return result

    def time(self) -> ChainTiming:
        """Profile every kernel at this graph's sizes (no data needed) and add reconfigurations.

        Each kernel gets the parallelism that makes it fastest on this machine within one
        configuration (a fair bar: the baseline loses by running op by op, not by being
        under-provisioned).
        """
        cycles = 0.0
        hbm = 0.0
        rows = []
        for i, step in enumerate(self.steps):
            if not isinstance(step, OpKernel):
                continue
            rep, par = self._fastest(step)
            cycles += rep.cycles
            hbm += rep.hbm_bytes
            op_roof = op_roofline_seconds(self.graph, step, self.machine)
            rows.append({"node": step.node, "target": step.target, "seconds": rep.seconds,
                         "hbm_bytes": rep.hbm_bytes, "roofline_fraction": rep.roofline_fraction,
                         "op_roofline_seconds": op_roof, "op_roofline_fraction": op_roof / rep.seconds,
                         "op_bound_fraction": min(1.0, (op_roof + kernel_latency_seconds(self.machine)) / rep.seconds),
                         "bottleneck": rep.bottleneck, "par": par})
        reconf = max(0, len(rows) - 1)
        cycles += reconf * self.machine.reconfig.cycles
        return ChainTiming(cycles / (self.machine.clock_ghz * 1e9), cycles, hbm, rows, reconf)

    def _fastest(self, step: OpKernel):
        if not self.tune_par:
            prog = self.program(self.steps.index(step), step)
            return asp_lang.profile(prog), None
        best = sectioned = None
        for c in PAR_COMPUTE:
            for m in PAR_MEMORY:
                try:
                    prog = asp_lang.compile(step.with_par(c, m), self.machine, filename=f"{step.node}.asp")
                except AspError as e:
                    if e.kind == "ResourceError":  # more units than this machine has: not a choice here
                        continue
                    raise
                rep = asp_lang.profile(prog)
                if len(prog.sections) > 1:
                    if sectioned is None or rep.cycles < sectioned[0].cycles:
                        sectioned = (rep, {"compute": c, "memory": m})
                    continue
                if best is None or rep.cycles < best[0].cycles:
                    best = (rep, {"compute": c, "memory": m})
        if best is None and sectioned is not None:  # nothing fits one configuration: the fastest sectioned
            return sectioned
        if best is None:
            return asp_lang.profile(self.program(self.steps.index(step), step)), {"compute": 16, "memory": 4}
        return best

    def sources(self) -> dict[str, str]:
        """ASP text of every kernel, by node name (what `agentforge baseline -o DIR` writes)."""
        return {k.node: k.source for k in self.kernels}


def op_roofline_seconds(graph: AtenGraph, step: OpKernel, machine: Machine) -> float:
    """The fastest any kernel for this one op can run on ``machine``: its operands read once and
    its results written once at full HBM bandwidth, or its FLOPs at the best peak its dtypes
    allow, whichever is longer.

    This is the yardstick's own yardstick: the op-by-op baseline should be what a competent
    instruction-driven accelerator does (every op its own kernel, each near this bound), so a
    kernel far below it is a bad lowering, not a property of running op by op. Unlike
    ``Report.roofline_fraction`` it does not count the kernel's own (possibly wasted) work."""
    specs = dict(graph.spec_table)
    for n in graph.nodes:
        for o in n.outs:
            specs.setdefault(o.name, o)
    names = list(dict.fromkeys(step.inputs)) + list(dict.fromkeys(step.outputs))
    nbytes = sum(specs[n].asp_nbytes for n in names)
    node = graph.node(step.node)
    operands = [specs[r.name] for r in node.refs()]
    flops = float(node_flops(node, operands))
    dtypes = {specs[n].dtype for n in names}
    peak = max(machine.peak_tflops("bf16" if d in ("bf16", "f16") else "f32") for d in dtypes or {"f32"})
    return max(nbytes / (machine.hbm.bandwidth_gbs * 1e9), flops / (peak * 1e12))


def kernel_latency_seconds(machine: Machine) -> float:
    """The least time any kernel that reads HBM and writes HBM takes beyond its roofline: its
    first read's latency and its last write's (nothing overlaps them within one kernel). A tiny
    op (a [tokens, 1] rsqrt) is bound by this, not by its bytes; the audit judges a kernel
    against roofline + this, so it flags bad lowerings, not small tensors."""
    return 2 * machine.latency_cycles("hbm") / (machine.clock_ghz * 1e9)


PAR_COMPUTE = (4, 16, 64, 256, 960)
PAR_MEMORY = (2, 8)
