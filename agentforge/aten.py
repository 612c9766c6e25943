"""The captured graph IR: tensor specs, core-ATen nodes and the graph, as frozen pure-Python values.

Why a separate IR instead of handing ``torch.fx`` graphs around: everything downstream (the
op-by-op baseline, the planner, the plan cache, reports, the experience library) wants a
graph it can compare, hash, print and persist without torch objects or FakeTensors inside.
:mod:`agentforge.capture` fills it from ``torch.export``; op targets are strings, tensor
arguments are :class:`Ref`, dtypes are short strings (:mod:`agentforge.bridge` maps them to
torch's). Parameter values are kept on the side in ``AtenGraph.param_values`` because they are
data, not structure. ``op_kind`` names what a node does ("softmax", "view", "cast"); it lives
here because a node's ``kind`` is part of the IR every pass reads.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
import hashlib
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:   # annotations only: the IR itself holds no torch objects, so reading it needs no torch
    import torch

__all__ = [
    "Ref",
    "TensorSpec",
    "AtenNode",
    "AtenGraph",
    "iter_refs",
    "op_kind",
    "MOVEMENT_KINDS",
    "TRANSPARENT_KINDS",
    "DTYPE_BYTES",
    "ASP_DTYPE_BYTES",
]

#: Bytes per element of each dtype string.
DTYPE_BYTES: dict[str, int] = {
    "f32": 4,
    "bf16": 2,
    "f16": 2,
    "f64": 8,
    "i64": 8,
    "i32": 4,
    "i16": 2,
    "i8": 1,
    "u8": 1,
    "bool": 1,
    "c64": 8,
    "c128": 16,
}

#: Bytes per element as ASP stores it on the chip: 64-bit integers are kept as i32 (docs/asp.md), so
#: an int64 result (argmax's indices) moves 4 bytes per element, not 8. Roofline byte counts use this.
ASP_DTYPE_BYTES: dict[str, int] = {**DTYPE_BYTES, "i64": 4}

# --------------------------------------------------------------------------------------------
# IR
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A reference to a tensor value of the graph (an input, a param or a node result)."""

    name: str


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and dtype string of one tensor value.

    A multi-output op whose element is not a tensor gets ``dtype="none"`` and shape ``()``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES.get(self.dtype, 0)

    @property
    def asp_nbytes(self) -> int:
        """Bytes of this tensor as the chip holds it (int64 as i32): what a kernel really moves."""
        return self.numel * ASP_DTYPE_BYTES.get(self.dtype, 4)


@dataclass(frozen=True)
class AtenNode:
    """One core-ATen op call.

    ``target`` is the overload's qualified name ("aten.addmm.default"); the only non-ATen target
    is ``"getitem"`` (``args = (Ref(multi_output_node), index)``), which picks one result of a
    multi-output op such as ``aten.max.dim``. Tensor arguments are :class:`Ref`; everything else
    is a plain Python value (int, float, bool, str, None, lists of these; dtypes as dtype
    strings, devices/layouts/memory formats as strings). ``out`` is a tuple for multi-output ops.
    """

    name: str
    target: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    out: TensorSpec | tuple[TensorSpec, ...]

    @property
    def kind(self) -> str:
        return op_kind(self.target)

    @property
    def outs(self) -> tuple[TensorSpec, ...]:
        return self.out if isinstance(self.out, tuple) else (self.out,)

    def refs(self) -> list[Ref]:
        """Tensor operands in argument order (positional, then keyword), nested lists flattened."""
        return list(iter_refs(self.args)) + list(iter_refs(tuple(self.kwargs.values())))


