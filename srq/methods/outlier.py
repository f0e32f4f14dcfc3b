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

import fnmatch
import time
from dataclasses import dataclass

from srq.errors import SrqError
from srq.lit.distill import DistillationModule
from srq.lit.fit import Fitter
from srq.lit.losses import (
    NormalizedFeatureLoss,
    OutputL1,
    WeightedSum,
    entropy,
    feature_std,
    sensitivity_weights,
)
from srq.methods.common import QuantResult, calibrated_copy, model_scale, samples, summary
from srq.methods.config import Bits, Config, MethodConfig, choice
from srq.methods.uniform import TensorSettings
from srq.quant import QuantFormat, QuantSpec, freeze, wrapped_modules
from srq.quant.api import LAYER_POLICIES
from srq.quant.modules import QuantModule
from srq.quant.plq import BP_STATS, DENSE_GRIDS, PiecewiseLinearQuantizer, PLQFormat

STAGES = (("weight_bound",), ("act_bounds",), ("breakpoint",))


@dataclass(frozen=True)
class PLQSettings(Config):
    dense_grid: str = "centered"
    bp_stat: str = "abs"
    percentile: float = 99.0

    def validate(self):
        choice(self.dense_grid, DENSE_GRIDS, "plq.dense_grid")
        choice(self.bp_stat, BP_STATS, "plq.bp_stat")


@dataclass(frozen=True)
class SAFTSettings(Config):
    """Sensitivity-aware fine-tuning (``loss: vft`` = L_rec only)."""

    enabled: bool = True
    epochs: int = 10
    batch_size: int = 2
    lr: float = 1e-3
    gamma: float = 0.9
    loss: str = "saft"
    rec_weight: float = 5.0
    rec_reduction: str = "mean"
    staged: bool = True
    temperature: float = 1.0
    std_site: str = "input"
    feat_site: str = "output"
    feat_norm: str = "per_sample"
    layers: tuple = ("*",)

    def validate(self):
        choice(self.loss, ("saft", "vft"), "finetune.loss")
        choice(self.rec_reduction, ("mean", "sum"), "finetune.rec_reduction")
        choice(self.std_site, ("input", "output"), "finetune.std_site")
        choice(self.feat_site, ("input", "output"), "finetune.feat_site")
        choice(self.feat_norm, ("per_sample", "per_batch"), "finetune.feat_norm")


@dataclass(frozen=True)
class OutlierConfig(MethodConfig):
    """``plq_saft`` / ``plq`` / ``saft`` / ``plq_vft`` (seed 003)."""

    name: str = "plq_saft"
    quantizer: str = "plq"
    plq: PLQSettings = PLQSettings()
    weight: TensorSettings = TensorSettings(mode="narrow", per_channel=True)
    act_beta: float = 0.9
    layer_policy: str = "first_last_8bit"
    edge_bits: int = 8
    include: tuple = ("*",)
    exclude: tuple = ()
    finetune: SAFTSettings = SAFTSettings()

    def validate(self):
        choice(self.quantizer, ("plq", "uniform"), "method.quantizer")
        choice(self.layer_policy, LAYER_POLICIES, "layer_policy")


def outlier_spec(cfg: OutlierConfig, bits: Bits) -> QuantSpec:
    wbits, abits = bits.weight_bits, bits.act_bits
    if wbits is None or abits is None or bits.palettize:
        raise SrqError(f"method={cfg.name} quantizes weights and activations uniformly; pick "
                       f"bits=w4a4 / w6a6 / w8a8 (got bits={bits.name})")
    edge_act = QuantFormat(cfg.edge_bits, "free", observer="ema_minmax",
                           observer_args=(("beta", float(cfg.act_beta)),))
    try:
        if cfg.quantizer == "plq":
            p = cfg.plq
            act = PLQFormat(int(abits), dense_grid=p.dense_grid, bp_stat=p.bp_stat,
                            percentile=float(p.percentile), beta=float(cfg.act_beta))
        else:
            act = edge_act.replace(bits=int(abits))
        w = cfg.weight
        weight = QuantFormat(int(wbits), w.mode, axis=0 if w.per_channel else None, observer=w.observer)
    except ValueError as exc:
        raise SrqError(f"{exc}; pick another bits= config") from exc
    return QuantSpec(weight=weight, input=act, layer_policy=cfg.layer_policy,
                     edge_bits=int(cfg.edge_bits), edge_weight=weight.replace(bits=int(cfg.edge_bits)),
                     edge_input=edge_act)


