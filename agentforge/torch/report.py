"""What a model would cost on the chip with the library: offloaded ops, eager ops and why, and
the simulated time and HBM traffic next to the same model run op by op on the chip.

How the numbers are made (all by the emulator's timing model, at the model's own shapes, no
data): each offloaded region is the library kernel (or fused chain) chosen for its verified
problem, profiled at those sizes; every other op is lowered to its own op-by-op kernel
(agentforge.baseline) and profiled the same way, as the chip would run the rest. The op-by-op
column is the whole model lowered op by op. Every switch between kernels pays the machine's
reconfiguration cost in both columns. Ops the op-by-op lowering cannot express are listed
and left out of both totals (so the comparison stays like for like).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from agentforge.canonical import canonical_export
from agentforge.chain import Chain
from agentforge.errors import AgentforgeError
from agentforge.capture import AtenGraph
from agentforge.torch.backend import BackendConfig, get_library
from agentforge.torch.match import OffloadPlan, export_graph, plan_offload

__all__ = ["OffloadReport", "RegionRow", "EagerRow", "report", "load_model_file"]


@dataclass
class RegionRow:
    op: str                       # torch.ops.<ns>.<op>
    kernel: str                   # the library entry id
    kind: str                     # "kernel" | "plan" (a fused chain)
    sizes: dict[str, int]         # the verified task sizes it runs at
    ops: int                      # model ops it replaces (not counting views/copies)
    nodes: list[str]
    chip_seconds: float
    chip_hbm_bytes: float
    op_by_op_seconds: float       # the same model ops, each its own kernel
    op_by_op_hbm_bytes: float

    @property
    def speedup(self) -> float:
        return self.op_by_op_seconds / self.chip_seconds if self.chip_seconds else 0.0


@dataclass
class EagerRow:
    node: str
    kind: str
    reason: str


@dataclass
class OffloadReport:
    """The offload of one model: see the module docstring for how each number is measured."""
    model: str
    machine: str
    library: str
    regions: list[RegionRow]
    eager: list[EagerRow]                          # computing ops left to PyTorch (views/copies counted apart)
    eager_views: int
    not_lowerable: dict[str, str]                  # node -> why the chip's op-by-op lowering lacks it
    chip_seconds: float
    chip_hbm_bytes: float
    op_by_op_seconds: float
    op_by_op_hbm_bytes: float
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.op_by_op_seconds / self.chip_seconds if self.chip_seconds else 0.0

    @property
    def offloaded_ops(self) -> list[str]:
        return [r.op for r in self.regions]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["speedup"] = self.speedup
        for r, row in zip(d["regions"], self.regions):
            r["speedup"] = row.speedup
        return d

    def __str__(self) -> str:
        us = 1e6
        lines = [f"agentforge report: {self.model} on {self.machine} (library {self.library})"]
        if self.error:
            lines.append(f"  nothing offloaded: {self.error}")
        n_off = sum(r.ops for r in self.regions)
        lines.append(f"offloaded: {len(self.regions)} library call(s) covering {n_off} op(s)")
        if self.regions:
            lines.append(f"  {'op':<40} {'kernel':<34} {'ops':>4} {'chip us':>10} {'op-by-op us':>12} "
                         f"{'speedup':>8} {'HBM KB':>9}")
            for r in self.regions:
                lines.append(f"  {r.op:<40} {r.kernel:<34} {r.ops:>4} {r.chip_seconds * us:>10.3f} "
                             f"{r.op_by_op_seconds * us:>12.3f} {r.speedup:>7.2f}x {r.chip_hbm_bytes / 1024:>9.1f}")
        lines.append(f"ran eagerly: {len(self.eager)} op(s) (+ {self.eager_views} view/copy op(s))")
        by_reason: dict[str, list[str]] = {}
        for e in self.eager:
            by_reason.setdefault(e.reason, []).append(f"{e.node}({e.kind})")
        for reason, nodes in by_reason.items():
            shown = ", ".join(nodes[:8]) + (f", ... {len(nodes) - 8} more" if len(nodes) > 8 else "")
            lines.append(f"  {shown}: {reason}")
        if self.not_lowerable:
            lines.append(f"not expressible op by op on the chip (left out of both totals): "
                         f"{', '.join(sorted(self.not_lowerable))}")
        lines.append(f"chip time: {self.chip_seconds * us:.3f} us with the library vs {self.op_by_op_seconds * us:.3f} us "
                     f"op by op ({self.speedup:.2f}x); HBM {self.chip_hbm_bytes / 1024:.1f} KB vs "
                     f"{self.op_by_op_hbm_bytes / 1024:.1f} KB")
        return "\n".join(lines)


def _op_by_op(graph: AtenGraph, machine: Any) -> tuple[dict[str, dict], dict[str, str], float]:
    """Per-node op-by-op kernel timings (rows by node), the nodes that cannot be lowered, reconfig seconds."""
    from agentforge.baseline import lower_steps

    missing: dict[str, str] = {}
    steps = lower_steps(graph, skip=missing)
    t = Chain(graph, steps, machine).time()
    rows = {r["node"]: r for r in t.kernels}
    reconf = machine.reconfig.cycles / (machine.clock_ghz * 1e9)
    return rows, missing, reconf


def build_report(plan: OffloadPlan, machine: Any, model_name: str, library: str) -> OffloadReport:
    """Time ``plan``'s regions and the rest of its graph on ``machine`` (see the module docstring)."""
    rows, missing, reconf = _op_by_op(plan.graph, machine)
    taken: set[str] = set()
    regions = []
    for r in plan.regions:
        fam, v = r.family, r.verified
        obo = [rows[n] for n in r.nodes if n in rows]
        obo_s = sum(x["seconds"] for x in obo) + max(0, len(obo) - 1) * reconf
        regions.append(RegionRow(r.op, v.entry.id, v.entry.kind, dict(v.sizes), len(r.semantic), sorted(r.nodes),
                                 fam.seconds(v), fam.hbm_bytes(v), obo_s, sum(x["hbm_bytes"] for x in obo)))
        taken |= r.nodes
    rest = [rows[n] for n in rows if n not in taken]
    units = len(regions) + len(rest)
    chip_s = sum(r.chip_seconds for r in regions) + sum(x["seconds"] for x in rest) + max(0, units - 1) * reconf
    chip_b = sum(r.chip_hbm_bytes for r in regions) + sum(x["hbm_bytes"] for x in rest)
    all_s = sum(x["seconds"] for x in rows.values()) + max(0, len(rows) - 1) * reconf
    all_b = sum(x["hbm_bytes"] for x in rows.values())
    # EagerOp.view is the plan's classification: copies, element picks (getitem) and schema aliases
    # (match.plan_offload; it covers what GraphView.transparent says of these nodes). _VIEW_KINDS adds
    # the kinds op_kind folds into view/permute/expand that are no alias (_unsafe_view, reshape: they
    # may copy, but compute nothing).
    computing = [e for e in plan.eager if not (e.view or e.kind in _VIEW_KINDS)]
    eager = [EagerRow(e.node, e.kind, e.reason if e.node not in missing else
                      f"{e.reason}; the chip's op-by-op lowering lacks it too") for e in computing]
    return OffloadReport(model_name, machine.name, library, regions, eager, len(plan.eager) - len(computing),
                         missing, chip_s, chip_b, all_s, all_b)


