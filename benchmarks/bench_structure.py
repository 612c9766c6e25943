"""Structure counts of a source tree (issue 16: one solution object, an author package, one way through the house).

Measures, for the tree at ``--tree`` (its ``agentforge/`` and ``asp_lang/``), what the restructure
promises to shrink, so the same script can be run on the tree before and after and the two JSON
files compared:

- ``kind_branches``: comparisons of a candidate's kind (a ``kind`` name or attribute,
  ``x.get("kind")``, ``x["kind"]``) with ``"plan"``, ``"kernel"`` or ``"baseline"``
  (``==``, ``!=``, ``in``, ``not in``, ``match`` cases), each site listed;
- ``plan_from_dict_sites``: calls of ``Plan.from_dict`` (a receiver named ``Plan`` or an alias of it);
- ``import_circles``: strongly connected components of the module import graph, from module-level
  imports that run at import time (the main figure) and, apart, with function-level and
  ``TYPE_CHECKING`` imports included;
- ``private_imports``: ``from X import _name`` and ``import X`` ... ``X._name`` where X is another module
  of the project;
- ``largest_modules``: the ten longest ``.py`` files;
- ``duplicates``: the ``duplicates`` command over ``agentforge/`` and ``asp_lang/`` only;
- ``plan_builds`` (with ``--plan-builds``): each named task solved by the default campaign
  (``agentforge campaign --tasks T``, offline author, fresh run directory) or by ``agentforge solve``
  (``--via solve``), counting in *every* Python process it starts (campaign job, sandbox workers) the
  calls of ``realize`` (any function or method of that name defined under ``agentforge.author*``: the
  one that builds a plan into a kernel chain), ``build_baseline`` and ``binding.bind`` (an ASP kernel
  bound to a graph). The counting is installed from outside, so the tree needs no change: a
  ``sitecustomize.py`` on ``PYTHONPATH`` wraps those functions as their modules load and appends one
  line per outermost call to the file named by ``BENCH_STRUCTURE_COUNTS`` (a line per call, written at
  once, so workers that are killed or leave by ``os._exit`` are counted too).

Reads the tree as text (``ast``); imports nothing from it. Prints one JSON object (``--out`` writes it).

    PYTHONPATH=<tree> .venv/bin/python benchmarks/bench_structure.py --tree <tree> [--plan-builds]
        [--tasks add,matmul] [--via campaign|solve] [--out benchmarks/results/structure_X.json]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

PACKAGES = ("agentforge", "asp_lang")
KINDS = {"plan", "kernel", "baseline"}
# one per family: memory-bound, matmul, attention, MoE, a whole layer, softmax
DEFAULT_TASKS = ("add", "matmul", "attention", "moe_layer_top1", "llama_decoder_block", "softmax")
COUNTED = ("realize", "build_baseline", "bind")


# --- the files -------------------------------------------------------------------------------------------

def source_files(tree: Path) -> dict[str, Path]:
    """Module name -> file for every ``.py`` under the project's packages (``pkg/__init__.py`` -> ``pkg``)."""
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        root = tree / pkg
        if not root.is_dir():
            raise SystemExit(f"{root}: no such folder; --tree must name a checkout holding {' and '.join(PACKAGES)}/")
        for f in sorted(root.rglob("*.py")):
            if "__pycache__" in f.parts:
                continue
            parts = list(f.relative_to(tree).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def _parse(f: Path) -> ast.Module:
    return ast.parse(f.read_text(encoding="utf-8"), str(f))


def _rel(f: Path, tree: Path) -> str:
    return f.relative_to(tree).as_posix()


# --- kind branches -------------------------------------------------------------------------------------

def _is_kind_expr(node: ast.AST) -> bool:
    """``kind``, ``x.kind``, ``x.get("kind")``, ``x["kind"]`` (and ``*_kind`` names)."""
    if isinstance(node, ast.Name):
        return node.id == "kind" or node.id.endswith("_kind")
    if isinstance(node, ast.Attribute):
        return node.attr == "kind" or node.attr.endswith("_kind")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args:
        a = node.args[0]
        return isinstance(a, ast.Constant) and a.value == "kind"
    if isinstance(node, ast.Subscript):
        s = node.slice
        return isinstance(s, ast.Constant) and s.value == "kind"
    return False


def _kind_strings(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value} & KINDS
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in KINDS}
    return set()


