"""RFDN: Residual Feature Distillation Network (Liu et al., ECCV-W AIM 2020)."""

import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv(in_ch: int, out_ch: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, k, padding=k // 2, bias=True)


class ESA(nn.Module):
    """Enhanced spatial attention: strided conv + max-pool branch, bilinear back, sigmoid mask."""

    def __init__(self, channels: int):
        super().__init__()
        f = channels // 4
        self.conv1 = nn.Conv2d(channels, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv_max = nn.Conv2d(f, f, 3, padding=1)
        self.conv2 = nn.Conv2d(f, f, 3, stride=2, padding=0)
        self.conv3 = nn.Conv2d(f, f, 3, padding=1)
        self.conv3_ = nn.Conv2d(f, f, 3, padding=1)
        self.conv4 = nn.Conv2d(f, channels, 1)
        self.relu = nn.ReLU()
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.conv1(x)
        low = F.max_pool2d(self.conv2(reduced), kernel_size=7, stride=3)
        low = self.relu(self.conv_max(low))
        low = self.conv3_(self.relu(self.conv3(low)))
        low = F.interpolate(low, size=x.shape[2:], mode="bilinear", align_corners=False)
        mask = self.sigmoid(self.conv4(low + self.conv_f(reduced)))
        return x * mask


class RFDB(nn.Module):
    """Residual feature distillation block: 1x1 distillation taps off shallow residual 3x3 convs."""

    def __init__(self, channels: int = 50):
        super().__init__()
        dc = channels // 2
        self.c1_d = _conv(channels, dc, 1)
        self.c1_r = _conv(channels, channels, 3)
        self.c2_d = _conv(channels, dc, 1)
        self.c2_r = _conv(channels, channels, 3)
        self.c3_d = _conv(channels, dc, 1)
        self.c3_r = _conv(channels, channels, 3)
        self.c4 = _conv(channels, dc, 3)
        self.act = nn.LeakyReLU(0.05)
        self.c5 = _conv(dc * 4, channels, 1)
        self.esa = ESA(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.act(self.c1_d(x))
        r1 = self.act(self.c1_r(x) + x)
        d2 = self.act(self.c2_d(r1))
        r2 = self.act(self.c2_r(r1) + r1)
        d3 = self.act(self.c3_d(r2))
        r3 = self.act(self.c3_r(r2) + r2)
        d4 = self.act(self.c4(r3))
        return self.esa(self.c5(torch.cat([d1, d2, d3, d4], dim=1)))


class RFDN(nn.Module):
    """RFDN super-resolution network (AIM 2020 efficient-SR configuration).

    Input and output are RGB tensors in [0, 255]; output is ``scale`` times larger.
    """

    def __init__(self, scale: int = 4, num_feat: int = 50, num_block: int = 4,
                 in_ch: int = 3, out_ch: int = 3):
        super().__init__()
        self.scale = scale
        self.num_block = num_block
        self.fea_conv = _conv(in_ch, num_feat, 3)
        for i in range(num_block):
            setattr(self, f"B{i + 1}", RFDB(num_feat))
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
            h = getattr(self, f"B{i + 1}")(h)
            outs.append(h)
        body = self.LR_conv(self.c(torch.cat(outs, dim=1))) + fea
        return self.upsampler(body)
