"""Multi-head attention core with heads as a separate dim, non-causal.

q/k/v [BATCH, HEADS, SEQ, HEAD_DIM] -> softmax(Q K^T / sqrt(HEAD_DIM)) V, same shape as q.
"""
import torch
import torch.nn as nn

BATCH = 4
HEADS = 32
SEQ = 1024
HEAD_DIM = 128


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scale = q.shape[-1] ** -0.5
        scores = torch.matmul(q, k.transpose(-2, -1)) * scale
        return torch.matmul(torch.softmax(scores, dim=-1), v)


def get_inputs():
    shape = (BATCH, HEADS, SEQ, HEAD_DIM)
    return [torch.randn(shape), torch.randn(shape), torch.randn(shape)]


def get_init_inputs():
    return []
