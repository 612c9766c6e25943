"""The library as PyTorch custom ops: every kernel passes opcheck, calls dispatch to a kernel
verified for exactly the call's sizes and dtype, and anything else is refused or (when asked)
falls back to the reference with a warning; gradients come from the task's reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agentforge.library import Library
from agentforge.torch import TorchBridgeError, UnverifiedProblemError, load_library
from agentforge.torch._build import cached_library

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "agentforge" / "fixtures" / "torch_tasks"
#: small tasks whose kernels match subgraphs of the test models (test_torch_backend.py)
TASKS = tuple(str(p) for p in sorted(FIX.glob("*.py"))) + (str(ROOT / "evals" / "suite" / "softmax.py"),)


@pytest.fixture(scope="session")
def torch_library() -> Path:
    return cached_library(TASKS)


@pytest.fixture(scope="session")
def any_library(request, torch_library) -> Path:
    """The README's default campaign's library when tests/conftest.py provides it, else ours."""
    try:
        run_dir = request.getfixturevalue("default_campaign")
    except pytest.FixtureLookupError:
        return torch_library
    return Path(run_dir) / "library"


@pytest.fixture(scope="module")
def tl(torch_library):
    return load_library(torch_library, namespace="rdu")


def test_the_test_library_holds_a_kernel_per_fixture_task(torch_library):
    ops = set(Library.open(torch_library).by_op())
    assert {"rmsnorm_small", "causal_attention_small", "swiglu_mlp_small", "moe_layer_small", "softmax"} <= ops


def test_every_kernel_of_the_library_passes_opcheck(any_library):
    tl = load_library(any_library, namespace="rdu_opcheck")
    assert tl.families, "the library is empty"
    for name in tl.families:
        args = [a.requires_grad_() if a.dtype.is_floating_point else a for a in tl.sample_args(name)]
        result = torch.library.opcheck(tl.op(name), tuple(args))
        assert set(result.values()) == {"SUCCESS"}, (name, result)


def test_op_arguments_are_the_tasks_inputs_then_its_weights(tl):
    assert tl.families["swiglu_mlp_small"].arg_names == [
        "h", "p_gate_proj_weight", "p_up_proj_weight", "p_down_proj_weight"]
    assert tl.families["causal_attention_small"].schema() == "(Tensor q, Tensor k, Tensor v) -> Tensor"


def test_an_op_computes_what_its_reference_does_and_returns_new_tensors(tl):
    fam = tl.families["rmsnorm_small"]
    x, w = tl.sample_args("rmsnorm_small")
    y = torch.ops.rdu.rmsnorm_small(x, w)
    ref = fam.reference([x, w])(x, w)[0]
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    assert y.untyped_storage().data_ptr() not in (x.untyped_storage().data_ptr(), w.untyped_storage().data_ptr())


def test_each_verified_size_set_dispatches_and_others_are_refused_naming_what_exists(tl):
    fam = tl.families["rmsnorm_small"]
    for b, s, h in ((1, 16, 64), (2, 8, 32)):           # both size sets of rmsnorm_small.toml
        x, w = torch.randn(b, s, h), torch.randn(h)
        assert fam.select([x, w]) is not None
        torch.testing.assert_close(torch.ops.rdu.rmsnorm_small(x, w), fam.reference([x, w])(x, w)[0],
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(UnverifiedProblemError, match=r"f32\[1, 16, 64\]"):
        torch.ops.rdu.rmsnorm_small(torch.randn(3, 5, 64), torch.randn(64))
    with pytest.raises(UnverifiedProblemError, match="verified problems"):
        torch.ops.rdu.rmsnorm_small(torch.randn(1, 16, 64, dtype=torch.bfloat16), torch.randn(64, dtype=torch.bfloat16))


def test_fallback_torch_runs_the_reference_with_a_warning(torch_library):
    tl = load_library(torch_library, namespace="rdu_fallback", fallback="torch")
    fam = tl.families["rmsnorm_small"]
    x, w = torch.randn(3, 5, 64), torch.randn(64)
    with pytest.warns(UserWarning, match="PyTorch reference"):
        y = torch.ops.rdu_fallback.rmsnorm_small(x, w)
    torch.testing.assert_close(y, x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w)
    assert fam.select([x, w]) is None                     # still no kernel claims these sizes


def test_verify_new_sizes_checks_the_kernel_on_first_use_and_remembers(torch_library):
    tl = load_library(torch_library, namespace="rdu_newsizes", verify_new_sizes=True)
    fam = tl.families["rmsnorm_small"]
    x, w = torch.randn(2, 4, 64), torch.randn(64)
    y = torch.ops.rdu_newsizes.rmsnorm_small(x, w)
    torch.testing.assert_close(y, x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w, atol=1e-5, rtol=1e-5)
    v = fam.select([x, w])
    assert v is not None and v.how == "on first use" and v.sizes == {"BATCH": 2, "SEQ": 4, "HIDDEN": 64}


def test_backward_follows_the_tasks_reference(tl):
    x, w = (a.requires_grad_() for a in tl.sample_args("rmsnorm_small"))
    torch.ops.rdu.rmsnorm_small(x, w).pow(2).sum().backward()
    x2, w2 = (a.detach().clone().requires_grad_() for a in (x, w))
    (x2 * torch.rsqrt(x2.pow(2).mean(-1, keepdim=True) + 1e-6) * w2).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(w.grad, w2.grad)


def test_ops_trace_under_torch_export(tl):
    class Use(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.ops.rdu.causal_attention_small(q, k, v) * 2

    args = tuple(tl.sample_args("causal_attention_small"))
    ep = torch.export.export(Use(), args)
    assert any("causal_attention_small" in str(n.target) for n in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(*args), Use()(*args))


def test_reregistering_an_op_with_other_arguments_is_refused(tl):
    from agentforge.torch.ops import _register

    class OtherSoftmax:                                  # as if another library's softmax took two tensors
        def schema(self):
            return "(Tensor a, Tensor b) -> Tensor"

    with pytest.raises(TorchBridgeError, match="another namespace"):
        _register("rdu", "softmax", OtherSoftmax())
