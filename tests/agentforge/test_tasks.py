"""Specification tests for agentforge.tasks (loading, sizes, instantiation, input distributions)."""

from __future__ import annotations

import math
import pickle
import re
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentforge.errors import AgentforgeError, TaskError
from agentforge.tasks import (
    DISTRIBUTIONS,
    GROUPS,
    Instance,
    Task,
    derive_seed,
    instantiate,
    load_suite,
    load_task,
    make_inputs,
)

FIXTURES = Path(__file__).parent / "fixtures"
GOOD = FIXTURES / "good"
BROKEN = FIXTURES / "broken"

_TASK_TEMPLATE = """\
import torch
from torch import nn

{header}


class Model(nn.Module):
    def forward(self, *xs):
{body}


def get_inputs():
{inputs}


def get_init_inputs():
    return []
"""


def write_task(folder: Path, name: str, header: str, body: str, inputs: str, sidecar: str | None = None) -> Path:
    """Write a small task file (and sidecar) for one test."""
    path = folder / f"{name}.py"
    path.write_text(
        _TASK_TEMPLATE.format(
            header=textwrap.dedent(header).strip(),
            body=textwrap.indent(textwrap.dedent(body).strip(), " " * 8),
            inputs=textwrap.indent(textwrap.dedent(inputs).strip(), " " * 4),
        )
    )
    if sidecar is not None:
        path.with_suffix(".toml").write_text(textwrap.dedent(sidecar))
    return path


def kurtosis(t: torch.Tensor) -> float:
    x = t.double().flatten()
    x = x - x.mean()
    return float((x**4).mean() / (x**2).mean() ** 2 - 3.0)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def test_load_task_with_sidecar() -> None:
    task = load_task(GOOD / "softmax.py")
    assert isinstance(task, Task)
    assert task.name == "softmax"
    assert task.path == (GOOD / "softmax.py").resolve()
    assert task.path.is_absolute()
    assert "torch.softmax" in task.source
    assert task.sizes == {"BATCH": 8, "DIM": 64}
    assert task.group == "softmax"
    assert task.level == 1
    assert task.description == "softmax(x, dim=-1) on [BATCH, DIM]"
    assert task.atol == 1e-5 and task.rtol == 1e-4
    assert task.size_sets == [{"BATCH": 2, "DIM": 16}, {"DIM": 32}]
    assert task.tags == ("fixture",)
    assert task.sidecar_path == task.path.with_suffix(".toml")


def test_load_task_without_sidecar_uses_defaults() -> None:
    task = load_task(GOOD / "rmsnorm.py")
    assert task.group is None
    assert task.level == 1
    assert task.atol is None and task.rtol is None
    assert task.size_sets == []
    assert task.tags == ()
    # description falls back to the first line of the module docstring
    assert task.description.startswith("RMSNorm over the last dim")


def test_sizes_are_module_level_int_literals_in_file_order() -> None:
    task = load_task(GOOD / "rmsnorm.py")
    assert list(task.sizes) == ["BATCH", "SEQ", "HIDDEN"]  # EPS is a float: not a size
    derived = load_task(GOOD / "linear_gelu.py")
    assert list(derived.sizes) == ["BATCH", "IN_FEATURES"]  # OUT_FEATURES = 2 * IN_FEATURES


def test_task_without_sizes_is_fine(tmp_path: Path) -> None:
    path = write_task(tmp_path, "nosizes", "", "return xs[0] * 2", "return [torch.randn(3)]")
    task = load_task(path)
    assert task.sizes == {}
    assert instantiate(task).inputs[0].shape == (3,)


def test_task_is_hashable_and_comparable() -> None:
    a, b = load_task(GOOD / "softmax.py"), load_task(GOOD / "softmax.py")
    assert a == b
    assert hash(a) == hash(b)


def test_load_suite_sorted_by_name() -> None:
    tasks = load_suite(GOOD)
    names = [t.name for t in tasks]
    assert names == sorted(names)
    assert {"softmax", "linear_gelu", "rmsnorm", "matmul", "masked_gather"} <= set(names)


def test_load_suite_skips_underscore_files(tmp_path: Path) -> None:
    write_task(tmp_path, "a", "N = 2", "return xs[0]", "return [torch.randn(N)]")
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "_helpers.py").write_text("X = 1\n")
    assert [t.name for t in load_suite(tmp_path)] == ["a"]