_OPS = {ast.Eq: "==", ast.NotEq: "!=", ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}


def kind_branches(mod: ast.Module) -> list[dict]:
    """Each comparison of a kind with "plan" / "kernel" / "baseline" (and each such ``match`` case)."""
    sites = []
    for node in ast.walk(mod):
        if isinstance(node, ast.Compare):
            left = node.left
            for op, right in zip(node.ops, node.comparators):
                if type(op) in _OPS:
                    for a, b in ((left, right), (right, left)):
                        kinds = _kind_strings(b)
                        if kinds and _is_kind_expr(a):
                            sites.append({"line": node.lineno, "op": _OPS[type(op)], "kinds": sorted(kinds),
                                          "code": ast.unparse(node)[:120]})
                            break
                left = right
        elif isinstance(node, ast.Match) and _is_kind_expr(node.subject):
            for case in node.cases:
                vals = {p.value.value for p in ast.walk(case.pattern)
                        if isinstance(p, ast.MatchValue) and isinstance(p.value, ast.Constant)} & KINDS
                if vals:
                    sites.append({"line": case.pattern.lineno, "op": "case", "kinds": sorted(vals),
                                  "code": f"match {ast.unparse(node.subject)}: case {ast.unparse(case.pattern)}"})
    return sorted(sites, key=lambda s: s["line"])


# --- Plan.from_dict ------------------------------------------------------------------------------------

def plan_from_dict(mod: ast.Module) -> list[dict]:
    """Calls ``Plan.from_dict(...)`` / ``x.Plan.from_dict(...)``, ``Plan`` possibly imported under another name."""
    aliases = {"Plan"}
    for node in ast.walk(mod):
        if isinstance(node, ast.ImportFrom):
            aliases |= {a.asname for a in node.names if a.name == "Plan" and a.asname}
    sites = []
    for node in ast.walk(mod):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_dict":
            recv = node.func.value
            name = recv.id if isinstance(recv, ast.Name) else recv.attr if isinstance(recv, ast.Attribute) else None
            if name in aliases:
                sites.append({"line": node.lineno, "code": ast.unparse(node)[:120]})
    return sorted(sites, key=lambda s: s["line"])


# --- imports -------------------------------------------------------------------------------------------

def _scoped_imports(mod: ast.Module):
    """(node, where) for every import: where is ``module`` (runs at import), ``type_checking`` or ``function``."""
    def visit(node: ast.AST, where: str):
        for child in ast.iter_child_nodes(node):
            w = where
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                w = "function"
            elif isinstance(child, ast.If) and where == "module" and "TYPE_CHECKING" in ast.unparse(child.test):
                for n in child.body:
                    yield from _one(n, "type_checking")
                for n in child.orelse:
                    yield from _one(n, "module")
                continue
            yield from _one(child, w)

    def _one(n: ast.AST, w: str):
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            yield n, w
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from visit(n, "function")
        else:
            yield from visit(n, w)

    yield from visit(mod, "module")


def _base_of(name: str, node: ast.ImportFrom, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = name.split(".")
    if not is_pkg:
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
    return ".".join(parts + ([node.module] if node.module else []))


def import_edges(name: str, f: Path, mod: ast.Module, mods: dict[str, Path]) -> list[tuple[str, str, int, str | None]]:
    """(target module, where, line, imported name or None) for each project module this one imports."""
    is_pkg = f.name == "__init__.py"
    out = []
    for node, where in _scoped_imports(mod):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in mods:
                    out.append((a.name, where, node.lineno, None))
        else:
            base = _base_of(name, node, is_pkg)
            for a in node.names:
                sub = f"{base}.{a.name}" if base else a.name
                if sub in mods:
                    out.append((sub, where, node.lineno, None))
                elif base in mods:
                    out.append((base, where, node.lineno, a.name))
    return [e for e in out if e[0] != name]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    comps: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    advanced = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))
    return sorted(comps, key=lambda c: (-len(c), c))


