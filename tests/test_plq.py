"""Piecewise-linear quantizer: hand-computed codes, gradients, EMA calibration, wiring."""

import pytest
import torch
from torch import nn

from srq.quant import (
    QuantFormat,
    QuantSpec,
    calibration_mode,
    freeze,
    quantization_map,
    quantize,
)
from srq.quant.plq import (
    PiecewiseLinearQuantizer,
    PLQFormat,
    fake_quantize_plq,
    plq_codes,
)

LA, BP, UA = -8.0, 2.0, 10.0


def _fq(x, bits, grid="centered", la=LA, bp=BP, ua=UA):
    return fake_quantize_plq(torch.as_tensor(x), torch.tensor(la), torch.tensor(bp), torch.tensor(ua),
                             bits, grid)


# Hand-computed: 4 bits → n_d = 7, n_t = 3: Δ_d = 4/7, Δ⁻ = 6/3 = 2, Δ⁺ = 8/3.
CASES_4BIT = [
    # x, region, centred code, centred value, offset value
    (0.3, 0, 1, 4 / 7, -2 + 4 * 4 / 7),        # 0.525 → 1 ; offset (2.3)/(4/7) = 4.025 → 4
    (1.9, 0, 3, 12 / 7, -2 + 7 * 4 / 7),       # 3.325 → 3 ; offset 6.825 → 7
    (1.99, 0, 3, 12 / 7, 2.0),                 # 3.4825 → 3 ; offset 6.98 → 7 = the top level bp
    (-0.1, 0, 0, 0.0, -2 + 3 * 4 / 7),         # −0.175 → 0 ; offset 3.325 → 3
    (-4.5, -1, 2, -4.0, -4.0),                 # (−4.5 + 8)/2 = 1.75 → 2 → −8 + 4
    (-9.0, -1, 0, LA, LA),                     # clipped to l_a
    (7.0, 1, 2, 2 + 16 / 3, 2 + 16 / 3),       # (7 − 2)/(8/3) = 1.875 → 2
    (12.0, 1, 3, UA, UA),                      # clipped to u_a
]

# 6 bits → n_d = 31, n_t = 15: Δ_d = 4/31, Δ⁻ = 0.4, Δ⁺ = 8/15.
CASES_6BIT = [
    (0.3, 0, 2, 8 / 31, -2 + 18 * 4 / 31),     # 2.325 → 2 ; offset 17.825 → 18
    (-1.0, 0, -8, -32 / 31, -2 + 8 * 4 / 31),  # −7.75 → −8 ; offset 7.75 → 8
    (-5.1, -1, 7, -5.2, -5.2),                 # 2.9/0.4 = 7.25 → 7
    (7.0, 1, 9, 2 + 9 * 8 / 15, 2 + 9 * 8 / 15),  # 5/(8/15) = 9.375 → 9
]


@pytest.mark.parametrize("bits,cases", [(4, CASES_4BIT), (6, CASES_6BIT)])
def test_hand_computed_codes_and_values(bits, cases):
    for x, region, code, centred, offset in cases:
        r, c = plq_codes(torch.tensor([x]), LA, BP, UA, bits, "centered")
        assert (int(r), int(c)) == (region, code), x
        assert float(_fq([x], bits, "centered")) == pytest.approx(centred, abs=1e-6), x
        assert float(_fq([x], bits, "offset")) == pytest.approx(offset, abs=1e-6), x


@pytest.mark.parametrize("bits", [3, 4, 6, 8])
def test_level_counts(bits):
    x = torch.linspace(-12, 12, 200001)
    centred = torch.unique(_fq(x, bits, "centered"))
    offset = torch.unique(_fq(x, bits, "offset"))
    tails = 2 * 2 ** (bits - 2)  # each tail: n_t + 1 levels, the one at ±bp shared with dense
    dense_centered = torch.unique(_fq(torch.linspace(-2, 2, 100001), bits, "centered"))
    dense_offset = torch.unique(_fq(torch.linspace(-2, 2, 100001), bits, "offset"))
    assert len(dense_offset) == 2 ** (bits - 1)
    # zero-centred grid ±(n_d − 1)/2·Δ_d; ±bp itself sits on a rounding tie (bp/Δ_d = n_d/2)
    assert len(dense_centered) in (2 ** (bits - 1) - 1, 2 ** (bits - 1) + 1)
    assert 0.0 in dense_centered.tolist()
    assert len(offset) <= 2 ** (bits - 1) + tails
    assert len(centred) <= len(dense_centered) + tails


