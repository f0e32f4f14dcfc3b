"""Low-bit PTQ (issue 16): [scale migration →] MSE- (or DOBI-) initialised uniform quantizers
[with Hadamard-rotated Linear and/or conv inputs] [and centred Linear inputs] → bias correction → block reconstruction
with learned rounding, learned weight steps and QDrop (METHODS.md §10.1–10.4) → [DQC on the activation bounds] →
freeze.

Each component has a switch (``scale_migration.enabled``, ``init``, ``rotation``,
``rotation_layers``, ``rotation_exclude``, ``input_shift``, ``bias_correction.enabled``, ``reconstruction.enabled``,
``reconstruction.learn_rounding``, ``reconstruction.drop_prob=0``, ``reconstruction.act_lr=0``,
``reconstruction.weight_scale_lr=0``, ``dqc.iterations``), so the ablation rows are config overrides. Blocks are the model's
feature blocks (the zoo's, or ``feature_blocks=``); every quantized layer outside them is
reconstructed on its own.
Calibration patches only: no test image is ever seen.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, fields, replace

from srq.errors import SrqError
from srq.methods.common import (QuantResult, as_batches, calibrated_copy, device_of, model_scale,
                                samples, summary)
from srq.methods.config import Config, ConfigError, choice
from srq.methods.dobi import OPS, DOBIConfig, DOBISettings, dobi_calibrated, op_names, op_set
from srq.methods.dqc import DQCSettings, dqc_module
from srq.methods.uniform import TensorSettings, UniformConfig, uniform_spec
from srq.quant import freeze
from srq.quant.bias_correction import correct_bias
from srq.quant.reconstruct import ReconstructionOptions, reconstruct, reconstruction_units
from srq.quant.modules import QuantLinear
from srq.quant.input_shift import SHIFTED_LAYERS, SHIFTS, shift_inputs
from srq.quant.rotation import ROTATED_LAYERS, ROTATIONS, rotate_inputs
from srq.quant.scale_migration import migrate_scales


@dataclass(frozen=True)
class BiasCorrectionSettings(Config):
    """Empirical bias correction (:func:`srq.quant.bias_correction.correct_bias`) ``before``
    or ``after`` the reconstruction."""

    enabled: bool = False
    stage: str = "after"

    def validate(self):
        choice(self.stage, ("before", "after"), "bias_correction.stage")


@dataclass(frozen=True)
class ScaleMigrationSettings(Config):
    """SmoothQuant-style per-channel scales folded into conv pairs before quantization
    (:func:`srq.quant.scale_migration.migrate_scales`), with exponent ``alpha``."""

    enabled: bool = False
    alpha: float = 0.5

    def validate(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"scale_migration.alpha={self.alpha} must lie in [0, 1]")


@dataclass(frozen=True)
class ReconstructionSettings(Config):
    """:class:`srq.quant.reconstruct.ReconstructionOptions` plus an off switch."""

    enabled: bool = True
    iterations: int | str = "auto"  # steps per block; auto: see reconstruction_steps_for
    auto_iterations: tuple = (500, 1000)  # auto's steps: above 2 bits, at ≤ 2 bits (conf/method_model: per model)
    batch_size: int = 8
    crop: int | None = 32
    crop_multiple: int | None = None
    lr: float = 3e-2  # the rounding variables' Adam lr; 500 steps need more than AdaRound's 1e-3
    act_lr: float = 1e-3
    reg_weight: float = 0.01
    beta: tuple = (20.0, 2.0)
    warmup: float = 0.2
    drop_prob: float = 0.5
    learn_rounding: bool = True
    bias_lr: float = 0.0
    weight_scale_lr: float = 3e-3  # per-channel weight-grid gains (0: calibrated steps kept)
    shift_lr: float = 0.0  # > 0: the input shifts (and their bias folds) train too
    weighting: str = "none"  # output: each unit's error weighted per channel by its output sensitivity

    def validate(self):
        if isinstance(self.iterations, str) and self.iterations != "auto":
            raise ConfigError(f"reconstruction.iterations={self.iterations!r} must be a step count or auto")
        if isinstance(self.iterations, int) and self.iterations < 0:
            raise ConfigError(f"reconstruction.iterations={self.iterations} must be ≥ 0 (or auto)")
        if len(self.auto_iterations) != 2 or any(not isinstance(n, int) or n < 0 for n in self.auto_iterations):
            raise ConfigError(f"reconstruction.auto_iterations={list(self.auto_iterations)} must be two step "
                              "counts ≥ 0: [above 2 bits, at ≤ 2 bits]")
        if not 0.0 <= self.drop_prob <= 1.0:
            raise ConfigError(f"reconstruction.drop_prob={self.drop_prob} must lie in [0, 1]")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"reconstruction.warmup={self.warmup} must lie in [0, 1)")
        if len(self.beta) != 2:
            raise ConfigError(f"reconstruction.beta={list(self.beta)} must be [start, end]")
        choice(self.weighting, ("none", "output"), "method.reconstruction.weighting")

    def options(self, seed: int, iterations: int) -> ReconstructionOptions:
        """The options at ``iterations`` steps per block (``self.iterations`` resolved)."""
        names = [f.name for f in fields(ReconstructionOptions) if f.name not in ("seed", "iterations")]
        return ReconstructionOptions(**{n: getattr(self, n) for n in names}, seed=int(seed),
                                     iterations=int(iterations))


@dataclass(frozen=True)
class LowBitConfig(UniformConfig):
    """``method=lowbit``: the uniform MSE baseline plus bias correction and reconstruction.
    ``ops``: auto → transformer (Linear + attention MatMul, every layer at ``bits``: 2DQuant's
    op set) for a model with :class:`srq.MatMul` modules, else cnn (every conv / linear, per
    ``layer_policy``)."""

    name: str = "lowbit"
    ops: str = "auto"
    init: str = "mse"  # mse: the uniform MSE baseline's bounds | dobi: DOBI's (2DQuant's start)
    dobi: DOBISettings = DOBISettings()
    dobi_mode: str = "free"  # init=dobi: DOBI's grid (free: the paper's two bounds | integer)
    rotation: str = "auto"  # hadamard: online Hadamard rotation of power-of-2 layer inputs |
    # auto: hadamard on the transformer op set (unless DOBI's one-sided fc2 forbids it) and on
    # CNNs with ≥ 8-bit activations, else none
    rotation_layers: str = "auto"  # which inputs hadamard rotates: linear | conv (groups 1) | all |
    # auto: linear on the transformer op set, all on CNNs
    rotation_exclude: tuple = ()  # globs of layer names hadamard leaves unrotated (e.g. "*.fc2")
    input_shift: str = "auto"  # mean | midpoint: per-channel shift of the inputs of
    # input_shift_layers (after their rotation) folded into the biases (srq.quant.input_shift) |
    # none | auto: mean below 8-bit activations (unless DOBI's one-sided fc2), else none
    input_shift_layers: str = "auto"  # linear | conv | all | auto: linear on the transformer op set, all on CNNs
    weight: TensorSettings = TensorSettings(observer="mse", mode="narrow", per_channel=True,
                                            args={"candidates": 100})
    act: TensorSettings = TensorSettings(observer="mse", mode="integer",
                                         args={"candidates": 100, "beta": 0.9})
    scale_migration: ScaleMigrationSettings = ScaleMigrationSettings()
    bias_correction: BiasCorrectionSettings = BiasCorrectionSettings()
    reconstruction: ReconstructionSettings = ReconstructionSettings()
    dqc: DQCSettings = DQCSettings(iterations=0)

    @property
    def train_patches(self) -> int | None:
        return self.dqc.num_patches if self.dqc.iterations > 0 else None

    @property
    def one_sided_fc2(self) -> bool:
        """DOBI's fc2 bounds are one-sided (x ≥ 0): a rotated or shifted fc2 input is signed."""
        return self.init == "dobi" and "*.fc2" in self.dobi.one_sided_for

    def validate(self):
        super().validate()
        choice(self.ops, OPS, "method.ops")
        choice(self.init, ("mse", "dobi"), "method.init")
        choice(self.dobi_mode, ("free", "integer"), "method.dobi_mode")
        choice(self.rotation, ("auto",) + ROTATIONS, "method.rotation")
        choice(self.rotation_layers, ("auto",) + ROTATED_LAYERS, "method.rotation_layers")
        choice(self.input_shift, ("auto",) + SHIFTS, "method.input_shift")
        choice(self.input_shift_layers, ("auto",) + SHIFTED_LAYERS, "method.input_shift_layers")
        if self.rotation == "hadamard" and self.one_sided_fc2:
            raise ConfigError("method.rotation=hadamard makes fc2's input signed, so DOBI's "
                              "one-sided fc2 bounds would clip it; add "
                              "method.dobi.one_sided_for=[*.matmul_av]")
        if self.input_shift in ("mean", "midpoint") and self.one_sided_fc2:
            raise ConfigError(f"method.input_shift={self.input_shift} makes fc2's input signed, so "
                              "DOBI's one-sided fc2 bounds would clip it; add "
                              "method.dobi.one_sided_for=[*.matmul_av] or method.input_shift=none")


