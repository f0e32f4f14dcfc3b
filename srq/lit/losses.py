"""Distillation losses as small composable objects and feature taps by module name.

A loss is called as ``loss(out_s, out_t, feats_s, feats_t) -> scalar`` with the student's
and teacher's outputs and their tapped features ({module name: tensor}).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from srq.quant.taps import FeatureTaps


class OutputL1:
    """L_rec = mean |K(I) − Q(I)| (per-element mean, ``reduction='mean'``, or ``'sum'``)."""

    def __init__(self, reduction: str = "mean"):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"unknown reduction {reduction!r}; valid: mean, sum")
        self.reduction = reduction

    def __call__(self, out_s, out_t, feats_s=None, feats_t=None) -> torch.Tensor:
        diff = (out_s - out_t).abs()
        return diff.mean() if self.reduction == "mean" else diff.sum()


def _normalize(f: torch.Tensor, per_sample: bool) -> torch.Tensor:
    flat = f.flatten(1) if per_sample else f.reshape(1, -1)
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)


DISTANCES = ("l2", "l2_per_element", "squared_per_element")


class NormalizedFeatureLoss:
    """L_feat = R_k s_k·d(F̂_t^k, F̂_s^k) with F̂ = F/‖F‖₂ (teacher side detached).

    ``weights``: {layer: s_k} (1 when None); ``norm``: ``per_sample`` (flatten each sample,
    distance per sample, mean over the batch) or ``per_batch`` (the whole batch tensor
    normalized at once); ``distance`` d: ``l2`` ‖F̂_t − F̂_s‖₂ (SAFT), ``l2_per_element``
    ‖·‖₂/(C·H·W) or ``squared_per_element`` ‖·‖₂²/(C·H·W) (2DQuant's L_F, its two readings);
    ``layer_reduce`` R: ``mean`` (1/K Σ_k, SAFT) or ``sum`` (2DQuant).
    """

    def __init__(self, names, weights: dict[str, float] | None = None, norm: str = "per_sample",
                 distance: str = "l2", layer_reduce: str = "mean"):
        if norm not in ("per_sample", "per_batch"):
            raise ValueError(f"unknown feature norm {norm!r}; valid: per_sample, per_batch")
        if distance not in DISTANCES:
            raise ValueError(f"unknown feature distance {distance!r}; valid: {', '.join(DISTANCES)}")
        if layer_reduce not in ("mean", "sum"):
            raise ValueError(f"unknown layer_reduce {layer_reduce!r}; valid: mean, sum")
        self.names = list(names)
        self.weights = weights or {n: 1.0 for n in self.names}
        self.norm, self.distance, self.layer_reduce = norm, distance, layer_reduce

    def __call__(self, out_s, out_t, feats_s, feats_t) -> torch.Tensor:
        per_sample = self.norm == "per_sample"
        total = 0.0
        for name in self.names:
            diff = _normalize(feats_t[name].detach(), per_sample) - _normalize(feats_s[name], per_sample)
            if self.distance == "l2":
                d = diff.norm(dim=1)
            elif self.distance == "l2_per_element":
                d = diff.norm(dim=1) / diff.shape[1]
            else:
                d = diff.pow(2).mean(dim=1)
            total = total + self.weights[name] * d.mean()
        return total / len(self.names) if self.layer_reduce == "mean" else total


class BalanceLoss:
    """HarmoQ's balance term (METHODS.md §6.2c, *inferred*): per quantized linear ℓ,
    E_a = mean‖(x̂ − x)Wᵀ‖² (activation-induced), E_w = mean‖x̂(Q_w(W) − W)ᵀ‖² (weight-induced),
    L_bal = mean_ℓ (log((E_a + ε)/(E_w + ε)) − log ρ_ℓ)².

    ``layers``: {name: student wrapper (QuantModule)}; x is the teacher's input to ℓ, x̂ the
    student's input through ℓ's input quantizer. ``targets``: {name: ρ_ℓ} (1 when None);
    :meth:`ratios` measures E_a/E_w to use as targets.
    """

    def __init__(self, layers: dict, targets: dict[str, float] | None = None, eps: float = 1e-12,
                 max_tokens: int | None = 2048):
        self.layers = layers
        self.input_names = list(layers)
        self.targets = targets or {n: 1.0 for n in layers}
        self.eps, self.max_tokens = eps, max_tokens

    def errors(self, name: str, x: torch.Tensor, x_student: torch.Tensor):
        """(E_a, E_w) of layer ``name``, estimated on at most ``max_tokens`` evenly strided
        tokens (both are means over tokens; the full set costs more than the network)."""
        m = self.layers[name]
        x, x_student = x.reshape(-1, x.shape[-1]), x_student.reshape(-1, x_student.shape[-1])
        if self.max_tokens and x.shape[0] > self.max_tokens:
            stride = -(-x.shape[0] // self.max_tokens)
            x, x_student = x[::stride], x_student[::stride]
        xq = m.input_quantizer(x_student) if m.input_quantizer is not None else x_student
        w = m.module.weight.detach()
        wq = m.weight_quantizer(w) if m.weight_quantizer is not None else w
        e_a = ((xq - x.detach()) @ w.T).pow(2).mean()
        e_w = (xq @ (wq - w).T).pow(2).mean()
        return e_a, e_w

    def __call__(self, out_s, out_t, feats_s, feats_t) -> torch.Tensor:
        total = 0.0
        for name in self.input_names:
            e_a, e_w = self.errors(name, feats_t[f"{name}#input"], feats_s[f"{name}#input"])
            log_ratio = torch.log((e_a + self.eps) / (e_w + self.eps))
            total = total + (log_ratio - math.log(self.targets[name])).pow(2)
        return total / len(self.input_names)

    @torch.no_grad()
    def ratios(self, feats_s, feats_t) -> dict[str, float]:
        out = {}
        for name in self.input_names:
            e_a, e_w = self.errors(name, feats_t[f"{name}#input"], feats_s[f"{name}#input"])
            out[name] = float((e_a + self.eps) / (e_w + self.eps))
        return out


class WeightedSum:
    """Σ_i λ_i·loss_i; ``parts`` of the last call hold each term (for logging)."""

    def __init__(self, terms: dict[str, tuple[float, Callable]]):
        if not terms:
            raise ValueError("a distillation objective needs at least one loss term")
        self.terms = terms
        self.parts: dict[str, torch.Tensor] = {}

    def __call__(self, out_s, out_t, feats_s, feats_t) -> torch.Tensor:
        total = 0.0
        self.parts = {}
        for name, (weight, loss) in self.terms.items():
            value = loss(out_s, out_t, feats_s, feats_t)
            self.parts[name] = value.detach()
            total = total + weight * value
        return total

    @property
    def tapped(self) -> list[str]:
        """Layers whose outputs the terms read."""
        return self._collect("names")

    @property
    def tapped_inputs(self) -> list[str]:
        """Layers whose inputs the terms read (as ``"<name>#input"``)."""
        return self._collect("input_names")

    def _collect(self, attr: str) -> list[str]:
        names: list[str] = []
        for _, loss in self.terms.values():
            names += [n for n in getattr(loss, attr, []) if n not in names]
        return names


def sensitivity_weights(sigmas: dict[str, float], temperature: float = 1.0) -> dict[str, float]:
    """s_k = exp(σ̄_k/τ) / Σ_j exp(σ̄_j/τ) (softmax over layers)."""
    values = torch.tensor(list(sigmas.values()), dtype=torch.float64) / temperature
    s = torch.softmax(values, dim=0)
    return {name: float(v) for name, v in zip(sigmas, s)}


def entropy(weights: dict[str, float]) -> float:
    """Shannon entropy (nats) of a weight distribution; log K when uniform."""
    return -sum(w * math.log(w) for w in weights.values() if w > 0)


@torch.no_grad()
def feature_std(model: nn.Module, names, batches, site: str = "input") -> dict[str, float]:
    """σ̄_k: over batches, the mean over samples of the std (over C, H, W) of layer k's
    input (``site='input'``) or output."""
    sums = {n: 0.0 for n in names}
    count = 0
    with FeatureTaps(model, names, site) as taps:
        for batch in batches:
            model(batch)
            for n in names:
                sums[n] += float(taps.features[n].flatten(1).std(dim=1).mean())
            count += 1
    if count == 0:
        raise ValueError("sensitivity needs at least one calibration batch")
    return {n: s / count for n, s in sums.items()}


__all__ = ["BalanceLoss", "FeatureTaps", "NormalizedFeatureLoss", "OutputL1", "WeightedSum", "entropy",
           "feature_std", "sensitivity_weights"]