def test_load_suite_empty_folder_is_error(tmp_path: Path) -> None:
    with pytest.raises(TaskError):
        load_suite(tmp_path)


def test_load_suite_missing_folder_is_error(tmp_path: Path) -> None:
    with pytest.raises(TaskError):
        load_suite(tmp_path / "nope")


def test_load_suite_orphan_sidecar_is_error(tmp_path: Path) -> None:
    write_task(tmp_path, "a", "N = 2", "return xs[0]", "return [torch.randn(N)]")
    (tmp_path / "typo.toml").write_text('[task]\ngroup = "norm"\n')
    with pytest.raises(TaskError):
        load_suite(tmp_path)
    # a non-sidecar TOML (no [task] table) is not a task's business
    (tmp_path / "typo.toml").write_text('[suite]\nname = "x"\n')
    assert [t.name for t in load_suite(tmp_path)] == ["a"]


def test_missing_task_file_is_error(tmp_path: Path) -> None:
    with pytest.raises(TaskError):
        load_task(tmp_path / "absent.py")
    with pytest.raises(TaskError):
        load_task(tmp_path)  # a folder


@pytest.mark.parametrize(
    "name, bad_file",
    [
        ("syntax_error", "syntax_error.py"),
        ("missing_get_inputs", "missing_get_inputs.py"),
        ("bad_group", "bad_group.toml"),
        ("bad_toml", "bad_toml.toml"),
        ("unknown_size", "unknown_size.toml"),
        ("bad_level", "bad_level.toml"),
        ("non_int_size", "non_int_size.toml"),
    ],
)
def test_broken_tasks_raise_task_error_naming_the_file(name: str, bad_file: str) -> None:
    with pytest.raises(TaskError) as info:
        load_task(BROKEN / f"{name}.py")
    err = info.value
    assert isinstance(err, AgentforgeError)
    assert Path(err.path).name == bad_file
    assert err.path in str(err)  # the message names the file
    assert err.problem and err.hint


def test_syntax_error_reports_line() -> None:
    with pytest.raises(TaskError) as info:
        load_task(BROKEN / "syntax_error.py")
    assert info.value.line == 8


@pytest.mark.parametrize(
    "sidecar",
    [
        '[task]\ngroup = "norm"\nlevel = 0\n',
        '[task]\ngroup = "norm"\nlevel = "1"\n',
        '[task]\ngroup = "norm"\nlevel = true\n',
        '[task]\ngroup = "norm"\nflavour = "x"\n',
        '[tolerances]\natol = 1\n',
        '[tolerance]\natol = -1.0\n',
        '[tolerance]\natol = "tight"\n',
        '[tolerance]\nmaxdiff = 1.0\n',
        '[[sizes]]\nN = true\n',
        '[[sizes]]\nN = -2\n',
        '[[sizes]]\nN = "2"\n',
        'sizes = 3\n',
        '[task]\ndescription = 3\n',
        '[task]\ntags = "a"\n',
    ],
)
def test_sidecar_validation(tmp_path: Path, sidecar: str) -> None:
    path = write_task(tmp_path, "t", "N = 4", "return xs[0]", "return [torch.randn(N)]", sidecar=sidecar)
    with pytest.raises(TaskError):
        load_task(path)


def test_every_documented_group_is_accepted(tmp_path: Path) -> None:
    for group in sorted(GROUPS):
        path = write_task(
            tmp_path, "t", "N = 4", "return xs[0]", "return [torch.randn(N)]",
            sidecar=f'[task]\ngroup = "{group}"\nlevel = 3\n',
        )
        assert load_task(path).group == group


def test_task_error_pickles() -> None:
    err = TaskError("/x/t.py", "bad thing", "do this", line=3)
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, TaskError)
    assert (back.path, back.problem, back.hint, back.line) == ("/x/t.py", "bad thing", "do this", 3)
    assert str(back) == str(err)


# --------------------------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------------------------


def test_sizes_for_merges_without_mutating() -> None:
    task = load_task(GOOD / "softmax.py")
    assert task.sizes_for({"DIM": 8}) == {"BATCH": 8, "DIM": 8}
    assert task.sizes_for(None) == {"BATCH": 8, "DIM": 64}
    assert task.sizes == {"BATCH": 8, "DIM": 64}
    assert task.resolved_size_sets() == [{"BATCH": 2, "DIM": 16}, {"BATCH": 8, "DIM": 32}]