def rotation_for(model, cfg: LowBitConfig) -> str:
    """The rotation that runs: ``auto`` → hadamard when ``model`` takes the transformer op set
    (val +0.47 dB on IMDTN ×4 W4A4 with reconstruction, RESULTS §12.3) and the bounds are not
    DOBI's one-sided fc2 ones (a rotated fc2 input is signed), or when a CNN's activations are
    8-bit or wider (conv inputs; IMDN ×4 W8A8 val +0.064 dB, n = 3, where at W4A4 it cost
    0.08: RESULTS §12.5), else none."""
    if cfg.rotation != "auto":
        return cfg.rotation
    if op_set(model, cfg.ops) != "transformer":
        return "hadamard" if (cfg.bits.act_bits or 0) >= 8 else "none"
    return "none" if cfg.one_sided_fc2 else "hadamard"


def input_shift_for(cfg: LowBitConfig) -> str:
    """The input shift that runs: ``auto`` → mean when activations are below 8 bits (val
    +0.12 dB on IMDTN ×4 W4A4, +0.24 on IMDN ×4 W4A4, seed 0: RESULTS §12.9) and the bounds
    are not DOBI's one-sided fc2 ones (a shifted input is signed), else none (W8A8 was
    not measured with it)."""
    if cfg.input_shift != "auto":
        return cfg.input_shift
    low = cfg.bits.act_bits is not None and cfg.bits.act_bits < 8
    return "mean" if low and not cfg.one_sided_fc2 else "none"


