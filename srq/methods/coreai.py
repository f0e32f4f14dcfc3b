"""The coreai-opt flow of seeds 000/001, re-implemented in plain torch.

W8A8 (``bits=w8a8``): int8 symmetric per-output-channel weights from the weights
themselves; int8 per-tensor activations with moving-average min/max (c = 0.01) at the
inputs and outputs of every conv/linear; nothing held back.

Joint W_P4(INT8)_A8 (``bits=wp4a8``; ``wp4`` without activations): palettize → finalize
(weights become LUT constants, int8 LUT) → put activation quantizers on the palettized
model (no weight quantization) → calibrate → finalize, in that order. ``sensitive=true``
uses sensitive k-means with a diagonal Fisher from an L1 loss against HR patches.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from srq.errors import SrqError
from srq.methods.common import QuantResult, as_batches, calibrate, device_of, summary
from srq.methods.config import Config, ConfigError, MethodConfig, choice
from srq.quant import QuantFormat, QuantSpec, freeze, quantize
from srq.quant.palette_fit import palettize_on_outputs
from srq.quant.palettize import GRANULARITIES, PalettSpec, fisher_sensitivity, palettize


@dataclass(frozen=True)
class PalettSettings(Config):
    """LUT layout, and how palettes are chosen: ``fit=weights`` k-means on the weights alone;
    ``fit=outputs`` (:func:`srq.quant.palette_fit.palettize_on_outputs`) the best of
    ``restarts`` k-means seedings by layer output error on the calibration patches, LUTs
    refit by least squares on that output (``refit``), layer by layer in execution order."""

    granularity: str = "per_tensor"
    group_size: int = 8
    lut_bits: int | None = 8
    min_numel: int = 1024
    fit: str = "weights"
    restarts: int = 1
    refit: bool = True
    seed: int = 0  # mixed into every tensor's k-means++ seed (the spread across it: RESULTS §4)

    def validate(self):
        choice(self.granularity, GRANULARITIES, "palett.granularity")
        choice(self.fit, ("weights", "outputs"), "palett.fit")
        if self.restarts < 1:
            raise ConfigError(f"palett.restarts={self.restarts} must be ≥ 1")
        if self.fit == "weights" and self.restarts > 1:
            raise ConfigError("palett.restarts > 1 chooses among k-means runs by output error; "
                              "it needs palett.fit=outputs")


@dataclass(frozen=True)
class CoreAIConfig(MethodConfig):
    name: str = "coreai"
    act_qscheme: str = "symmetric"
    averaging_constant: float = 0.01
    quantize_outputs: bool = True
    sensitive: bool = False
    skm_loss: str = "l1_hr"
    palett: PalettSettings = PalettSettings()
    include: tuple = ("*",)
    exclude: tuple = ()

    def validate(self):
        choice(self.act_qscheme, ("symmetric", "asymmetric"), "act_qscheme")
        choice(self.skm_loss, ("l1_hr", "mse_hr"), "skm_loss")

    @property
    def needs_hr(self) -> bool:
        return self.sensitive and self.bits.palettize


def _act_format(cfg: CoreAIConfig, bits: int) -> QuantFormat:
    mode = "full" if cfg.act_qscheme == "symmetric" else "integer"
    return QuantFormat(bits, mode, observer="moving_average",
                       observer_args=(("averaging_constant", float(cfg.averaging_constant)),))


def coreai_flow(model, cfg: CoreAIConfig, calib, *, hr=None, **_) -> QuantResult:
    """``hr``: the HR crops of ``calib`` (same order), needed by sensitive k-means only."""
    cfg.require_bits("bits=w8a8, wp4 or wp4a8")
    start = time.perf_counter()
    try:
        return _flow(model, cfg, calib, hr, start)
    except (ValueError, RuntimeError, FloatingPointError) as exc:
        raise SrqError(f"method=coreai with bits={cfg.bits.name} failed: {exc}") from exc


def _flow(model, cfg: CoreAIConfig, calib, hr, start) -> QuantResult:
    bits = cfg.bits
    device = device_of(model)
    batches = as_batches(calib, cfg.calib.batch_size, device)
    student = copy.deepcopy(model)
    include, exclude = list(cfg.include), list(cfg.exclude)
    info = {}
    if bits.palettize:
        p = cfg.palett
        spec = PalettSpec(n_bits=int(bits.weight_bits), granularity=p.granularity,
                          group_size=int(p.group_size), lut_bits=p.lut_bits, min_numel=int(p.min_numel),
                          seed=int(p.seed))
        sensitivity = None
        if cfg.sensitive:
            if hr is None:
                raise SrqError("method.sensitive=true needs HR crops of the calibration patches "
                               "(hr=...; in the CLI: calib=t91 or an HR folder)")
            loss = torch.nn.L1Loss() if cfg.skm_loss == "l1_hr" else torch.nn.MSELoss()
            hr_batches = as_batches(hr, cfg.calib.batch_size, device)
            sensitivity = fisher_sensitivity(student, zip(batches, hr_batches), loss)
        if p.fit == "outputs":
            palettes, records = palettize_on_outputs(
                student, model, batches, spec, include, exclude, int(p.restarts), bool(p.refit),
                sensitivity)
            errors = [r["relative_error"] for r in records.values()]
            info["palette_fit"] = {"fit": "outputs", "restarts": int(p.restarts), "refit": bool(p.refit),
                                   "mean_relative_output_error": round(sum(errors) / max(len(errors), 1), 6),
                                   "layers": records}
        else:
            palettes = palettize(student, spec, include=include, exclude=exclude, sensitivity=sensitivity)
        info["palettized_layers"] = len(palettes)
        weight_fmt = None
    else:
        weight_fmt = QuantFormat(int(bits.weight_bits), "full", axis=0, observer="minmax")
    act_fmt = _act_format(cfg, int(bits.act_bits)) if bits.act_bits is not None else None
    if weight_fmt is not None or act_fmt is not None:
        spec = QuantSpec(weight=weight_fmt, input=act_fmt,
                         output=act_fmt if cfg.quantize_outputs else None, layer_policy="all")
        quantize(student, spec, include=include, exclude=exclude, example_input=batches[0][:1])
        calibrate(student, batches)
        freeze(student)
    info.update(summary(student))
    return QuantResult(student, {"calibrate": round(time.perf_counter() - start, 3), "finetune": 0.0},
                       info)
