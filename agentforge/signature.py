"""What a captured graph costs and how a kernel for it should be written: flops, compulsory
bytes, reduced dims, and the :class:`Signature` that keys the plan cache and the library.

``signature`` summarises a graph into the fields that decide *how* a kernel should be
written (op pattern, wiring, ranks, dtypes, reduced dims, bound class, size class) and hashes
them into keys; see ``docs/tasks.md`` for every field and for what changes each key. The
per-node helpers (:func:`operand_specs`, :func:`is_reduction`, :func:`reduced_dims`,
:func:`node_flops`) are public because the plan cache, the PyTorch matcher and the reports
classify nodes the same way the signature does.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Literal
from dataclasses import dataclass

from agentforge.aten import MOVEMENT_KINDS, TRANSPARENT_KINDS, AtenGraph, AtenNode, Ref, TensorSpec, iter_refs

__all__ = [
    "Signature",
    "signature",
    "estimate_flops",
    "io_bytes",
    "node_flops",
    "operand_specs",
    "is_reduction",
    "reduced_dims",
    "COMPUTE_BOUND_INTENSITY",
    "SIGNATURE_VERSION",
]

#: Arithmetic intensity (estimated flops per byte of input + output traffic) at and above which
#: a graph is classed "compute" bound. 32 flop/byte sits between what bandwidth-bound ops reach
#: (elementwise, norms, softmax: < 10) and what a blocked matmul of a few hundred per side
#: reaches; it is a coarse planning hint, the timing model decides real performance.
COMPUTE_BOUND_INTENSITY: float = 32.0

#: Bumped whenever the meaning of any signature field changes, so that old cache keys miss.
SIGNATURE_VERSION: int = 2

#: Reduction / normalisation / scan kinds: (position of the dim argument, default when the
#: argument is missing: "all" dims or a single dim).
_REDUCED_DIM_ARG: dict[str, tuple[int, Any]] = {
    "sum": (1, "all"),
    "mean": (1, "all"),
    "amax": (1, "all"),
    "amin": (1, "all"),
    "max": (1, "all"),
    "min": (1, "all"),
    "argmax": (1, "all"),
    "argmin": (1, "all"),
    "prod": (1, "all"),
    "var": (1, "all"),
    "std": (1, "all"),
    "var_mean": (1, "all"),
    "std_mean": (1, "all"),
    "logsumexp": (1, "all"),
    "any": (1, "all"),
    "all": (1, "all"),
    "norm": (2, "all"),
    "softmax": (1, -1),
    "log_softmax": (1, -1),
    "cumsum": (1, -1),
    "cumprod": (1, -1),
    "cummax": (1, -1),
    "cummin": (1, -1),
    "logcumsumexp": (1, -1),
    "sort": (1, -1),
    "topk": (2, -1),
}

#: flops per input element for the fused normalisation ops (documented in docs/tasks.md).
_PER_ELEMENT_FLOPS: dict[str, int] = {
    "softmax": 5,  # max, subtract, exp, sum, divide
    "log_softmax": 5,  # max, subtract, exp, sum, log-subtract
    "layer_norm": 8,  # mean, subtract, square, sum, scale, weight, bias, (rsqrt per row)
    "group_norm": 8,
    "batch_norm": 4,  # subtract mean, scale by rsqrt(var), weight, bias
}


def operand_specs(graph_specs: dict[str, TensorSpec], node: AtenNode) -> list[TensorSpec]:
    """The specs of ``node``'s tensor operands in ``refs()`` order (the argument :func:`node_flops` takes)."""
    return [graph_specs[r.name] for r in node.refs() if r.name in graph_specs]


def node_flops(node: AtenNode, operand_specs: list[TensorSpec]) -> int:
    """Estimated flops of one node (rules in docs/tasks.md); ``operand_specs`` in ``refs()`` order."""
    kind = node.kind
    outs = [s for s in node.outs if s.dtype != "none"]
    out_numel = sum(s.numel for s in outs)
    first_in = operand_specs[0].numel if operand_specs else 0
    if kind in MOVEMENT_KINDS:
        return 0
    if kind in ("mm", "bmm", "addmm", "baddbmm", "mv", "addmv", "dot", "vdot"):
        if kind in ("addmm", "baddbmm", "addmv"):
            a = operand_specs[1]
            bias = out_numel
        else:
            a = operand_specs[0]
            bias = 0
        contraction = a.shape[-1] if a.shape else 1
        return 2 * out_numel * contraction + bias
    if kind == "grouped_mm_fallback":
        # rows [S, K] each through its expert's [K, N] (agentforge.grouped_matmul): 2 S K N
        return 2 * out_numel * (operand_specs[0].shape[-1] if operand_specs and operand_specs[0].shape else 1)
    if kind == "conv":
        weight = operand_specs[1]
        per_out = weight.numel // weight.shape[0] if weight.shape and weight.shape[0] else 0
        has_bias = len(operand_specs) > 2
        return 2 * out_numel * per_out + (out_numel if has_bias else 0)
    if kind in _PER_ELEMENT_FLOPS:
        return _PER_ELEMENT_FLOPS[kind] * first_in
    if kind == "sort":
        dims = reduced_dims(node, operand_specs)
        n = operand_specs[0].shape[dims[0]] if dims and operand_specs[0].shape else 1
        return first_in * max(1, math.ceil(math.log2(max(n, 2))))
    if is_reduction(node):
        return first_in
    return out_numel