_VIEW_KINDS = frozenset({"view", "permute", "expand", "getitem", "clone", "alias", "detach"})


def report(model: torch.nn.Module, inputs: Sequence[Any], *, library: str | os.PathLike[str] | None = None,
           machine: str | None = None, namespace: str | None = None,
           options: Mapping[str, Any] | None = None) -> OffloadReport:
    """Which ops of ``model(*inputs)`` the library offloads, and the simulated chip time and HBM
    bytes next to the same model run op by op. Library and machine as for the backend
    (arguments, then ``options``, then agentforge.toml ``[torch]``)."""
    opts = dict(options or {})
    if library is not None:
        opts["library"] = str(library)
    if machine is not None:
        opts["machine"] = machine
    if namespace is not None:
        opts["namespace"] = namespace
    cfg = BackendConfig.resolve(opts)
    tl = get_library(cfg)
    name = type(model).__name__
    ep, graph = export_graph(_TensorOutputs(model), list(inputs), name)
    graph = canonical_export(ep, graph, name)       # the graph the backend plans
    plan = plan_offload(tl, ep, graph)
    return build_report(plan, tl.machine, name, str(tl.library.root))


class _TensorOutputs(torch.nn.Module):
    """``model`` returning only the tensors of its output (a causal LM's logits and hidden states,
    not its ``DynamicCache``): what the chip computes is tensors, and torch.export cannot return
    a cache object from a graph."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> Any:
        out = self.model(*args)
        if isinstance(out, torch.Tensor):
            return out
        if hasattr(out, "to_tuple"):           # transformers' ModelOutput (logits, past_key_values, ...)
            out = out.to_tuple()
        leaves, _ = torch.utils._pytree.tree_flatten(out)
        return tuple(x for x in leaves if isinstance(x, torch.Tensor))


def load_model_file(path: str | os.PathLike[str]) -> tuple[torch.nn.Module, list[Any]]:
    """A MODEL_FILE: a .py defining ``Model`` and ``get_inputs()`` (and optionally
    ``get_init_inputs()``, the constructor's arguments), like the tasks in evals/suite.
    Seeded (torch.manual_seed(0)) so that two reports of one file see the same weights."""
    from agentforge.torch.ops import TorchBridgeError

    p = Path(path)
    if not p.is_file():
        raise TorchBridgeError(f"{p}: no such model file\n  how to fix: pass a .py defining Model and get_inputs()")
    spec = importlib.util.spec_from_file_location(f"_agentforge_model_{abs(hash(str(p.resolve())))}", p)
    if spec is None or spec.loader is None:
        raise TorchBridgeError(f"{p}: not a Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    with torch.random.fork_rng():
        torch.manual_seed(0)
        with _user_code(p, "importing it"):
            spec.loader.exec_module(mod)
        for name in ("Model", "get_inputs"):
            if not hasattr(mod, name):
                raise TorchBridgeError(f"{p}: defines no {name}\n  how to fix: a model file defines `class Model` "
                                       f"and `def get_inputs()` (and `get_init_inputs()` for constructor arguments)")
        with _user_code(p, "calling get_init_inputs()"):
            init = list(mod.get_init_inputs()) if hasattr(mod, "get_init_inputs") else []
        with _user_code(p, "building Model(*get_init_inputs())"):
            model = mod.Model(*init).eval()
        with _user_code(p, "calling get_inputs()"):
            inputs = list(mod.get_inputs())
    return model, inputs


@contextmanager
def _user_code(path: Path, what: str) -> Iterator[None]:
    """Errors of the model file's own code are the user's to fix: a TorchBridgeError naming the
    file, the line and the error (not an internal error of agentforge)."""
    from agentforge.torch.ops import TorchBridgeError

    try:
        yield
    except AgentforgeError:
        raise
    except Exception as e:  # noqa: BLE001 - anything the user's code raises
        where = ""
        if isinstance(e, SyntaxError):
            where = f" (line {e.lineno})" if e.lineno else ""
            msg = f"{type(e).__name__}: {e.msg}{where}"
        else:
            mine = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == path.resolve()]
            where = f" at line {mine[-1].lineno} ({(mine[-1].line or '').strip()})" if mine else ""
            msg = f"{type(e).__name__}: {e}{where}"
        raise TorchBridgeError(f"{path}: {what} failed: {msg}\n  how to fix: correct the model file (it must "
                               f"define class Model and get_inputs(), like a suite task)") from e
