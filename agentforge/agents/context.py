"""What the prompts say about a task: its kernel interface, op graph, machine, demonstrations.

Plain functions from a :class:`~agentforge.agents.roles.TaskContext` to small dicts and text
lines that the templates in ``prompts/`` lay out.

Dimensions are named by the sizes the task gives (its module-level constants), matched on the
*values a dimension takes* across every captured graph: the task's own sizes, its small
correctness sizes and, when two sizes are equal at every one of those (``M == N`` in a square
bmm suite), a *probe* capture with one of them doubled, so equal sizes get distinct names. A
dimension no single size explains is named by an expression over sizes when one fits
(``Q_HEADS / KV_HEADS``: the GQA group; ``BATCH * HEADS``: a flattened batch), which ASP accepts
in a tensor shape as written. Copies that export inserts (``clone``) are not plan nodes; an
argument that reads one is shown as the node it copies, so every name in the op graph is listed.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import fields, is_dataclass
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


# ------------------------------------------------------------------ naming dimensions

class Dims:
    """Names for the dimensions of a task's tensors, from the values they take across graphs.

    ``columns[c]`` is one captured graph and ``size_sets[c]`` the sizes it was captured at.
    :meth:`name` maps a tuple of one value per column to a size name, an expression over
    sizes, a literal, or ``D<k>``."""

    def __init__(self, sizes: dict[str, int], size_sets: list[dict[str, int]], graphs: list[AtenGraph],
                 probes: list[str] | None = None):
        self.sizes = dict(sizes)
        self.size_sets = size_sets
        self.graphs = graphs
        self.probes = list(probes or [])       # "M doubled" for each probe column, for the notes
        self._named: dict[tuple, str] = {}
        self._fresh = itertools.count(1)
        self.derived: dict[str, int] = {}      # expression -> its value at the task's own sizes
        self.unnamed: dict[str, int] = {}      # D<k> -> value at own sizes
        self.ambiguous: dict[str, list[str]] = {}
        cols = range(len(size_sets))
        self._singles: dict[tuple, list[str]] = {}
        for s in sizes:
            self._singles.setdefault(tuple(size_sets[c].get(s) for c in cols), []).append(s)

    def _vals(self, s: str) -> tuple:
        return tuple(ss.get(s) for ss in self.size_sets)

    def name(self, values: tuple[int, ...]) -> str:
        """The name of a dimension that is ``values[c]`` in graph ``c`` (one per column)."""
        values = tuple(int(v) for v in values)
        if values in self._named:
            return self._named[values]
        name = self._resolve(values)
        self._named[values] = name
        return name

    def _resolve(self, values: tuple[int, ...]) -> str:
        constant = len(set(values)) == 1
        if len(values) != len(self.size_sets):
            return str(values[0]) if constant else self._new(values)
        if constant and values[0] == 1:
            return "1"
        hits = self._singles.get(values)
        if hits:
            if len(hits) > 1:
                self.ambiguous[hits[0]] = hits
            return hits[0]
        if constant:
            return str(values[0])
        expr = self._expression(values)
        if expr is not None:
            self.derived[expr] = values[0]
            return expr
        return self._new(values)

    def _new(self, values: tuple) -> str:
        name = f"D{next(self._fresh)}"
        self.unnamed[name] = values[0]
        return name

    def _expression(self, values: tuple[int, ...]) -> str | None:
        """A product or exact quotient of sizes (or a size halved / doubled) equal to ``values``."""
        names = [s for s in self.sizes if all(v is not None and v >= 1 for v in self._vals(s))
                 and any(v > 1 for v in self._vals(s))]
        vals = {s: self._vals(s) for s in names}
        for k in (2, 3, 4, 8):
            for a in names:
                if all(x == k * y for x, y in zip(values, vals[a])):
                    return f"{k} * {a}"
                if all(k * x == y for x, y in zip(values, vals[a])):
                    return f"{a} / {k}"
        for k in (1, 2):
            for a, b in itertools.permutations(names, 2):
                if k == 1 and all(x * y == v for x, y, v in zip(vals[a], vals[b], values)) and \
                        names.index(a) < names.index(b):
                    return f"{a} * {b}"
                if all(y and x % (y * k) == 0 and x // (y * k) == v for x, y, v in zip(vals[a], vals[b], values)):
                    return f"{a} / {b}" + (f" / {k}" if k > 1 else "")
        for a, b, c in itertools.combinations(names, 3):
            if all(x * y * z == v for x, y, z, v in zip(vals[a], vals[b], vals[c], values)):
                return f"{a} * {b} * {c}"
        return None

    def shape(self, shapes: list[tuple[int, ...]]) -> list[str]:
        """Names of each position of a tensor whose shape is ``shapes[c]`` in column ``c``."""
        rank = len(shapes[0]) if shapes else 0
        if any(len(s) != rank for s in shapes) or len(shapes) != len(self.size_sets):
            return [str(d) for d in (shapes[0] if shapes else ())]
        return [self.name(tuple(s[d] for s in shapes)) for d in range(rank)]

    def notes(self) -> list[str]:
        """What a reader needs to know about the names: derived sizes, ties, unnamed dims."""
        out = []
        for expr, v in self.derived.items():
            role = ""
            parts = [p.strip() for p in expr.split("/")]
            if len(parts) == 2 and all("HEAD" in p for p in parts):
                role = " (the group: query heads sharing one K/V head)"
            elif len(parts) == 2 and "HEAD" in parts[1]:
                role = " (per head)"
            elif "*" in expr and not expr[0].isdigit():
                role = " (dimensions flattened into one)"
            out.append(f"{expr} = {v}{role}")
        for first, tied in self.ambiguous.items():
            out.append(f"{' and '.join(tied)} are equal at every tested size; dimensions of that size are named "
                       f"{first}")
        for d, v in self.unnamed.items():
            out.append(f"{d} = {v} (a dimension no task size explains)")
        return out


def _compatible(g: AtenGraph, own: AtenGraph) -> bool:
    return (len(g.inputs) == len(own.inputs) and len(g.params) == len(own.params)
            and len(g.outputs) == len(own.outputs))


def dims(ctx: Any) -> Dims:
    """The dimension namer of a task (cached on the context: probes cost a capture)."""
    cached = ctx.__dict__.get("_prompt_dims")
    if cached is not None:
        return cached
    own: AtenGraph = ctx.graph_own
    smalls = [g for g in ctx.graphs_small if _compatible(g, own)]
    sets = [dict(ctx.task.sizes)] + [dict(s) for s in ctx.task.resolved_size_sets()][: len(smalls)]
    graphs = [own] + smalls[: len(sets) - 1]
    probes: list[str] = []
    if len(sets) > 1:
        _add_probes(ctx, sets, graphs, probes)
    d = Dims(dict(ctx.task.sizes), sets, graphs, probes)
    ctx.__dict__["_prompt_dims"] = d
    return d


def _add_probes(ctx: Any, sets: list[dict], graphs: list[AtenGraph], probes: list[str]) -> None:
    """For sizes equal at every captured size set, capture once more with one of them doubled
    (then tripled), so that their dimensions can be told apart; a probe the task refuses (a
    divisibility it asserts) is skipped, and the tie stays (and is said in the notes)."""
    from ..capture import capture_at

    names = [s for s in ctx.task.sizes]
    groups: dict[tuple, list[str]] = {}
    for s in names:
        groups.setdefault(tuple(ss.get(s) for ss in sets), []).append(s)
    base = sets[1]
    for vals, group in groups.items():
        if len(group) < 2 or (len(set(vals)) == 1 and vals[0] == 1):
            continue
        for s in group[:-1]:
            for factor in (2, 3):
                probe = dict(base, **{s: base[s] * factor})
                try:
                    g = capture_at(ctx.task, {k: v for k, v in probe.items() if k in ctx.task.sizes}, meta=True)
                except Exception:  # noqa: BLE001 - a size the task cannot take: try the next
                    continue
                if not _compatible(g, graphs[0]):
                    continue
                sets.append(probe)
                graphs.append(g)
                probes.append(f"{s} x{factor}")
                break


# ------------------------------------------------------------------ the kernel interface

def interface(ctx: Any) -> dict:
    """The kernel interface the worker must implement, with symbolic dimensions.

    Parameters are the task's inputs (``get_inputs()`` order) then the model's weights (capture
    order); results are the outputs. Each dimension is named by the task size it equals in every
    captured graph (see :class:`Dims`), a literal when it never changes, an expression over sizes
    for a derived size; shapes and dtypes come from the graphs and the task's own sizes.
    ``header`` is a kernel header that binds."""
    own: AtenGraph = ctx.graph_own
    d = dims(ctx)

    def specs(g: AtenGraph) -> list[TensorSpec]:
        return list(g.inputs) + list(g.params) + list(g.output_specs)

    per_graph = [specs(g) for g in d.graphs]
    taken: set[str] = set()
    names = _operand_names(own, taken)
    n_out = len(own.outputs)
    out_names = [_ident("y" if n_out == 1 else f"y{i}", taken) for i in range(n_out)]
    entries = []
    n_in = len(own.inputs)
    small_specs = [specs(g) for g in ctx.graphs_small if _compatible(g, own)]
    for k, spec in enumerate(specs(own)):
        dims_k = d.shape([tuple(ps[k].shape) or (1,) for ps in per_graph])
        if k < n_in:
            origin, name = "input", names[k]
        elif k < len(names):
            target = own.param_targets.get(spec.name, spec.name)
            origin, name = f"weight {target} ({spec.name} in the op graph)", names[k]
        else:
            origin, name = "output", out_names[k - len(names)]
        dtype = KERNEL_DTYPE.get(spec.dtype, spec.dtype)
        small_spec = small_specs[0][k] if small_specs else None
        entries.append({"name": name, "origin": origin, "dtype": dtype, "task_dtype": spec.dtype, "dims": dims_k,
                        "graph_name": spec.name,
                        "own_shape": list(spec.shape or (1,)),
                        "small_shape": list(small_spec.shape or (1,)) if small_spec is not None else None,
                        "decl": f"{name}: {dtype}[{', '.join(dims_k)}]"})
    params = [e for e in entries if e["origin"] != "output"]
    results = [e for e in entries if e["origin"] == "output"]
    kname = _ident(ctx.task.name, set())
    kname = kname if kname not in taken else _ident(f"{kname}_kernel", taken)
    header = (f"kernel {kname}({', '.join(e['decl'] for e in params)}) -> "
              f"({', '.join(e['decl'] for e in results)})")
    used = {w for e in entries for dim in e["dims"] for w in re.findall(r"[A-Za-z_]\w*", dim)}
    sizes = dict(ctx.task.sizes)
    used_sizes = {s: sizes[s] for s in sizes if s in used}
    return {"params": params, "results": results, "header": header, "kernel_name": kname,
            "sizes": used_sizes, "sizes_text": _sizes_text(used_sizes), "dtype_notes": dtype_notes(entries)}


def dtype_notes(entries: list[dict]) -> list[str]:
    """Why a kernel's dtype differs from the task's (ASP has no 64-bit integers)."""
    notes = []
    for e in entries:
        if e["task_dtype"] != e["dtype"]:
            what = "takes" if e["origin"] != "output" else "writes"
            notes.append(f"`{e['name']}` is {e['task_dtype']} in PyTorch; ASP has no 64-bit integers, so the kernel "
                         f"{what} it as {e['dtype']} (the evaluator converts the values, which fit in 32 bits"
                         f"{', and widens the result back' if e['origin'] == 'output' else ''})")
    return notes


def _sizes_text(sizes: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sizes.items())


# ------------------------------------------------------------------ the op graph

def _aliases(graph: AtenGraph, listed: set[str]) -> dict[str, str]:
    """Each value that is not a listed node (a copy export inserts, one output of a
    multi-output node) -> how the op graph names it: the node it copies, ``node[i]``."""
    out: dict[str, str] = {}
    for n in graph.nodes:
        if n.name in listed:
            continue
        if n.target == "getitem" and n.args and isinstance(n.args[0], Ref):
            src = out.get(n.args[0].name, n.args[0].name)
            out[n.name] = f"{src}[{n.args[1]}]"
            continue
        refs = n.refs()
        if refs:
            out[n.name] = out.get(refs[0].name, refs[0].name)
    return out


def _per_column_nodes(d: Dims) -> tuple[list[list], list[int]]:
    """The semantic nodes of each graph whose nodes line up with the task's own graph."""
    from ..author import semantic_nodes

    own = semantic_nodes(d.graphs[0])
    cols, keep = [], []
    for c, g in enumerate(d.graphs):
        ns = own if c == 0 else semantic_nodes(g)
        if len(ns) == len(own) and all(a.target == b.target for a, b in zip(ns, own)):
            cols.append(ns)
            keep.append(c)
    return cols, keep


