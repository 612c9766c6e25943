"""Capture: a task's computation as a graph of core-ATen ops (:mod:`agentforge.aten`).

``capture`` runs ``torch.export`` once, decomposes to the core-ATen op set (the same set every
backend must support) and copies what matters into the frozen IR: tensor specs (shape, dtype
string), op targets as strings, tensor arguments as :class:`Ref`. :func:`capture_at` captures a
task at given sizes, remembering shapes-only (meta) captures, which planning, timing and
verification all ask for. The IR lives in :mod:`agentforge.aten`, the signature and flop
counts in :mod:`agentforge.signature`, torch <-> IR dtype names in :mod:`agentforge.bridge`;
this module re-exports their names because "from agentforge.capture import ..." is how most
of the tree reads them.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import Any

import torch
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols, optimization_hint

from agentforge.aten import (DTYPE_BYTES, MOVEMENT_KINDS, TRANSPARENT_KINDS, AtenGraph, AtenNode, Ref, TensorSpec,
                             iter_refs, op_kind)
from agentforge.bridge import dtype_str, torch_dtype
from agentforge.errors import TaskError
from agentforge.signature import (COMPUTE_BOUND_INTENSITY, SIGNATURE_VERSION, Signature, estimate_flops, io_bytes,
                                  is_reduction, node_flops, operand_specs, reduced_dims, signature)
from agentforge.tasks import Instance, Task, instantiate

__all__ = [
    "Ref",
    "TensorSpec",
    "AtenNode",
    "AtenGraph",
    "Signature",
    "capture",
    "capture_at",
    "export_guard",
    "graph_from_export",
    "signature",
    "estimate_flops",
    "io_bytes",
    "node_flops",
    "operand_specs",
    "is_reduction",
    "reduced_dims",
    "iter_refs",
    "op_kind",
    "MOVEMENT_KINDS",
    "TRANSPARENT_KINDS",
    "dtype_str",
    "torch_dtype",
    "DTYPE_BYTES",
    "COMPUTE_BOUND_INTENSITY",
    "SIGNATURE_VERSION",
]

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


def _size_hint(s: Any) -> int:
    """A size as an int; a symbolic one (a graph exported with dynamic dims) by its example value,
    without the guard ``int(s)`` would add: that guard specialises the export's shape environment,
    so the symbol would read as the constant in the exported program's shapes from then on."""
    if isinstance(s, int):
        return s
    return int(optimization_hint(s))


def _spec_from_val(name: str, val: Any) -> TensorSpec:
    if isinstance(val, torch.Tensor):
        return TensorSpec(name, tuple(_size_hint(s) for s in val.shape), dtype_str(val.dtype))
    if isinstance(val, (bool, torch.SymBool)):
        return TensorSpec(name, (), "bool")
    if isinstance(val, (int, torch.SymInt)):
        return TensorSpec(name, (), "i64")
    if isinstance(val, (float, torch.SymFloat)):
        return TensorSpec(name, (), "f64")
    return TensorSpec(name, (), "none")


def _data_dependent(val: Any) -> bool:
    """Whether an exported value's shape is a symbol torch could not resolve from the input
    shapes (an unbacked size: x[mask], nonzero); a static export has no other symbolic sizes."""
    if isinstance(val, (list, tuple)):
        return any(_data_dependent(v) for v in val)
    if isinstance(val, torch.Tensor):
        # not int(d): on a backed symbol (a dynamic dim) that adds a guard specialising it
        return any(not isinstance(d, int) and bool(free_unbacked_symbols(d)) for d in val.shape)
    return False


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


@contextmanager
def export_guard() -> Iterator[None]:
    """Hold while calling ``torch.export`` anywhere in the process (the PyTorch matcher exports
    user models too): one export at a time, and torch's own warnings and log dumps silenced
    (failures are reported as our own errors)."""
    with _EXPORT_LOCK, _quiet_torch():
        yield


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
    return graph_from_export(exported, task.name, path)


def graph_from_export(exported: torch.export.ExportedProgram, task_name: str, path: str) -> AtenGraph:
    """The :class:`AtenGraph` of a decomposed export; inputs that are not tensors, in-place
    mutation and control-flow ops are :class:`TaskError` naming ``task_name`` at ``path``."""
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
        if _data_dependent(node.meta.get("val")):
            trace = node.meta.get("stack_trace") or ""
            found = re.findall(rf'File "{re.escape(path)}", line (\d+)', trace)
            raise TaskError(
                path,
                f"task {task_name!r}: unsupported: data-dependent shape from {target} ({node.name}): "
                "the size of its result depends on the input values (boolean-mask indexing x[mask], "
                "nonzero, unique, masked_select), and every kernel here has static shapes",
                "keep the shape static: torch.where(mask, x, 0) or x.masked_fill(~mask, 0) instead of x[mask], "
                "then reduce over the masked tensor",
                line=int(found[-1]) if found else None,
            )
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


_META_GRAPHS: "OrderedDict[tuple, AtenGraph]" = OrderedDict()
_META_LOCK = threading.Lock()
_META_KEEP = 128


def capture_at(task: Task, sizes: Mapping[str, int] | None = None, meta: bool = False) -> AtenGraph:
    """Capture ``task`` at ``sizes``; ``meta`` builds it without data (any size, no memory).

    Meta captures are remembered per (task file, its text, sizes): planning, the baseline's
    timing and a candidate's timing all need the same shapes-only graph, and torch.export is
    the slowest step of an evaluation. The graph is frozen and holds no data, so sharing it
    is safe; captures with data are never reused (their weights depend on the seed)."""
    if not meta:
        return capture(instantiate(task, sizes))
    key = (str(task.path), hash(task.source), tuple(sorted(task.sizes_for(sizes).items())))
    with _META_LOCK:
        if key in _META_GRAPHS:
            _META_GRAPHS.move_to_end(key)
            return _META_GRAPHS[key]
    with torch.device("meta"):
        g = capture(instantiate(task, sizes))
    with _META_LOCK:
        _META_GRAPHS[key] = g
        while len(_META_GRAPHS) > _META_KEEP:
            _META_GRAPHS.popitem(last=False)
    return g
