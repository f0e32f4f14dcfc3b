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

import torch

from srq.errors import SrqError
from srq.methods.uniform import calibration_patches, run_calibration
from srq.quant import QuantFormat, QuantSpec, freeze, quantization_map, quantize
from srq.quant.palettize import PalettSpec, fisher_sensitivity, palettize
from srq.quant.size import quantized_size_mb


class CoreAIFlow:
    def __init__(self, cfg):
        self.cfg = cfg

    def _act_format(self, bits: int) -> QuantFormat:
        mode = "full" if self.cfg.act_qscheme == "symmetric" else "integer"
        return QuantFormat(bits, mode, observer="moving_average",
                           observer_args=(("averaging_constant", float(self.cfg.averaging_constant)),))

    def apply(self, teacher, context):
        run_cfg = context["cfg"]
        bits = run_cfg.bits
        palettized = bool(bits.get("palettize", False))
        if bits.weight_bits is None and bits.act_bits is None:
            raise SrqError("method=coreai needs bits=w8a8, wp4 or wp4a8, not bits=fp32")
        start = time.perf_counter()
        try:
            return self._apply(teacher, run_cfg, bits, palettized, start)
        except (ValueError, RuntimeError, FloatingPointError) as exc:
            raise SrqError(f"method=coreai with bits={bits.name} failed: {exc}") from exc

    def _apply(self, teacher, run_cfg, bits, palettized, start):
        from srq.methods import MethodResult

        calib = calibration_patches(run_cfg, teacher.scale)
        student = copy.deepcopy(teacher)
        include, exclude = list(self.cfg.include), list(self.cfg.exclude)
        info = {}
        if palettized:
            spec = PalettSpec(n_bits=int(bits.weight_bits), granularity=self.cfg.palett.granularity,
                              group_size=int(self.cfg.palett.group_size),
                              lut_bits=self.cfg.palett.lut_bits,
                              min_numel=int(self.cfg.palett.min_numel))
            sensitivity = None
            if self.cfg.sensitive:
                loss = torch.nn.L1Loss() if self.cfg.skm_loss == "l1_hr" else torch.nn.MSELoss()
                sensitivity = fisher_sensitivity(
                    student, calib.batches(run_cfg.calib.batch_size, with_hr=True), loss)
                sensitivity = {k.removeprefix("net."): v for k, v in sensitivity.items()}
            palettes = palettize(student.net, spec, include=[p.removeprefix("net.") for p in include],
                                 exclude=[p.removeprefix("net.") for p in exclude],
                                 sensitivity=sensitivity)
            info["palettized_layers"] = len(palettes)
            weight_fmt = None
        else:
            weight_fmt = QuantFormat(int(bits.weight_bits), "full", axis=0, observer="minmax")
        act_fmt = self._act_format(int(bits.act_bits)) if bits.act_bits is not None else None
        if weight_fmt is not None or act_fmt is not None:
            spec = QuantSpec(weight=weight_fmt, input=act_fmt,
                             output=act_fmt if self.cfg.quantize_outputs else None,
                             layer_policy="all")
            quantize(student, spec, include=include, exclude=exclude, example_input=calib[0][None])
            run_calibration(student, calib, run_cfg.calib.batch_size)
            freeze(student)
        elapsed = time.perf_counter() - start
        info.update(size_mb=quantized_size_mb(student), quantization_map=quantization_map(student),
                    calibration={"source": run_cfg.calib.source, "num_patches": len(calib),
                                 "patch_size": run_cfg.calib.patch_size})
        return MethodResult(student=student, time_s={"calibrate": round(elapsed, 3), "finetune": 0.0},
                            info=info)
