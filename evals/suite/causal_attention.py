"""Causal multi-head attention core: softmax(Q K^T / sqrt(d) + causal mask) V.

q/k/v [BATCH, HEADS, SEQ, HEAD_DIM]; the upper-triangular mask is built inside forward
from the (trace-time static) sequence length and applied with masked_fill(-inf).
"""
import torch
import torch.nn as nn

BATCH = 1
HEADS = 32
SEQ = 2048
HEAD_DIM = 128


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        seq = q.shape[-2]
        scale = q.shape[-1] ** -0.5
        scores = torch.matmul(q, k.transpose(-2, -1)) * scale
        mask = torch.ones(seq, seq, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), v)


def get_inputs():
    shape = (BATCH, HEADS, SEQ, HEAD_DIM)
    return [torch.randn(shape), torch.randn(shape), torch.randn(shape)]


def get_init_inputs():
    return []
