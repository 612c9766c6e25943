"""Fused linear + bias + GELU (erf form): y = gelu(x W^T + b)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

TOKENS = 4096
IN_FEATURES = 4096
OUT_FEATURES = 16384


class Model(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.linear(x))


def get_inputs():
    return [torch.randn(TOKENS, IN_FEATURES)]


def get_init_inputs():
    return [IN_FEATURES, OUT_FEATURES]
