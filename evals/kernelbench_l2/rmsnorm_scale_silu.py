"""RMSNorm over the last dim, then a scale and SiLU (a norm with an elementwise epilogue)."""
import torch
import torch.nn as nn

BATCH = 4
SEQ = 2048
HIDDEN = 4096


class Model(nn.Module):
    def __init__(self, hidden: int, eps: float = 1e-6, scale: float = 1.5):
        super().__init__()
        self.eps = eps
        self.scale = scale
        self.weight = nn.Parameter(1.0 + 0.1 * torch.randn(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        return torch.nn.functional.silu(y * self.scale)


def get_inputs():
    return [torch.randn(BATCH, SEQ, HIDDEN)]


def get_init_inputs():
    return [HIDDEN]
