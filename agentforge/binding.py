"""Binding a candidate kernel to a task: which tensor goes to which parameter, at what sizes.

A kernel's parameters take, in order, the task's inputs (``get_inputs()`` order) and then
the model's parameters and buffers (capture order); its results are the model's outputs in
order. Size names used in parameter shapes are solved from the actual shapes. Other sizes
(tile sizes, typically: the kernel's *free* sizes) keep the kernel's defaults; where a default
does not divide the task's dimensions at its own (timed) sizes, it is halved until it does.

The verifier binds a kernel once at the task's own sizes and then passes those free sizes as
``fixed`` to every check, so the configuration that is checked is exactly the one that is
timed (docs/evaluation.md, "the checked configuration is the timed one"): with ``fixed`` no
size is ever halved, and a check size the fixed tiles do not divide is an error, not a
silent retiling.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asp_lang
from asp_lang.checker import bind_sizes
from asp_lang.consts import eval_int
from asp_lang.errors import AspError, SizeError
from asp_lang.ir import Kernel, Name, names

from .capture import AtenGraph, TensorSpec

# task dtype -> the ASP dtype a kernel must declare for it
KERNEL_DTYPE = {"f32": "f32", "bf16": "bf16", "f16": "f16", "i64": "i32", "i32": "i32", "bool": "bool"}


class BindingError(Exception):
    """The kernel's interface does not fit the task (a rejection reason, not a crash).

    ``code`` is the verifier's reason code: ``"shape"`` when a declared *result* has another
    shape than the task's output, ``"interface"`` otherwise."""

    def __init__(self, message: str, code: str = "interface"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Binding:
    sizes: dict[str, int]
    inputs: list[TensorSpec]       # graph values bound to the kernel's parameters, in order
    outputs: list[TensorSpec]
    free: dict[str, int] = field(default_factory=dict)   # sizes not solved from shapes (tiles)


def graph_operands(graph: AtenGraph) -> list[TensorSpec]:
    return list(graph.inputs) + list(graph.params)


def _solve_shapes(kernel: Kernel, specs: list[TensorSpec], outs: list[TensorSpec]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    decls = list(kernel.params) + list(kernel.results)
    actual = list(specs) + list(outs)
    for i, (p, spec) in enumerate(zip(decls, actual)):
        shape = spec.shape or (1,)
        code = "shape" if i >= len(kernel.params) else "interface"
        if len(p.shape) != len(shape):
            raise BindingError(f"'{p.name}' is declared with rank {len(p.shape)} but the task's "
                               f"'{spec.name}' has shape {list(spec.shape)}", code)
        for e, n in zip(p.shape, shape):
            if isinstance(e, Name):
                if sizes.get(e.id, n) != n:
                    raise BindingError(f"size {e.id} would be both {sizes[e.id]} and {n} "
                                       f"('{p.name}' vs the task's '{spec.name}')", code)
                sizes[e.id] = n
    return sizes


def bind(kernel: Kernel, graph: AtenGraph, machine, filename: str = "<kernel>", source: str | None = None,
         max_tries: int = 40, fixed: dict[str, int] | None = None, node=None) -> tuple[Binding, "asp_lang.Program"]:
    """Match ``kernel`` to ``graph`` and return the binding and the checked program.

    ``fixed`` binds the free sizes exactly (the values a timed binding chose): nothing is
    halved, so the program is the timed configuration at this graph's sizes or an error.
    ``node`` gives the peer links of a kernel with a ``sockets`` line (asp_lang.node); its
    socket count is never halved (a kernel for 2 sockets does not quietly become one for 1)."""
    specs = graph_operands(graph)
    outs = graph.output_specs
    if len(kernel.params) != len(specs):
        names = ", ".join(f"{s.name}{list(s.shape)}" for s in specs)
        raise BindingError(f"the kernel has {len(kernel.params)} parameter(s) but the task provides "
                           f"{len(specs)}: {names} (inputs first, then the model's weights)")
    if len(kernel.results) != len(outs):
        raise BindingError(f"the kernel has {len(kernel.results)} result(s) but the task has {len(outs)} output(s)")
    for p, s in zip(list(kernel.params) + list(kernel.results), specs + outs):
        want = KERNEL_DTYPE.get(s.dtype)
        if want is None:
            raise BindingError(f"the task's '{s.name}' has dtype {s.dtype}, which ASP cannot hold")
        if p.dtype != want:
            raise BindingError(f"'{p.name}' is declared {p.dtype} but the task's '{s.name}' is {s.dtype} "
                               f"(declare {want}; computing in another precision is not allowed)")
    solved = _solve_shapes(kernel, specs, outs)
    defaults = kernel.default_sizes()
    free = {k: v for k, v in defaults.items() if k not in solved}
    if fixed is not None:
        free = {k: fixed.get(k, v) for k, v in free.items()}
        max_tries = 1
    for attempt in range(max_tries):
        sizes = {**free, **solved}
        try:
            bind_sizes(kernel, sizes)
            for i, (p, spec) in enumerate(zip(list(kernel.params) + list(kernel.results), specs + outs)):
                got = tuple(eval_int(e, sizes) for e in p.shape)
                if got != (spec.shape or (1,)):
                    raise BindingError(f"'{p.name}' has shape {list(got)} at sizes {sizes} but the task's "
                                       f"'{spec.name}' is {list(spec.shape)}",
                                       "shape" if i >= len(kernel.params) else "interface")
            prog = asp_lang.check(kernel, machine, sizes, filename, source, node=node)
            return Binding(sizes, specs, outs, dict(free)), prog
        except SizeError as e:
            culprit = None if fixed is not None else _shrinkable(e, kernel, free)
            if culprit is None:
                raise e.located(filename, source) from None
            free[culprit] //= 2
        except AspError as e:  # bind_sizes and eval_int know only spans: name the file (file:line:col)
            raise e.located(filename, source) from None
    raise BindingError(f"no tile sizes dividing the task's sizes were found from the defaults {defaults}")


def _shrinkable(err: AspError, kernel: Kernel, free: dict[str, int]) -> str | None:
    """A free size used on the failing line, the largest first (halving it is the fix we try)."""
    line = err.span.line
    used = set()
    for st in kernel.body:
        if st.call.span.line == line or st.span.line == line:
            used |= names(st.call)
    cands = [k for k in free if k in used and free[k] > 1 and k != kernel.sockets]
    if not cands:
        cands = [k for k in free if free[k] > 1 and f"{free[k]}" in err.message and k != kernel.sockets]
    return max(cands, key=lambda k: free[k]) if cands else None
