"""End-to-end sparse MoE layer (Mixtral style), top-2 gating, written in dense masked form.

x [BATCH, SEQ, HIDDEN] -> tokens [T, HIDDEN]; router Linear (no bias) -> softmax -> top-2 -> renormalize
-> scatter to a dense gate matrix [T, EXPERTS]. Every expert (SwiGLU MLP, stacked weights) is computed for
every token, and the outputs are combined with the gate weights (zero for unselected experts).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 1
SEQ = 2048
HIDDEN = 2048
FFN = 4096
EXPERTS = 8


class Model(nn.Module):
    def __init__(self, hidden: int, ffn: int, num_experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(hidden, num_experts, bias=False)
        self.w1 = nn.Parameter(torch.randn(num_experts, hidden, ffn) * hidden ** -0.5)
        self.w3 = nn.Parameter(torch.randn(num_experts, hidden, ffn) * hidden ** -0.5)
        self.w2 = nn.Parameter(torch.randn(num_experts, ffn, hidden) * ffn ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        tokens = x.reshape(batch * seq, hidden)
        probs = torch.softmax(self.router(tokens), dim=-1)
        weights, indices = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        gates = torch.zeros_like(probs).scatter(1, indices, weights)  # [T, E]
        h = F.silu(torch.matmul(tokens, self.w1)) * torch.matmul(tokens, self.w3)  # [E, T, FFN]
        expert_out = torch.matmul(h, self.w2)  # [E, T, HIDDEN]
        out = (gates.t().unsqueeze(-1) * expert_out).sum(dim=0)  # [T, HIDDEN]
        return out.reshape(batch, seq, hidden)


def get_inputs():
    return [torch.randn(BATCH, SEQ, HIDDEN)]


def get_init_inputs():
    return [HIDDEN, FFN, EXPERTS, 2]
