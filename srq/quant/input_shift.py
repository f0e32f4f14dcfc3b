"""Per-channel input shifts folded into Linear biases (channel-wise shifting, as in Outlier
Suppression+).

For a Linear y = W x + b and a per-channel constant c over its (rotated, if the layer rotates
it) input, y = W (x − c) + (b + W c): the wrapper subtracts c before its input quantizer and
the bias takes W c, so in FP the function is unchanged. The per-tensor activation grid then
covers x − c, whose channels are centred. It matters most after a Hadamard rotation of a
non-negative input (GELU outputs): H sends the mean μ of every channel into one coefficient,
(H x)₀ = √n · mean(x), an outlier channel √n times the mean that a per-tensor grid must
cover (IMDTN ×4 fc2 inputs: channel 0 ≈ 3–7 against ≈ 0.5–1 elsewhere). Convs are left
alone: zero padding does not commute with a shift.

``mode``: mean (cᵢ = E[xᵢ] over the calibration tokens) | midpoint (cᵢ = (max xᵢ + min xᵢ)/2,
OS+'s choice).
"""

from __future__ import annotations

import torch
from torch import nn

SHIFTS = ("none", "mean", "midpoint")


@torch.no_grad()
def shift_inputs(model: nn.Module, batches, mode: str = "mean", exclude=()) -> list[str]:
    """Set ``input_shift`` = c and b ← b + W c on every wrapped Linear of ``model`` whose name
    matches no glob of ``exclude``, c from its (rotated) FP inputs over ``batches`` (every
    quantizer off while they run); call it after any rotation and before calibration. Returns
    the names shifted."""
    from srq.quant.api import _matches, quantizers, wrapped_modules
    from srq.quant.modules import QuantLinear

    if mode not in SHIFTS:
        raise ValueError(f"mode={mode!r}: shift by one of {SHIFTS}")
    if mode == "none":
        return []
    layers = {n: m for n, m in wrapped_modules(model) if isinstance(m, QuantLinear)
              and not m.frozen and m.input_shift is None and not _matches(n, exclude)}
    stats: dict[str, list[torch.Tensor]] = {}

    def hook(name):
        def record(module, args):
            x = module.quantized_input(args[0]) if module.input_rotation else args[0]
            x = x.reshape(-1, x.shape[-1]).double()
            s = stats.setdefault(name, [torch.zeros_like(x[0]), 0, x[0].clone(), x[0].clone()])
            s[0] += x.sum(0)
            s[1] += x.shape[0]
            torch.minimum(s[2], x.amin(0), out=s[2])
            torch.maximum(s[3], x.amax(0), out=s[3])
        return record

    states = [(q, q.enabled, q.observing) for _, q in quantizers(model)]
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
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
        module = layers[name]
        c = (total / count if mode == "mean" else (lo + hi) / 2).to(module.module.weight.dtype)
        linear = module.module
        fold = linear.weight @ c
        if linear.bias is None:
            linear.bias = nn.Parameter(fold, requires_grad=linear.weight.requires_grad)
        else:
            linear.bias.add_(fold)
        module.input_shift = c.clone()
        done.append(name)
    return done


__all__ = ["SHIFTS", "shift_inputs"]
