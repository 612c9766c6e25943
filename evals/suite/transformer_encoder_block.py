"""Pre-LN transformer encoder block (BERT-large sizes), non-causal.

h = x + out_proj(MHA(LayerNorm1(x)));  y = h + fc2(gelu(fc1(LayerNorm2(h))))
Fused QKV projection, HEADS heads of HIDDEN // HEADS, all linears with bias, exact erf GELU.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 8
SEQ = 512
HIDDEN = 1024
HEADS = 16
FFN = 4096


class Model(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.norm1 = nn.LayerNorm(hidden, eps=1e-5)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-5)
        with torch.no_grad():
            for norm in (self.norm1, self.norm2):
                norm.weight.add_(0.1 * torch.randn(hidden))
                norm.bias.add_(0.1 * torch.randn(hidden))
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=True)
        self.out_proj = nn.Linear(hidden, hidden, bias=True)
        self.fc1 = nn.Linear(hidden, ffn, bias=True)
        self.fc2 = nn.Linear(ffn, hidden, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(batch, seq, 3, self.heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.head_dim ** -0.5
        attn = torch.matmul(torch.softmax(scores, dim=-1), v)
        attn = attn.transpose(1, 2).reshape(batch, seq, hidden)
        h = x + self.out_proj(attn)
        return h + self.fc2(F.gelu(self.fc1(self.norm2(h))))


def get_inputs():
    return [torch.randn(BATCH, SEQ, HIDDEN)]


def get_init_inputs():
    return [HIDDEN, HEADS, FFN]
