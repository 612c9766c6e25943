"""``check``: the one entry that type-checks a parsed kernel into a runnable Program.

A kernel runs on one socket (:mod:`asp_lang.checker`) or, with a ``sockets`` line, on several
(:mod:`asp_lang.collectives`, which builds on the one-socket checker, interpreter and timing
models). This module sits above both, so neither needs to import the other backwards.
"""

from __future__ import annotations

from .checker import Program, check_socket
from .collectives import check_group
from .errors import ArgumentError, AspError
from .ir import Kernel
from .machine import Machine

__all__ = ["check"]


def check(kernel: Kernel, machine: Machine, sizes: dict[str, int] | None = None,
          filename: str = "<kernel>", source: str | None = None, routing: dict | None = None,
          node=None) -> Program:
    """Type-check ``kernel`` at the given sizes for ``machine``. Errors are located in ``filename``.

    A kernel with a ``sockets P = N`` line is checked as the P programs its sockets run
    (``collectives.check_group``); ``node`` then gives the peer links (an
    ``asp_lang.node.Node``, a node preset name, or None for the default links)."""
    try:
        if kernel.sockets is not None:
            return check_group(kernel, machine, sizes, filename, source, routing or {}, node)
        for p in kernel.params + kernel.results:
            if p.split is not None:
                raise ArgumentError(f"'{p.name}' is @split over sockets, but this kernel runs on one: add a "
                                    "'sockets P = 2' line (docs/asp.md, 'More than one socket')", p.split.span)
        return check_socket(kernel, machine, sizes, filename, source, routing or {})
    except AspError as e:
        raise e.located(filename, source) from None
