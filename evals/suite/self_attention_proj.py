"""Multi-head self-attention with projections (non-causal), nn.MultiheadAttention semantics written out.

x [BATCH, SEQ, HIDDEN] -> fused QKV Linear (with bias) -> split into HEADS heads [BATCH, HEADS, SEQ, HEAD_DIM]
-> softmax(Q K^T / sqrt(HEAD_DIM)) V -> merge heads -> output Linear (with bias).
"""
import torch
import torch.nn as nn

BATCH = 4
SEQ = 1024
HIDDEN = 2048
HEADS = 16


class Model(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=True)
        self.out = nn.Linear(hidden, hidden, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        qkv = self.qkv(x).reshape(batch, seq, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.head_dim ** -0.5
        attn = torch.matmul(torch.softmax(scores, dim=-1), v)
        attn = attn.transpose(1, 2).reshape(batch, seq, hidden)
        return self.out(attn)


def get_inputs():
    return [torch.randn(BATCH, SEQ, HIDDEN)]


def get_init_inputs():
    return [HIDDEN, HEADS]
