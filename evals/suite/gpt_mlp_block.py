"""GPT-2/3 style pre-LN MLP sub-block: y = x + fc2(gelu_tanh(fc1(LayerNorm(x)))), FFN = 4 * HIDDEN."""
import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 1
SEQ = 2048
HIDDEN = 4096


class Model(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, eps=1e-5)
        with torch.no_grad():
            self.norm.weight.add_(0.1 * torch.randn(hidden))
            self.norm.bias.add_(0.1 * torch.randn(hidden))
        self.fc1 = nn.Linear(hidden, 4 * hidden, bias=True)
        self.fc2 = nn.Linear(4 * hidden, hidden, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x)), approximate="tanh"))


def get_inputs():
    return [torch.randn(BATCH, SEQ, HIDDEN)]


def get_init_inputs():
    return [HIDDEN]
