"""Softmax over scores followed by a batched matmul: y = softmax(scores, -1) @ v."""
import torch
import torch.nn as nn

BATCH = 32
M = 1024
N = 1024
D = 128


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, scores: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.softmax(scores, dim=-1), v)


def get_inputs():
    return [torch.randn(BATCH, M, N), torch.randn(BATCH, N, D)]


def get_init_inputs():
    return []
