"""``agentforge campaign --from-model SPEC``: a model's own regions become a suite, the campaign
solves it, and the library it writes covers the model. On a tiny decoder-style LM written as
Hugging Face writes one (fixtures/torch_models/tiny_lm.py): the compiled logits stay within 1e-4
of eager, at least 90% of the forward's FLOPs run on the generated kernels, the kernels' answers
are what the model returns (a poisoned kernel changes the logits), and every layer shares its
tasks (dedupe by program)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from agentforge.cli import main
from agentforge.torch.backend import compiled_graphs
from agentforge.torch.from_model import ModelSpecError, load_model_spec, model_tasks

ROOT = Path(__file__).resolve().parents[2]
SPEC = f"{ROOT / 'tests' / 'agentforge' / 'fixtures' / 'torch_models' / 'tiny_lm.py'}:tiny_lm"
VIEWS = frozenset({"view", "permute", "expand", "getitem", "clone", "alias", "detach"})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("from_model") / "run"
    assert main(["campaign", "--from-model", SPEC, "--out", str(out), "--quiet", "--workers", "2"]) == 0
    return out


def _shares(graphs) -> tuple[float, float]:
    from agentforge.capture import node_flops, operand_specs

    ops = off = flops = off_flops = 0
    for c in graphs:
        covered = set().union(*(r.nodes for r in c.plan.regions)) if c.plan.regions else set()
        specs = c.plan.graph.spec_table
        for n in c.plan.graph.nodes:
            if n.kind in VIEWS:
                continue
            f = node_flops(n, operand_specs(specs, n))
            ops, flops = ops + 1, flops + f
            if n.name in covered:
                off, off_flops = off + 1, off_flops + f
    return off / ops, off_flops / flops


def test_tasks_are_the_models_regions_deduplicated():
    tasks = model_tasks(load_model_spec(SPEC))
    # a factory's model is captured at its example inputs only: prompt ranges change nothing
    assert [t.source for t in model_tasks(load_model_spec(SPEC), prompt_ranges=True)] == [t.source for t in tasks]
    occurrences = sum(len(t.occurrences) for t in tasks)
    assert occurrences > len(tasks)          # both blocks' regions share their tasks
    mm = [t for t in tasks if "mm" in t.kinds]
    # each block's projections are the same programs as the other block's (however the author's
    # partitioner fuses their epilogues): every projection task occurs at least twice but the LM head's
    counts = sorted(len(t.occurrences) for t in mm)
    assert len(counts) >= 2 and all(c >= 2 for c in counts[1:])
    for t in tasks:
        assert "torch.ops.aten." in t.source and "def get_inputs" in t.source


@pytest.mark.slow
def test_campaign_from_model_covers_the_model(run, monkeypatch):
    index = json.loads((run / "suite" / "index.json").read_text())
    assert index["tasks"] and (run / "library").is_dir()
    model, inputs = load_model_spec(SPEC).module, load_model_spec(SPEC).example_inputs
    torch._dynamo.reset()
    before = {id(c) for c in compiled_graphs()}
    with torch.no_grad():
        out = torch.compile(model, backend="agentforge", dynamic=False, options={"library": str(run / "library")})(*inputs)
        ref = model(*inputs)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    graphs = [c for c in compiled_graphs() if id(c) not in before]
    assert graphs and all(c.error is None for c in graphs)
    ops_share, flops_share = _shares(graphs)
    print(f"\n[tiny_lm from-model] non-view ops on kernels {ops_share:.0%}, FLOPs {flops_share:.1%}")
    assert flops_share >= 0.9 and ops_share >= 0.8

    from agentforge.torch.ops import OpFamily

    real = OpFamily._run
    monkeypatch.setattr(OpFamily, "_run", lambda self, v, args: [torch.full_like(o, 7) for o in real(self, v, args)])
    torch._dynamo.reset()
    with torch.no_grad():
        bad = torch.compile(model, backend="agentforge", dynamic=False, options={"library": str(run / "library")})(*inputs)
    assert not torch.allclose(bad, ref, atol=1e-2, rtol=1e-2)
    torch._dynamo.reset()


def test_a_bad_spec_says_what_to_fix(tmp_path, capsys):
    assert main(["campaign", "--from-model", str(tmp_path / "nope.py") + ":f", "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(ModelSpecError, match="file.py:factory"):
        load_model_spec("model.onnx")
    (tmp_path / "m.py").write_text("def f():\n    return 3\n")
    with pytest.raises(ModelSpecError, match="not an nn.Module"):
        load_model_spec(f"{tmp_path / 'm.py'}:f")


BRANCHY = f"{ROOT / 'tests' / 'agentforge' / 'fixtures' / 'torch_models' / 'branchy.py'}:branchy"


def test_a_model_with_data_dependent_control_flow_is_captured_in_the_pieces_dynamo_splits_it_into(tmp_path,
                                                                                                monkeypatch):
    """``if h.mean() > 0:`` stops torch.export; the model's tasks come from the graphs dynamo hands
    the backend (split at the branch), and with their library every graph of the compiled model
    runs its matmuls on the kernels: output equal to eager, a poisoned kernel changes it."""
    from agentforge.torch._build import build_library
    from agentforge.torch.from_model import write_suite
    from agentforge.torch.match import ModelCaptureError, export_graph
    from agentforge.torch.ops import OpFamily

    m = load_model_spec(BRANCHY)
    with pytest.raises(ModelCaptureError):
        export_graph(m.module, m.example_inputs)
    notes: list[str] = []
    tasks = model_tasks(m, notes=notes)
    assert not notes
    pieces = {o.split(": ", 1)[1].split("/", 1)[0] for t in tasks for o in t.occurrences}
    assert pieces == {"g1", "g2"}                                   # before and after the branch
    assert {k for t in tasks for k in t.kinds} >= {"mm", "sigmoid", "mean", "gt"}
    suite = write_suite(tasks, tmp_path / "suite", m.name)
    lib = tmp_path / "library"
    build_library([suite / f"{t.name}.py" for t in tasks if "mm" in t.kinds], lib)
    x = m.example_inputs[0]
    before = {id(c) for c in compiled_graphs()}
    torch._dynamo.reset()
    with torch.no_grad():
        ref = m.module(x)
        got = torch.compile(m.module, backend="agentforge", options={"library": str(lib)})(x)
        graphs = [c for c in compiled_graphs() if id(c) not in before]
        assert len(graphs) >= 2 and all(c.plan is not None and c.plan.regions for c in graphs)
        assert torch.allclose(got, ref, atol=1e-5)
        real = OpFamily._run
        monkeypatch.setattr(OpFamily, "_run", lambda self, v, args: [torch.full_like(o, 7) for o in real(self, v, args)])
        torch._dynamo.reset()
        poisoned = torch.compile(m.module, backend="agentforge", options={"library": str(lib)})(x)
    assert not torch.allclose(poisoned, ref)
    torch._dynamo.reset()
