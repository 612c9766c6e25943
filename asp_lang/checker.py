"""The checker: binds sizes, infers every stream's type, enforces single use of streams and
single writes of results, and fits the program onto a machine (sectioning it when it needs
more units than the chip has).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .consts import MAX_INT, MAX_RANK, eval_int
from .errors import (AffineError, ArgumentError, NameError_, ResourceError, RoutingError,
                     ShapeError, SizeError, TypeError_)
from .ir import Call, FnDef, Kernel, Name, names
from .machine import Machine
from .ops import OPS, Node
from .tilefn import TypedFn, check_fn
from .timing import allocate
from .types import StreamT, TensorT, TileT


@dataclass
class Program:
    """A checked kernel at bound sizes, ready to run or time."""
    kernel: Kernel
    filename: str
    source: str | None
    sizes: dict[str, int]
    tensors: dict[str, TensorT]
    params: list[str]
    results: list[str]
    nodes: list[Node]
    streams: dict[str, StreamT]
    machine: Machine
    notes: list[str] = field(default_factory=list)
    routing: dict = field(default_factory=dict)
    sections: list[list[int]] = field(default_factory=list)
    units: dict = field(default_factory=dict)
    section_units: list = field(default_factory=list)  # units held in each section (reloaded buffers too)


def bind_sizes(kernel: Kernel, overrides: dict[str, int] | None = None) -> dict[str, int]:
    """Default sizes from the kernel's ``sizes`` lines, then the caller's overrides."""
    sizes: dict[str, int] = {}
    for s in kernel.sizes:
        if s.name in sizes:
            raise NameError_(f"size '{s.name}' is defined twice", s.span)
        if s.value <= 0:
            raise SizeError(f"size '{s.name}' must be positive, got {s.value}", s.span)
        sizes[s.name] = s.value
    used = set()
    for p in kernel.params + kernel.results:
        for e in p.shape:
            used |= names(e)
    for k, v in (overrides or {}).items():
        if k not in sizes and k not in used:
            known = sorted(set(sizes) | used)
            raise SizeError(f"kernel {kernel.name} has no size '{k}' (its sizes: {', '.join(known) or 'none'})")
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise SizeError(f"size {k} must be a positive integer, got {v!r}")
        sizes[k] = v
    for p in kernel.params + kernel.results:
        for e in p.shape:
            for n in names(e):
                if n not in sizes:
                    raise SizeError(f"size '{n}' has no value: add 'sizes {n} = ...' to the kernel "
                                    f"or pass it (--sizes {n}=...)", e.span)
    return sizes


MAX_PAR = 4096  # more replicas than any machine has units


class CheckCtx:
    """What an operator's type rule may ask of the checker."""

    def __init__(self, kernel: Kernel, sizes: dict[str, int], tensors: dict[str, TensorT],
                 machine: Machine, routing: dict):
        self.kernel = kernel
        self.sizes = sizes
        self.tensors = tensors
        self.machine = machine
        self.routing = routing
        self.streams: dict[str, StreamT] = {}
        self.defined_at: dict[str, Call] = {}
        self.consumed: dict[str, Call] = {}
        self.written: dict[str, str] = {}
        self.node_index = 0
        self.inputs: list[str] = []
        self.fn_cache: dict[tuple, TypedFn] = {}
        self.notes: list[str] = []
        self.routing_notes: list[str] = []
        self.partitions = 0

    def declared_shape(self, name: str) -> tuple:
        """The shape expressions a parameter or result was declared with."""
        for p in self.kernel.params + self.kernel.results:
            if p.name == name:
                return p.shape
        return ()

    # --- argument access used by operators ---
    def expect_args(self, call: Call, npos: int | None, kwargs: tuple[str, ...]) -> None:
        if npos is not None and len(call.args) != npos:
            raise ArgumentError(f"{call.func} takes {npos} positional argument(s), got {len(call.args)} "
                                f"(usage: {OPS[call.func].signature})", call.span)
        for k, v in call.kwargs:
            if k not in kwargs:
                raise ArgumentError(f"{call.func} has no argument '{k}' "
                                    f"(usage: {OPS[call.func].signature})", v.span)

    def stream_arg(self, e) -> StreamT:
        if not isinstance(e, Name):
            raise ArgumentError("expected a stream name here", getattr(e, "span", None))
        name = e.id
        if name in self.tensors:
            raise TypeError_(f"'{name}' is a tensor in memory; read it with load({name}, tile=[...]) first",
                             e.span)
        if name not in self.streams:
            raise NameError_(f"stream '{name}' is not defined"
                             + (" yet (streams are defined before use)" if self._defined_later(name) else ""),
                             e.span)
        if name in self.consumed:
            prev = self.consumed[name]
            raise AffineError(f"stream '{name}' is already consumed by {prev.func} at line {prev.span.line}; "
                              f"a stream is used once: write '{name}_a, {name}_b = copy({name})'", e.span)
        self.consumed[name] = self._call
        self.inputs.append(name)
        return self.streams[name]

    def _defined_later(self, name: str) -> bool:
        return any(name in s.targets for s in self.kernel.body)

    def tensor_arg(self, e, param: bool, partial: bool = False) -> TensorT:
        if not isinstance(e, Name):
            raise ArgumentError("expected a tensor name here", getattr(e, "span", None))
        t = self.tensors.get(e.id)
        if t is None:
            kind = "stream" if e.id in self.streams else "name"
            raise NameError_(f"'{e.id}' is not a kernel {'parameter' if param else 'result'} (it is a {kind})"
                             if e.id in self.streams else
                             f"'{e.id}' is not a kernel {'parameter' if param else 'result'}", e.span)
        is_param = e.id in {p.name for p in self.kernel.params}
        if param and not is_param:
            raise NameError_(f"'{e.id}' is a result; {self._call.func} reads parameters", e.span)
        if not param:
            if is_param:
                raise NameError_(f"'{e.id}' is a parameter; {self._call.func} writes results", e.span)
            prev = self.written.get(e.id)
            mode = "partial" if partial else "full"
            if prev == "full" or (prev and mode == "full"):
                raise AffineError(f"result '{e.id}' is written twice (store each result exactly once)", e.span)
            self.written[e.id] = mode
        return t

    def fn_arg(self, call: Call) -> FnDef:
        e = call.kw("fn")
        if e is None:
            raise ArgumentError(f"{call.func} needs fn=<name of a fn>", call.span)
        if not isinstance(e, Name):
            raise ArgumentError("fn= takes the name of a fn defined in this kernel", getattr(e, "span", None))
        fn = self.kernel.fn(e.id)
        if fn is None:
            names = ", ".join(f.name for f in self.kernel.fns) or "none"
            raise NameError_(f"no fn named '{e.id}' (defined: {names})", e.span)
        return fn

    def check_fn(self, fn: FnDef, tiles: tuple[TileT, ...], rank: int, dyn: tuple[int, ...], call: Call) -> TypedFn:
        key = (id(fn), tiles, rank, dyn)
        if key not in self.fn_cache:
            self.fn_cache[key] = check_fn(fn, tiles, self.sizes, rank, dyn, call.span)
        return self.fn_cache[key]

    def check_sram(self, nbytes: float, call: Call, what: str) -> None:
        if nbytes > self.machine.sram_bytes:
            raise ResourceError(f"this {what} needs {nbytes / 2**20:.1f} MiB of on-chip memory (double-buffered) "
                                f"but {self.machine.name} has {self.machine.sram_bytes / 2**20:.1f} MiB; "
                                f"buffer a smaller sub-stream (lower rank) or smaller tiles", call.span)

    def routing_assumption(self, call: Call, n: int, count: int) -> tuple[float, float]:
        """(mean branch length, longest / mean) for a partition of ``count`` elements over n."""
        self.partitions += 1
        counts = self.routing.get("counts")
        if counts is not None:
            if len(counts) != n or sum(counts) != count:
                raise RoutingError(f"routing counts {list(counts)} must name {n} branches summing to {count}",
                                   call.span)
            self.routing_notes.append(f"partition at line {call.span.line}: given counts {list(counts)}")
            mean = count / n
            return mean, (max(counts) / mean if mean else 1.0)
        else:
            self.routing_notes.append(f"partition at line {call.span.line}: uniform routing assumed "
                                      f"({count} elements over {n} branches, {count / n:g} each)")
        return count / n, 1.0


