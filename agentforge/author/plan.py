"""The plan model: regions of semantic nodes, each a template with its parameters.

A plan refers to nodes by their semantic index (:func:`agentforge.author.graph.semantic_nodes`),
so it applies at every size of a task and to every task with the same signature. It is
JSON-serialisable (the plan cache and the library store it); :meth:`Plan.from_dict` is the one
place a plan dict is parsed, and :func:`validate_plan` checks a plan from elsewhere (the LLM
planner, a cache) against the templates and a graph before anything realises it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..capture import AtenGraph
from .graph import const_and_alias_steps, semantic_nodes
from .templates import TEMPLATES

PLAN_VERSION = 1


@dataclass
class Region:
    """One kernel of a plan: a template over semantic node indices, with the parameters it takes."""
    template: str                 # a name in TEMPLATES: "row" | "matmul" | "attention" | "moe" | "single"
    nodes: list[int]              # semantic node indices (see semantic_nodes)
    params: dict = field(default_factory=dict)


@dataclass
class Plan:
    """The regions of a task's graph, in graph order: one kernel each."""
    regions: list[Region]
    version: int = PLAN_VERSION
    notes: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Plan":
        if not isinstance(d, dict) or "regions" not in d:
            raise ValueError("a plan is an object with a 'regions' list")
        regions = []
        for r in d["regions"]:
            if r.get("template") not in TEMPLATES:
                raise ValueError(f"unknown region template {r.get('template')!r} ({', '.join(TEMPLATES)})")
            regions.append(Region(r["template"], [int(i) for i in r["nodes"]], dict(r.get("params", {}))))
        return Plan(regions, int(d.get("version", PLAN_VERSION)), str(d.get("notes", "")))

    @property
    def kernels(self) -> int:
        return len(self.regions)


def validate_plan(plan: "Plan | dict", graph: AtenGraph, cover: bool = True) -> list[str]:
    """Why ``plan`` does not fit the templates and ``graph`` (empty: it does): an unknown
    template, a parameter its template does not take or that is not a non-negative integer, a
    region without nodes, a node index out of range or in two regions, a 'single' region of
    several nodes, and (``cover``) a node that computes but is in no region. Realising the plan
    can still fail (a region the template cannot build at these sizes); this check is what can
    be said without building anything, in words a planner can act on."""
    if isinstance(plan, Plan):
        plan = plan.to_dict()
    if not isinstance(plan, dict) or not isinstance(plan.get("regions"), list):
        return ["a plan is an object with a 'regions' list"]
    sem = semantic_nodes(graph)
    n = len(sem)
    problems: list[str] = []
    seen: dict[int, int] = {}
    for ri, r in enumerate(plan["regions"]):
        if not isinstance(r, dict):
            problems.append(f"region {ri}: not an object with 'template', 'nodes' and 'params'")
            continue
        name = r.get("template")
        template = TEMPLATES.get(name) if isinstance(name, str) else None
        if template is None:
            problems.append(f"region {ri}: unknown template {name!r} (one of {', '.join(TEMPLATES)})")
        nodes = r.get("nodes")
        if not isinstance(nodes, list) or not nodes:
            problems.append(f"region {ri}: 'nodes' must be a non-empty list of node indices")
            nodes = []
        for i in nodes:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n:
                problems.append(f"region {ri}: node {i!r} does not exist (the graph has nodes 0..{n - 1})")
            elif i in seen:
                problems.append(f"region {ri}: node {i} is already in region {seen[i]}")
            else:
                seen[i] = ri
        if name == "single" and len(nodes) > 1:
            problems.append(f"region {ri}: a 'single' region holds exactly one node")
        params = r.get("params", {})
        if not isinstance(params, dict):
            problems.append(f"region {ri}: 'params' must be an object")
            continue
        if template is not None:
            unknown = [k for k in params if k not in template.params]
            if unknown:
                problems.append(f"region {ri}: template {name!r} does not take {', '.join(map(str, unknown))} "
                                f"(it takes {', '.join(template.params)})")
        bad = [k for k, v in params.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
        if bad:
            problems.append(f"region {ri}: parameter(s) {', '.join(map(str, bad))} must be non-negative integers")
    if cover:
        fixed, _ = const_and_alias_steps(graph)
        loose = [f"[{i}] {node.name}" for i, node in enumerate(sem) if i not in seen and node.name not in fixed]
        if loose:
            problems.append(f"node(s) {', '.join(loose)} are in no region: every node that computes must be in one "
                            f"(a 'single' region runs one op as the baseline does)")
    return problems
