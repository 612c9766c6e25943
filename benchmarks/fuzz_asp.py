"""Fuzzing the referee: hostile ASP text through parse, check, run and ``agentforge eval``.

Whatever the text, every stage must either work or fail with the project's user-facing error
(:class:`asp_lang.AspError`, located in the file; in eval, a rejected :class:`Evaluation` whose
reason says why). Anything else is an *internal error*: another exception, a failed invariant
(the printer's round trip, a result of the wrong shape), a program that runs past the time cap
or one that blows the memory cap. The goal is zero.

Programs, all derived deterministically from ``--seed`` and the program's index:

* ``gen``: random kernels from the grammar of operator calls in tests/asp_lang/test_fuzz.py
  (typed as they are built, so most check and run);
* ``mutant``: docs/examples/*.asp and evals/adversarial/*.asp (at small sizes) with one to
  three token/character mutations (test_fuzz.mutate: tokens deleted, duplicated, swapped,
  names, operators, dtypes, tile shapes, keyword values changed, lines dropped or inserted);
* ``hostile``: the same kernels attacked the way a hostile worker would: two kernels spliced
  at random points, numbers blown up (thousands of digits, 1e999, 2**31, 2**62, sizes in the
  billions), expressions nested or chained hundreds deep, huge tile lists and ranks,
  statements repeated, text truncated, odd bytes inserted.

Stages: ``parse`` (and the printer's round trip), ``check`` (rdu-mini and sn40l), ``profile``
(the fast model; the event model for one program in ``--event-every``), ``run`` (tiny sizes,
capped elements, steps and bytes), and ``eval``: mutants of the adversarial kernels and of the
examples written for suite tasks go through ``agentforge.verify.evaluate`` (what
``agentforge eval`` calls) against their own task, and one generated program in
``--eval-every`` against ``relu``. Each program has ``--timeout`` seconds; each worker's
address space is capped at ``--memory-mb`` above what it holds after imports.

Prints one JSON object (counts per stage and outcome, internal errors with a minimised
reproducer, seed, wall time, throughput) and writes it to ``--out``::

    .venv/bin/python benchmarks/fuzz_asp.py --count 50000 --workers 2 --seed 14
    .venv/bin/python benchmarks/fuzz_asp.py --count 2000 --workers 1 --out /tmp/fuzz.json

Exit status 1 if any internal error was found.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
import multiprocessing
import os
import pickle
import platform
import random
import re
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "asp_lang"))  # the grammar and the mutator live with the tests

import numpy as np  # noqa: E402

import asp_lang  # noqa: E402
from asp_lang import AspError, Limits  # noqa: E402
from asp_lang.event import profile  # noqa: E402
from asp_lang.ir import names  # noqa: E402
from asp_lang.syntax import MAX_EXPR_DEPTH  # noqa: E402

import test_fuzz as tf  # noqa: E402

EXAMPLES = ROOT / "docs" / "examples"
ADVERSARIAL = ROOT / "evals" / "adversarial"
SUITE = ROOT / "evals" / "suite"
LIMITS = Limits(max_elements=1 << 20, max_steps=1 << 12, max_array_bytes=1 << 24)
MAX_INPUT_ELEMS = 1 << 18
# examples written for a suite task: their mutants are evaluated against it
# (matmul is left out: its checks multiply 640x640 matrices, seconds per program)
EXAMPLE_TASKS = {"softmax_online": "softmax", "softmax_3pass": "softmax", "rmsnorm": "rmsnorm",
                 "layernorm": "layernorm", "vector_add": "add"}
EVAL_TASKS = ("softmax", "rmsnorm", "layernorm", "add", "relu")
FREE_SIZE = (8, 16, 4)
EVAL_TIMEOUT = 120.0  # agentforge.verify.VerifyConfig.timeout_s


class Timeout(Exception):
    """A program ran past its time cap (an internal error)."""


# ------------------------------------------------------------------ the programs

def _shrunk(src: str) -> str:
    """An adversarial kernel (sizes bound by its task) at tiny sizes: free sizes get a
    ``sizes`` line, large ones are cut down, so it checks and runs in milliseconds."""
    try:
        k = asp_lang.parse(src)
    except AspError:
        return src
    defined = {s.name for s in k.sizes}
    used: list[str] = []
    for p in k.params + k.results:
        for e in p.shape:
            for n in sorted(names(e)):
                if n not in defined and n not in used:
                    used.append(n)
    src = re.sub(r"(sizes \w+ = )(\d+)", lambda m: m.group(1) + str(min(int(m.group(2)), 4)), src)
    if used:
        line = "  sizes " + ", ".join(f"{n} = {FREE_SIZE[i % len(FREE_SIZE)]}" for i, n in enumerate(used))
        src = src.replace("{\n", "{\n" + line + "\n", 1)
    return src


def load_sources() -> dict[str, dict]:
    """name -> {"text": small-size text for the pipeline, "eval": (task, text) or None}."""
    out = {}
    for name in sorted(tf.SMALL):
        text = (EXAMPLES / f"{name}.asp").read_text()
        task = EXAMPLE_TASKS.get(name)
        out[name] = {"text": tf._small_source(name), "eval": (task, text) if task else None}
    for p in sorted(ADVERSARIAL.rglob("*.asp")):
        text = p.read_text()
        task = p.stem.split("__")[0]
        name = f"adv/{p.relative_to(ADVERSARIAL).with_suffix('')}"
        out[name] = {"text": _shrunk(text), "eval": (task, text) if task in EVAL_TASKS else None}
    return out


_NUM = re.compile(r"(?<![\w.])\d+(?:\.\d*)?(?:[eE][+-]?\d+)?")
_EXPR_AFTER = re.compile(r"(fn \w+\([^)]*\) = )([^\n]*)|(let \w+ = )([^\n]*)|(return )([^\n]*)")
BLOWUPS = ["9" * 5000, "9" * 4301, "1" * 101, "1" * 100, "9" * 40, "1e999", "-1e999", "1e-999", "2147483648",
           "4294967296", "4611686018427387904", "9223372036854775808", "0" * 200 + "1", "1." + "5" * 300,
           "0", "65536", "1000000000", "99999999999"]


def hostile(src: str, other: str, rng: random.Random, all_lines: list[str]) -> str:
    """One attack of a hostile worker on ``src`` (``other`` is a second kernel for splices)."""
    kind = rng.randrange(12)
    n = rng.choice([2, 10, MAX_EXPR_DEPTH - 2, MAX_EXPR_DEPTH - 1, MAX_EXPR_DEPTH, MAX_EXPR_DEPTH + 1, 400, 3000])
    exprs = list(_EXPR_AFTER.finditer(src))
    if kind == 0:  # splice: a prefix of one kernel and a suffix of another
        i, j = rng.randrange(len(src) + 1), rng.randrange(len(other) + 1)
        return src[:i] + other[j:]
    if kind == 1:  # splice whole lines of the other kernel into this one
        a, b = src.split("\n"), other.split("\n")
        k = rng.randrange(len(b))
        a[rng.randrange(len(a)):rng.randrange(len(a))] = b[k:k + rng.randint(1, 6)]
        return "\n".join(a)
    if kind == 2:  # number blow-up
        ms = list(_NUM.finditer(src))
        if ms:
            m = rng.choice(ms)
            return src[:m.start()] + rng.choice(BLOWUPS) + src[m.end():]
    if kind == 3 and exprs:  # deep nesting of a tile function's expression
        m = rng.choice(exprs)
        g = next(i for i in (2, 4, 6) if m.group(i) is not None)
        e = m.group(g)
        wrap = rng.choice([("(", ")"), ("exp(", ")"), ("abs(", ")"), ("-(", ")"), ("maximum(", ", 0.0)"),
                           ("[", "]"), ("cast(", ", f32)")])
        return src[:m.start(g)] + wrap[0] * n + e + wrap[1] * n + src[m.end(g):]
    if kind == 4 and exprs:  # long chains of operands
        m = rng.choice(exprs)
        g = next(i for i in (2, 4, 6) if m.group(i) is not None)
        op = rng.choice([" + ", " * ", " - ", " ** ", " / ", " & ", " < ", " @ "])
        e = m.group(g)
        return src[:m.start(g)] + op.join([f"({e})"] * n if rng.random() < 0.3 else [e] + ["1"] * n) + src[m.end(g):]
    if kind == 5:  # unary chains
        if exprs:
            m = rng.choice(exprs)
            g = next(i for i in (2, 4, 6) if m.group(i) is not None)
            return src[:m.start(g)] + rng.choice(["-", "~", "- "]) * n + m.group(g) + src[m.end(g):]
    if kind == 6:  # huge tile lists, ranks and shapes
        ms = list(re.finditer(r"(tile|shape|split|order|dims)=\[[^\]]*\]|\w+: (f32|bf16|f16|i32|bool)\[[^\]]*\]", src))
        if ms:
            m = rng.choice(ms)
            items = rng.choice(["1", "2", "N", "4096", "65536", "0"])
            body = m.group()
            return src[:m.start()] + body[:body.index("[")] + "[" + ", ".join([items] * rng.choice([33, 65, 300, n])) + "]" \
                + src[m.end():]
    if kind == 7:  # a statement repeated many times
        lines = src.split("\n")
        stmts = [i for i, ln in enumerate(lines) if re.match(r"  \w[\w, ]* = \w+\(", ln)]
        if stmts:
            i = rng.choice(stmts)
            lines[i:i + 1] = [lines[i]] * rng.choice([2, 50, 500])
            return "\n".join(lines)
    if kind == 8:  # truncated
        return src[:rng.randrange(len(src) + 1)]
    if kind == 9:  # odd bytes and characters
        j = rng.randrange(len(src) + 1)
        junk = rng.choice(["\x00", "\ufeff", "\u00e9", "\u2028", "\r", "\t", "\\", "`", "$", "?", "!", "'", '"',
                           "\U0001F600", "\x7f", "0x1F", "1_000", "..", "...", "->->", "**-", "\x0c", "\n" * 1000])
        return src[:j] + junk * rng.choice([1, 1, 3, 1000]) + src[j:]
    if kind == 10:  # sizes blown up: billions of elements, negative, zero
        ms = list(re.finditer(r"(sizes \w+ = )(\d+)", src))
        if ms:
            m = rng.choice(ms)
            return src[:m.start(2)] + rng.choice(["0", "1", "3", "65536", "1048576", "2147483648", "4611686018427387904",
                                                  "9" * 60]) + src[m.end(2):]
    if kind == 11:  # keyword values blown up (par, repeat, k, n, axis, chunk)
        ms = list(re.finditer(r"\b(par|repeat|k|n|axis|chunk|rank|at|dim)=([^,)\]]+)", src))
        if ms:
            m = rng.choice(ms)
            return src[:m.start(2)] + rng.choice(["4096", "4097", "65536", "2147483648", "-1", "0", "9" * 30, "1e9",
                                                  "N * N * N"]) + src[m.end(2):]
    return tf.mutate(src, rng, all_lines) if src.strip() else src


def make_program(seed: int, i: int, sources: dict[str, dict], all_lines: list[str], eval_share: float = 0.1) -> dict:
    """Program ``i`` of a run: {"kind", "base", "text", "eval": (task, text) or None}."""
    rng = random.Random(seed * 1_000_003 + i)
    names = sorted(sources)
    c = rng.random()
    if c < 0.35:
        src = tf.ProgramGen(random.Random(rng.random())).program()
        return {"kind": "gen", "base": "gen", "text": src, "eval": None}
    name = rng.choice(names)
    base = sources[name]
    for_eval = base["eval"] is not None and rng.random() < eval_share
    src = base["eval"][1] if for_eval else base["text"]
    if c < 0.75:
        kind = "mutant"
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            src = tf.mutate(src, rng, all_lines)
    else:
        kind = "hostile"
        other = sources[rng.choice(names)]["text"]
        src = hostile(src, other, rng, all_lines)
        if rng.random() < 0.3 and src.strip():
            src = tf.mutate(src, rng, all_lines)
    return {"kind": kind, "base": name, "text": src, "eval": (base["eval"][0], src) if for_eval else None}


# ------------------------------------------------------------------ the pipeline

class Broken(Exception):
    """An invariant of the toolchain failed (an internal error, not a user error)."""


def _user_error(e: AspError, fname: str, located: bool) -> None:
    """A user error must be a documented kind, render as 'file:line:col: error:' when located,
    give a one-line short form, and pickle (it crosses process boundaries)."""
    if not isinstance(e, asp_lang.ERROR_KINDS):
        raise Broken(f"{type(e).__name__} is not a documented error kind")
    r = e.render()
    if not r.startswith(fname):
        raise Broken(f"error not located in the file: {r[:200]}")
    if located and not re.match(rf"{re.escape(fname)}:[1-9]\d*:[1-9]\d*: error: ", r):
        raise Broken(f"{e.kind} without a line and column: {r.splitlines()[0][:200]}")
    if "\n" in e.short():
        raise Broken("short form spans lines")
    back = pickle.loads(pickle.dumps(e))
    if type(back) is not type(e) or back.render() != r:
        raise Broken("error does not pickle")


def _free_sizes(kernel) -> dict[str, int]:
    defined = {s.name for s in kernel.sizes}
    used = []
    for p in kernel.params + kernel.results:
        for e in p.shape:
            used += [n for n in sorted(names(e)) if n not in defined and n not in used]
    return {n: FREE_SIZE[i % len(FREE_SIZE)] for i, n in enumerate(used)}


def pipeline(prog: dict, i: int, counts: dict, event: bool) -> None:
    """Every stage for one program; raises on an internal error, counts outcomes in ``counts``."""
    def inc(k):
        counts[k] = counts.get(k, 0) + 1

    fname = f"p{i}.asp"
    src = prog["text"]
    stage = "parse"
    inc("stage:parse")
    try:
        kernel = asp_lang.parse(src, fname)
    except AspError as e:
        inc("parse:" + e.kind)
        _user_error(e, fname, True)
        kernel = None
    if kernel is not None:
        text = asp_lang.format_kernel(kernel)
        if asp_lang.parse(text) != kernel:
            raise Broken("the printer's output parses to a different kernel")
        stage = "check"
        inc("stage:check")
        progs = []
        sizes = _free_sizes(kernel)
        for m in tf.MACHINES.values():
            try:
                progs.append(asp_lang.check(kernel, m, sizes, fname, src))
            except AspError as e:
                inc("check:" + e.kind)
                _user_error(e, fname, True)
        if progs:
            inc("checked")
            stage = "profile"
            inc("stage:profile")
            for p in progs:
                for model in (("fast", "event") if event else ("fast",)):
                    rep = profile(p, model)
                    if not (np.isfinite(rep.cycles) and rep.cycles >= 1 and 0 <= rep.roofline_fraction <= 1):
                        raise Broken(f"{model} model: cycles {rep.cycles}, roofline fraction {rep.roofline_fraction}")
            p = progs[0]
            if sum(int(np.prod(t.shape)) for t in p.tensors.values()) > MAX_INPUT_ELEMS:
                inc("too-big-to-run")
            else:
                stage = "run"
                inc("stage:run")
                try:
                    inputs = asp_lang.random_inputs(p, i, LIMITS)
                    outs = asp_lang.run(p, inputs, LIMITS)
                except AspError as e:
                    inc("run:" + e.kind)
                    _user_error(e, fname, False)
                else:
                    inc("ran")
                    for name, a in outs.items():
                        if a.shape != p.tensors[name].shape:
                            raise Broken(f"result {name} has shape {a.shape}, declared {p.tensors[name].shape}")
    if prog["eval"] is not None:
        stage = "eval"
        inc("stage:eval")
        _eval(prog["eval"][0], prog["eval"][1], fname, counts)


_INTERNAL_CODES = {"emulator_bug", "task", "memory"}


def _eval(task: str, src: str, fname: str, counts: dict) -> None:
    from agentforge.verify import evaluate

    ev = evaluate(SUITE / f"{task}.py", {"kind": "kernel", "source": src, "filename": fname})
    code = "verified" if ev.verified else ev.reason_code
    counts["eval:" + str(code)] = counts.get("eval:" + str(code), 0) + 1
    if not ev.verified and (code in _INTERNAL_CODES or code is None):
        raise Broken(f"eval rejected it as '{code}': {ev.reason}")
    if ev.reason and "Traceback" in ev.reason:
        raise Broken(f"a traceback in eval's reason: {ev.reason[:300]}")
    if ev.error and ev.error.get("kind") in {k.kind for k in asp_lang.ERROR_KINDS}:
        if not ev.reason.startswith("ERROR[") or not ev.error["message"].startswith(fname):
            raise Broken(f"eval's reason does not name the file: {ev.reason[:200]}")
    json.dumps(ev.to_dict())  # the JSON output must serialise


# ------------------------------------------------------------------ workers

_STATE: dict = {}


def _alarm(signum, frame):
    raise Timeout()


def _init(seed: int, timeout: float, memory_mb: int) -> None:
    sources = load_sources()
    _STATE.update(seed=seed, timeout=timeout, sources=sources,
                  all_lines=[ln for s in sources.values() for ln in s["text"].split("\n")])
    import agentforge.verify  # noqa: F401 - imported before the memory cap is set
    signal.signal(signal.SIGALRM, _alarm)
    if memory_mb > 0:
        try:
            with open("/proc/self/statm") as f:
                held = int(f.read().split()[0]) * resource.getpagesize()
            cap = held + memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        except (OSError, ValueError):
            pass


def one(i: int, event_every: int, eval_every: int, eval_share: float) -> tuple[dict, dict | None]:
    """Run program ``i``; returns (its outcome counts, an internal error record or None)."""
    try:
        prog = make_program(_STATE["seed"], i, _STATE["sources"], _STATE["all_lines"], eval_share)
    except Exception as e:  # noqa: BLE001 - a bug of the fuzzer itself: reported, never hidden
        return {"kind:generator": 1}, {"index": i, "kind": "generator", "base": "?", "error": _signature(e),
                                       "stage": "generate", "program": "", "eval_task": None}
    if prog["eval"] is None and prog["kind"] == "gen" and eval_every and i % eval_every == 0:
        prog["eval"] = ("relu", prog["text"])
    counts: dict = {"kind:" + prog["kind"]: 1}
    # eval's own cap is VerifyConfig.timeout_s (the sandbox kills a longer evaluation)
    signal.setitimer(signal.ITIMER_REAL, _STATE["timeout"] + (EVAL_TIMEOUT if prog["eval"] else 0))
    try:
        pipeline(prog, i, counts, event=bool(event_every) and i % event_every == 0)
        return counts, None
    except BaseException as e:  # noqa: BLE001 - every escape is an internal error, recorded
        if isinstance(e, KeyboardInterrupt):
            raise
        sig = _signature(e)
        return counts, {"index": i, "kind": prog["kind"], "base": prog["base"], "error": sig,
                        "stage": next((k[6:] for k in reversed(list(counts)) if k.startswith("stage:")), "?"),
                        "program": prog["text"][:20000], "eval_task": prog["eval"][0] if prog["eval"] else None}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _signature(e: BaseException) -> str:
    if isinstance(e, Timeout):
        return "Timeout"
    tb = traceback.extract_tb(e.__traceback__)
    where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
    return f"{type(e).__name__} at {where}: {str(e)[:300]}"


def _chunk(args) -> tuple[dict, list]:
    lo, hi, event_every, eval_every, eval_share = args
    total: dict = {}
    errors = []
    for i in range(lo, hi):
        counts, err = one(i, event_every, eval_every, eval_share)
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
        if err:
            errors.append(err)
    return total, errors


# ------------------------------------------------------------------ minimising a reproducer

def minimise(err: dict, budget: int = 150) -> str:
    """Delta-debug the program (lines, then characters) while the same error recurs."""
    prog = {"kind": err["kind"], "base": err["base"], "text": err["program"],
            "eval": (err["eval_task"], err["program"]) if err["eval_task"] else None}
    head = err["error"].split(":")[0]

    def same(text: str) -> bool:
        p = dict(prog, text=text, eval=(prog["eval"][0], text) if prog["eval"] else None)
        signal.setitimer(signal.ITIMER_REAL, _STATE["timeout"])
        try:
            pipeline(p, err["index"], {}, event=True)
            return False
        except BaseException as e:  # noqa: BLE001
            return _signature(e).split(":")[0] == head
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    text = prog["text"]
    for unit in ("\n", ""):
        parts = text.split("\n") if unit else list(text)
        n = 2
        while len(parts) >= 2 and budget > 0:
            size = max(1, len(parts) // n)
            reduced = False
            for s in range(0, len(parts), size):
                cand = parts[:s] + parts[s + size:]
                budget -= 1
                if cand and same(unit.join(cand)):
                    parts, n, reduced = cand, max(n - 1, 2), True
                    break
                if budget <= 0:
                    break
            if not reduced:
                if size == 1:
                    break
                n = min(len(parts), n * 2)
        text = unit.join(parts)
        if len(text) < 400:
            break
    return text


# ------------------------------------------------------------------ main

def fuzz(count: int, seed: int = 14, workers: int = 1, timeout: float = 20.0, memory_mb: int = 3072,
         event_every: int = 10, eval_every: int = 25, eval_share: float = 0.1,
         minimise_errors: bool = True, progress=None) -> dict:
    """Run ``count`` programs; returns the report (see the module docstring)."""
    t0 = time.perf_counter()
    step = 50
    chunks = [(lo, min(count, lo + step), event_every, eval_every, eval_share) for lo in range(0, count, step)]
    totals: dict = {}
    errors: list = []
    old_handler = signal.getsignal(signal.SIGALRM)
    try:
        if workers <= 1:  # in this process, without a memory cap (it would outlive the call)
            _init(seed, timeout, 0)
            results = [_chunk(c) for c in chunks]
        else:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(workers, initializer=_init, initargs=(seed, timeout, memory_mb)) as pool:
                results = []
                for r in pool.imap(_chunk, chunks):
                    results.append(r)
                    if progress and len(results) % 20 == 0:
                        progress(len(results) * step, time.perf_counter() - t0,
                                 sum(len(e) for _, e in results))
        for counts, errs in results:
            for k, v in counts.items():
                totals[k] = totals.get(k, 0) + v
            errors += errs
        if errors and minimise_errors:
            _init(seed, timeout, 0)
            for e in errors[:20]:
                e["reproducer"] = minimise(e)
    finally:
        signal.signal(signal.SIGALRM, old_handler)
    wall = time.perf_counter() - t0
    stages = {k[6:]: v for k, v in sorted(totals.items()) if k.startswith("stage:")}
    kinds = {k[5:]: v for k, v in sorted(totals.items()) if k.startswith("kind:")}
    outcomes = {k: v for k, v in sorted(totals.items()) if not k.startswith(("stage:", "kind:"))}
    for e in errors:
        e.pop("program", None) if "reproducer" in e else None
    return {
        "seed": seed, "count": count, "workers": workers, "wall_seconds": round(wall, 2),
        "programs_per_second": round(count / wall, 2) if wall else None,
        "per_program_seconds_one_core": round(wall * max(1, workers) / count, 4) if count else None,
        "programs": kinds, "reached": stages, "outcomes": outcomes,
        "internal_errors": len(errors),
        "internal_error_kinds": dict(Counter(re.sub(r"\d+", "N", e["error"])[:120] for e in errors).most_common()),
        "errors": errors[:50],
        "limits": {"timeout_s": timeout, "memory_mb_per_worker": memory_mb, "run": LIMITS.__dict__,
                   "max_input_elements": MAX_INPUT_ELEMS, "max_expr_depth": MAX_EXPR_DEPTH},
        "every": {"event_model": event_every, "generated_through_eval": eval_every,
                  "eval_share_of_task_kernels": eval_share, "eval_tasks": list(EVAL_TASKS)},
        "python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "command": "python benchmarks/fuzz_asp.py " + " ".join(sys.argv[1:]) if __name__ == "__main__" else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=50_000, help="programs (default 50000)")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--workers", type=int, default=1, help="worker processes")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per program")
    ap.add_argument("--memory-mb", type=int, default=3072, help="address space per worker above its imports")
    ap.add_argument("--event-every", type=int, default=10, help="the event timing model for one program in N")
    ap.add_argument("--eval-every", type=int, default=25, help="one generated program in N through eval (relu)")
    ap.add_argument("--eval-share", type=float, default=0.1,
                    help="share of the mutants of task kernels that also go through eval against their task")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fuzz.json"), help="'' to write nothing")
    args = ap.parse_args(argv)
    def progress(done: int, wall: float, errors: int) -> None:
        print(f"fuzz: {done} programs in {wall:.0f} s, {errors} internal errors", file=sys.stderr, flush=True)

    rep = fuzz(args.count, args.seed, args.workers, args.timeout, args.memory_mb, args.event_every, args.eval_every,
               args.eval_share, progress=progress)
    text = json.dumps(rep, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 1 if rep["internal_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
