"""Palettes fitted on layer outputs: k-means restarts chosen, and LUTs refit, by the error of
the layer's output on calibration inputs instead of the error of its weights.

With the indices a(i) fixed, a layer f(x; W) that is linear in W sees W = Σ_k c_{g,k} M_{g,k}
(M the index masks of LUT g), so its output is linear in the LUT entries:

    f(x; W) − f(x; 0) = Σ_k c_k Z_k,      Z_k = f(x; M_k) − f(x; 0).

Per LUT, c* = argmin ‖Σ_k c_k Z_k − r‖² + λ‖c − c₀‖² with r = y − f(x; 0), solved from the
K×K Gram G = ⟨Z_k, Z_l⟩ and b = ⟨Z_k, r⟩: (G + λI) c = b + λc₀, λ = 10⁻⁴·mean diag G and c₀
the k-means centroids (an entry no weight uses stays put); then the int8 LUT step as usual.
Layers go in execution order with x from the model palettized so far and y from the FP
teacher, so each refit also absorbs the error of the layers before it. Of ``restarts``
k-means++ seedings the one with the lowest output error ‖Σ c_k Z_k − r‖² is kept.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from torch.func import functional_call

from srq.quant.api import execution_order
from srq.quant.palettize import Palette, PalettSpec, palettize_tensor, quantize_lut, selected_layers
from srq.quant.reconstruct import capture

RESTART_SEED_STEP = 7919  # restart r uses seed spec.seed + r·7919


def _channels_first(out: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """(N, C, S): output channels on dim 1 (a Linear's are last)."""
    if isinstance(module, nn.Linear):
        out = out.movedim(-1, 1)
    return out.reshape(out.shape[0], out.shape[1], -1)


def _call(module: nn.Module, weight: torch.Tensor, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
    params = {"weight": weight}
    if getattr(module, "bias", None) is not None and not bias:
        params["bias"] = torch.zeros_like(module.bias)
    return functional_call(module, params, (x,))


@torch.no_grad()
def output_gram(module: nn.Module, indices: torch.Tensor, k: int, per_lut: int, inputs, targets):
    """Per LUT: (G (L, K, K), b (L, K), ‖r‖² (L,)) of the refit problem above, summed over
    the (input, FP output) pairs."""
    masks = [(indices == j).to(module.weight.dtype) for j in range(k)]
    zero = torch.zeros_like(module.weight)
    G = b = rr = None
    for x, y in zip(inputs, targets):
        base = _call(module, zero, x)
        r = _channels_first(y - base, module)  # (N, C, S)
        z = torch.stack([_channels_first(_call(module, m, x, bias=False), module) for m in masks])
        c = r.shape[1]
        zc = z.permute(2, 0, 1, 3).reshape(c, k, -1)  # (C, K, N·S)
        rc = r.permute(1, 0, 2).reshape(c, -1)  # (C, N·S)
        g_, b_, rr_ = (zc @ zc.transpose(1, 2)).double(), (zc @ rc[..., None])[..., 0].double(), \
            rc.double().pow(2).sum(1)
        G, b, rr = (g_, b_, rr_) if G is None else (G + g_, b + b_, rr + rr_)
    lut = torch.arange(G.shape[0], device=G.device) // per_lut
    n = int(lut[-1]) + 1
    sum_lut = lambda t: torch.zeros((n,) + t.shape[1:], dtype=t.dtype, device=t.device).index_add_(0, lut, t)  # noqa: E731
    return sum_lut(G), sum_lut(b), sum_lut(rr)


def output_error(G: torch.Tensor, b: torch.Tensor, rr: torch.Tensor, luts: torch.Tensor) -> float:
    """Σ_LUT ‖Σ_k c_k Z_k − r‖² = cᵀGc − 2bᵀc + ‖r‖²."""
    c = luts.double()
    return float((torch.einsum("lk,lkm,lm->l", c, G, c) - 2 * (b * c).sum(1) + rr).sum())


def refit_luts(G: torch.Tensor, b: torch.Tensor, luts: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
    """(G + λI) c = b + λc₀ per LUT, λ = ``ridge``·mean diag G."""
    c0 = luts.double()
    lam = ridge * torch.diagonal(G, dim1=1, dim2=2).mean(1).clamp_min(1e-30)
    eye = torch.eye(G.shape[1], dtype=G.dtype, device=G.device)
    c = torch.linalg.solve(G + lam[:, None, None] * eye, b + lam[:, None] * c0)
    return c.to(luts.dtype)


def fit_palette(module: nn.Module, spec: PalettSpec, inputs, targets, restarts: int = 4,
                refit: bool = True, sensitivity: torch.Tensor | None = None) -> tuple[Palette, dict]:
    """The best of ``restarts`` k-means palettes of ``module.weight`` (LUTs refit when
    ``refit``), by output error on (``inputs``, FP ``targets``); (palette, record)."""
    k, device = 2 ** spec.n_bits, module.weight.device
    errors, best = [], None
    for r in range(max(int(restarts), 1)):
        palette = palettize_tensor(module.weight, replace(spec, seed=spec.seed + RESTART_SEED_STEP * r),
                                   0, sensitivity).to(device)
        G, b, rr = output_gram(module, palette.indices.long(), k, palette.channels_per_group,
                               inputs, targets)
        luts = palette.luts
        if refit:
            luts = refit_luts(G, b, luts)
            scales = None
            if spec.lut_bits == 8:
                pairs = [quantize_lut(c) for c in luts]
                luts, scales = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
            palette = Palette(palette.indices, luts, scales, palette.channels_per_group, 0, spec)
        errors.append(output_error(G, b, rr, palette.luts))
        if best is None or errors[-1] < errors[best[0]]:
            best = (r, palette)
    base = float(rr.sum())
    return best[1], {"restart": best[0], "relative_error": round(errors[best[0]] / base, 6) if base else 0.0,
                     "relative_errors": [round(e / base, 6) if base else 0.0 for e in errors]}


def palettize_on_outputs(student: nn.Module, teacher: nn.Module, batches: list[torch.Tensor],
                         spec: PalettSpec, include=None, exclude=None, restarts: int = 4,
                         refit: bool = True, sensitivity: dict | None = None,
                         progress: bool = True) -> tuple[dict[str, Palette], dict]:
    """:func:`srq.quant.palettize.palettize` (same layers, finalized in place) with each
    layer's palette chosen and refit on its output, in execution order; ConvTranspose2d
    layers are palettized by k-means alone. (palettes, {name: record})."""
    from tqdm.auto import tqdm

    if student is teacher:
        raise ValueError("palettize_on_outputs needs the student to be a copy of the FP teacher")
    layers = selected_layers(student, spec, include, exclude)
    order = execution_order(student, batches[0][:1], list(layers))
    order += [n for n in layers if n not in order]
    done, records = {}, {}
    for name in tqdm(order, desc="palettize", unit="layer", disable=not progress, leave=False):
        module = layers[name]
        h = None if sensitivity is None else sensitivity.get(name)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            inputs = [rec[0][0] for rec in capture(student, name, batches)]
            targets = [rec[2] for rec in capture(teacher, name, batches, output=True)]
            palette, records[name] = fit_palette(module, spec, inputs, targets, restarts, refit, h)
        else:
            axis = 1 if isinstance(module, nn.ConvTranspose2d) else 0
            palette = palettize_tensor(module.weight, spec, axis, h).to(module.weight.device)
        with torch.no_grad():
            module.weight.copy_(palette.weight())
        module.palette = palette
        done[name] = palette
    return done, records


__all__ = ["fit_palette", "output_error", "output_gram", "palettize_on_outputs", "refit_luts"]
