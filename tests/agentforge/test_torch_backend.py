"""torch.compile(model, backend="agentforge"): library kernels run the subgraphs they were
verified for (fused attention, MLP, norms, residual add + norm, a whole MoE layer), the rest runs eagerly, outputs
match eager PyTorch, and the report says what was offloaded, what was not and why, and the
simulated chip time against the same model op by op. A failure inside the backend never
breaks the model (strict mode raises)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from agentforge.torch import TorchBridgeError, UnverifiedProblemError
from agentforge.torch.backend import BackendConfig, compiled_graphs
from agentforge.torch.report import load_model_file, report

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "agentforge" / "fixtures"
@pytest.fixture(scope="module")
def lib(torch_library) -> str:
    """The small-task library of tests/conftest.py, shared with test_torch_ops.py."""
    return str(torch_library)


def _compile(model, lib, **extra):
    return torch.compile(model, backend="agentforge", dynamic=False, options={"library": lib, **extra})


@pytest.fixture
def ran(monkeypatch):
    """(op, task sizes) of every library kernel run on the emulator, in order (what was offloaded)."""
    from agentforge.torch.ops import OpFamily

    calls: list[tuple[str, dict]] = []
    real = OpFamily._run

    def spy(self, v, args):
        calls.append((self.op, dict(v.sizes)))
        return real(self, v, args)

    monkeypatch.setattr(OpFamily, "_run", spy)
    return calls


@pytest.fixture
def poisoned(monkeypatch):
    """Every library kernel answers 7 everywhere (a deliberately wrong kernel): where a region is
    offloaded, the model's output must change; if it does not, PyTorch recomputed the region."""
    from agentforge.torch.ops import OpFamily

    real = OpFamily._run

    def sevens(self, v, args):
        return [torch.full_like(o, 7) for o in real(self, v, args)]

    monkeypatch.setattr(OpFamily, "_run", sevens)


def _agentforge_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "agentforge" in str(w.message)]


@pytest.fixture(scope="module")
def llama(lib):
    model, inputs = load_model_file(FIX / "torch_models" / "llama_block.py")
    return model, inputs, report(model, inputs, library=lib)


@pytest.fixture(scope="module")
def moe(lib):
    model, inputs = load_model_file(FIX / "torch_models" / "moe_block.py")
    return model, inputs, report(model, inputs, library=lib)


def test_decoder_block_compiled_matches_eager_with_fused_kernels(lib, llama):
    model, inputs, _ = llama
    torch._dynamo.reset()
    with torch.no_grad():
        out = _compile(model, lib)(*inputs)
        ref = model(*inputs)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    c = compiled_graphs()[-1]
    assert c.error is None and c.calls == 1
    assert sorted(r.family.op for r in c.plan.regions) == [
        "add_rmsnorm_small", "causal_attention_small", "rmsnorm_small", "swiglu_mlp_small"]
    # norm + residual: `x = x + o_proj(attn)` and post_norm(x) are one call; x is also read by the
    # last residual add, so the call hands back both of its outputs (normed, h) to the model
    fused = next(r for r in c.plan.regions if r.family.op == "add_rmsnorm_small")
    assert sorted(set(fused.outputs.values())) == [0, 1]


def test_decoder_block_report_names_fused_kernels_and_beats_op_by_op(llama):
    r = llama[2]
    assert {"torch.ops.rdu.causal_attention_small", "torch.ops.rdu.swiglu_mlp_small",
            "torch.ops.rdu.rmsnorm_small", "torch.ops.rdu.add_rmsnorm_small"} <= set(r.offloaded_ops)
    norm_res = next(x for x in r.regions if x.op.endswith("add_rmsnorm_small"))
    assert norm_res.ops == 7 and norm_res.speedup > 1.0     # residual add + the whole RMSNorm
    attn = next(x for x in r.regions if x.op.endswith("causal_attention_small"))
    assert attn.kind == "plan" and attn.ops > 10           # one call covers the whole attention subgraph
    assert r.chip_seconds > 0 and r.op_by_op_seconds > r.chip_seconds and r.speedup > 1.0
    assert any(e.kind == "cat" for e in r.eager)            # RoPE is not in the library: it runs eagerly
    text = str(r)
    assert "causal_attention_small" in text and "add_rmsnorm_small" in text and "op by op" in text
    assert "ran eagerly" in text


