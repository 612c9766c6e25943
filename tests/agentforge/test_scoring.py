"""fast_p and suite summaries follow KernelBench's definitions."""

import math

import pytest

from agentforge.scoring import fast_p, geomean, summarize
from agentforge.verify import Evaluation


def _ev(verified: bool, speedup: float | None, roof: float | None = 0.5, code: str | None = None) -> Evaluation:
    return Evaluation("t", "kernel", verified, None if verified else "no", reason_code=code, speedup=speedup,
                      roofline_fraction=roof)


def test_fast_p_counts_only_verified_and_strictly_faster():
    evals = [_ev(True, 3.0), _ev(True, 1.0), _ev(False, 5.0, code="mismatch"), _ev(True, 1.5)]
    assert fast_p(evals, 0.0) == 0.75
    assert fast_p(evals, 1.0) == 0.5      # 1.0 is not faster than 1.0
    assert fast_p(evals, 2.0) == 0.25     # the rejected 5x does not count
    assert fast_p([], 1.0) == 0.0


def test_geomean_ignores_missing_values():
    assert geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert geomean([None, 0.0]) is None


def test_summary_reports_rejections_by_reason():
    s = summarize([_ev(True, 2.5, 0.9), _ev(False, None, None, "timeout"), _ev(False, None, None, "timeout")])
    assert s["tasks"] == 3 and s["verified"] == 1
    assert s["rejected_by_reason"] == {"timeout": 2}
    assert math.isclose(s["median_roofline_fraction"], 0.9)
    assert s["fast_2"] == pytest.approx(1 / 3)
