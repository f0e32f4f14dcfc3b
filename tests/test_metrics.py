"""srq's metrics against BasicSR's calculate_psnr/calculate_ssim (the oracle)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from basicsr.metrics import calculate_psnr, calculate_ssim

from srq.data.benchmark import benchmark_set
from srq.data.images import modcrop, to_uint8
from srq.metrics import rgb_to_y, sr_image_metrics
from srq.models.wrapper import bicubic_upsample


def _bgr(img: torch.Tensor) -> np.ndarray:
    """(3,H,W) uint8 RGB tensor → HWC uint8 BGR array, as cv2.imread gives BasicSR."""
    return np.ascontiguousarray(img.permute(1, 2, 0).numpy()[..., ::-1])


def _oracle(sr_u8: torch.Tensor, hr_u8: torch.Tensor, scale: int) -> tuple[float, float, float]:
    s, h = _bgr(sr_u8), _bgr(hr_u8)
    return (calculate_psnr(s, h, scale, test_y_channel=True),
            calculate_ssim(s, h, scale, test_y_channel=True),
            calculate_psnr(s, h, scale, test_y_channel=False))


def _check(sr: torch.Tensor, hr: torch.Tensor, scale: int) -> None:
    ours = sr_image_metrics(sr[None], hr[None], scale)
    psnr_y, ssim_y, psnr_rgb = _oracle(to_uint8(sr), hr, scale)
    assert ours["psnr_y"].item() == pytest.approx(psnr_y, abs=1e-4)
    assert ours["ssim_y"].item() == pytest.approx(ssim_y, abs=1e-5)
    assert ours["psnr_rgb"].item() == pytest.approx(psnr_rgb, abs=1e-4)


@pytest.mark.parametrize("set_name,scale", [("Set5", 4), ("Set14", 3), ("Set14", 2)])
def test_real_images_match_basicsr(data_dir, set_name, scale):
    """Bicubic-upsampled benchmark LR against HR (bridge.png in Set14 is greyscale)."""
    for _, lr, hr in list(benchmark_set(set_name, scale))[:5]:
        sr = bicubic_upsample(lr[None].float() / 255, scale)[0]
        _check(sr, hr, scale)


@pytest.mark.parametrize("seed", range(4))
def test_noisy_images_match_basicsr(seed):
    gen = torch.Generator().manual_seed(seed)
    hr = torch.randint(0, 256, (3, 61, 47), generator=gen, dtype=torch.uint8)
    sr = hr.float() / 255 + 0.03 * torch.randn(3, 61, 47, generator=gen)
    _check(sr, hr, scale=3)


def test_identical_images():
    hr = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    ours = sr_image_metrics(hr[None].float() / 255, hr[None], 2)
    assert math.isinf(ours["psnr_y"].item()) and math.isinf(ours["psnr_rgb"].item())
    assert ours["ssim_y"].item() == pytest.approx(1.0, abs=1e-12)


def test_grey_images():
    """Constant grey images: off by exactly one level everywhere → PSNR = 20·log10(255/ΔY)."""
    hr = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    sr = torch.full((3, 32, 32), 129 / 255)
    ours = sr_image_metrics(sr[None], hr[None], 2)
    dy = (65.481 + 128.553 + 24.966) / 255  # Y step of a one-level grey change
    assert ours["psnr_y"].item() == pytest.approx(20 * math.log10(255 / dy), abs=1e-5)
    assert ours["psnr_rgb"].item() == pytest.approx(20 * math.log10(255), abs=1e-5)
    _check(sr, hr, 2)


def test_size_not_divisible_by_scale():
    """Odd-sized HR is modcropped; the metric then equals the oracle on the cropped pair."""
    gen = torch.Generator().manual_seed(1)
    hr = modcrop(torch.randint(0, 256, (3, 50, 43), generator=gen, dtype=torch.uint8), 4)
    assert hr.shape[-2:] == (48, 40)
    sr = hr.float() / 255 + 0.02 * torch.randn(hr.shape, generator=gen)
    _check(sr, hr, 4)


def test_y_is_bt601_studio_range():
    white = torch.full((1, 3, 1, 1), 255.0)
    black = torch.zeros(1, 3, 1, 1)
    assert rgb_to_y(white).item() == pytest.approx(235.0, abs=1e-3)
    assert rgb_to_y(black).item() == pytest.approx(16.0)


def test_per_image_mean_not_pooled():
    """The set PSNR is the mean of per-image PSNRs: two images with different MSE."""
    from srq.metrics import summarize

    hr = torch.full((2, 3, 16, 16), 100, dtype=torch.uint8)
    sr = hr.float() / 255
    sr[0] += 1 / 255
    sr[1] += 4 / 255
    per_image = sr_image_metrics(sr, hr, 1)["psnr_y"].tolist()
    assert per_image[0] - per_image[1] == pytest.approx(20 * math.log10(4), abs=1e-5)
    assert summarize({"psnr_y": per_image})["psnr_y"] == pytest.approx(sum(per_image) / 2)
