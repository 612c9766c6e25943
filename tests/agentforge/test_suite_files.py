"""Static and runtime checks for the bundled task suite in ``evals/suite``.

Each task is ``<name>.py`` (KernelBench layout: module-level int sizes, ``Model``, ``get_inputs``,
``get_init_inputs``) plus a ``<name>.toml`` sidecar (``[task]`` tags, optional ``[tolerance]``,
``[[sizes]]`` small size sets). These tests rely on no project code: tasks are loaded with importlib,
and re-executed with small sizes by rewriting the module-level ``NAME = <int>`` assignments via ``ast``,
exactly the way the evaluator overrides sizes. See ``evals/README.md`` for the format.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import tomllib
import types
from pathlib import Path

import pytest
import torch

SUITE_DIR = Path(__file__).resolve().parents[2] / "evals" / "suite"
TASKS = sorted(p.stem for p in SUITE_DIR.glob("*.py"))

GROUPS = {
    "attention", "gemm", "bmm", "norm", "rope", "moe_index", "moe_expert", "moe",
    "activation", "reduction", "softmax", "cumsum", "loss", "elementwise", "layer",
}
BENCHMARK_GROUPS = {"attention", "gemm", "bmm", "norm", "rope", "moe_index", "moe_expert", "moe"}
LEVELS = {1, 2, 3}
TOP_LEVEL_KEYS = {"task", "tolerance", "sizes", "roofline"}
ROOFLINE_KEYS = {"active_fraction"}
TASK_KEYS = {"group", "level", "description"}
OPTIONAL_TASK_KEYS = {"distributions"}
TOLERANCE_KEYS = {"atol", "rtol"}
MAX_SMALL_NUMEL = 1 << 20  # every tensor at a small size set stays under ~1M elements

# torch.export internals emit this deprecation on every export in torch 2.13; it is not ours
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


def _is_pow2(v: int) -> bool:
    return v > 0 and (v & (v - 1)) == 0


def _source(name: str) -> str:
    return (SUITE_DIR / f"{name}.py").read_text()


def _sidecar(name: str) -> dict:
    with open(SUITE_DIR / f"{name}.toml", "rb") as f:
        return tomllib.load(f)


def _module_sizes(tree: ast.Module) -> dict[str, int]:
    """Module-level ``NAME = <int literal>`` assignments (the task's own sizes)."""
    sizes = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and type(node.value.value) is int
        ):
            sizes[node.targets[0].id] = node.value.value
    return sizes


def _load_with_sizes(name: str, overrides: dict[str, int]) -> types.ModuleType:
    """Exec the task source into a fresh module with module-level int constants replaced."""
    path = SUITE_DIR / f"{name}.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    seen = set()
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in overrides
        ):
            node.value = ast.copy_location(ast.Constant(overrides[node.targets[0].id]), node.value)
            seen.add(node.targets[0].id)
    assert seen == set(overrides), f"{name}: size overrides not found in module: {set(overrides) - seen}"
    ast.fix_missing_locations(tree)
    module = types.ModuleType(f"evals_suite_{name}")
    module.__file__ = str(path)
    exec(compile(tree, str(path), "exec"), module.__dict__)
    return module


def _flat_tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _flat_tensors(o)]
    raise TypeError(f"unexpected output type {type(obj)!r}")


def _build(module: types.ModuleType):
    torch.manual_seed(0)
    model = module.Model(*module.get_init_inputs()).eval()
    inputs = list(module.get_inputs())
    return model, inputs


def _check_small_run(name: str, model, inputs) -> None:
    for t in itertools.chain(inputs, model.parameters(), model.buffers()):
        assert isinstance(t, torch.Tensor)
        assert t.numel() <= MAX_SMALL_NUMEL, f"{name}: tensor {tuple(t.shape)} too large for a small size set"
    with torch.no_grad():
        out1 = _flat_tensors(model(*inputs))
        out2 = _flat_tensors(model(*inputs))
    assert out1, f"{name}: forward returned no tensors"
    for a, b in zip(out1, out2, strict=True):
        assert a.numel() <= MAX_SMALL_NUMEL
        assert torch.isfinite(a).all(), f"{name}: non-finite output"
        assert torch.equal(a, b), f"{name}: forward is not deterministic"


# ----------------------------------------------------------------------------------------------
# suite-level checks


def test_suite_inventory():
    assert len(TASKS) >= 40, f"only {len(TASKS)} tasks"
    tomls = sorted(p.stem for p in SUITE_DIR.glob("*.toml"))
    assert tomls == TASKS, "every task needs exactly one .py and one .toml"
    groups = {_sidecar(n)["task"]["group"] for n in TASKS}
    assert BENCHMARK_GROUPS <= groups, f"missing benchmark groups: {BENCHMARK_GROUPS - groups}"
    assert groups <= GROUPS
    levels = {_sidecar(n)["task"]["level"] for n in TASKS}
    assert levels == LEVELS


def test_readme_lists_every_task():
    readme = (SUITE_DIR.parent / "README.md").read_text()
    missing = [n for n in TASKS if f"`{n}`" not in readme]
    assert not missing, f"evals/README.md task table is missing: {missing}"


# ----------------------------------------------------------------------------------------------
# per-task static checks