def test_b_below_3_is_rejected():
    with pytest.raises(ValueError, match="3–8 bits"):
        PLQFormat(bits=2)


def _composed(x, la, bp, ua, bits, grid, rnd):
    """The module docstring's equations, term by term, with rounding ``rnd`` (independent of
    the fused implementation)."""
    n_d, n_t = 2 ** (bits - 1) - 1, 2 ** (bits - 2) - 1
    step_d, step_lo, step_hi = 2 * bp / n_d, (-bp - la) / n_t, (ua - bp) / n_t

    def clip(v, lo, hi):
        return torch.where(v < lo, lo, torch.where(v > hi, hi, v))

    c = clip(x, -bp, bp)
    if grid == "centered":
        dense = clip(step_d * rnd(c / step_d), -bp, bp)
    else:
        dense = -bp + step_d * rnd((c + bp) / step_d)
    low = la + step_lo * rnd((clip(x, la, -bp) - la) / step_lo)
    high = bp + step_hi * rnd((clip(x, bp, ua) - bp) / step_hi)
    below, above = (x < -bp).detach(), (x > bp).detach()
    return torch.where(below, low, torch.where(above, high, dense))


def _ste(t):
    return t + (torch.round(t) - t).detach()


def _surrogate_grad(fn, param_values, index, h=1e-4):
    """Finite difference of ``fn(rnd, *params)`` with every rounding residual (⌊t⌉ − t) held
    at its value at the unperturbed point: the function whose exact derivative the STE reports."""
    residuals = []

    def recording(t):
        residuals.append(torch.round(t) - t)
        return t + residuals[-1]

    fn(recording, *param_values)
    out = []
    for sign in (1, -1):
        vals = list(param_values)
        vals[index] = vals[index] + sign * h
        replay = list(residuals)
        out.append(float(fn(lambda t: t + replay.pop(0), *vals)))
    return (out[0] - out[1]) / (2 * h)


@pytest.mark.parametrize("grid", ["centered", "offset"])
@pytest.mark.parametrize("bits", [4, 6])
def test_bound_gradients_match_finite_differences(bits, grid):
    torch.manual_seed(0)
    x = torch.cat([torch.randn(300) * 1.5, torch.tensor([-9.5, -6.3, 5.5, 11.0, 13.0])]).double()
    w = torch.rand_like(x)  # a generic downstream loss Σ w·x_q

    params = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (LA, BP, UA)]
    (w * fake_quantize_plq(x, *params, bits, grid)).sum().backward()
    for i, p in enumerate(params):
        fd = _surrogate_grad(lambda rnd, *b: (w * _composed(x, *b, bits, grid, rnd)).sum(),
                             [torch.tensor(v, dtype=torch.float64) for v in (LA, BP, UA)], i)
        assert p.grad.item() == pytest.approx(fd, rel=1e-5, abs=1e-7), ("la", "bp", "ua")[i]


@pytest.mark.parametrize("grid", ["centered", "offset"])
@pytest.mark.parametrize("bits", [3, 4, 5, 8])
def test_fused_quantizer_equals_the_composed_equations(bits, grid):
    """Values and all four gradients (x, l_a, bp, u_a) of the fused autograd function equal
    autograd through the composed equations with straight-through rounding."""
    torch.manual_seed(bits)
    x = torch.cat([torch.randn(4000) * 3, torch.linspace(-12, 14, 501),
                   torch.tensor([BP, -BP, LA, UA])]).double()  # ±bp: the centred clip
    w = torch.rand_like(x)
    results = []
    for fn in (lambda *a: fake_quantize_plq(*a, bits, grid), lambda *a: _composed(*a, bits, grid, _ste)):
        xs = x.clone().requires_grad_(True)
        params = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (LA, BP, UA)]
        out = fn(xs, *params)
        (w * out).sum().backward()
        results.append([out.detach(), xs.grad] + [p.grad for p in params])
    for name, a, b in zip(("value", "x", "la", "bp", "ua"), *results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)
    for i in range(3):  # one bound trainable at a time (SAFT's stages): the same gradient
        params = [torch.tensor(v, dtype=torch.float64, requires_grad=j == i) for j, v in enumerate((LA, BP, UA))]
        (w * fake_quantize_plq(x, *params, bits, grid)).sum().backward()
        torch.testing.assert_close(params[i].grad, results[0][2 + i], rtol=1e-12, atol=0)


