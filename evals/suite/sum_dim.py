"""Sum over the middle dim of a [BATCH, DIM1, DIM2] tensor, keepdim."""
import torch
import torch.nn as nn

BATCH = 16
DIM1 = 4096
DIM2 = 1024


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1, keepdim=True)


def get_inputs():
    return [torch.randn(BATCH, DIM1, DIM2)]


def get_init_inputs():
    return []
