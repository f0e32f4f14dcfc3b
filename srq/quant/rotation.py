"""Hadamard rotations of linear-layer and conv inputs (QuaRot-style, online; METHODS.md §10.3).

For a Linear y = W x with n = in_features a power of 2, the normalized Sylvester Hadamard H
(H = Hᵀ, H² = I) gives y = (W H)(H x): the layer stores W' = W H and its wrapper rotates the
input, x ↦ H x, before the input quantizer. A conv (groups = 1) is the same map applied at
every pixel over its n = in_channels: y = Σ_k W_k * x = Σ_k (W_k H) * (H x) with H acting on
the channel dim of x and the input-channel dim of every kernel tap W_k; zero padding commutes
with H (H 0 = 0). Rotation spreads a few outlier channels over all n, so per-tensor
activation grids and per-channel weight grids fit better; in FP the function is unchanged.
H x is computed online with the fast Walsh–Hadamard transform (n log₂ n adds per token or
pixel, counted in the deployment cost), not folded, so it works after any LayerNorm or
GELU.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

ROTATIONS = ("none", "hadamard")


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def fwht(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """H x along ``dim`` (normalized Sylvester order: H_2n = [[H, H], [H, −H]] / √2), in place
    of that dim: no transpose, so a conv input's channels cost no copy beyond the butterflies.
    While autograd records x (reconstruction, fine-tuning) and ``dim`` is the last one or a
    4-D tensor's channels, it is one dense product with H instead (x H, or a 1×1 conv): on CPU
    that and its backward take ~1/5 of the log₂ n butterfly stages' time; equal to ~1e-6."""
    dim = dim % x.dim()
    n = x.shape[dim]
    if not is_power_of_two(n):
        raise ValueError(f"the fast Walsh–Hadamard transform needs a power-of-2 size, not {n}")
    if x.requires_grad and torch.is_grad_enabled() and n > 1:
        if dim == x.dim() - 1:
            return x @ _cached_hadamard(n, x.dtype, x.device)
        if x.dim() == 4 and dim == 1:
            return torch.nn.functional.conv2d(x, _cached_hadamard(n, x.dtype, x.device)[:, :, None, None])
    lead, tail, h, y = x.shape[:dim], x.shape[dim + 1:], 1, x
    while h < n:
        y = y.reshape(*lead, n // (2 * h), 2, h, *tail)
        a, b = y.select(dim + 1, 0), y.select(dim + 1, 1)
        y = torch.stack((a + b, a - b), dim=dim + 1)
        h *= 2
    return y.reshape(x.shape) * (1.0 / math.sqrt(n))


@functools.lru_cache(maxsize=32)
def _cached_hadamard(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return hadamard_matrix(n).to(dtype=dtype, device=device)


def hadamard_matrix(n: int) -> torch.Tensor:
    """The normalized Sylvester Hadamard matrix (n × n, float64), by Kronecker products."""
    if not is_power_of_two(n):
        raise ValueError(f"Sylvester Hadamard matrices exist for powers of 2, not {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    base = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.kron(base, h)
    return h / math.sqrt(n)


ROTATED_LAYERS = ("linear", "conv", "all")


def rotatable(module: nn.Module, layers: str = "linear") -> bool:
    """Whether wrapped ``module`` takes an input rotation under ``layers`` (linear: Linear |
    conv: Conv2d with groups = 1 | all: both): not frozen or rotated already, and its input
    width (in_features / in_channels) a power of 2."""
    from srq.quant.modules import QuantConv2d, QuantLinear

    if isinstance(module, QuantLinear) and layers in ("linear", "all"):
        width = module.module.in_features
    elif isinstance(module, QuantConv2d) and layers in ("conv", "all") and module.module.groups == 1:
        width = module.module.in_channels
    else:
        return False
    return not module.frozen and module.input_rotation is None and is_power_of_two(width)


@torch.no_grad()
def rotate_inputs(model: nn.Module, layers: str = "linear", exclude=()) -> list[str]:
    """W ← W H (over W's input dim) and the input rotation on, for every wrapped layer of
    ``model`` that is :func:`rotatable` under ``layers`` and whose name matches no glob of
    ``exclude`` (call it before calibration: the observers must see H x and W H); the names
    rotated."""
    from srq.quant.api import _matches, wrapped_modules

    if layers not in ROTATED_LAYERS:
        raise ValueError(f"layers={layers!r}: rotate one of {ROTATED_LAYERS}")
    done = []
    for name, module in wrapped_modules(model):
        if rotatable(module, layers) and not _matches(name, exclude):
            # (W H)ᵢ = H wᵢ over dim 1: H is symmetric
            module.module.weight.copy_(fwht(module.module.weight, dim=1))
            module.input_rotation = "hadamard"
            done.append(name)
    return done


def rotate_linear_inputs(model: nn.Module) -> list[str]:
    """:func:`rotate_inputs` on the Linear layers only."""
    return rotate_inputs(model, "linear")


__all__ = ["ROTATED_LAYERS", "ROTATIONS", "fwht", "hadamard_matrix", "is_power_of_two", "rotatable",
           "rotate_inputs", "rotate_linear_inputs"]
