"""ASP: a streaming dataflow kernel language and an emulated RDU to run and time it.

Typical use::

    prog = asp_lang.compile(source, machine="sn40l", sizes={"N": 4096}, filename="k.asp")
    outs = asp_lang.run(prog, {"x": x})        # numbers (numpy)
    rep = asp_lang.profile(prog)               # cycles, bytes, utilisation, roofline
    rep = asp_lang.simulate(prog)              # the same, from the event-level model

asp_lang knows nothing of agents, LLMs or PyTorch.
"""

from __future__ import annotations

from pathlib import Path

# the operators, by family, into ops.OPS (first, so the registry keeps the order of the language
# reference: memory, compute, routing, then the multi-socket ones of collectives)
from . import ops_memory, ops_compute, ops_routing  # noqa: F401
from .checker import Program, bind_sizes
from .compiler import check
from .errors import ERROR_KINDS, AspError, Span
from .interp import Limits, random_inputs, run
from .ir import Kernel
from .machine import Machine, load_machine, presets
from .printer import format_kernel
from .syntax import parse
from .timing import EMULATOR_VERSION, Report, profile
from .event import simulate
from . import collectives  # registers the communication operators (all_reduce, send, ...)

__version__ = "0.1.0"


def compile(source: str, machine: str | Machine = "sn40l", sizes: dict[str, int] | None = None,
            filename: str = "<kernel>", routing: dict | None = None, node=None) -> Program:
    """Parse and check ASP source for a machine at the given sizes (defaults from the kernel).

    ``node`` (an ``asp_lang.node.Node`` or a node preset name) gives the peer links of a kernel
    with a ``sockets`` line (default: those of ``sn40l-node8``); one-socket kernels ignore it."""
    m = machine if isinstance(machine, Machine) else load_machine(machine)
    kernel = parse(source, filename)
    return check(kernel, m, sizes, filename, source, routing, node)


def compile_file(path: str | Path, machine: str | Machine = "sn40l", sizes: dict[str, int] | None = None,
                 routing: dict | None = None, node=None) -> Program:
    p = Path(path)
    return compile(p.read_text(), machine, sizes, str(p), routing, node)


__all__ = ["compile", "compile_file", "parse", "check", "run", "profile", "simulate", "random_inputs", "format_kernel",
           "load_machine", "presets", "bind_sizes", "Program", "Kernel", "Machine", "Report", "Limits",
           "AspError", "ERROR_KINDS", "Span", "EMULATOR_VERSION", "__version__"]
