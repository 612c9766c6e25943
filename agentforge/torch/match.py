"""Find library kernels inside a model's graph and run the model with those parts on the chip.

How matching works (and why it is trustworthy): the model is exported and decomposed to core
ATen exactly as the campaign captured its tasks (``torch.export`` + ``run_decompositions`` +
``agentforge.capture``), so a block written like a task decomposes to the same ops. Each
kernel family's task graph is a *pattern*; it is matched backwards from its outputs through
the model's graph (same op kinds, same argument structure and bool/str attributes, same
wiring; layout copies are looked through on both sides, as the signature does). A structural
match is then checked the way the campaign keyed its kernels: the matched subgraph is written
in the pattern's order and its :func:`agentforge.capture.signature` must have the
``sized_key`` of a problem the family was verified on (same op pattern, shapes, scalars such
as eps and scale, dtypes), or of its task at sizes inside a range the kernel was verified over
(:mod:`agentforge.ranges`; no check runs at call time). Only then is the subgraph replaced by a call of the family's
custom op. Only the task's outputs may leave the matched subgraph: a task with several outputs
(residual add + RMSNorm returning ``(rmsnorm(h), h)``) covers a pre-norm block's ``h = x + f(x);
norm(h)`` even though the next residual add reads ``h``, because the kernel returns ``h`` too.
A match with any other intermediate used elsewhere in the model, or that would need the rest
of the model to run in between, is refused (the reason goes in the report).
Matches are taken largest first, so a fused kernel (attention, an MLP block) wins over the
smaller kernels inside it; a match is checked against the verified problems (and, with
``verify_new_sizes``, verified at its sizes) only where no larger chosen region covers it.
Both graphs are put in a canonical form first (:mod:`agentforge.canonical`): commutative
operands ordered (``w * x`` matches ``x * w``), views that only merge or split leading dims
looked through, and a row-wise match keyed on rows (a ``[B, S, H]`` MLP matches its ``[T, H]``
task; the call reshapes its arguments and outputs).
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

from agentforge.canonical import canonical_form, canonical_graph, canonical_key, is_row_view
from agentforge.errors import AgentforgeError
from agentforge.capture import (TRANSPARENT_KINDS, AtenGraph, AtenNode, Ref, TensorSpec, dtype_str, export_guard,
                                graph_from_export, node_flops, operand_specs, signature)
from agentforge.torch.ops import (ModelCaptureError, OpFamily, ProblemKey, TorchLibrary, UnverifiedProblemError,
                                  Verified, format_arg_shapes, problem_key)

__all__ = ["Region", "EagerOp", "is_view_target", "Unverified", "OffloadPlan", "plan_offload", "export_graph"]


@dataclass
class Region:
    """A subgraph of the model replaced by one call of a library op."""
    family: OpFamily
    verified: Verified
    nodes: set[str]                 # model node names the call replaces
    semantic: list[str]             # the matched (non-copy) nodes, in the pattern's order
    args: list[str]                 # model values passed to the op: the task's inputs, then its params
    outputs: dict[str, int]         # model node name -> index of the op output that gives its value
    #: the shapes the kernel takes (its verified problem's); a model value of another shape with the
    #: same elements (a [B, S, H] activation for a [T, H] task of row-wise ops) is reshaped to it
    arg_shapes: list[tuple[int, ...]] = field(default_factory=list)
    #: model node name -> its shape (the kernel's output is reshaped back to it)
    out_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: in a plan for dynamic sizes (decode's KV length): how the call's sizes give the task's, so the
    #: kernel and its shapes are picked per call inside a verified range (None: fixed sizes)
    dynamic: "DynamicBinding | None" = None

    @property
    def op(self) -> str:
        return self.family.qualname_hint

    def call(self, values: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the library op on the model's values; the model values it gives, by node name."""
        arg_shapes, out_shapes = self.arg_shapes, self.out_shapes
        if self.dynamic is not None:
            arg_shapes, out_shapes = self.dynamic.shapes(self.family, values)
        args = [v if not s or tuple(v.shape) == s else v.reshape(s)
                for v, s in itertools.zip_longest(values, arg_shapes)]
        outs = self.family.call_op(*args)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        got = {}
        for name, i in self.outputs.items():
            o = outs[i]
            want = out_shapes.get(name)
            got[name] = o if want is None or tuple(o.shape) == want else o.reshape(want)
        return got


@dataclass
class DynamicBinding:
    """How a region of a graph with a dynamic size (a decode step's KV length: a sympy symbol) calls
    a kernel verified over a range of a task size: the task size is the symbol plus ``shift``
    (checked at three consecutive values when the plan is made: every argument and result has the
    same elements as the task's at those sizes), the task's other sizes are ``fixed``; per call the
    kernel's argument shapes come from the task at those sizes, the model's from the patterns."""
    symbol: Any
    task_size: str
    shift: int
    fixed: dict[str, int]
    arg_patterns: list[tuple]              # per argument: (shape with sympy dims, dtype)
    out_patterns: dict[str, tuple]         # model node -> its shape with sympy dims

    def task_sizes(self, value: int) -> dict[str, int]:
        return {**self.fixed, self.task_size: value + self.shift}

    def value(self, values: Sequence[torch.Tensor]) -> int | None:
        """The symbol's value in this call (solved from an argument dim that depends on it)."""
        return _symbol_value(self.symbol, [p[0] for p in self.arg_patterns], [tuple(v.shape) for v in values])

    def shapes(self, fam: OpFamily, values: Sequence[torch.Tensor]) -> tuple[list[tuple[int, ...]],
                                                                               dict[str, tuple[int, ...]]]:
        """The kernel's argument shapes and the model's result shapes in this call."""
        n = self.value(values)
        v = fam.at_sizes(self.task_sizes(n)) if n is not None else None
        if v is None:
            raise UnverifiedProblemError(f"{fam.qualname_hint}: no kernel verified for {self.task_size} = "
                                         f"{None if n is None else n + self.shift} (the backend checks this first)")
        at = {self.symbol: n}
        outs = {name: tuple(d if isinstance(d, int) else int(d.subs(at)) for d in shape)
                for name, (shape, _) in self.out_patterns.items()}
        return [tuple(x.shape) for x in (*v.graph.inputs, *v.graph.params)], outs


