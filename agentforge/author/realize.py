"""Realisation: a plan and a captured graph give a chain of ASP kernels, one per region.

Constants and relabels (views, getitem) become the chain's non-kernel steps; each region is
built by its template (:data:`agentforge.author.templates.TEMPLATES`) where its last node
stands, and intermediates between regions go through HBM. Verification runs and times the chain.
"""

from __future__ import annotations

from dataclasses import dataclass

from asp_lang import Machine

from ..chain import Chain
from ..capture import AtenGraph, AtenNode
from ..lowering import Alias, Step, lower_node
from .graph import const_and_alias_steps, consumers_of, semantic_nodes
from .plan import Plan, Region
from .templates import TEMPLATES


@dataclass
class GraphIndex:
    """What realizing any plan on one graph needs to know about it, computed once."""
    sem: list[AtenNode]
    fixed: dict[str, Step]
    constants: set[str]
    consumers: dict[str, set[str]]
    outputs: set[str]


def graph_index(graph: AtenGraph) -> GraphIndex:
    """The graph's semantic nodes, constant and relabel steps, readers and outputs, computed once
    (the tuner and the plan cache time many plans on one graph)."""
    fixed, constants = const_and_alias_steps(graph)
    return GraphIndex(semantic_nodes(graph), fixed, constants, consumers_of(graph), {r.name for r in graph.outputs})


def realize(plan: Plan, graph: AtenGraph, machine: Machine) -> Chain:
    """The chain of kernels ``plan`` gives for ``graph``."""
    idx = graph_index(graph)
    sem, fixed, constants, consumers, outputs = idx.sem, idx.fixed, idx.constants, idx.consumers, idx.outputs
    owner: dict[str, int] = {}
    for ri, region in enumerate(plan.regions):
        for i in region.nodes:
            if not 0 <= i < len(sem):
                raise ValueError(f"plan refers to node {i}; the graph has {len(sem)}")
            owner[sem[i].name] = ri
    steps: list[Step] = []
    emitted: set[int] = set()
    last = {ri: max(graph.nodes.index(sem[i]) for i in reg.nodes) for ri, reg in enumerate(plan.regions)}
    by_pos = {pos: ri for ri, pos in last.items()}
    value_region = {o.name: owner[n.name] for n in graph.nodes if n.name in owner for o in n.outs}
    value_region.update({n.name: owner[n.name] for n in graph.nodes if n.name in owner})
    pending: dict[int, list[Step]] = {}
    for pos, node in enumerate(graph.nodes):
        if node.name in fixed:
            step = fixed[node.name]
            srcs = [step.source] if isinstance(step, Alias) else []  # constants never wait on data
            waiting = [value_region[v] for v in srcs if value_region.get(v) is not None
                       and value_region[v] not in emitted]
            src_region = max(waiting) if waiting else None
            if src_region is not None:
                # relabels a value its region has not produced yet: it follows the region's kernel
                value_region[node.name] = src_region
                pending.setdefault(src_region, []).append(step)
            else:
                steps.append(step)
        elif node.name not in owner:
            steps.append(lower_node(node, graph, constants))
        if pos in by_pos:
            ri = by_pos[pos]
            region = plan.regions[ri]
            nodes = [sem[i] for i in sorted(region.nodes)]
            kernel = region_kernel(region, nodes, graph, fixed, owner, ri, consumers, outputs)
            # a template may build a region as several kernels (grouped experts: sort and compute, then
            # combine), their intermediates through HBM like any chain's
            kernels = kernel if isinstance(kernel, list) else [kernel]
            steps.extend(kernels)
            emitted.add(ri)
            available = {v for k in kernels for v in [*getattr(k, "outputs", []), getattr(k, "output", None)]}
            for step in pending.pop(ri, []):
                if step.source in available:  # relabels of values kept inside the kernel are not needed
                    steps.append(step)
                    available.add(step.output)
    return Chain(graph, steps, machine, tune_par=False)


def region_kernel(region: Region, nodes: list[AtenNode], graph: AtenGraph, fixed: dict, owner: dict, ri: int,
                  consumers: dict, outputs: set) -> "Step | list[Step]":
    """The kernel of one region (or its kernels, in order, where the template needs several): built
    by the template the region names."""
    template = TEMPLATES.get(region.template)
    if template is None:
        raise ValueError(f"unknown region template {region.template!r} ({', '.join(TEMPLATES)})")
    return template.kernel(region, nodes, graph, fixed, owner, ri, consumers, outputs)
