"""Per-channel input shifts folded into biases (channel-wise shifting, as in Outlier
Suppression+).

For a Linear y = W x + b and a per-channel constant c over its (rotated, if the layer rotates
it) input, y = W (x − c) + (b + W c): the wrapper subtracts c before its input quantizer and
the bias takes W c, so in FP the function is unchanged. A conv (groups 1, zero padding) is
padded first and then shifted, pads included, and runs unpadded: y = W ⊛ (pad(x) − c) +
(b + Σₖ Wₖ c), exact at the borders too. The per-tensor activation grid then covers x − c,
whose channels are centred. It matters most after a Hadamard rotation of a non-negative input
(GELU / LeakyReLU outputs): H sends the mean of the channels into one coefficient,
(H x)₀ = √n · mean(x), an outlier √n times the mean that a per-tensor grid must cover (IMDTN
×4 fc2 inputs: channel 0 ≈ 3–7 against ≈ 0.5–1 elsewhere).

``mode``: mean (cᵢ = E[xᵢ] over the calibration tokens / pixels) | midpoint
(cᵢ = (max xᵢ + min xᵢ)/2, OS+'s choice).
"""

from __future__ import annotations

import torch
from torch import nn

SHIFTS = ("none", "mean", "midpoint")
SHIFTED_LAYERS = ("linear", "conv", "all")


def shiftable(module: nn.Module, layers: str = "linear") -> bool:
    """Whether wrapped ``module`` takes an input shift under ``layers`` (linear: Linear | conv:
    Conv2d with groups 1, zero padding given as ints | all: both), not frozen or shifted."""
    from srq.quant.modules import QuantConv2d, QuantLinear

    if isinstance(module, QuantLinear):
        ok = layers in ("linear", "all")
    elif isinstance(module, QuantConv2d):
        m = module.module
        ok = (layers in ("conv", "all") and m.groups == 1 and m.padding_mode == "zeros"
              and not isinstance(m.padding, str))
    else:
        return False
    return ok and not module.frozen and module.input_shift is None


@torch.no_grad()
def shift_inputs(model: nn.Module, batches, mode: str = "mean", layers: str = "linear",
                 exclude=()) -> list[str]:
    """Set ``input_shift`` = c and fold it into the bias of every wrapped layer of ``model``
    that is :func:`shiftable` under ``layers`` and whose name matches no glob of ``exclude``, c
    from its (rotated) FP inputs over ``batches`` (every quantizer off while they run); call it
    after any rotation and before calibration. Returns the names shifted."""
    from srq.quant.api import _matches, quantizers, wrapped_modules

    if mode not in SHIFTS:
        raise ValueError(f"mode={mode!r}: shift by one of {SHIFTS}")
    if layers not in SHIFTED_LAYERS:
        raise ValueError(f"layers={layers!r}: shift one of {SHIFTED_LAYERS}")
    if mode == "none":
        return []
    chosen = {n: m for n, m in wrapped_modules(model) if shiftable(m, layers) and not _matches(n, exclude)}
    stats: dict[str, list] = {}

    def hook(name):
        def record(module, args):
            x = module.quantized_input(args[0])  # rotated (quantizers off, no shift yet)
            x = x.movedim(module.channel_dim, -1).reshape(-1, x.shape[module.channel_dim]).double()
            s = stats.setdefault(name, [torch.zeros_like(x[0]), 0, x[0].clone(), x[0].clone()])
            s[0] += x.sum(0)
            s[1] += x.shape[0]
            torch.minimum(s[2], x.amin(0), out=s[2])
            torch.maximum(s[3], x.amax(0), out=s[3])
        return record

    states = [(q, q.enabled, q.observing) for _, q in quantizers(model)]
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in chosen.items()]
    try:
        for _, q in quantizers(model):
            q.enabled, q.observing = False, False
        for batch in batches:
            model(batch)
    finally:
        for h in handles:
            h.remove()
        for q, enabled, observing in states:
            q.enabled, q.observing = enabled, observing
    done = []
    for name, (total, count, lo, hi) in stats.items():
        module, layer = chosen[name], chosen[name].module
        c = (total / count if mode == "mean" else (lo + hi) / 2).to(layer.weight.dtype)
        w = layer.weight if layer.weight.dim() == 2 else layer.weight.sum((2, 3))  # Σₖ Wₖ
        fold = w @ c
        if layer.bias is None:
            layer.bias = nn.Parameter(fold, requires_grad=layer.weight.requires_grad)
        else:
            layer.bias.add_(fold)
        module.input_shift = c.clone()
        done.append(name)
    return done


__all__ = ["SHIFTED_LAYERS", "SHIFTS", "shift_inputs", "shiftable"]