def outlier_ptq(model, cfg: OutlierConfig, calib, *, val=None, teacher=None, fit=None, **_
                ) -> QuantResult:
    """quantize (PLQ inputs) → calibrate on ``calib`` → SAFT on ``calib`` (validation on
    ``val``) → freeze. ``teacher``: the FP model to distil from (default ``model``)."""
    spec = outlier_spec(cfg, cfg.bits)
    teacher = teacher or model
    start = time.perf_counter()
    student, batches = calibrated_copy(model, spec, calib, cfg.calib.batch_size, cfg.include,
                                       cfg.exclude)
    t_calib = time.perf_counter() - start
    info = {}
    t_ft = 0.0
    if cfg.finetune.enabled:
        start = time.perf_counter()
        info["finetune"] = saft(teacher, student, cfg, samples(calib), batches, val, fit or Fitter())
        t_ft = time.perf_counter() - start
    freeze(student)
    info.update(summary(student))
    return QuantResult(student, {"calibrate": round(t_calib, 3), "finetune": round(t_ft, 3)}, info)


def trainable_layers(student, globs) -> list[str]:
    return [n for n, m in wrapped_modules(student)
            if isinstance(m, QuantModule) and not m.is_edge
            and any(fnmatch.fnmatchcase(n, g) for g in globs)]


def param_groups(student, layers: list[str]) -> dict[str, list]:
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


def saft_module(teacher, student, cfg: OutlierConfig, batches, scale: int) -> DistillationModule:
    """The SAFT (or VFT) LightningModule: sensitivity s_k from the FP model on ``batches``,
    objective, staged parameter groups and projections."""
    ft = cfg.finetune
    layers = trainable_layers(student, list(ft.layers))
    if not layers:
        raise SrqError("fine-tuning has no layers to train: method.finetune.layers matches "
                       "no quantized layer outside the first/last ones")
    sigma = feature_std(teacher, layers, batches, ft.std_site)
    weights = sensitivity_weights(sigma, float(ft.temperature))
    rec = (float(ft.rec_weight), OutputL1(ft.rec_reduction))
    if ft.loss == "saft":
        terms = {"sen": (1.0, NormalizedFeatureLoss(layers, weights, ft.feat_norm)), "rec": rec}
    else:
        terms = {"rec": rec}
    schedule = [list(s) for s in STAGES] if ft.staged else [[g for s in STAGES for g in s]]
    modules = dict(student.named_modules())
    quantizers = [q for n in layers for q in (modules[n].weight_quantizer, modules[n].input_quantizer)
                  if q is not None]
    module = DistillationModule(teacher, student, WeightedSum(terms), param_groups(student, layers),
                                schedule, lr=float(ft.lr), gamma=float(ft.gamma),
                                projections=[q.project_ for q in quantizers], scale=scale,
                                feature_site=ft.feat_site)
    module.sensitivity = weights
    return module


def saft(teacher, student, cfg: OutlierConfig, train, batches, val, fit) -> dict:
    ft = cfg.finetune
    module = saft_module(teacher, student, cfg, batches, model_scale(teacher, batches[0]))
    weights = module.sensitivity
    common = fit(module, train, None if val is None else samples(val), int(ft.batch_size),
                 epochs=int(ft.epochs))
    return {"epochs": int(ft.epochs), **common, "loss": ft.loss, "staged": bool(ft.staged),
            "layers": len(weights), "sensitivity_entropy": round(entropy(weights), 4),
            "sensitivity_max": round(max(weights.values()), 4)}