def _symbol_value(sym: Any, patterns: Sequence[Sequence[Any]], shapes: Sequence[Sequence[int]]) -> int | None:
    """The value of ``sym`` that gives these concrete ``shapes`` for shape ``patterns`` (sympy dims),
    solved from the first dim affine in it (``s + 1``: the KV cache after this step's token)."""
    import sympy

    for pattern, shape in zip(patterns, shapes):
        for d, x in zip(pattern, shape):
            if isinstance(d, int) or d.free_symbols != {sym}:
                continue
            try:
                poly = sympy.Poly(d, sym)       # Min(s + 1, W), Mod(s, 3)... are not polynomials: skipped
            except sympy.PolynomialError:
                continue
            if poly.degree() != 1 or not all(c.is_Integer for c in poly.all_coeffs()):
                continue
            a, b = (int(c) for c in poly.all_coeffs())
            if (int(x) - b) % a == 0:
                return (int(x) - b) // a
    return None


@dataclass
class EagerOp:
    """A model op that runs in PyTorch, and why it was not offloaded."""
    node: str
    kind: str
    reason: str
    #: PyTorch returns a view of its input (no computation, no copy: a split of a fused QKV projection)
    view: bool = False


def is_view_target(target: str) -> bool:
    """Whether the ATen op ``target`` ("aten.split_with_sizes.default") returns views of its input: every
    result aliases an argument without writing it (its schema's ``Tensor(a)`` returns). Such an op
    computes nothing and copies nothing, so left to PyTorch it costs no time and needs no kernel."""
    parts = target.split(".")
    if len(parts) != 3 or parts[0] != "aten":
        return False
    try:
        returns = getattr(getattr(torch.ops.aten, parts[1]), parts[2])._schema.returns
    except (AttributeError, RuntimeError):
        return False
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


@dataclass
class Unverified:
    """A part of the model that has the structure of a library op's task, at a problem (sizes,
    dtypes, scalars) no kernel of the op is verified for: it runs eagerly."""
    family: OpFamily
    key: ProblemKey                 # the matched subgraph's arguments (shapes, dtypes)
    nodes: list[str]                # the model ops it covers (not counting views/copies)

    @property
    def op(self) -> str:
        return self.family.qualname_hint

    def message(self) -> str:
        why = ("its argument shapes and dtypes are verified, but not its scalars (eps, scale, dims...)"
               if self.key in self.family.problems.by_key else "no kernel is verified for these sizes and dtypes")
        return (f"{self.op} matches model ops {', '.join(self.nodes)} at arguments ({format_arg_shapes(self.key)}), "
                f"but {why}; verified problems: {self.family.verified_short()}")

    def error(self) -> UnverifiedProblemError:
        return UnverifiedProblemError(
            f"{self.message()}\n  how to fix: run a campaign that covers these sizes, enable verify_new_sizes, or "
            f"leave strict off (these ops then run eagerly, with a warning)")


@dataclass
class OffloadPlan:
    """The model's graph split into library calls (regions) and eager ops, in a runnable order."""
    graph: AtenGraph
    exported: Any                   # torch.export.ExportedProgram (decomposed)
    regions: list[Region]
    eager: list[EagerOp]
    schedule: list[Any] = field(default_factory=list)   # Region | torch.fx.Node, dependency order
    unverified: list[Unverified] = field(default_factory=list)   # library ops left eager for their sizes
    #: matches left eager because their shapes depend on a dynamic size: (family, the model ops, each
    #: argument's (shape, dtype) with a sympy expression for each dynamic dim; None: not a tensor)
    dynamic_blocked: list[tuple[OpFamily, list[str], list[tuple | None]]] = field(default_factory=list)
    #: values no input reaches, computed once for the plan (node name -> value); never run per call
    folded: dict[str, Any] = field(default_factory=dict)

    def blocked_at(self, sizes: dict[Any, int]) -> list[tuple[OpFamily, ProblemKey, list[str]]]:
        """The matches left eager for their dynamic sizes, with their arguments at these values of
        the dynamic sizes (symbol -> int): (family, problem key, model ops)."""
        out = []
        for fam, nodes, pattern in self.dynamic_blocked:
            key = _key_at(pattern, sizes)
            if key is not None:
                out.append((fam, key, nodes))
        return out

    def dynamic_unverified(self, sizes: dict[Any, int]) -> list[Region]:
        """The regions whose kernel is picked per call (:attr:`Region.dynamic`) that have none verified
        at these values of the dynamic sizes (symbol -> int)."""
        out = []
        for r in self.regions:
            b = r.dynamic
            if b is not None and (b.symbol not in sizes or r.family.at_sizes(b.task_sizes(sizes[b.symbol])) is None):
                out.append(r)
        return out

    def run(self, args: Sequence[Any]) -> Any:
        """Run the model: regions through ``torch.ops.<ns>.<op>``, the rest as the exported ATen ops."""
        ep = self.exported
        env: dict[str, Any] = {}
        user = iter(args)
        state = {**ep.state_dict, **getattr(ep, "constants", {})}
        for spec in ep.graph_signature.input_specs:
            if spec.kind.name == "USER_INPUT":
                env[spec.arg.name] = next(user)
            else:
                env[spec.arg.name] = state[spec.target]
        env.update(self.folded)
        for unit in self.schedule:
            if isinstance(unit, Region):
                env.update(unit.call([env[a] for a in unit.args]))
                continue
            n = unit
            if n.op in ("placeholder", "output") or _is_assertion(n) or n.name in self.folded:
                continue    # runtime assertions (aten._assert_tensor_metadata) check values a region may hold
            a = torch.fx.node.map_arg(n.args, lambda x: env[x.name])
            k = torch.fx.node.map_arg(n.kwargs, lambda x: env[x.name])
            env[n.name] = n.target(*a, **k)
            if _uninitialised(n) and isinstance(env[n.name], torch.Tensor):
                env[n.name].zero_()
        out_node = next(n for n in ep.graph.nodes if n.op == "output")
        flat = [env[x.name] if isinstance(x, torch.fx.Node) else x for x in out_node.args[0]]
        return torch.utils._pytree.tree_unflatten(flat, ep.call_spec.out_spec)


