"""The one-op template: a node lowered as the baseline lowers it, its parallelism searched."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...capture import AtenGraph, AtenNode
from ...lowering import OpKernel, Step, lower_node
from .base import Template

if TYPE_CHECKING:
    from ..plan import Region

SINGLE_GRID = {"compute": (4, 16, 64, 256), "memory": (2, 8)}


def single_kernel(region: "Region", nodes: list[AtenNode], graph: AtenGraph, *_context) -> Step:
    """The baseline's step for the region's one node; ``compute`` / ``memory`` set its ``par=``."""
    if len(nodes) != 1:
        raise ValueError("a 'single' region holds one node")
    step = lower_node(nodes[0], graph, set())
    if isinstance(step, OpKernel) and region.params:
        step.source = step.with_par(int(region.params.get("compute", 16)), int(region.params.get("memory", 4)))
    return step


TEMPLATE = Template("single", SINGLE_GRID, single_kernel)
