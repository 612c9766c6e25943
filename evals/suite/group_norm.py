"""GroupNorm over channel groups of a [BATCH, CHANNELS, HEIGHT, WIDTH] tensor with learned affine weight and bias."""
import torch
import torch.nn as nn

BATCH = 16
CHANNELS = 256
HEIGHT = 64
WIDTH = 64


class Model(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-5)
        with torch.no_grad():  # non-trivial affine params so a kernel that ignores them fails
            self.norm.weight.add_(0.1 * torch.randn(channels))
            self.norm.bias.add_(0.1 * torch.randn(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def get_inputs():
    return [torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH)]


def get_init_inputs():
    return [CHANNELS, 32]