def check_socket(kernel: Kernel, machine: Machine, size_overrides, filename: str, source: str | None,
                 routing: dict) -> Program:
    """Check a kernel that runs on one socket (no ``sockets`` line); errors are not yet located
    (:func:`asp_lang.compiler.check` locates them, and checks multi-socket kernels)."""
    ctx = begin_check(kernel, machine, size_overrides, routing)
    for i, st in enumerate(kernel.body):
        check_stmt(ctx, i, st)
    return finish_check(ctx, filename, source, routing)


def bind_tensors(kernel: Kernel, machine: Machine, sizes: dict[str, int]) -> dict[str, TensorT]:
    """Every parameter and result at bound sizes; the tensors of each tier must fit it."""
    tensors: dict[str, TensorT] = {}
    for p in kernel.params + kernel.results:
        if p.name in tensors:
            raise NameError_(f"'{p.name}' is declared twice", p.span)
        if p.name in sizes:
            raise NameError_(f"'{p.name}' is both a size and a tensor", p.span)
        shape = tuple(eval_int(e, sizes, f"the shape of '{p.name}'") for e in p.shape)
        if len(shape) > MAX_RANK:
            raise ShapeError(f"'{p.name}' has rank {len(shape)}: at most {MAX_RANK} dimensions", p.span)
        if any(s <= 0 for s in shape):
            raise SizeError(f"'{p.name}' has a non-positive dimension {list(shape)}", p.span)
        if math.prod(shape) > MAX_INT:
            raise SizeError(f"'{p.name}' {list(shape)} has more than 2**62 elements", p.span)
        tensors[p.name] = TensorT(p.name, p.dtype, shape, p.tier)
    for tier in ("hbm", "ddr"):
        total = sum(t.nbytes for t in tensors.values() if t.tier == tier)
        cap = machine.mem(tier).capacity_gib * 2**30
        if total > cap:
            raise ResourceError(f"the kernel's {tier} tensors need {total / 2**30:.2f} GiB; "
                                f"{machine.name} has {cap / 2**30:.0f} GiB of {tier}", kernel.span)
    return tensors


