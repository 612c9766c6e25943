"""JSON Schemas of the structured replies (planner plan, reflector verdict), and their checks.

The plan is a superset of agentforge.author's ``Plan`` JSON: ``regions`` (fusion groups, each
a template over semantic node indices with tiling/parallelism params) are what
``author.Plan.from_dict`` reads, so an LLM plan can also be realized by the offline author;
``strategy`` (how one fused kernel should stream the data) and ``rewrites`` (algorithmic
rewrites such as online softmax) guide the worker.

The schemas are "strict"-compatible (OpenAI structured outputs): every object lists all its
keys as required and forbids others; optional values are nullable. :func:`normalize_plan`
drops the nulls, so what the loop stores is plain author-compatible JSON.
"""

from __future__ import annotations

import copy
from typing import Any

from ..llm.validate import validate

PLAN_VERSION = 1

#: region params by template (agentforge.author's tuning knobs); a plan may set any of them
PARAM_KEYS = {
    "row": ("rows", "par", "par_mem"),
    "matmul": ("tm", "tn", "tk", "par", "par_mem", "par_epi"),
    "attention": ("tm", "tk", "par", "par_mem"),   # par_buf and kv_buf are left to the tuner
    "moe": ("tk", "par", "par_mem"),               # par_buf is left to the tuner
    "single": ("compute", "memory"),
}
TEMPLATES = tuple(PARAM_KEYS)
ALL_PARAM_KEYS = ("rows", "tm", "tn", "tk", "par", "par_mem", "par_epi", "compute", "memory")
PARAM_HELP = {
    "rows": "row template: rows per tile",
    "tm": "matmul: output tile rows; attention: query rows per block", "tn": "matmul: output tile columns",
    "tk": "matmul: reduction tile; attention: keys per block; moe: expert hidden columns per accum step",
    "par": "compute parallelism (PCUs) of the main map/accum",
    "par_mem": "memory parallelism (AGCUs) of loads/stores",
    "par_epi": "matmul: parallelism of the epilogue map",
    "compute": "single: compute parallelism", "memory": "single: memory parallelism",
}

_PARAMS = {
    "type": "object",
    "additionalProperties": False,
    "required": list(ALL_PARAM_KEYS),
    "properties": {k: {"type": ["integer", "null"], "minimum": 1, "description": PARAM_HELP[k]}
                   for k in ALL_PARAM_KEYS},
}

_REGION = {
    "type": "object",
    "additionalProperties": False,
    "required": ["template", "nodes", "params", "why"],
    "properties": {
        "template": {"type": "string", "enum": list(TEMPLATES)},
        "nodes": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0},
                  "description": "indices of the op graph's numbered nodes fused in this region"},
        "params": _PARAMS,
        "why": {"type": "string"},
    },
}

PLAN_SCHEMA: dict = {
    "title": "plan",
    "type": "object",
    "additionalProperties": False,
    "required": ["regions", "strategy", "rewrites", "notes"],
    "properties": {
        "regions": {"type": "array", "minItems": 1, "items": _REGION,
                    "description": "fusion groups, in graph order; each becomes one kernel of a chain"},
        "strategy": {"type": "string",
                     "description": "how ONE fused ASP kernel should stream the data: loads and tiles, "
                                    "maps/accums, buffers, parallelism"},
        "rewrites": {"type": "array", "items": {"type": "string"},
                     "description": "algorithmic rewrites, e.g. 'online softmax', 'fold bias into accum'"},
        "notes": {"type": "string"},
    },
}

REFLECTION_SCHEMA: dict = {
    "title": "reflection",
    "type": "object",
    "additionalProperties": False,
    "required": ["accept", "plan", "note"],
    "properties": {
        "accept": {"type": "boolean", "description": "true: stop, the candidate is good enough or nothing is left"},
        "plan": {"anyOf": [copy.deepcopy({k: v for k, v in PLAN_SCHEMA.items() if k != "title"}), {"type": "null"}],
                 "description": "the revised plan for the next attempt, or null to keep the current one"},
        "note": {"type": "string", "description": "what to change next, for the worker"},
    },
}


def normalize_plan(plan: dict) -> dict:
    """A validated reply plan as plain author-compatible JSON: nulls dropped, version added."""
    regions = []
    for r in plan.get("regions", []):
        params = {k: int(v) for k, v in (r.get("params") or {}).items() if v is not None}
        region = {"template": r["template"], "nodes": [int(i) for i in r["nodes"]], "params": params}
        if r.get("why"):
            region["why"] = r["why"]
        regions.append(region)
    return {"regions": regions, "strategy": plan.get("strategy", ""), "rewrites": list(plan.get("rewrites", [])),
            "notes": plan.get("notes", ""), "version": PLAN_VERSION}


def plan_problems(plan: Any, n_nodes: int | None = None) -> list[str]:
    """Schema errors, then semantic ones: node indices in range, no node in two regions,
    params that the region's template does not use. Empty: usable."""
    errors = validate(plan, PLAN_SCHEMA)
    if errors or n_nodes is None:
        return errors
    seen: dict[int, int] = {}
    for ri, r in enumerate(plan["regions"]):
        for i in r["nodes"]:
            if i >= n_nodes:
                errors.append(f"$.regions[{ri}].nodes: node {i} does not exist (the graph has nodes 0..{n_nodes - 1})")
            elif i in seen:
                errors.append(f"$.regions[{ri}].nodes: node {i} is already in region {seen[i]}")
            else:
                seen[i] = ri
        if r["template"] == "single" and len(r["nodes"]) != 1:
            errors.append(f"$.regions[{ri}]: a 'single' region holds exactly one node")
        unused = [k for k, v in r["params"].items() if v is not None and k not in PARAM_KEYS[r["template"]]]
        if unused:
            errors.append(f"$.regions[{ri}].params: {', '.join(unused)} unused by template {r['template']!r} "
                          f"(it reads {', '.join(PARAM_KEYS[r['template']])}); set them to null")
    return errors[:5]


def plan_checker(n_nodes: int):
    """A ``check`` callback for ``LLMClient.chat``: raises ValueError listing a plan's problems."""
    def check(value: Any) -> None:
        errs = plan_problems(value, n_nodes)
        if errs:
            raise ValueError("; ".join(errs))
    return check


def reflection_checker(n_nodes: int):
    def check(value: Any) -> None:
        errs = validate(value, REFLECTION_SCHEMA)
        if not errs and isinstance(value.get("plan"), dict):
            errs = [e.replace("$", "$.plan", 1) for e in plan_problems(value["plan"], n_nodes)]
        if errs:
            raise ValueError("; ".join(errs))
    return check


__all__ = ["PLAN_SCHEMA", "REFLECTION_SCHEMA", "PLAN_VERSION", "PARAM_KEYS", "normalize_plan", "plan_problems",
           "plan_checker", "reflection_checker"]
