"""Learned rounding of weights (AdaRound, METHODS.md §10.1), on srq's uniform grids.

A calibrated weight quantizer fixes a grid x_q = o + Δ·k, k ∈ [k_min, k_max] (``free``:
o = l, k ∈ [0, 2^b − 1]; the others: o = 0, k = r − z ∈ qrange − z). AdaRound replaces
round-to-nearest by a learned choice between the two neighbours:

    W̃ = o + Δ · clamp(⌊(W − o)/Δ⌋ + h(V), k_min, k_max),
    h(V) = clamp(σ(V)·(ζ − γ) + γ, 0, 1),  ζ = 1.1, γ = −0.1,

with V initialised so that h(V) is the fractional part of (W − o)/Δ (W̃ = W inside the
range). :func:`rounding_regularizer` pushes h to {0, 1}; :meth:`AdaRoundWeight.harden`
fixes it there (h = 1[V ≥ 0]), which puts W̃ on the quantizer's grid.

A per-channel gain γ (init 1; trained only when given to an optimiser) scales the whole grid,
W̃ = γ · (o + Δ·k), an LSQ-style learned step with the integer part k fixed;
:meth:`AdaRoundWeight.commit_gain` writes it into the quantizer's bounds (l, u) ↦ (γl, γu), the
grid of every format scaling with them, so W̃ stays on the quantizer's grid.
"""

from __future__ import annotations

import torch
from torch import nn

from srq.quant.primitives import channel_shape, choose_qparams, qrange
from srq.quant.quantizer import UniformQuantizer

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """h(V) = clamp(σ(V)·(ζ − γ) + γ, 0, 1)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def rounding_regularizer(h: torch.Tensor, beta: float) -> torch.Tensor:
    """Σ (1 − |2h − 1|^β): 0 when every h is 0 or 1, largest at h = ½."""
    return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()


def beta_schedule(step: int, total: int, warmup: float, start: float = 20.0, end: float = 2.0
                  ) -> float | None:
    """β at ``step`` of ``total``: None (regulariser off) for the first ``warmup`` share, then
    linear from ``start`` to ``end``."""
    first = int(warmup * total)
    if step < first:
        return None
    progress = (step - first) / max(total - first, 1)
    return end + (start - end) * max(0.0, 1.0 - progress)


def grid_of(quantizer: UniformQuantizer, weight: torch.Tensor):
    """(o, Δ, k_min, k_max) of a calibrated weight quantizer, shaped to broadcast on ``weight``."""
    fmt = quantizer.fmt
    shape = channel_shape(weight, fmt.axis)
    lo, hi = quantizer.lo.detach().reshape(shape), quantizer.hi.detach().reshape(shape)
    scale, offset = choose_qparams(lo, hi, fmt.bits, fmt.mode)
    r_min, r_max = qrange(fmt.bits, fmt.mode)
    if fmt.mode in ("free", "two_bound"):
        origin = -hi if fmt.mode == "two_bound" else lo
        return origin, scale, torch.full_like(scale, r_min), torch.full_like(scale, r_max)
    return torch.zeros_like(scale), scale, r_min - offset, r_max - offset


class AdaRoundWeight(nn.Module):
    """Stands in for a weight quantizer during reconstruction: ``forward(W)`` returns the soft
    W̃ (hard once :meth:`harden` ran); ``V`` is the only parameter."""

    def __init__(self, quantizer: UniformQuantizer, weight: torch.Tensor):
        super().__init__()
        origin, scale, k_min, k_max = grid_of(quantizer, weight)
        t = (weight.detach() - origin) / scale
        floor = torch.floor(t)
        frac = (t - floor).clamp(0.0, 1.0)
        self.register_buffer("origin", origin)
        self.register_buffer("scale", scale)
        self.register_buffer("floor", floor)
        self.register_buffer("k_min", k_min)
        self.register_buffer("k_max", k_max)
        self.register_buffer("nearest", torch.clamp(torch.round(t), k_min, k_max))
        p = ((frac - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
        self.V = nn.Parameter(torch.log(p) - torch.log1p(-p))
        self.gain = nn.Parameter(torch.ones_like(scale), requires_grad=False)
        self.hard = False

    def h(self) -> torch.Tensor:
        return (self.V >= 0).to(self.V.dtype) if self.hard else rectified_sigmoid(self.V)

    def forward(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        k = torch.clamp(self.floor + self.h(), self.k_min, self.k_max)
        return self.gain * (self.origin + self.scale * k)

    def regularizer(self, beta: float) -> torch.Tensor:
        return rounding_regularizer(rectified_sigmoid(self.V), beta)

    def harden(self) -> None:
        self.hard = True
        self.V.requires_grad_(False)

    @torch.no_grad()
    def project_gain_(self, minimum: float = 1e-2) -> None:
        """Keep γ positive (a zero or negative step has no grid)."""
        self.gain.clamp_(min=minimum)

    @torch.no_grad()
    def commit_gain(self, quantizer: UniformQuantizer) -> None:
        """Scale ``quantizer``'s bounds by γ so its grid is the one W̃ sits on."""
        if torch.all(self.gain == 1):
            return
        gain = self.gain.detach().reshape(quantizer.hi.shape)
        quantizer.set_bounds(quantizer.lo.detach() * gain, quantizer.hi.detach() * gain)

    @torch.no_grad()
    def flipped(self) -> float:
        """Share of weights whose level differs from round-to-nearest's."""
        k = torch.clamp(self.floor + self.h(), self.k_min, self.k_max)
        return float((k != self.nearest).float().mean())


__all__ = ["AdaRoundWeight", "beta_schedule", "grid_of", "rectified_sigmoid", "rounding_regularizer"]