@pytest.mark.parametrize("name", TASKS)
def test_task_structure(name: str):
    tree = ast.parse(_source(name))
    for i, node in enumerate(tree.body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # module docstring
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)):
            continue
        # the only other module-level statements allowed are plain int size constants, so that
        # rewriting them can never leave a stale derived size behind
        assert isinstance(node, ast.Assign), f"{name}: unexpected module-level statement line {node.lineno}"
        assert len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), f"{name}: line {node.lineno}"
        target = node.targets[0].id
        assert target.isupper(), f"{name}: module-level {target} must be an UPPER_CASE size"
        assert isinstance(node.value, ast.Constant) and type(node.value.value) is int, (
            f"{name}: {target} must be a plain int literal (compute derived sizes inside functions)"
        )
    own = _module_sizes(tree)
    assert own, f"{name}: no module-level size constants"
    for k, v in own.items():
        assert v % 64 == 0 or _is_pow2(v), f"{name}: own size {k}={v} should be a multiple of 64 or a power of two"

    spec = importlib.util.spec_from_file_location(f"evals_suite_own_{name}", SUITE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # own sizes: only defines things, allocates nothing
    assert isinstance(module.Model, type) and issubclass(module.Model, torch.nn.Module)
    assert callable(module.get_inputs) and callable(module.get_init_inputs)
    assert {k: getattr(module, k) for k in own} == own


@pytest.mark.parametrize("name", TASKS)
def test_sidecar(name: str):
    meta = _sidecar(name)
    assert set(meta) <= TOP_LEVEL_KEYS, f"{name}: unknown top-level keys {set(meta) - TOP_LEVEL_KEYS}"
    task = meta["task"]
    assert TASK_KEYS <= set(task) <= TASK_KEYS | OPTIONAL_TASK_KEYS, \
        f"{name}: [task] must have {TASK_KEYS} and at most {OPTIONAL_TASK_KEYS} besides"
    assert set(task.get("distributions", [])) <= {"large"}
    assert task["group"] in GROUPS
    assert type(task["level"]) is int and task["level"] in LEVELS
    assert isinstance(task["description"], str) and task["description"].strip()
    roofline = meta.get("roofline", {})
    assert set(roofline) <= ROOFLINE_KEYS, f"{name}: [roofline] keys {set(roofline) - ROOFLINE_KEYS}"
    if "active_fraction" in roofline:
        k, _, size = roofline["active_fraction"].partition("/")
        assert k.isdigit() and int(k) > 0 and size in _module_sizes(ast.parse(_source(name))), \
            f"{name}: active_fraction must be 'K/SIZE' with SIZE a module-level size"
    tol = meta.get("tolerance", {})
    assert set(tol) <= TOLERANCE_KEYS
    for k, v in tol.items():
        assert isinstance(v, float) and 0.0 <= v < 1.0, f"{name}: tolerance.{k}={v!r}"

    own = _module_sizes(ast.parse(_source(name)))
    size_sets = meta["sizes"]
    assert isinstance(size_sets, list) and len(size_sets) >= 2, f"{name}: need >= 2 [[sizes]] sets"
    merged = []
    for s in size_sets:
        assert s and set(s) <= set(own), f"{name}: size set keys {set(s) - set(own)} not module-level ints"
        for k, v in s.items():
            assert type(v) is int and v > 0, f"{name}: {k}={v!r}"
            assert v % 8 == 0 or _is_pow2(v), f"{name}: small size {k}={v} should be a multiple of 8 or a power of 2"
        merged.append(tuple(sorted({**own, **s}.items())))
    assert len(set(merged)) == len(merged), f"{name}: size sets must differ from each other"


@pytest.mark.parametrize("name", TASKS)
def test_own_sizes_are_shape_consistent(name: str):
    """Build and run the task at its own (large) sizes on the meta device: shapes only, no memory."""
    module = _load_with_sizes(name, {})
    with torch.device("meta"), torch.no_grad():
        model = module.Model(*module.get_init_inputs())
        inputs = list(module.get_inputs())
        outputs = _flat_tensors(model(*inputs))
    assert inputs and outputs
    assert all(t.is_floating_point() or t.dtype in (torch.int64, torch.bool) for t in inputs)


# ----------------------------------------------------------------------------------------------
# per-task runtime checks at the small size sets


@pytest.mark.parametrize("name", TASKS)
def test_task_runs_and_exports(name: str):
    size_sets = _sidecar(name)["sizes"]

    # second size set: eager forward only (cheap)
    model, inputs = _build(_load_with_sizes(name, size_sets[1]))
    _check_small_run(name, model, inputs)
    shapes_second = [tuple(t.shape) for t in inputs]

    # first size set: eager forward, then torch.export + decompositions
    model, inputs = _build(_load_with_sizes(name, size_sets[0]))
    _check_small_run(name, model, inputs)
    assert [tuple(t.shape) for t in inputs] != shapes_second, f"{name}: size sets give identical input shapes"

    exported = torch.export.export(model, tuple(inputs))
    decomposed = exported.run_decompositions()
    targets = {n.target for n in decomposed.graph.nodes if n.op == "call_function"}
    assert targets, f"{name}: empty exported graph"

    with torch.no_grad():
        expected = _flat_tensors(model(*inputs))
        got = _flat_tensors(decomposed.module()(*inputs))
    for e, g in zip(expected, got, strict=True):
        assert e.dtype == g.dtype and e.shape == g.shape
        if e.is_floating_point():
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)
        else:
            assert torch.equal(g, e)