def _sub(d: Dims, keep: list[int]) -> Dims:
    if len(keep) == len(d.size_sets):
        return d
    return Dims(d.sizes, [d.size_sets[c] for c in keep], [d.graphs[c] for c in keep])


def _arg_text(values: list[Any], alias: dict[str, str], d: Dims) -> str:
    v = values[0]
    if isinstance(v, Ref):
        return alias.get(v.name, v.name)
    if isinstance(v, (list, tuple)):
        if all(isinstance(x, (list, tuple)) and len(x) == len(v) for x in values):
            return "[" + ", ".join(_arg_text([x[i] for x in values], alias, d) for i in range(len(v))) + "]"
        return "[" + ", ".join(_arg_text([x], alias, d) for x in v) + "]"
    if isinstance(v, int) and not isinstance(v, bool) and len(values) == len(d.size_sets) and \
            all(isinstance(x, int) and not isinstance(x, bool) for x in values) and len(set(values)) > 1 and \
            all(x > 0 for x in values):
        return d.name(tuple(values))
    return repr(v)


_NOISE_KWARGS = {"layout", "device", "pin_memory", "memory_format"}   # placement, not semantics


def op_graph(graph: AtenGraph, ctx: Any = None) -> list[str]:
    """One line per semantic node (the indices a plan's regions refer to), after the inputs
    and weights; shapes are symbolic when ``ctx`` is given (see :class:`Dims`)."""
    from ..author import semantic_nodes

    nodes = semantic_nodes(graph)
    listed = {n.name for n in nodes}
    alias = _aliases(graph, listed)
    d = dims(ctx) if ctx is not None else None
    cols, keep = _per_column_nodes(d) if d is not None else ([nodes], [0])
    dd = _sub(d, keep) if d is not None else Dims({}, [{}], [graph])

    def shape_of(specs: list[TensorSpec]) -> str:
        return f"{specs[0].dtype}[{', '.join(dd.shape([tuple(s.shape) for s in specs]))}]"

    lines = []
    if d is not None:
        for kind, group in (("input", "inputs"), ("weight", "params")):
            for k, s in enumerate(getattr(graph, group)):
                specs = [getattr(g, group)[k] for g in (d.graphs[c] for c in keep)]
                target = graph.param_targets.get(s.name) if kind == "weight" else None
                lines.append(f"{kind} {s.name}: {shape_of(specs)}" + (f" (model.{target})" if target else ""))
    for i, n in enumerate(nodes):
        same = [col[i] for col in cols]
        args = [_arg_text([m.args[j] for m in same], alias, dd) for j in range(len(n.args))]
        args += [f"{k}={_arg_text([m.kwargs.get(k) for m in same], alias, dd)}" for k in n.kwargs
                 if k not in _NOISE_KWARGS]
        outs = ", ".join(shape_of([m.outs[j] for m in same]) for j in range(len(n.outs)))
        lines.append(f"[{i}] {n.name} = {n.target}({', '.join(args)}) -> {outs}")
    outs = [alias.get(r.name, r.name) for r in graph.outputs]
    lines.append(f"outputs: {', '.join(outs)}")
    if any("i64[" in line for line in lines):
        lines.append("note: i64 values (indices, arange) are i32 inside an ASP kernel: ASP has no 64-bit integers")
    return lines


