"""Rotary position embedding, GPT-NeoX / Llama style (rotate_half), cos/sin given as inputs.

out = x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2]).
x is [BATCH, HEADS, SEQ, HEAD_DIM]; cos/sin are [SEQ, HEAD_DIM] (each frequency repeated in both halves).
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
        half = x.shape[-1] // 2
        x1 = x[..., :half]
        x2 = x[..., half:]
        rotated = torch.cat((-x2, x1), dim=-1)
        return x * cos + rotated * sin


def get_inputs():
    half = HEAD_DIM // 2
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, half, dtype=torch.float32) / half))
    freqs = torch.outer(torch.arange(SEQ, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return [torch.randn(BATCH, HEADS, SEQ, HEAD_DIM), emb.cos(), emb.sin()]


def get_init_inputs():
    return []
