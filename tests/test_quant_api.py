"""Observers on known tensors; the quantize → calibration_mode → freeze flow on real models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from srq.models.zoo import build_model
from srq.quant import (
    QuantFormat,
    QuantSpec,
    calibration_mode,
    freeze,
    quantization_map,
    quantize,
    quantizers,
)
from srq.quant.modules import QuantConv2d
from srq.quant.observers import (
    EMAMinMaxObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
)
from srq.quant.size import fp32_size_mb, quantized_size_mb

W8 = QuantFormat(8, "narrow", axis=0)
A8 = QuantFormat(8, "free")


def test_minmax_observer_over_batches():
    obs = MinMaxObserver()
    obs(torch.tensor([1.0, -2.0, 3.0]))
    obs(torch.tensor([0.5, 4.0]))
    lo, hi = obs.compute_bounds()
    assert (lo.item(), hi.item()) == (-2.0, 4.0)


def test_per_channel_and_symmetric_minmax():
    x = torch.tensor([[1.0, -5.0], [2.0, 3.0]])
    obs = MinMaxObserver(axis=0)
    obs(x)
    lo, hi = obs.compute_bounds()
    assert lo.flatten().tolist() == [-5.0, 2.0] and hi.flatten().tolist() == [1.0, 3.0]
    sym = MinMaxObserver(axis=0, symmetric=True)
    sym(x)
    assert sym.compute_bounds()[1].flatten().tolist() == [5.0, 3.0]


def test_ema_observer_known_sequence():
    """l₁ = min x₁, then l_i = β l_{i−1} + (1−β) min x_i (β = 0.9)."""
    obs = EMAMinMaxObserver(beta=0.9)
    for lo, hi in [(-1.0, 1.0), (-3.0, 5.0), (0.0, 2.0)]:
        obs(torch.tensor([lo, hi]))
    exp_lo = 0.9 * (0.9 * -1 + 0.1 * -3) + 0.1 * 0
    exp_hi = 0.9 * (0.9 * 1 + 0.1 * 5) + 0.1 * 2
    lo, hi = obs.compute_bounds()
    assert lo.item() == pytest.approx(exp_lo) and hi.item() == pytest.approx(exp_hi)


def test_moving_average_constant():
    obs = MovingAverageMinMaxObserver(averaging_constant=0.01)
    obs(torch.tensor([0.0, 10.0]))
    obs(torch.tensor([0.0, 20.0]))
    assert obs.compute_bounds()[1].item() == pytest.approx(0.99 * 10 + 0.01 * 20)


def test_percentile_observer():
    x = torch.arange(101, dtype=torch.float32)  # 0..100: P1 = 1, P99 = 99
    obs = PercentileObserver(p=1.0)
    obs(x)
    lo, hi = obs.compute_bounds()
    assert (lo.item(), hi.item()) == (1.0, 99.0)


def test_mse_observer_clips_an_outlier():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(10_000, generator=gen), torch.tensor([60.0])])
    obs = MSEObserver(bits=4, mode="free", candidates=100)
    obs(x)
    lo, hi = obs.compute_bounds()
    assert hi < 30 and lo > x.min()
    minmax = MinMaxObserver()
    minmax(x)
    from srq.quant.primitives import fake_quantize

    def err(b):
        return (fake_quantize(x, *b, 4, "free") - x).pow(2).mean()
    assert err((lo, hi)) < err(minmax.compute_bounds())


def test_observer_rejects_nan():
    with pytest.raises(FloatingPointError, match="NaN/inf"):
        MinMaxObserver()(torch.tensor([1.0, float("nan")]))


def test_unsupported_bit_width():
    with pytest.raises(ValueError, match="unsupported bit-width 1"):
        QuantFormat(1)


def _calibrated(name="imdn_x4", spec=QuantSpec(W8, A8), **kw):
    torch.manual_seed(0)
    model = build_model(name, pretrained=False)
    x = torch.rand(2, 3, 24, 24)
    quantize(model, spec, example_input=x[:1], **kw)
    with calibration_mode(model), torch.no_grad():
        model(x)
    return model, x


def test_quantize_wraps_exactly_the_selected_modules():
    model = build_model("imdn_x4", pretrained=False)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    quantize(model, QuantSpec(W8, A8), include=["net.IMDB1.*", "net.IMDB2.*"],
             exclude=["*.cca.*"])
    wrapped = sorted(quantization_map(model))
    expected = sorted(n for n in convs if n.startswith(("net.IMDB1.", "net.IMDB2."))
                      and ".cca." not in n)
    assert wrapped == expected and len(wrapped) == 10
    assert all(isinstance(dict(model.named_modules())[n], QuantConv2d) for n in wrapped)
    quantize(model, QuantSpec(W8, A8))  # a second call wraps the rest, never twice
    assert len(quantization_map(model)) == len(convs)


def test_first_and_last_layers_follow_the_policy():
    spec = QuantSpec(QuantFormat(4, "two_bound"), QuantFormat(4))
    model, _ = _calibrated(spec=spec)
    qmap = quantization_map(model)
    names = list(qmap)
    assert names[0] == "net.fea_conv" and names[-1] == "net.upsampler.0"
    for edge in (names[0], names[-1]):
        assert qmap[edge]["weight"].startswith("int8") and qmap[edge]["input"].startswith("int8")
    assert qmap["net.IMDB3.c2"]["weight"].startswith("int4")
    fp_model, _ = _calibrated(spec=QuantSpec(QuantFormat(4, "two_bound"), QuantFormat(4),
                                             layer_policy="first_last_fp"))
    assert "net.fea_conv" not in quantization_map(fp_model)


def test_no_fake_quantization_inside_calibration_mode():
    torch.manual_seed(0)
    model = build_model("pan_x4", pretrained=False)
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        reference = model(x)
    quantize(model, QuantSpec(QuantFormat(2, "two_bound"), QuantFormat(2)))
    with calibration_mode(model), torch.no_grad():
        inside = model(x)
    with torch.no_grad():
        after = model(x)
    assert torch.equal(inside, reference)
    assert not torch.allclose(after, reference, atol=1e-3)


def test_freeze_is_deterministic_and_saves_to_the_same_output(tmp_path):
    model, x = _calibrated()
    freeze(model)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    assert all(not q.hi.requires_grad for _, q in quantizers(model))
    path = tmp_path / "q.pth"
    torch.save(model.state_dict(), path)
    fresh = build_model("imdn_x4", pretrained=False)
    quantize(fresh, QuantSpec(W8, A8), example_input=x[:1])
    fresh.load_state_dict(torch.load(path), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x), a)


def test_sizes():
    model, _ = _calibrated()
    fp32, quant = fp32_size_mb(model), quantized_size_mb(model)
    assert quant < fp32 / 3.5
    n_w = sum(m.module.weight.numel() for m in model.modules() if isinstance(m, QuantConv2d))
    channels = sum(m.module.weight.shape[0] for m in model.modules() if isinstance(m, QuantConv2d))
    params = sum(p.numel() for n, p in model.named_parameters() if "quantizer" not in n)
    expected = (4 * (params - n_w) + n_w + 4 * channels) / 1e6  # METHODS §3.5, W8 per-channel
    assert quant == pytest.approx(expected)


def test_constant_activation_is_a_safe_fallback():
    """A layer whose input is constant (zero range) gets a widened range, not NaN."""
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 3, 1))
    quantize(conv, QuantSpec(W8, A8, layer_policy="all"))
    x = torch.zeros(1, 3, 8, 8)
    with calibration_mode(conv), torch.no_grad():
        conv(x)
    with torch.no_grad():
        out = conv(x)
    assert torch.isfinite(out).all()


def test_uncalled_layer_is_reported():
    net = nn.ModuleDict({"used": nn.Conv2d(3, 3, 1), "unused": nn.Conv2d(3, 3, 1)})
    quantize(net, QuantSpec(W8, A8, layer_policy="all"))
    with pytest.raises(RuntimeError, match="saw no data .*unused"):
        with calibration_mode(net), torch.no_grad():
            net["used"](torch.rand(1, 3, 4, 4))


def test_layers_that_never_run_stay_unwrapped():
    """CARN-M ×4 holds ×2/×3 upsamplers it never calls and fixed mean-shift 1×1 convs: the
    edges are the real entry/exit convs and calibration sees data in every quantizer."""
    model = build_model("carn_m_x4", pretrained=False)
    x = torch.rand(2, 3, 12, 12)
    quantize(model, QuantSpec(QuantFormat(4, "narrow", axis=0), QuantFormat(4)), example_input=x[:1])
    qmap = quantization_map(model)
    names = list(qmap)
    assert not [n for n in names if ".up2." in n or ".up3." in n or "mean" in n]
    assert (names[0], names[-1]) == ("net.entry", "net.exit")
    assert qmap["net.exit"]["weight"].startswith("int8") and qmap["net.c3.body.0"]["weight"].startswith("int4")
    with calibration_mode(model), torch.no_grad():
        model(x)
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("weight,act,compression,speedup", [
    (4, 4, 1472 / 352, 8.0),   # P_tot 46 (40 weights): 32·46 / (32·6 + 4·40); F 120 MACs at 4/32
    (4, 8, 1472 / 352, 4.0),   # an op runs at its wider operand
    (None, 4, 1.0, 1.0),       # FP weights: nothing smaller, nothing faster
])
def test_theoretical_ratios_hand_computed(weight, act, compression, speedup):
    from srq.quant.size import op_macs, theoretical_ratios

    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2))
    x = torch.rand(3, 8)
    macs = op_macs(model, x)
    assert macs == {"0": 3 * 4 * 8, "1": 3 * 2 * 4}
    wfmt = None if weight is None else QuantFormat(weight, "narrow", axis=0)
    quantize(model, QuantSpec(wfmt, QuantFormat(act), layer_policy="all"), example_input=x)
    ratios = theoretical_ratios(model, macs)
    assert ratios["compression"] == pytest.approx(compression)
    assert ratios["speedup"] == pytest.approx(speedup)
