"""RDN (Zhang et al., CVPR 2018): residual dense network, G0=64, D=16 blocks, C=8 layers, G=64.

Attribute names follow the public mmagic/mmediting RDN checkpoints (``sfe1``, ``rdbs.i``,
``gff``, ``upscale``, ``output``); input RGB [0, 1], no mean shift.
"""

from __future__ import annotations

import torch
from torch import nn


class DenseLayer(nn.Module):
    """x → cat(x, relu(conv3x3(x))): grows the channels by ``growth``."""

    def __init__(self, in_channels: int, growth: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, growth, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.relu(self.conv(x))), dim=1)


class RDB(nn.Module):
    """Residual dense block: C dense layers, 1×1 local feature fusion, local residual."""

    def __init__(self, channels: int, growth: int, num_layers: int):
        super().__init__()
        self.layers = nn.Sequential(
            *[DenseLayer(channels + i * growth, growth) for i in range(num_layers)]
        )
        self.lff = nn.Conv2d(channels + num_layers * growth, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lff(self.layers(x))


class RDN(nn.Module):
    """Shallow features → D RDBs → global feature fusion + global residual → pixel shuffle."""

    def __init__(self, scale: int = 4, num_feat: int = 64, num_block: int = 16,
                 num_layer: int = 8, growth: int = 64, in_ch: int = 3, out_ch: int = 3):
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"RDN supports scales 2, 3, 4, not {scale}")
        self.sfe1 = nn.Conv2d(in_ch, num_feat, 3, padding=1)
        self.sfe2 = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.rdbs = nn.ModuleList([RDB(num_feat, growth, num_layer) for _ in range(num_block)])
        self.gff = nn.Sequential(nn.Conv2d(num_block * num_feat, num_feat, 1),
                                 nn.Conv2d(num_feat, num_feat, 3, padding=1))
        if scale == 4:
            self.upscale = nn.Sequential(
                nn.Conv2d(num_feat, num_feat * 4, 3, padding=1), nn.PixelShuffle(2),
                nn.Conv2d(num_feat, num_feat * 4, 3, padding=1), nn.PixelShuffle(2))
        else:
            self.upscale = nn.Sequential(
                nn.Conv2d(num_feat, num_feat * scale * scale, 3, padding=1), nn.PixelShuffle(scale))
        self.output = nn.Conv2d(num_feat, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.sfe1(x)
        out = self.sfe2(f1)
        features = []
        for block in self.rdbs:
            out = block(out)
            features.append(out)
        out = self.gff(torch.cat(features, dim=1)) + f1
        return self.output(self.upscale(out))
