"""Kernel families of a library as PyTorch custom ops (``torch.ops.<namespace>.<op>``).

Why custom ops rather than plain Python functions: a custom op is opaque to torch.compile and
torch.export (they trace it through its fake implementation instead of into the emulator), it
can carry an autograd formula, and ``torch.library.opcheck`` can test all of that.

Calling convention (the same as the verifier's, agentforge/binding.py): the op's arguments are
the task's inputs in ``get_inputs()`` order, followed by its parameters, buffers and tensor
constants in capture order (``AtenGraph.params``: ``p_weight``, ``p_q_proj_weight`` ...). The
op returns the task's outputs: one tensor, or a tuple of them.

What "verified for" means here: a kernel runs only on a problem it was verified on: the
argument shapes and dtypes of one of its ``verified_at`` size sets (its task captured at those
sizes), or any sizes inside a range it was verified over (``agentforge library verify-ranges``,
:mod:`agentforge.ranges`: edges, ragged and interior points checked once, so a call inside the
range runs the kernel without verifying at call time). Anything else is refused with an error
that lists what exists, unless the library was loaded with ``verify_new_sizes=True`` (the
task's checks run at the new sizes on first use, the verdict is cached for the process) or
``fallback="torch"`` (the task's PyTorch reference runs instead, with a warning; at other
dtypes, the reference at those dtypes). The chip computes integers in int32: int64 arguments
are converted only when every value fits, else refused the same way. Never a silent wrong answer.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

import asp_lang

from agentforge.capture import capture_at
from agentforge.capture import AtenGraph, TensorSpec, dtype_str, signature, torch_dtype
from agentforge.errors import AgentforgeError
from agentforge.library import KernelEntry, Library, StoredCaptures, sizes_id, stored_captures
from agentforge.ranges import range_covers
from agentforge.solution import Solution
from agentforge.tasks import Task, instantiate, load_task

__all__ = ["load_library", "TorchLibrary", "OpFamily", "TorchBridgeError", "UnverifiedProblemError",
           "NoDerivativeError", "ModelCaptureError", "StoredCapturesWarning", "FALLBACKS"]

FALLBACKS = ("error", "torch")
_LIMITS = asp_lang.Limits(max_elements=1 << 28, max_steps=1 << 18, max_array_bytes=1 << 30)


class TorchBridgeError(AgentforgeError):
    """The PyTorch bridge cannot do what was asked (bad option, clashing registration...)."""


class UnverifiedProblemError(TorchBridgeError):
    """An op was called at sizes or dtypes no kernel of its family was verified for."""


class NoDerivativeError(TorchBridgeError):
    """Backward was asked of an op whose reference has no usable derivative."""


class StoredCapturesWarning(UserWarning):
    """A library's stored task captures could not be used (damaged, made by another torch or from another
    version of the task): the task is captured again, as for a library written before they were stored."""


class ModelCaptureError(TorchBridgeError):
    """torch.export could not capture a model (or a compiled graph) the library is to be matched in."""


def _clean_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` in a fresh thread: capturing a task (torch.export) fails inside an op's
    implementation, where the dispatcher has switched autograd off for this thread."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=run, name="agentforge-capture")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _capture_meta(task: Task, sizes: Mapping[str, int] | None) -> AtenGraph:
    return _clean_thread(capture_at, task, sizes, True)


def format_arg_shapes(shapes: Sequence[tuple[tuple[int, ...], str]]) -> str:
    return ", ".join(f"{dt}{list(sh)}" for sh, dt in shapes)


def _fmt_sizes(sizes: Mapping[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sizes.items())


ProblemKey = tuple[tuple[tuple[int, ...], str], ...]


def problem_key(specs: Sequence[TensorSpec]) -> ProblemKey:
    return tuple((tuple(s.shape), s.dtype) for s in specs)


def args_key(args: Sequence[torch.Tensor]) -> ProblemKey:
    return tuple((tuple(int(d) for d in a.shape), dtype_str(a.dtype)) for a in args)


@dataclass
class Verified:
    """One exact problem a kernel was verified on: the entry, the task sizes, the captured graph."""
    entry: KernelEntry
    sizes: dict[str, int]
    graph: AtenGraph                      # the task captured at ``sizes`` (meta: shapes only)
    sized_key: str
    how: str = "campaign"                 # "campaign" (verified_at) | "on first use" (verify_new_sizes)
    #                                       | "verified range NAME=LO..HI" (agentforge.ranges)


@dataclass
class _Problems:
    by_key: dict[ProblemKey, list[Verified]] = field(default_factory=dict)
    by_sized_key: dict[str, list[Verified]] = field(default_factory=dict)

    def add(self, v: Verified) -> None:
        self.by_key.setdefault(problem_key([*v.graph.inputs, *v.graph.params]), []).append(v)
        self.by_sized_key.setdefault(v.sized_key, []).append(v)


class OpFamily:
    """All kernels of one op (library entries sharing ``op``) and how to pick one for a call."""

    def __init__(self, library: Library, op: str, entries: list[KernelEntry], machine: asp_lang.Machine,
                 fallback: str, verify_new_sizes: bool):
        self.library = library
        self.op = op
        self.entries = sorted(entries, key=lambda e: e.simulated_seconds)
        self.machine = machine
        self.fallback = fallback
        self.verify_new_sizes = verify_new_sizes
        self._tasks: dict[str, Task] = {}
        self._lock = threading.RLock()
        self._problems: _Problems | None = None
        self._solutions: dict[str, Solution] = {}
        self._ranked: dict[ProblemKey, list[Verified]] = {}
        self._inferred: dict[ProblemKey, dict[str, int] | None] = {}
        self._at_sizes: dict[tuple, Verified | None] = {}
        self._refs: dict[tuple, torch.nn.Module] = {}
        self._new_checked: dict[tuple[str, ProblemKey], bool] = {}
        self._stored: dict[str, StoredCaptures] = {}
        #: where each verified problem's graph came from: "stored" (the library's captures) or "captured"
        self.graph_sources: dict[str, int] = {"stored": 0, "captured": 0}
        first = self.entries[0]
        self.task = self.task_of(first)
        sizes = first.verified_at[0]["sizes"] if first.verified_at else first.own_sizes
        self.template = self.captured(sizes, first)   # the interface (names, ranks)
        self.n_inputs = len(self.template.inputs)
        self.arg_names = _arg_names([*self.template.inputs, *self.template.params])
        self.n_outputs = len(self.template.outputs)

    # ------------------------------------------------------------------ what exists

    def task_of(self, e: KernelEntry) -> Task:
        if e.task_file not in self._tasks:
            self._tasks[e.task_file] = load_task(self.library.root / e.task_file)
        return self._tasks[e.task_file]

    def stored(self, e: KernelEntry) -> StoredCaptures:
        """The library's stored captures of ``e``'s task (agentforge.library.stored_captures), read once;
        a file that cannot be used is reported once (a warning with the reason) and the task is captured."""
        with self._lock:
            if e.task_file not in self._stored:
                # the file against the task and the manifest: the check `library verify` reports
                st = stored_captures(self.library.root, e.task_file,
                                     [x for x in self.entries if x.task_file == e.task_file], self.task_of(e).sizes)
                if st.problem:
                    warnings.warn(f"library {self.library.root}: stored captures of task {e.task!r} not used: "
                                  f"{st.problem}; capturing the task again instead (torch.export, ~0.5 s per "
                                  f"size set)", StoredCapturesWarning, stacklevel=2)
                self._stored[e.task_file] = st
            return self._stored[e.task_file]

    def captured(self, sizes: Mapping[str, int] | None, entry: KernelEntry | None = None, *,
                 clean: bool = False) -> AtenGraph:
        """The task of ``entry`` (default: the family's) captured without data at ``sizes``: the library's
        stored capture when it holds a valid one for those sizes, else ``torch.export`` now (``clean``: in
        a fresh thread, as an op's implementation must)."""
        e = entry or self.entries[0]
        task = self.task_of(e)
        st = self.stored(e)
        if st.graphs:
            try:
                g = st.graphs.get(sizes_id(task.sizes_for(sizes)))
            except AgentforgeError:
                g = None
            if g is not None:
                return g
        return _capture_meta(task, sizes) if clean else capture_at(task, sizes, meta=True)

    @property
    def problems(self) -> _Problems:
        """Every (entry, verified size set), captured lazily: loading a library stays cheap."""
        with self._lock:
            if self._problems is None:
                probs = _Problems()
                for e in self.entries:
                    st = self.stored(e)
                    sets = [(dict(v["sizes"]), "campaign") for v in e.verified_at]
                    # a library whose kernels are checked at derived check sizes running the configuration
                    # timed at the task's own sizes (the referee's check_size_sets) vouches for those too
                    own = dict(getattr(e, "own_sizes", None) or {})
                    if own and all(own != s for s, _ in sets):
                        sets.append((own, "own sizes (checked at smaller sizes, same configuration)"))
                    for sizes, how in sets:
                        g = self.captured(sizes, e)
                        self.graph_sources["stored" if any(g is x for x in st.graphs.values()) else "captured"] += 1
                        probs.add(Verified(e, sizes, g, signature(g).sized_key(), how))
                self._problems = probs
            return self._problems

    def schema(self) -> str:
        outs = ", ".join("Tensor" for _ in range(self.n_outputs))
        ret = "Tensor" if self.n_outputs == 1 else f"({outs})"
        return f"({', '.join(f'Tensor {n}' for n in self.arg_names)}) -> {ret}"

    def describe_verified(self) -> str:
        rows = []
        for key, vs in self.problems.by_key.items():
            ids = ", ".join(sorted({v.entry.id for v in vs}))
            rows.append(f"    ({format_arg_shapes(key)}) at {_fmt_sizes(vs[0].sizes)} [{ids}]")
        if self.ranges_short():
            rows.append(f"    and any sizes in the verified ranges {self.ranges_short()}")
        return "\n".join(rows) or "    (none)"

    def verified_short(self) -> str:
        """The verified problems on one line (warnings)."""
        fixed = "; ".join(f"({format_arg_shapes(key)})" for key in self.problems.by_key) or "none"
        return fixed + (f"; ranges {self.ranges_short()}" if self.ranges_short() else "")

    # ------------------------------------------------------------------ choosing a kernel

    def select(self, args: Sequence[torch.Tensor]) -> Verified | None:
        """The fastest kernel verified for exactly these argument shapes and dtypes (None: none)."""
        return self.select_key(args_key(args))

    def select_key(self, key: ProblemKey) -> Verified | None:
        """:meth:`select` by argument shapes and dtypes: among the kernels verified for exactly
        ``key`` (or, with ``verify_new_sizes``, that pass the task's checks there now), the one
        fastest on the timing model at those sizes (not at the sizes the library recorded)."""
        with self._lock:
            if key in self._ranked:
                return self._ranked[key][0] if self._ranked[key] else None
            cands = list(self.problems.by_key.get(key, []))
            if not cands:
                cands = self._in_range(key)
            if not cands and self.verify_new_sizes:
                cands = self._verify_at_new_sizes(key)
            if len({v.sized_key for v in cands}) > 1:
                raise UnverifiedProblemError(
                    f"{self.qualname_hint}: the argument shapes ({format_arg_shapes(key)}) fit several verified size sets "
                    f"with different scalars ({'; '.join(_fmt_sizes(v.sizes) for v in cands)})\n  how to fix: call "
                    f"the kernel through its task at the sizes you mean, or keep one size set per shape")
            if len(cands) > 1:
                cands.sort(key=self.seconds)
            self._ranked[key] = cands
            return cands[0] if cands else None

    def ranges_short(self) -> str:
        """The verified ranges of the family's kernels on one line ("" when none)."""
        out = []
        for e in self.entries:
            for r in e.ranges:
                if r.get("verified"):
                    rng = ", ".join(f"{n}={lo}..{hi}" for n, (lo, hi) in r["sizes"].items())
                    fixed = ", ".join(f"{n}={v}" for n, v in r.get("fixed", {}).items())
                    out.append(f"{rng}{f' at {fixed}' if fixed else ''} [{e.id}]")
        return "; ".join(out)

    def covered(self, key: ProblemKey) -> bool:
        """Whether a kernel is verified for arguments ``key``: at one of its size sets, or inside one
        of its verified ranges (never verifies anything new, whatever ``verify_new_sizes`` says)."""
        with self._lock:
            if key in self._ranked:
                return bool(self._ranked[key])
            return bool(self.problems.by_key.get(key)) or bool(self._in_range(key))

    def _in_range(self, key: ProblemKey) -> list[Verified]:
        """The kernels whose verified ranges hold the task sizes that give arguments ``key`` (they
        join the family's problems: no check runs, the range was verified at its sampled points)."""
        if not any(r.get("verified") for e in self.entries for r in e.ranges):
            return []
        sizes = self.infer_sizes(key)
        if sizes is None:
            return []
        return [v for v in self._range_verified(sizes) if problem_key([*v.graph.inputs, *v.graph.params]) == key]

    def _range_verified(self, sizes: Mapping[str, int]) -> list[Verified]:
        """A problem at the task sizes ``sizes`` for each kernel with a verified range that holds
        them (added to the family's problems once)."""
        out = []
        for e in self.entries:
            rec = next((r for r in e.ranges if range_covers(r, sizes)), None)
            if rec is None:
                continue
            known = next((v for vs in self.problems.by_key.values() for v in vs
                          if v.entry is e and v.sizes == dict(sizes)), None)
            if known is not None:
                out.append(known)
                continue
            g = self.captured(sizes, e, clean=True)
            how = "verified range " + ", ".join(f"{n}={lo}..{hi}" for n, (lo, hi) in rec["sizes"].items())
            v = Verified(e, dict(sizes), g, signature(g).sized_key(), how=how)
            self.problems.add(v)
            self._ranked.pop(problem_key([*g.inputs, *g.params]), None)    # a cached "none" is stale now
            out.append(v)
        return out

    def at_sizes(self, sizes: Mapping[str, int]) -> Verified | None:
        """The fastest kernel verified for the task at ``sizes`` (all of its sizes): at a verified
        size set, or inside a verified range (it then joins the problems, so a call with its
        argument shapes finds it without inferring sizes). None: no kernel is verified there.
        Why: a decode step's region is called at a KV length known from the model's shapes, where
        the task's own argument shapes (a row view of the model's) cannot be read off directly."""
        memo = tuple(sorted(sizes.items()))
        with self._lock:
            if memo not in self._at_sizes:      # a "none" is not kept: a later range or size set may add it
                cands = [v for vs in self.problems.by_key.values() for v in vs if v.sizes == dict(sizes)]
                cands = cands or self._range_verified(sizes)
                if not cands:
                    return None
                self._at_sizes[memo] = min(cands, key=self.seconds) if len(cands) > 1 else cands[0]
            return self._at_sizes[memo]

    qualname_hint = "op"
    namespace = "rdu"

    def call_op(self, *args: torch.Tensor) -> Any:
        """Call the registered ``torch.ops.<namespace>.<op>`` (so autograd and tracing see the op)."""
        return getattr(getattr(torch.ops, self.namespace), self.op)(*args)

    def seconds(self, v: Verified) -> float:
        """Simulated seconds of ``v``'s kernel at ``v``'s sizes (timing model, no data)."""
        return float(self.solution(v.entry).time(v.graph).seconds)

    def hbm_bytes(self, v: Verified) -> float:
        return float(self.solution(v.entry).time(v.graph).hbm_bytes)

    def solution(self, e: KernelEntry) -> Solution:
        """The entry's solution (bound once per graph shape it runs at)."""
        with self._lock:
            if e.id not in self._solutions:
                self._solutions[e.id] = e.solution(self.library.root, self.machine)
            return self._solutions[e.id]

    def refusal(self, args: Sequence[torch.Tensor]) -> UnverifiedProblemError:
        return UnverifiedProblemError(
            f"{self.qualname_hint}: no kernel is verified for arguments ({format_arg_shapes(args_key(args))}); "
            f"verified problems:\n{self.describe_verified()}\n  how to fix: call it at a verified size and "
            f"dtype, run a campaign that covers these sizes, or load the library with verify_new_sizes=True "
            f"(verify on first use) or fallback='torch' (run the PyTorch reference, with a warning)")

    # ------------------------------------------------------------------ running

    def __call__(self, *args: torch.Tensor) -> list[torch.Tensor]:
        """Run the best verified kernel on ``args`` (inputs then params); new tensors out."""
        if len(args) != len(self.arg_names):
            raise TorchBridgeError(f"{self.qualname_hint} takes {len(self.arg_names)} tensors "
                                   f"({', '.join(self.arg_names)}), got {len(args)}")
        v = self.select(args)
        wide = None if v is None else self.out_of_range(args)
        if v is None or wide is not None:
            if self.fallback == "torch":
                why = wide or (f"no kernel verified for ({format_arg_shapes(args_key(args))}) "
                               f"(verified: {self.verified_short()})")
                warnings.warn(f"{self.qualname_hint}: {why}; running the PyTorch reference instead "
                              f"(fallback='torch')", stacklevel=3)
                with torch.no_grad():
                    return [o.detach().clone() for o in self.reference(args)(*args)]
            raise self.refusal(args) if wide is None else self.range_error(wide)
        return [o.clone() for o in self._run(v, args)]   # clone: never hand back memory an input owns

    def out_of_range(self, args: Sequence[torch.Tensor]) -> str | None:
        """Why ``args`` cannot go to the chip as they are, or None. The chip computes integers in
        int32 (kernels are verified on values that fit): an int64 argument holding a value outside
        int32 would wrap, i.e. a wrong answer."""
        lo, hi = np.iinfo(np.int32).min, np.iinfo(np.int32).max
        for name, a in zip(self.arg_names, args):
            if a.dtype != torch.int64 or a.numel() == 0:
                continue
            amin, amax = int(a.min()), int(a.max())
            if amin < lo or amax > hi:
                return (f"argument {name!r} (i64{list(a.shape)}) holds values outside the int32 range the chip "
                        f"computes integers in (min {amin}, max {amax}; int32 is [{lo}, {hi}])")
        return None

    def range_error(self, why: str) -> UnverifiedProblemError:
        return UnverifiedProblemError(
            f"{self.qualname_hint}: {why}, so the kernel would wrap them and answer wrongly\n  how to fix: pass "
            f"values that fit in int32, or load the library with fallback='torch' (run the PyTorch reference, "
            f"with a warning)")

    def _run(self, v: Verified, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        wide = self.out_of_range(args)
        if wide is not None:      # int64 -> int32 below (and in a chain's kernels) is lossless only then
            raise self.range_error(wide)
        inputs = [a.detach() for a in args[: self.n_inputs]]
        params = {p.name: a.detach() for p, a in zip(v.graph.params, args[self.n_inputs:])}
        return self.solution(v.entry).run(v.graph, inputs, _LIMITS, params=params)

    # ------------------------------------------------------------------ new sizes, reference, shapes

    def infer_sizes(self, key: ProblemKey, dtypes: bool = True) -> dict[str, int] | None:
        """Task sizes at which the task's arguments have exactly these shapes and dtypes (None: none found).

        Sizes are read off the dims where they appear at every known size set, the others are
        tried from the values seen; a candidate counts only when the task captured at it
        reproduces every argument shape (so a wrong guess is never used). ``dtypes=False``:
        shapes only (the reference run at other dtypes: the task is written for its own)."""
        memo = key if dtypes else ("shapes only", key)
        with self._lock:
            if memo in self._inferred:
                return self._inferred[memo]
            known = [(v.sizes, v.graph) for vs in self.problems.by_key.values() for v in vs]
            task = self.task
            options: dict[str, list[int]] = {}
            for name, own in task.sizes.items():
                seen = {own, *(s.get(name, own) for s, _ in known)}
                read: set[int] = set()
                for ai, spec in enumerate([*self.template.inputs, *self.template.params]):
                    for d in range(len(spec.shape)):
                        if known and all(ai < len(g.inputs) + len(g.params) and
                                         len([*g.inputs, *g.params][ai].shape) > d and
                                         [*g.inputs, *g.params][ai].shape[d] == s.get(name, own) for s, g in known):
                            if ai < len(key) and d < len(key[ai][0]):
                                read.add(key[ai][0][d])
                options[name] = sorted(read) + sorted(seen - read)
            found = None
            problems: set[str] = set()
            for combo in itertools.islice(itertools.product(*options.values()), 64):
                sizes = dict(zip(options, combo))
                try:
                    g = self.captured(sizes, clean=True)
                except AgentforgeError:
                    continue
                got = problem_key([*g.inputs, *g.params])
                if (got == key) if dtypes else ([sh for sh, _ in got] == [sh for sh, _ in key]):
                    found = found or sizes
                    problems.add(signature(g).sized_key())
            # sizes that the arguments do not pin down (a top-k's k, say) could name several
            # problems with the same argument shapes: guessing one could be silently wrong
            self._inferred[memo] = found if len(problems) == 1 else None
            return self._inferred[memo]

    def reference(self, args: Sequence[torch.Tensor]) -> Callable[..., list[torch.Tensor]]:
        """The task's PyTorch reference at the sizes of ``args``, as a function of (inputs, params).

        At dtypes other than the task's (bf16 arguments of an f32 task, say), the task's sizes are
        found from the shapes alone and its module runs on the arguments as given (its weights are
        the arguments too), i.e. what PyTorch computes at those dtypes."""
        key = args_key(args)
        v = self.problems.by_key.get(key)
        sizes = v[0].sizes if v else self.infer_sizes(key)
        if sizes is None:
            sizes = self.infer_sizes(key, dtypes=False)
        if sizes is None:
            raise UnverifiedProblemError(
                f"{self.qualname_hint}: no sizes of task {self.task.name!r} give arguments "
                f"({format_arg_shapes(key)}), so its reference cannot run there either\n  how to fix: pass the "
                f"task's inputs then its parameters ({', '.join(self.arg_names)}) with consistent shapes")
        skey = tuple(sorted(sizes.items()))
        with self._lock:
            if skey not in self._refs:
                from torch._subclasses.fake_tensor import unset_fake_temporarily

                with unset_fake_temporarily():
                    inst = _clean_thread(instantiate, self.task, sizes)
                    g = self.captured(sizes, clean=True)
                model = inst.model
                model._agentforge_targets = [g.param_targets.get(p.name) for p in g.params]  # type: ignore[attr-defined]
                self._refs[skey] = model
            model = self._refs[skey]
        targets = model._agentforge_targets  # type: ignore[attr-defined]
        n = self.n_inputs

        def run(*a: torch.Tensor) -> list[torch.Tensor]:
            state = {t: x for t, x in zip(targets, a[n:]) if t is not None}
            out = torch.func.functional_call(model, state, tuple(a[:n]))
            return list(out) if isinstance(out, (tuple, list)) else [out]

        return run

    def output_specs(self, key: ProblemKey) -> list[TensorSpec]:
        """Output shapes and dtypes for arguments ``key`` (what the fake implementation returns)."""
        vs = self.problems.by_key.get(key)
        if vs:
            return vs[0].graph.output_specs
        sizes = self.infer_sizes(key)
        if sizes is None:
            raise UnverifiedProblemError(
                f"{self.qualname_hint}: cannot infer output shapes for arguments ({format_arg_shapes(key)}): no sizes of "
                f"task {self.task.name!r} give them; verified problems:\n{self.describe_verified()}")
        return self.captured(sizes, clean=True).output_specs

    def _verify_at_new_sizes(self, key: ProblemKey) -> list[Verified]:
        """Run the task's checks at the sizes of ``key`` for every entry; keep those that pass."""
        from agentforge.verify import VerifyConfig, run_checks

        sizes = self.infer_sizes(key)
        if sizes is None:
            return []
        out = []
        for e in self.entries:
            task = dataclasses.replace(self.task_of(e), size_sets=[dict(sizes)])
            cfg = VerifyConfig(machine=self.machine.name, size_sets=1)
            checks = _clean_thread(run_checks, task, self.solution(e), cfg)
            if checks and all(c.passed for c in checks):
                g = _capture_meta(task, sizes)
                v = Verified(e, dict(sizes), g, signature(g).sized_key(), how="on first use")
                self.problems.add(v)
                out.append(v)
            else:
                bad = next((c for c in checks if not c.passed), None)
                warnings.warn(f"{self.qualname_hint}: kernel {e.id} failed the task's checks at "
                              f"{_fmt_sizes(sizes)}: {bad.reason if bad else 'no checks ran'}", stacklevel=4)
        return out


def _arg_names(specs: Sequence[TensorSpec]) -> list[str]:
    out: list[str] = []
    for s in specs:
        n = "".join(c if c.isalnum() or c == "_" else "_" for c in s.name) or "arg"
        if n[0].isdigit():
            n = "a_" + n
        base, i = n, 1
        while n in out or n in ("self", "out"):
            n = f"{base}_{i}"
            i += 1
        out.append(n)
    return out


# ---------------------------------------------------------------------- registration

@dataclass
class _Registered:
    schema: str
    family: OpFamily
    op: Any


_REGISTRY: dict[str, _Registered] = {}
_REG_LOCK = threading.RLock()


class TorchLibrary:
    """A library loaded into PyTorch: its op families and how each is called."""

    def __init__(self, library: Library, namespace: str, machine: asp_lang.Machine, families: dict[str, OpFamily]):
        self.library = library
        self.namespace = namespace
        self.machine = machine
        self.families = families

    @property
    def ops(self) -> dict[str, Any]:
        """op name -> ``torch.ops.<namespace>.<op>`` (an OpOverloadPacket)."""
        return {name: getattr(getattr(torch.ops, self.namespace), name) for name in self.families}

    def op(self, name: str) -> Any:
        if name not in self.families:
            raise TorchBridgeError(f"library {self.library.root} has no op {name!r}; it has: "
                                   f"{', '.join(sorted(self.families)) or '(none)'}")
        return getattr(getattr(torch.ops, self.namespace), name)

    def sample_args(self, name: str, seed: int = 0) -> list[torch.Tensor]:
        """Arguments at the first verified size set of ``name`` (the task's inputs and weights)."""
        fam = self.families[name]
        v = next(iter(fam.problems.by_key.values()))[0]
        inst = instantiate(fam.task_of(v.entry), v.sizes, seed=seed)
        g = v.graph
        real = {p: t for p, t in zip([p.name for p in g.params], _param_values(inst.model, g))}
        return [*inst.inputs, *(real[p.name] for p in g.params)]

    def __repr__(self) -> str:
        return f"TorchLibrary({str(self.library.root)!r}, namespace={self.namespace!r}, ops={sorted(self.families)})"


def _param_values(model: torch.nn.Module, g: AtenGraph) -> list[torch.Tensor]:
    state = dict(model.state_dict(keep_vars=True))
    out = []
    for p in g.params:
        target = g.param_targets.get(p.name)
        if target is not None and target in state:
            out.append(state[target].detach().clone())
        else:
            out.append(g.param_values[p.name].clone() if p.name in g.param_values
                       and g.param_values[p.name].device.type != "meta" else torch.zeros(p.shape, dtype=torch_dtype(p.dtype)))
    return out


def load_library(path: str | os.PathLike[str], namespace: str = "rdu", *, machine: str | None = None,
                 fallback: str = "error", verify_new_sizes: bool = False) -> TorchLibrary:
    """Register every kernel family of the library at ``path`` as ``torch.ops.<namespace>.<op>``.

    ``machine``: the emulated chip the kernels run and are timed on (default: the library's).
    ``fallback``: "error" refuses calls at unverified sizes/dtypes; "torch" runs the task's
    PyTorch reference with a warning. ``verify_new_sizes``: at unverified sizes, run the task's
    checks on first use and use the kernel if it passes. Loading again in the same process
    re-points the ops at the new library (the schema must not change)."""
    if fallback not in FALLBACKS:
        raise TorchBridgeError(f"fallback={fallback!r} is not one of {FALLBACKS}")
    if not namespace.isidentifier():
        raise TorchBridgeError(f"namespace {namespace!r} must be a Python identifier (torch.ops.<namespace>)")
    p = Path(path)
    if not (p / "manifest.json").is_file() and (p / "library" / "manifest.json").is_file():
        p = p / "library"   # a campaign's run directory: its library is in OUT/library
    lib = Library.open(p)
    m = asp_lang.load_machine(machine or lib.manifest.get("machine", "sn40l"))
    families: dict[str, OpFamily] = {}
    for op, entries in lib.by_op().items():
        fam = OpFamily(lib, op, entries, m, fallback, verify_new_sizes)
        fam.qualname_hint = f"torch.ops.{namespace}.{op}"
        fam.namespace = namespace
        fam.problems  # capture every verified size set now, outside any op's dispatch
        _register(namespace, op, fam)
        families[op] = fam
    return TorchLibrary(lib, namespace, m, families)


def _register(namespace: str, name: str, fam: OpFamily) -> None:
    qual = f"{namespace}::{name}"
    schema = fam.schema()
    with _REG_LOCK:
        old = _REGISTRY.get(qual)
        if old is not None:
            if old.schema != schema:
                raise TorchBridgeError(
                    f"torch.ops.{namespace}.{name} is already registered in this process with arguments {old.schema}, "
                    f"this library's kernel takes {schema}\n  how to fix: load this library under another "
                    f"namespace (load_library(path, namespace='...'))")
            old.family = fam
            return
        reg = _Registered(schema, fam, None)

        def impl(*args: torch.Tensor) -> Any:
            outs = reg.family(*args)
            return outs[0] if len(outs) == 1 else tuple(outs)

        def fake(*args: torch.Tensor) -> Any:
            fam = reg.family
            key = tuple((tuple(_concrete(d) for d in a.shape), dtype_str(a.dtype)) for a in args)
            try:
                specs = fam.output_specs(key)
            except UnverifiedProblemError as e:
                if fam.fallback != "torch":
                    raise
                # the call will run the reference (other dtypes, say): its outputs on these fake
                # tensors have exactly the shapes and dtypes the real call returns
                try:
                    ref = [o.clone() for o in fam.reference(args)(*args)]
                except Exception:  # noqa: BLE001 - the reference cannot run there either: say why not
                    raise e from None
                return ref[0] if len(ref) == 1 else tuple(ref)
            outs = [args[0].new_empty(s.shape, dtype=torch_dtype(s.dtype)) for s in specs]
            return outs[0] if len(outs) == 1 else tuple(outs)

        def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
            ctx.save_for_backward(*inputs)

        def backward(ctx: Any, *grads: torch.Tensor) -> tuple:
            return _backward(reg.family, ctx.saved_tensors, grads)

        op = torch.library.custom_op(qual, impl, mutates_args=(), schema=schema)
        op.register_fake(fake)
        op.register_autograd(backward, setup_context=setup_context)
        reg.op = op
        _REGISTRY[qual] = reg


def _concrete(d: Any) -> int:
    """A dim as an int: shape dispatch is by exact size, so a symbolic size is specialised (``int``
    of a SymInt installs a guard: a graph traced through the op is reused only at the same size,
    any other size is traced again and dispatched on its own). The compile backend never traces
    the op with symbolic sizes: it specialises each call's graph on its concrete shapes first."""
    return int(d)


def _backward(fam: OpFamily, saved: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> tuple:
    """Gradients of the op through its task's reference (torch.func.vjp of the same computation)."""
    float_idx = [i for i, t in enumerate(saved) if t.dtype.is_floating_point]
    try:
        ref = fam.reference(saved)
    except AgentforgeError as e:
        raise NoDerivativeError(f"{fam.qualname_hint}: backward needs the task's reference and it is not "
                                f"available: {e}") from None

    def f(*floats: torch.Tensor) -> tuple[torch.Tensor, ...]:
        args = list(saved)
        for i, t in zip(float_idx, floats):
            args[i] = t
        outs = ref(*args)
        return tuple(o for o in outs if o.dtype.is_floating_point)

    try:
        outs, vjp_fn = torch.func.vjp(f, *(saved[i] for i in float_idx))
        cot = []
        gi = [g for g, o in zip(grads, ref_outputs_float_mask(fam, len(grads))) if o]
        for o, g in zip(outs, gi):
            cot.append(torch.zeros_like(o) if g is None else g)
        got = vjp_fn(tuple(cot))
    except Exception as e:  # noqa: BLE001 - any failure of the reference's derivative
        raise NoDerivativeError(f"{fam.qualname_hint}: no derivative: differentiating the task's reference "
                                f"({fam.task.name}) failed: {type(e).__name__}: {e}") from None
    res: list[torch.Tensor | None] = [None] * len(saved)
    for i, g in zip(float_idx, got):
        res[i] = g
    return tuple(res)


def ref_outputs_float_mask(fam: OpFamily, n: int) -> list[bool]:
    specs = fam.template.output_specs
    return [s.dtype in ("f32", "f64", "bf16", "f16") for s in specs][:n]
