"""Calibration-only PTQ with uniform quantizers: MinMax, EMA MinMax, Percentile, MSE.

quantize(student, spec) → calibration_mode over the calibration patches → freeze.
The observer choice is the only difference between these baselines.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from srq.data.calibration import CalibrationConfig, CalibrationPatches
from srq.errors import SrqError
from srq.quant import (
    QuantFormat,
    QuantSpec,
    calibration_mode,
    freeze,
    quantization_map,
    quantize,
)
from srq.quant.size import quantized_size_mb


def calibration_patches(cfg, scale: int) -> CalibrationPatches:
    c = cfg.calib
    return CalibrationPatches(CalibrationConfig(
        source=c.source, num_patches=c.num_patches, patch_size=c.patch_size, seed=c.seed,
        folder=c.get("folder"), folder_is_hr=c.get("folder_is_hr", True),
        set_name=c.get("set_name", "B100")), scale)


def _format(part, bits: int | None, weight: bool) -> QuantFormat | None:
    if bits is None:
        return None
    axis = 0 if weight and part.get("per_channel", False) else None
    try:
        return QuantFormat(bits=int(bits), mode=part.mode, axis=axis, observer=part.observer,
                           observer_args=tuple(sorted(dict(part.get("args") or {}).items())))
    except ValueError as exc:
        raise SrqError(f"{exc}; pick another bits= config") from exc


def spec_from_config(method_cfg, bits_cfg) -> QuantSpec:
    return QuantSpec(weight=_format(method_cfg.weight, bits_cfg.weight_bits, weight=True),
                     input=_format(method_cfg.act, bits_cfg.act_bits, weight=False),
                     layer_policy=method_cfg.layer_policy)


def run_calibration(model: nn.Module, calib: CalibrationPatches, batch_size: int) -> None:
    device = next(model.parameters()).device
    with calibration_mode(model), torch.no_grad():
        for batch in calib.batches(batch_size):
            model(batch.to(device))


class UniformPTQ:
    """A baseline PTQ method: the observers in ``cfg`` decide the bounds."""

    def __init__(self, cfg):
        self.cfg = cfg

    def apply(self, teacher: nn.Module, context):
        from srq.methods import MethodResult

        run_cfg = context["cfg"]
        if run_cfg.bits.weight_bits is None and run_cfg.bits.act_bits is None:
            raise SrqError(f"method={self.cfg.name} needs a quantized bits= config (e.g. "
                           "bits=w8a8), not bits=fp32")
        if run_cfg.bits.get("palettize", False):
            raise SrqError(f"bits={run_cfg.bits.name} palettizes weights, which "
                           f"method={self.cfg.name} does not do; use method=coreai")
        spec = spec_from_config(self.cfg, run_cfg.bits)
        start = time.perf_counter()
        calib = calibration_patches(run_cfg, teacher.scale)  # never empty: see CalibrationConfig
        student = copy.deepcopy(teacher)
        quantize(student, spec, include=list(self.cfg.include), exclude=list(self.cfg.exclude),
                 example_input=calib[0][None])
        try:
            run_calibration(student, calib, run_cfg.calib.batch_size)
        except (RuntimeError, FloatingPointError) as exc:
            raise SrqError(f"calibration failed: {exc}") from exc
        freeze(student)
        elapsed = time.perf_counter() - start
        return MethodResult(student=student, time_s={"calibrate": round(elapsed, 3), "finetune": 0.0},
                            info={"size_mb": quantized_size_mb(student),
                                  "quantization_map": quantization_map(student),
                                  "calibration": {"source": run_cfg.calib.source,
                                                  "num_patches": len(calib),
                                                  "patch_size": run_cfg.calib.patch_size}})