def _uninitialised(n: torch.fx.Node) -> bool:
    """An allocation whose contents PyTorch leaves undefined (``empty_like``, ``empty_permuted``...).
    The plan fills it with zeros, one of the values it may hold: Mixtral's dispatch writes
    ``inv_perm[perm] = arange(S)`` into ``empty_like(perm)``, and left undefined the memory held int64
    values outside int32, so the kernel's guard sent every call back to eager."""
    return isinstance(n.target, torch._ops.OpOverload) and n.target.name().split("::")[-1].split(".")[0] in (
        "empty_like", "empty_permuted", "empty", "empty_strided", "new_empty", "new_empty_strided")


def _key_at(pattern: Sequence[tuple | None], sizes: dict[Any, int]) -> ProblemKey | None:
    """The problem key of arguments whose shapes are ``pattern`` (sympy expressions for dynamic
    dims) at these values of the dynamic sizes; None if one is not a tensor or not computable."""
    if any(p is None for p in pattern):
        return None
    try:
        return tuple((tuple(d if isinstance(d, int) else int(d.subs(sizes)) for d in shape), dtype)
                     for shape, dtype in pattern)
    except (TypeError, ValueError):
        return None


def _is_assertion(n: torch.fx.Node) -> bool:
    """A runtime assertion node (no data; the capture leaves it out of the AtenGraph, so the matcher
    never saw it read a region's intermediate)."""
    return n.op == "call_function" and not n.users and n.meta.get("val") is None


def weight_inputs(ep: Any, tensors: Sequence[torch.Tensor]) -> set[str]:
    """Names of ``ep``'s user inputs that are a model's parameters or buffers: an ``nn.Parameter``
    passed in, or an input dynamo named after a module buffer (``..._buffers_...``)."""
    names = list(ep.graph_signature.user_inputs)
    return {n for n, t in zip(names, tensors) if isinstance(t, torch.nn.Parameter) or "_buffers_" in n}


def export_graph(fn: torch.nn.Module, args: Sequence[Any], name: str = "model",
                 dynamic_shapes: Any = None) -> tuple[Any, AtenGraph]:
    """Export ``fn`` on ``args`` and decompose it the way the campaign captured its tasks.

    A model torch.export cannot capture (data-dependent Python control flow, an unsupported
    operation...) raises :class:`ModelCaptureError` naming, where the traceback shows it, the
    line of the model's code that could not be captured."""
    with export_guard():
        try:
            ep = torch.export.export(fn, tuple(args), dynamic_shapes=dynamic_shapes)
            ep = ep.run_decompositions()
        except Exception as e:  # noqa: BLE001 - anything torch.export raises is about the model
            raise ModelCaptureError(_capture_failure(name, e)) from e
    dd = data_dependent_shape(ep)
    if dd:
        raise ModelCaptureError(f"{name}: {dd}")
    rematerialize_constants(ep)
    return ep, graph_from_export(ep, name, f"<{name}>")


def _seeded_or_uninitialised(n: torch.fx.Node) -> bool:
    """An op whose value is not fixed by its arguments (random, or memory left undefined)."""
    return torch.Tag.nondeterministic_seeded in getattr(n.target, "tags", ()) or \
        any(w in str(n.target) for w in ("empty", "rand", "normal", "bernoulli"))


def constant_nodes(ep: Any) -> frozenset[str]:
    """Tensor nodes of ``ep`` no input's data reaches: made from nothing (``arange``, ``full``,
    ``scalar_tensor``), from sizes only (``arange(0, s0)`` in a graph with a dynamic size), or from
    such values (positions, a causal mask built from them). Not seeded-random or uninitialised ops."""
    const: set[str] = set()
    sizes: set[str] = set()
    for n in ep.graph.nodes:
        if n.op != "call_function" or _is_assertion(n):
            continue
        inputs_fixed = all(a.name in const or a.name in sizes for a in n.all_input_nodes)
        val = n.meta.get("val")
        if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            # a size read off a tensor (sym_size) or arithmetic on sizes: no data
            if inputs_fixed or str(n.target).startswith("aten.sym_size"):
                sizes.add(n.name)
            continue
        if inputs_fixed and isinstance(n.target, torch._ops.OpOverload) and isinstance(val, torch.Tensor) \
                and not _seeded_or_uninitialised(n):
            const.add(n.name)
    return frozenset(const)


def rematerialize_constants(ep: Any) -> int:
    """Give every op that reads a constant (:func:`constant_nodes`) its own copy of the constant
    ops it reads, as XLA duplicates iotas and broadcasts into each fusion that uses them.

    Why: Hugging Face builds one causal mask and every layer's attention reads it. A library call
    makes the constants its region reads ahead of time (a compiled dataflow program holds its
    constants), but two regions cannot share an op, so a shared mask stayed outside every kernel
    (computed by PyTorch). Both the task capture (``--from-model``) and the backend export through
    here, so a task and the model's graph it is matched in have the same copies. Returns the
    number of nodes added; the exported program's graph is changed in place (same values)."""
    const = constant_nodes(ep)
    if not const:
        return 0
    g = ep.graph
    order = {n.name: i for i, n in enumerate(g.nodes)}     # a cone holds originals only: copies never move them
    owner: dict[str, str] = {}
    added = 0
    for u in list(g.nodes):
        if u.op != "call_function" or u.name in const or _is_assertion(u):
            continue
        cone: list[torch.fx.Node] = []      # the constants u reads, directly or through other constants
        seen: set[str] = set()
        stack = [a for a in u.all_input_nodes if a.name in const]
        while stack:
            a = stack.pop()
            if a.name in seen:
                continue
            seen.add(a.name)
            cone.append(a)
            stack += [b for b in a.all_input_nodes if b.name in const]
        if not cone:
            continue
        if all(owner.get(a.name, u.name) == u.name for a in cone):
            owner.update((a.name, u.name) for a in cone)
            continue
        copies: dict[torch.fx.Node, torch.fx.Node] = {}
        with g.inserting_before(u):
            for a in sorted(cone, key=lambda x: order[x.name]):
                copies[a] = g.node_copy(a, lambda x: copies.get(x, x))
                owner[copies[a].name] = u.name
                added += 1
        u.args = torch.fx.node.map_arg(u.args, lambda x: copies.get(x, x))
        u.kwargs = torch.fx.node.map_arg(u.kwargs, lambda x: copies.get(x, x))
    if added:
        # the originals only a rewired reader used are dead now (left in, a region could not take
        # the values they read as its own)
        for n in reversed(list(g.nodes)):
            if n.name in const and all(_is_assertion(u) for u in n.users):
                for u in list(n.users):     # a check of a value nothing reads
                    g.erase_node(u)
                g.erase_node(n)
        ep.graph_module.recompile()
    return added


