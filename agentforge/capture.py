"""Capture: a task's computation as a small, pure-Python graph of core-ATen ops, and its signature.

Why a separate IR instead of handing ``torch.fx`` graphs around: everything downstream (the
op-by-op baseline, the planner, the plan cache, reports, the experience library) wants a
graph it can compare, hash, print and persist without torch objects or FakeTensors inside.
``capture`` runs ``torch.export`` once, decomposes to the core-ATen op set (the same set every
backend must support) and copies what matters into frozen dataclasses: tensor specs (shape,
dtype string), op targets as strings, tensor arguments as :class:`Ref`. Parameter values are
kept on the side in ``AtenGraph.param_values`` because they are data, not structure.

``signature`` summarises a graph into the fields that decide *how* a kernel should be
written (op pattern, wiring, ranks, dtypes, reduced dims, bound class, size class) and hashes
them into keys; see ``docs/tasks.md`` for every field and for what changes each key.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import torch

from agentforge.errors import TaskError
from agentforge.tasks import Instance

__all__ = [
    "Ref",
    "TensorSpec",
    "AtenNode",
    "AtenGraph",
    "Signature",
    "capture",
    "signature",
    "estimate_flops",
    "io_bytes",
    "node_flops",
    "op_kind",
    "MOVEMENT_KINDS",
    "TRANSPARENT_KINDS",
    "dtype_str",
    "torch_dtype",
    "DTYPE_BYTES",
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

_DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "f32",
    torch.bfloat16: "bf16",
    torch.float16: "f16",
    torch.float64: "f64",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "bool",
    torch.complex64: "c64",
    torch.complex128: "c128",
}
_DTYPES_BY_NAME: dict[str, torch.dtype] = {v: k for k, v in _DTYPE_NAMES.items()}

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


def dtype_str(dtype: torch.dtype) -> str:
    """Short dtype name used in the IR ("f32", "bf16", ..., "bool"); torch's name otherwise."""
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def torch_dtype(name: str) -> torch.dtype:
    """Inverse of :func:`dtype_str`."""
    if name in _DTYPES_BY_NAME:
        return _DTYPES_BY_NAME[name]
    value = getattr(torch, name, None)
    if isinstance(value, torch.dtype):
        return value
    raise ValueError(f"unknown dtype string {name!r}")


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
        return list(_iter_refs(self.args)) + list(_iter_refs(tuple(self.kwargs.values())))


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
        specs = self._spec_table
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
    def _spec_table(self) -> dict[str, TensorSpec]:
        return self._specs()

    def _specs(self) -> dict[str, TensorSpec]:
        specs: dict[str, TensorSpec] = {s.name: s for s in (*self.inputs, *self.params)}
        for n in self.nodes:
            if isinstance(n.out, TensorSpec):
                specs[n.name] = n.out
        return specs


def _iter_refs(value: Any) -> Iterator[Ref]:
    if isinstance(value, Ref):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _iter_refs(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _iter_refs(item)


# --------------------------------------------------------------------------------------------
# capture
# --------------------------------------------------------------------------------------------

_NOISY_LOGGERS = ("torch.fx.experimental.symbolic_shapes", "torch._export", "torch.export")


@contextmanager
def _quiet_torch() -> Iterator[None]:
    """Silence torch.export's own warnings/log dumps: failures are reported as a TaskError."""
    saved = [(lg, lg.level) for lg in map(logging.getLogger, _NOISY_LOGGERS)]
    for lg, _ in saved:
        lg.setLevel(logging.ERROR)
    try:
        # torch prints the partial graph of a failed trace; the TaskError says what matters.
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
            yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def _summarise_torch_error(exc: BaseException, max_lines: int = 4) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    summary = lines[:max_lines]
    # torch names the user line that failed after this marker; it is the most useful part.
    marker = "The following call raised this error:"
    if marker in lines:
        i = lines.index(marker)
        summary += [ln for ln in lines[i : i + 3] if ln not in summary]
    return f"{type(exc).__name__}: " + "\n    ".join(summary)


def _task_line(exc: BaseException, path: str) -> int | None:
    found = re.findall(rf'File "{re.escape(path)}", line (\d+)', str(exc))
    return int(found[-1]) if found else None


def _spec_from_val(name: str, val: Any) -> TensorSpec:
    if isinstance(val, torch.Tensor):
        return TensorSpec(name, tuple(int(s) for s in val.shape), dtype_str(val.dtype))
    if isinstance(val, (bool, torch.SymBool)):
        return TensorSpec(name, (), "bool")
    if isinstance(val, (int, torch.SymInt)):
        return TensorSpec(name, (), "i64")
    if isinstance(val, (float, torch.SymFloat)):
        return TensorSpec(name, (), "f64")
    return TensorSpec(name, (), "none")


def _out_spec(node: torch.fx.Node) -> TensorSpec | tuple[TensorSpec, ...]:
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):
        return tuple(_spec_from_val(f"{node.name}.{i}", v) for i, v in enumerate(val))
    return _spec_from_val(node.name, val)


