"""The one solution object: every consumer binds an answer through it, once per graph shape."""

from pathlib import Path

import pytest
import torch

import asp_lang
from agentforge import solution as solution_mod
from agentforge.author import author_plan
from agentforge.capture import capture_at
from agentforge.solution import KernelSolution, baseline_solution, plan_solution, solution
from agentforge.tasks import instantiate, load_task, make_inputs
from agentforge.verify import VerifyConfig, evaluate

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "evals" / "suite"
CONTROL = ROOT / "evals" / "adversarial" / "controls" / "softmax__online.asp"
MACHINE = asp_lang.load_machine("sn40l")


def test_a_plan_is_realized_once_per_graph_shape_in_an_evaluation():
    """Checks at 2 size sets x 3 seeds (+ targeted inputs) and the timing at the task's own sizes
    bind the plan at 3 graph shapes: 3 realizations, not one per check."""
    task = load_task(SUITE / "softmax.py")
    plan = author_plan(capture_at(task, meta=True), MACHINE).plan.to_dict()
    solution_mod.clear_caches()          # another test in this process may have bound the same plan
    before = solution_mod.BUILDS["plan"]
    ev = evaluate(task, {"kind": "plan", "plan": plan}, VerifyConfig())
    assert ev.verified, ev.reason
    shapes = {tuple(sorted(c.sizes.items())) for c in ev.checks} | {tuple(sorted(task.sizes.items()))}
    assert len(ev.checks) > len(shapes)                      # several checks share a shape
    assert solution_mod.BUILDS["plan"] - before == len(shapes)


def test_solutions_of_one_plan_share_their_chain_and_its_timing():
    task = load_task(SUITE / "rmsnorm.py")
    own = capture_at(task, meta=True)
    plan = author_plan(own, MACHINE).plan
    a, b = plan_solution(plan, MACHINE), plan_solution(plan.to_dict(), MACHINE)
    assert a.key() == b.key() and a.at(own) is b.at(own)
    assert a.time(own) is b.time(own)                       # timed once, whoever asks
    assert a.candidate() == {"kind": "plan", "plan": plan.to_dict()}


def test_a_kernel_solution_runs_and_times_like_the_chain_it_replaces():
    """Running through the solution gives the task's answer whatever the answer's form."""
    task = load_task(SUITE / "softmax.py")
    sizes = task.resolved_size_sets()[0]
    inst = instantiate(task, sizes, seed=0)
    graph = capture_at(task, sizes)
    inputs = make_inputs(inst, sizes, seed=0)
    want = inst.model(*inputs)
    for sol in (baseline_solution(MACHINE),
                solution({"kind": "kernel", "source": CONTROL.read_text(), "filename": CONTROL.name}, MACHINE)):
        got = sol.run(graph, [t.clone() for t in inputs])
        torch.testing.assert_close(got[0], want, rtol=1e-4, atol=1e-5)
        assert sol.time(capture_at(task, meta=True)).seconds > 0
        assert list(sol.files(capture_at(task, meta=True)).values())[0].strip()


def test_a_kernel_solution_records_its_fixed_tile_sizes_and_digest():
    sol = KernelSolution(CONTROL.read_text(), CONTROL.name, MACHINE)
    task = load_task(SUITE / "softmax.py")
    sol.configure(capture_at(task, meta=True))
    assert sol.source_sha256 and len(sol.source_sha256) == 64
    assert sol.bound_sizes == sol.fixed and sol.plan_record is None


def test_an_unknown_candidate_kind_is_named():
    with pytest.raises(ValueError, match="unknown candidate kind 'model'.*'kernel', 'plan' or 'baseline'"):
        solution({"kind": "model"}, MACHINE)
