"""The op-by-op baseline: every ATen op of a task as its own ASP kernel, intermediates
through HBM, the way an instruction-driven accelerator runs a model.

It is the bar every generated kernel must beat, so it must be correct (it is verified like
any candidate) and honestly timed: each kernel is profiled at the task's own sizes and every
switch between kernels pays the machine's reconfiguration cost. The chain it builds is a
:class:`agentforge.chain.Chain`, the same class a realized fusion plan is.
"""

from __future__ import annotations

import asp_lang
from asp_lang import Machine

from .aten import AtenGraph
from .chain import Chain
from .lowering import Alias, Const, Step, UnsupportedOpError, lower_node

__all__ = ["build_baseline", "lower_steps"]


def lower_steps(graph: AtenGraph, skip: dict[str, str] | None = None) -> list[Step]:
    """Every node of ``graph`` as its own step. Unsupported ops raise UnsupportedOpError naming the
    op, unless ``skip`` is given: then the node is left out and ``skip[node] = why`` (partial
    lowering, for reports of models only partly covered)."""
    constants: set[str] = set()
    steps: list[Step] = []
    for node in graph.nodes:
        if node.target == "getitem":
            src, idx = node.args[0], node.args[1]
            steps.append(Alias(node.name, node.target, f"{src.name}.{idx}", node.name))
            if f"{src.name}.{idx}" in constants:
                constants.add(node.name)
            continue
        try:
            step = lower_node(node, graph, constants)
        except Exception as e:  # noqa: BLE001 - re-raised unless the caller collects what was skipped
            if skip is None:
                raise
            skip[node.name] = str(e) if isinstance(e, UnsupportedOpError) else f"{type(e).__name__}: {e}"
            continue
        if isinstance(step, Const):
            constants.update(o.name for o in node.outs)
        steps.append(step)
    return steps


def build_baseline(graph: AtenGraph, machine: Machine | str = "sn40l") -> Chain:
    """Lower every node of ``graph``; unsupported ops raise UnsupportedOpError naming the op."""
    m = machine if isinstance(machine, Machine) else asp_lang.load_machine(machine)
    return Chain(graph, lower_steps(graph), m)
