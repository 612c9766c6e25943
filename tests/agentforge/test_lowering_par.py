"""A lowered kernel keeps its parallelism apart from its text: the baseline's search and a plan's
one-op regions render it at other ``par`` values from its slots, never by editing ASP text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agentforge.baseline import lower_steps
from agentforge.capture import capture_at
from agentforge.lowering import PAR_BESIDE_MATMUL, OpKernel
from agentforge.tasks import load_task

SUITE = Path(__file__).resolve().parents[2] / "evals" / "suite"


def _kernels(name: str) -> list[OpKernel]:
    return [s for s in lower_steps(capture_at(load_task(SUITE / f"{name}.py"), meta=True)) if isinstance(s, OpKernel)]


def _pars(text: str) -> list[tuple[str, int]]:
    """(operator, par) of every operator line that sets a par."""
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*(?:[\w, ]+=\s*)?(\w+)\(.*\bpar=(\d+)\)\s*$", line)
        if m:
            out.append((m.group(1), int(m.group(2))))
    return out


@pytest.mark.parametrize("task", ["softmax", "rmsnorm"])
def test_as_lowered_the_rendering_is_the_source_and_other_pars_reach_every_operator(task):
    for k in _kernels(task):
        assert k.layout is not None and k.layout.render() == k.source
        pars = _pars(k.with_par(256, 8))
        assert pars and all(p == (8 if op in ("load", "store") else 256) for op, p in pars), pars


def test_in_a_matmul_kernel_the_other_compute_operators_stay_beside_the_matmul():
    (mm,) = [k for k in _kernels("linear_bias") if "matmul(" in k.source]
    pars = _pars(mm.with_par(960, 2))
    compute = [p for op, p in pars if op not in ("load", "store")]
    assert 960 in compute and PAR_BESIDE_MATMUL in compute and set(compute) == {960, PAR_BESIDE_MATMUL}
    assert {p for op, p in pars if op in ("load", "store")} == {2}


def test_a_fused_kernel_has_no_slots_to_set():
    k = OpKernel("n", "fused.row", "kernel k() -> () {\n}\n", [], [], [], [])
    with pytest.raises(ValueError, match="no parallelism slots"):
        k.with_par(16, 4)
