"""Llama-2 style decoder block (prefill), written out with torch ops.

h = x + o_proj(causal_attention(rope(q_proj(rmsnorm(x))), rope(k_proj(...)), v_proj(...)))
y = h + down_proj(silu(gate_proj(rmsnorm(h))) * up_proj(rmsnorm(h)))
x [BATCH, SEQ, HIDDEN]; cos/sin [SEQ, HEAD_DIM] are NeoX-style rotary tables (inputs);
HEAD_DIM = HIDDEN // HEADS; no biases; RMSNorm eps = 1e-6.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 1
SEQ = 2048
HIDDEN = 4096
HEADS = 32
INTERMEDIATE = 11008


def _rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Model(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float = 1e-6):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.eps = eps
        self.input_norm = nn.Parameter(1.0 + 0.1 * torch.randn(hidden))
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = nn.Linear(hidden, hidden, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)
        self.post_attn_norm = nn.Parameter(1.0 + 0.1 * torch.randn(hidden))
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        h = _rmsnorm(x, self.input_norm, self.eps)
        q = self.q_proj(h).view(batch, seq, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(batch, seq, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(batch, seq, self.heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.head_dim ** -0.5
        mask = torch.ones(seq, seq, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
        attn = torch.matmul(torch.softmax(scores, dim=-1), v)
        attn = attn.transpose(1, 2).reshape(batch, seq, hidden)
        x = x + self.o_proj(attn)
        h = _rmsnorm(x, self.post_attn_norm, self.eps)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


def get_inputs():
    head_dim = HIDDEN // HEADS
    half = head_dim // 2
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, half, dtype=torch.float32) / half))
    freqs = torch.outer(torch.arange(SEQ, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return [torch.randn(BATCH, SEQ, HIDDEN), emb.cos(), emb.sin()]


def get_init_inputs():
    return [HIDDEN, HEADS, INTERMEDIATE]
