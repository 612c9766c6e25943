"""Every example in docs/examples runs at its default sizes and matches PyTorch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import asp_lang

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def _t(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def _ref_softmax(i):
    return torch.softmax(_t(i["x"]), dim=-1)


def _ref_layernorm(i):
    x = _t(i["x"])
    return torch.nn.functional.layer_norm(x, x.shape[-1:], _t(i["w"]), _t(i["b"]), eps=1e-5)


def _ref_rmsnorm(i):
    x = _t(i["x"])
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * _t(i["w"])


def _ref_attention(i):
    q, k, v = _t(i["q"]), _t(i["k"]), _t(i["v"])
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def _ref_rope(i):
    x, c, s = _t(i["x"]), _t(i["cos"]), _t(i["sin"])
    d = x.shape[-1]
    rot = torch.cat([-x[..., d // 2:], x[..., :d // 2]], dim=-1)
    return x * c[:, None, :] + rot * s[:, None, :]


def _ref_moe(i):
    x, wr, w1, w2 = _t(i["x"]), _t(i["wr"]), _t(i["w1"]), _t(i["w2"])
    logits = x @ wr
    probs = torch.softmax(logits, -1)
    e = logits.argmax(-1)
    out = torch.stack([torch.relu(x[t] @ w1[e[t]]) @ w2[e[t]] for t in range(x.shape[0])])
    return out * probs.max(-1).values[:, None]


REFERENCES = {
    "vector_add": lambda i: _t(i["a"]) + _t(i["b"]),
    "softmax_3pass": _ref_softmax,
    "softmax_online": _ref_softmax,
    "layernorm": _ref_layernorm,
    "rmsnorm": _ref_rmsnorm,
    "gemm": lambda i: _t(i["a"]) @ _t(i["b"]),
    "bmm": lambda i: torch.bmm(_t(i["a"]), _t(i["b"])),
    "flash_attention": _ref_attention,
    "rope_neox": _ref_rope,
    "moe_top1": _ref_moe,
}


def test_every_example_has_a_reference():
    assert sorted(p.stem for p in EXAMPLES.glob("*.asp")) == sorted(REFERENCES)


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("seed", [0, 1])
def test_example_matches_pytorch(name, seed):
    prog = asp_lang.compile_file(EXAMPLES / f"{name}.asp", machine="sn40l")
    inputs = asp_lang.random_inputs(prog, seed=seed)
    (out,) = asp_lang.run(prog, inputs).values()
    ref = REFERENCES[name](inputs).numpy()
    assert out.shape == ref.shape
    # f32 against a float64 reference: relative error, plus an absolute part scaled by the output
    # (long f32 sums such as gemm's K = 512 carry roundoff proportional to their magnitude)
    np.testing.assert_allclose(out, ref, rtol=2e-4, atol=2e-5 * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_example_is_canonically_formatted(name):
    src = (EXAMPLES / f"{name}.asp").read_text()
    assert asp_lang.format_kernel(asp_lang.parse(src)) == src


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_example_profiles_within_the_roofline(name):
    rep = asp_lang.profile(asp_lang.compile_file(EXAMPLES / f"{name}.asp"))
    assert rep.cycles >= rep.roofline_cycles
    assert 0 < rep.roofline_fraction <= 1
    assert math.isfinite(rep.seconds)
