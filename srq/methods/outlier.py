"""Outlier-aware PTQ for SR (seed 003, METHODS.md §4): piecewise-linear activation
quantizers, calibration by EMA, then sensitivity-aware fine-tuning (SAFT).

    quantize (PLQ inputs, two_bound weights; first/last layers uniform 8 bit)
    → calibrate (first batch min / max / P99, then EMA β = 0.9)
    → SAFT: L_all = L_sen + λ·L_rec on LR patches only, staged u_w → (l_a, u_a) → bp
    → freeze

The ablations are switches of the same method: ``quantizer: uniform`` (SAFT with a uniform
quantizer), ``finetune.enabled: false`` (PLQ only), ``finetune.loss: vft`` (L_rec only),
``finetune.staged: false`` (every group every epoch).
"""

from __future__ import annotations

import copy
import fnmatch
import time

from srq.errors import SrqError
from srq.lit.distill import DistillationModule
from srq.lit.losses import (
    NormalizedFeatureLoss,
    OutputL1,
    WeightedSum,
    entropy,
    feature_std,
    sensitivity_weights,
)
from srq.methods.finetune import finetune_data, fit
from srq.methods.uniform import run_calibration
from srq.quant import (
    QuantFormat,
    QuantSpec,
    freeze,
    quantization_map,
    quantize,
    wrapped_modules,
)
from srq.quant.modules import QuantModule
from srq.quant.plq import PiecewiseLinearQuantizer, PLQFormat
from srq.quant.size import quantized_size_mb

STAGES = (("weight_bound",), ("act_bounds",), ("breakpoint",))


class OutlierAwarePTQ:
    def __init__(self, cfg):
        self.cfg = cfg

    def spec(self, bits_cfg) -> QuantSpec:
        cfg = self.cfg
        wbits, abits = bits_cfg.weight_bits, bits_cfg.act_bits
        if wbits is None or abits is None or bits_cfg.get("palettize", False):
            raise SrqError(f"method={cfg.name} quantizes weights and activations uniformly; pick "
                           f"bits=w4a4 / w6a6 / w8a8 (got bits={bits_cfg.name})")
        edge_act = QuantFormat(cfg.edge_bits, "free", observer="ema_minmax",
                               observer_args=(("beta", float(cfg.act_beta)),))
        try:
            if cfg.quantizer == "plq":
                p = cfg.plq
                act = PLQFormat(int(abits), dense_grid=p.dense_grid, bp_stat=p.bp_stat,
                                percentile=float(p.percentile), beta=float(cfg.act_beta))
            elif cfg.quantizer == "uniform":
                act = edge_act.replace(bits=int(abits))
            else:
                raise SrqError(f"unknown method.quantizer {cfg.quantizer!r}; valid: plq, uniform")
            w = cfg.weight
            weight = QuantFormat(int(wbits), w.mode, axis=0 if w.per_channel else None,
                                 observer=w.observer)
        except ValueError as exc:
            raise SrqError(f"{exc}; pick another bits= config") from exc
        return QuantSpec(weight=weight, input=act, layer_policy=cfg.layer_policy,
                         edge_bits=int(cfg.edge_bits), edge_weight=weight.replace(bits=int(cfg.edge_bits)),
                         edge_input=edge_act)

    def apply(self, teacher, context):
        from srq.methods import MethodResult

        run_cfg, cfg = context["cfg"], self.cfg
        spec = self.spec(run_cfg.bits)
        start = time.perf_counter()
        train, val, data_info = finetune_data(run_cfg, cfg, teacher.scale)
        student = copy.deepcopy(teacher)
        quantize(student, spec, include=list(cfg.include), exclude=list(cfg.exclude),
                 example_input=train[0][None])
        try:
            run_calibration(student, train, data_info["batch_size"])
        except (RuntimeError, FloatingPointError) as exc:
            raise SrqError(f"calibration failed: {exc}") from exc
        t_calib = time.perf_counter() - start
        info = {"calibration": data_info}
        t_ft = 0.0
        if cfg.finetune.enabled:
            start = time.perf_counter()
            info["finetune"] = self.finetune(teacher, student, train, val, data_info, context)
            t_ft = time.perf_counter() - start
        freeze(student)
        info.update(size_mb=quantized_size_mb(student), quantization_map=quantization_map(student))
        return MethodResult(student=student, info=info,
                            time_s={"calibrate": round(t_calib, 3), "finetune": round(t_ft, 3)})

    def trainable_layers(self, student) -> list[str]:
        globs = list(self.cfg.finetune.layers)
        return [n for n, m in wrapped_modules(student)
                if isinstance(m, QuantModule) and not m.is_edge
                and any(fnmatch.fnmatchcase(n, g) for g in globs)]

    def param_groups(self, student, layers: list[str]) -> dict[str, list]:
        modules = dict(student.named_modules())
        groups = {"weight_bound": [], "act_bounds": [], "breakpoint": []}
        for name in layers:
            m = modules[name]
            if m.weight_quantizer is not None:
                groups["weight_bound"].append(m.weight_quantizer.hi)
            q = m.input_quantizer
            if isinstance(q, PiecewiseLinearQuantizer):
                groups["act_bounds"] += [q.la, q.ua]
                groups["breakpoint"].append(q.bp)
            elif q is not None:
                groups["act_bounds"] += list(q.learnable().values())
        return groups

    def distillation_module(self, teacher, student, train, data_info) -> DistillationModule:
        """The SAFT (or VFT) LightningModule: sensitivity s_k from the FP model on ``train``,
        objective, staged parameter groups and projections."""
        ft = self.cfg.finetune
        layers = self.trainable_layers(student)
        if not layers:
            raise SrqError("fine-tuning has no layers to train: method.finetune.layers matches "
                           "no quantized layer outside the first/last ones")
        sigma = feature_std(teacher, layers, train.batches(data_info["batch_size"]), ft.std_site)
        weights = sensitivity_weights(sigma, float(ft.temperature))
        rec = (float(ft.rec_weight), OutputL1(ft.rec_reduction))
        if ft.loss == "saft":
            terms = {"sen": (1.0, NormalizedFeatureLoss(layers, weights, ft.feat_norm)), "rec": rec}
        elif ft.loss == "vft":
            terms = {"rec": rec}
        else:
            raise SrqError(f"unknown method.finetune.loss {ft.loss!r}; valid: saft, vft")
        schedule = [list(s) for s in STAGES] if ft.staged else [[g for s in STAGES for g in s]]
        modules = dict(student.named_modules())
        quantizers = [q for n in layers for q in (modules[n].weight_quantizer, modules[n].input_quantizer)
                      if q is not None]
        module = DistillationModule(teacher, student, WeightedSum(terms),
                                    self.param_groups(student, layers), schedule,
                                    lr=float(ft.lr), gamma=float(ft.gamma),
                                    projections=[q.project_ for q in quantizers],
                                    scale=teacher.scale, feature_site=ft.feat_site)
        module.sensitivity = weights
        return module

    def finetune(self, teacher, student, train, val, data_info, context) -> dict:
        ft = self.cfg.finetune
        module = self.distillation_module(teacher, student, train, data_info)
        weights = module.sensitivity
        common = fit(module, train, val, int(ft.batch_size), context, epochs=int(ft.epochs))
        return {"epochs": int(ft.epochs), **common, "loss": ft.loss, "staged": bool(ft.staged),
                "layers": len(weights), "sensitivity_entropy": round(entropy(weights), 4),
                "sensitivity_max": round(max(weights.values()), 4)}
