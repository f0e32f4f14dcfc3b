"""2DQuant = DOBI + DQC (distillation quantization calibration, METHODS.md §5.4).

After DOBI, every quantizer's (l, u) trains (weights, biases, norms stay fixed) to match the
FP teacher: L = L_O + λ·L_F, L_O the mean L1 between outputs, L_F the normalized distance of
the feature-block outputs (``feature_blocks``: the zoo's ModelSpec names them; none: L_O only). Adam
with the preset's lr, betas, schedule, iterations and batch; the last step is kept (no
checkpoint is ever picked on a test set); LR patches only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from srq.lit.distill import LR_SCHEDULES, DistillationModule
from srq.lit.fit import Fitter
from srq.lit.losses import DISTANCES, NormalizedFeatureLoss, OutputL1, WeightedSum
from srq.methods.common import QuantResult, as_batches, device_of, model_scale, samples, summary
from srq.methods.config import Config, ConfigError, choice
from srq.methods.dobi import DOBIConfig, dobi_calibrated
from srq.quant import freeze, quantizers
from srq.quant.reconstruct import spatial_multiple


@dataclass(frozen=True)
class DQCSettings(Config):
    preset: str = "cpu"
    iterations: int = 300
    batch_size: int = 4
    num_patches: int | None = 128
    lr: float = 1e-2
    betas: tuple = (0.9, 0.999)
    lr_schedule: str = "cosine"
    feat_weight: float = 5.0
    feat_distance: str = "squared_per_element"
    crop: int | None = None  # each step on one random crop×crop LR window (None: whole patches)

    def validate(self):
        if self.crop is not None and int(self.crop) < 1:
            raise ConfigError(f"dqc.crop={self.crop} must be a positive side in LR pixels or null")
        choice(self.lr_schedule, LR_SCHEDULES, "dqc.lr_schedule")
        choice(self.feat_distance, DISTANCES, "dqc.feat_distance")


@dataclass(frozen=True)
class TwoDQuantConfig(DOBIConfig):
    name: str = "2dquant"
    dqc: DQCSettings = DQCSettings()

    @property
    def train_patches(self) -> int | None:
        return self.dqc.num_patches


def dqc_module(teacher, student, cfg: TwoDQuantConfig, blocks: list[str], scale: int,
               trained=None) -> DistillationModule:
    """DQC's distillation module; ``trained``: the quantizers whose (l, u) train (default
    every one of ``student``'s)."""
    q = cfg.dqc
    trained = [qz for _, qz in quantizers(student)] if trained is None else list(trained)
    blocks = blocks if float(q.feat_weight) > 0 else []
    terms = {"out": (1.0, OutputL1())}
    if blocks:
        terms["feat"] = (float(q.feat_weight), NormalizedFeatureLoss(
            blocks, norm="per_sample", distance=q.feat_distance, layer_reduce="sum"))
    bounds = [p for qz in trained for p in qz.learnable().values()]
    module = DistillationModule(
        teacher, student, WeightedSum(terms), {"bounds": bounds}, [["bounds"]],
        lr=float(q.lr), betas=tuple(q.betas), lr_schedule=q.lr_schedule,
        total_steps=int(q.iterations), projections=[qz.project_ for qz in trained],
        scale=scale, crop=q.crop, crop_multiple=spatial_multiple(student),
        seed=int(cfg.calib.seed or 0))
    module.feature_blocks = blocks
    return module


def twodquant(model, cfg: TwoDQuantConfig, calib, *, train=None, val=None, teacher=None,
              feature_blocks=None, fit=None, **_) -> QuantResult:
    """DOBI on ``calib`` → DQC on ``train`` (default: ``calib``) with validation on ``val``,
    distilling ``teacher`` (default ``model``) at ``feature_blocks`` (names; None: output only)."""
    q = cfg.dqc
    teacher = teacher or model
    batches = as_batches(calib, cfg.calib.batch_size, device_of(model))
    student, info, t_calib = dobi_calibrated(model, cfg, batches)
    start = time.perf_counter()
    module = dqc_module(teacher, student, cfg, list(feature_blocks or []),
                        model_scale(teacher, batches[0]))
    train = samples(train if train is not None else calib)
    common = (fit or Fitter())(module, train, None if val is None else samples(val),
                               int(q.batch_size), steps=int(q.iterations))
    freeze(student)
    info_ft = {"preset": q.preset, "iterations": int(q.iterations), **common, "lr": float(q.lr),
               "betas": list(q.betas), "lr_schedule": q.lr_schedule,
               "feature_blocks": len(module.feature_blocks), "select": "last"}
    return QuantResult(
        student, {"calibrate": round(t_calib, 3), "finetune": round(time.perf_counter() - start, 3)},
        {"calibration": info, "finetune": info_ft, **summary(student)})