def graph_io(graph: AtenGraph) -> dict:
    def f(s: TensorSpec) -> str:
        return f"{s.name}: {s.dtype}{list(s.shape)}"
    return {"inputs": [f(s) for s in graph.inputs], "params": [f(s) for s in graph.params],
            "outputs": [f(s) for s in graph.output_specs]}


def signature_summary(sig: Any) -> dict:
    return {"key": sig.key(), "bound": sig.bound, "flops": sig.flops, "io_bytes": sig.io_bytes,
            "intensity": round(float(sig.intensity), 3), "ops": list(sig.ops)}


# ------------------------------------------------------------------ the machine

_LABELS = {
    "pcu.count": "PCUs (compute units; each operator copy gets its own)",
    "pcu.lanes": "SIMD lanes per PCU stage",
    "pcu.stages": "pipeline stages per PCU (lanes x stages element-ops per cycle)",
    "pcu.tail_ops_per_lane": "transcendental (tail unit) ops per lane per cycle",
    "pcu.f32_matmul_rate": "f32 matmul rate relative to bf16",
    "pcu.latency_cycles": "PCU pipeline fill latency, cycles",
    "pmu.count": "PMUs (on-chip SRAM units: FIFOs, accumulators, buffers)",
    "pmu.sram_kib": "SRAM per PMU, KiB",
    "pmu.bandwidth_bytes_per_cycle": "PMU bandwidth, bytes/cycle",
    "agcu.count": "AGCUs (address generators between chip and HBM/DDR)",
    "agcu.bandwidth_bytes_per_cycle": "bandwidth of one AGCU, bytes/cycle (a load/store with par=p gets p of them)",
    "hbm.capacity_gib": "HBM capacity, GiB",
    "hbm.bandwidth_gbs": "HBM bandwidth, GB/s",
    "hbm.latency_ns": "HBM latency, ns",
    "hbm.max_outstanding": "HBM requests in flight (event model)",
    "ddr.capacity_gib": "DDR capacity, GiB",
    "ddr.bandwidth_gbs": "DDR bandwidth, GB/s",
    "ddr.latency_ns": "DDR latency, ns",
    "ddr.max_outstanding": "DDR requests in flight (event model)",
    "network.fifo_depth": "FIFO depth of each stream edge, elements",
    "network.route_cycles_per_element": "cycles per element of a routing operator (copy, repeat, expand, ...)",
    "network.send_latency_cycles": "cycles for an element to reach its consumer (and its credit to come back)",
    "reconfig.cycles": "cycles per reconfiguration between sections",
}