@pytest.mark.parametrize("overrides", [{"DIMM": 8}, {"DIM": 2.0}, {"DIM": True}, {"DIM": "8"}, {"DIM": -1}])
def test_sizes_for_rejects_bad_overrides(overrides: dict) -> None:
    task = load_task(GOOD / "softmax.py")
    with pytest.raises(TaskError):
        task.sizes_for(overrides)
    with pytest.raises(TaskError):
        instantiate(task, overrides)


def test_instantiate_overrides_sizes_seen_at_call_time_and_import_time() -> None:
    task = load_task(GOOD / "linear_gelu.py")
    inst = instantiate(task, {"BATCH": 3, "IN_FEATURES": 8})
    assert inst.sizes == {"BATCH": 3, "IN_FEATURES": 8}
    # get_inputs reads the constants when called
    assert inst.inputs[0].shape == (3, 8)
    # OUT_FEATURES = 2 * IN_FEATURES is computed at import time from the overridden literal
    assert inst.model.linear.weight.shape == (16, 8)
    assert inst.namespace["OUT_FEATURES"] == 16
    # the task itself (and later default instances) are unaffected
    assert instantiate(task).inputs[0].shape == (4, 32)
    assert task.sizes == {"BATCH": 4, "IN_FEATURES": 32}


def test_instantiate_chained_assignment(tmp_path: Path) -> None:
    path = write_task(tmp_path, "chain", "A = B = 4", "return xs[0]", "return [torch.randn(A, B)]")
    task = load_task(path)
    assert task.sizes == {"A": 4, "B": 4}
    assert instantiate(task, {"A": 2}).inputs[0].shape == (2, 4)
    assert instantiate(task, {"A": 3, "B": 3}).inputs[0].shape == (3, 3)


def test_instance_model_is_in_eval_mode() -> None:
    inst = instantiate(load_task(GOOD / "linear_gelu.py"))
    assert isinstance(inst, Instance)
    assert not inst.model.training
    assert all(not m.training for m in inst.model.modules())


# --------------------------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------------------------


def _state(inst: Instance) -> list[torch.Tensor]:
    return [v.clone() for v in inst.model.state_dict().values()]


def test_same_seed_same_weights_and_inputs() -> None:
    task = load_task(GOOD / "linear_gelu.py")
    a, b = instantiate(task, seed=7), instantiate(task, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a.inputs, b.inputs, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(_state(a), _state(b), strict=True))


def test_different_seed_different_weights_and_inputs() -> None:
    task = load_task(GOOD / "linear_gelu.py")
    a, b = instantiate(task, seed=0), instantiate(task, seed=1)
    assert not torch.equal(a.inputs[0], b.inputs[0])
    assert not torch.equal(a.model.linear.weight, b.model.linear.weight)


def test_weights_and_inputs_use_different_streams() -> None:
    # rmsnorm draws randn(HIDDEN) in __init__ and randn(B, S, HIDDEN) in get_inputs
    inst = instantiate(load_task(GOOD / "rmsnorm.py"), {"BATCH": 1, "SEQ": 1})
    perturbation = (inst.model.weight.detach() - 1.0) / 0.1
    assert not torch.allclose(perturbation, inst.inputs[0].flatten(), atol=1e-4)


def test_instantiate_does_not_disturb_global_rng() -> None:
    task = load_task(GOOD / "softmax.py")
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    instantiate(task, seed=5)
    make_inputs(task, seed=5, distribution="normal")
    assert torch.equal(torch.rand(4), expected)


def test_derive_seed_is_stable() -> None:
    assert derive_seed(0, "inputs") == derive_seed(0, "inputs")
    assert derive_seed(0, "inputs") != derive_seed(1, "inputs")
    assert derive_seed(0, "inputs") != derive_seed(0, "weights")
    assert 0 <= derive_seed(2**70, "x") < 2**63


# --------------------------------------------------------------------------------------------
# task code failures
# --------------------------------------------------------------------------------------------


def test_exception_in_task_code_becomes_task_error_with_line() -> None:
    task = load_task(BROKEN / "raises_in_init.py")
    with pytest.raises(TaskError) as info:
        instantiate(task)
    assert info.value.line == 10
    assert Path(info.value.path).name == "raises_in_init.py"


