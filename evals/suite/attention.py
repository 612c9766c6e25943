"""Single-head scaled dot-product attention, non-causal: softmax(Q K^T * scale) V.

q [BATCH, SEQ_Q, HEAD_DIM], k/v [BATCH, SEQ_KV, HEAD_DIM], scale = HEAD_DIM ** -0.5.
"""
import torch
import torch.nn as nn

BATCH = 32
SEQ_Q = 1024
SEQ_KV = 2048
HEAD_DIM = 128


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scale = q.shape[-1] ** -0.5
        scores = torch.matmul(q, k.transpose(-2, -1)) * scale
        return torch.matmul(torch.softmax(scores, dim=-1), v)


def get_inputs():
    return [
        torch.randn(BATCH, SEQ_Q, HEAD_DIM),
        torch.randn(BATCH, SEQ_KV, HEAD_DIM),
        torch.randn(BATCH, SEQ_KV, HEAD_DIM),
    ]


def get_init_inputs():
    return []
