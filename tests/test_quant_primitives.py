"""Uniform quantizer maths against torch's reference kernels, hand-computed values,
finite differences and properties (hypothesis)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from srq.quant.primitives import (
    choose_qparams,
    dequantize,
    fake_quantize,
    fake_quantize_codes,
    fake_quantize_inference,
    qrange,
    quantize,
    random_mask,
)


@pytest.mark.parametrize("seed", range(5))
def test_int8_per_tensor_equals_torch(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4096, generator=gen) * 3 + 0.7
    lo, hi = x.min(), x.max()
    scale, zp = choose_qparams(lo, hi, 8, "integer")
    ref = torch.fake_quantize_per_tensor_affine(x, scale.item(), int(zp.item()), 0, 255)
    assert torch.equal(fake_quantize(x, lo, hi, 8, "integer"), ref)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("zp", [3, 4, 0])
def test_integer_ties_round_like_torch(bits, zp):
    """Hand-made ties: Δ = 2⁻³ so x/Δ = k + ½ exactly; torch rounds x/Δ half-even, then adds z
    (an odd z must not move the tie: ⌊k + ½ + z⌉ ≠ ⌊k + ½⌉ + z)."""
    n = 2**bits - 1
    delta = 0.125
    lo, hi = torch.tensor(-zp * delta), torch.tensor((n - zp) * delta)
    scale, z = choose_qparams(lo, hi, bits, "integer")
    assert scale.item() == delta and z.item() == zp
    halves = torch.arange(-zp, n - zp, dtype=torch.float32) + 0.5
    x = torch.cat([halves * delta, -halves * delta, torch.tensor([-1e3, 1e3])])
    ref = torch.fake_quantize_per_tensor_affine(x, delta, zp, 0, n)
    assert torch.equal(fake_quantize(x, lo, hi, bits, "integer"), ref)
    assert torch.equal(fake_quantize_inference(x.clone(), lo, hi, bits, "integer"), ref)
    codes = fake_quantize_codes(x.clone(), lo, hi, bits, "integer")
    assert torch.equal(codes, torch.round(x / delta).add(zp).clamp(0, n))
    # by hand: 0.5Δ → 0 + z (half-even), 1.5Δ → 2 + z, 2.5Δ → 2 + z
    by_hand = fake_quantize(torch.tensor([0.5, 1.5, 2.5]) * delta, lo, hi, bits, "integer")
    assert by_hand.tolist() == [0.0, 2 * delta, 2 * delta]


@pytest.mark.parametrize("bits", [8, 4])
def test_integer_per_channel_asymmetric_equals_torch(bits):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(16, 8, 3, 3, generator=gen) + torch.randn(16, 1, 1, 1, generator=gen)
    lo, hi = w.amin(dim=(1, 2, 3)), w.amax(dim=(1, 2, 3))
    scale, zp = choose_qparams(lo, hi, bits, "integer")
    ref = torch.fake_quantize_per_channel_affine(w, scale, zp.to(torch.int32), 0, 0, 2**bits - 1)
    shape = (16, 1, 1, 1)
    assert torch.equal(fake_quantize(w, lo.view(shape), hi.view(shape), bits, "integer"), ref)


def test_integer_range_is_widened_to_hold_zero():
    """A one-sided range (all positive / all negative) still has 0 on the grid, z in [0, n]."""
    for lo, hi, zp in ((0.5, 2.0, 0), (-3.0, -1.0, 255)):
        scale, z = choose_qparams(torch.tensor(lo), torch.tensor(hi), 8, "integer")
        assert z.item() == zp
        assert scale.item() == pytest.approx((max(hi, 0) - min(lo, 0)) / 255)
        assert fake_quantize(torch.tensor(0.0), torch.tensor(lo), torch.tensor(hi), 8,
                             "integer").item() == 0.0


@pytest.mark.parametrize("mode,qmin,qmax", [("full", -128, 127), ("narrow", -127, 127)])
def test_int8_per_channel_symmetric_equals_torch(mode, qmin, qmax):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(32, 16, 3, 3, generator=gen) * torch.rand(32, 1, 1, 1, generator=gen)
    amax = w.abs().amax(dim=(1, 2, 3))
    scale, _ = choose_qparams(None, amax, 8, mode)
    ref = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(32, dtype=torch.int32),
                                                 0, qmin, qmax)
    assert torch.equal(fake_quantize(w, None, amax.view(32, 1, 1, 1), 8, mode), ref)


def test_hand_computed_2bit_free():
    """l = −1, u = 2, b = 2: Δ = 1, grid {−1, 0, 1, 2}."""
    x = torch.tensor([-3.0, -1.0, -0.4, 0.5, 1.49, 1.51, 5.0])
    # 0.5 is code t = 1.5, a tie → even code 2 → 1.0 (rounding acts on codes)
    expected = torch.tensor([-1.0, -1.0, 0.0, 1.0, 1.0, 2.0, 2.0])
    got = fake_quantize(x, torch.tensor(-1.0), torch.tensor(2.0), 2, "free")
    assert torch.equal(got, expected)


def test_hand_computed_3bit_two_bound():
    """u = 3.5, b = 3: l = −3.5, Δ = 1, grid {−3.5, −2.5, …, 3.5} (0 is not on it)."""
    x = torch.tensor([-9.0, -0.2, 0.2, 1.0, 3.4, 9.0])
    expected = torch.tensor([-3.5, -0.5, 0.5, 0.5, 3.5, 3.5])  # 1.0 = 4.5 steps → even: 0.5
    got = fake_quantize(x, None, torch.tensor(3.5), 3, "two_bound")
    assert torch.equal(got, expected)
    codes = quantize(x, None, torch.tensor(3.5), 3, "two_bound")
    assert torch.equal(codes, torch.tensor([0.0, 3, 4, 4, 7, 7]))


def test_hand_computed_4bit_narrow_and_full():
    """u = 7: narrow Δ = 1, codes −7…7; full Δ = 7/7.5, codes −8…7."""
    x = torch.tensor([-100.0, -7.0, 2.4, 100.0])
    assert torch.equal(fake_quantize(x, None, torch.tensor(7.0), 4, "narrow"),
                       torch.tensor([-7.0, -7.0, 2.0, 7.0]))
    step = 7.0 / 7.5
    got = fake_quantize(x, None, torch.tensor(7.0), 4, "full")
    # −7/Δ = −7.5 ties to even (−8); 2.4/Δ = 2.57 → 3
    assert torch.allclose(got, torch.tensor([-8.0, -8.0, 3.0, 7.0]) * step)
    assert qrange(4, "full") == (-8, 7) and qrange(4, "narrow") == (-7, 7)


def test_16_bit_is_nearly_lossless():
    x = torch.linspace(-1, 1, 1001)
    got = fake_quantize(x, torch.tensor(-1.0), torch.tensor(1.0), 16, "free")
    assert (got - x).abs().max() <= 2 / (2**16 - 1) / 2 + 1e-7


def test_bound_gradients_match_the_lsq_formula():
    x = torch.tensor([-2.0, -0.3, 0.26, 0.9, 3.0])
    lo = torch.tensor(-1.0, requires_grad=True)
    hi = torch.tensor(1.0, requires_grad=True)
    bits = 3
    n = 2**bits - 1
    fake_quantize(x, lo, hi, bits, "free").sum().backward()
    delta = 2.0 / n
    c = x.clamp(-1, 1)
    t = (c + 1) / delta
    r = torch.round(t)
    inside = (x > -1) & (x < 1)
    exp_hi = ((x >= 1).float() + torch.where(inside, (r - t) / n, torch.zeros_like(t))).sum()
    exp_lo = ((x <= -1).float() - torch.where(inside, (r - t) / n, torch.zeros_like(t))).sum()
    assert hi.grad.item() == pytest.approx(exp_hi.item(), abs=1e-6)
    assert lo.grad.item() == pytest.approx(exp_lo.item(), abs=1e-6)


def test_input_gradient_is_straight_through_inside_the_range():
    x = torch.tensor([-2.0, -0.5, 0.1, 0.7, 2.0], requires_grad=True)
    fake_quantize(x, torch.tensor(-1.0), torch.tensor(1.0), 4, "free").sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1, 1, 1, 0]))


def test_bound_gradients_match_finite_differences_where_smooth():
    """Clipped elements: x_q = u exactly, so ∂x_q/∂u = 1 (finite difference agrees)."""
    x = torch.tensor([2.0, 3.0])
    hi = torch.tensor(1.0, requires_grad=True)
    fake_quantize(x, torch.tensor(-1.0), hi, 4, "free").sum().backward()
    eps = 1e-3
    up = fake_quantize(x, torch.tensor(-1.0), torch.tensor(1 + eps), 4, "free").sum()
    down = fake_quantize(x, torch.tensor(-1.0), torch.tensor(1 - eps), 4, "free").sum()
    assert hi.grad.item() == pytest.approx(((up - down) / (2 * eps)).item(), abs=1e-3)


def _fake_quantize_by_autograd(x, lo, hi, bits, mode, keep=None):
    """The same maths composed from plain torch ops, differentiated by autograd (the reference
    for the closed-form backward of fake_quantize)."""
    def ste(t):
        return t + (torch.round(t) - t).detach()

    def clip(v, a, b):
        return torch.where(v < a, a, torch.where(v > b, b, v))
    if mode == "free":
        scale = (hi - lo) / (2**bits - 1)
        y = lo + scale * ste((clip(x, lo, hi) - lo) / scale)
    else:
        scale, z = choose_qparams(lo, hi, bits, mode)
        r_min, r_max = qrange(bits, mode)
        z = z.detach()
        y = scale * ste(clip(x, scale * (r_min - z), scale * (r_max - z)) * (1.0 / scale))
    return y if keep is None else torch.where(keep, x, y)


@pytest.mark.parametrize("mode", ["free", "integer", "narrow"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("qdrop", [False, True])
def test_closed_form_backward_equals_autograd_of_the_composed_ops(mode, per_channel, qdrop):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 6, 5, generator=g) * 2).requires_grad_(True)
    shape = (1, 6, 1) if per_channel else ()
    lo = (-torch.rand(shape, generator=g) - 0.5).requires_grad_(True)
    hi = (torch.rand(shape, generator=g) + 0.5).requires_grad_(True)
    keep = torch.rand(x.shape, generator=g) < 0.5 if qdrop else None
    w = torch.randn(x.shape, generator=g)
    y = fake_quantize(x, lo, hi, 3, mode, keep=keep)
    y_ref = _fake_quantize_by_autograd(x, lo, hi, 3, mode, keep)
    assert torch.equal(y, y_ref)
    grads = torch.autograd.grad((y * w).sum(), (x, lo, hi) if mode != "narrow" else (x, hi))
    refs = torch.autograd.grad((y_ref * w).sum(), (x, lo, hi) if mode != "narrow" else (x, hi))
    for got, ref in zip(grads, refs):
        assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)


def test_integer_scale_gradient_equals_torchs_learnable_fake_quantize():
    """With the zero point held, ∂/∂Δ of x_q is LSQ's, as torch's fused learnable kernel gives it
    (away from the half steps just outside the range, where torch rounds before it clips and
    srq clips before it rounds: there torch's ∂/∂Δ is r − x/Δ, srq's the bound's r_min − z)."""
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 1.5
    scale, zp, bits = torch.tensor([0.21]), torch.tensor([5.0]), 4
    t = x / scale
    x = x[((t <= -5.5) | (t >= -5)) & ((t <= 10) | (t >= 10.5))]
    s = scale.clone().requires_grad_(True)
    ref = torch._fake_quantize_learnable_per_tensor_affine(x, s, zp, 0, 2**bits - 1, 1.0)
    ref.sum().backward()
    delta = scale.clone().requires_grad_(True)  # lo, hi as functions of Δ with z = 5 fixed
    y = fake_quantize(x, -5 * delta[0], (2**bits - 1 - 5) * delta[0], bits, "integer")
    assert torch.equal(y, ref.detach())
    y.sum().backward()
    assert delta.grad.item() == pytest.approx(s.grad.item(), rel=1e-4)


bits_st = st.sampled_from([2, 3, 4, 6, 8])
mode_st = st.sampled_from(["free", "integer", "two_bound", "narrow", "full"])


@settings(max_examples=60, deadline=None)
@given(bits=bits_st, mode=mode_st, lo=st.floats(-50, -0.01), hi=st.floats(0.01, 50),
       seed=st.integers(0, 10_000))
def test_properties(bits, mode, lo, hi, seed):
    gen = torch.Generator().manual_seed(seed)
    lo_t, hi_t = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)
    x = (torch.rand(500, generator=gen, dtype=torch.float64) * 3 - 1.5) * max(-lo, hi)
    xq = fake_quantize(x, lo_t, hi_t, bits, mode)
    scale, offset = choose_qparams(lo_t, hi_t, bits, mode)
    r_min, r_max = qrange(bits, mode)
    low = dequantize(torch.tensor(float(r_min), dtype=torch.float64), lo_t, hi_t, bits, mode)
    high = dequantize(torch.tensor(float(r_max), dtype=torch.float64), lo_t, hi_t, bits, mode)
    inside = (x >= low) & (x <= high)
    # round trip error ≤ Δ/2 inside the representable range
    assert ((xq - x).abs()[inside] <= scale / 2 + 1e-9).all()
    # clamping outside
    assert torch.allclose(xq[x > high], high.expand_as(xq[x > high]))
    assert torch.allclose(xq[x < low], low.expand_as(xq[x < low]))
    # idempotence
    assert torch.allclose(fake_quantize(xq, lo_t, hi_t, bits, mode), xq, atol=1e-9)
    # codes are integers in range and dequantize to x_q
    codes = quantize(x, lo_t, hi_t, bits, mode)
    assert torch.equal(codes, codes.round()) and codes.min() >= r_min and codes.max() <= r_max
    assert torch.allclose(dequantize(codes, lo_t, hi_t, bits, mode), xq, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(bits=bits_st, mode=mode_st, seed=st.integers(0, 10_000),
       per_channel=st.booleans())
def test_inference_path_equals_the_differentiable_one(bits, mode, seed, per_channel):
    from srq.quant.primitives import fake_quantize_inference

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 5, 4, generator=gen) * 3
    shape = (6, 1, 1) if per_channel else ()
    lo = -torch.rand(shape, generator=gen) * 4 - 0.1
    hi = torch.rand(shape, generator=gen) * 4 + 0.1
    assert torch.equal(fake_quantize_inference(x, lo, hi, bits, mode),
                       fake_quantize(x, lo, hi, bits, mode))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_random_mask_is_bernoulli_with_independent_neighbours(p):
    """Binomial truth: the share of ones and of adjacent pairs of ones (inside one random
    word and across two) lie within 5σ of p and p²; one seed gives one mask."""
    n = 1 << 20
    raw = random_mask((n,), p, torch.Generator().manual_seed(3))
    assert raw.dtype == torch.bool and raw.shape == (n,)
    m = raw.double()
    assert abs(m.mean().item() - p) < 5 * (p * (1 - p) / n) ** 0.5
    for offset in range(4):  # pairs (4k + offset, 4k + offset + 1): offset 3 spans two words
        pairs = (m[offset:-4:4] * m[offset + 1:-3:4]).mean().item()
        assert abs(pairs - p * p) < 5 * (p * p * (1 - p * p) / (n // 4)) ** 0.5, offset
    assert torch.equal(raw, random_mask((n,), p, torch.Generator().manual_seed(3)))


def test_random_mask_ends_and_shape():
    gen = torch.Generator().manual_seed(0)
    assert not random_mask((5, 3, 7), 0.0, gen).any()
    assert random_mask((5, 3, 7), 1.0, gen).all()
    assert random_mask((2, 3, 5, 5), 0.5, gen).shape == (2, 3, 5, 5)