def machine_constants(machine: Any) -> list[str]:
    """Every figure of the machine description the timing model uses, one line each, read from
    the machine (never hard-coded), then the derived peaks a kernel writer compares against."""
    lines = [f"clock: {machine.clock_ghz:g} GHz"]
    for f in fields(machine):
        part = getattr(machine, f.name)
        if not is_dataclass(part):
            continue
        for g in fields(part):
            key = f"{f.name}.{g.name}"
            lines.append(f"{_LABELS.get(key, key)}: {getattr(part, g.name):g}")
    m = machine
    clk = m.clock_ghz * 1e9
    lines += [
        f"derived: SRAM total {m.sram_bytes / 2**20:.0f} MiB; "
        f"HBM {m.bytes_per_cycle('hbm'):.0f} bytes/cycle, latency {m.latency_cycles('hbm'):.0f} cycles; "
        f"DDR {m.bytes_per_cycle('ddr'):.0f} bytes/cycle",
        f"derived per PCU per cycle: {m.simd_ops_per_cycle:g} SIMD element-ops, {m.tail_ops_per_cycle:g} "
        f"transcendental ops, matmul {m.mm_flops_per_cycle('bf16'):g} flops bf16/f16, "
        f"{m.mm_flops_per_cycle('f32'):g} flops f32",
        f"derived chip peaks: matmul {m.peak_tflops('bf16'):.1f} TFLOPS bf16/f16, {m.peak_tflops('f32'):.1f} TFLOPS f32; "
        f"elementwise {m.simd_ops_per_cycle * m.pcu.count * clk / 1e12:.1f} T element-ops/s; "
        f"one AGCU moves {m.agcu.bandwidth_bytes_per_cycle * clk / 1e9:.0f} GB/s, so HBM needs par >= "
        f"{math.ceil(m.hbm.bandwidth_gbs / (m.agcu.bandwidth_bytes_per_cycle * m.clock_ghz))} on loads/stores",
    ]
    return lines


