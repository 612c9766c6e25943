"""End-to-end Switch-Transformer style MoE layer, top-1 gating, written in dense masked form.

x [BATCH, SEQ, HIDDEN] -> tokens [T, HIDDEN]; router Linear (no bias) -> softmax -> argmax expert per token;
dense gate matrix [T, EXPERTS] = router prob where (argmax == expert id), else 0 (no renormalization). Every expert
(ReLU MLP, stacked weights) runs on every token; outputs are combined with the gate weights.
"""
import torch
import torch.nn as nn

BATCH = 4
SEQ = 1024
HIDDEN = 1024
FFN = 4096
EXPERTS = 8


class Model(nn.Module):
    def __init__(self, hidden: int, ffn: int, num_experts: int):
        super().__init__()
        self.num_experts = num_experts
        self.router = nn.Linear(hidden, num_experts, bias=False)
        self.w_in = nn.Parameter(torch.randn(num_experts, hidden, ffn) * hidden ** -0.5)
        self.w_out = nn.Parameter(torch.randn(num_experts, ffn, hidden) * ffn ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        tokens = x.reshape(batch * seq, hidden)
        probs = torch.softmax(self.router(tokens), dim=-1)  # [T, E]
        choice = torch.argmax(probs, dim=-1)  # [T]
        expert_ids = torch.arange(self.num_experts, device=x.device)
        gates = torch.where(choice.unsqueeze(-1) == expert_ids, probs, torch.zeros_like(probs))  # [T, E]
        h = torch.relu(torch.matmul(tokens, self.w_in))  # [E, T, FFN]
        expert_out = torch.matmul(h, self.w_out)  # [E, T, HIDDEN]
        out = (gates.t().unsqueeze(-1) * expert_out).sum(dim=0)
        return out.reshape(batch, seq, hidden)


def get_inputs():
    return [torch.randn(BATCH, SEQ, HIDDEN)]


def get_init_inputs():
    return [HIDDEN, FFN, EXPERTS]
