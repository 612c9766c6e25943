"""MoE top-2 gating to a dense gate matrix.

hidden [TOKENS, HIDDEN] -> router Linear (no bias) -> softmax -> top-2 -> renormalize the two weights
to sum to 1 -> scatter into a dense [TOKENS, EXPERTS] gate matrix (zeros for unselected experts).
"""
import torch
import torch.nn as nn

TOKENS = 4096
HIDDEN = 4096
EXPERTS = 8


class Model(nn.Module):
    def __init__(self, hidden: int, num_experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(hidden, num_experts, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.router(hidden_states), dim=-1)
        weights, indices = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return torch.zeros_like(probs).scatter(1, indices, weights)


def get_inputs():
    return [torch.randn(TOKENS, HIDDEN)]


def get_init_inputs():
    return [HIDDEN, EXPERTS, 2]
