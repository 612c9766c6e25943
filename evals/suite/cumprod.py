"""Inclusive cumulative product along the last dim."""
import torch
import torch.nn as nn

BATCH = 256
DIM = 4096


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumprod(x, dim=-1)


def get_inputs():
    # factors near 1 keep the running product in range over thousands of steps
    return [1.0 + 0.01 * torch.randn(BATCH, DIM)]


def get_init_inputs():
    return []
