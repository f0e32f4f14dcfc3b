"""A uniform interface around SR networks with different input conventions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srq.metrics.sr import rgb_to_y


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """(N,3,H,W) RGB [0,1] → BT.601 studio-range YCbCr, each channel in [0,1] (Y in [16,235]/255)."""
    r, g, b = rgb.unbind(-3)
    y = rgb_to_y(rgb * 255.0).squeeze(-3) / 255.0
    cb = (-37.797 * r - 74.203 * g + 112.0 * b + 128.0) / 255.0
    cr = (112.0 * r - 93.786 * g - 18.214 * b + 128.0) / 255.0
    return torch.stack((y, cb, cr), dim=-3)


def ycbcr_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycbcr` (BT.601 studio range, ``basicsr.utils.ycbcr2rgb``)."""
    y, cb, cr = (ycc * 255.0).unbind(-3)
    r = 0.00456621 * y + 0.00625893 * cr - 0.87420242
    g = 0.00456621 * y - 0.00153632 * cb - 0.00318811 * cr + 0.53166827
    b = 0.00456621 * y + 0.00791071 * cb - 1.08563100
    return torch.stack((r, g, b), dim=-3)


class SRNet(nn.Module):
    """RGB [0, 1] LR (N,3,h,w) → RGB [0, 1] SR (N,3,sh,sw) around ``net``.

    ``color``: ``rgb`` (net sees RGB × ``input_range``), ``y`` (net sees the LR's Y and
    CbCr comes from bicubic upsampling), ``y_upsampled`` (net sees the Y of the bicubic
    upsampled LR, VDSR-style). ``pad_multiple``: reflect-pad bottom/right so H, W are
    multiples of it and crop the output back (for nets that do not pad themselves).
    The output is not clamped; evaluation clamps and rounds.
    """

    def __init__(self, net: nn.Module, scale: int, input_range: float = 1.0, color: str = "rgb",
                 pad_multiple: int = 1):
        super().__init__()
        if color not in ("rgb", "y", "y_upsampled"):
            raise ValueError(f"color must be rgb, y or y_upsampled, not {color!r}")
        self.net = net
        self.scale = scale
        self.input_range = float(input_range)
        self.color = color
        self.pad_multiple = pad_multiple

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        m = self.pad_multiple
        h, w = x.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        if ph == 0 and pw == 0:
            return x
        return F.pad(x, (0, pw, 0, ph), mode="reflect")

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        out = self.net(self._pad(x) * self.input_range) / self.input_range
        return out[..., : h * self.scale, : w * self.scale]

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        if self.color == "rgb":
            return self._run(lr)
        upsampled = bicubic_upsample(lr, self.scale)
        ycc = rgb_to_ycbcr(upsampled)
        if self.color == "y":
            y = self._run(rgb_to_ycbcr(lr)[:, :1])
        else:
            y = self.net(ycc[:, :1] * self.input_range) / self.input_range
        return ycbcr_to_rgb(torch.cat((y, ycc[:, 1:]), dim=1))


def bicubic_upsample(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """MATLAB-compatible bicubic upsampling of a float (N, C, h, w) batch (no rounding)."""
    from srq.data.images import imresize

    # basicsr's imresize builds its weights on the CPU
    return torch.stack([imresize(img.cpu(), float(scale)) for img in lr]).to(lr)
