"""Palettes fitted on layer outputs: the Gram algebra against direct forwards, least squares
against torch.linalg.lstsq, and the palettized model's invariants."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from srq.quant.palette_fit import fit_palette, output_error, output_gram, palettize_on_outputs, refit_luts
from srq.quant.palettize import PalettSpec, palettize, palettize_tensor


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=2), nn.Flatten(2),
                         nn.Linear(64, 32)).eval()


@pytest.mark.parametrize("granularity", ["per_tensor", "per_grouped_channel"])
def test_output_error_from_the_gram_equals_the_direct_forward(granularity):
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = [torch.randn(4, 8, 8, 8), torch.randn(3, 8, 8, 8)]
    with torch.no_grad():
        y = [conv(t) + 0.1 * torch.randn(t.shape[0], 16, 8, 8) for t in x]  # a target the palette cannot hit
    spec = PalettSpec(n_bits=3, granularity=granularity, group_size=4, lut_bits=None, min_numel=0)
    pal = palettize_tensor(conv.weight, spec)
    G, b, rr = output_gram(conv, pal.indices.long(), 8, pal.channels_per_group, x, y)
    assert G.shape == (pal.num_luts(), 8, 8)
    quantized = copy.deepcopy(conv)
    with torch.no_grad():
        quantized.weight.copy_(pal.weight())
        direct = sum(float((quantized(t) - u).double().pow(2).sum()) for t, u in zip(x, y))
    assert output_error(G, b, rr, pal.luts) == pytest.approx(direct, rel=1e-5)


def test_refit_is_the_least_squares_lut_and_never_worse_than_kmeans():
    torch.manual_seed(2)
    lin = nn.Linear(12, 6)
    x = [torch.randn(64, 12)]
    with torch.no_grad():
        y = [lin(x[0]) + 0.05 * torch.randn(64, 6)]
    spec = PalettSpec(n_bits=2, lut_bits=None, min_numel=0)
    pal = palettize_tensor(lin.weight, spec)
    G, b, rr = output_gram(lin, pal.indices.long(), 4, pal.channels_per_group, x, y)
    refit = refit_luts(G, b, pal.luts, ridge=0.0)
    # independent truth: least squares on the design matrix [x @ M_kᵀ]_k against y − bias
    design = torch.stack([(x[0] @ (pal.indices == k).float().T).flatten() for k in range(4)], 1).double()
    target = (y[0] - lin.bias.detach()).flatten().double()
    expected = torch.linalg.lstsq(design, target[:, None]).solution[:, 0]
    assert torch.allclose(refit[0].double(), expected, rtol=1e-4, atol=1e-6)
    assert output_error(G, b, rr, refit) <= output_error(G, b, rr, pal.luts)


def test_palettize_on_outputs_beats_kmeans_on_the_output_and_keeps_the_palette_invariants():
    fp = _net()
    x = [torch.rand(8, 3, 8, 8), torch.rand(8, 3, 8, 8)]
    spec = PalettSpec(n_bits=2, lut_bits=8, min_numel=0)
    plain, fitted = copy.deepcopy(fp), copy.deepcopy(fp)
    palettize(plain, spec)
    palettes, records = palettize_on_outputs(fitted, fp, x, spec, restarts=3, progress=False)
    assert sorted(palettes) == ["0", "2", "4", "6"] and sorted(records) == sorted(palettes)
    assert all(r["restart"] == min(range(3), key=r["relative_errors"].__getitem__) for r in records.values())
    for name, pal in palettes.items():
        module = dict(fitted.named_modules())[name]
        assert torch.equal(module.weight, pal.weight())
        codes = pal.luts / pal.lut_scales[:, None]  # int8 LUT: every entry an integer code
        assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= 128
        assert len(torch.unique(module.weight)) <= 4 * pal.num_luts()
    refit_only = copy.deepcopy(fp)
    palettize_on_outputs(refit_only, fp, x, spec, restarts=1, progress=False)  # same k-means as plain
    with torch.no_grad():
        err = lambda m: sum(float((m(t) - fp(t)).pow(2).mean()) for t in x)  # noqa: E731
        assert err(refit_only) < 0.95 * err(plain)
    with pytest.raises(ValueError, match="copy"):
        palettize_on_outputs(fp, fp, x, spec)


def test_coreai_fit_outputs_is_a_config_switch_and_lowers_the_output_error():
    import srq

    fp = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                       nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1)).eval()
    torch.manual_seed(3)
    x = torch.rand(8, 3, 12, 12)
    results = {}
    for fit in ("weights", "outputs"):
        cfg = srq.config("coreai", bits="wp4", overrides=[f"palett.fit={fit}", "palett.min_numel=0"])
        results[fit] = srq.quantize(fp, cfg, calib=x)
    with torch.no_grad():
        err = {k: float((q(x) - fp(x)).pow(2).mean()) for k, q in results.items()}
    assert err["outputs"] < err["weights"]
    cfg = srq.config("coreai", bits="wp4", overrides=["palett.fit=outputs", "palett.restarts=2",
                                                      "palett.min_numel=0"])
    from srq.methods import run_method
    info = run_method(fp, cfg, x).info["palette_fit"]
    assert info["restarts"] == 2 and sorted(info["layers"]) == ["0", "2", "4"]
    assert all(len(r["relative_errors"]) == 2 for r in info["layers"].values())
