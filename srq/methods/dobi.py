"""DOBI (2DQuant's bound initialisation, METHODS.md §5.3) as a PTQ method.

quantize (per-tensor Q-range weights and inputs, attention matmuls included) → one FP
calibration pass in which every quantizer searches its (l, u) among ``dobi.candidates``
narrowed bounds by quantization MSE → freeze. ``2dquant`` adds DQC on top (srq/methods/dqc.py).

Quantized ops (``ops``): ``transformer`` = every Linear and attention MatMul (2DQuant's set on
SwinIR-light: q/k/v, proj, fc1, fc2 and both matmuls; convolutions stay FP, so there is no
first/last layer); ``cnn`` = every conv/linear under ``layer_policy``; ``auto`` picks
``transformer`` when the model has attention matmuls.
"""

from __future__ import annotations

import copy
import time

from srq.errors import SrqError
from srq.methods.finetune import finetune_data
from srq.methods.uniform import run_calibration
from srq.models.archs.common import MatMul
from srq.quant import QuantFormat, QuantSpec, freeze, quantization_map, quantize
from srq.quant.size import quantized_size_mb

OPS = ("auto", "transformer", "cnn")


class DOBIInit:
    def __init__(self, cfg):
        self.cfg = cfg

    def ops(self, model) -> str:
        ops = self.cfg.ops
        if ops not in OPS:
            raise SrqError(f"unknown method.ops {ops!r}; valid: {', '.join(OPS)}")
        if ops == "auto":
            return "transformer" if any(isinstance(m, MatMul) for m in model.modules()) else "cnn"
        if ops == "transformer" and not any(isinstance(m, MatMul) for m in model.modules()):
            raise SrqError("method.ops=transformer needs a model with attention matmuls; this one "
                           "has none (use ops=cnn or auto)")
        return ops

    def spec(self, bits_cfg, ops: str) -> QuantSpec:
        wbits, abits = bits_cfg.weight_bits, bits_cfg.act_bits
        if (wbits is None and abits is None) or bits_cfg.get("palettize", False):
            raise SrqError(f"method={self.cfg.name} needs uniform bits; pick bits=w4a4 / w3a3 / "
                           f"w2a2, or w4a32 / w32a4 for one side only (got bits={bits_cfg.name})")
        d = self.cfg.dobi
        args = (("candidates", int(d.candidates)), ("include_last", bool(d.include_last)),
                ("step", str(d.one_sided_step)), ("tie", str(d.tie)))
        try:
            weight = None if wbits is None else QuantFormat(int(wbits), "free", observer="dobi",
                                                            observer_args=args)
            act = None if abits is None else QuantFormat(int(abits), "free", observer="dobi",
                                                         observer_args=args)
        except ValueError as exc:
            raise SrqError(f"{exc}; pick another bits= config") from exc
        overrides = () if act is None else tuple(
            (glob, act.replace(observer_args=tuple(sorted(args + (("one_sided", True),)))))
            for glob in d.one_sided_for)
        if ops == "transformer":
            return QuantSpec(weight=weight, input=act, layer_policy="all", matmul=True,
                             input_overrides=overrides)
        return QuantSpec(weight=weight, input=act, layer_policy=self.cfg.layer_policy,
                         edge_weight=weight and weight.replace(bits=8),
                         edge_input=act and act.replace(bits=8), input_overrides=overrides)

    def quantized_copy(self, teacher, spec: QuantSpec, ops: str, example):
        """A deep copy of ``teacher`` with the op set ``ops`` wrapped by ``spec`` (uncalibrated):
        cnn → every conv/linear; transformer → every Linear and attention MatMul."""
        student = copy.deepcopy(teacher)
        include = ["*"] if ops == "cnn" else [
            n for n, m in teacher.named_modules() if type(m).__name__ in ("Linear", "MatMul")]
        quantize(student, spec, include=include, exclude=list(self.cfg.exclude), example_input=example)
        return student

    def prepare(self, teacher, context, data=None):
        """quantize + DOBI calibration → (student, train patches, val patches, info, seconds);
        ``data``: the (train, val, info) of :func:`finetune_data` when already drawn."""
        run_cfg = context["cfg"]
        ops = self.ops(teacher)
        spec = self.spec(run_cfg.bits, ops)
        start = time.perf_counter()
        train, val, data_info = data or finetune_data(run_cfg, self.cfg, teacher.scale)
        student = self.quantized_copy(teacher, spec, ops, train[0][None])
        try:
            run_calibration(student, train, data_info["batch_size"])
        except (RuntimeError, FloatingPointError) as exc:
            raise SrqError(f"calibration failed: {exc}") from exc
        data_info["ops"] = ops
        return student, train, val, data_info, time.perf_counter() - start

    def apply(self, teacher, context):
        from srq.methods import MethodResult

        student, _, _, info, seconds = self.prepare(teacher, context)
        freeze(student)
        return MethodResult(student=student, time_s={"calibrate": round(seconds, 3), "finetune": 0.0},
                            info={"calibration": info, "size_mb": quantized_size_mb(student),
                                  "quantization_map": quantization_map(student)})
