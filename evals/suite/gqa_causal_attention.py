"""Grouped-query causal attention (Llama-3 / Mistral style).

q [BATCH, Q_HEADS, SEQ, HEAD_DIM]; k/v [BATCH, KV_HEADS, SEQ, HEAD_DIM] with Q_HEADS a multiple
of KV_HEADS. Each KV head is shared by Q_HEADS // KV_HEADS consecutive query heads (expand + reshape,
equivalent to repeat_interleave on the head dim). Causal mask built inside forward.
"""
import torch
import torch.nn as nn

BATCH = 1
Q_HEADS = 32
KV_HEADS = 8
SEQ = 2048
HEAD_DIM = 128


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, q_heads, seq, head_dim = q.shape
        kv_heads = k.shape[1]
        group = q_heads // kv_heads
        k = k[:, :, None].expand(batch, kv_heads, group, seq, head_dim).reshape(batch, q_heads, seq, head_dim)
        v = v[:, :, None].expand(batch, kv_heads, group, seq, head_dim).reshape(batch, q_heads, seq, head_dim)
        scores = torch.matmul(q, k.transpose(-2, -1)) * head_dim ** -0.5
        mask = torch.ones(seq, seq, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), v)


def get_inputs():
    return [
        torch.randn(BATCH, Q_HEADS, SEQ, HEAD_DIM),
        torch.randn(BATCH, KV_HEADS, SEQ, HEAD_DIM),
        torch.randn(BATCH, KV_HEADS, SEQ, HEAD_DIM),
    ]


def get_init_inputs():
    return []
