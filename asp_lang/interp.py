"""The interpreter: the numbers a checked program computes, with numpy.

Operators run over whole streams at once (see values.py), in program order, which is a
topological order because names are assigned once before use. Work is capped (elements
produced, accumulation steps, bytes of any one array) so an adversarial kernel fails with
a LimitError instead of exhausting the machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import AspError, InputError, LimitError
from .ops import OPS, Node
from .types import ITEMSIZE, NUMPY_STORAGE, round_to
from .values import SVal, leaves


@dataclass(frozen=True)
class Limits:
    max_elements: int = 1 << 31      # scalar values produced, summed over all operators
    max_steps: int = 1 << 20         # iterations of accum/scan loops with a general update
    max_array_bytes: int = 4 << 30   # bytes of any one stream value


POISON = {"f32": np.nan, "bf16": np.nan, "f16": np.nan, "i32": np.iinfo(np.int32).min, "bool": False}


class RunCtx:
    def __init__(self, prog, inputs: dict[str, np.ndarray], limits: Limits):
        self.prog = prog
        self.limits = limits
        self.arrays: dict[str, np.ndarray] = {}
        self.elements = 0
        self.steps = 0
        for name in prog.params:
            self.arrays[name] = inputs[name]
        # results are made on first use (see tensor): most are stored whole, never read

    def tensor(self, name: str) -> np.ndarray:
        a = self.arrays.get(name)
        if a is None:  # a result not written yet: poison marks positions never written
            t = self.prog.tensors[name]
            a = self.arrays[name] = np.full(t.shape, POISON[t.dtype], dtype=NUMPY_STORAGE[t.dtype])
        return a

    def write(self, name: str, arr: np.ndarray, partial: bool = False) -> None:
        t = self.prog.tensors[name]
        a = round_to(t.dtype, np.asarray(arr)).reshape(t.shape)
        if any(np.may_share_memory(a, b) for k, b in self.arrays.items() if k != name):
            a = a.copy()  # a result never aliases an input (not copied, see prepare_inputs) or another result
        self.arrays[name] = a

    def charge_elements(self, node: Node, n: float) -> None:
        self.elements += int(n)
        if self.elements > self.limits.max_elements:
            raise LimitError(f"the program produced more than {self.limits.max_elements} elements "
                             f"(at {node.op}); run it at smaller sizes", node.call.span)

    def charge_steps(self, node: Node, n: int) -> None:
        self.steps += n
        if self.steps > self.limits.max_steps:
            raise LimitError(f"accumulation loops took more than {self.limits.max_steps} steps (at {node.op}); "
                             "use a simpler update (acc + f(x)) or smaller sizes", node.call.span)

    def check_value(self, node: Node, v: SVal) -> None:
        total = 0
        for a in leaves(v.data):
            a = np.asarray(a)
            total += a.size * a.itemsize
        if total > self.limits.max_array_bytes:
            raise LimitError(f"{node.op} produced a stream of {total / 2**30:.1f} GiB, over the "
                             f"{self.limits.max_array_bytes / 2**30:.1f} GiB cap", node.call.span)
        self.charge_elements(node, sum(np.asarray(a).size for a in leaves(v.data)))


def prepare_inputs(prog, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validate and convert user arrays to the kernel's declared dtypes (bf16/f16 rounded)."""
    out = {}
    at = {p.name: p.span for p in prog.kernel.params}  # errors point at the parameter's declaration
    missing = [p for p in prog.params if p not in inputs]
    if missing:
        raise InputError(f"missing input(s): {', '.join(missing)} (kernel parameters: {', '.join(prog.params)})",
                         at[missing[0]])
    extra = [k for k in inputs if k not in prog.params]
    if extra:
        raise InputError(f"unknown input(s): {', '.join(extra)} (kernel parameters: {', '.join(prog.params)})",
                         prog.kernel.span)
    for name in prog.params:
        t = prog.tensors[name]
        a = np.asarray(inputs[name])
        if tuple(a.shape) != t.shape:
            raise InputError(f"input '{name}' has shape {list(a.shape)}, the kernel declares {list(t.shape)} "
                             f"at sizes {prog.sizes}", at[name])
        if t.dtype == "i32":
            if a.dtype.kind not in "iub":
                raise InputError(f"input '{name}' is {a.dtype}; the kernel declares i32", at[name])
            if a.size and (a.min() < -2**31 or a.max() >= 2**31):
                raise InputError(f"input '{name}' has values outside the i32 range", at[name])
        elif t.dtype == "bool":
            if a.dtype.kind != "b":
                raise InputError(f"input '{name}' is {a.dtype}; the kernel declares bool", at[name])
        elif a.dtype.kind not in "fiub":
            raise InputError(f"input '{name}' is {a.dtype}; the kernel declares {t.dtype}", at[name])
        # no defensive copy of a C-contiguous input: the run reads it through a read-only view
        v = round_to(t.dtype, a)
        v = (v if v.flags.c_contiguous else v.copy(order="C")).view()
        v.setflags(write=False)
        out[name] = v
    return out


