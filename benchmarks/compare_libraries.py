"""Compare two kernel libraries task by task: the same tasks, the same verified kernels, the same numbers?

    python benchmarks/compare_libraries.py BEFORE/library AFTER/library [--rtol 0.01] [--out file.json]

Prints JSON: per task whether the entry id (a digest of signature, dtypes, kernel files and plan)
is the same, whether the kernel files are byte-identical, and the ratio of simulated seconds and
speedups; then totals and ``same`` (every task in both, identical files, every ratio within
``rtol``). Exit status 0 when ``same``, 1 otherwise. Used for issue 16's "the default campaign
produces the same library" (a restructure must not change what the campaign makes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path


def _entries(root: Path) -> dict[str, dict]:
    m = json.loads((root / "manifest.json").read_text())
    return {e["task"]: e for e in m["kernels"]}


def _files_digest(root: Path, e: dict) -> str:
    h = hashlib.sha256()
    for f in e["files"]:
        h.update(Path(f).name.encode())
        h.update((root / f).read_bytes())
    return h.hexdigest()


def compare(before: Path, after: Path, rtol: float = 0.01) -> dict:
    a, b = _entries(before), _entries(after)
    rows = []
    for task in sorted(set(a) | set(b)):
        ea, eb = a.get(task), b.get(task)
        if ea is None or eb is None:
            rows.append({"task": task, "in_before": ea is not None, "in_after": eb is not None, "same": False})
            continue
        sec = eb["simulated_seconds"] / ea["simulated_seconds"] if ea["simulated_seconds"] else None
        spd = eb["speedup"] / ea["speedup"] if ea["speedup"] else None
        files_same = _files_digest(before, ea) == _files_digest(after, eb)
        within = all(r is not None and abs(r - 1.0) <= rtol for r in (sec, spd))
        rows.append({"task": task, "kind": [ea["kind"], eb["kind"]], "same_id": ea["id"] == eb["id"],
                     "same_files": files_same, "seconds_ratio": sec, "speedup_ratio": spd,
                     "speedup": [ea["speedup"], eb["speedup"]], "same": files_same and within})
    ratios = [r["speedup_ratio"] for r in rows if r.get("speedup_ratio") is not None]
    return {"before": str(before), "after": str(after), "rtol": rtol, "tasks": len(rows),
            "same_tasks": sum(1 for r in rows if "in_before" not in r),
            "same_ids": sum(1 for r in rows if r.get("same_id")),
            "same_files": sum(1 for r in rows if r.get("same_files")),
            "max_speedup_deviation": max((abs(r - 1.0) for r in ratios), default=None),
            "same": all(r["same"] for r in rows), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--rtol", type=float, default=0.01)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    res = compare(args.before, args.after, args.rtol)
    text = json.dumps(res, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text if not args.out else json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=1))
    return 0 if res["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