def data_dependent_shape(ep: Any) -> str | None:
    """Why ``ep`` cannot be planned when an op's output shape depends on tensor values (a boolean
    mask index ``x[mask]``, ``nonzero``, ``masked_select``...): "unsupported: data-dependent shape
    from <op>" with the model line it comes from, or None. Kernels are planned for static shapes."""
    for n in ep.graph.nodes:
        val = n.meta.get("val")
        vals = val if isinstance(val, (tuple, list)) else (val,)
        for v in vals:
            if isinstance(v, torch.Tensor) and any(not isinstance(d, int) and free_unbacked_symbols(d) for d in v.shape):
                where = ""
                trace = (n.meta.get("stack_trace") or "").strip().splitlines()
                for i in range(len(trace) - 1, -1, -1):
                    line = trace[i].strip()
                    if line.startswith("File ") and "site-packages" not in line and "/torch/" not in line:
                        code = trace[i + 1].strip() if i + 1 < len(trace) else ""
                        where = f"\n  at {line.removeprefix('File ')}: {code}"
                        break
                return (f"unsupported: data-dependent shape from {n.target} (its output has "
                        f"{[str(d) for d in v.shape]} elements decided by tensor values){where}\n  how to fix: "
                        f"keep shapes static (torch.where(mask, x, 0) instead of x[mask]; a fixed-size top-k instead "
                        f"of nonzero), or run that part without the library")
    return None


def _shape_pattern(n: Any) -> tuple | None:
    """(shape with a sympy expression for each dynamic dim, dtype) of an fx node's tensor value, or None."""
    v = n.meta.get("val") if n is not None else None
    if not isinstance(v, torch.Tensor):
        return None
    return tuple(d if isinstance(d, int) else d.node.expr for d in v.shape), dtype_str(v.dtype)


def dynamic_sizes(ep: Any, tensors: Sequence[torch.Tensor]) -> dict[Any, int]:
    """The values the dynamic sizes (symbols) of ``ep`` take for these user inputs."""
    out: dict[Any, int] = {}
    user = dict(zip(ep.graph_signature.user_inputs, tensors))
    for n in ep.graph.nodes:
        if n.op != "placeholder" or n.name not in user:
            continue
        v = n.meta.get("val")
        if isinstance(v, torch.Tensor):
            for d, x in zip(v.shape, user[n.name].shape):
                if not isinstance(d, int) and getattr(d.node.expr, "is_Symbol", False):
                    out[d.node.expr] = int(x)
    return out


def symbolic_nodes(ep: Any) -> dict[str, str]:
    """Nodes of ``ep`` (exported with dynamic sizes) whose output shape depends on a dynamic size,
    and which: kernels are verified for exact sizes, so these run eagerly at every size."""
    out = {}
    for n in ep.graph.nodes:
        val = n.meta.get("val")
        for v in (val if isinstance(val, (tuple, list)) else (val,)):
            if isinstance(v, torch.Tensor):
                dyn = [str(getattr(d, "node", d).expr if hasattr(d, "node") else d) for d in v.shape
                       if not isinstance(d, int)]
                if dyn:
                    out[n.name] = ", ".join(dict.fromkeys(dyn))
                    break
    return out


