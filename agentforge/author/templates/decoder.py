"""The decoder-layer template: a Llama-style decoder layer at decode (one new token per sequence
against a KV cache), recognised whole, as ONE kernel.

Why a template of its own: at decode a layer is memory-bound on its weights and cache, and the
greedy row/matmul regions cut it into a dozen or more kernels (the norms, RoPE and the softmax
merge are tiny kernels between the projections), each boundary a round trip through HBM and a
reconfiguration of the chip (10 us on sn40l: 210 us of a 715 us layer at batch 1). In one
kernel the activations stay on chip and the weights and cache stream from HBM back to back.

The kernel is :func:`agentforge.shard.decoder_layer_source` on one socket (the same generator the
multi-socket estimate uses), in the form the task is written in: nn.Linear weights (``[out,
in]``), the key cache as a model keeps it, one cache per sequence, the new token attending to its
own key and value too, the task's RMSNorm epsilon, one RoPE position for the batch.

Recognised by structure, never by name (as :func:`agentforge.shard.match_block` recognises its
blocks): the operands' shapes propose the sizes (x ``[B, 1, D]``, cos/sin ``[1, HD]``, the caches
``[B, H, CTX, HD]``, two norm weights and seven projection weights), the graph's ``add`` scalars
propose the epsilon, and the task's graph must have the same canonical form
(:func:`agentforge.canonical.canonical_key`) as :class:`DecodeLayer` written in PyTorch at those
sizes. Operands and results then bind by position (the canonical key numbers them). What computes
the same thing written otherwise is not recognised; the greedy regions take it, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...capture import AtenGraph, AtenNode, Ref
from ...lowering import OpKernel, UnsupportedOpError, asp_dtype, aten_name
from ...shard import decoder_layer_source
from ..graph import const_and_alias_steps, semantic_nodes
from .base import RegionCode, Template, built_by

# tiles (hidden slice of a projection step, cache block, output-projection rows, gate/up columns,
# down-projection rows), replicas of each reduction, AGCUs per load. At decode the layer streams
# its weights at HBM rate for any of these tiles; the first values are the smallest that time as
# well, so the referee's check sizes (every tiled axis >= 3 tiles, within its element budget) can
# run the timed configuration. par 128 or load_par 8 take more units than sn40l has for one
# section.
DECODER_GRID = {"tk": (128, 256, 64), "tc": (128, 256, 64), "to": (8, 16, 32), "tf": (128, 64, 256),
                "td": (8, 16), "par": (64, 32, 16), "load_par": (5, 4, 2)}
DECODER_MIN_TRIES = 24


@dataclass
class DecoderMatch:
    """A decoder layer at decode, whole: what :func:`decoder_layer_source` needs and how the
    kernel's operands and results bind to the graph's values."""
    nodes: list[int]                   # every semantic node that computes (the region)
    operands: list[str]                # graph values for x, g1, wq, wk, wv, cos, sin, kc, vc, wo, g2, wg, wu, wd
    operand_views: list[tuple[int, ...]]
    results: list[str]                 # graph values for y, kn, vn
    result_views: list[tuple[int, ...]]
    batch: int
    hidden: int
    heads: int
    head_dim: int
    intermediate: int
    context: int
    eps: float
    dtype: str                         # "f32" | "bf16"
    out: AtenNode                      # the node of the layer's output (where the kernel stands)


class DecodeLayer:
    """The PyTorch form the template recognises (built lazily: torch is imported on use): a
    Llama-2 style layer, one decode step. RMSNorm, q/k/v projections viewed as heads, RoPE with
    one cos/sin row, scores against the cache plus the token's own key merged by an online
    softmax (so the cache is read once and never copied), the O projection and residual, RMSNorm,
    SwiGLU and residual; returns the layer's output and the new key and value (the caller appends
    them to its cache)."""

    @staticmethod
    def module(hidden: int, heads: int, intermediate: int, eps: float, dtype):
        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        def rmsnorm(x, weight):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

        def rotate_half(x):
            half = x.shape[-1] // 2
            return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.heads, self.head_dim = heads, hidden // heads
                self.input_norm = nn.Parameter(torch.empty(hidden, dtype=dtype))
                self.q_proj = nn.Linear(hidden, hidden, bias=False, dtype=dtype)
                self.k_proj = nn.Linear(hidden, hidden, bias=False, dtype=dtype)
                self.v_proj = nn.Linear(hidden, hidden, bias=False, dtype=dtype)
                self.o_proj = nn.Linear(hidden, hidden, bias=False, dtype=dtype)
                self.post_attn_norm = nn.Parameter(torch.empty(hidden, dtype=dtype))
                self.gate_proj = nn.Linear(hidden, intermediate, bias=False, dtype=dtype)
                self.up_proj = nn.Linear(hidden, intermediate, bias=False, dtype=dtype)
                self.down_proj = nn.Linear(intermediate, hidden, bias=False, dtype=dtype)

            def forward(self, x, cos, sin, k_cache, v_cache):
                batch, _, d = x.shape
                h = rmsnorm(x, self.input_norm)
                q = self.q_proj(h).view(batch, 1, self.heads, self.head_dim).transpose(1, 2)
                k = self.k_proj(h).view(batch, 1, self.heads, self.head_dim).transpose(1, 2)
                v = self.v_proj(h).view(batch, 1, self.heads, self.head_dim).transpose(1, 2)
                q = q * cos + rotate_half(q) * sin
                k = k * cos + rotate_half(k) * sin
                scale = self.head_dim ** -0.5
                s_cache = torch.matmul(q, k_cache.transpose(-2, -1)) * scale
                s_new = (q * k).sum(-1, keepdim=True) * scale
                m = torch.maximum(s_cache.amax(-1, keepdim=True), s_new)
                p_cache = torch.exp(s_cache - m)
                p_new = torch.exp(s_new - m)
                denom = p_cache.sum(-1, keepdim=True) + p_new
                attn = (torch.matmul(p_cache, v_cache) + p_new * v) / denom
                attn = attn.transpose(1, 2).reshape(batch, 1, d)
                x = x + self.o_proj(attn)
                h = rmsnorm(x, self.post_attn_norm)
                return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h)), k, v
        return Model()


_TORCH_DTYPE = {"f32": "float32", "bf16": "bfloat16"}
_MATCHES: dict[str, "DecoderMatch | None"] = {}   # by graph.structure_key: one export per graph


def decoder_matches(graph: AtenGraph) -> list[DecoderMatch]:
    """The graph as one decoder layer at decode (a list of one), or [] when it is none."""
    if _proposal(graph) is None:   # the operands' shapes alone rule it out: no key, no export
        return []
    key = graph.structure_key
    if key not in _MATCHES:
        if len(_MATCHES) > 64:
            _MATCHES.clear()
        try:
            _MATCHES[key] = _match(graph)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError, UnsupportedOpError):
            _MATCHES[key] = None   # not a form this matcher understands: the greedy regions take it
    m = _MATCHES[key]
    return [m] if m is not None else []


def _proposal(graph: AtenGraph) -> dict | None:
    """Sizes the operands' shapes propose for a decode layer, or None (cheap: no export)."""
    ins, params = list(graph.inputs), list(graph.params)
    if len(ins) != 5 or len(params) != 9 or len(graph.outputs) != 3:
        return None
    x, cos, sin, kc, vc = (tuple(s.shape) for s in ins)
    if len(x) != 3 or x[1] != 1 or len(kc) != 4 or kc != vc or kc[0] != x[0]:
        return None
    b, _, d = x
    _, h, ctx, hd = kc
    if cos != (1, hd) or sin != cos or h * hd != d or hd % 2:
        return None
    shapes = [tuple(p.shape) for p in params]
    f = shapes[6][0] if len(shapes[6]) == 2 else 0
    if shapes != [(d,), (d,), (d, d), (d, d), (d, d), (d, d), (f, d), (f, d), (d, f)] or not f:
        return None
    dtype = ins[0].dtype
    if dtype not in _TORCH_DTYPE or any(s.dtype != dtype for s in ins + params):
        return None
    return {"batch": b, "hidden": d, "heads": h, "head_dim": hd, "intermediate": f, "context": ctx, "dtype": dtype}