def test_decoder_block_backward_through_the_backend_matches_eager(lib, llama, ran):
    model, inputs, _ = llama
    torch._dynamo.reset()
    x = inputs[0].clone().requires_grad_()
    _compile(model, lib)(x, *inputs[1:]).sum().backward()
    c = compiled_graphs()[-1]                # the forward ran offloaded (not the eager fallback)
    assert c.error is None and c.calls == 1
    fused = ["add_rmsnorm_small", "causal_attention_small", "rmsnorm_small", "swiglu_mlp_small"]
    assert sorted(r.family.op for r in c.plan.regions) == fused
    assert sorted(op for op, _ in ran) == fused
    x2 = inputs[0].clone().requires_grad_()
    model(x2, *inputs[1:]).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-4, rtol=1e-4)


def test_moe_layer_compiled_matches_eager_and_report_names_it(lib, moe, ran):
    model, inputs, r = moe
    torch._dynamo.reset()
    with torch.no_grad():
        out = _compile(model, lib)(*inputs)
        ref = model(*inputs)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    c = compiled_graphs()[-1]                # offloaded, not the eager fallback
    assert c.error is None and c.calls == 1
    assert sorted(r.family.op for r in c.plan.regions) == ["moe_layer_small", "rmsnorm_small"]
    assert sorted(op for op, _ in ran) == ["moe_layer_small", "rmsnorm_small"]
    assert {"torch.ops.rdu.moe_layer_small", "torch.ops.rdu.rmsnorm_small"} <= set(r.offloaded_ops)
    assert [e.kind for e in r.eager] == ["add"]              # only the residual runs eagerly
    assert r.speedup > 1.0


