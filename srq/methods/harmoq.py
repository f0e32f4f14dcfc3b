"""HarmoQ (seed 004) — an *inferred* design (METHODS.md §6.2; the paper's method section,
equations and code were not available). Same ops, quantizers and data as 2DQuant:

    HSO: fold harmonized scales into the FP model (output unchanged)      [hso.enabled]
    DOBI initial bounds
    SRC: per quantized linear, in forward order, a closed-form ridge weight
         correction for the error of its quantized input; DOBI re-init of weight bounds [src.enabled]
    ABR: DQC-style bound training (optionally relative parametrisation), the weight/activation
         balance term, and SRC re-solved at the start of every round  [abr.enabled]
    freeze

Every switch is in conf/method/harmoq.yaml; by measurement (docs/RESULTS.md §8) the default
keeps HSO and turns SRC and the balance term off. ``order: hso_first`` is the order above
(METHODS' argued order, the default); ``order: abstract`` is the abstract's literal
SRC → HSO → ABR: DOBI + SRC on the unfolded model, the corrected weights copied into an FP
model, HSO folded into that, DOBI again (the SRC correction was solved for the old grid),
then ABR without SRC re-solves.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import lightning as L
import torch
from tqdm.auto import tqdm

from srq.lit.distill import LR_SCHEDULES, DistillationModule
from srq.lit.fit import Fitter
from srq.lit.losses import BalanceLoss, NormalizedFeatureLoss, OutputL1, WeightedSum
from srq.methods.common import QuantResult, as_batches, device_of, model_scale, samples, summary
from srq.methods.config import Config, choice
from srq.methods.dobi import DOBIConfig, dobi_calibrated
from srq.quant import freeze, quantizers, wrapped_modules
from srq.quant.api import execution_order
from srq.quant.harmonize import harmonize
from srq.quant.modules import QuantModule
from srq.quant.reconstruct import capture
from srq.quant.residual import ResidualStats, correct_linear

ORDERS = ("hso_first", "abstract")


@dataclass(frozen=True)
class HSOSettings(Config):
    enabled: bool = True
    alpha: float = 0.5
    norm_linear: bool = True
    v_proj: bool = True
    qk: bool = True


@dataclass(frozen=True)
class SRCSettings(Config):
    enabled: bool = False
    mu_h: float = 1.0
    alpha_damp: float = 0.01
    gamma: float = 1.0
    bias_correction: bool = True
    regressor: str = "quantized"

    def validate(self):
        choice(self.regressor, ("quantized", "float"), "src.regressor")


@dataclass(frozen=True)
class ABRSettings(Config):
    enabled: bool = True
    preset: str = "cpu"
    rounds: int = 3
    steps: int = 100
    batch_size: int = 4
    num_patches: int | None = 128
    lr: float = 1e-2
    relative: bool = False
    betas: tuple = (0.9, 0.999)
    lr_schedule: str = "cosine"
    lambda_feat: float = 5.0
    lambda_bal: float = 0.0
    balance_target: str = "init"
    resolve_src: bool = True

    def validate(self):
        choice(self.lr_schedule, LR_SCHEDULES, "abr.lr_schedule")
        choice(self.balance_target, ("init", "one"), "abr.balance_target")


@dataclass(frozen=True)
class HarmoQConfig(DOBIConfig):
    name: str = "harmoq"
    order: str = "hso_first"
    hso: HSOSettings = HSOSettings()
    src: SRCSettings = SRCSettings()
    abr: ABRSettings = ABRSettings()

    def validate(self):
        super().validate()
        choice(self.order, ORDERS, "method.order")

    @property
    def train_patches(self) -> int | None:
        return self.abr.num_patches


def _input_of(model, name: str, batch) -> torch.Tensor:
    """The input of module ``name`` in a forward pass on ``batch`` (the pass stops there)."""
    return capture(model, name, [batch])[0][0][0]


@torch.no_grad()
def residual_calibrate(teacher, student, names: list[str], batches, src_cfg) -> dict:
    """SRC over the student's quantized linears ``names`` (forward order): each layer's
    weight becomes W' from the teacher's W and the (x, x̂) statistics of that layer, with every
    earlier layer already corrected."""
    t_mods, s_mods = dict(teacher.named_modules()), dict(student.named_modules())
    report = {"layers": 0, "pinv": 0, "delta_rel_mean": 0.0}
    device = device_of(student)
    for name in tqdm(names, desc="residual calibration", unit="layer", leave=False):
        wrapper = s_mods[name]
        stats = ResidualStats(float(src_cfg.mu_h), src_cfg.regressor)
        for batch in batches:
            batch = batch.to(device)
            x = _input_of(teacher, name, batch)
            xs = _input_of(student, name, batch)
            xq = wrapper.input_quantizer(xs) if wrapper.input_quantizer is not None else xs
            stats.add(x, xq)
        fp = t_mods[name]
        info = correct_linear(wrapper.module, fp.weight, fp.bias, stats, float(src_cfg.alpha_damp),
                              float(src_cfg.gamma), bool(src_cfg.bias_correction))
        report["layers"] += 1
        report["pinv"] += int(info["pinv"])
        report["delta_rel_mean"] += info["delta_rel"] / len(names)
    return report


def _reinit_weight_bounds(student, names: list[str]) -> None:
    modules = dict(student.named_modules())
    for name in names:
        wq = modules[name].weight_quantizer
        if wq is not None:
            wq.observer.batches.zero_()
            wq.observer(modules[name].module.weight)
            wq.finish_calibration()


def _linears_in_order(student, batches) -> list[str]:
    """The student's quantized Linear layers in execution order."""
    names = [n for n, m in wrapped_modules(student)
             if isinstance(m, QuantModule) and type(m.module).__name__ == "Linear"]
    return execution_order(student, batches[0][:1], names)


