"""Stream operators: the registry (:data:`OPS`), the checked program node (:class:`Node`), the
work an operator does (:class:`OpWork`) and the helpers every operator family uses.

Each operator has, side by side, its type rule (``check``), its numpy semantics (``run``) and
the work it does (``work``: elements, bytes, flops, on-chip memory), which the timing model
turns into cycles for a given machine. The operators themselves live by family in
:mod:`asp_lang.ops_memory`, :mod:`asp_lang.ops_compute`, :mod:`asp_lang.ops_routing` (and the
multi-socket ones in :mod:`asp_lang.collectives`); importing asp_lang registers them all.

Operator arguments are stream names, tensor names, integer expressions over sizes, lists
of them, fn names, and (for ``init``) tile expressions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from .consts import eval_int_list
from .errors import ArgumentError, ShapeError, SizeError, TypeError_
from .ir import Call, Num
from .tilefn import FnCost, TypedFn
from .types import BufT, Dyn, Elem, SelT, StreamT, TensorT, TileT, TupT
from .values import SVal, nbytes

if TYPE_CHECKING:
    from .checker import CheckCtx


@dataclass
class Node:
    """One checked operator application: what the interpreter runs and the timing model costs."""
    op: str
    call: Call
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    in_types: tuple[StreamT, ...]
    out_types: tuple[StreamT, ...]
    attrs: dict = field(default_factory=dict)
    fn: TypedFn | None = None
    par: int = 1
    tensor: TensorT | None = None
    index: int = 0


@dataclass
class OpWork:
    """Machine-independent work of one operator."""
    kind: str                 # mem | compute | route | shape | buffer
    elements: float           # stream elements processed
    in_bytes: float = 0.0     # on-chip bytes read per element
    out_bytes: float = 0.0    # on-chip bytes written per element
    fn: FnCost | None = None  # tile-function work per element
    offchip_bytes: float = 0.0
    tier: str = "hbm"
    sram_bytes: float = 0.0   # on-chip memory held (buffers are double-buffered)
    buffer_bytes: float = 0.0 # one on-chip buffer this operator fills or reads (its PMUs serve it)
    groups: float = 1.0       # outputs that wait for a whole group of inputs (accum) or buffers filled

    @property
    def flops(self) -> float:
        return self.fn.flops * self.elements if self.fn else 0.0


@dataclass(frozen=True)
class OpSpec:
    name: str
    signature: str
    kind: str
    check: Callable
    run: Callable
    work: Callable
    doc: str


OPS: dict[str, OpSpec] = {}


def operator(name: str, signature: str, kind: str, doc: str):
    """Register an operator from its type rule; ``.run`` and ``.work`` attach the other facets."""
    def deco(check):
        parts: dict[str, Callable] = {"check": check}

        def attach(facet):
            def setter(f):
                parts[facet] = f
                if "run" in parts and "work" in parts:
                    OPS[name] = OpSpec(name, signature, kind, parts["check"], parts["run"],
                                       parts["work"], doc)
                return f
            return setter
        check.run = attach("run")
        check.work = attach("work")
        return check
    return deco


# ---------------------------------------------------------------- helpers

def elem_shape(e: Elem) -> tuple[int, ...]:
    if isinstance(e, TileT):
        return e.shape
    if isinstance(e, SelT):
        return (e.k,)
    if isinstance(e, BufT):
        return e.dims + e.elem.shape
    raise AssertionError(e)


def elem_tiles(e: Elem) -> tuple[TileT, ...]:
    if isinstance(e, TileT):
        return (e,)
    if isinstance(e, TupT) and all(isinstance(i, TileT) for i in e.items):
        return tuple(e.items)  # type: ignore[return-value]
    raise TypeError(e)


def span_of(e):
    return getattr(e, "span", None)


def dyn_index(t: StreamT) -> int | None:
    for i, d in enumerate(t.dims):
        if isinstance(d, Dyn):
            return i
    return None


def squeeze_tile(tile: tuple[int, ...], literal_one: tuple[bool, ...] | None = None) -> tuple[int, ...]:
    """A tile spec's element shape: leading entries written as the literal 1 are dropped while
    more than two entries remain (``[1, 1, BQ, D]`` -> ``[BQ, D]``). The rule looks at what is
    written, not at values, so a kernel means the same thing at every size."""
    t = list(tile)
    ones = list(literal_one) if literal_one is not None else [v == 1 for v in tile]
    while len(t) > 2 and ones[0]:
        t.pop(0)
        ones.pop(0)
    return tuple(t)


@dataclass(frozen=True)
class Tiling:
    shape: tuple[int, ...]
    tile: tuple[int, ...]
    grid: tuple[int, ...]
    kept: tuple[int, ...]          # tensor axes that remain stream dimensions
    elem: tuple[int, ...]          # element (tile) shape after squeezing

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.grid[i] for i in self.kept)


def make_tiling(tensor: TensorT, tile: tuple[int, ...], node, whole: tuple[bool, ...] | None = None,
                literal_one: tuple[bool, ...] | None = None) -> Tiling:
    """How a tile spec cuts a tensor. ``whole[i]`` marks axes the tile covers entirely by
    construction (the tile entry is written as the tensor's dimension); those are not stream
    dimensions. Without ``whole``, axes whose tile equals the dimension are dropped."""
    if len(tile) != len(tensor.shape):
        raise ShapeError(f"tile {list(tile)} has {len(tile)} entries but '{tensor.name}' has rank "
                         f"{len(tensor.shape)} ({tensor})", span_of(node))
    grid = []
    for i, (s, t) in enumerate(zip(tensor.shape, tile)):
        if t <= 0:
            raise SizeError(f"tile entry {i} must be positive, got {t}", span_of(node))
        if s % t:
            raise SizeError(f"tile {list(tile)} does not divide '{tensor.name}' {list(tensor.shape)}: "
                            f"{t} does not divide {s} (axis {i})", span_of(node))
        grid.append(s // t)
    if whole is None:
        whole = tuple(t == s for s, t in zip(tensor.shape, tile))
    kept = tuple(i for i in range(len(tile)) if not whole[i])
    return Tiling(tensor.shape, tuple(tile), tuple(grid), kept, squeeze_tile(tuple(tile), literal_one))


def tiling_from_spec(ctx: "CheckCtx", tensor: TensorT, tile_e) -> Tiling:
    """The tiling a written ``tile=[...]`` gives: entries written exactly as the tensor's declared
    dimension cover that axis whole; the others make stream dimensions (even of size 1)."""
    tile = eval_int_list(tile_e, ctx.sizes, "tile")
    decl = ctx.declared_shape(tensor.name)
    items = tile_e.items
    whole = tuple(i < len(decl) and i < len(items) and items[i] == decl[i] for i in range(len(tile)))
    ones = tuple(isinstance(e, Num) and e.value == 1 for e in items)
    return make_tiling(tensor, tile, tile_e, whole, ones)


def match_tiling(tensor: TensorT, elem: tuple[int, ...], dims: tuple, node, what: str) -> Tiling:
    """The tiling under which a stream of ``dims`` with ``elem`` tiles covers ``tensor``.

    The element shape, right-aligned against the tensor, is the tile; the stream's dimensions
    must be the tile grid's sizes on a subsequence of axes that includes every axis the grid
    cuts (axes of grid size 1 may or may not be stream dimensions)."""
    if len(elem) > len(tensor.shape):
        raise ShapeError(f"tile {list(elem)} has more axes than '{tensor.name}' {list(tensor.shape)}", span_of(node))
    tile = (1,) * (len(tensor.shape) - len(elem)) + tuple(elem)
    tl = make_tiling(tensor, tile, node)
    kept = _match_axes(tl.grid, tuple(dims))
    if kept is None:
        cut = [g for g in tl.grid if g > 1]
        raise ShapeError(f"{what} a stream of dimensions [{', '.join(map(str, dims))}] with tiles {list(elem)} "
                         f"into '{tensor.name}' {list(tensor.shape)} needs dimensions "
                         f"[{', '.join(map(str, cut))}] (size-1 dimensions may be added)", span_of(node))
    return Tiling(tl.shape, tl.tile, tl.grid, kept, tuple(elem))


def _match_axes(grid: tuple[int, ...], dims: tuple) -> tuple[int, ...] | None:
    """Axes i_0 < i_1 < ... with grid[i_j] == dims[j], covering every axis with grid > 1."""
    def go(i: int, j: int) -> tuple[int, ...] | None:
        if j == len(dims):
            return () if all(g == 1 for g in grid[i:]) else None
        if i == len(grid):
            return None
        if grid[i] == dims[j]:
            rest = go(i + 1, j + 1)
            if rest is not None:
                return (i,) + rest
        if grid[i] == 1:
            return go(i + 1, j)
        return None
    return go(0, 0)


def tensor_to_stream(arr: np.ndarray, tl: Tiling) -> np.ndarray:
    k = len(tl.shape)
    inter = []
    for g, t in zip(tl.grid, tl.tile):
        inter += [g, t]
    a = arr.reshape(inter)
    a = a.transpose([2 * i for i in range(k)] + [2 * i + 1 for i in range(k)])
    return a.reshape(tl.dims + tl.elem)


def stream_to_tensor(data: np.ndarray, tl: Tiling) -> np.ndarray:
    k = len(tl.shape)
    a = np.asarray(data).reshape(tl.grid + tl.tile)
    perm = []
    for i in range(k):
        perm += [i, k + i]
    return a.transpose(perm).reshape(tl.shape)


def order_arg(ctx: "CheckCtx", call: Call, rank: int) -> tuple[int, ...] | None:
    e = call.kw("order")
    if e is None:
        return None
    order = eval_int_list(e, ctx.sizes, "order")
    if sorted(order) != list(range(rank)):
        raise ArgumentError(f"order {list(order)} must be a permutation of 0..{rank - 1}", span_of(e))
    return order


def same_dims(streams: list[StreamT], call: Call, what: str) -> tuple:
    dims = streams[0].dims
    for s in streams[1:]:
        if s.dims != dims:
            raise ShapeError(f"{what} needs streams of equal dimensions, got "
                             f"[{', '.join(map(str, dims))}] and [{', '.join(map(str, s.dims))}]", span_of(call))
    return dims


def tiles_of(streams: list[StreamT], call: Call, what: str) -> tuple[TileT, ...]:
    out: list[TileT] = []
    for s in streams:
        try:
            out.extend(elem_tiles(s.elem))
        except TypeError:
            raise TypeError_(f"{what} works on tile streams, got {s}", span_of(call)) from None
    return tuple(out)


def flat_args(vals: list[SVal]) -> list:
    out = []
    for v in vals:
        if isinstance(v.data, tuple):
            out.extend(v.data)
        else:
            out.append(v.data)
    return out


def position_fn(dims: tuple, nstatic: int):
    def pos(d: int):
        shape = [1] * nstatic
        shape[d] = dims[d]
        return np.arange(dims[d], dtype=np.int32).reshape(shape)
    return pos


def check_fn_kwarg(ctx: "CheckCtx", call: Call, arg_tiles: tuple[TileT, ...], stream: StreamT) -> TypedFn:
    fn = ctx.fn_arg(call)
    dyn = tuple(range(stream.rank)) if stream.dynamic else ()
    return ctx.check_fn(fn, arg_tiles, stream.rank, dyn, call)


def output_streams(results: tuple[TileT, ...], dims) -> list[StreamT]:
    return [StreamT(dims, r) for r in results]


def compute_work(node: Node) -> OpWork:
    ins = sum(t.elem.nbytes for t in node.in_types)
    outs = sum(t.elem.nbytes for t in node.out_types)
    n = node.in_types[0].count
    return OpWork("compute", n, ins / 1.0, outs * (node.out_types[0].count / n if n else 0),
                  node.fn.cost if node.fn else None)


__all__ = ["OPS", "Node", "OpWork", "OpSpec", "Tiling", "make_tiling", "nbytes", "operator",
           # helpers the operator families (ops_memory, ops_compute, ops_routing) share
           "elem_shape", "elem_tiles", "dyn_index", "squeeze_tile", "tiling_from_spec", "match_tiling",
           "tensor_to_stream", "stream_to_tensor", "order_arg", "same_dims", "tiles_of", "flat_args", "position_fn",
           "check_fn_kwarg", "output_streams", "compute_work", "span_of"]
