"""The library as PyTorch custom ops: every kernel passes opcheck, calls dispatch to a kernel
verified for exactly the call's sizes and dtype, and anything else is refused or (when asked)
falls back to the reference with a warning; gradients come from the task's reference."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from agentforge.library import Library
from agentforge.torch import TorchBridgeError, UnverifiedProblemError, load_library
from agentforge.torch._build import cached_library

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "agentforge" / "fixtures" / "torch_tasks"
# torch_library (tests/conftest.py): a library of small tasks whose kernels match subgraphs of the
# test models (test_torch_backend.py), built once per test session


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
    """The fake tensor check (each op's own output shapes, no kernel run) on every kernel; the schema,
    autograd-registration and AOT-dispatch checks, which run the kernel on the emulator (the AOT one
    eagerly and compiled, forward and backward: most of opcheck's time), on one kernel per
    registration form (inputs, weights, outputs, integer arguments): the registration code they
    exercise is the same for every op of a form (agentforge.torch.ops._register)."""
    tl = load_library(any_library, namespace="rdu_opcheck")
    assert tl.families, "the library is empty"
    forms: set[tuple] = set()
    for name in tl.families:
        args = [a.requires_grad_() if a.dtype.is_floating_point else a for a in tl.sample_args(name)]
        fam = tl.families[name]
        form = (fam.n_inputs, len(args) - fam.n_inputs, fam.n_outputs, tuple(a.dtype for a in args))
        utils = ["test_faketensor"]
        if form not in forms:
            forms.add(form)
            utils += ["test_schema", "test_autograd_registration", "test_aot_dispatch_dynamic"]
        # the backward is the PyTorch reference's in both modes; eager and AOT-dynamic differ only in
        # f32 accumulation order (bmm_transposed_b's grads by up to 4e-5), which opcheck's default 1e-5 calls wrong
        result = torch.library.opcheck(tl.op(name), tuple(args), test_utils=tuple(utils), atol=1e-4, rtol=1e-5)
        assert set(result.values()) == {"SUCCESS"} and len(result) == len(utils), (name, result)


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


# ---------------------------------------------------------------------- which kernel runs

@pytest.fixture
def ran(monkeypatch):
    """(op, library entry id, task sizes) of every kernel run on the emulator, in order."""
    from agentforge.torch.ops import OpFamily

    calls: list[tuple[str, str, dict]] = []
    real = OpFamily._run

    def spy(self, v, args):
        calls.append((self.op, v.entry.id, dict(v.sizes)))
        return real(self, v, args)

    monkeypatch.setattr(OpFamily, "_run", spy)
    return calls


#: rmsnorm_small as six kernels, one per op: verified like any plan, but far slower than the
#: one fused kernel (five more kernel switches on the chip)
SIX_KERNELS = {"regions": [{"template": "single", "nodes": [i], "params": {}} for i in range(6)], "version": 1}
RMSNORM = FIX / "rmsnorm_small.py"
SMALL, LARGE = {"BATCH": 2, "SEQ": 8, "HIDDEN": 32}, {"BATCH": 1, "SEQ": 16, "HIDDEN": 64}   # rmsnorm_small.toml
#: a size set at which both plans run the configuration they are timed in (docs/evaluation.md 2.1):
#: the six kernels' tiles at the task's own sizes do not run at SMALL (BATCH 2), the fused one's do
MID = {"BATCH": 1, "SEQ": 8, "HIDDEN": 32}


def _rmsnorm_library(out: Path, kernels: list[tuple[dict, list[dict]]]) -> Path:
    """A library whose rmsnorm_small family holds one entry per (plan, size sets), each verified
    here by the task's checks at exactly those size sets, listed in the given order. (``Library.add``
    keeps one kernel per problem; a library merged from several sources can hold more.) Each entry
    is timed at its first size set (the task's own sizes there: a library vouches for an entry's own
    sizes too) and checked at its sets as the task's sidecar sets: each must run the plan's timed
    configuration (docs/evaluation.md 2.1), or the verifier would check derived sizes instead."""
    import dataclasses

    import asp_lang

    from agentforge import __version__
    from agentforge.capture import capture_at
    from agentforge.capture import signature
    from agentforge.library import Provenance, atomic_write_text, build_entry
    from agentforge.solution import plan_solution
    from agentforge.tasks import load_task
    from agentforge.verify import VerifyConfig, evaluate

    lib = Library.create(out, "sn40l", asp_lang.EMULATOR_VERSION)
    task = load_task(RMSNORM)
    sig = signature(capture_at(task, meta=True))
    prov = Provenance("test", None, "planner", None, "2026-01-01T00:00:00+00:00", "sn40l",
                      asp_lang.EMULATOR_VERSION, __version__)
    for plan, size_sets in kernels:
        t = dataclasses.replace(task, sizes=dict(size_sets[0]), size_sets=size_sets)
        ev = evaluate(t, {"kind": "plan", "plan": plan}, VerifyConfig(size_sets=len(size_sets)))
        assert ev.verified, ev.reason
        entry, files, task_files = build_entry(t, plan_solution(plan, asp_lang.load_machine("sn40l")), ev, sig, prov)
        assert [v["sizes"] for v in entry.verified_at] == size_sets
        for rel, text in {**files, **task_files}.items():
            atomic_write_text(out / rel, text)
        lib.entries.append(entry)
    lib.save()
    return out


@pytest.fixture(scope="module")
def fused_plan(torch_library) -> dict:
    (entry,) = Library.open(torch_library).get("rmsnorm_small")
    assert entry.kind == "plan" and len(entry.plan["regions"]) == 1      # one fused kernel
    return entry.plan


@pytest.fixture(scope="module")
def ranked_library(tmp_path_factory, fused_plan) -> Path:
    """Two rmsnorm_small kernels verified at the same two size sets: the slow one listed first."""
    return _rmsnorm_library(tmp_path_factory.mktemp("ranked") / "library",
                            [(SIX_KERNELS, [LARGE, MID]), (fused_plan, [LARGE, MID])])


@pytest.fixture(scope="module")
def per_size_library(tmp_path_factory, fused_plan) -> Path:
    """Two rmsnorm_small kernels, each verified at one size set only: the fast one at SMALL."""
    return _rmsnorm_library(tmp_path_factory.mktemp("per_size") / "library",
                            [(SIX_KERNELS, [LARGE]), (fused_plan, [SMALL])])


def test_of_several_kernels_verified_at_a_size_the_fastest_there_runs(ranked_library, fused_plan, ran):
    tl = load_library(ranked_library, namespace="rdu_ranked")
    fam = tl.families["rmsnorm_small"]
    assert [e.plan == fused_plan for e in Library.open(ranked_library).entries] == [False, True]
    for sizes in (LARGE, MID):
        x, w = torch.randn(sizes["BATCH"], sizes["SEQ"], sizes["HIDDEN"]), torch.randn(sizes["HIDDEN"])
        cands = fam.problems.by_key[(((sizes["BATCH"], sizes["SEQ"], sizes["HIDDEN"]), "f32"),
                                     ((sizes["HIDDEN"],), "f32"))]
        fused = next(v for v in cands if v.entry.plan == fused_plan)
        six = next(v for v in cands if v.entry.plan != fused_plan)
        assert fam.seconds(fused) * 5 < fam.seconds(six)          # timed at these sizes by the timing model
        assert fam.select([x, w]) is fused
        y = torch.ops.rdu_ranked.rmsnorm_small(x, w)
        assert ran[-1] == ("rmsnorm_small", fused.entry.id, sizes)
        torch.testing.assert_close(y, x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w,
                                   atol=1e-5, rtol=1e-5)
    # the compile backend and the report rank the same way when they match a model's RMSNorm
    from agentforge.torch.report import report

    class Norm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(64))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight

    r = report(Norm(), [torch.randn(1, 16, 64)], library=ranked_library, namespace="rdu_ranked")
    assert [(row.op, row.kernel) for row in r.regions] == [
        ("torch.ops.rdu_ranked.rmsnorm_small", next(e.id for e in fam.entries if e.plan == fused_plan))]


def test_kernels_verified_at_different_sizes_each_run_at_their_own(per_size_library, fused_plan, ran):
    tl = load_library(per_size_library, namespace="rdu_per_size")
    fam = tl.families["rmsnorm_small"]
    fused = next(e for e in fam.entries if e.plan == fused_plan)
    six = next(e for e in fam.entries if e.plan != fused_plan)
    assert fused.simulated_seconds < six.simulated_seconds          # fastest overall, but not verified at LARGE
    for sizes, entry in ((LARGE, six), (SMALL, fused), (LARGE, six)):
        x, w = torch.randn(sizes["BATCH"], sizes["SEQ"], sizes["HIDDEN"]), torch.randn(sizes["HIDDEN"])
        y = torch.ops.rdu_per_size.rmsnorm_small(x, w)
        assert ran[-1] == ("rmsnorm_small", entry.id, sizes)
        torch.testing.assert_close(y, x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w,
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(UnverifiedProblemError, match=r"f32\[1, 8, 32\]") as e:
        torch.ops.rdu_per_size.rmsnorm_small(torch.randn(1, 8, 32), torch.randn(32))
    assert f"f32[1, 16, 64], f32[64]) at BATCH=1,SEQ=16,HIDDEN=64 [{six.id}]" in str(e.value)
    assert f"f32[2, 8, 32], f32[32]) at BATCH=2,SEQ=8,HIDDEN=32 [{fused.id}]" in str(e.value)
    assert len(ran) == 3


# ---------------------------------------------------------------------- dtypes, derivatives, int ranges

def test_fallback_torch_at_an_unverified_dtype_runs_the_reference_at_that_dtype(torch_library, ran):
    tl = load_library(torch_library, namespace="rdu_fallback_dtype", fallback="torch")
    x, w = torch.randn(1, 16, 64, dtype=torch.bfloat16), torch.randn(64, dtype=torch.bfloat16)
    with pytest.warns(UserWarning, match=r"bf16\[1, 16, 64\].*verified: \(f32\[1, 16, 64\], f32\[64\]\).*"
                                         r"PyTorch reference"):
        y = torch.ops.rdu_fallback_dtype.rmsnorm_small(x, w)
    assert y.dtype == torch.bfloat16 and ran == []                    # no kernel ran: none is verified for bf16
    torch.testing.assert_close(y, x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w)
    # the fake implementation agrees (torch.compile and torch.export trace the op at bf16 too)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = torch.library.opcheck(tl.op("rmsnorm_small"), (x.requires_grad_(), w.requires_grad_()))
    assert set(result.values()) == {"SUCCESS"}, result


def test_backward_of_an_op_without_a_derivative_raises_naming_the_op(torch_library, monkeypatch):
    from agentforge.torch import NoDerivativeError

    tl = load_library(torch_library, namespace="rdu_noderiv")
    fam = tl.families["rmsnorm_small"]

    def through_numpy(args):           # a reference computed in NumPy: torch.func cannot differentiate it
        def run(x, w):
            xn, wn = x.numpy(), w.numpy()
            return [torch.from_numpy(xn / np.sqrt((xn ** 2).mean(-1, keepdims=True) + 1e-6) * wn)]
        return run

    monkeypatch.setattr(fam, "reference", through_numpy)
    x, w = (a.requires_grad_() for a in tl.sample_args("rmsnorm_small"))
    y = torch.ops.rdu_noderiv.rmsnorm_small(x, w)                    # forward: the kernel, no derivative needed
    with pytest.raises(NoDerivativeError, match=r"torch\.ops\.rdu_noderiv\.rmsnorm_small: no derivative.*"
                                                r"rmsnorm_small.*numpy"):
        y.sum().backward()

    def missing(args):
        raise UnverifiedProblemError("the task's file is gone")

    monkeypatch.setattr(fam, "reference", missing)
    x, w = (a.detach().requires_grad_() for a in (x, w))
    with pytest.raises(NoDerivativeError, match=r"torch\.ops\.rdu_noderiv\.rmsnorm_small: backward needs the "
                                                r"task's reference.*file is gone"):
        torch.ops.rdu_noderiv.rmsnorm_small(x, w).sum().backward()


@pytest.fixture(scope="module")
def int_library() -> Path:
    return cached_library((str(ROOT / "evals" / "suite" / "moe_expert_counts.py"),))


def test_int64_arguments_that_do_not_fit_int32_are_refused_never_wrapped(int_library, ran):
    tl = load_library(int_library, namespace="rdu_int")
    counts = torch.ops.rdu_int.moe_expert_counts
    # the smallest problem the kernel is verified at (the check sizes the referee derived)
    v = min((v for vs in tl.families["moe_expert_counts"].problems.by_key.values() for v in vs),
            key=lambda v: v.sizes["TOKENS"])
    t, e = v.sizes["TOKENS"], v.sizes["EXPERTS"]
    assert v.sizes["TOP_K"] == 2 and e >= 4

    def expect(*head):
        return torch.tensor([*head] + [0] * (e - len(head)))

    idx = torch.tensor([[0, 1]] * (t - 1) + [[2, 3]])                   # verified sizes
    torch.testing.assert_close(counts(idx), expect(t - 1, t - 1, 1, 1))
    assert len(ran) == 1
    # 2**32 would wrap to expert 0 in int32: the kernel would count it, the model does not
    wide = torch.tensor([[0, 1]] * (t - 1) + [[2 ** 32, 3]])
    with pytest.raises(UnverifiedProblemError, match=r"argument 'indices' .*outside the int32 range.*"
                                                     r"max 4294967296.*wrap"):
        counts(wide)
    with pytest.raises(UnverifiedProblemError, match=r"min -2147483649"):
        counts(torch.tensor([[0, 1]] * (t - 1) + [[-2 ** 31 - 1, 3]]))
    assert len(ran) == 1                                             # neither reached the emulator
    load_library(int_library, namespace="rdu_int_fb", fallback="torch")
    with pytest.warns(UserWarning, match="outside the int32 range.*PyTorch reference"):
        got = torch.ops.rdu_int_fb.moe_expert_counts(wide)
    torch.testing.assert_close(got, expect(t - 1, t - 1, 0, 1))
    assert len(ran) == 1