@dataclass(frozen=True)
class AtenGraph:
    """A captured task: user inputs, lifted params, ops in topological order, outputs.

    ``param_values`` (name -> tensor) holds the values of params/buffers/constants; it is not
    part of equality and never enters a signature.
    """

    inputs: list[TensorSpec]
    params: list[TensorSpec]
    nodes: list[AtenNode]
    outputs: list[Ref]
    param_values: dict[str, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)
    #: param name -> the model attribute it was lifted from ("q_proj.weight"); constants are absent
    param_targets: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def with_weights(self, model: torch.nn.Module) -> "AtenGraph":
        """The same graph with ``model``'s parameters and buffers (same structure, other seed)."""
        state = model.state_dict(keep_vars=False)
        values = dict(self.param_values)
        for name, target in self.param_targets.items():
            if target in state:
                values[name] = state[target].detach()
        return AtenGraph(self.inputs, self.params, self.nodes, self.outputs, values, self.param_targets)

    def spec(self, name: str | Ref) -> TensorSpec:
        """The :class:`TensorSpec` of a value (input, param or single-output node) by name."""
        key = name.name if isinstance(name, Ref) else name
        specs = self.spec_table
        if key not in specs:
            raise KeyError(f"no tensor value named {key!r} in this graph")
        return specs[key]

    def node(self, name: str) -> AtenNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r} in this graph")

    @property
    def output_specs(self) -> list[TensorSpec]:
        return [self.spec(r) for r in self.outputs]

    @cached_property
    def structure_key(self) -> str:
        """A digest of what a kernel bound to this graph depends on: its operands, nodes and
        outputs, never its data (computed once per graph: bindings are looked up by it per call)."""
        text = repr((self.inputs, self.params, self.nodes, self.outputs))
        return hashlib.sha256(text.encode()).hexdigest()

    @cached_property
    def spec_table(self) -> dict[str, TensorSpec]:
        """Every single-valued tensor of the graph by name: inputs, params and single-output
        nodes (computed once per graph; do not mutate)."""
        return self._specs()

    def _specs(self) -> dict[str, TensorSpec]:
        specs: dict[str, TensorSpec] = {s.name: s for s in (*self.inputs, *self.params)}
        for n in self.nodes:
            if isinstance(n.out, TensorSpec):
                specs[n.name] = n.out
        return specs


def iter_refs(value: Any) -> Iterator[Ref]:
    """Every :class:`Ref` inside an argument value (nested lists, tuples and dicts), in order."""
    if isinstance(value, Ref):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from iter_refs(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_refs(item)


# --------------------------------------------------------------------------------------------
# op kinds
# --------------------------------------------------------------------------------------------

_KIND_ALIASES: dict[str, str] = {
    # view-like: no data changes, only how it is addressed
    "view": "view",
    "_unsafe_view": "view",
    "reshape": "view",
    "_reshape_alias": "view",
    "squeeze": "view",
    "unsqueeze": "view",
    "flatten": "view",
    "unflatten": "view",
    "alias": "view",
    "view_as": "view",
    "as_strided": "view",
    "permute": "permute",
    "transpose": "permute",
    "t": "permute",
    "expand": "expand",
    "broadcast_to": "expand",
    # renamed for readability
    "_softmax": "softmax",
    "_log_softmax": "log_softmax",
    "_to_copy": "cast",
    "native_layer_norm": "layer_norm",
    "native_group_norm": "group_norm",
    "_native_batch_norm_legit_no_training": "batch_norm",
    "_native_batch_norm_legit": "batch_norm",
    "native_batch_norm": "batch_norm",
    "convolution": "conv",
    "scalar_tensor": "scalar",
    "lift_fresh_copy": "clone",
    "linalg_vector_norm": "norm",
}

#: Kinds that only move, select, create or re-address data: 0 flops.
MOVEMENT_KINDS: frozenset[str] = frozenset(
    {
        "view", "permute", "expand", "clone", "cast", "cat", "stack", "slice", "select", "index",
        "index_select", "gather", "embedding", "full", "full_like", "scalar", "arange", "empty",
        "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "copy",
        "getitem", "split", "split_with_sizes", "unbind", "constant_pad_nd", "flip", "roll",
        "repeat", "slice_scatter", "select_scatter", "scatter", "index_put", "detach", "fill",
        "new_zeros", "new_ones", "new_full", "new_empty", "tril", "triu",
    }
)

#: Kinds that return their operand's value unchanged (copies, aliases); the signature looks
#: through them because torch.export inserts them depending on memory layout, hence on sizes.
TRANSPARENT_KINDS: frozenset[str] = frozenset({"clone", "alias", "detach"})


def op_kind(target: str) -> str:
    """Short kind of an op target: "aten.add.Tensor" -> "add", "aten.view.default" -> "view".

    The kind is the ATen op name without namespace and overload, with view-like ops folded into
    "view" / "permute" / "expand" and a few renames (``_softmax`` -> "softmax", ``_to_copy`` ->
    "cast", ``native_layer_norm`` -> "layer_norm", ``convolution`` -> "conv"); other leading
    underscores are dropped.
    """
    if target == "getitem":
        return "getitem"
    parts = target.split(".")
    # "aten.add.Tensor", and a custom op's "namespace.op.overload" ("transformers.grouped_mm_fallback.default")
    base = parts[1] if (len(parts) >= 2 and parts[0] == "aten") or len(parts) == 3 else parts[0]
    return _KIND_ALIASES.get(base, base.lstrip("_") or base)