def is_reduction(node: AtenNode) -> bool:
    """Reductions, normalisations and scans (ops that combine values along some dims)."""
    kind = node.kind
    if kind in ("layer_norm", "group_norm"):
        return True
    if kind not in _REDUCED_DIM_ARG:
        return False
    pos, _ = _REDUCED_DIM_ARG[kind]
    dims = node.args[pos] if len(node.args) > pos else node.kwargs.get("dim")
    return not any(True for _ in iter_refs(dims))  # e.g. aten.max.other is elementwise


def _normalise_dims(dims: Any, rank: int) -> tuple[int, ...]:
    if dims == "all" or dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return tuple(range(-rank, 0))
    if isinstance(dims, int):
        dims = [dims]
    out = sorted({(d - rank if d >= 0 else d) for d in dims if isinstance(d, int)})
    return tuple(out)


def reduced_dims(node: AtenNode, operand_specs: list[TensorSpec]) -> tuple[int, ...]:
    """The dims a reduction, normalisation or scan combines, negative (from the last), sorted."""
    kind = node.kind
    rank = operand_specs[0].rank if operand_specs else 0
    if kind in ("layer_norm", "group_norm"):
        if kind == "layer_norm":
            normalized = node.args[1] if len(node.args) > 1 else []
            n = len(normalized) if isinstance(normalized, (list, tuple)) else 1
            return tuple(range(-n, 0))
        return tuple(range(-(rank - 1), 0)) if rank > 1 else ()
    pos, default = _REDUCED_DIM_ARG[kind]
    dims = node.args[pos] if len(node.args) > pos else node.kwargs.get("dim", default)
    if rank == 0:
        return ()
    return _normalise_dims(default if dims is None and default != "all" else dims, rank)


def estimate_flops(graph: AtenGraph) -> int:
    """Estimated floating-point operations of the whole graph (sum of :func:`node_flops`)."""
    specs = graph.spec_table
    return sum(node_flops(n, operand_specs(specs, n)) for n in graph.nodes)


def io_bytes(graph: AtenGraph) -> int:
    """Compulsory off-chip traffic: every input and param read once, every output written once.

    An output that appears twice is counted once. This is the byte count of the roofline: no
    kernel can move less, whatever it fuses. Bytes are counted as the chip stores them (an int64
    result is written as i32), or a kernel at full bandwidth would look faster than the roofline.
    """
    read = sum(s.asp_nbytes for s in (*graph.inputs, *graph.params))
    written = sum(graph.spec(name).asp_nbytes for name in dict.fromkeys(r.name for r in graph.outputs))
    return read + written


# --------------------------------------------------------------------------------------------
# signature
# --------------------------------------------------------------------------------------------

_ATTR_IGNORED_KWARGS = frozenset({"device", "layout", "pin_memory", "memory_format", "non_blocking"})

KeyLevel = Literal["key", "class", "sized"]

_KEY_FIELDS = (
    "version", "ops", "wiring", "outputs_from", "attrs",
    "input_ranks", "param_ranks", "output_ranks",
    "input_dtypes", "param_dtypes", "output_dtypes",
    "reduced_dims",
)
_CLASS_FIELDS = _KEY_FIELDS + ("bound", "size_class")
_SIZED_FIELDS = _CLASS_FIELDS + ("input_shapes", "param_shapes", "output_shapes", "scalars")


