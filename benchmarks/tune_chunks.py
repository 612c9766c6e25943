"""Sweep the interpreter's chunk size (asp_lang.ops_compute._CHUNK_ELEMS) on the bench_interpreter
benchmarks and print the best asp_lang.run time of each setting as JSON, with plain numpy
formulations of the GEMM accumulation for reference.

    .venv/bin/python benchmarks/tune_chunks.py
    .venv/bin/python benchmarks/tune_chunks.py --chunks 32768 65536 131072
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_interpreter as B  # noqa: E402
import numpy as np  # noqa: E402

import asp_lang  # noqa: E402
from asp_lang import ops_compute as ops  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, nargs="+", default=[1 << 14, 1 << 15, 1 << 16, 1 << 17, 1 << 18, 1 << 19])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    progs = {}
    for name, (fname, sizes, _, ref_fn, names, *_rest) in B.BENCHES.items():
        prog = asp_lang.compile_file(B.EXAMPLES / fname, machine="sn40l", sizes=sizes)
        inputs = B.make_inputs(prog, names)
        progs[name] = (prog, inputs, [inputs[n] for n in names], ref_fn)
    out = {"numpy_seconds": {}, "chunk_elems": {}}
    default = ops._CHUNK_ELEMS
    for name, (prog, inputs, args, ref_fn) in progs.items():
        out["numpy_seconds"][name] = round(B.best_times([lambda: ref_fn(*args)], a.repeats)[0], 5)
    for c in a.chunks:
        ops._CHUNK_ELEMS = c
        out["chunk_elems"][c] = {
            name: round(B.best_times([lambda p=prog, i=inputs: asp_lang.run(p, i)], a.repeats)[0], 5)
            for name, (prog, inputs, _, _) in progs.items() if name != "gemm"}
    ops._CHUNK_ELEMS = default
    prog, inputs, _, _ = progs["gemm"]
    # plain numpy formulations of the GEMM's accumulation, for reference: one matmul over the
    # whole K (reassociates the sum), or per-K-step products added in order (what accum means)
    _, _, (am, bm), _ = progs["gemm"]
    tk = prog.sizes["TK"]
    x2, y2 = am.reshape(am.shape[0], -1, tk), bm.reshape(-1, tk, bm.shape[1])

    def per_step_add():
        acc = np.matmul(x2[:, 0], y2[0])
        tmp = np.empty_like(acc)
        for j in range(1, y2.shape[0]):
            np.matmul(x2[:, j], y2[j], out=tmp)
            acc += tmp
        return acc
    out["mm_strategies"] = {
        "single_matmul": round(B.best_times([lambda: am @ bm], a.repeats)[0], 5),
        "per_step_add": round(B.best_times([per_step_add], a.repeats)[0], 5),
        "asp_sum_step_products": round(B.best_times([lambda: ops._sum_step_products(x2, y2)], a.repeats)[0], 5),
        "asp_run": round(B.best_times([lambda: asp_lang.run(prog, inputs)], a.repeats)[0], 5),
    }
    out["default_chunk_elems"] = default
    out["machine"] = B.machine_info()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