def reconstruction_steps_for(cfg: LowBitConfig) -> int:
    """Reconstruction steps per block: ``auto`` → ``auto_iterations`` [1] when weights or
    activations are 2-bit or narrower, else [0]. The preset's (500, 1000): at W2A2 IMDTN ×4
    gained val +0.05 / +0.09 / +0.20 dB over 500 at seeds 0 / 1 / 2 (RESULTS §12.10), at W4A4
    +0.015 val for twice the time (§12.10). conf/method_model lowers them where a model's
    steps cost more (LMLT-Tiny: the CPU preset's 20-minute budget, §12.12)."""
    steps = cfg.reconstruction.iterations
    if steps != "auto":
        return int(steps)
    widths = [b for b in (cfg.bits.weight_bits, cfg.bits.act_bits) if b is not None]
    above, narrow = cfg.reconstruction.auto_iterations
    return int(narrow if widths and min(widths) <= 2 else above)


def rotated_layers_for(model, cfg: LowBitConfig, chosen: str | None = None) -> str:
    """Which inputs a hadamard rotation (or, with ``chosen`` = ``input_shift_layers``, an
    input shift) takes: ``auto`` → linear on the transformer op set (its convs stay FP), all
    (convs and linears) on a CNN."""
    chosen = cfg.rotation_layers if chosen is None else chosen
    if chosen != "auto":
        return chosen
    return "linear" if op_set(model, cfg.ops) == "transformer" else "all"