def private_imports(name: str, f: Path, mod: ast.Module, mods: dict[str, Path],
                    edges: list[tuple[str, str, int, str | None]]) -> list[dict]:
    """``from X import _name`` with X another project module; ``X._name`` after ``import X`` / ``from . import X``."""
    found = []
    for target, where, line, imported in edges:
        if imported and imported.startswith("_") and not (imported.startswith("__") and imported.endswith("__")):
            found.append({"line": line, "from": target, "name": imported, "where": where})
    aliases: dict[str, str] = {}
    is_pkg = f.name == "__init__.py"
    for node in ast.walk(mod):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in mods and a.asname:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            base = _base_of(name, node, is_pkg)
            for a in node.names:
                sub = f"{base}.{a.name}" if base else a.name
                if sub in mods:
                    aliases[a.asname or a.name] = sub
    for node in ast.walk(mod):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__") and aliases[node.value.id] != name):
            found.append({"line": node.lineno, "from": aliases[node.value.id], "name": node.attr, "where": "attribute"})
    return found


# --- duplicates ----------------------------------------------------------------------------------------

_ROW = re.compile(r"^D\d+\s+(\S+):(\d+)-(\d+)\s+~\s+(\S+):(\d+)-(\d+)(.*)$")


def duplicates(tree: Path, most: int = 200) -> dict:
    """The ``duplicates`` command over a copy of the project's packages (only they, not tests or suites)."""
    exe = shutil.which("duplicates")
    if not exe:
        return {"error": "the `duplicates` command is not on PATH"}
    with tempfile.TemporaryDirectory(prefix="bench-structure-dups-") as tmp:
        files = _package_files(tree)
        for rel in files:
            dst = Path(tmp) / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tree / rel, dst)
        p = subprocess.run([exe, "--repo", tmp, "--most", str(most), "--seconds", "120"],
                           capture_output=True, text=True, cwd=tmp)
    lines = p.stdout.splitlines()
    head = lines[0] if lines else ""
    m = re.match(r"(\d+) pairs? of places \((\d+) files? read\)", head)
    shape = re.search(r"\((\d+) by shape alone(?:, (\d+) of those marked boilerplate)?\)", head)
    rows = []
    for ln in lines[1:]:
        r = _ROW.match(ln)
        if r:
            a, a0, a1, b, b0, b1, rest = r.groups()
            rows.append({"a": f"{a}:{a0}-{a1}", "b": f"{b}:{b0}-{b1}", "lines": int(a1) - int(a0) + 1,
                         "shape": "shape" in rest, "boilerplate": "boilerplate" in rest})
    pairs = int(m.group(1)) if m else (0 if head.startswith("no duplicates") else None)
    return {
        "command": f"duplicates --repo <copy of {'/ '.join(PACKAGES)}/> --most {most}",
        "summary": head,
        "pairs": pairs,
        "files_read": int(m.group(2)) if m else None,
        "pairs_by_shape": int(shape.group(1)) if shape else 0,
        "pairs_boilerplate": int(shape.group(2) or 0) if shape else 0,
        "pairs_identical": (pairs - int(shape.group(1))) if (pairs is not None and shape) else pairs,
        "rows_listed": len(rows),
        "shared_lines_listed": sum(r["lines"] for r in rows),
        "shared_lines_listed_not_boilerplate": sum(r["lines"] for r in rows if not r["boilerplate"]),
        "top": [f"{r['a']} ~ {r['b']}{' shape' if r['shape'] else ''}{' boilerplate' if r['boilerplate'] else ''}"
                for r in rows[:15]],
        "trailer": [ln for ln in lines if ln.startswith(("left out:", "incomplete:", "(+"))],
    }


