"""All experts' SwiGLU MLPs on capacity-grouped tokens (batched over experts with bmm).

x [EXPERTS, CAPACITY, HIDDEN] holds the tokens dispatched to each expert; stacked weights
w1/w3 [EXPERTS, HIDDEN, FFN], w2 [EXPERTS, FFN, HIDDEN]; y[e] = (silu(x[e] @ w1[e]) * (x[e] @ w3[e])) @ w2[e].
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

EXPERTS = 8
CAPACITY = 512
HIDDEN = 2048
FFN = 4096


class Model(nn.Module):
    def __init__(self, num_experts: int, hidden: int, ffn: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(num_experts, hidden, ffn) * hidden ** -0.5)
        self.w3 = nn.Parameter(torch.randn(num_experts, hidden, ffn) * hidden ** -0.5)
        self.w2 = nn.Parameter(torch.randn(num_experts, ffn, hidden) * ffn ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(torch.bmm(x, self.w1)) * torch.bmm(x, self.w3)
        return torch.bmm(h, self.w2)


def get_inputs():
    return [torch.randn(EXPERTS, CAPACITY, HIDDEN)]


def get_init_inputs():
    return [EXPERTS, HIDDEN, FFN]
