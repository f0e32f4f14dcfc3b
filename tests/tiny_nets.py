"""Small models shared by several test modules."""

from __future__ import annotations

import torch
from torch import nn


class TinyTransformer(nn.Module):
    """conv → LayerNorm → fc1 → GELU → fc2 (+ residual) → conv: the Linear pattern of a
    transformer block on every pixel."""

    def __init__(self, fc2_bias: bool = True):
        super().__init__()
        self.head, self.norm = nn.Conv2d(3, 16, 3, padding=1), nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16, bias=fc2_bias)
        self.tail = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x):
        f = self.head(x)
        t = f.flatten(2).transpose(1, 2)
        t = t + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(t))))
        return self.tail(t.transpose(1, 2).reshape(f.shape))
