"""Elementwise multiply of a [BATCH, DIM] tensor by a [DIM] vector (broadcast over rows)."""
import torch
import torch.nn as nn

BATCH = 4096
DIM = 4096


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return x * scale


def get_inputs():
    return [torch.randn(BATCH, DIM), torch.randn(DIM)]


def get_init_inputs():
    return []