def lowbit(model, cfg: LowBitConfig, calib, *, teacher=None, feature_blocks=None, progress=True,
           train=None, val=None, fit=None, **_) -> QuantResult:
    """quantize + calibrate a copy of ``model`` → bias correction → reconstruction of
    ``feature_blocks`` (names; none: layer by layer) against ``teacher`` (default ``model``)
    → freeze."""
    cfg.require_bits("e.g. bits=w4a4")
    if cfg.bits.palettize:
        raise SrqError(f"bits={cfg.bits.name} palettizes weights, which method={cfg.name} does "
                       "not do; use method=coreai")
    teacher = teacher or model
    start = time.perf_counter()
    calib_info: dict = {}
    batches = as_batches(calib, cfg.calib.batch_size, device_of(model))
    if cfg.scale_migration.enabled:  # the migrated FP model is the teacher: same function,
        model = copy.deepcopy(model)  # same per-layer activations as the student's
        calib_info["scale_migration"] = migrate_scales(model, batches, float(cfg.scale_migration.alpha))
        teacher = model
    calib_info["rotation"] = rotation_for(model, cfg)
    if calib_info["rotation"] == "hadamard":
        calib_info["rotation_layers"] = rotated_layers_for(model, cfg)
    shift = input_shift_for(cfg)
    if shift != "none":
        calib_info["input_shift"] = shift
        calib_info["input_shift_layers"] = rotated_layers_for(model, cfg, cfg.input_shift_layers)

    def prepare(student):  # on the quantized copy, before calibration
        if calib_info["rotation"] == "hadamard":
            _check_globs(student, cfg.rotation_exclude, "method.rotation_exclude")
            names = rotate_inputs(student, calib_info["rotation_layers"], tuple(cfg.rotation_exclude))
            linears = sum(isinstance(student.get_submodule(n), QuantLinear) for n in names)
            calib_info["rotated_linears"], calib_info["rotated_convs"] = linears, len(names) - linears
        if shift != "none":  # after the rotation: the shift is over H x
            names = shift_inputs(student, batches, shift, calib_info["input_shift_layers"])
            linears = sum(isinstance(student.get_submodule(n), QuantLinear) for n in names)
            calib_info["shifted_linears"], calib_info["shifted_convs"] = linears, len(names) - linears
    if cfg.init == "dobi":
        dobi_cfg = DOBIConfig(bits=cfg.bits, calib=cfg.calib, ops=cfg.ops, layer_policy=cfg.layer_policy,
                              exclude=tuple(cfg.exclude), mode=cfg.dobi_mode, dobi=cfg.dobi)
        student, calib_info["init"], _ = dobi_calibrated(model, dobi_cfg, batches, prepare)
    else:
        spec, include = uniform_spec(cfg, cfg.bits), list(cfg.include)
        if op_set(model, cfg.ops) == "transformer":
            spec = replace(spec, layer_policy="all", matmul=True)
            include = op_names(model, "transformer") if include == ["*"] else include
        student, batches = calibrated_copy(model, spec, batches, cfg.calib.batch_size, include,
                                           cfg.exclude, prepare)
    bc = cfg.bias_correction
    if bc.enabled and (bc.stage == "before" or not cfg.reconstruction.enabled):
        calib_info["bias_correction"] = correct_bias(student, teacher, batches)
    t_calib = time.perf_counter() - start
    start = time.perf_counter()
    r, info = cfg.reconstruction, {"calibration": calib_info}
    if r.enabled:
        units = reconstruction_units(student, list(feature_blocks or []), batches[0][:1])
        steps = reconstruction_steps_for(cfg)
        records = reconstruct(student, teacher, batches, units, r.options(cfg.calib.seed or 0, steps),
                              progress=progress)
        info["finetune"] = {"reconstruction": "blockwise", "units": len(units),
                            "iterations": steps,
                            "batch_size": int(r.batch_size), "crop": r.crop,
                            "drop_prob": float(r.drop_prob), "records": records}
    if bc.enabled and bc.stage == "after" and r.enabled:
        calib_info["bias_correction"] = correct_bias(student, teacher, batches)
    if cfg.dqc.iterations > 0:  # end-to-end distillation of the activation bounds only: the
        info.setdefault("finetune", {})["dqc"] = _distill(student, teacher, cfg, calib, train, val, fit,  # weights keep
                               list(feature_blocks or []), batches[0])  # their learned rounding
    freeze(student)
    return QuantResult(student, {"calibrate": round(t_calib, 3),
                                 "finetune": round(time.perf_counter() - start, 3)},
                       {**info, **summary(student)})


def _check_globs(student, patterns, key: str) -> None:
    """One clear error for a glob that names no quantized layer (a typo would do nothing)."""
    from srq.quant.api import _matches, wrapped_modules

    names = [n for n, _ in wrapped_modules(student)]
    for p in patterns:
        if not any(_matches(n, [p]) for n in names):
            raise SrqError(f"{key}: {p!r} matches no quantized layer of {type(student).__name__} "
                           f"(e.g. {names[0] if names else 'none'}); fix the glob or drop it")


def _distill(student, teacher, cfg: LowBitConfig, calib, train, val, fit, blocks, example) -> dict:
    """DQC (2DQuant's L_O + λ·L_F) on the activation quantizers' bounds."""
    from srq.lit.fit import Fitter
    from srq.quant import wrapped_modules
    from srq.quant.reconstruct import activation_quantizers

    q = cfg.dqc
    trained = activation_quantizers([m for _, m in wrapped_modules(student)])
    module = dqc_module(teacher, student, cfg, blocks, model_scale(teacher, example), trained)
    common = (fit or Fitter())(module, samples(train if train is not None else calib),
                               None if val is None else samples(val), int(q.batch_size),
                               steps=int(q.iterations))
    return {"iterations": int(q.iterations), **common, "lr": float(q.lr), "crop": q.crop,
            "trained": "activation bounds",
            "feature_blocks": len(module.feature_blocks), "select": "last"}