def _epsilons(graph: AtenGraph) -> list[float]:
    """The float scalars added to a mean (an RMSNorm's epsilon), most frequent first."""
    by_name = {n.name: n for n in graph.nodes}
    seen: dict[float, int] = {}
    for n in graph.nodes:
        if aten_name(n.target) == "add" and len(n.args) == 2 and isinstance(n.args[1], float) and \
                isinstance(n.args[0], Ref) and aten_name(getattr(by_name.get(n.args[0].name), "target", "")) == "mean":
            seen[n.args[1]] = seen.get(n.args[1], 0) + 1
    return sorted(seen, key=lambda e: -seen[e])


def _match(graph: AtenGraph) -> DecoderMatch | None:
    p = _proposal(graph)
    if p is None:
        return None
    import torch

    from ...canonical import canonical_key
    from ...capture import export_guard, graph_from_export

    b, d, h, hd, f, ctx = (p[k] for k in ("batch", "hidden", "heads", "head_dim", "intermediate", "context"))
    dt = getattr(torch, _TORCH_DTYPE[p["dtype"]])
    target = canonical_key(graph)
    for eps in _epsilons(graph)[:3]:
        with torch.device("meta"):
            mod = DecodeLayer.module(d, h, f, eps, dt)
            args = (torch.empty(b, 1, d, dtype=dt), torch.empty(1, hd, dtype=dt), torch.empty(1, hd, dtype=dt),
                    torch.empty(b, h, ctx, hd, dtype=dt), torch.empty(b, h, ctx, hd, dtype=dt))
        with export_guard():
            ep = torch.export.export(mod, args).run_decompositions()
        if canonical_key(graph_from_export(ep, "reference", "<decoder layer reference>")) != target:
            continue
        fixed, _ = const_and_alias_steps(graph)
        nodes = [i for i, n in enumerate(semantic_nodes(graph)) if n.name not in fixed]
        by_name = {n.name: n for n in graph.nodes}
        x, cos, sin, kc, vc = (s.name for s in graph.inputs)
        g1, g2, wq, wk, wv, wo, wg, wu, wd = (s.name for s in graph.params)
        cache = (b, h, ctx, hd) if b > 1 else (h, ctx, hd)
        return DecoderMatch(
            nodes, [x, g1, wq, wk, wv, cos, sin, kc, vc, wo, g2, wg, wu, wd],
            [(b, d), (d,), (d, d), (d, d), (d, d), (1, hd), (1, hd), cache, cache, (d, d), (d,), (f, d), (f, d),
             (d, f)],
            [r.name for r in graph.outputs], [(b, d)] * 3, b, d, h, hd, f, ctx, eps, p["dtype"],
            by_name[graph.outputs[0].name])
    return None


class DecoderKernel(RegionCode):
    """The whole decode layer as one kernel (:func:`agentforge.shard.decoder_layer_source`, one
    socket, the task's form), its operands and results bound to the graph's values."""

    def build(self) -> OpKernel:
        m = self.whole_match(decoder_matches(self.g), "decoder layer at decode")
        p = {k: int(self.region.params.get(k, v[0])) for k, v in DECODER_GRID.items()}
        if asp_dtype(self.g.spec(m.operands[0])) != m.dtype:
            raise UnsupportedOpError(f"decoder layer: operands of dtype {m.dtype} only")
        src = decoder_layer_source(m.batch, m.hidden, m.heads, m.heads, m.head_dim, m.intermediate, m.context, 1,
                                   dtype=m.dtype, layout="out_in", cache="k", batch=m.batch, attend_new=True,
                                   eps=m.eps, rope_rows=1, fixed_par=True, **p)
        return OpKernel(m.results[0], "fused.decoder", src, list(m.operands), list(m.operand_views),
                        list(m.results), list(m.result_views))


TEMPLATE = Template("decoder", DECODER_GRID, built_by(DecoderKernel), min_tries=DECODER_MIN_TRIES)