def _swiglu():
    import importlib.util

    spec = importlib.util.spec_from_file_location("swiglu_mlp_small", FIX / "torch_tasks" / "swiglu_mlp_small.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    return mod.Model(64, 128), torch.randn(1, 16, 64)


def test_a_region_run_on_a_generated_kernel_is_not_also_computed_by_pytorch(lib):
    model, x = _swiglu()
    torch._dynamo.reset()
    compiled = _compile(model, lib)
    with torch.no_grad():
        compiled(x)                                  # plan once, outside the profile
        with torch.profiler.profile() as prof:
            out = compiled(x)
    torch.testing.assert_close(out, model(x), atol=1e-4, rtol=1e-4)
    counts = {e.key: e.count for e in prof.key_averages()}
    assert counts.get("rdu::swiglu_mlp_small") == 1
    # the region's three projections (and its silu and product) ran on the kernel only
    assert not {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::sigmoid", "aten::mul"} & set(counts)


def _poison_cases():
    return {
        "swiglu": lambda: (lambda m, x: (m, [x]))(*_swiglu()),
        "llama_block": lambda: load_model_file(FIX / "torch_models" / "llama_block.py"),
        "moe_block": lambda: load_model_file(FIX / "torch_models" / "moe_block.py"),
        "add_rmsnorm": lambda: (_AddNorm(), [torch.randn(1, 16, 64), torch.randn(1, 16, 64)]),
        "partial": lambda: (_Partial(), [torch.randn(1, 16, 64)]),
        "softmax": lambda: (_Softmax(), [torch.randn(8, 64)]),
    }


@pytest.mark.parametrize("case", sorted(_poison_cases()))
def test_a_wrong_kernel_changes_the_compiled_output(lib, case, poisoned):
    """The comparisons of compiled with eager in this file can fail: with every kernel answering
    7s, each of their models gives another answer (eager recomputation would hide it)."""
    model, inputs = _poison_cases()[case]()
    torch._dynamo.reset()
    with torch.no_grad():
        out = _compile(model, lib)(*inputs)
        ref = model(*inputs)
    assert compiled_graphs()[-1].plan.regions, "nothing offloaded: the comparison would prove nothing"
    assert not torch.allclose(out, ref, atol=1e-2, rtol=1e-2)
    torch._dynamo.reset()


class _AddNorm(torch.nn.Module):
    """Residual add + RMSNorm; ``leak`` also returns the norm's rsqrt, an intermediate the
    add_rmsnorm_small kernel does not return."""

    def __init__(self, leak: bool = False):
        super().__init__()
        self.weight = torch.nn.Parameter(1.0 + 0.1 * torch.randn(64))
        self.leak = leak

    def forward(self, x, y):
        h = x + y
        r = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        out = h * r * self.weight
        return (out, r) if self.leak else out


def test_the_norm_residual_kernel_returns_normed_and_the_residual_stream_and_passes_opcheck(lib):
    from agentforge.torch import load_library

    tl = load_library(lib, namespace="rdu_addnorm")
    assert tl.families["add_rmsnorm_small"].schema() == \
        "(Tensor residual, Tensor update, Tensor p_weight) -> (Tensor, Tensor)"
    x, y, w = tl.sample_args("add_rmsnorm_small")
    normed, h = torch.ops.rdu_addnorm.add_rmsnorm_small(x, y, w)
    torch.testing.assert_close(h, x + y)
    torch.testing.assert_close(normed, (x + y) * torch.rsqrt((x + y).pow(2).mean(-1, keepdim=True) + 1e-6) * w,
                               atol=1e-5, rtol=1e-5)
    args = tuple(a.requires_grad_() for a in (x, y, w))
    assert set(torch.library.opcheck(tl.op("add_rmsnorm_small"), args).values()) == {"SUCCESS"}


def test_only_outputs_of_a_multi_output_kernel_may_leave_its_subgraph(lib):
    x, y = torch.randn(1, 16, 64), torch.randn(1, 16, 64)
    for leak in (False, True):
        model = _AddNorm(leak)
        torch._dynamo.reset()
        with torch.no_grad():
            torch.testing.assert_close(_compile(model, lib)(x, y), model(x, y), atol=1e-5, rtol=1e-5)
        c = compiled_graphs()[-1]
        assert c.error is None
        if not leak:     # h is not used elsewhere: one call, the model reads only its normed output
            assert [(r.family.op, sorted(r.outputs.values())) for r in c.plan.regions] == [("add_rmsnorm_small", [0])]
        else:            # rsqrt is not an output of either norm kernel: nothing is offloaded, and why is said
            assert c.plan.regions == []
            why = {e.kind: e.reason for e in c.plan.eager}
            assert "add_rmsnorm_small, but its intermediate" in why["add"] and "also used outside" in why["add"]


class _Partial(torch.nn.Module):
    """An RMSNorm the library has, a cumsum it lacks, and a softmax at a size it was not verified for."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(64))

    def forward(self, x):
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight
        return torch.softmax(torch.cumsum(h, dim=-1), dim=-1)


def test_a_model_with_ops_the_library_lacks_still_runs_and_the_report_says_why(lib):
    model, x = _Partial(), torch.randn(1, 16, 64)
    with torch.no_grad():
        torch.testing.assert_close(_compile(model, lib)(x), model(x), atol=1e-5, rtol=1e-5)
    r = report(model, [x], library=lib)
    assert r.offloaded_ops == ["torch.ops.rdu.rmsnorm_small"]
    why = {e.kind: e.reason for e in r.eager}
    assert "no library kernel computes it" in why["cumsum"]
    assert "not a verified problem" in why["softmax"] and "f32[1, 16, 64]" in why["softmax"]


class _Softmax(torch.nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1) * 2


def _symbolic(c) -> bool:
    return any(isinstance(n.meta.get("example_value"), torch.SymInt) for n in c.gm.graph.nodes if n.op == "placeholder")


def test_a_symbolic_size_graph_runs_each_call_on_the_kernel_verified_for_its_sizes(lib, ran):
    model = _Softmax()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="agentforge", options={"library": lib, "verbose": True})  # dynamic shapes
    for batch, dim in ((8, 64), (16, 128), (8, 64), (16, 128)):    # both verified size sets of softmax.toml
        x = torch.randn(batch, dim)
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            out = compiled(x)
        torch.testing.assert_close(out, model(x))
        assert _agentforge_warnings(caught) == []
        assert ran[-1] == ("softmax", {"BATCH": batch, "DIM": dim})            # this call's kernel ran
        c = compiled_graphs()[-1]
        assert c.error is None and [r.verified.sizes for r in c.plan.regions] == [{"BATCH": batch, "DIM": dim}]
    assert len(ran) == 4
    # the second size made dynamo recompile with symbolic sizes: that one graph served the last three
    # calls, planned once per concrete shape
    c = compiled_graphs()[-1]
    assert _symbolic(c) and c.calls == 3
    assert {next(k[1] for k in s.key if k[0] == "tensor"): s.calls for s in c.specializations.values()} == {
        (16, 128): 2, (8, 64): 1}

    # a size no kernel is verified for: eager, with a warning naming the op and the verified sizes
    x = torch.randn(3, 7)
    with pytest.warns(UserWarning, match=r"torch\.ops\.rdu\.softmax matches .* at arguments \(f32\[3, 7\]\), but no "
                                         r"kernel is verified .*verified problems: \(f32\[8, 64\]\); \(f32\[16, 128\]\)"
                                         r".*running those ops eagerly"), torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    assert len(ran) == 4 and compiled_graphs()[-1].plan.regions == []
    with torch.no_grad():                    # and the verified sizes still run their kernels
        compiled(torch.randn(16, 128))
    assert ran[-1] == ("softmax", {"BATCH": 16, "DIM": 128})

    # without verbose: no warning, one summary per graph says it
    torch._dynamo.reset()
    quiet = torch.compile(model, backend="agentforge", dynamic=False, options={"library": lib})
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        torch.testing.assert_close(quiet(x), model(x))
    assert _agentforge_warnings(caught) == []
    summary = compiled_graphs()[-1].summary
    assert "graph at ([3, 7])" in summary and "0 of 2 ops (not counting views) on library kernels" in summary
    assert "1 match torch.ops.rdu.softmax at sizes no kernel is verified for: softmax" in summary

    # strict: refused, naming what exists
    torch._dynamo.reset()
    strict = torch.compile(model, backend="agentforge", options={"library": lib, "strict": True})
    with torch.no_grad():
        strict(torch.randn(8, 64))
        with pytest.raises(UnverifiedProblemError, match=r"f32\[3, 7\].*verified problems: \(f32\[8, 64\]\)"):
            strict(torch.randn(3, 7))
    torch._dynamo.reset()


def test_with_verify_new_sizes_the_backend_checks_a_new_size_and_offloads_it(lib, ran):
    model, x = _Softmax(), torch.randn(4, 32)
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend="agentforge", dynamic=False,
                            options={"library": lib, "namespace": "rdu_backend_new", "verify_new_sizes": True})(x)
    torch.testing.assert_close(out, model(x))
    (region,) = compiled_graphs()[-1].plan.regions
    assert region.verified.how == "on first use" and region.verified.sizes == {"BATCH": 4, "DIM": 32}
    assert ran == [("softmax", {"BATCH": 4, "DIM": 32})]
    torch._dynamo.reset()


def test_a_failure_at_one_size_leaves_the_other_sizes_offloaded(lib, ran, monkeypatch):
    import agentforge.torch.match as match

    real = match.plan_offload

    def broken_at_16(tl, ep, graph, *rest):
        if graph.inputs[0].shape[0] == 16:
            raise RuntimeError("matcher bug at 16 rows")
        return real(tl, ep, graph, *rest)

    monkeypatch.setattr(match, "plan_offload", broken_at_16)
    model = _Softmax()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="agentforge", options={"library": lib})
    with torch.no_grad():
        compiled(torch.randn(8, 64))
        with pytest.warns(UserWarning, match=r"matcher bug at 16 rows.*eagerly at these input shapes"):
            torch.testing.assert_close(compiled(x := torch.randn(16, 128)), model(x))
        assert compiled_graphs()[-1].error is not None
        compiled(torch.randn(8, 64))
    assert ran == [("softmax", {"BATCH": 8, "DIM": 64})] * 2
    assert compiled_graphs()[-1].error is None
    torch._dynamo.reset()


def test_an_internal_error_falls_back_to_eager_with_a_warning_and_strict_raises(lib, monkeypatch):
    import agentforge.torch.match as match

    def broken(*a, **k):
        raise RuntimeError("matcher bug")

    monkeypatch.setattr(match, "plan_offload", broken)
    model, x = _Partial(), torch.randn(1, 16, 64)
    torch._dynamo.reset()
    with pytest.warns(UserWarning, match="matcher bug"), torch.no_grad():
        torch.testing.assert_close(_compile(model, lib)(x), model(x))
    torch._dynamo.reset()
    with pytest.raises(Exception, match="matcher bug"), torch.no_grad():
        _compile(model, lib, strict=True)(x)
    torch._dynamo.reset()


def test_config_comes_from_agentforge_toml_and_mistakes_are_named(lib, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TorchBridgeError, match="needs a kernel library"):
        BackendConfig.resolve({})
    (tmp_path / "agentforge.toml").write_text(f'[torch]\nlibrary = "{lib}"\nmachine = "sn40l"\n')
    cfg = BackendConfig.resolve({})
    assert cfg.library == lib and cfg.machine == "sn40l" and not cfg.strict
    assert BackendConfig.resolve({"strict": True}).strict
    with pytest.raises(TorchBridgeError, match="libary"):
        BackendConfig.resolve({"libary": lib})
    model, x = _Partial(), torch.randn(1, 16, 64)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend="agentforge")(x), model(x), atol=1e-5, rtol=1e-5)
    assert compiled_graphs()[-1].plan is not None


def test_report_cli_prints_the_report(lib):
    from agentforge.torch.cli import main

    assert main(["report", str(FIX / "torch_models" / "moe_block.py"), "--library", lib, "--json"]) == 0
    assert main(["report", "no_such_model.py", "--library", lib]) == 2


def test_report_cli_names_what_is_wrong_with_a_bad_model_file(lib, tmp_path, capsys):
    from agentforge.torch.cli import main

    broken = tmp_path / "broken.py"
    broken.write_text("import torch\n\nclass Model(torch.nn.Module)\n    pass\n")
    assert main(["report", str(broken), "--library", lib]) == 2
    err = capsys.readouterr().err
    assert f"{broken}: importing it failed: SyntaxError" in err and "line 3" in err and "internal error" not in err

    failing = tmp_path / "failing.py"
    failing.write_text("import torch\n\nclass Model(torch.nn.Module):\n    pass\n\n"
                       "def get_inputs():\n    return [torch.randn(2, 2) @ torch.randn(3, 3)]\n")
    assert main(["report", str(failing), "--library", lib]) == 2
    err = capsys.readouterr().err
    assert "calling get_inputs() failed: RuntimeError" in err and "line 7" in err and "internal error" not in err

    branchy = tmp_path / "branchy.py"          # Python branching on a tensor's value: torch.export cannot capture it
    branchy.write_text("import torch\n\nclass Model(torch.nn.Module):\n    def forward(self, x):\n"
                       "        if x.sum() > 0:\n            return torch.softmax(x, -1)\n        return x\n\n"
                       "def get_inputs():\n    return [torch.randn(8, 64)]\n")
    assert main(["report", str(branchy), "--library", lib]) == 2
    err = capsys.readouterr().err
    assert "torch.export could not capture Model" in err and "internal error" not in err
    assert f"the part it could not capture: {branchy}:5 in forward: if x.sum() > 0:" in err


def test_docs_example_runs():
    text = (ROOT / "docs" / "pytorch.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "docs/pytorch.md has no python example"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(blocks[0])], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.ops.rdu_docs.rmsnorm" in proc.stdout


def test_memory_the_model_leaves_uninitialised_is_zeros_in_a_plan(lib):
    """``empty_like`` memory a model only partly writes (Mixtral's ``inv_perm[perm] = arange``
    writes it all) holds zeros in a plan, one of the values it may hold: left undefined it held
    int64 values outside int32, and the guard against wrapping them sent every call to eager."""
    class Partial(torch.nn.Module):
        def forward(self, x, idx):
            y = torch.empty_like(x)
            y[idx] = x[idx] + 1
            return y

    x, idx = torch.randn(8, 4), torch.tensor([1, 5])
    with torch.no_grad():
        out = _compile(Partial(), lib)(x, idx)
    torch._dynamo.reset()
    rest = torch.ones(8, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(out[idx], x[idx] + 1) and torch.equal(out[rest], torch.zeros(6, 4))
