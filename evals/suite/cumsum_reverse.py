"""Reverse (suffix) inclusive cumulative sum along the last dim: out[i] = sum(x[i:])."""
import torch
import torch.nn as nn

BATCH = 256
DIM = 4096


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x.flip(-1), dim=-1).flip(-1)


def get_inputs():
    return [torch.randn(BATCH, DIM)]


def get_init_inputs():
    return []