def machine_summary(machine: Any) -> dict:
    d = dict(machine.summary())
    d["description"] = getattr(machine, "description", "")
    d["constants"] = machine_constants(machine)
    return d


# ------------------------------------------------------------------ the baseline line

def baseline_text(ctx: Any) -> str:
    """The baseline sentence: its time, or which op it cannot lower (never "nan us")."""
    sec = ctx.baseline_seconds
    if sec is not None and math.isfinite(sec) and sec > 0:
        return f"The op-by-op baseline takes {sec * 1e6:.2f} us (simulated) at the task's sizes."
    why = unsupported_ops(ctx.graph_own)
    if why:
        return ("The op-by-op baseline cannot lower " + "; ".join(why) + ", so it has no time: a verified "
                "kernel is the first working one, and the timing model's roofline is the bar.")
    return "The op-by-op baseline has no time for this task (it could not be timed); the roofline is the bar."


def unsupported_ops(graph: AtenGraph) -> list[str]:
    """``"[i] name (aten.op): why"`` for each node the baseline cannot lower."""
    from ..author import semantic_nodes
    from ..baseline import lower_steps

    skip: dict[str, str] = {}
    try:
        lower_steps(graph, skip)
    except Exception as e:  # noqa: BLE001
        return [f"the graph ({type(e).__name__}: {e})"]
    index = {n.name: i for i, n in enumerate(semantic_nodes(graph))}
    targets = {n.name: n.target for n in graph.nodes}
    return [f"[{index.get(n, '?')}] {n} ({targets.get(n, '?')}): {why}" for n, why in skip.items()]


