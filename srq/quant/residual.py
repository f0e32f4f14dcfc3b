"""Structural residual calibration (HarmoQ's SRC, METHODS.md §6.2b — an *inferred* design):
a closed-form weight correction that makes a linear layer fed with quantized inputs x̂
reproduce the FP layer fed with FP inputs x:

    min_W'  E‖x̂W'ᵀ − xWᵀ‖² + μ_H E‖H(x̂)W'ᵀ − H(x)Wᵀ‖² + λ‖W' − W‖²_F
    G = E[x̂ᵀx̂] + μ_H E[H(x̂)ᵀH(x̂)],  R = E[x̂ᵀ(x − x̂)] + μ_H E[H(x̂)ᵀ(H(x) − H(x̂))]
    ΔWᵀ = (G + λI)⁻¹ R Wᵀ,  λ = α_damp·mean(diag G),  W' = W + γΔW

H is a 3×3 Laplacian over the token grid (tokens reshaped to √N×√N; skipped when N is not a
square). Optional bias correction β' = β + E[x]Wᵀ − E[x̂]W'ᵀ. Statistics in float64; when
G + λI is singular or ill-conditioned the pseudo-inverse is used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian_tokens(x: torch.Tensor) -> torch.Tensor | None:
    """3×3 Laplacian of (…, N, C) tokens on their √N×√N grid, per channel; None if N is not a square."""
    n, c = x.shape[-2], x.shape[-1]
    side = math.isqrt(n)
    if side * side != n or side < 3:
        return None
    grid = x.reshape(-1, side, side, c).permute(0, 3, 1, 2)
    kernel = _LAPLACIAN.to(x).expand(c, 1, 3, 3)
    out = F.conv2d(grid, kernel, padding=1, groups=c)
    return out.permute(0, 2, 3, 1).reshape(x.shape)


class ResidualStats:
    """Running G, R, E[x], E[x̂] for one layer (float64)."""

    def __init__(self, mu_h: float = 1.0, regressor: str = "quantized"):
        if regressor not in ("quantized", "float"):
            raise ValueError(f"unknown SRC regressor {regressor!r}; valid: quantized, float")
        self.mu_h, self.regressor = mu_h, regressor
        self.g = self.r = self.sum_x = self.sum_xq = None
        self.count = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor, xq: torch.Tensor) -> None:
        pairs = [(x, xq, 1.0)]
        if self.mu_h > 0:
            hx, hq = laplacian_tokens(x), laplacian_tokens(xq)
            if hx is not None:
                pairs.append((hx, hq, self.mu_h))
        for a, b, w in pairs:
            a = a.reshape(-1, a.shape[-1]).double()
            b = b.reshape(-1, b.shape[-1]).double()
            reg = b if self.regressor == "quantized" else a
            g, r = w * reg.T @ reg, w * reg.T @ (a - b)
            self.g = g if self.g is None else self.g + g
            self.r = r if self.r is None else self.r + r
        x2 = x.reshape(-1, x.shape[-1]).double()
        q2 = xq.reshape(-1, xq.shape[-1]).double()
        self.sum_x = x2.sum(0) if self.sum_x is None else self.sum_x + x2.sum(0)
        self.sum_xq = q2.sum(0) if self.sum_xq is None else self.sum_xq + q2.sum(0)
        self.count += x2.shape[0]


def ridge_correction(g: torch.Tensor, r: torch.Tensor, weight: torch.Tensor,
                     alpha_damp: float = 0.01, gamma: float = 1.0, max_cond: float = 1e12
                     ) -> tuple[torch.Tensor, bool]:
    """(W', used_pinv): W' = W + γ·((G + λI)⁻¹ R Wᵀ)ᵀ with λ = α_damp·mean(diag G)."""
    g, r, w = g.double(), r.double(), weight.double()
    lam = alpha_damp * float(torch.diagonal(g).mean())
    a = g + lam * torch.eye(len(g), dtype=torch.float64, device=g.device)
    rhs = r @ w.T
    used_pinv = not bool(torch.isfinite(a).all()) or float(torch.linalg.cond(a)) > max_cond
    delta_t = torch.linalg.pinv(a) @ rhs if used_pinv else torch.linalg.solve(a, rhs)
    return (w + gamma * delta_t.T).to(weight.dtype), used_pinv


@torch.no_grad()
def correct_linear(layer: nn.Linear | nn.Module, fp_weight: torch.Tensor, fp_bias, stats: ResidualStats,
                   alpha_damp: float = 0.01, gamma: float = 1.0, bias_correction: bool = True) -> dict:
    """Write W' (and β') into ``layer`` from the FP weight/bias and the statistics."""
    new_w, used_pinv = ridge_correction(stats.g / stats.count, stats.r / stats.count, fp_weight,
                                        alpha_damp, gamma)
    layer.weight.copy_(new_w)
    if bias_correction and layer.bias is not None and fp_bias is not None:
        mean_x, mean_q = stats.sum_x / stats.count, stats.sum_xq / stats.count
        layer.bias.copy_((fp_bias.double() + mean_x @ fp_weight.double().T
                          - mean_q @ new_w.double().T).to(layer.bias.dtype))
    return {"pinv": used_pinv, "delta_rel": float((new_w - fp_weight).norm() / fp_weight.norm())}


__all__ = ["ResidualStats", "correct_linear", "laplacian_tokens", "ridge_correction"]
