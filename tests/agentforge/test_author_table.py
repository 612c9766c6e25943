"""benchmarks/author_table.py: issue 17's before/after table joins two bench_author runs task by task."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("author_table", ROOT / "benchmarks" / "author_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(tasks: list[tuple[str, str, float, float]]) -> dict:
    return {"per_task": [{"task": t, "bound": b, "roofline_fraction": r, "speedup": s, "verified": True}
                         for t, b, r, s in tasks]}


def test_rows_join_by_task_and_medians_split_by_bound(tmp_path: Path) -> None:
    at = _module()
    before = tmp_path / "before.json"
    after = tmp_path / "after.json"
    before.write_text(json.dumps(_run([("matmul", "compute", 0.70, 1.0), ("relu", "memory", 0.99, 1.0)])))
    after.write_text(json.dumps(_run([("matmul", "compute", 0.95, 1.04), ("relu", "memory", 0.99, 1.0),
                                      ("cumprod", "memory", 0.90, 2.0)])))
    t = at.table(at.load(str(before)), at.load(str(after)), None)
    rows = {r["task"]: r for r in t["tasks"]}
    assert rows["matmul"]["roofline_before"] == 0.70 and rows["matmul"]["roofline_after"] == 0.95
    assert rows["cumprod"]["roofline_before"] is None and rows["cumprod"]["speedup_after"] == 2.0
    assert t["after"]["median_roofline_compute_bound"] == 0.95
    assert t["before"]["median_roofline_memory_bound"] == 0.99
    md = at.markdown(t)
    assert "| matmul | compute | 0.700 | 0.950 | 1.00 | 1.04 |" in md
    assert "| cumprod | memory |  | 0.900 |" in md


def test_baseline_per_op_keeps_the_audit_before_and_after() -> None:
    at = _module()
    base = {"by_op": {"aten.mm.default": {"count": 3, "median": 0.9, "min": 0.8, "worst": "x/mm"}},
            "before": {"by_op": {"aten.mm.default": {"count": 3, "median": 0.25, "min": 0.2}}}}
    t = at.table(_run([]), _run([]), base)
    assert t["baseline_by_op"] == [{"op": "aten.mm.default", "kernels": 3, "median_before": 0.25,
                                    "median_after": 0.9, "min_before": 0.2, "min_after": 0.8,
                                    "worst_after": "x/mm"}]
