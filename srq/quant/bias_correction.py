"""Empirical bias correction: remove the per-channel mean shift quantization adds to each
layer's output.

For every quantized layer k with a bias, in execution order,

    b_k ← b_k + E[y_k^FP] − E[ŷ_k],

the expectations per output channel over the calibration set, y_k^FP the FP layer's output
in the FP model and ŷ_k the quantized layer's output in the quantized model with layers
< k already corrected (so the correction also absorbs the shift of its input).
"""

from __future__ import annotations

import torch
from torch import nn

from srq.quant.api import execution_order, forward_with_hooks, wrapped_modules
from srq.quant.modules import QuantModule


def _channel_sum(y: torch.Tensor, linear: bool) -> torch.Tensor:
    """Sum over every dim but the channel one (1 for convs, last for linears)."""
    dims = tuple(range(y.dim() - 1)) if linear else tuple(d for d in range(y.dim()) if d != 1)
    return y.sum(dims)


@torch.no_grad()
def correct_bias(student: nn.Module, teacher: nn.Module, batches: list[torch.Tensor]) -> dict:
    """Correct, in place, the bias of every quantized layer of ``student`` (calibrated, not
    frozen) that has one, against ``teacher`` (its FP original, same module names) on
    ``batches``. One pass over the FP model per batch, one pass over the quantized model with
    all batches as one (the correction of layer k must see layers < k corrected). Returns
    {"layers": corrected, "skipped": layers without a bias, "shift": mean |correction|}."""
    layers = [(n, m) for n, m in wrapped_modules(student)
              if isinstance(m, QuantModule) and m.output_quantizer is None]
    with_bias = [n for n, m in layers if getattr(m.module, "bias", None) is not None]
    wrapped = dict(layers)
    order = execution_order(student, batches[0][:1], with_bias)
    linear = {n: isinstance(wrapped[n].module, nn.Linear) for n in order}
    fp_modules = dict(teacher.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def fp_hook(name):
        def hook(mod, args, out):
            sums[name] = sums.get(name, 0) + _channel_sum(out.double(), linear[name])
            counts[name] = counts.get(name, 0) + out.numel() // out.shape[-1 if linear[name] else 1]
        return hook

    forward_with_hooks(teacher, batches, [fp_modules[n].register_forward_hook(fp_hook(n)) for n in order])
    shifts, done = [], set()

    def q_hook(name):
        def hook(mod, args, out):
            if name in done:  # a module called twice in one forward is corrected once
                return None
            done.add(name)
            target = sums[name] / counts[name]
            got = _channel_sum(out.double(), linear[name]) / (out.numel() // target.numel())
            delta = (target - got).to(out.dtype)
            mod.module.bias.add_(delta)
            shifts.append(float(delta.abs().mean()))
            shape = [1] * out.dim()
            shape[-1 if linear[name] else 1] = -1
            return out + delta.reshape(shape)
        return hook

    forward_with_hooks(student, torch.cat(batches),
                       [wrapped[n].register_forward_hook(q_hook(n)) for n in order if n in sums])
    return {"layers": len(shifts), "skipped": len(layers) - len(with_bias),
            "shift": round(sum(shifts) / max(len(shifts), 1), 6)}


__all__ = ["correct_bias"]
