"""Calibration-only PTQ with uniform quantizers: MinMax, EMA MinMax, Percentile, MSE.

quantize(student, spec) → calibration_mode over the calibration patches → freeze.
The observer choice is the only difference between these baselines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from srq.errors import SrqError
from srq.methods.common import QuantResult, calibrated_copy, summary
from srq.methods.config import Bits, Config, MethodConfig, choice
from srq.quant import QuantFormat, QuantSpec, freeze
from srq.quant.api import LAYER_POLICIES
from srq.quant.observers import OBSERVERS
from srq.quant.primitives import MODES


@dataclass(frozen=True)
class TensorSettings(Config):
    """How one side (weights or activations) is quantized: observer, mode, granularity."""

    observer: str = "minmax"
    mode: str = "free"
    per_channel: bool = False
    args: dict = field(default_factory=dict)

    def validate(self):
        choice(self.observer, OBSERVERS, "observer")
        choice(self.mode, MODES, "mode")


@dataclass(frozen=True)
class UniformConfig(MethodConfig):
    """``minmax`` / ``ema_minmax`` / ``percentile`` / ``mse``: the observers decide the bounds."""

    name: str = "minmax"
    weight: TensorSettings = TensorSettings(mode="narrow", per_channel=True)
    act: TensorSettings = TensorSettings(mode="integer")
    layer_policy: str = "first_last_8bit"
    matmul: bool = False  # also quantize the operands of attention products (srq.MatMul)
    include: tuple = ("*",)
    exclude: tuple = ()

    def validate(self):
        choice(self.layer_policy, LAYER_POLICIES, "layer_policy")


def tensor_format(part: TensorSettings, bits: int | None, weight: bool) -> QuantFormat | None:
    if bits is None:
        return None
    axis = 0 if weight and part.per_channel else None
    try:
        return QuantFormat(bits=int(bits), mode=part.mode, axis=axis, observer=part.observer,
                           observer_args=tuple(sorted(dict(part.args or {}).items())))
    except ValueError as exc:
        raise SrqError(f"{exc}; pick another bits= config") from exc


def uniform_spec(cfg: UniformConfig, bits: Bits) -> QuantSpec:
    return QuantSpec(weight=tensor_format(cfg.weight, bits.weight_bits, weight=True),
                     input=tensor_format(cfg.act, bits.act_bits, weight=False),
                     layer_policy=cfg.layer_policy, matmul=bool(cfg.matmul))


def uniform_ptq(model, cfg: UniformConfig, calib, **_) -> QuantResult:
    """quantize a copy of ``model`` → calibrate on ``calib`` → freeze."""
    cfg.require_bits("e.g. bits=w8a8")
    if cfg.bits.palettize:
        raise SrqError(f"bits={cfg.bits.name} palettizes weights, which method={cfg.name} does "
                       "not do; use method=coreai")
    spec = uniform_spec(cfg, cfg.bits)
    start = time.perf_counter()
    student, _ = calibrated_copy(model, spec, calib, cfg.calib.batch_size, cfg.include, cfg.exclude)
    freeze(student)
    return QuantResult(student, {"calibrate": round(time.perf_counter() - start, 3), "finetune": 0.0},
                       summary(student))
