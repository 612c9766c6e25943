"""Data-dependent Python control flow under ``torch.compile(backend="agentforge")``: dynamo splits the
forward at each graph break, every graph it hands the backend is planned on its own, and the library
regions inside each run on kernels (a poisoned kernel changes the output) while the branch itself runs
in Python (with torch 2.13 dynamo runs the frame holding the HF-style expert loop, ``torch.where(sel == e)``
then ``if idx[0].numel() == 0``, in PyTorch, and compiles the norms on either side); the same model given to
the whole-model capture (``--from-model``, ``report``) is refused with the line to change, never an
internal error."""

from __future__ import annotations

import torch
import torch.nn as nn

from agentforge.torch.match import is_view_target

HIDDEN = 64


def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w      # rmsnorm_small's computation


class Branchy(nn.Module):
    """A norm, a branch on a value the norm computed, an HF-style loop over experts that skips the
    empty ones (``torch.where(sel == e)``: a data-dependent number of rows), then a norm again."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(1 + 0.1 * torch.randn(HIDDEN))
        self.w2 = nn.Parameter(1 + 0.1 * torch.randn(HIDDEN))
        self.experts = nn.ModuleList(nn.Linear(HIDDEN, HIDDEN) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _rms(x, self.w1)
        if h.sum() > 0:                                   # data-dependent: a graph break
            h = h * 2
        else:
            h = h - 1
        sel = (h[..., 0] > 0).long() + (h[..., 1] > 0).long()   # expert 0..2 per token
        out = torch.zeros_like(h)
        for e in range(3):
            idx = torch.where(sel == e)
            if idx[0].numel() == 0:                       # HF MoE style: skip an expert with no tokens
                continue
            out[idx] = self.experts[e](h[idx])
        return _rms(out + h, self.w2)


def _graphs_run(model, x, lib):
    from agentforge.torch.backend import compiled_graphs

    torch._dynamo.reset()
    before = {id(c) for c in compiled_graphs()}
    compiled = torch.compile(model, backend="agentforge", dynamic=False, options={"library": lib})
    with torch.no_grad():
        got = compiled(x)
    return got, [c for c in compiled_graphs() if id(c) not in before]


def test_each_graph_between_breaks_is_planned_and_its_regions_run_on_kernels(torch_library, monkeypatch):
    from agentforge.torch.ops import OpFamily

    torch.manual_seed(0)
    model = Branchy().eval()
    x = torch.randn(1, 16, HIDDEN)
    with torch.no_grad():
        want = model(x)
    ran: list[str] = []
    real = OpFamily._run

    def spy(self, v, args):
        ran.append(self.op)
        return real(self, v, args)

    monkeypatch.setattr(OpFamily, "_run", spy)
    got, graphs = _graphs_run(model, x, str(torch_library))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert len(graphs) >= 2, "dynamo should have split the forward at the data-dependent branch"
    planned = [c for c in graphs if c.plan is not None and c.plan.regions]
    assert len(planned) >= 2, [(c.error, c.plan and len(c.plan.regions)) for c in graphs]   # both norms offloaded
    assert ran.count("rmsnorm_small") >= 2

    def sevens(self, v, args):     # a wrong kernel: if the regions really run on it, the output changes
        return [torch.full_like(o, 7) for o in real(self, v, args)]

    monkeypatch.setattr(OpFamily, "_run", sevens)
    bad, _ = _graphs_run(model, x, str(torch_library))
    assert not torch.allclose(bad, want, atol=1e-2)
    torch._dynamo.reset()


def test_split_and_slices_are_views_not_computing_ops():
    assert all(is_view_target(t) for t in ("aten.split_with_sizes.default", "aten.slice.Tensor", "aten.select.int",
                                           "aten.unbind.int", "aten.view.default"))
    assert not any(is_view_target(t) for t in ("aten.add.Tensor", "aten.clone.default", "aten.cat.default",
                                               "getitem", "aten.no_such_op.default"))


def test_capturing_the_branchy_model_whole_names_the_branch_and_what_to_do():
    """``--from-model`` and ``report`` capture a model whole (torch.export): a data-dependent branch is a
    clear error naming the model's line, with the fix (torch.where/torch.cond, or the compile backend)."""
    import pytest

    from agentforge.torch.match import export_graph
    from agentforge.torch.ops import ModelCaptureError

    torch.manual_seed(0)
    with pytest.raises(ModelCaptureError, match=r"test_graph_break.py:\d+ in forward: if h.sum\(\) > 0") as e:
        export_graph(Branchy().eval(), [torch.randn(1, 16, HIDDEN)], "branchy")
    assert 'backend="agentforge"' in str(e.value) and "torch.where" in str(e.value)