def _package_files(tree: Path) -> list[str]:
    """The files git tracks or would track (untracked, not ignored) under the packages; every file elsewhere."""
    try:
        out = subprocess.run(["git", "-C", str(tree), "ls-files", "-co", "--exclude-standard", "--", *PACKAGES],
                             capture_output=True, text=True, check=True).stdout.split("\n")
        files = [f for f in out if f and (tree / f).is_file()]
        if files:
            return files
    except (OSError, subprocess.CalledProcessError):
        pass
    return [p.relative_to(tree).as_posix() for pkg in PACKAGES for p in (tree / pkg).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts]


# --- the static report ---------------------------------------------------------------------------------

def static_report(tree: Path) -> dict:
    mods = source_files(tree)
    parsed, unparsed = {}, []
    for n, f in mods.items():
        try:
            parsed[n] = _parse(f)
        except SyntaxError as e:      # a half-finished edit: said, and the file counted as empty
            unparsed.append(f"{_rel(f, tree)}:{e.lineno}: {e.msg}")
            parsed[n] = ast.Module(body=[], type_ignores=[])
    kb, fd, priv = [], [], []
    runtime: dict[str, set[str]] = defaultdict(set)
    everything: dict[str, set[str]] = defaultdict(set)
    sizes = []
    for n, f in mods.items():
        rel, mod = _rel(f, tree), parsed[n]
        kb += [{"site": f"{rel}:{s['line']}", **{k: v for k, v in s.items() if k != "line"}}
               for s in kind_branches(mod)]
        fd += [{"site": f"{rel}:{s['line']}", "code": s["code"]} for s in plan_from_dict(mod)]
        edges = import_edges(n, f, mod, mods)
        for target, where, _, _ in edges:
            everything[n].add(target)
            if where == "module":
                runtime[n].add(target)
        priv += [{"site": f"{rel}:{p['line']}", "module": n, **{k: v for k, v in p.items() if k != "line"}}
                 for p in private_imports(n, f, mod, mods, edges)]
        sizes.append((len(f.read_text(encoding="utf-8").splitlines()), rel))
    kb_files = Counter(s["site"].rsplit(":", 1)[0] for s in kb)
    rt, allc = circles(runtime), circles(everything)
    pkg = lambda m: m.rsplit(".", 1)[0] if "." in m else m  # noqa: E731
    return {
        "modules": len(mods),
        "unparsed": unparsed,
        "lines": sum(s for s, _ in sizes),
        "kind_branches": {"count": len(kb), "files": len(kb_files), "per_file": dict(kb_files.most_common()),
                          "sites": kb},
        "plan_from_dict_sites": {"count": len(fd), "sites": fd},
        "import_circles": {
            "count": len(rt), "circles": rt,
            "with_function_level_imports": {"count": len(allc), "circles": allc},
            "note": "main figure: imports that run when the module is imported (TYPE_CHECKING and function-level "
                    "ones left out: Python never meets these circles at import time); with_function_level_imports "
                    "counts every import statement: the design's circles, the ones issue 16 names",
        },
        "private_imports": {
            "count": len(priv),
            "modules_importing": len({p["module"] for p in priv}),
            "outside_own_package": sum(pkg(p["module"]) != pkg(p["from"]) for p in priv),
            "sites": priv,
        },
        "largest_modules": [{"file": r, "lines": s} for s, r in sorted(sizes, key=lambda x: (-x[0], x[1]))[:10]],
    }


# --- plan builds ---------------------------------------------------------------------------------------

