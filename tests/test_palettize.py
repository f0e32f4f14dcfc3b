"""K-means palettization: clustering on known data, int8 LUTs, sizes, sensitive k-means."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from srq.quant.palettize import (
    PalettSpec,
    kmeans_1d,
    palettize,
    palettize_tensor,
    quantize_lut,
)
from srq.quant.size import quantized_size_mb


def test_kmeans_recovers_separated_clusters():
    x = torch.tensor([0.0, 0.1, 1.0, 1.1, 10.0, 10.2])
    centroids, idx = kmeans_1d(x, 3)
    assert torch.allclose(centroids, torch.tensor([0.05, 1.05, 10.1]))
    assert idx.tolist() == [0, 0, 1, 1, 2, 2]


def test_weighted_kmeans_moves_to_the_heavy_points():
    x = torch.tensor([0.0, 1.0, 5.0])
    centroids, _ = kmeans_1d(x, 2, weights=torch.tensor([1.0, 3.0, 1.0]))
    assert centroids[0].item() == pytest.approx(0.75)  # (0·1 + 1·3)/4


def test_kmeans_on_uniform_data_is_lloyd_max():
    x = torch.linspace(0, 1, 40001)
    centroids, _ = kmeans_1d(x, 4)
    assert torch.allclose(centroids, torch.tensor([0.125, 0.375, 0.625, 0.875]), atol=2e-3)


def test_kmeans_is_deterministic():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(kmeans_1d(x, 16)[0], kmeans_1d(x.clone(), 16)[0])


def test_lut_quantization_is_int8_symmetric():
    lut = torch.tensor([-0.51, -0.1, 0.02, 0.3])
    q, scale = quantize_lut(lut)
    assert scale.item() == pytest.approx(0.51 / 127.5)
    codes = q / scale
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.min() >= -128 and codes.max() <= 127


@pytest.mark.parametrize("n_bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel", "per_grouped_channel"])
def test_palettized_weights_use_at_most_2n_int8_values_per_lut(n_bits, granularity):
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(n_bits))
    palette = palettize_tensor(w, PalettSpec(n_bits=n_bits, granularity=granularity, group_size=4))
    rec = palette.weight()
    groups = {"per_tensor": 1, "per_channel": 16, "per_grouped_channel": 4}[granularity]
    assert palette.num_luts() == groups
    for g, rows in enumerate(rec.split(16 // groups, dim=0)):
        assert rows.unique().numel() <= 2**n_bits
        codes = rows / palette.lut_scales[g]
        assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.abs().max() <= 128
    assert (rec - w).pow(2).mean() < w.var() / 2 ** (1.5 * n_bits)


def test_palettized_model_size():
    net = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Conv2d(32, 8, 3), nn.Conv2d(8, 8, 1))
    done = palettize(net, PalettSpec(n_bits=4))
    assert list(done) == ["0", "1"]  # the 64-weight 1x1 conv is below min_numel
    n_w = 16 * 32 * 9 + 32 * 8 * 9
    fp_rest = 4 * (32 + 8 + 8 * 8 + 8)  # biases and the FP layer
    assert quantized_size_mb(net) * 1e6 == pytest.approx(n_w / 2 + 2 * (16 + 4) + fp_rest)


def test_sensitive_kmeans_protects_sensitive_weights():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 64, 3, 3, generator=gen)
    h = torch.ones_like(w)
    h[0] = 1000.0  # channel 0 matters most
    plain = palettize_tensor(w, PalettSpec(n_bits=2, lut_bits=None)).weight()
    skm = palettize_tensor(w, PalettSpec(n_bits=2, lut_bits=None), sensitivity=h).weight()
    err = lambda rec: (rec - w).pow(2)  # noqa: E731
    assert (err(skm) * h).sum() < (err(plain) * h).sum()
    assert err(skm)[0].mean() < err(plain)[0].mean()