def test_exception_at_import_becomes_task_error(tmp_path: Path) -> None:
    path = write_task(tmp_path, "imp", "N = 4\nBOOM = 1 // 0", "return xs[0]", "return [torch.randn(N)]")
    with pytest.raises(TaskError) as info:
        instantiate(load_task(path))
    assert info.value.line == 5


# (a number is accepted, bound into the model: test_kernelbench_published.py)
@pytest.mark.parametrize("inputs", ["return torch.randn(3)", "return [torch.randn(3), 'two']", "return [2]"])
def test_get_inputs_must_return_list_of_tensors(tmp_path: Path, inputs: str) -> None:
    path = write_task(tmp_path, "bad_inputs", "", "return xs[0]", inputs)
    with pytest.raises(TaskError):
        instantiate(load_task(path))


# --------------------------------------------------------------------------------------------
# input distributions
# --------------------------------------------------------------------------------------------


def test_normal_distribution_reproduces_instantiate_inputs() -> None:
    task = load_task(GOOD / "masked_gather.py")
    inst = instantiate(task, seed=3)
    for source in (inst, task):
        again = make_inputs(source, inst.sizes if source is task else None, seed=3, distribution="normal")
        assert all(torch.equal(a, b) for a, b in zip(again, inst.inputs, strict=True))


def test_distributions_preserve_shape_dtype_and_integer_inputs() -> None:
    inst = instantiate(load_task(GOOD / "masked_gather.py"), seed=0)
    base = make_inputs(inst, seed=0, distribution="normal")
    floats = {}
    for dist in DISTRIBUTIONS:
        xs = make_inputs(inst, seed=0, distribution=dist)
        assert [(x.shape, x.dtype) for x in xs] == [(x.shape, x.dtype) for x in base]
        assert torch.equal(xs[1], base[1])  # int64 indices kept
        assert torch.equal(xs[2], base[2])  # bool mask kept
        floats[dist] = (xs[0].float(), xs[3])
    for a in DISTRIBUTIONS:
        for b in DISTRIBUTIONS:
            if a < b:
                assert not torch.equal(floats[a][0], floats[b][0])
                assert not torch.equal(floats[a][1], floats[b][1])


def test_distributions_are_reproducible_and_seeded() -> None:
    task = load_task(GOOD / "softmax.py")
    for dist in DISTRIBUTIONS:
        a = make_inputs(task, seed=11, distribution=dist)[0]
        b = make_inputs(task, seed=11, distribution=dist)[0]
        c = make_inputs(task, seed=12, distribution=dist)[0]
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_uniform_range() -> None:
    x = make_inputs(load_task(GOOD / "softmax.py"), {"BATCH": 64}, seed=0, distribution="uniform")[0]
    assert x.min() >= -1 and x.max() <= 1
    assert x.min() < -0.9 and x.max() > 0.9


def test_heavy_distribution_is_heavy_tailed() -> None:
    task = load_task(GOOD / "softmax.py")
    sizes = {"BATCH": 64, "DIM": 64}
    heavy = make_inputs(task, sizes, seed=0, distribution="heavy")[0]
    normal = make_inputs(task, sizes, seed=0, distribution="normal")[0]
    assert abs(kurtosis(normal)) < 0.5
    assert kurtosis(heavy) > 10
    assert heavy.abs().max() <= 1e4
    assert torch.isfinite(heavy).all()


def test_mixed_scale_varies_per_row() -> None:
    x = make_inputs(load_task(GOOD / "softmax.py"), {"BATCH": 64, "DIM": 64}, seed=0, distribution="mixed_scale")[0]
    row_scale = x.abs().amax(dim=-1)
    assert row_scale.max() / row_scale.min() > 1e3  # rows span several decades
    assert torch.isfinite(x).all()


def test_last_max_puts_each_rows_maximum_last_and_far_above() -> None:
    x = make_inputs(load_task(GOOD / "softmax.py"), {"BATCH": 16, "DIM": 96}, seed=0, distribution="last_max")[0]
    assert torch.equal(x.argmax(dim=-1), torch.full((16,), 95))
    rest = x[:, :-1].amax(dim=-1)
    assert ((x[:, -1] - rest) >= 99.9).all()  # past exp's f32 range above everything else in the row


