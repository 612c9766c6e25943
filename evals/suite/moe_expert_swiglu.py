"""One MoE expert (Mixtral style SwiGLU MLP) applied to the tokens routed to it.

y = (silu(x W1^T) * (x W3^T)) W2^T, all projections without bias.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

TOKENS = 1024
HIDDEN = 4096
FFN = 14336


class Model(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.w1 = nn.Linear(hidden, ffn, bias=False)  # gate
        self.w3 = nn.Linear(hidden, ffn, bias=False)  # up
        self.w2 = nn.Linear(ffn, hidden, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def get_inputs():
    return [torch.randn(TOKENS, HIDDEN)]


def get_init_inputs():
    return [HIDDEN, FFN]