def _size(nbytes: float) -> str:
    """Bytes in the unit that shows them (a small cap is not '0.0 GiB')."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} bytes"


def check_declared_sizes(prog, limits: Limits | None = None, results: bool = True) -> None:
    """Refuse, before anything is allocated, a kernel whose declared inputs (or results) are
    over the cap on one array (the cap the interpreter applies to the kernel's own streams): a
    hostile kernel must not exhaust the machine through its declarations either."""
    limits = limits or Limits()
    at = {p.name: p.span for p in prog.kernel.params + prog.kernel.results}
    for name in list(prog.params) + (list(prog.results) if results else []):
        t = prog.tensors[name]
        nbytes = math.prod(t.shape) * np.dtype(NUMPY_STORAGE[t.dtype]).itemsize
        if nbytes > limits.max_array_bytes:
            what = "input" if name in prog.params else "result"
            raise LimitError(f"{what} '{name}' is {t.dtype}{list(t.shape)} ({_size(nbytes)}), over the "
                             f"{_size(limits.max_array_bytes)} cap on one array; run it at smaller sizes "
                             "or use profile --timing-only", at.get(name))


_CHUNK = 1 << 20  # elements drawn at a time: no float64 temporary the size of a whole input


def random_inputs(prog, seed: int = 0, limits: Limits | None = None) -> dict[str, np.ndarray]:
    """Standard-normal floats, i32 in [0, 4), random bools: enough to exercise a kernel.

    Sizes are checked against ``limits`` (default :class:`Limits`) before anything is
    allocated, and values are drawn in chunks into the final array, so the memory used is that
    of the inputs themselves (the numbers are the same as drawing each input at once)."""
    try:
        check_declared_sizes(prog, limits, results=False)
    except AspError as e:
        raise e.located(prog.filename, prog.source) from None
    rng = np.random.default_rng(seed)
    out = {}
    for name in prog.params:
        t = prog.tensors[name]
        if t.dtype == "i32":
            a = np.empty(t.shape, np.int32)
            draw = lambda n: rng.integers(0, 4, n)  # noqa: E731
        elif t.dtype == "bool":
            a = np.empty(t.shape, np.bool_)
            draw = lambda n: rng.random(n) < 0.5  # noqa: E731
        else:
            a = np.empty(t.shape, np.float32)
            draw = rng.standard_normal
        flat = a.reshape(-1)
        for i in range(0, flat.size, _CHUNK):
            j = min(flat.size, i + _CHUNK)
            flat[i:j] = draw(j - i)
        out[name] = a
    return out


def run(prog, inputs: dict[str, np.ndarray], limits: Limits | None = None) -> dict[str, np.ndarray]:
    """Execute ``prog`` on ``inputs`` (name -> array); returns the results by name."""
    if hasattr(prog, "programs"):  # a kernel on several sockets: every shard, collectives for real
        return prog.run(inputs, limits)
    try:
        check_declared_sizes(prog, limits)  # results are allocated whole: refuse over-large ones first
        inputs = prepare_inputs(prog, inputs)
        rt = RunCtx(prog, inputs, limits or Limits())
        # estimate before running so an over-large program fails fast, before allocating
        for node in prog.nodes:
            for t in node.out_types:
                est = t.count * (t.elem.nbytes if hasattr(t.elem, "nbytes") else 4)
                if est > rt.limits.max_array_bytes:
                    raise LimitError(f"{node.op} would produce a stream of {est / 2**30:.1f} GiB, over the "
                                     f"{rt.limits.max_array_bytes / 2**30:.1f} GiB cap", node.call.span)
        values: dict[str, SVal] = {}
        with np.errstate(all="ignore"):
            for node in prog.nodes:
                ins = [values.pop(n) for n in node.inputs]
                try:
                    outs = OPS[node.op].run(node, ins, rt)
                except AspError as e:  # run-time errors (routing, indices) point at their operator
                    if e.span.line <= 0:
                        e.span = node.call.span
                    raise
                for name, v in zip(node.outputs, outs):
                    rt.check_value(node, v)
                    if name != "_":
                        values[name] = v
        return {name: rt.arrays[name] for name in prog.results}
    except AspError as e:
        raise e.located(prog.filename, prog.source) from None


__all__ = ["run", "random_inputs", "prepare_inputs", "check_declared_sizes", "Limits", "ITEMSIZE"]
