"""What the prompts say about a task: its kernel interface, op graph, machine, demonstrations.

Plain functions from a :class:`~agentforge.agents.roles.TaskContext` to small dicts and text
lines that the templates in ``prompts/`` lay out.
"""

from __future__ import annotations

import re
from typing import Any

from ..binding import KERNEL_DTYPE
from ..capture import AtenGraph, Ref, TensorSpec

_ASP_KEYWORDS = {"kernel", "sizes", "fn", "let", "return"}


def _ident(name: str, taken: set[str]) -> str:
    s = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_") or "t"
    if s[0].isdigit():
        s = "t" + s
    if s in _ASP_KEYWORDS:
        s += "_"
    base, k = s, 1
    while s in taken:
        k += 1
        s = f"{base}{k}"
    taken.add(s)
    return s


def _operand_names(graph: AtenGraph, taken: set[str]) -> list[str]:
    """Readable parameter names: inputs as captured, weights by their model attribute."""
    names = [_ident(s.name, taken) for s in graph.inputs]
    for s in graph.params:
        target = graph.param_targets.get(s.name, s.name)
        names.append(_ident(target.replace(".", "_"), taken))
    return names


def interface(ctx: Any) -> dict:
    """The kernel interface the worker must implement, with symbolic dimensions.

    Parameters are the task's inputs (``get_inputs()`` order) then the model's weights (capture
    order); results are the outputs. Each dimension is named after the task size that equals it
    in every captured graph (own sizes and the small correctness sizes), a literal when it never
    changes, else ``D<k>``; shapes and dtypes come from ``ctx.graphs_small[0]`` and the task's own
    sizes. ``header`` is a kernel header that binds."""
    own: AtenGraph = ctx.graph_own
    graphs = [own] + [g for g in ctx.graphs_small
                      if len(g.inputs) == len(own.inputs) and len(g.params) == len(own.params)
                      and len(g.outputs) == len(own.outputs)]

    sizes = dict(ctx.task.sizes)
    size_sets = [dict(ctx.task.sizes)] + [dict(s) for s in ctx.task.resolved_size_sets()][: len(graphs) - 1]

    def specs(g: AtenGraph) -> list[TensorSpec]:
        return list(g.inputs) + list(g.params) + list(g.output_specs)

    per_graph = [specs(g) for g in graphs]
    dim_names: dict[tuple[int, ...], str] = {}
    fresh = iter(range(1, 10_000))

    def dim_name(values: tuple[int, ...]) -> str:
        if values in dim_names:
            return dim_names[values]
        name = None
        if len(size_sets) == len(values):
            for s in sizes:
                if all(ss.get(s) == v for ss, v in zip(size_sets, values)):
                    name = s
                    break
        if name is None:
            name = str(values[0]) if len(set(values)) == 1 else f"D{next(fresh)}"
        dim_names[values] = name
        return name

    taken: set[str] = set()
    names = _operand_names(own, taken)
    n_out = len(own.outputs)
    out_names = [_ident("y" if n_out == 1 else f"y{i}", taken) for i in range(n_out)]
    entries = []
    n_in = len(own.inputs)
    for k, spec in enumerate(specs(own)):
        shapes = [ps[k].shape or (1,) for ps in per_graph]
        dims = [dim_name(tuple(sh[d] if d < len(sh) else 1 for sh in shapes)) for d in range(len(spec.shape or (1,)))]
        if k < n_in:
            origin, name = "input", names[k]
        elif k < len(names):
            target = own.param_targets.get(spec.name, spec.name)
            origin, name = f"weight {target} ({spec.name} in the op graph)", names[k]
        else:
            origin, name = "output", out_names[k - len(names)]
        dtype = KERNEL_DTYPE.get(spec.dtype, spec.dtype)
        small_spec = _at(per_graph, 1, k)
        entries.append({"name": name, "origin": origin, "dtype": dtype, "task_dtype": spec.dtype, "dims": dims,
                        "own_shape": list(spec.shape or (1,)),
                        "small_shape": list(small_spec.shape or (1,)) if small_spec is not None else None,
                        "decl": f"{name}: {dtype}[{', '.join(dims)}]"})
    params = [e for e in entries if e["origin"] != "output"]
    results = [e for e in entries if e["origin"] == "output"]
    kname = _ident(ctx.task.name, set())
    kname = kname if kname not in taken else _ident(f"{kname}_kernel", taken)
    header = (f"kernel {kname}({', '.join(e['decl'] for e in params)}) -> "
              f"({', '.join(e['decl'] for e in results)})")
    used = {d for e in entries for d in e["dims"] if not d.isdigit()}
    used_sizes = {d: sizes[d] for d in sizes if d in used}
    return {"params": params, "results": results, "header": header, "kernel_name": kname,
            "sizes": used_sizes, "sizes_text": _sizes_text(used_sizes)}


