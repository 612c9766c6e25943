"""Batched matmul with transposed right operand (Q K^T style): C[b] = A[b] @ B[b]^T."""
import torch
import torch.nn as nn

BATCH = 32
M = 1024
K = 128
N = 1024


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b.transpose(-2, -1))


def get_inputs():
    return [torch.randn(BATCH, M, K), torch.randn(BATCH, N, K)]


def get_init_inputs():
    return []
