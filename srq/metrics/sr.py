"""SR image quality exactly as BasicSR's ``calculate_psnr`` / ``calculate_ssim`` compute it.

Protocol: SR output clamped to [0, 1] and rounded to uint8; Y channel of BT.601 YCbCr
(studio range) Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 for R, G, B in [0, 255];
``scale`` pixels cropped at every border; PSNR = 10 log10(255² / MSE) per image, then
averaged over the set (never pooled over pixels of all images). SSIM uses an 11×11
Gaussian window (σ = 1.5) over the valid region, on the unrounded Y.
"""

from __future__ import annotations

import math

import torch

_Y_WEIGHTS = (65.481, 128.553, 24.966)
_SSIM_C1, _SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 255] → (N, 1, H, W) BT.601 Y in [16, 235]."""
    r, g, b = img.unbind(-3)
    y = (_Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b) / 255.0 + 16.0
    return y.unsqueeze(-3)


def _crop(img: torch.Tensor, border: int) -> torch.Tensor:
    return img[..., border:-border, border:-border] if border > 0 else img


def sr_image_metrics(sr: torch.Tensor, hr: torch.Tensor, scale: int,
                     y_output: bool = False) -> dict[str, torch.Tensor]:
    """Per-image ``psnr_y``, ``ssim_y``, ``psnr_rgb`` (each a length-N float64 tensor).

    ``sr``: (N, 3, H, W) float in [0, 1] (clamped and rounded here) or uint8;
    ``hr``: (N, 3, H, W) uint8 (or float already in [0, 255] integer values).
    ``y_output``: the network predicts only Y (FSRCNN, VDSR; ``sr`` is that Y recombined
    with bicubic CbCr): the Y-metrics then round the predicted Y itself,
    Y_sr = round(255 · clamp(Y/255, 0, 1)), as those models are evaluated, not Y of rounded RGB.
    """
    if sr.shape != hr.shape:
        raise ValueError(f"SR shape {tuple(sr.shape)} != HR shape {tuple(hr.shape)}")
    if sr.dtype == torch.uint8:
        sr255 = sr.double()
    else:
        # float32 like BasicSR's tensor2img: rounding ties depend on the precision
        sr255 = (sr.float().clamp(0, 1) * 255.0).round().double()
    hr255 = hr.double()
    if y_output and sr.dtype != torch.uint8:
        sr_y = (rgb_to_y(sr.double() * 255.0).clamp(0, 255)).round()
    else:
        sr_y = rgb_to_y(sr255)
    sr_y, hr_y = _crop(sr_y, scale), _crop(rgb_to_y(hr255), scale)
    sr_rgb, hr_rgb = _crop(sr255, scale), _crop(hr255, scale)
    return {"psnr_y": psnr(sr_y, hr_y), "ssim_y": ssim(sr_y, hr_y), "psnr_rgb": psnr(sr_rgb, hr_rgb)}


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR = 10 log10(255² / mean((a − b)²)) over (C, H, W); (N,) float64."""
    mse = (a.double() - b.double()).pow(2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(255.0 ** 2 / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def _blur(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Valid-mode correlation with the 11-tap Gaussian along ``dim``:
    y_i = g_5 x_{i+5} + Σ_{k<5} g_k (x_{i+k} + x_{i+10−k})."""
    g = [float(v) for v in _gaussian_1d()]
    n = x.shape[dim] - 10
    out = x.narrow(dim, 5, n) * g[5]
    for k in range(5):
        out.add_(x.narrow(dim, k, n) + x.narrow(dim, 10 - k, n), alpha=g[k])
    return out


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of (N, 1, H, W) images in [0, 255] (float64), as BasicSR's ``_ssim``:
    11×11 Gaussian window (σ = 1.5) over the valid region only,
    SSIM = mean[(2μ_aμ_b + C1)(2σ_ab + C2) / ((μ_a² + μ_b² + C1)(σ_a² + σ_b² + C2))],
    C1 = (0.01·255)², C2 = (0.03·255)². The window is separable and symmetric (w = g gᵀ,
    g_k = g_{10−k}), so each local mean is two 1-D passes of 6 multiply-adds per pixel."""
    a, b = a.double(), b.double()
    maps = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    mu_a, mu_b, aa, bb, ab = _blur(_blur(maps, -2), -1).unbind(1)
    var_a, var_b, cov = aa - mu_a ** 2, bb - mu_b ** 2, ab - mu_a * mu_b
    num = (2 * mu_a * mu_b + _SSIM_C1) * (2 * cov + _SSIM_C2)
    den = (mu_a ** 2 + mu_b ** 2 + _SSIM_C1) * (var_a + var_b + _SSIM_C2)
    return (num / den).mean(dim=(1, 2))


def summarize(values: dict[str, list[float]]) -> dict[str, float | int]:
    """Mean of each per-image metric (PSNR averaged per image, as the literature does)."""
    out: dict[str, float | int] = {}
    n = 0
    for key, vals in values.items():
        n = len(vals)
        out[key] = float(sum(vals) / n) if n else math.nan
    out["n_images"] = n
    return out