def begin_check(kernel: Kernel, machine: Machine, size_overrides, routing: dict,
                sizes: dict[str, int] | None = None) -> CheckCtx:
    """Bind sizes and tensors and make the context the statements are checked in (one per
    socket for a kernel that runs on several: ``collectives.check_group``)."""
    if sizes is None:
        sizes = bind_sizes(kernel, size_overrides)
    tensors = bind_tensors(kernel, machine, sizes)
    fn_names = set()
    for f in kernel.fns:
        if f.name in fn_names:
            raise NameError_(f"fn '{f.name}' is defined twice", f.span)
        fn_names.add(f.name)
    ctx = CheckCtx(kernel, sizes, tensors, machine, routing)
    ctx.fn_names = fn_names
    ctx.nodes = []
    ctx.group = None  # set by collectives.check_group: the socket this program runs on, and its group
    return ctx


def check_stmt(ctx: CheckCtx, i: int, st) -> None:
    """Check statement ``st`` (the i-th of the program) and append its node to ``ctx.nodes``."""
    call = st.call
    sizes, tensors, fn_names = ctx.sizes, ctx.tensors, ctx.fn_names
    spec = OPS.get(call.func)
    if spec is None:
        raise NameError_(f"unknown operator '{call.func}' (operators: {', '.join(sorted(OPS))})", call.span)
    for t in st.targets:
        if t == "_":
            continue
        if t in ctx.streams or t in tensors or t in sizes or t in fn_names:
            raise NameError_(f"'{t}' is already defined (names are assigned once)", st.span)
    named = [t for t in st.targets if t != "_"]
    if len(set(named)) != len(named):
        raise NameError_("a name is repeated on the left of '='", st.span)
    ctx._call = call
    ctx.inputs = []
    ctx.node_index = i
    outs, attrs, tf, tensor = spec.check(ctx, call, len(st.targets))
    if len(outs) != len(st.targets):
        raise ArgumentError(f"{call.func} here defines {len(outs)} stream(s) but {len(st.targets)} "
                            f"name(s) are on the left of '='", st.span)
    for o in outs:  # stream and tile dimensions together must stay within numpy's 64
        if getattr(o, "rank", 0) > MAX_RANK:
            raise ShapeError(f"{call.func} makes a stream of rank {o.rank}: at most {MAX_RANK} dimensions",
                             call.span)
    par = 1
    if call.kw("par") is not None:
        par = eval_int(call.kw("par"), sizes, "par")
        if not 0 < par <= MAX_PAR:
            raise ArgumentError(f"par must be between 1 and {MAX_PAR}, got {par}", call.kw("par").span)
    in_types = tuple(ctx.streams[n] for n in ctx.inputs)
    for t, o in zip(st.targets, outs):
        if t == "_":  # an output the program does not need
            continue
        ctx.streams[t] = o
        ctx.defined_at[t] = call
    ctx.nodes.append(Node(call.func, call, tuple(ctx.inputs), st.targets, in_types, tuple(outs),
                          attrs, tf, par, tensor, i))


def finish_check(ctx: CheckCtx, filename: str, source: str | None, routing: dict,
                 allocate_units: bool = True) -> Program:
    """The affine rule's last checks (every stream used, every result written) and the Program,
    placed on the machine."""
    kernel = ctx.kernel
    for name, call in ctx.defined_at.items():
        if name not in ctx.consumed:
            raise AffineError(f"stream '{name}' is never used (every stream is consumed once; "
                              "store it or remove it)", call.span)
    for r in kernel.results:
        if r.name not in ctx.written:
            raise AffineError(f"result '{r.name}' is never stored", r.span)
    prog = Program(kernel, filename, source, ctx.sizes, ctx.tensors, [p.name for p in kernel.params],
                   [r.name for r in kernel.results], ctx.nodes, dict(ctx.streams), ctx.machine,
                   list(ctx.routing_notes), {"mode": "counts" if routing.get("counts") else "uniform",
                                             **({"counts": list(routing["counts"])} if routing.get("counts") else {})})
    if allocate_units:
        allocate(prog)
    return prog
