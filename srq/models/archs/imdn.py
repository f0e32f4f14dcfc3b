"""IMDN: Information Multi-Distillation Network (Hui et al., ACM MM 2019)."""

import torch
import torch.nn as nn


def _conv(in_ch: int, out_ch: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, k, padding=k // 2, bias=True)


class ContrastChannelAttention(nn.Module):
    """Contrast-aware channel attention: gate from per-channel (std + mean)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).pow(0.5)
        return x * self.conv_du(std + mean)


class IMDB(nn.Module):
    """Information multi-distillation block with progressive channel splits."""

    def __init__(self, channels: int = 64, distill_rate: float = 0.25):
        super().__init__()
        self.distilled = int(channels * distill_rate)
        self.remaining = channels - self.distilled
        self.c1 = _conv(channels, channels, 3)
        self.c2 = _conv(self.remaining, channels, 3)
        self.c3 = _conv(self.remaining, channels, 3)
        self.c4 = _conv(self.remaining, self.distilled, 3)
        self.act = nn.LeakyReLU(0.05)
        self.c5 = _conv(self.distilled * 4, channels, 1)
        self.cca = ContrastChannelAttention(self.distilled * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = (self.distilled, self.remaining)
        d1, r1 = torch.split(self.act(self.c1(x)), split, dim=1)
        d2, r2 = torch.split(self.act(self.c2(r1)), split, dim=1)
        d3, r3 = torch.split(self.act(self.c3(r2)), split, dim=1)
        d4 = self.c4(r3)
        fused = torch.cat([d1, d2, d3, d4], dim=1)
        return self.c5(self.cca(fused)) + x


class IMDN(nn.Module):
    """IMDN super-resolution network.

    Input and output are RGB tensors in [0, 1]; output is ``scale`` times larger.
    """

    def __init__(self, scale: int = 4, num_feat: int = 64, num_block: int = 6,
                 in_ch: int = 3, out_ch: int = 3):
        super().__init__()
        self.scale = scale
        self.num_block = num_block
        self.fea_conv = _conv(in_ch, num_feat, 3)
        for i in range(num_block):
            setattr(self, f"IMDB{i + 1}", IMDB(num_feat))
        self.c = nn.Sequential(nn.Conv2d(num_feat * num_block, num_feat, 1), nn.LeakyReLU(0.05))
        self.LR_conv = _conv(num_feat, num_feat, 3)
        self.upsampler = nn.Sequential(
            _conv(num_feat, out_ch * scale * scale, 3),
            nn.PixelShuffle(scale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.fea_conv(x)
        outs = []
        h = fea
        for i in range(self.num_block):
            h = getattr(self, f"IMDB{i + 1}")(h)
            outs.append(h)
        body = self.LR_conv(self.c(torch.cat(outs, dim=1))) + fea
        return self.upsampler(body)
