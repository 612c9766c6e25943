"""The author's templates sit behind one interface in one registry, and a plan from elsewhere (the
LLM planner, a cache) is checked against them and the graph before anything is built."""

from __future__ import annotations

from pathlib import Path

import pytest

import asp_lang
from agentforge.author import (GRIDS, MIN_TRIES, TEMPLATES, WHOLE_GRID, Plan, Region, baseline_plan, partition,
                               realize, semantic_nodes, validate_plan)
from agentforge.author.realize import region_kernel
from agentforge.capture import capture_at
from agentforge.tasks import load_task

SUITE = Path(__file__).resolve().parents[2] / "evals" / "suite"


@pytest.fixture(scope="module")
def silu_mul():
    return capture_at(load_task(SUITE / "silu_mul.py"), meta=True)   # [0] sigmoid, [1] mul, [2] mul_1


def test_the_registry_is_the_one_source_of_names_grids_and_tries():
    assert list(TEMPLATES) == ["row", "matmul", "attention", "moe", "experts", "decoder", "single"]
    for name, t in TEMPLATES.items():
        assert t.name == name and GRIDS[name] is t.grid
        assert t.params == tuple(t.grid) and all(len(v) >= 1 for v in t.grid.values())
    assert MIN_TRIES == {"matmul": 80, "attention": 264, "moe": 64, "experts": 40, "decoder": 24}
    assert WHOLE_GRID == ("attention",)
    # a whole-grid template's minimum tries cover its whole grid
    for name in WHOLE_GRID:
        size = 1
        for values in GRIDS[name].values():
            size *= len(values)
        assert MIN_TRIES[name] >= size


def test_realize_builds_each_region_with_the_template_it_names(silu_mul):
    m = asp_lang.load_machine("sn40l")
    (region,) = partition(silu_mul)
    assert region.template == "row"
    chain = realize(Plan([region]), silu_mul, m)
    assert [k.target for k in chain.kernels] == ["fused.row"]
    sem = semantic_nodes(silu_mul)
    with pytest.raises(ValueError,
                       match="unknown region template 'bogus'.*row, matmul, attention, moe, experts, decoder, single"):
        region_kernel(Region("bogus", [0]), [sem[0]], silu_mul, {}, {}, 0, {}, set())


def test_a_plan_that_fits_the_templates_and_the_graph_has_no_problems(silu_mul):
    assert validate_plan(Plan(partition(silu_mul)), silu_mul) == []
    assert validate_plan(baseline_plan(silu_mul), silu_mul) == []
    tuned = {"regions": [{"template": "row", "nodes": [0, 1, 2], "params": {"rows": 4, "par": 64, "par_mem": 4}}]}
    assert validate_plan(tuned, silu_mul) == []


@pytest.mark.parametrize("regions, says", [
    ([{"template": "bogus", "nodes": [0, 1, 2]}], "region 0: unknown template 'bogus' (one of row, matmul"),
    ([{"template": "row", "nodes": [0, 1, 2], "params": {"tm": 64}}],
     "region 0: template 'row' does not take tm (it takes rows, par, par_mem)"),
    ([{"template": "row", "nodes": [0, 1, 2], "params": {"rows": -1}}], "parameter(s) rows must be non-negative"),
    ([{"template": "row", "nodes": [0, 1, 2, 7]}], "region 0: node 7 does not exist (the graph has nodes 0..2)"),
    ([{"template": "row", "nodes": [0, 1]}, {"template": "single", "nodes": [1]}, {"template": "single", "nodes": [2]}],
     "region 1: node 1 is already in region 0"),
    ([{"template": "single", "nodes": [0, 1, 2]}], "region 0: a 'single' region holds exactly one node"),
    ([{"template": "row", "nodes": []}, {"template": "row", "nodes": [0, 1, 2]}], "region 0: 'nodes' must be"),
    ([{"template": "row", "nodes": [0, 1]}], "node(s) [2] mul_1 are in no region"),
])
def test_a_plan_that_does_not_fit_says_what_to_fix(silu_mul, regions, says):
    problems = validate_plan({"regions": regions}, silu_mul)
    assert len(problems) == 1 and says in problems[0], problems


def test_coverage_is_checked_only_when_asked(silu_mul):
    partial = {"regions": [{"template": "row", "nodes": [0, 1]}]}
    assert validate_plan(partial, silu_mul, cover=False) == []
    assert validate_plan({"nodes": []}, silu_mul) == ["a plan is an object with a 'regions' list"]
