"""Small building blocks shared by several architectures."""

from __future__ import annotations

import torch
from torch import nn


class MatMul(nn.Module):
    """Matrix product ``a @ b`` as a module, so quantizers can wrap attention's Q·Kᵀ and A·V."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b
