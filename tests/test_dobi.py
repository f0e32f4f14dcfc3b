"""DOBI bound search: exact errors, hand-computed choices, better than min-max."""

import pytest
import torch

from srq.quant.dobi import candidate_bounds, dobi_search, quantization_sse
from srq.quant.observers import build_observer
from srq.quant.primitives import fake_quantize


@pytest.mark.parametrize("mode", ["free", "integer"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_sorted_prefix_sum_error_equals_brute_force(bits, mode):
    torch.manual_seed(bits)
    v = torch.randn(5000, dtype=torch.float64) * 2 + 0.3
    if mode == "integer":
        v = v.abs() + 0.5  # all positive: the integer grid must still hold 0
    lo, hi = candidate_bounds(float(v.min()), float(v.max()), 100)
    fast = quantization_sse(torch.sort(v).values, lo, hi, bits, integer=mode == "integer")
    for i in (0, 17, 60, 99):
        brute = (v - fake_quantize(v, lo[i], hi[i], bits, mode)).pow(2).sum()
        assert float(fast[i]) == pytest.approx(float(brute), rel=1e-9, abs=1e-9)


def test_candidates_two_and_one_sided():
    lo, hi = candidate_bounds(-1.0, 3.0, candidates=4)
    assert lo.tolist() == [-1.0, -0.5, 0.0, 0.5] and hi.tolist() == [3.0, 2.5, 2.0, 1.5]
    lo, hi = candidate_bounds(-1.0, 3.0, candidates=4, one_sided=True)
    assert lo.tolist() == [-1.0] * 4 and hi.tolist() == [3.0, 2.5, 2.0, 1.5]
    lo, hi = candidate_bounds(-1.0, 3.0, candidates=4, one_sided=True, step="full", include_last=True)
    assert hi.tolist() == [3.0, 2.0, 1.0, 0.0, -1.0]


def test_hand_computed_choices():
    """v = [−1, 0×20, 1], 2 bits, K = 2.
    two-sided: (−1, 1): zeros → ±1/3, SSE 20/9 = 2.22; (−0.5, 0.5): ±1 clip (0.5), zeros → ±1/6,
    SSE 0.5 + 20/36 = 1.06 → picks (−0.5, 0.5).
    one-sided: (−1, 1) 2.22; (−1, 0.5): levels −1, −0.5, 0, 0.5, only 1 → 0.5, SSE 0.25 →
    picks (−1, 0.5)."""
    v = torch.tensor([-1.0] + [0.0] * 20 + [1.0])
    lo, hi, mse = dobi_search(v, bits=2, candidates=2)
    assert (float(lo), float(hi)) == (-0.5, 0.5)
    assert float(mse) == pytest.approx((0.5 + 20 / 36) / 22, rel=1e-6)
    lo, hi, mse = dobi_search(v, bits=2, candidates=2, one_sided=True)
    assert (float(lo), float(hi)) == (-1.0, 0.5)
    assert float(mse) == pytest.approx(0.25 / 22, rel=1e-6)


def test_ties_first_or_last():
    v = torch.tensor([0.0, 1.0])  # every candidate that keeps both ends on the grid: error 0
    lo_f, hi_f, _ = dobi_search(v, bits=2, candidates=3, tie="first")
    assert (float(lo_f), float(hi_f)) == (0.0, 1.0)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_beats_minmax_on_heavy_tails(bits):
    torch.manual_seed(0)
    v = torch.distributions.StudentT(2.0).sample((100_000,))
    lo, hi, mse = dobi_search(v, bits)
    minmax = (v - fake_quantize(v, v.min(), v.max(), bits, "free")).pow(2).mean()
    got = (v - fake_quantize(v, lo, hi, bits, "free")).pow(2).mean()
    assert float(got) < 0.5 * float(minmax)
    assert float(mse) == pytest.approx(float(got), rel=1e-3)


def test_observer_uses_dobi_and_averages_batches():
    obs = build_observer("dobi", bits=2, candidates=2)
    v = torch.tensor([-1.0] + [0.0] * 20 + [1.0])
    obs(v)
    assert obs.compute_bounds()[1].item() == 0.5
    obs(torch.tensor([-2.0, 2.0]))  # second batch: (−2, 2) exact → mean of the two
    lo, hi = obs.compute_bounds()
    assert (lo.item(), hi.item()) == (-1.25, 1.25)
    with pytest.raises(ValueError, match="two free bounds"):
        build_observer("dobi", symmetric=True)


def test_constant_tensor_gives_a_valid_range():
    lo, hi, mse = dobi_search(torch.full((100,), 3.0), bits=4)
    assert float(lo) == float(hi) == 3.0 and float(mse) == 0.0