@dataclass(frozen=True)
class Signature:
    """Semantic signature of a captured graph (every field is documented in docs/tasks.md).

    Three keys, from coarse to exact:

    - :meth:`key` ignores sizes: the same computation at other sizes has the same key (the
      plan-cache key; plans are adapted to the new sizes);
    - :meth:`class_key` adds the bound class and size class (same op, same size regime);
    - :meth:`sized_key` adds exact shapes and every scalar argument (identifies one problem).
    """

    version: int
    ops: tuple[str, ...]
    wiring: tuple[tuple[str, ...], ...]
    outputs_from: tuple[str, ...]
    attrs: tuple[tuple[tuple[Any, Any], ...], ...]
    input_ranks: tuple[int, ...]
    param_ranks: tuple[int, ...]
    output_ranks: tuple[int, ...]
    input_dtypes: tuple[str, ...]
    param_dtypes: tuple[str, ...]
    output_dtypes: tuple[str, ...]
    reduced_dims: tuple[tuple[str, tuple[int, ...]], ...]
    bound: str
    size_class: tuple[int, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    param_shapes: tuple[tuple[int, ...], ...]
    output_shapes: tuple[tuple[int, ...], ...]
    scalars: tuple[tuple[tuple[Any, Any], ...], ...]
    flops: int
    io_bytes: int
    intensity: float

    def to_dict(self, level: KeyLevel = "sized") -> dict[str, Any]:
        """The fields that enter the key of ``level`` as JSON-ready values (tuples -> lists)."""
        fields = {"key": _KEY_FIELDS, "class": _CLASS_FIELDS, "sized": _SIZED_FIELDS}[level]
        return {name: _jsonable(getattr(self, name)) for name in fields}

    def canonical_json(self, level: KeyLevel = "key") -> str:
        """Canonical JSON of the key's fields: sorted keys, no spaces, ASCII, lists for tuples."""
        return json.dumps(self.to_dict(level), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    def key(self) -> str:
        """Size-independent key: first 16 hex digits of sha256(canonical_json("key"))."""
        return _digest(self.canonical_json("key"))

    def class_key(self) -> str:
        """Key that also separates bound class and log2 size bucket of each input."""
        return _digest(self.canonical_json("class"))

    def sized_key(self) -> str:
        """Key of one exact problem: adds all shapes and all scalar arguments."""
        return _digest(self.canonical_json("sized"))


def _freeze(value: Any) -> Any:
    """Lists -> tuples (recursively) so that a Signature is hashable."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _freeze(v)) for k, v in value.items())
    return value


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Ref):
        return {"ref": value.name}
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # "inf", "-inf", "nan": valid JSON, stable
    return value


def _flat_args(node: AtenNode) -> list[tuple[Any, Any]]:
    """(position or kwarg name, value) of the non-tensor arguments of a node."""
    items: list[tuple[Any, Any]] = []
    for i, a in enumerate(node.args):
        if not any(True for _ in iter_refs(a)):
            items.append((i, a))
    for k, v in node.kwargs.items():
        if not any(True for _ in iter_refs(v)):
            items.append((k, v))
    return items


def signature(graph: AtenGraph) -> Signature:
    """Compute the :class:`Signature` of ``graph`` (pure function of the graph, no torch state)."""
    specs = graph.spec_table
    source: dict[str, str] = {}
    for i, s in enumerate(graph.inputs):
        source[s.name] = f"i{i}"
    for i, s in enumerate(graph.params):
        source[s.name] = f"p{i}"

    ops: list[str] = []
    wiring: list[tuple[str, ...]] = []
    attrs: list[tuple[tuple[Any, Any], ...]] = []
    scalars: list[tuple[tuple[Any, Any], ...]] = []
    reduced: list[tuple[str, tuple[int, ...]]] = []
    for node in graph.nodes:
        kind = node.kind
        if kind == "getitem":
            # Not an op: name the element of the producing op ("n3.1") and move on.
            producer, index = node.args[0], node.args[1]
            source[node.name] = f"{source.get(producer.name, '?')}.{index}"
            continue
        if kind in TRANSPARENT_KINDS and node.refs():
            # Value-identity copies: export inserts them depending on memory layout (and so on
            # sizes); the value is its operand's.
            source[node.name] = source.get(node.refs()[0].name, "?")
            continue
        k = len(ops)
        ops.append(kind)
        source[node.name] = f"n{k}"
        wiring.append(tuple(source.get(r.name, "?") for r in node.refs()))
        flat = _flat_args(node)
        attrs.append(
            tuple(
                (pos, val)
                for pos, val in flat
                if isinstance(val, (bool, str)) and pos not in _ATTR_IGNORED_KWARGS
            )
        )
        # placement (device, layout...) is not part of the problem: meta and CPU captures agree
        scalars.append(tuple((pos, _freeze(val)) for pos, val in flat if pos not in _ATTR_IGNORED_KWARGS))
        if is_reduction(node):
            reduced.append((kind, reduced_dims(node, operand_specs(specs, node))))

    out_specs = [specs[r.name] for r in graph.outputs]
    flops = estimate_flops(graph)
    nbytes = io_bytes(graph)
    intensity = flops / nbytes if nbytes else 0.0
    return Signature(
        version=SIGNATURE_VERSION,
        ops=tuple(ops),
        wiring=tuple(wiring),
        outputs_from=tuple(source.get(r.name, "?") for r in graph.outputs),
        attrs=tuple(attrs),
        input_ranks=tuple(s.rank for s in graph.inputs),
        param_ranks=tuple(s.rank for s in graph.params),
        output_ranks=tuple(s.rank for s in out_specs),
        input_dtypes=tuple(s.dtype for s in graph.inputs),
        param_dtypes=tuple(s.dtype for s in graph.params),
        output_dtypes=tuple(s.dtype for s in out_specs),
        reduced_dims=tuple(reduced),
        bound="compute" if intensity >= COMPUTE_BOUND_INTENSITY else "memory",
        size_class=tuple(_size_bucket(s.numel) for s in graph.inputs),
        input_shapes=tuple(s.shape for s in graph.inputs),
        param_shapes=tuple(s.shape for s in graph.params),
        output_shapes=tuple(s.shape for s in out_specs),
        scalars=tuple(scalars),
        flops=flops,
        io_bytes=nbytes,
        intensity=intensity,
    )


def _size_bucket(numel: int) -> int:
    """floor(log2(numel)); -1 for an empty tensor."""
    return numel.bit_length() - 1 if numel > 0 else -1