def _sizes_text(sizes: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sizes.items())


def _at(per_graph: list, g: int, k: int) -> TensorSpec | None:
    return per_graph[g][k] if g < len(per_graph) and k < len(per_graph[g]) else None


def _arg(value: Any, graph: AtenGraph) -> str:
    if isinstance(value, Ref):
        try:
            s = graph.spec(value)
            return f"{value.name}:{s.dtype}{list(s.shape)}"
        except KeyError:
            return value.name
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_arg(v, graph) for v in value) + "]"
    return repr(value)


def op_graph(graph: AtenGraph) -> list[str]:
    """One line per semantic node (the indices a plan's regions refer to)."""
    from ..author import semantic_nodes

    lines = []
    for i, n in enumerate(semantic_nodes(graph)):
        args = ", ".join([_arg(a, graph) for a in n.args] + [f"{k}={_arg(v, graph)}" for k, v in n.kwargs.items()])
        outs = ", ".join(f"{o.dtype}{list(o.shape)}" for o in n.outs)
        lines.append(f"[{i}] {n.name} = {n.target}({args}) -> {outs}")
    return lines


def graph_io(graph: AtenGraph) -> dict:
    def f(s: TensorSpec) -> str:
        return f"{s.name}: {s.dtype}{list(s.shape)}"
    return {"inputs": [f(s) for s in graph.inputs], "params": [f(s) for s in graph.params],
            "outputs": [f(s) for s in graph.output_specs]}


def signature_summary(sig: Any) -> dict:
    return {"key": sig.key(), "bound": sig.bound, "flops": sig.flops, "io_bytes": sig.io_bytes,
            "intensity": round(float(sig.intensity), 3), "ops": list(sig.ops)}


def machine_summary(machine: Any) -> dict:
    d = dict(machine.summary())
    d["description"] = getattr(machine, "description", "")
    return d


def demo_view(demo: Any, max_chars: int = 6000) -> dict:
    src = (demo.source or "").rstrip()
    if len(src) > max_chars:
        src = src[:max_chars] + "\n# ... (cut)\n"
    return {"task": demo.task, "kind": demo.kind, "level": demo.level, "speedup": demo.speedup,
            "source": src, "plan": demo.plan}


def context_vars(ctx: Any) -> dict:
    """The variables every template gets for a task."""
    task = ctx.task
    return {
        "task": {"name": task.name, "description": task.description, "source": task.source,
                 "sizes": dict(task.sizes), "sizes_text": _sizes_text(task.sizes), "group": task.group,
                 "level": task.level},
        "io": graph_io(ctx.graph_own),
        "ops": op_graph(ctx.graph_own),
        "signature": signature_summary(ctx.signature),
        "machine": machine_summary(ctx.machine),
        "baseline_us": ctx.baseline_seconds * 1e6,
    }


__all__ = ["interface", "op_graph", "graph_io", "signature_summary", "machine_summary", "demo_view", "context_vars"]
