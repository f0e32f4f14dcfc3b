"""Model size accounting in MB (10^6 bytes), METHODS.md §3.5.

FP parameters count 4 bytes each. A quantized weight counts ``bits/8`` bytes per element
plus its quantization parameters: 4 bytes per scale, plus 4 per zero point/lower bound for
asymmetric formats, one set per tensor or per channel. A palettized weight counts
``n_bits/8`` per element plus its LUTs (2^n entries of 1 byte when int8, else 4) and one
4-byte scale per int8 LUT. Biases and every other parameter stay FP32.
"""

from __future__ import annotations

from torch import nn


def fp32_size_mb(model: nn.Module) -> float:
    return 4 * sum(p.numel() for p in model.parameters()) / 1e6


def _weight_bytes(module: nn.Module) -> tuple[float, int] | None:
    """(bytes, parameter numel) of a module's palettized or quantized weight, None if FP."""
    palette = getattr(module, "palette", None)
    if palette is not None:
        return palette.size_bytes(), module.weight.numel()
    wq = getattr(module, "weight_quantizer", None)
    if wq is None:
        return None
    weight = module.module.weight
    fmt = wq.fmt
    groups = 1 if fmt.axis is None else weight.shape[fmt.axis]
    qparams = groups * (4 if fmt.symmetric else 8)
    return weight.numel() * fmt.bits / 8 + qparams, weight.numel()


def quantized_size_mb(model: nn.Module) -> float:
    """Size with quantized/palettized weights at their bit-width, the rest FP32."""
    from srq.quant.api import quantizers

    qparams = {id(p) for _, q in quantizers(model) for p in q.parameters()}
    total = 4 * sum(p.numel() for p in model.parameters() if id(p) not in qparams)
    for module in model.modules():
        counted = _weight_bytes(module)
        if counted is not None:
            size, numel = counted
            total += size - 4 * numel
    return total / 1e6
