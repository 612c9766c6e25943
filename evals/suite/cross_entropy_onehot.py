"""Cross-entropy with one-hot float targets: -(log_softmax(logits) * onehot).sum(-1).mean()."""
import torch
import torch.nn as nn

TOKENS = 2048
VOCAB = 32000


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, logits: torch.Tensor, onehot_targets: torch.Tensor) -> torch.Tensor:
        return -(torch.log_softmax(logits, dim=-1) * onehot_targets).sum(dim=-1).mean()


def get_inputs():
    logits = torch.randn(TOKENS, VOCAB)
    targets = torch.randint(0, VOCAB, (TOKENS,))
    onehot = torch.zeros(TOKENS, VOCAB).scatter_(1, targets.unsqueeze(1), 1.0)
    return [logits, onehot]


def get_init_inputs():
    return []