def test_clipped_elements_give_exact_unit_gradients():
    """x > u_a: x_q = u_a, so ∂x_q/∂u_a = 1 — the true finite difference agrees."""
    x = torch.tensor([11.0, 15.0, -9.0])
    la, bp, ua = (torch.tensor(v, requires_grad=True) for v in (LA, BP, UA))
    fake_quantize_plq(x, la, bp, ua, 4).sum().backward()
    assert ua.grad.item() == pytest.approx(2.0)
    assert la.grad.item() == pytest.approx(1.0)
    h = 1e-3
    fd = (_fq([11.0, 15.0], 4, ua=UA + h).sum() - _fq([11.0, 15.0], 4, ua=UA - h).sum()) / (2 * h)
    assert fd.item() == pytest.approx(2.0, abs=1e-3)


def test_weight_bound_gradient_two_bound():
    """u_w of the symmetric two_bound weight format: ∂x_q/∂u = 1[x ≥ u] − 1[x ≤ −u] + 2(r − t)/n."""
    from srq.quant.primitives import fake_quantize

    x = torch.tensor([-3.0, -0.4, 0.25, 0.8, 2.5])
    u = torch.tensor(1.0, requires_grad=True)
    bits, n = 3, 7
    fake_quantize(x, None, u, bits, "two_bound").sum().backward()
    c = x.clamp(-1, 1)
    t = (c + 1) / (2 / n)
    r = torch.round(t)
    inside = (x.abs() < 1)
    expected = (x >= 1).float() - (x <= -1).float() + torch.where(inside, 2 * (r - t) / n, 0 * t)
    assert u.grad.item() == pytest.approx(expected.sum().item(), abs=1e-6)


def test_ema_calibration_on_a_known_sequence():
    q = PiecewiseLinearQuantizer(PLQFormat(bits=4, beta=0.9))
    batch1 = torch.arange(-50, 51, dtype=torch.float32)          # min −50, max 50; |x| sorted: 0,1,1,…,50,50 → P99 (100th of 101) = 50
    batch2 = torch.arange(-10, 201, dtype=torch.float32)          # min −10, max 200
    q.observing = True
    q(batch1)
    q(batch2)
    q.observing = False
    q.finish_calibration()
    obs = q.observer
    assert obs.la.item() == pytest.approx(0.9 * -50 + 0.1 * -10)
    assert obs.ua.item() == pytest.approx(0.9 * 50 + 0.1 * 200)
    assert obs.bp.item() == pytest.approx(0.9 * 50 + 0.1 * 198)  # |batch2| P99: 198
    # the low tail is empty (l_a = −46 > −bp ≈ −64): padded to −bp − ε
    assert q.bp.item() == pytest.approx(obs.bp.item()) and q.ua.item() == pytest.approx(obs.ua.item())
    assert q.la.item() == pytest.approx(-obs.bp.item() - 1e-4 * (obs.ua - obs.la).item(), rel=1e-6)


def test_empty_tail_is_padded_and_projection_holds():
    q = PiecewiseLinearQuantizer(PLQFormat(bits=4))
    q.observing = True
    q(torch.rand(1000) * 3)   # post-ReLU-like: min ≥ 0 > −bp
    q.observing = False
    q.finish_calibration()
    assert q.la.item() < -q.bp.item() < 0 < q.bp.item() < q.ua.item()
    q.enabled = True
    out = q(torch.rand(1000) * 3)
    assert torch.isfinite(out).all()
    with torch.no_grad():
        q.bp.fill_(-1.0)
        q.la.fill_(5.0)
    q.project_()
    assert q.bp.item() > 0 and q.la.item() < -q.bp.item() and q.ua.item() > q.bp.item()


def test_quantize_with_plq_inputs_and_uniform_edges():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    spec = QuantSpec(weight=QuantFormat(4, "two_bound"), input=PLQFormat(4),
                     edge_weight=QuantFormat(8, "two_bound"),
                     edge_input=QuantFormat(8, "free", observer="ema_minmax"))
    quantize(model, spec)
    qmap = quantization_map(model)
    assert qmap["0"]["input"].startswith("int8") and qmap["4"]["input"].startswith("int8")
    assert qmap["2"]["input"].startswith("plq4")
    assert model[0].is_edge and model[4].is_edge and not model[2].is_edge
    x = torch.randn(4, 3, 16, 16)
    with calibration_mode(model), torch.no_grad():
        fp = model(x)
    freeze(model)
    with torch.no_grad():
        out1, out2 = model(x), model(x)
    assert torch.equal(out1, out2) and not torch.equal(out1, fp)
    state = model.state_dict()
    again = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    quantize(again, spec)
    again.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(again(x), out1)
