"""Operations that both the architectures and the quantization core need to name.

Mark an attention product in your own model with :class:`MatMul` so that the transformer op
set (``method.ops=transformer``) quantizes both of its operands::

    self.matmul_qk = srq.MatMul()          # in __init__
    attn = self.matmul_qk(q, k.transpose(-2, -1))   # instead of q @ k.transpose(-2, -1)
"""

from __future__ import annotations

import torch
from torch import nn


class MatMul(nn.Module):
    """Matrix product ``a @ b`` as a module, so quantizers can wrap attention's Q·Kᵀ and A·V."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


__all__ = ["MatMul"]
