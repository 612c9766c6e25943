"""Rotary position embedding, GPT-J style (interleaved pairs), cos/sin given as inputs.

Pairs (x[2i], x[2i+1]) are rotated by angle theta_i:
  out[2i]   = x[2i] * cos_i - x[2i+1] * sin_i
  out[2i+1] = x[2i] * sin_i + x[2i+1] * cos_i
x is [BATCH, HEADS, SEQ, HEAD_DIM]; cos/sin are [SEQ, HEAD_DIM / 2].
"""
import torch
import torch.nn as nn

BATCH = 1
HEADS = 32
SEQ = 2048
HEAD_DIM = 128


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        pairs = x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
        x1 = pairs[..., 0]
        x2 = pairs[..., 1]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return out.flatten(-2)


def get_inputs():
    half = HEAD_DIM // 2
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, half, dtype=torch.float32) / half))
    freqs = torch.outer(torch.arange(SEQ, dtype=torch.float32), inv_freq)
    return [torch.randn(BATCH, HEADS, SEQ, HEAD_DIM), freqs.cos(), freqs.sin()]


def get_init_inputs():
    return []
