"""Hadamard rotations of linear-layer inputs (QuaRot-style, online; METHODS.md §10.3).

For a Linear y = W x with n = in_features a power of 2, the normalized Sylvester Hadamard H
(H = Hᵀ, H² = I) gives y = (W H)(H x): the layer stores W' = W H and its wrapper rotates the
input, x ↦ H x, before the input quantizer. Rotation spreads a few outlier channels over all
n, so per-tensor activation grids and per-channel weight grids fit better; in FP the function
is unchanged. H x is computed online with the fast Walsh–Hadamard transform (n log₂ n adds
per token, counted in the deployment cost), not folded, so it works after any LayerNorm or
GELU.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ROTATIONS = ("none", "hadamard")


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def fwht(x: torch.Tensor) -> torch.Tensor:
    """H x along the last dim (normalized Sylvester order: H_2n = [[H, H], [H, −H]] / √2)."""
    n = x.shape[-1]
    if not is_power_of_two(n):
        raise ValueError(f"the fast Walsh–Hadamard transform needs a power-of-2 size, not {n}")
    lead, h, y = x.shape[:-1], 1, x
    while h < n:
        y = y.reshape(*lead, n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2)
        h *= 2
    return y.reshape(x.shape) * (1.0 / math.sqrt(n))


def hadamard_matrix(n: int) -> torch.Tensor:
    """The normalized Sylvester Hadamard matrix (n × n, float64), by Kronecker products."""
    if not is_power_of_two(n):
        raise ValueError(f"Sylvester Hadamard matrices exist for powers of 2, not {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    base = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.kron(base, h)
    return h / math.sqrt(n)


@torch.no_grad()
def rotate_linear_inputs(model: nn.Module) -> list[str]:
    """W ← W H and the input rotation on, for every wrapped Linear of ``model`` that is not
    frozen or rotated already and whose in_features is a power of 2 (call it before
    calibration: the observers must see H x and W H); the names rotated."""
    from srq.quant.api import wrapped_modules
    from srq.quant.modules import QuantLinear

    done = []
    for name, module in wrapped_modules(model):
        if not isinstance(module, QuantLinear) or module.input_rotation is not None:
            continue
        if module.frozen or not is_power_of_two(module.module.in_features):
            continue
        module.module.weight.copy_(fwht(module.module.weight))  # (W H)ᵢ = H wᵢ: H is symmetric
        module.input_rotation = "hadamard"
        done.append(name)
    return done


__all__ = ["ROTATIONS", "fwht", "hadamard_matrix", "is_power_of_two", "rotate_linear_inputs"]