SITECUSTOMIZE = r'''
"""bench_structure.py's counter: wraps realize / build_baseline / bind as their modules load."""
import functools, importlib.abc, os, sys, threading

_PATH = os.environ.get("BENCH_STRUCTURE_COUNTS")


def _write(line):
    fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _targets(modname):
    """Function names counted in this module."""
    if modname == "agentforge.author" or modname.startswith("agentforge.author."):
        return {"realize"}
    if modname.startswith("agentforge.binding"):
        return {"bind", "build_baseline"}
    if modname.startswith("agentforge."):
        return {"build_baseline"}
    return set()


if _PATH:
    _local = threading.local()
    _originals = {}          # id(original function) -> wrapper

    def _wrap(fn, label):
        @functools.wraps(fn)
        def counted(*a, **k):
            depth = getattr(_local, label, 0)
            if depth == 0:
                _write(f"call {os.getpid()} {label}")
            setattr(_local, label, depth + 1)
            try:
                return fn(*a, **k)
            finally:
                setattr(_local, label, depth)
        counted.__bench_structure_original__ = fn
        _originals[id(fn)] = counted
        return counted

    def _instrument(module):
        names = _targets(module.__name__)
        for attr, val in list(vars(module).items()):
            if attr in names and callable(val) and getattr(val, "__module__", None) == module.__name__ \
                    and not hasattr(val, "__bench_structure_original__"):
                label = attr
                setattr(module, attr, _wrap(val, label))
                _write(f"wrapped {os.getpid()} {module.__name__}.{attr}")
            elif isinstance(val, type) and val.__module__ == module.__name__:
                for m, fv in list(vars(val).items()):
                    if m in names and callable(fv) and not hasattr(fv, "__bench_structure_original__"):
                        setattr(val, m, _wrap(fv, m))
                        _write(f"wrapped {os.getpid()} {module.__name__}.{attr}.{m}")
        # a module that took the original by name while this one was still loading (an import circle)
        for other in list(sys.modules.values()):
            d = getattr(other, "__dict__", None)
            if not d or not getattr(other, "__name__", "").startswith("agentforge"):
                continue
            for k, v in list(d.items()):
                w = _originals.get(id(v))
                if w is not None and w.__bench_structure_original__ is v:
                    d[k] = w

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if not name.startswith("agentforge"):
                return None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
            else:
                return None
            loader = spec.loader
            if loader is None or not hasattr(loader, "exec_module"):
                return spec
            orig = loader.exec_module

            def exec_module(module, _orig=orig):
                _orig(module)
                _instrument(module)
            loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Finder())
    try:    # sys.argv is not set yet for ``python -m x``: the kernel's copy names the module
        with open("/proc/self/cmdline", "rb") as _f:
            _argv = [a.decode(errors="replace") for a in _f.read().split(b"\0") if a][1:4]
    except OSError:
        _argv = sys.argv[:3]
    _write(f"start {os.getpid()} {' '.join(_argv) or '-'}")
'''


def _tally(path: Path) -> dict:
    calls: Counter = Counter()
    per_pid: dict[str, Counter] = defaultdict(Counter)
    wrapped: set[str] = set()
    argv: dict[str, str] = {}
    if path.exists():
        for ln in path.read_text().splitlines():
            parts = ln.split(" ", 2)
            if len(parts) < 3:
                continue
            what, pid, rest = parts
            if what == "call":
                calls[rest] += 1
                per_pid[pid][rest] += 1
            elif what == "wrapped":
                wrapped.add(rest)
            elif what == "start":
                argv[pid] = rest
    return {"calls": {k: calls.get(k, 0) for k in COUNTED}, "processes": len(argv),
            "per_process": [{"argv": argv.get(pid, "?"), **{k: c.get(k, 0) for k in COUNTED}}
                            for pid, c in per_pid.items()],
            "instrumented": sorted(wrapped)}


def _task_outcome(run_dir: Path) -> dict:
    """The task's end state from the campaign's run database (status, speedup, attempts, plan source)."""
    import sqlite3
    db = run_dir / "run.sqlite"
    if not db.exists():
        return {}
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        cols = {r[1] for r in con.execute("PRAGMA table_info(tasks)")}
        want = [c for c in ("name", "status", "attempts", "plan_cache_hit", "plan_source", "speedup",
                            "roofline_fraction") if c in cols]
        rows = [dict(r) for r in con.execute(f"SELECT {', '.join(want)} FROM tasks")]
    finally:
        con.close()
    return rows[0] if len(rows) == 1 else {"tasks": rows}


