"""Which quantizers integer kernels can run, and moving the others to the nearest integer grid.

An integer kernel (ONNX QuantizeLinear/DequantizeLinear, int8 GEMM/conv) computes
x_q = Δ·(r − z) with r, z integers of at most 8 bits and 0 on the grid: formats ``integer``,
``narrow`` and ``full`` (:func:`srq.quant.primitives.deployable_mode`). ``free`` and
``two_bound`` (x_q = l + Δ·r, 0 off the grid) have a non-integer offset −l/Δ; the nearest
integer grid keeps (l, u) and rounds the offset, z = ⌊−l/Δ⌉ (``integer`` mode). Piecewise-linear
(dual-region) quantizers and palettized weights have no integer-grid equivalent.
"""

from __future__ import annotations

import torch
from torch import nn

from srq.quant.api import quantizers, wrapped_modules
from srq.quant.modules import QuantModule
from srq.quant.primitives import dequantize, deployable_mode, fake_quantize_codes
from srq.quant.quantizer import UniformQuantizer

CONVERTIBLE_MODES = ("free", "two_bound")


def integer_report(model: nn.Module) -> dict:
    """``{"deployable": bool, "convertible": [names], "blocked": {name: why}}`` over every
    enabled quantizer (names as in ``model.named_modules()``) and palettized weight."""
    convertible, blocked = [], {}
    for name, q in quantizers(model):
        if not q.enabled:
            continue
        if not isinstance(q, UniformQuantizer):
            blocked[name] = f"{type(q).__name__} (dual-region / piecewise-linear grid)"
        elif q.fmt.bits > 8:
            blocked[name] = f"{q.fmt.bits}-bit codes (integer kernels take at most 8)"
        elif q.fmt.mode in CONVERTIBLE_MODES:
            convertible.append(name)
        elif not deployable_mode(q.fmt.mode):
            blocked[name] = f"mode {q.fmt.mode}"
    for name, module in model.named_modules():
        if getattr(module, "palette", None) is not None:
            blocked[f"{name}.weight"] = "palettized weight (k-means LUT, no uniform grid)"
    return {"deployable": not convertible and not blocked, "convertible": convertible,
            "blocked": blocked}


@torch.no_grad()
def to_integer_formats(model: nn.Module) -> list[str]:
    """In place: every ``free``/``two_bound`` quantizer becomes ``integer`` with the same
    bounds (frozen weights are re-rounded onto the new grid, W ← Q_int(W)); returns the
    converted quantizer names. Blocked quantizers (see :func:`integer_report`) stay as they are."""
    report = integer_report(model)
    todo = set(report["convertible"])
    owners = {}
    for name, module in wrapped_modules(model):
        if isinstance(module, QuantModule) and module.weight_quantizer is not None:
            owners[f"{name}.weight_quantizer"] = module
    for name, q in quantizers(model):
        if name not in todo:
            continue
        if q.fmt.mode == "two_bound":
            q.lo.copy_(-q.hi)
        q.fmt = q.fmt.replace(mode="integer")
        module = owners.get(name)
        if module is not None and module.frozen:
            w = module.module.weight
            codes = fake_quantize_codes(w.detach().clone(), q.lo, q.hi, q.fmt.bits, q.fmt.mode,
                                        q.fmt.rounding)
            w.copy_(dequantize(codes, q.lo, q.hi, q.fmt.bits, q.fmt.mode))
    return sorted(todo)


__all__ = ["CONVERTIBLE_MODES", "integer_report", "to_integer_formats"]
