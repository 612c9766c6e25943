"""MoE router top-k: softmax over router logits, then top-k expert weights and indices.

Returns (topk_weights [TOKENS, k] float32, topk_indices [TOKENS, k] int64).
"""
import torch
import torch.nn as nn

TOKENS = 4096
EXPERTS = 8


class Model(nn.Module):
    def __init__(self, top_k: int):
        super().__init__()
        self.top_k = top_k

    def forward(self, router_logits: torch.Tensor):
        probs = torch.softmax(router_logits, dim=-1)
        weights, indices = torch.topk(probs, self.top_k, dim=-1)
        return weights, indices


def get_inputs():
    return [torch.randn(TOKENS, EXPERTS)]


def get_init_inputs():
    return [2]
