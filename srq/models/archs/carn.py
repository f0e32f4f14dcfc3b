"""CARN-M: Cascading Residual Network, mobile variant (Ahn et al., ECCV 2018)."""

import torch
from torch import nn
from torch.nn import functional as F

_SCALES = (2, 3, 4)


class _FixedConv1x1(nn.Module):
    """A constant 1×1 convolution (weight and bias are buffers, not parameters): input
    normalisation, never trained or quantized."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias)


class MeanShift(nn.Module):
    """Adds (or subtracts) the per-channel RGB mean: a fixed 1×1 convolution, kept under the
    checkpoint's ``shifter.weight`` / ``shifter.bias`` keys."""

    def __init__(self, rgb_mean, sign: float):
        super().__init__()
        self.shifter = _FixedConv1x1(torch.eye(3).view(3, 3, 1, 1),
                                     sign * torch.tensor(rgb_mean, dtype=torch.float32))

    def forward(self, x):
        return self.shifter(x)


class ConvReLU(nn.Module):
    """1x1 convolution followed by ReLU, used to fuse cascaded features."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1), nn.ReLU())

    def forward(self, x):
        return self.body(x)


class EfficientResidualBlock(nn.Module):
    """Two grouped 3x3 convs and a pointwise conv, with identity skip and ReLU."""

    def __init__(self, num_feat: int, group: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(num_feat, num_feat, 3, padding=1, groups=group),
            nn.ReLU(),
            nn.Conv2d(num_feat, num_feat, 3, padding=1, groups=group),
            nn.ReLU(),
            nn.Conv2d(num_feat, num_feat, 1),
        )
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.body(x) + x)


class CascadingBlock(nn.Module):
    """Local cascade: one shared residual block applied three times, with 1x1 fusions."""

    def __init__(self, num_feat: int, group: int):
        super().__init__()
        self.b1 = EfficientResidualBlock(num_feat, group)
        self.c1 = ConvReLU(2 * num_feat, num_feat)
        self.c2 = ConvReLU(3 * num_feat, num_feat)
        self.c3 = ConvReLU(4 * num_feat, num_feat)

    def forward(self, x):
        cat1 = torch.cat([x, self.b1(x)], dim=1)
        out1 = self.c1(cat1)
        cat2 = torch.cat([cat1, self.b1(out1)], dim=1)
        out2 = self.c2(cat2)
        cat3 = torch.cat([cat2, self.b1(out2)], dim=1)
        return self.c3(cat3)


class UpsampleBranch(nn.Module):
    """Grouped conv + ReLU + pixel shuffle, repeated twice for x4."""

    def __init__(self, num_feat: int, scale: int, group: int):
        super().__init__()
        steps = [3] if scale == 3 else [2] * (scale // 2)
        layers = []
        for r in steps:
            layers += [
                nn.Conv2d(num_feat, r * r * num_feat, 3, padding=1, groups=group),
                nn.ReLU(),
                nn.PixelShuffle(r),
            ]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


class MultiScaleUpsample(nn.Module):
    """Holds the x2/x3/x4 branches of the shared checkpoint; runs the one for `scale`."""

    def __init__(self, num_feat: int, scale: int, group: int):
        super().__init__()
        self.scale = scale
        self.up2 = UpsampleBranch(num_feat, 2, group)
        self.up3 = UpsampleBranch(num_feat, 3, group)
        self.up4 = UpsampleBranch(num_feat, 4, group)

    def forward(self, x):
        if self.scale == 2:
            return self.up2(x)
        if self.scale == 3:
            return self.up3(x)
        return self.up4(x)


class CARNM(nn.Module):
    """CARN-M. Input and output: RGB in [0, 1], shape (N, 3, H, W) -> (N, 3, sH, sW)."""

    def __init__(
        self,
        scale: int = 2,
        num_feat: int = 64,
        group: int = 4,
        rgb_mean=(0.4488, 0.4371, 0.4040),
    ):
        super().__init__()
        if scale not in _SCALES:
            raise ValueError(f"CARN-M supports scales {_SCALES}, got {scale}")
        self.scale = scale
        self.sub_mean = MeanShift(rgb_mean, -1.0)
        self.add_mean = MeanShift(rgb_mean, 1.0)
        self.entry = nn.Conv2d(3, num_feat, 3, padding=1)
        self.b1 = CascadingBlock(num_feat, group)
        self.b2 = CascadingBlock(num_feat, group)
        self.b3 = CascadingBlock(num_feat, group)
        self.c1 = ConvReLU(2 * num_feat, num_feat)
        self.c2 = ConvReLU(3 * num_feat, num_feat)
        self.c3 = ConvReLU(4 * num_feat, num_feat)
        self.upsample = MultiScaleUpsample(num_feat, scale, group)
        self.exit = nn.Conv2d(num_feat, 3, 3, padding=1)

    def forward(self, x):
        feat = self.entry(self.sub_mean(x))
        cat1 = torch.cat([feat, self.b1(feat)], dim=1)
        out1 = self.c1(cat1)
        cat2 = torch.cat([cat1, self.b2(out1)], dim=1)
        out2 = self.c2(cat2)
        cat3 = torch.cat([cat2, self.b3(out2)], dim=1)
        out3 = self.c3(cat3)
        return self.add_mean(self.exit(self.upsample(out3)))
