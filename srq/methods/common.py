"""What every method function shares: its result, calibration batches from whatever the
caller hands in, one calibration pass, and a model's scale."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from srq.errors import SrqError
from srq.quant import calibration_mode, quantization_map
from srq.quant.size import quantized_size_mb

DEFAULT_BATCH = 16


@dataclass
class QuantResult:
    """A method's product: the frozen quantized ``model``, seconds per phase and ``info``
    (quantization map, method-specific calibration and fine-tuning records)."""

    model: nn.Module
    time_s: dict[str, float] = field(default_factory=lambda: {"calibrate": 0.0, "finetune": 0.0})
    info: dict = field(default_factory=dict)

    @property
    def student(self) -> nn.Module:
        return self.model


def samples(calib) -> list[torch.Tensor]:
    """Calibration inputs as a list of (3, h, w) tensors: from an (N, 3, h, w) tensor, a
    sequence of (3, h, w) or (B, 3, h, w) tensors, or any iterable of them."""
    if calib is None:
        raise SrqError("no calibration data: pass calib=<(N, 3, h, w) tensor in [0, 1] or an "
                       "iterable of such batches>")
    if isinstance(calib, torch.Tensor):
        calib = [calib] if calib.dim() == 4 else [calib[None]] if calib.dim() == 3 else None
        if calib is None:
            raise SrqError("calib must be an (N, 3, h, w) tensor (or a list of them)")
    out: list[torch.Tensor] = []
    for item in calib:
        if isinstance(item, (tuple, list)):  # (lr, hr) pairs: the LR side
            item = item[0]
        if not isinstance(item, torch.Tensor) or item.dim() not in (3, 4):
            raise SrqError(f"calibration item of type {type(item).__name__} is not a (3, h, w) or "
                           "(B, 3, h, w) tensor")
        out.extend(item.unbind(0) if item.dim() == 4 else [item])
    if not out:
        raise SrqError("the calibration set is empty: pass at least one LR image or patch")
    return out


def as_batches(calib, batch_size: int | None, device=None) -> list[torch.Tensor]:
    """Consecutive batches of ``batch_size`` calibration inputs in a fixed order (inputs of
    different sizes go one by one), on ``device``."""
    items = samples(calib)
    step = (batch_size or DEFAULT_BATCH) if len({tuple(t.shape) for t in items}) == 1 else 1
    return [torch.stack(items[i:i + step]).float().to(device) for i in range(0, len(items), step)]


def device_of(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.zeros(())).device


def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """One no-grad pass over ``batches`` inside :func:`calibration_mode` (one clear error if
    the statistics cannot be collected)."""
    device = device_of(model)
    try:
        with calibration_mode(model), torch.no_grad():
            for batch in batches:
                model(batch.to(device))
    except (RuntimeError, FloatingPointError) as exc:
        raise SrqError(f"calibration failed: {exc}") from exc


def calibrated_copy(model: nn.Module, spec, calib, batch_size, include=("*",), exclude=(),
                    prepare=None):
    """(a deep copy of ``model`` quantized by ``spec`` over the ``include``/``exclude`` globs and
    calibrated on ``calib``, the calibration batches on the model's device); ``prepare``
    (optional) runs on the quantized copy before calibration."""
    from srq.quant import quantize

    batches = as_batches(calib, batch_size, device_of(model))
    student = copy.deepcopy(model)
    quantize(student, spec, include=list(include), exclude=list(exclude), example_input=batches[0][:1])
    if prepare is not None:
        prepare(student)
    calibrate(student, batches)
    return student, batches


@torch.no_grad()
def model_scale(model: nn.Module, example: torch.Tensor) -> int:
    """The SR factor: ``model.scale`` when the model says it, else output width / input width."""
    scale = getattr(model, "scale", None)
    if scale:
        return int(scale)
    out = model(example[:1].to(device_of(model)))
    if out.shape[-1] % example.shape[-1]:
        raise SrqError(f"cannot tell the model's scale: output width {out.shape[-1]} is not a "
                       f"multiple of input width {example.shape[-1]}")
    return out.shape[-1] // example.shape[-1]


def summary(model: nn.Module) -> dict:
    """The info every quantizing method reports."""
    return {"size_mb": quantized_size_mb(model), "quantization_map": quantization_map(model)}


__all__ = ["QuantResult", "as_batches", "calibrate", "calibrated_copy", "device_of", "model_scale", "samples",
           "summary"]