def _convert_arg(value: Any) -> Any:
    if isinstance(value, torch.fx.Node):
        return Ref(value.name)
    if isinstance(value, tuple):
        return tuple(_convert_arg(v) for v in value)
    if isinstance(value, list):
        return [_convert_arg(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _convert_arg(v) for k, v in value.items()}
    if isinstance(value, torch.dtype):
        return dtype_str(value)
    if isinstance(value, (torch.device, torch.layout, torch.memory_format)):
        return str(value).removeprefix("torch.")
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        node_value = getattr(value.node, "maybe_as_int", lambda: None)()
        return node_value if node_value is not None else str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _target_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return str(target)  # "aten.addmm.default"
    if getattr(target, "__name__", None) == "getitem":
        return "getitem"
    return getattr(target, "__name__", None) or str(target)


#: torch.export keeps global tracing state: captures in one process run one at a time (the
#: agent loop evaluates parallel workers' candidates on threads).
_EXPORT_LOCK = threading.RLock()


_CIA_OPS: dict[tuple, frozenset] = {}


@contextmanager
def _cia_ops_remembered() -> Iterator[None]:
    """Remember torch.export's list of preservable CompositeImplicitAutograd ops between captures.

    ``run_decompositions`` rebuilds that list on every call by walking every loaded op namespace
    through the C++ dispatcher (torch does not cache it, because new ops can be registered at any
    time): about 0.15 s of each capture, most of the cost of a small one. The list is kept per
    (loaded namespaces, number of CIA registrations), so registering a new op, which changes
    one or the other, rebuilds it. Applied only around our own captures; a torch without these
    internals is left alone."""
    try:
        import torch._export.utils as export_utils
        import torch.export.decomp_utils as decomp_utils
        import torch.export.exported_program as exported_program
        original = export_utils._collect_all_valid_cia_ops
        modules = [m for m in (decomp_utils, exported_program)
                   if getattr(m, "_collect_all_valid_cia_ops", None) is original]
    except (ImportError, AttributeError):
        modules = []
    if not modules:
        yield
        return

    def remembered() -> set:
        key = (tuple(sorted(torch.ops._dir)),
               len(torch._C._dispatch_get_registrations_for_dispatch_key("CompositeImplicitAutograd")))
        if key not in _CIA_OPS:
            _CIA_OPS.clear()
            _CIA_OPS[key] = frozenset(original())
        return set(_CIA_OPS[key])

    for m in modules:
        m._collect_all_valid_cia_ops = remembered
    try:
        yield
    finally:
        for m in modules:
            m._collect_all_valid_cia_ops = original


def capture(instance: Instance) -> AtenGraph:
    """Export ``instance.model`` on ``instance.inputs`` and convert it to an :class:`AtenGraph`.

    The graph is decomposed with the default core-ATen table (``run_decompositions()``), so
    composite ops (linear, matmul, silu...) arrive as the small op set backends implement.
    Export failures (data-dependent control flow, unsupported Python) and graphs that are not
    pure functions of their inputs (in-place mutation of inputs or buffers) are
    :class:`TaskError` naming the task.
    """
    task = instance.task
    path = str(task.path)
    with _EXPORT_LOCK, _quiet_torch(), _cia_ops_remembered():
        try:
            exported = torch.export.export(instance.model, tuple(instance.inputs))
            exported = exported.run_decompositions()
        except Exception as exc:  # noqa: BLE001 - torch raises many unrelated classes here
            raise TaskError(
                path,
                f"task {task.name!r}: torch.export could not capture Model.forward:\n    "
                + _summarise_torch_error(exc),
                "forward must be traceable: no Python control flow on tensor values "
                "(use torch.where), no .item()/.tolist(), no data-dependent output shapes",
                line=_task_line(exc, path),
            ) from None
    return _convert(exported, task.name, path)


def _convert(exported: torch.export.ExportedProgram, task_name: str, path: str) -> AtenGraph:
    from torch.export.graph_signature import InputKind, OutputKind, TensorArgument

    sig = exported.graph_signature
    placeholders = {n.name: n for n in exported.graph.nodes if n.op == "placeholder"}
    inputs: list[TensorSpec] = []
    params: list[TensorSpec] = []
    param_values: dict[str, torch.Tensor] = {}
    param_targets: dict[str, str] = {}
    for spec in sig.input_specs:
        if not isinstance(spec.arg, TensorArgument):
            raise TaskError(
                path,
                f"task {task_name!r}: forward takes a non-tensor input {spec.arg!r}",
                "get_inputs() must return tensors only; pass other values via get_init_inputs()",
            )
        name = spec.arg.name
        tspec = _spec_from_val(name, placeholders[name].meta.get("val"))
        if spec.kind == InputKind.USER_INPUT:
            inputs.append(tspec)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            params.append(tspec)
            value = exported.state_dict.get(spec.target)
            if value is None:
                value = exported.constants.get(spec.target)
            if isinstance(value, torch.Tensor):
                param_values[name] = value.detach()
            if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
                param_targets[name] = spec.target
        else:
            raise TaskError(
                path,
                f"task {task_name!r}: unsupported graph input kind {spec.kind.name} ({name})",
                "tasks may use parameters, buffers and tensor constants only",
            )

    outputs: list[Ref] = []
    for spec in sig.output_specs:
        if spec.kind == OutputKind.USER_OUTPUT:
            if not isinstance(spec.arg, TensorArgument):
                raise TaskError(
                    path,
                    f"task {task_name!r}: forward returns a non-tensor value {spec.arg!r}",
                    "return tensors only (a tensor or a tuple of tensors)",
                )
            outputs.append(Ref(spec.arg.name))
        elif spec.kind in (OutputKind.USER_INPUT_MUTATION, OutputKind.BUFFER_MUTATION,
                           OutputKind.PARAMETER_MUTATION):
            raise TaskError(
                path,
                f"task {task_name!r}: forward mutates {spec.target!r} in place "
                f"({spec.kind.name})",
                "write forward as a pure function: return new tensors instead of updating "
                "inputs or buffers in place",
            )
        else:
            raise TaskError(
                path,
                f"task {task_name!r}: unsupported graph output kind {spec.kind.name}",
                "capture handles inference graphs only",
            )

    nodes: list[AtenNode] = []
    for node in exported.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op != "call_function":
            raise TaskError(
                path,
                f"task {task_name!r}: unsupported graph node {node.op} {node.target} "
                "(control-flow or higher-order op)",
                "express forward with plain tensor ops (no torch.cond / torch.map)",
            )
        target = _target_name(node.target)
        if not node.users and node.meta.get("val") is None:
            continue  # runtime assertions such as aten._assert_tensor_metadata: no data
        nodes.append(
            AtenNode(
                name=node.name,
                target=target,
                args=tuple(_convert_arg(a) for a in node.args),
                kwargs={str(k): _convert_arg(v) for k, v in node.kwargs.items()},
                out=_out_spec(node),
            )
        )
    return AtenGraph(inputs=inputs, params=params, nodes=nodes, outputs=outputs, param_values=param_values,
                     param_targets=param_targets)


# --------------------------------------------------------------------------------------------
# op kinds, flops, bytes
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
    base = parts[1] if len(parts) >= 2 and parts[0] == "aten" else parts[0]
    return _KIND_ALIASES.get(base, base.lstrip("_") or base)


def _ref_specs(graph_specs: dict[str, TensorSpec], node: AtenNode) -> list[TensorSpec]:
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
    if kind == "conv":
        weight = operand_specs[1]
        per_out = weight.numel // weight.shape[0] if weight.shape and weight.shape[0] else 0
        has_bias = len(operand_specs) > 2
        return 2 * out_numel * per_out + (out_numel if has_bias else 0)
    if kind in _PER_ELEMENT_FLOPS:
        return _PER_ELEMENT_FLOPS[kind] * first_in
    if kind == "sort":
        dims = _reduced_dims(node, operand_specs)
        n = operand_specs[0].shape[dims[0]] if dims and operand_specs[0].shape else 1
        return first_in * max(1, math.ceil(math.log2(max(n, 2))))
    if _is_reduction(node):
        return first_in
    return out_numel


def _is_reduction(node: AtenNode) -> bool:
    """Reductions, normalisations and scans (ops that combine values along some dims)."""
    kind = node.kind
    if kind in ("layer_norm", "group_norm"):
        return True
    if kind not in _REDUCED_DIM_ARG:
        return False
    pos, _ = _REDUCED_DIM_ARG[kind]
    dims = node.args[pos] if len(node.args) > pos else node.kwargs.get("dim")
    return not any(True for _ in _iter_refs(dims))  # e.g. aten.max.other is elementwise


def _normalise_dims(dims: Any, rank: int) -> tuple[int, ...]:
    if dims == "all" or dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return tuple(range(-rank, 0))
    if isinstance(dims, int):
        dims = [dims]
    out = sorted({(d - rank if d >= 0 else d) for d in dims if isinstance(d, int)})
    return tuple(out)


def _reduced_dims(node: AtenNode, operand_specs: list[TensorSpec]) -> tuple[int, ...]:
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
    specs = graph._spec_table
    return sum(node_flops(n, _ref_specs(specs, n)) for n in graph.nodes)


def io_bytes(graph: AtenGraph) -> int:
    """Compulsory off-chip traffic: every input and param read once, every output written once.

    An output that appears twice is counted once. This is the byte count of the roofline: no
    kernel can move less, whatever it fuses.
    """
    read = sum(s.nbytes for s in (*graph.inputs, *graph.params))
    written = sum(graph.spec(name).nbytes for name in dict.fromkeys(r.name for r in graph.outputs))
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
        if not any(True for _ in _iter_refs(a)):
            items.append((i, a))
    for k, v in node.kwargs.items():
        if not any(True for _ in _iter_refs(v)):
            items.append((k, v))
    return items


def signature(graph: AtenGraph) -> Signature:
    """Compute the :class:`Signature` of ``graph`` (pure function of the graph, no torch state)."""
    specs = graph._spec_table
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
        if _is_reduction(node):
            reduced.append((kind, _reduced_dims(node, _ref_specs(specs, node))))

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
