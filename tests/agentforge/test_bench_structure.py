"""benchmarks/bench_structure.py's static counters (issue 16's before/after figures) on a synthetic tree.

The counters read source as text; these tests pin what each one counts and what it leaves out,
so a before/after comparison measures the code and not a quirk of the counter."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_structure", ROOT / "benchmarks" / "bench_structure.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_structure"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_structure", None)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return root


FILES = {
    "asp_lang/__init__.py": "",
    "asp_lang/core.py": "X = 1\n",
    "agentforge/__init__.py": "",
    # a circle at import time: a -> b -> a
    "agentforge/a.py": "from . import b\n_secret = 1\n",
    "agentforge/b.py": "from .a import _secret\n",
    # a circle only through a function-level import: c -> d (in a function), d -> c
    "agentforge/c.py": "def f():\n    from .d import g\n    return g\n",
    "agentforge/d.py": """\
        from agentforge import c
        from .sub import mod as m
        from .author import Plan as P

        def g(cand, d):
            if cand.kind == "plan":
                return P.from_dict(d)
            if d.get("kind") in ("kernel", "baseline"):
                return m._hidden
            if d["kind"] != "kernel":
                return None
            if cand.kind == "other" or cand.name == "plan":
                return None
            return Plan.from_dict(d), Other.from_dict(d)
        """,
    "agentforge/sub/__init__.py": "",
    "agentforge/sub/mod.py": "_hidden = 2\n__version__ = '1'\n",
    "agentforge/author.py": """\
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from .d import g
        from .sub.mod import __version__

        class Plan:
            @staticmethod
            def from_dict(d):
                return Plan()
        """,
}


def test_counts_on_a_synthetic_tree(bench, tmp_path):
    res = bench.static_report(_tree(tmp_path, FILES))

    kb = res["kind_branches"]
    assert [s["site"] for s in kb["sites"]] == ["agentforge/d.py:6", "agentforge/d.py:8", "agentforge/d.py:10"]
    assert [s["op"] for s in kb["sites"]] == ["==", "in", "!="]
    assert kb["sites"][1]["kinds"] == ["baseline", "kernel"]

    fd = res["plan_from_dict_sites"]
    # the alias P counts, Other.from_dict does not
    assert [s["site"] for s in fd["sites"]] == ["agentforge/d.py:7", "agentforge/d.py:14"]

    ic = res["import_circles"]
    assert ic["circles"] == [["agentforge.a", "agentforge.b"]]    # TYPE_CHECKING author -> d is left out
    # with every import: c -> d (in a function) and author -> d (TYPE_CHECKING) join d's own imports of c and author
    assert ic["with_function_level_imports"]["circles"] == [
        ["agentforge.author", "agentforge.c", "agentforge.d"], ["agentforge.a", "agentforge.b"]]

    pi = res["private_imports"]
    got = sorted((p["site"], p["from"], p["name"]) for p in pi["sites"])
    assert got == [("agentforge/b.py:1", "agentforge.a", "_secret"),
                   ("agentforge/d.py:9", "agentforge.sub.mod", "_hidden")]      # dunders are public
    assert pi["outside_own_package"] == 1                                      # b and a share agentforge

    assert res["largest_modules"][0] == {"file": "agentforge/d.py", "lines": 14}
    assert len(res["largest_modules"]) == 10


def test_a_tree_without_the_packages_is_a_clear_error(bench, tmp_path):
    with pytest.raises(SystemExit, match="asp_lang"):
        bench.static_report(_tree(tmp_path, {"agentforge/__init__.py": ""}))


def test_the_counter_tallies_every_process_line(bench, tmp_path):
    f = tmp_path / "counts"
    f.write_text("start 1 -m campaign\nstart 2 job.py\nwrapped 2 agentforge.author.realize\n"
                 "call 2 realize\ncall 2 realize\ncall 1 realize\ncall 2 build_baseline\n")
    t = bench._tally(f)
    assert t["calls"] == {"realize": 3, "build_baseline": 1, "bind": 0}
    assert t["processes"] == 2
    assert t["instrumented"] == ["agentforge.author.realize"]