_NOT_USER = (os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _capture_failure(name: str, e: BaseException) -> str:
    """Why torch.export could not capture ``name``, and the model code it stopped at (the innermost
    traceback frame outside torch and agentforge, when there is one)."""
    where = ""
    for f in reversed(traceback.extract_tb(e.__traceback__)):
        path = os.path.abspath(f.filename) if not f.filename.startswith("<") else ""
        if path and not path.startswith(_NOT_USER) and "site-packages" not in path:
            where = f"\n  the part it could not capture: {f.filename}:{f.lineno} in {f.name}: {(f.line or '').strip()}"
            break
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    return (f"torch.export could not capture {name}: {type(e).__name__}: {first}{where}\n  how to fix: the offload "
            f"needs a graph torch.export can capture (no Python branching on tensor values, no unsupported "
            f"Python objects in forward); rewrite that part (torch.cond, torch.where), or compile the model with "
            f"torch.compile(model, backend=\"agentforge\"), which splits it at such branches and plans each graph "
            f"between them on its own, or run the model without the library")


# ---------------------------------------------------------------------- graph views

class GraphView:
    """Lookups over an AtenGraph: nodes by name, copies looked through, consumers of each value.

    Public because the offload report and the model report walk a graph the way the matcher does."""

    def __init__(self, g: AtenGraph):
        self.g = g
        self.nodes = {n.name: n for n in g.nodes}
        specs = g.spec_table
        #: views that only merge/split leading dims: looked through like copies (agentforge.canonical)
        self.row_views = {n.name for n in g.nodes if is_row_view(n, specs)}
        self.users: dict[str, list[str]] = {}
        for n in g.nodes:
            for r in n.refs():
                self.users.setdefault(r.name, []).append(n.name)
        for r in g.outputs:
            self.users.setdefault(r.name, []).append("<output>")
        self.by_kind: dict[str, list[str]] = {}
        for n in g.nodes:
            if not self.transparent(n.name):
                self.by_kind.setdefault(n.kind, []).append(n.name)

    def transparent(self, name: str) -> bool:
        n = self.nodes.get(name)
        return n is not None and (n.kind in TRANSPARENT_KINDS and bool(n.refs()) or name in self.row_views)

    def resolve(self, name: str) -> str:
        while self.transparent(name):
            name = self.nodes[name].refs()[0].name
        return name


#: Placement kwargs (where a tensor is created, not what it holds): the signature's ``attrs``
#: ignore them, but its ``scalars`` keep them, so a task captured on the meta device (as the
#: campaign does) and a model captured on the CPU would never share a sized key. The subgraph
#: takes the pattern's values for them.
_PLACEMENT = frozenset({"device", "layout", "pin_memory", "memory_format", "non_blocking"})


def _same_structure(p: Any, g: Any) -> bool:
    """Same argument layout: refs where refs are, equal bools/strings/None; numbers may differ
    (sizes and scalars are compared by the sized signature afterwards)."""
    if isinstance(p, Ref) or isinstance(g, Ref):
        return isinstance(p, Ref) and isinstance(g, Ref)
    if isinstance(p, (list, tuple)) or isinstance(g, (list, tuple)):
        return isinstance(p, (list, tuple)) and isinstance(g, (list, tuple)) and len(p) == len(g) and \
            all(_same_structure(a, b) for a, b in zip(p, g))
    if isinstance(p, dict) or isinstance(g, dict):
        return isinstance(p, dict) and isinstance(g, dict) and p.keys() == g.keys() and \
            all(k in _PLACEMENT or _same_structure(p[k], g[k]) for k in p)
    if isinstance(p, (bool, str)) or p is None or isinstance(g, (bool, str)) or g is None:
        return type(p) is type(g) and p == g
    return isinstance(p, (int, float)) and isinstance(g, (int, float))


class _Matcher:
    """One attempt to embed a pattern graph into the model graph (no backtracking inside an attempt)."""

    def __init__(self, P: GraphView, G: GraphView):
        self.P, self.G = P, G
        self.slots = {s.name: i for i, s in enumerate([*P.g.inputs, *P.g.params])}
        self.nodes: dict[str, str] = {}
        self.rev: dict[str, str] = {}
        self.bind: dict[int, str] = {}

    def copy(self) -> "_Matcher":
        m = _Matcher.__new__(_Matcher)
        m.P, m.G, m.slots = self.P, self.G, self.slots
        m.nodes, m.rev, m.bind = dict(self.nodes), dict(self.rev), dict(self.bind)
        return m

    def value(self, pv: str, gv: str) -> bool:
        pv, gv = self.P.resolve(pv), self.G.resolve(gv)
        if pv in self.slots:
            s = self.slots[pv]
            if s in self.bind:
                return self.bind[s] == gv
            self.bind[s] = gv
            return True
        if gv not in self.G.nodes:
            return False
        return self.node(pv, gv)

    def node(self, pn: str, gn: str) -> bool:
        if pn in self.nodes:
            return self.nodes[pn] == gn
        if gn in self.rev:
            return False
        p, g = self.P.nodes[pn], self.G.nodes[gn]
        if p.kind != g.kind or not _same_structure(p.args, g.args) or not _same_structure(p.kwargs, g.kwargs):
            return False
        if p.kind == "getitem" and p.args[1] != g.args[1]:
            return False
        self.nodes[pn], self.rev[gn] = gn, pn
        return all(self.value(pr.name, gr.name) for pr, gr in zip(p.refs(), g.refs()))


def _swap_refs(g: Any, p: Any, P: GraphView) -> Any:
    if isinstance(g, Ref):
        return Ref(P.resolve(p.name))
    if isinstance(g, list):
        return [_swap_refs(a, b, P) for a, b in zip(g, p)]
    if isinstance(g, tuple):
        return tuple(_swap_refs(a, b, P) for a, b in zip(g, p))
    if isinstance(g, dict):
        return {k: p[k] if k in _PLACEMENT else _swap_refs(g[k], p[k], P) for k in g}
    return g


def _renamed(out: Any, name: str) -> Any:
    if isinstance(out, tuple):
        return tuple(TensorSpec(f"{name}.{i}", o.shape, o.dtype) for i, o in enumerate(out))
    return TensorSpec(name, out.shape, out.dtype)


def _subgraph(m: _Matcher) -> AtenGraph:
    """The matched model subgraph in the pattern's order and names (so its signature is comparable)."""
    P, G = m.P, m.G
    specs = [G.g.spec(m.bind[i]) for i in range(len(m.slots))]
    n_in = len(P.g.inputs)
    inputs = [TensorSpec(p.name, s.shape, s.dtype) for p, s in zip(P.g.inputs, specs[:n_in])]
    params = [TensorSpec(p.name, s.shape, s.dtype) for p, s in zip(P.g.params, specs[n_in:])]
    nodes = []
    for pn in P.g.nodes:
        if P.transparent(pn.name):
            continue
        gn = G.nodes[m.nodes[pn.name]]
        nodes.append(AtenNode(pn.name, gn.target, _swap_refs(gn.args, pn.args, P),
                              _swap_refs(gn.kwargs, pn.kwargs, P), _renamed(gn.out, pn.name)))
    return AtenGraph(inputs, params, nodes, [Ref(P.resolve(r.name)) for r in P.g.outputs])


# ---------------------------------------------------------------------- planning

def _patterns(tl: TorchLibrary) -> list[tuple[OpFamily, GraphView]]:
    out = []
    for fam in tl.families.values():
        if fam.template.nodes:
            out.append((fam, GraphView(canonical_graph(fam.template))))
    return out


def _try_family(fam: OpFamily, P: GraphView, G: GraphView) -> list[tuple[OpFamily, _Matcher, list[str]]]:
    """The structural matches of ``fam``'s pattern in the model (not yet checked against its
    verified problems: that is done largest first, only for matches no larger region covers)."""
    found: list[tuple[OpFamily, _Matcher, list[str]]] = []
    outs = [P.resolve(r.name) for r in P.g.outputs]
    if any(o not in P.nodes for o in outs):
        return found     # an output that is an input as it is: nothing to fuse
    semantic_p = [n.name for n in P.g.nodes if not P.transparent(n.name)]
    anchors = G.by_kind.get(P.nodes[outs[0]].kind, [])
    for a in anchors:
        ms = [_Matcher(P, G)]
        for k, o in enumerate(outs):
            nxt = []
            cands = [a] if k == 0 else G.by_kind.get(P.nodes[o].kind, [])
            for m in ms:
                if o in m.nodes:        # an output the earlier outputs are computed from (h of (norm(h), h))
                    nxt.append(m)
                    continue
                for c in cands:
                    mm = m.copy()
                    if mm.node(o, c):
                        nxt.append(mm)
                        break
            ms = nxt
        if not ms:
            continue
        m = ms[0]
        if len(m.nodes) != len(semantic_p) or len(m.bind) != len(m.slots):
            continue
        found.append((fam, m, outs))
    return found


def _region_parts(fam: OpFamily, m: _Matcher, outs: list[str]) -> tuple[set[str], dict[str, int]] | str:
    """A match's model nodes (the matched ones and the copies / row views of them) and which of them
    the rest of the model reads, by the op output that gives each; or why it cannot be a region."""
    G = m.G
    mapped = set(m.nodes.values())
    members = set(mapped)
    for name in G.nodes:
        if G.transparent(name) and G.resolve(name) in mapped:
            members.add(name)
    bound = set(m.bind.values())
    if bound & members:
        return f"a match of {fam.qualname_hint} would feed one of its own results back in"
    out_vals = [m.nodes[o] for o in outs]
    outputs: dict[str, int] = {}
    for r in members:
        users = G.users.get(r, [])
        if any(u not in members for u in users):
            v = G.resolve(r)
            if v not in out_vals:      # only what the kernel returns may be read by the rest of the model
                return (f"matches {fam.qualname_hint}, but its intermediate {r} is also used outside the "
                        f"subgraph the kernel computes (the kernel returns only {', '.join(out_vals)})")
            outputs[r] = out_vals.index(v)
            # another region reads a value through the copies and row views it is seen through
            outputs.setdefault(v, out_vals.index(v))
    return members, outputs


def _region(fam: OpFamily, m: _Matcher, outs: list[str], unverified: list[Unverified]) -> Region | str:
    P, G = m.P, m.G
    parts = _region_parts(fam, m, outs)
    if isinstance(parts, str):
        return parts
    members, outputs = parts
    sub = _subgraph(m)
    canon = canonical_form(sub, reorder=False)      # the pattern's operand order already
    key = signature(canon).sized_key()
    flat = problem_key([*canon.inputs, *canon.params])  # the problem in the task's terms (rows flattened)
    got = problem_key([*sub.inputs, *sub.params])        # ... and in the model's
    vs = _canonical_problems(fam).get(key)
    if not vs and fam.ranges_short():
        # inside a verified range the kernel joins the problems as it is (no check runs): the task's
        # sizes are found from the arguments as the model has them, or with rows flattened
        for k in dict.fromkeys((got, flat)):
            if k not in fam.problems.by_key and fam.covered(k):
                break
        vs = _canonical_problems(fam).get(key)
    if not vs and fam.verify_new_sizes:
        # the task's checks at these sizes (its sizes found from the arguments as the model has them,
        # or with rows flattened); a passing kernel joins the problems
        for k in dict.fromkeys((got, flat)):
            if k not in fam.problems.by_key and fam.select_key(k) is not None:
                break
        vs = _canonical_problems(fam).get(key)
    semantic = [m.nodes[n.name] for n in P.g.nodes if not P.transparent(n.name)]
    if not vs:
        unverified.append(Unverified(fam, got, semantic))
        return (f"matches the structure of {fam.qualname_hint}, but not a verified problem: arguments "
                f"({format_arg_shapes(got)}); verified:\n{fam.describe_verified()}")
    v = min(vs, key=fam.seconds) if len(vs) > 1 else vs[0]
    args = [m.bind[i] for i in range(len(m.slots))]
    shapes = [tuple(s.shape) for s in (*v.graph.inputs, *v.graph.params)]
    for a, s in zip(args, shapes):
        if math.prod(G.g.spec(a).shape) != math.prod(s):
            return f"matches {fam.qualname_hint}, but argument {a} has {G.g.spec(a).shape}, the kernel takes {s}"
    out_shapes = {r: tuple(G.g.spec(r).shape) for r in outputs}
    return Region(fam, v, members, semantic, args, outputs, shapes, out_shapes)


def _dynamic_region(fam: OpFamily, m: _Matcher, outs: list[str], ep_nodes: dict[str, Any]) -> Region | None:
    """A match whose shapes depend on one dynamic size (a decode step's KV length), as a region
    whose kernel is picked per call (:class:`DynamicBinding`); None unless a task size of the family
    follows the dynamic size (:func:`_bind_task_size`) and a kernel is verified (a range) at the
    sizes the graph was traced at. The backend checks the range again at every call
    (:meth:`OffloadPlan.dynamic_unverified`) and plans that call's sizes on their own outside it."""
    parts = _region_parts(fam, m, outs)
    if isinstance(parts, str):
        return None
    members, outputs = parts
    args = [m.bind[i] for i in range(len(m.slots))]
    arg_pat = [_shape_pattern(ep_nodes.get(a)) for a in args]
    out_pat = {r: _shape_pattern(ep_nodes.get(r)) for r in outputs}
    if any(p is None for p in [*arg_pat, *out_pat.values()]):
        return None
    symbols = {x for p in [*arg_pat, *out_pat.values()] for d in p[0] if not isinstance(d, int)
               for x in d.free_symbols}
    if len(symbols) != 1:
        return None
    (sym,) = symbols
    hint = _symbol_value(sym, [p[0] for p in arg_pat], [m.G.g.spec(a).shape for a in args])
    if hint is None:
        return None
    b = _bind_task_size(fam, sym, int(hint), arg_pat, out_pat, outputs)
    v = fam.at_sizes(b.task_sizes(int(hint))) if b is not None else None
    if v is None or not _same_problem(fam, m, b, int(hint), ep_nodes):
        return None
    semantic = [m.nodes[n.name] for n in m.P.g.nodes if not m.P.transparent(n.name)]
    return Region(fam, v, members, semantic, args, outputs, [], {}, dynamic=b)


def _scalars(args: Any) -> list[Any]:
    """A node's non-tensor arguments, flattened; a symbolic one (a Ref to a size) as None."""
    out: list[Any] = []
    for a in args if isinstance(args, (list, tuple)) else [args]:
        if isinstance(a, (list, tuple)):
            out += _scalars(a)
        else:
            out.append(None if isinstance(a, Ref) else a)
    return out


def _same_problem(fam: OpFamily, m: _Matcher, b: "DynamicBinding", hint: int, ep_nodes: dict[str, Any]) -> bool:
    """Whether the model's matched ops compute the task's problem at the bound sizes: each matched
    (non-copy) op has the task op's full shape at three consecutive values, and the same scalar
    arguments (dims, scale, eps...; a symbolic one must be the task's size there). Element counts
    alone (:func:`_bind_task_size`) would let a cache laid out [B*H, D, s] feed a [B, H, KV, D] task
    reshaped, in the wrong element order, or a model with another attention scale use the task's."""
    for t in range(3):
        try:
            g = fam.captured(b.task_sizes(hint + t), clean=True)
        except AgentforgeError:
            return False
        task_nodes = {n.name: n for n in g.nodes}
        at = {b.symbol: hint + t}
        for pn, gn in m.nodes.items():
            if m.P.transparent(pn):
                continue
            tn, pat = task_nodes.get(pn), _shape_pattern(ep_nodes.get(gn))
            if tn is None or pat is None or not isinstance(tn.out, TensorSpec):
                return False
            if tuple(tn.out.shape) != tuple(d if isinstance(d, int) else int(d.subs(at)) for d in pat[0]):
                return False
            if t == 0:
                model, task = _scalars(m.G.nodes[gn].args), _scalars(tn.args)
                if len(model) != len(task) or any(x is not None and y is not None and x != y
                                                  for x, y in zip(model, task)):
                    return False
    return True


def _bind_task_size(fam: OpFamily, sym: Any, hint: int, arg_pat: list[tuple], out_pat: dict[str, tuple],
                    outputs: dict[str, int]) -> DynamicBinding | None:
    """The task size (one the family has a verified range for) that moves with the graph's dynamic
    size ``sym``: its value at the traced size ``hint`` is solved from the element counts (the task
    captured at its own value and one more), then every argument and result must have the task's
    element count and dtype at three consecutive values (a reshape, never a different problem)."""
    def numels(sizes: dict[str, int]) -> tuple[list[int], list[str], list[int]] | None:
        try:
            g = fam.captured(sizes, clean=True)
        except AgentforgeError:
            return None
        ins = [*g.inputs, *g.params]
        return [math.prod(x.shape) for x in ins], [x.dtype for x in ins], [math.prod(g.spec(o).shape) for o in g.outputs]

    def model(value: int) -> tuple[list[int], list[int | None]]:
        at = {sym: value}
        size = lambda shape: math.prod(d if isinstance(d, int) else int(d.subs(at)) for d in shape)  # noqa: E731
        outs: list[int | None] = [None] * (max(outputs.values()) + 1)
        for name, i in outputs.items():
            outs[i] = size(out_pat[name][0])
        return [size(p[0]) for p in arg_pat], outs

    own = dict(fam.task.sizes)
    ranged = {n for e in fam.entries for r in e.ranges if r.get("verified") for n in r.get("sizes", {})}
    for name in sorted(ranged & own.keys()):
        fixed = {k: v for k, v in own.items() if k != name}
        a, b = numels({**fixed, name: own[name]}), numels({**fixed, name: own[name] + 1})
        if a is None or b is None:
            continue
        want, _ = model(hint)
        step = next(((i, b[0][i] - a[0][i]) for i in range(len(want)) if b[0][i] != a[0][i]), None)
        if step is None or (want[step[0]] - a[0][step[0]]) % step[1]:
            continue
        at_hint = own[name] + (want[step[0]] - a[0][step[0]]) // step[1]
        ok = True
        for t in range(3):
            k = numels({**fixed, name: at_hint + t}) if at_hint + t >= 1 else None
            got_in, got_out = model(hint + t)
            if k is None or k[0] != got_in or [dt for _, dt in arg_pat] != k[1] or \
                    any(x is not None and x != y for x, y in zip(got_out, k[2])):
                ok = False
                break
        if ok:
            return DynamicBinding(sym, name, at_hint - hint, fixed, arg_pat, out_pat)
    return None


def _canonical_problems(fam: OpFamily) -> dict[str, list[Verified]]:
    """The family's verified problems by canonical key (agentforge.canonical), kept on the family
    and extended when ``verify_new_sizes`` adds a problem."""
    all_v = [v for vs in fam.problems.by_sized_key.values() for v in vs]
    cache = getattr(fam, "_canonical_cache", None)
    if cache is None or cache[0] != len(all_v):
        table: dict[str, list[Verified]] = {}
        for v in all_v:
            table.setdefault(canonical_key(v.graph), []).append(v)
        cache = (len(all_v), table)
        fam._canonical_cache = cache
    return cache[1]


def _schedule(ep: Any, regions: list[Region]) -> list[Any] | None:
    """Dependency order of regions and the remaining fx nodes (None: a region is not convex)."""
    fx_nodes = list(ep.graph.nodes)
    index = {n.name: i for i, n in enumerate(fx_nodes)}
    unit_of: dict[str, Any] = {n.name: n.name for n in fx_nodes}
    units: dict[Any, Any] = {n.name: n for n in fx_nodes}
    for ri, r in enumerate(regions):
        for n in r.nodes:
            unit_of[n] = ("region", ri)
            units.pop(n, None)      # the region's call computes it: it must not also run as an ATen op
        units[("region", ri)] = r
    deps: dict[Any, set[Any]] = {u: set() for u in units}
    for n in fx_nodes:
        u = unit_of[n.name]
        for a in n.all_input_nodes:
            ua = unit_of[a.name]
            if ua != u:
                deps[u].add(ua)
    users: dict[Any, set[Any]] = {u: set() for u in units}
    for u, ds in deps.items():
        for d in ds:
            users[d].add(u)
    first = {u: index[u] if isinstance(u, str) else min(index[n] for n in regions[u[1]].nodes) for u in units}
    missing = {u: len(ds) for u, ds in deps.items()}
    ready = [(first[u], str(u), u) for u, c in missing.items() if c == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, _, u = heapq.heappop(ready)
        order.append(units[u])
        for w in users[u]:
            missing[w] -= 1
            if missing[w] == 0:
                heapq.heappush(ready, (first[w], str(w), w))
    return order if len(order) == len(units) else None


def plan_offload(tl: TorchLibrary, ep: Any, graph: AtenGraph, weights: set[str] | None = None) -> OffloadPlan:
    """Match the library's kernels in ``graph`` (exported as ``ep``) and order the result for running.
    ``weights``: graph inputs that are the model's parameters or buffers (dynamo passes them as
    inputs), so commutative operands are ordered as in a task, where they are params."""
    G = GraphView(canonical_graph(graph, weights))
    reasons: dict[str, str] = {}
    unverified: list[Unverified] = []
    structural = [c for fam, P in _patterns(tl) for c in _try_family(fam, P, G)]
    # largest first (by the FLOPs a match computes, then by its ops: a fused kernel holds at least
    # the FLOPs and ops of the kernels inside it, and where two matches only overlap, the one that
    # computes more goes first: a linear with its epilogue before a norm that would take the
    # epilogue's last op); a match is checked against its family's verified problems (with
    # verify_new_sizes: verified at its sizes) only when no larger chosen region covers it, and
    # among the verified matches of one size the fastest kernel goes first
    specs = graph.spec_table
    flops = {n.name: node_flops(n, operand_specs(specs, n)) for n in graph.nodes}
    by_size: dict[tuple[int, int], list[tuple[OpFamily, _Matcher, list[str]]]] = {}
    for c in structural:
        by_size.setdefault((sum(flops.get(n, 0) for n in c[1].nodes.values()), len(c[1].nodes)), []).append(c)
    chosen: list[Region] = []
    taken: set[str] = set()
    dynamic = symbolic_nodes(ep)
    ep_nodes = {n.name: n for n in ep.graph.nodes}
    blocked: list[tuple[OpFamily, list[str], list[tuple | None]]] = []
    for size in sorted(by_size, reverse=True):
        verified: list[Region] = []
        for fam, m, outs in by_size[size]:
            if set(m.nodes.values()) & taken:
                continue
            hit = (set(m.nodes.values()) | set(m.bind.values())) & dynamic.keys()
            if hit and fam.ranges_short():
                r = _dynamic_region(fam, m, outs, ep_nodes)
                if r is not None:
                    verified.append(r)
                    continue
            if hit:      # a kernel is verified for exact sizes (or a range that does not hold these); these change
                blocked.append((fam, [m.nodes[n.name] for n in m.P.g.nodes if not m.P.transparent(n.name)],
                                [_shape_pattern(ep_nodes.get(m.bind[i])) for i in range(len(m.slots))]))
                why = (f"matches {fam.qualname_hint}, but its shapes depend on a dynamic size "
                       f"({dynamic[sorted(hit)[0]]}: e.g. the KV length); runs eagerly at every size")
                for gn in m.nodes.values():
                    reasons.setdefault(gn, why)
                continue
            r = _region(fam, m, outs, unverified)
            if isinstance(r, str):
                for gn in m.nodes.values():
                    reasons.setdefault(gn, r)
                continue
            verified.append(r)
        verified.sort(key=lambda r: r.family.seconds(r.verified))
        for r in verified:
            if r.nodes & taken:
                continue
            if _schedule(ep, [*chosen, r]) is None:
                for n in r.semantic:
                    reasons.setdefault(n, f"a match of {r.op} would need other model ops to run in its middle")
                continue
            chosen.append(r)
            taken |= r.nodes
    schedule = _schedule(ep, chosen) or list(ep.graph.nodes)
    folded = _fold_constants(ep, taken)
    eager = []
    ops = ", ".join(sorted(tl.families)) or "(none)"
    for n in graph.nodes:
        if n.name in taken or n.name in folded:
            continue
        picked = G.transparent(n.name) or n.kind == "getitem"
        is_view = picked or is_view_target(n.target)
        if picked:
            why = "a copy or element pick (no computation)"
        elif is_view:
            why = f"a view of its input ({n.kind}: PyTorch returns an alias, nothing is computed or copied)"
        else:
            why = reasons.get(n.name, f"no library kernel computes it (library ops: {ops})")
        eager.append(EagerOp(n.name, n.kind, why, is_view))
    # a match at unverified sizes matters only where its ops stay eager (not inside a larger kernel)
    left: list[Unverified] = []
    for u in unverified:
        if set(u.nodes) - taken and not any(x.family is u.family and x.key == u.key and x.nodes == u.nodes
                                            for x in left):
            left.append(u)
    return OffloadPlan(graph, ep, chosen, eager, schedule, left, blocked, folded)


def _fold_constants(ep: Any, taken: set[str]) -> dict[str, Any]:
    """Values no input reaches (positions from ``arange``, causal masks built from them, ``full``
    scalars...), computed once when the plan is made: a plan is made for fixed sizes (or, for a
    dynamic graph, these do not depend on its sizes), so every call would compute the same value.
    Seeded-random and uninitialised ops are never folded; nor is what a region computes."""
    env: dict[str, Any] = {}
    for n in ep.graph.nodes:
        if n.op != "call_function" or n.name in taken or _is_assertion(n):
            continue
        if not isinstance(n.target, torch._ops.OpOverload) or not all(a.name in env for a in n.all_input_nodes):
            continue
        if _seeded_or_uninitialised(n):
            continue
        try:
            args = torch.fx.node.map_arg(n.args, lambda x: env[x.name])
            kwargs = torch.fx.node.map_arg(n.kwargs, lambda x: env[x.name])
            env[n.name] = n.target(*args, **kwargs)
        except Exception:  # noqa: BLE001 - not foldable here: it runs as it would have
            continue
    return env


def semantic_nodes(nodes: Iterable[AtenNode]) -> list[AtenNode]:
    return [n for n in nodes if n.kind not in TRANSPARENT_KINDS and n.kind != "getitem"]

