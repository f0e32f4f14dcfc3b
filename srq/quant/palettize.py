"""K-means weight palettization with an optionally int8-quantized look-up table (LUT).

Each weight tensor (or each output channel, or each group of ``group_size`` output
channels) gets K = 2^n centroids c_k from 1-D k-means over its scalars; a weight is stored
as an n-bit index a(i) and reconstructed as c_{a(i)}. With ``lut_bits=8`` the centroids are
quantized symmetrically per LUT: Δ = max|c|/127.5, c' = Δ·clip(⌊c/Δ⌉, −128, 127), so every
weight lies on an int8 grid (METHODS.md §3.2). Sensitive k-means minimises
Σ_i h_i (w_i − c_{a(i)})² with h_i a diagonal Fisher estimate (§3.3).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

GRANULARITIES = ("per_tensor", "per_channel", "per_grouped_channel")


@dataclass(frozen=True)
class PalettSpec:
    """``n_bits`` ∈ {2, 3, 4, 6, 8}; ``granularity`` and ``group_size`` choose the LUTs;
    ``lut_bits``: 8 (int8 LUT) or None (FP32 LUT); tensors below ``min_numel`` stay FP;
    ``seed`` is mixed into each tensor's k-means++ seed (0: the default clustering)."""

    n_bits: int = 4
    granularity: str = "per_tensor"
    group_size: int = 8
    lut_bits: int | None = 8
    min_numel: int = 1024
    max_iter: int = 300
    tol: float = 1e-6
    seed: int = 0

    def __post_init__(self):
        if self.n_bits not in (2, 3, 4, 6, 8):
            raise ValueError(f"palettization supports 2, 3, 4, 6 or 8 bits, not {self.n_bits}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {self.granularity!r}; valid: "
                             f"{', '.join(GRANULARITIES)}")
        if self.lut_bits not in (None, 8):
            raise ValueError("lut_bits must be 8 (int8 LUT) or null (FP32 LUT)")


