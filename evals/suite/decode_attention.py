"""Single-token decode attention over a KV cache.

q [BATCH, HEADS, 1, HEAD_DIM] attends to k/v cache [BATCH, HEADS, SEQ, HEAD_DIM] (all positions
valid, so no mask); output [BATCH, HEADS, 1, HEAD_DIM].
"""
import torch
import torch.nn as nn

BATCH = 8
HEADS = 32
SEQ = 4096
HEAD_DIM = 128


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        scale = q.shape[-1] ** -0.5
        scores = torch.matmul(q, k_cache.transpose(-2, -1)) * scale
        return torch.matmul(torch.softmax(scores, dim=-1), v_cache)


def get_inputs():
    return [
        torch.randn(BATCH, HEADS, 1, HEAD_DIM),
        torch.randn(BATCH, HEADS, SEQ, HEAD_DIM),
        torch.randn(BATCH, HEADS, SEQ, HEAD_DIM),
    ]


def get_init_inputs():
    return []