def test_offset_shifts_rows_far_past_exps_range() -> None:
    x = make_inputs(load_task(GOOD / "softmax.py"), {"BATCH": 64, "DIM": 64}, seed=0, distribution="offset")[0]
    centre = x.mean(dim=-1)
    assert centre.abs().max() > 1000 and centre.abs().max() <= 1e4 + 10
    assert (x - centre[:, None]).abs().max() < 10  # the row's own spread is kept
    assert torch.isfinite(x).all()


def test_near_ties_are_distinct_within_a_few_hundred_ulps() -> None:
    x = make_inputs(load_task(GOOD / "softmax.py"), {"BATCH": 8, "DIM": 64}, seed=0, distribution="near_ties")[0]
    for row in x:
        assert row.unique().numel() == row.numel()  # a unique maximum: the argmax is well defined
        ulp = (torch.nextafter(row.max(), torch.tensor(math.inf)) - row.max()).item()
        assert (row.max() - row.min()).item() <= 64 * ulp * 2


def test_zeros_has_exact_zeros_among_normal_values() -> None:
    x = make_inputs(load_task(GOOD / "softmax.py"), {"BATCH": 64, "DIM": 64}, seed=0, distribution="zeros")[0]
    frac = (x == 0).float().mean().item()
    assert 0.2 < frac < 0.3
    assert x.abs().max() > 1


def test_unknown_distribution_is_value_error() -> None:
    with pytest.raises(ValueError):
        make_inputs(load_task(GOOD / "softmax.py"), distribution="cauchy")


@pytest.fixture(scope="module")
def dtype_tasks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Task]:
    folder = tmp_path_factory.mktemp("dtype_tasks")
    tasks = {}
    for dtype in ("float32", "bfloat16", "float16", "float64"):
        path = write_task(
            folder, f"t_{dtype}", "BATCH = 2\nDIM = 3", "return xs[0] * 2",
            f"return [torch.randn(BATCH, DIM, dtype=torch.{dtype}), torch.randint(0, 9, (BATCH,))]",
        )
        tasks[dtype] = load_task(path)
    return tasks


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 5),
    dim=st.integers(1, 9),
    seed=st.integers(0, 2**40),
    dist=st.sampled_from(DISTRIBUTIONS),
    dtype=st.sampled_from(["float32", "bfloat16", "float16", "float64"]),
)
def test_make_inputs_shapes_follow_sizes(
    dtype_tasks: dict[str, Task], batch: int, dim: int, seed: int, dist: str, dtype: str
) -> None:
    xs = make_inputs(dtype_tasks[dtype], {"BATCH": batch, "DIM": dim}, seed=seed, distribution=dist)
    assert xs[0].shape == (batch, dim)
    assert xs[0].dtype == getattr(torch, dtype)
    assert torch.isfinite(xs[0]).all()
    assert xs[1].shape == (batch,) and xs[1].dtype == torch.int64


@pytest.mark.parametrize("value, expected", [('"2/EXPERTS"', 0.25), ("0.5", 0.5)])
def test_sidecar_roofline_active_fraction_is_k_of_a_size_or_a_share(tmp_path: Path, value: str, expected: float) -> None:
    path = write_task(tmp_path, "moe", "EXPERTS = 8", "return xs[0]", "return [torch.randn(EXPERTS)]",
                      f"[roofline]\nactive_fraction = {value}\n")
    task = load_task(path)
    assert task.work_fraction() == pytest.approx(expected)
    if "EXPERTS" in value:
        assert task.work_fraction({"EXPERTS": 4}) == pytest.approx(0.5)


@pytest.mark.parametrize("value, message", [
    ('"2/HEADS"', "not a size of the task"),
    ('"__import__(1)"', "is not K/SIZE"),
    ("1.5", "must be in (0, 1]"),
    ("0", "must be in (0, 1]"),
])
def test_sidecar_roofline_active_fraction_is_validated_never_evaluated(tmp_path: Path, value: str, message: str) -> None:
    path = write_task(tmp_path, "moe", "EXPERTS = 8", "return xs[0]", "return [torch.randn(EXPERTS)]",
                      f"[roofline]\nactive_fraction = {value}\n")
    with pytest.raises(TaskError, match=re.escape(message)):
        load_task(path)
