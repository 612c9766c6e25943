"""KernelBench problem files as published (evals/kernelbench_published) are accepted as they are.

Issue 15: sizes written as expressions (``N = 2048 * 2``) or inside a tuple (``input_shape =
(32768,)``) are sizes the referee can lower to derive check sizes; a number returned by
``get_inputs()`` is a constant of the problem; checks run at derived sizes within the budget and
timing at the problem's own sizes (here up to 4096 x 393216 floats, 6 GiB) never allocates data.
The whole published set is measured by benchmarks/bench_kernelbench.py."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from agentforge.tasks import _const_int, instantiate, load_task
from agentforge.verify import evaluate

ROOT = Path(__file__).resolve().parents[2]
L1 = ROOT / "evals" / "kernelbench_published" / "level1"


def _expr(text: str) -> int | None:
    return _const_int(ast.parse(text, mode="eval").body)


def test_sizes_written_as_constant_expressions_are_sizes() -> None:
    assert load_task(L1 / "1_Square_matrix_multiplication_.py").sizes == {"N": 4096}
    assert load_task(L1 / "2_Standard_matrix_multiplication_.py").sizes == {"M": 2048, "K": 8192, "N": 4096}
    assert load_task(L1 / "4_Matrix_vector_multiplication_.py").sizes == {"M": 2048, "K": 1048576}  # `256 * 8 # 2048`
    # an int inside a module-level tuple is a size of its own, named by its place
    assert load_task(L1 / "99_TripletMarginLoss.py").sizes == {"batch_size": 32768, "input_shape[0]": 8192, "dim": 1}
    # a tuple that names another size is derived from it: it follows, it is not a size
    assert load_task(L1 / "95_CrossEntropyLoss.py").sizes == {"batch_size": 32768, "num_classes": 4096, "dim": 1}


def test_constant_expressions_are_evaluated_on_the_tree_and_bounded() -> None:
    assert _expr("2048 * 2") == 4096 and _expr("1 << 20") == 1 << 20 and _expr("(3 + 5) // 2 % 3") == 1
    assert _expr("2 ** 10") == 1024 and _expr("-2") == -2
    # huge or undefined values are not sizes, and are refused before they are computed
    assert _expr("10 ** 10 ** 10") is None and _expr("1 << 100") is None and _expr("4 // 0") is None
    # anything but integer arithmetic on literals is not a constant expression
    assert _expr("N * 2") is None and _expr("int('7')") is None and _expr("2.0 * 3") is None


def test_rewriting_sizes_keeps_derived_values_and_parameters(tmp_path: Path) -> None:
    path = tmp_path / "derived.py"
    path.write_text(textwrap.dedent("""\
        import torch
        from torch import nn

        N = 8 * 2
        K = 4 * N
        shape = (N, 3 * 2)
        lo = -2

        class Model(nn.Module):
            def forward(self, x):
                return x.clamp(min=lo)

        def get_inputs():
            return [torch.randn(K, *shape)]

        def get_init_inputs():
            return []
        """))
    task = load_task(path)
    assert task.sizes == {"N": 16, "shape[1]": 6}  # K follows N; lo is a parameter (negative)
    inst = instantiate(task, {"N": 2, "shape[1]": 5})
    assert tuple(inst.inputs[0].shape) == (8, 2, 5)


def test_tuple_sizes_and_scalar_inputs_instantiate_at_check_sizes() -> None:
    inst = instantiate(load_task(L1 / "99_TripletMarginLoss.py"), {"batch_size": 4, "input_shape[0]": 8})
    assert [tuple(t.shape) for t in inst.inputs] == [(4, 8)] * 3
    # `return [A, 3.14]`: the number is bound into the model, the tensors are the inputs
    inst = instantiate(load_task(L1 / "5_Matrix_scalar_multiplication.py"), {"M": 8, "N": 16})
    assert len(inst.inputs) == 1 and inst.scalar_inputs == {1: 3.14}
    assert torch.equal(inst.model(*inst.inputs), inst.inputs[0] * 3.14)


@pytest.mark.parametrize("name", ["1_Square_matrix_multiplication_", "100_HingeLoss"])
def test_published_problem_is_verified_op_by_op_at_derived_check_sizes(name: str) -> None:
    """``N = 2048 * 2`` (a 4096^2 GEMM, past the check budget) and ``input_shape = (32768,)`` broadcast
    against ``batch_size`` (both must shrink together): check sizes are derived, every check passes,
    and the chain is timed at the problem's own sizes."""
    task = load_task(L1 / f"{name}.py")
    ev = evaluate(task, {"kind": "baseline"})
    assert ev.verified, ev.reason
    assert ev.own_sizes == task.sizes and ev.simulated_seconds > 0
    checked = {json.dumps(c.sizes, sort_keys=True) for c in ev.checks}
    assert checked and all(json.loads(c) != task.sizes for c in checked)
    assert all(json.loads(c)[k] < v for c in checked for k, v in task.sizes.items() if v > 64)


