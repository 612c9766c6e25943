"""The template interface, and the bookkeeping every fused-region template shares.

A :class:`Template` is what the rest of the author knows about a kernel template: its name,
the parameters it takes with the values the tuner tries (``grid``), how many timing
evaluations the tuner spends on it at least, and ``kernel``, which builds the ASP kernel (a
:class:`agentforge.lowering.Step`) for one region of a plan. :class:`RegionCode` is the shared
part of the fused templates: which values enter and leave a region, and their expressions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ...capture import AtenGraph, AtenNode
from ...lowering import Alias, Const, Step, UnsupportedOpError
from ..graph import semantic_nodes

if TYPE_CHECKING:
    from ..plan import Region

#: builds one region's kernel: (region, its nodes in order, graph, the graph's constant and relabel
#: steps by value, value -> region index, this region's index, value -> its readers, graph outputs)
KernelFn = Callable[["Region", list[AtenNode], AtenGraph, dict[str, Step], dict[str, int], int,
                     dict[str, set[str]], set[str]], Step]


@dataclass(frozen=True)
class Template:
    """One kernel template of the author."""
    name: str
    #: every parameter the template takes -> the values the tuner tries (the first is where a
    #: coordinate-descent search starts)
    grid: dict[str, tuple]
    kernel: KernelFn
    #: timing evaluations the tuner spends on one region at least (0: its share of the budget)
    min_tries: int = 0
    #: searched exhaustively (min_tries is then the whole grid)
    whole_grid: bool = False

    @property
    def params(self) -> tuple[str, ...]:
        """The parameters a region of this template may set (the rest take the template's default)."""
        return tuple(self.grid)


def built_by(cls: type) -> KernelFn:
    """A :data:`KernelFn` from a :class:`RegionCode` subclass with a ``build()``."""
    def kernel(*args) -> Step:
        return cls(*args).build()
    kernel.__name__ = kernel.__qualname__ = f"{cls.__name__}.build"
    return kernel


class RegionCode:
    """Shared bookkeeping: which values enter and leave a region, and their expressions."""

    def __init__(self, region, nodes, graph, fixed, owner, ri, consumers, outputs):
        self.region, self.nodes, self.g = region, nodes, graph
        self.fixed, self.owner, self.ri = fixed, owner, ri
        self.consumers, self.graph_outputs = consumers, outputs
        self.expr: dict[str, str] = {}
        self.lets: list[tuple[str, str]] = []
        self.inside: set[str] = set()
        for n in nodes:
            self.inside.add(n.name)
            self.inside.update(o.name for o in n.outs)
        self.n = 0

    def whole_match(self, matches, what: str):
        """The pattern match (attention, MoE, ...) this region is exactly: the one that ends at one of
        its nodes and covers all of them, else the plan does not fit this graph."""
        sem = semantic_nodes(self.g)
        names = {n.name for n in self.nodes}
        m = next((m for m in matches if m.out.name in names), None)
        if m is None or {sem[i].name for i in m.nodes} != names:
            raise UnsupportedOpError(f"plan does not fit this graph: the region is not a whole {what}")
        return m

    def root(self, v: str) -> str:
        while v in self.fixed and isinstance(self.fixed[v], Alias) and self.fixed[v].source not in self.inside:
            src = self.fixed[v].source
            if src == v:
                break
            v = src
        return v

    def resolve(self, v: str) -> str:
        """Follow aliases back to a region value (aliases inside a region are free)."""
        seen = 0
        while v not in self.inside and v in self.fixed and isinstance(self.fixed[v], Alias) and seen < 64:
            v = self.fixed[v].source
            seen += 1
        return v

    def let(self, e: str, base: str = "v") -> str:
        self.n += 1
        name = f"{base}{self.n}"
        self.lets.append((name, e))
        return name

    def used_outside(self, value: str) -> bool:
        todo, seen = [value], set()
        while todo:
            v = todo.pop()
            if v in seen:
                continue
            seen.add(v)
            if v in self.graph_outputs:
                return True
            for c in self.consumers.get(v, ()):
                if c in self.inside:
                    continue
                step = self.fixed.get(c)
                if isinstance(step, Alias):
                    todo.append(c)
                elif not isinstance(step, Const):  # a constant (zeros_like...) reads only the shape
                    return True
        return False
