"""MoE tokens-per-expert histogram from top-k expert indices.

indices [TOKENS, TOP_K] int64 in [0, EXPERTS) -> counts [EXPERTS] int64, computed densely
as (indices[..., None] == arange(EXPERTS)).sum over tokens and slots.
"""
import torch
import torch.nn as nn

TOKENS = 4096
TOP_K = 2
EXPERTS = 8


class Model(nn.Module):
    def __init__(self, num_experts: int):
        super().__init__()
        self.num_experts = num_experts

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        experts = torch.arange(self.num_experts, dtype=indices.dtype, device=indices.device)
        hits = indices.unsqueeze(-1) == experts
        return hits.sum(dim=(0, 1))


def get_inputs():
    # top-k indices are distinct per token: take the first TOP_K of a random permutation per row
    return [torch.argsort(torch.rand(TOKENS, EXPERTS), dim=-1)[:, :TOP_K].contiguous()]


def get_init_inputs():
    return [EXPERTS]