def _content_seed(x: torch.Tensor) -> int:
    """Deterministic seed from a tensor's bytes (same weights → same clustering)."""
    digest = hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def kmeans_1d(values: torch.Tensor, k: int, weights: torch.Tensor | None = None,
              max_iter: int = 300, tol: float = 1e-6, seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted 1-D k-means (k-means++ seeding, Lloyd steps) → (sorted centroids, indices).

    Minimises Σ_i h_i (x_i − c_{a(i)})² with h = ``weights`` (1 when None). With fewer
    distinct values than ``k`` the distinct values themselves are the centroids.
    """
    x = values.detach().flatten().double()
    h = torch.ones_like(x) if weights is None else weights.detach().flatten().double() + 1e-12
    distinct = torch.unique(x)
    if len(distinct) <= k:
        centroids = distinct
    else:
        gen = torch.Generator().manual_seed((_content_seed(values) + seed) & ((1 << 63) - 1))
        centroids = x[torch.randint(len(x), (1,), generator=gen)]
        for _ in range(k - 1):
            d2 = (x[:, None] - centroids[None, :]).pow(2).amin(dim=1) * h
            if d2.sum() <= 0:
                break
            pick = torch.multinomial(d2 / d2.sum(), 1, generator=gen)
            centroids = torch.cat([centroids, x[pick]])
        centroids = torch.sort(torch.unique(centroids)).values
        span = float(x.max() - x.min()) or 1.0
        for _ in range(max_iter):
            idx = _nearest(x, centroids)
            sums = torch.zeros_like(centroids).index_add_(0, idx, h * x)
            mass = torch.zeros_like(centroids).index_add_(0, idx, h)
            updated = torch.where(mass > 0, sums / mass.clamp_min(1e-300), centroids)
            updated = torch.sort(updated).values
            shift = (updated - centroids).abs().max()
            centroids = updated
            if shift <= tol * span:
                break
    idx = _nearest(x, centroids)
    return centroids.to(values.dtype), idx.reshape(values.shape)


def _nearest(x: torch.Tensor, sorted_centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted centroids for every x (midpoint bucketing)."""
    mids = (sorted_centroids[1:] + sorted_centroids[:-1]) / 2
    return torch.bucketize(x, mids)


def quantize_lut(lut: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 LUT: Δ = max|c|/127.5, c' = Δ·clip(⌊c/Δ⌉, −128, 127) → (c', Δ)."""
    amax = lut.abs().max()
    scale = amax / 127.5 if amax > 0 else torch.ones_like(amax)
    codes = torch.clamp(torch.round(lut * (1.0 / scale)), -128, 127)
    return codes * scale, scale


class Palette(nn.Module):
    """A palettized weight: ``indices`` (n-bit codes, stored as uint8) and one LUT per group.

    ``weight()`` = lut[group, index]. Groups run along the output-channel axis.
    """

    def __init__(self, indices: torch.Tensor, luts: torch.Tensor, lut_scales: torch.Tensor | None,
                 channels_per_group: int, axis: int, spec: PalettSpec):
        super().__init__()
        self.register_buffer("indices", indices.to(torch.uint8))
        self.register_buffer("luts", luts)
        self.register_buffer("lut_scales", lut_scales)
        self.channels_per_group, self.axis, self.spec = channels_per_group, axis, spec

    def weight(self) -> torch.Tensor:
        idx = self.indices.long().movedim(self.axis, 0)
        group = torch.arange(idx.shape[0], device=idx.device) // self.channels_per_group
        flat = idx.reshape(idx.shape[0], -1)
        values = self.luts[group][:, None, :].expand(-1, flat.shape[1], -1)
        out = torch.gather(values, 2, flat[..., None]).squeeze(-1)
        return out.reshape(idx.shape).movedim(0, self.axis)

    def num_luts(self) -> int:
        return self.luts.shape[0]

    def size_bytes(self) -> float:
        """n/8 bytes per index + per LUT 2^n entries (1 byte if int8, else 4) + 4-byte scale."""
        k = self.luts.shape[1]
        entry = 1 if self.lut_scales is not None else 4
        scale = 4 if self.lut_scales is not None else 0
        return self.indices.numel() * self.spec.n_bits / 8 + self.num_luts() * (k * entry + scale)


def palettize_tensor(weight: torch.Tensor, spec: PalettSpec, axis: int = 0,
                     sensitivity: torch.Tensor | None = None) -> Palette:
    """Cluster ``weight`` into a :class:`Palette` per ``spec`` (LUTs along ``axis``)."""
    k = 2 ** spec.n_bits
    weight = weight.detach().cpu()  # k-means on the CPU: the same clustering on every device
    sensitivity = None if sensitivity is None else sensitivity.detach().cpu()
    channels = weight.shape[axis]
    per_group = {"per_tensor": channels, "per_channel": 1,
                 "per_grouped_channel": spec.group_size}[spec.granularity]
    if channels % per_group:
        raise ValueError(f"group_size {per_group} does not divide the {channels} output channels")
    w = weight.detach().movedim(axis, 0)
    h = None if sensitivity is None else sensitivity.detach().movedim(axis, 0)
    luts, scales, indices = [], [], torch.empty(w.shape, dtype=torch.long)
    for g in range(channels // per_group):
        rows = slice(g * per_group, (g + 1) * per_group)
        centroids, idx = kmeans_1d(w[rows], k, None if h is None else h[rows],
                                   spec.max_iter, spec.tol, spec.seed)
        if spec.lut_bits == 8:
            centroids, scale = quantize_lut(centroids)
            scales.append(scale)
        lut = torch.zeros(k, dtype=weight.dtype)
        lut[: len(centroids)] = centroids
        luts.append(lut)
        indices[rows] = idx
    return Palette(indices.movedim(0, axis), torch.stack(luts),
                   torch.stack(scales) if scales else None, per_group, axis, spec)


PALETTIZABLE = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def selected_layers(model: nn.Module, spec: PalettSpec, include: list[str] | None = None,
                    exclude: list[str] | None = None) -> dict[str, nn.Module]:
    """{name: module} of the palettizable layers not yet palettized that match ``include``,
    not ``exclude``, with at least ``spec.min_numel`` weights."""
    import fnmatch

    include, exclude = include or ["*"], exclude or []
    return {name: module for name, module in model.named_modules()
            if isinstance(module, PALETTIZABLE) and getattr(module, "palette", None) is None
            and any(fnmatch.fnmatchcase(name, p) for p in include)
            and not any(fnmatch.fnmatchcase(name, p) for p in exclude)
            and module.weight.numel() >= spec.min_numel}


def palettize(model: nn.Module, spec: PalettSpec, include: list[str] | None = None,
              exclude: list[str] | None = None,
              sensitivity: dict[str, torch.Tensor] | None = None) -> dict[str, Palette]:
    """Palettize and finalize the selected layers in place (k-means runs on the CPU, the
    palette then lives beside the weight): each weight becomes its LUT
    reconstruction (a constant), and the :class:`Palette` is kept as ``module.palette`` for
    size accounting and export. ``sensitivity``: {module name: h} for sensitive k-means."""
    done = {}
    for name, module in selected_layers(model, spec, include, exclude).items():
        axis = 1 if isinstance(module, nn.ConvTranspose2d) else 0
        h = None if sensitivity is None else sensitivity.get(name)
        palette = palettize_tensor(module.weight, spec, axis, h).to(module.weight.device)
        with torch.no_grad():
            module.weight.copy_(palette.weight())
        module.palette = palette
        done[name] = palette
    return done


def fisher_sensitivity(model: nn.Module, batches, loss_fn) -> dict[str, torch.Tensor]:
    """h = Σ_batches (∂L/∂w)² for every palettizable weight (diagonal Fisher, §3.3).

    ``batches`` yields (lr, hr); ``loss_fn(model(lr), hr)`` must be a task loss against
    ground truth (a distillation loss has zero gradient at the FP weights).
    """
    names = {n: m for n, m in model.named_modules() if isinstance(m, PALETTIZABLE)}
    sens = {n: torch.zeros_like(m.weight) for n, m in names.items()}
    was_training = model.training
    model.eval()
    for lr, hr in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(model(lr), hr).backward()
        for n, m in names.items():
            if m.weight.grad is not None:
                sens[n] += m.weight.grad.detach().pow(2)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return sens