_OWN_SIZE_CHILD = """
import json, resource, sys
lim = {cap} << 20
resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
import asp_lang
from agentforge.loop import SolveConfig, offline_roles, solve
from agentforge.tasks import load_task
from agentforge.verify import evaluate
task = load_task(sys.argv[1])
ev = evaluate(task, {{"kind": "baseline"}})
res = solve(task, *offline_roles(1), asp_lang.load_machine("sn40l"), SolveConfig(max_attempts=1))
print(json.dumps({{"baseline": ev.verified, "reason": ev.reason, "author": res.verified,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def test_timing_at_the_own_sizes_allocates_no_data() -> None:
    """19_ReLU's own input is 4096 x 393216 floats (6 GiB). Verifying it op by op and solving it with
    the offline author, both timed at the own sizes, in a process whose address space is capped at
    3 GiB: any tensor at the own sizes would fail to allocate."""
    code = _OWN_SIZE_CHILD.format(cap=3072)
    p = subprocess.run([sys.executable, "-c", code, str(L1 / "19_ReLU.py")], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["baseline"] and got["author"], got
    assert got["rss_mb"] < 2048, got


def _task_with(tmp_path: Path, header: str):
    path = tmp_path / "sizes.py"
    path.write_text(f"import torch\nfrom torch import nn\n{header}\n"
                    "class Model(nn.Module):\n    def forward(self, x):\n        return x\n"
                    "def get_inputs():\n    return [torch.randn(4)]\ndef get_init_inputs():\n    return []\n")
    return load_task(path)


def test_an_odd_size_tiled_by_a_divisor_gets_check_sizes_with_the_same_tile(tmp_path: Path) -> None:
    """8_Matmul_with_irregular_shapes_: M = 8205 = 15 x 547 is tiled by 15 (its largest divisor up
    to a 256 tile), 547 tiles. Halving or 3 x 2^j give other tiles; replacing the prime 547 by the
    smallest prime past 256 / 15 keeps tile 15 with 257 tiles (M = 3855)."""
    from agentforge.check_sizes import check_size_sets
    from agentforge.verify import VerifyConfig

    def tile(m: int) -> int:
        return max(d for d in range(1, 257) if m % d == 0)

    def fits(s: dict):  # the timed configuration: tile 15, at least 3 tiles; cost = elements
        m = s["M"]
        return (m * 2048, 0.0, 0.0) if tile(m) == 15 and m // 15 >= 3 else None

    task = _task_with(tmp_path, "M = 8205")
    assert check_size_sets(task, fits, VerifyConfig(size_sets=1)) == [{"M": 3855}]


def test_sizes_go_below_their_floor_only_when_the_floor_is_past_the_budget(tmp_path: Path) -> None:
    """3_Batched_matrix_multiplication: the batch stops at its floor of 16 unless that is past the
    budget; then it goes lower, as little as the budget allows (4), never when the floors fit."""
    from agentforge.check_sizes import LAST_FLOOR, check_size_sets
    from agentforge.verify import VerifyConfig

    cfg = VerifyConfig(size_sets=1)
    task = _task_with(tmp_path, "B = 128\nN = 4096")

    def fits(per_row: int):
        return lambda s: (s["B"] * per_row, 0.0, 0.0) if s["N"] == 4096 else None  # N's tiles fix it

    assert check_size_sets(task, fits(1 << 16), cfg) == [{"B": 16, "N": 4096}]
    assert check_size_sets(task, fits(1 << 21), cfg) == [{"B": 4, "N": 4096}]  # the largest within the budget
    # 97_ScaledDotProductAttention: batch and heads must both go lower (to 2) to fit
    task = _task_with(tmp_path, "B = 32\nH = 32\nN = 4096")
    both = check_size_sets(task, lambda s: (s["B"] * s["H"] * (1 << 21), 0.0, 0.0) if s["N"] == 4096 else None, cfg)
    assert both == [{"B": LAST_FLOOR, "H": LAST_FLOOR, "N": 4096}]


def test_a_sidecar_may_declare_ranges_holding_the_own_sizes(tmp_path: Path) -> None:
    from agentforge.errors import TaskError

    task = _task_with(tmp_path, "TOKENS = 64")
    task.sidecar_path.write_text('[ranges]\nTOKENS = "1..8192"\n')
    assert load_task(task.path).sizes == {"TOKENS": 64}
    task.sidecar_path.write_text('[ranges]\nTOKENS = "100..8192"\n')
    with pytest.raises(TaskError, match=r"sizes\.toml.*\[ranges\].*TOKENS"):
        load_task(task.path)
