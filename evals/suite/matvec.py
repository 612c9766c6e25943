"""Matrix-vector product (decode-style GEMV): y = W @ x, W [N, K], x [K]."""
import torch
import torch.nn as nn

N = 11008
K = 4096


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(w, x)


def get_inputs():
    return [torch.randn(N, K), torch.randn(K)]


def get_init_inputs():
    return []
