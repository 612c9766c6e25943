"""SwiGLU activation: y = silu(gate) * up, both [TOKENS, DIM] (the activation half of a SwiGLU MLP)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

TOKENS = 4096
DIM = 11008


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return F.silu(gate) * up


def get_inputs():
    return [torch.randn(TOKENS, DIM), torch.randn(TOKENS, DIM)]


def get_init_inputs():
    return []
