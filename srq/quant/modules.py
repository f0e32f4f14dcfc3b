"""Quantized wrappers: the original module plus weight, input and (optionally) output quantizers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srq.ops import MatMul
from srq.quant.plq import PiecewiseLinearQuantizer, PLQFormat
from srq.quant.quantizer import QuantFormat, Quantizer, UniformQuantizer
from srq.quant.rotation import fwht


def build_quantizer(fmt: QuantFormat | PLQFormat) -> Quantizer:
    """The quantizer module for a format (uniform or piecewise-linear)."""
    if isinstance(fmt, PLQFormat):
        return PiecewiseLinearQuantizer(fmt)
    return UniformQuantizer(fmt)


class QuantModule(nn.Module):
    """Base wrapper: ``module`` keeps its parameters; ``weight_quantizer`` and
    ``input_quantizer`` are None when that tensor stays FP. After :func:`freeze`,
    ``module.weight`` *is* the quantized weight (one copy, on the grid) and ``frozen`` is set."""

    weight_axis = 0
    channel_dim = 1  # the input's channel dim (an input rotation acts on it)

    def __init__(self, module: nn.Module, weight: QuantFormat | None, inputs: QuantFormat | None,
                 outputs: QuantFormat | None = None):
        super().__init__()
        self.module = module
        self.is_edge = False  # first/last layer under the layer policy (set by quantize)
        self.weight_quantizer = None
        if weight is not None:
            fmt = weight if weight.axis is None else weight.replace(axis=self.weight_axis)
            self.weight_quantizer = UniformQuantizer(fmt)
        self.input_quantizer = build_quantizer(inputs) if inputs is not None else None
        self.output_quantizer = build_quantizer(outputs) if outputs is not None else None
        self.input_rotation = None  # "hadamard": x ↦ H x before the input quantizer (rotation.py)
        self.register_buffer("input_shift", None)  # per-channel c: x ↦ x − c after the rotation (input_shift.py)
        self.frozen = False

    def forward(self, x):
        out = self.compute(self.quantized_input(x), self.quantized_weight())
        return self.output_quantizer(out) if self.output_quantizer is not None else out

    def quantized_weight(self) -> torch.Tensor:
        w = self.module.weight
        if self.frozen or self.weight_quantizer is None:
            return w
        return self.weight_quantizer(w)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_rotation is not None:
            x = fwht(x, dim=self.channel_dim)
        if self.input_shift is not None:
            shape = [1] * x.dim()
            shape[self.channel_dim] = -1
            x = x - self.input_shift.reshape(shape)
        return self.input_quantizer(x) if self.input_quantizer is not None else x

    def formats(self) -> dict[str, str | None]:
        out = {"weight": str(self.weight_quantizer.fmt) if self.weight_quantizer else None,
               "input": str(self.input_quantizer.fmt) if self.input_quantizer else None}
        palette = getattr(self.module, "palette", None)
        if palette is not None:
            lut = "int8 LUT" if palette.lut_scales is not None else "fp32 LUT"
            out["weight"] = f"palettized {palette.spec.n_bits}-bit {palette.spec.granularity} {lut}"
        if self.output_quantizer is not None:
            out["output"] = str(self.output_quantizer.fmt)
        if self.input_rotation is not None:
            out["input_rotation"] = self.input_rotation
        if self.input_shift is not None:
            out["input_shift"] = "per-channel, folded into the bias"
        return out


class QuantConv2d(QuantModule):
    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_shift is not None:  # pad first, so the padding is shifted too (exact fold)
            ph, pw = self.module.padding
            x = F.pad(x, (pw, pw, ph, ph))
        return super().quantized_input(x)

    def compute(self, x, w):
        m = self.module
        if self.input_shift is not None:  # padded in quantized_input
            return F.conv2d(x, w, m.bias, m.stride, 0, m.dilation, m.groups)
        return m._conv_forward(x, w, m.bias)


class QuantConvTranspose2d(QuantModule):
    weight_axis = 1  # (in, out/groups, kh, kw): output channels are dim 1

    def compute(self, x, w):
        m = self.module
        return F.conv_transpose2d(x, w, m.bias, m.stride, m.padding, m.output_padding,
                                  m.groups, m.dilation)


class QuantLinear(QuantModule):
    channel_dim = -1

    def compute(self, x, w):
        return F.linear(x, w, self.module.bias)


class QuantMatMul(nn.Module):
    """a @ b with both operands fake-quantized (attention's Q·Kᵀ and A·V)."""

    def __init__(self, module: MatMul, weight: QuantFormat | None, inputs: QuantFormat | None,
                 outputs: QuantFormat | None = None):
        super().__init__()
        self.module = module
        self.is_edge = False
        self.input_quantizer = build_quantizer(inputs) if inputs is not None else None
        self.other_quantizer = build_quantizer(inputs) if inputs is not None else None

    def forward(self, a, b):
        if self.input_quantizer is not None:
            a, b = self.input_quantizer(a), self.other_quantizer(b)
        return self.module(a, b)

    def formats(self) -> dict[str, str | None]:
        if self.input_quantizer is None:
            return {"weight": None, "input": None, "other": None}
        return {"weight": None, "input": str(self.input_quantizer.fmt),
                "other": str(self.other_quantizer.fmt)}


WRAPPERS: dict[type, type] = {
    nn.Conv2d: QuantConv2d,
    nn.ConvTranspose2d: QuantConvTranspose2d,
    nn.Linear: QuantLinear,
    MatMul: QuantMatMul,
}
