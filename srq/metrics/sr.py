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
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

_Y_WEIGHTS = (65.481, 128.553, 24.966)


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
    dims = (1, 2, 3)
    psnr_y = peak_signal_noise_ratio(sr_y, hr_y, data_range=255.0, reduction="none", dim=dims)
    psnr_rgb = peak_signal_noise_ratio(sr_rgb, hr_rgb, data_range=255.0, reduction="none", dim=dims)
    _, ssim_map = structural_similarity_index_measure(
        sr_y, hr_y, data_range=255.0, kernel_size=11, sigma=1.5, reduction="none",
        return_full_image=True,
    )
    # torchmetrics reflect-pads; BasicSR averages only the valid (un-padded) 5-pixel interior
    ssim_y = _crop(ssim_map, 5).mean(dim=dims)
    return {"psnr_y": psnr_y, "ssim_y": ssim_y, "psnr_rgb": psnr_rgb}


def summarize(values: dict[str, list[float]]) -> dict[str, float | int]:
    """Mean of each per-image metric (PSNR averaged per image, as the literature does)."""
    out: dict[str, float | int] = {}
    n = 0
    for key, vals in values.items():
        n = len(vals)
        out[key] = float(sum(vals) / n) if n else math.nan
    out["n_images"] = n
    return out