def plan_builds(tree: Path, tasks: list[str], via: str, machine: str, timeout: float) -> dict:
    suite = tree / "evals" / "suite"
    missing = [t for t in tasks if not (suite / f"{t}.py").is_file()]
    if missing:
        raise SystemExit(f"no such task in {suite}: {', '.join(missing)}")
    per_task = {}
    with tempfile.TemporaryDirectory(prefix="bench-structure-") as tmp:
        hook = Path(tmp) / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
        for t in tasks:
            counts = Path(tmp) / f"{t}.counts"
            out = Path(tmp) / f"run-{t}"
            env = dict(os.environ, BENCH_STRUCTURE_COUNTS=str(counts),
                       PYTHONPATH=os.pathsep.join([str(hook), str(tree)]), PYTHONDONTWRITEBYTECODE="1")
            if via == "campaign":
                argv = [sys.executable, "-m", "agentforge.cli", "campaign", "--tasks", t, "--workers", "1",
                        "--out", str(out), "--machine", machine, "--quiet"]
            else:
                argv = [sys.executable, "-m", "agentforge.cli", "solve", str(suite / f"{t}.py"), "--machine", machine,
                        "--json"]
            t0 = time.perf_counter()
            p = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
            wall = time.perf_counter() - t0
            rec = {"rc": p.returncode, "wall_s": round(wall, 1), **_tally(counts)}
            if via == "campaign":
                rec["outcome"] = _task_outcome(out)
            else:
                try:
                    ev = json.loads(p.stdout)
                    rec["outcome"] = {k: ev.get(k) for k in ("ok", "speedup", "kind", "reason_code") if k in ev}
                except (json.JSONDecodeError, AttributeError):
                    rec["outcome"] = {}
            if p.returncode != 0:
                rec["stderr_tail"] = p.stderr[-2000:]
            per_task[t] = rec
            print(f"[plan builds] {t}: {rec['calls']} in {rec['processes']} processes, {wall:.0f}s",
                  file=sys.stderr, flush=True)
    med = {k: statistics.median(r["calls"][k] for r in per_task.values()) for k in COUNTED}
    return {
        "via": via,
        "command": (f"agentforge campaign --tasks T --workers 1 --machine {machine} --out <fresh dir>"
                    if via == "campaign" else f"agentforge solve evals/suite/T.py --machine {machine} --json"),
        "counted": {"realize": "calls of any function/method named realize defined under agentforge.author*: "
                               "a plan built into a kernel chain",
                    "build_baseline": "calls of build_baseline (the op-by-op chain)",
                    "bind": "calls of binding.bind (an ASP kernel bound to a graph)"},
        "median": med,
        "total": {k: sum(r["calls"][k] for r in per_task.values()) for k in COUNTED},
        "per_task": per_task,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1],
                    help="the checkout to measure (default: this one)")
    ap.add_argument("--plan-builds", action="store_true", help="also solve --tasks and count plan builds")
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated bundled-suite task names")
    ap.add_argument("--via", choices=("campaign", "solve"), default="campaign",
                    help="solve each task as the default campaign does (default) or with `agentforge solve`")
    ap.add_argument("--machine", default="sn40l")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per task before it is given up")
    ap.add_argument("--no-duplicates", action="store_true", help="skip the duplicates command")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    tree = args.tree.resolve()
    res: dict = {"tree": str(tree)}
    try:
        res["commit"] = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True).stdout.strip()
        res["uncommitted_files"] = len([ln for ln in subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--", *PACKAGES], capture_output=True,
            text=True).stdout.splitlines() if ln.strip()])
    except OSError:
        pass
    res.update(static_report(tree))
    if not args.no_duplicates:
        res["duplicates"] = duplicates(tree)
    if args.plan_builds:
        res["plan_builds"] = plan_builds(tree, [t for t in args.tasks.split(",") if t], args.via, args.machine,
                                         args.timeout)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
