"""PAN: Pixel Attention Network (Zhao et al., ECCV-W AIM 2020)."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class PixelAttention(nn.Module):
    """Per-pixel, per-channel sigmoid gate from a 1x1 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.conv(x))


class PAConv(nn.Module):
    """3x3 conv modulated by a pixel-attention gate, followed by another 3x3 conv."""

    def __init__(self, channels: int, k: int = 3):
        super().__init__()
        self.k2 = nn.Conv2d(channels, channels, 1)
        self.sigmoid = nn.Sigmoid()
        self.k3 = nn.Conv2d(channels, channels, k, padding=k // 2, bias=False)
        self.k4 = nn.Conv2d(channels, channels, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.sigmoid(self.k2(x))
        return self.k4(self.k3(x) * gate)


class SCPA(nn.Module):
    """Self-calibrated block with pixel attention: plain 3x3 branch + PAConv branch."""

    def __init__(self, channels: int = 40, reduction: int = 2):
        super().__init__()
        width = channels // reduction
        self.conv1_a = nn.Conv2d(channels, width, 1, bias=False)
        self.conv1_b = nn.Conv2d(channels, width, 1, bias=False)
        self.k1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False))
        self.PAConv = PAConv(width)
        self.conv3 = nn.Conv2d(width * reduction, channels, 1, bias=False)
        self.lrelu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.lrelu(self.k1(self.lrelu(self.conv1_a(x))))
        b = self.lrelu(self.PAConv(self.lrelu(self.conv1_b(x))))
        return self.conv3(torch.cat([a, b], dim=1)) + x


class PAN(nn.Module):
    """PAN super-resolution network.

    Input and output are RGB tensors in [0, 1]; output is ``scale`` times larger.
    Scales 2 and 3 use one nearest-upsample stage, scale 4 uses two x2 stages.
    """

    def __init__(self, scale: int = 4, num_feat: int = 40, up_feat: int = 24,
                 num_block: int = 16, in_ch: int = 3, out_ch: int = 3):
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"PAN supports scale 2, 3 or 4, got {scale}")
        self.scale = scale
        self.conv_first = nn.Conv2d(in_ch, num_feat, 3, padding=1)
        self.SCPA_trunk = nn.Sequential(*[SCPA(num_feat) for _ in range(num_block)])
        self.trunk_conv = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.upconv1 = nn.Conv2d(num_feat, up_feat, 3, padding=1)
        self.att1 = PixelAttention(up_feat)
        self.HRconv1 = nn.Conv2d(up_feat, up_feat, 3, padding=1)
        if scale == 4:
            self.upconv2 = nn.Conv2d(up_feat, up_feat, 3, padding=1)
            self.att2 = PixelAttention(up_feat)
            self.HRconv2 = nn.Conv2d(up_feat, up_feat, 3, padding=1)
        self.conv_last = nn.Conv2d(up_feat, out_ch, 3, padding=1)
        self.lrelu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.conv_first(x)
        fea = fea + self.trunk_conv(self.SCPA_trunk(fea))
        first = 2 if self.scale == 4 else self.scale
        fea = self.upconv1(F.interpolate(fea, scale_factor=first, mode="nearest"))
        fea = self.lrelu(self.HRconv1(self.lrelu(self.att1(fea))))
        if self.scale == 4:
            fea = self.upconv2(F.interpolate(fea, scale_factor=2, mode="nearest"))
            fea = self.lrelu(self.HRconv2(self.lrelu(self.att2(fea))))
        out = self.conv_last(fea)
        base = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return out + base