def demo_view(demo: Any, max_chars: int = 6000) -> dict:
    src = (demo.source or "").rstrip()
    if len(src) > max_chars:
        src = src[:max_chars] + "\n# ... (cut)\n"
    return {"task": demo.task, "kind": demo.kind, "level": demo.level, "speedup": demo.speedup,
            "source": src, "plan": demo.plan}


def context_vars(ctx: Any) -> dict:
    """The variables every template gets for a task."""
    task = ctx.task
    d = dims(ctx)
    interface(ctx)                       # names the interface's dimensions first (the notes list them)
    ops = op_graph(ctx.graph_own, ctx)
    return {
        "task": {"name": task.name, "description": task.description, "source": task.source,
                 "sizes": dict(task.sizes), "sizes_text": _sizes_text(task.sizes), "group": task.group,
                 "level": task.level},
        "io": graph_io(ctx.graph_own),
        "ops": ops,
        "dim_notes": d.notes(),
        "signature": signature_summary(ctx.signature),
        "machine": machine_summary(ctx.machine),
        "baseline_us": ctx.baseline_seconds * 1e6 if ctx.baseline_seconds is not None else float("nan"),
        "baseline_text": baseline_text(ctx),
    }


__all__ = ["interface", "op_graph", "graph_io", "signature_summary", "machine_summary", "machine_constants",
           "demo_view", "context_vars", "dims", "Dims", "baseline_text", "unsupported_ops", "dtype_notes"]