class _ResolveSRC(L.Callback):
    """ABR rounds: re-solve SRC with the current bounds every ``every`` steps."""

    def __init__(self, fn, every: int):
        self.fn, self.every = fn, every

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step > 0 and trainer.global_step % self.every == 0:
            self.fn()


def harmoq(model, cfg: HarmoQConfig, calib, *, train=None, val=None, feature_blocks=None,
           fit=None, **_) -> QuantResult:
    """HSO → DOBI → (SRC) → ABR on ``train`` (default ``calib``), validation on ``val``;
    the feature loss taps ``feature_blocks`` (names; None: output only)."""
    order = cfg.order
    fit = fit or Fitter()
    start = time.perf_counter()
    info: dict = {}
    batches = as_batches(calib, cfg.calib.batch_size, device_of(model))  # HSO statistics and DOBI
    fp = model
    if order == "abstract" and cfg.src.enabled:  # SRC on the unfolded model first
        student, _, _ = dobi_calibrated(model, cfg, batches)
        linears = _linears_in_order(student, batches)
        info["src"] = residual_calibrate(model, student, linears, batches, cfg.src)
        fp = copy.deepcopy(model)  # FP model carrying the corrected weights
        modules = dict(student.named_modules())
        for name in linears:
            fp.get_submodule(name).load_state_dict(modules[name].module.state_dict())
    if cfg.hso.enabled:
        fp = copy.deepcopy(fp) if fp is model else fp  # same output, new coordinates
        h = cfg.hso
        info["hso"] = harmonize(fp, batches, alpha=float(h.alpha), qk=bool(h.qk),
                                norm_linear=bool(h.norm_linear), v_proj=bool(h.v_proj))
    student, data_info, _ = dobi_calibrated(fp, cfg, batches)
    linears = _linears_in_order(student, batches)
    if order == "hso_first" and cfg.src.enabled:
        info["src"] = residual_calibrate(fp, student, linears, batches, cfg.src)
        _reinit_weight_bounds(student, linears)
    t_calib = time.perf_counter() - start
    ft = None
    start = time.perf_counter()
    if cfg.abr.enabled:
        # abstract order: the teacher is the original model (its corrected copy is not FP)
        distill_from = model if order == "abstract" and cfg.src.enabled else fp
        ft = refine(distill_from, student, cfg, samples(train if train is not None else calib),
                    None if val is None else samples(val), batches, linears,
                    list(feature_blocks or []), fit, resolve_src=order == "hso_first")
    freeze(student)
    return QuantResult(
        student,
        {"calibrate": round(t_calib, 3), "finetune": round(time.perf_counter() - start, 3)},
        {"calibration": {**data_info, "order": order, "hso": info.get("hso"), "src": info.get("src")},
         "finetune": ft, **summary(student)})


def refine(fp, student, cfg: HarmoQConfig, train, val, batches, linears, blocks, fit,
           resolve_src=True) -> dict:
    a = cfg.abr
    blocks = blocks if float(a.lambda_feat) > 0 else []
    terms = {"out": (1.0, OutputL1())}
    if blocks:
        terms["feat"] = (float(a.lambda_feat), NormalizedFeatureLoss(
            blocks, distance="squared_per_element", layer_reduce="sum"))
    modules = dict(student.named_modules())
    ratios = None
    if float(a.lambda_bal) > 0 and linears:  # no quantized linear (a CNN): no balance term
        balance = BalanceLoss({n: modules[n] for n in linears})
        if a.balance_target == "init":
            probe = DistillationModule(fp, student, WeightedSum({"bal": (1.0, balance)}),
                                       {"b": [p for _, q in quantizers(student)
                                              for p in q.learnable().values()]}, [["b"]])
            with torch.no_grad():  # no graph: taps of every linear input of a whole batch
                _, _, fs, ft_ = probe._forward_pair(batches[0])
            ratios = balance.ratios(fs, ft_)
            balance.targets = ratios
            student.requires_grad_(False)
        terms["bal"] = (float(a.lambda_bal), balance)
    bounds = []
    for _, q in quantizers(student):
        for p in q.learnable().values():
            span = float((q.hi - q.lo).abs().max()) if hasattr(q, "hi") else 1.0
            bounds.append((p, span if a.relative else 1.0))
    total = int(a.rounds) * int(a.steps)
    module = DistillationModule(
        fp, student, WeightedSum(terms), {"bounds": bounds}, [["bounds"]], lr=float(a.lr),
        betas=tuple(a.betas), lr_schedule=a.lr_schedule, total_steps=total,
        projections=[q.project_ for _, q in quantizers(student)], scale=model_scale(fp, batches[0]))
    callbacks = []
    resolve_src = resolve_src and cfg.src.enabled and bool(a.resolve_src)
    if resolve_src and int(a.rounds) > 1:
        callbacks.append(_ResolveSRC(
            lambda: residual_calibrate(fp, student, linears, batches, cfg.src), int(a.steps)))
    common = fit(module, train, val, int(a.batch_size), steps=total, callbacks=callbacks)
    return {"preset": a.preset, "rounds": int(a.rounds), **common, "lr": float(a.lr),
            "relative": bool(a.relative), "lambda_bal": float(a.lambda_bal),
            "balance_target": a.balance_target, "resolve_src": resolve_src,
            "feature_blocks": len(blocks)}
