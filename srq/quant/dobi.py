"""Distribution-oriented bound initialisation (DOBI, METHODS.md §5.3): the (l, u) among K
candidates that minimises ‖v − Q(v; l, u, b)‖² for the ``free`` (Q-range) format.

Candidates start at l₀ = min v, u₀ = max v:

* two-sided: δ = (u₀ − l₀)/(2K), (l_i, u_i) = (l₀ + iδ, u₀ − iδ)
* one-sided (post-softmax / post-GELU inputs): (l₀, u₀ − iδ_u), δ_u = (u₀ − l₀)/(2K)
  (``step='half'``, the paper's) or (u₀ − l₀)/K (``'full'``, the official code's)

for i = 0…K−1 (``include_last`` adds i = K). The error of every candidate is exact and
needs no per-candidate pass over v: with v sorted once and prefix sums S₁, S₂ of v and v²,
each of the 2^b quantization bins [l + Δ(j − ½), l + Δ(j + ½)) (the end bins open) adds
S₂ − 2c_j S₁ + n c_j² for its level c_j = l + jΔ. Cost: one sort plus O(K·2^b·log M).
"""

from __future__ import annotations

import torch

STEPS = ("half", "full")
TIES = ("first", "last")


def candidate_bounds(lo: float, hi: float, candidates: int = 100, one_sided: bool = False,
                     step: str = "half", include_last: bool = False, device=None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The K (or K + 1) candidate (l_i, u_i) pairs, float64, on ``device``."""
    if candidates < 1:
        raise ValueError("DOBI needs at least one candidate")
    if step not in STEPS:
        raise ValueError(f"unknown one-sided step {step!r}; valid: {', '.join(STEPS)}")
    i = torch.arange(candidates + int(include_last), dtype=torch.float64, device=device)
    span = hi - lo
    if one_sided:
        delta = span / (2 * candidates) if step == "half" else span / candidates
        return torch.full_like(i, lo), hi - i * delta
    delta = span / (2 * candidates)
    return lo + i * delta, hi - i * delta


def quantization_sse(sorted_v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int,
                     integer: bool = False) -> torch.Tensor:
    """Σ (v − Q(v; l, u, b))² for every candidate (l, u) (``free`` format, round half up
    at bin edges), from the sorted values. ``lo``/``hi``: (K,) float64. ``integer``: the
    ``integer`` format's grid instead — (l, u) widened to hold 0, Δ = (u − l)/(2^b − 1), levels
    Δ·(j − z) with z = clip(⌊−l/Δ⌉, 0, 2^b − 1), i.e. the free grid started at l = −zΔ."""
    v = sorted_v.double()
    s1 = torch.cat([v.new_zeros(1), v.cumsum(0)])
    s2 = torch.cat([v.new_zeros(1), (v * v).cumsum(0)])
    n_levels = 2**bits
    if integer:
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    step = (hi - lo) / (n_levels - 1)                                   # (K,)
    if integer:
        lo = -torch.clamp(torch.round(-lo / step), 0, n_levels - 1) * step
    j = torch.arange(n_levels, dtype=torch.float64, device=v.device)
    levels = lo[:, None] + step[:, None] * j[None, :]                  # (K, L)
    edges = lo[:, None] + step[:, None] * (j[None, 1:] - 0.5)          # (K, L−1) inner edges
    idx = torch.searchsorted(v, edges.contiguous(), right=False)        # first index ≥ edge
    m = len(v)
    start = torch.cat([torch.zeros_like(idx[:, :1]), idx], dim=1)       # (K, L)
    stop = torch.cat([idx, torch.full_like(idx[:, :1], m)], dim=1)
    count = (stop - start).double()
    sum1 = s1[stop] - s1[start]
    sum2 = s2[stop] - s2[start]
    return (sum2 - 2 * levels * sum1 + count * levels * levels).sum(dim=1).clamp_min(0)


def dobi_search(v: torch.Tensor, bits: int, candidates: int = 100, one_sided: bool = False,
                step: str = "half", include_last: bool = False, tie: str = "first",
                max_samples: int | None = None, integer: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(l, u, mse) of the best candidate for tensor ``v`` at ``bits``.

    ``tie``: among equal errors keep the ``first`` (smallest i, the code's ``<``) or the
    ``last`` (the paper's ``≤``). ``max_samples``: larger tensors are searched on an evenly
    strided subset (l₀, u₀ still from the whole tensor). ``integer``: score the candidates
    on the ``integer`` format's grid (0 on the grid, integer zero point).
    """
    if tie not in TIES:
        raise ValueError(f"unknown tie rule {tie!r}; valid: {', '.join(TIES)}")
    flat = v.detach().flatten().float()
    if not torch.isfinite(flat).all():
        raise FloatingPointError("DOBI saw NaN/inf values: the FP model overflows on this "
                                 "calibration data")
    lo0, hi0 = float(flat.min()), float(flat.max())
    if max_samples is not None and flat.numel() > max_samples:
        flat = flat[:: -(-flat.numel() // max_samples)]
    if hi0 <= lo0:  # constant tensor: nothing to search
        return (torch.tensor(lo0, device=flat.device), torch.tensor(hi0, device=flat.device),
                torch.tensor(0.0, device=flat.device))
    lo, hi = candidate_bounds(lo0, hi0, candidates, one_sided, step, include_last, flat.device)
    sse = quantization_sse(torch.sort(flat).values, lo, hi, bits, integer)
    best = int(torch.argmin(sse)) if tie == "first" else len(sse) - 1 - int(torch.argmin(sse.flip(0)))
    return (lo[best].float(), hi[best].float(), (sse[best] / flat.numel()).float())


__all__ = ["candidate_bounds", "dobi_search", "quantization_sse"]
