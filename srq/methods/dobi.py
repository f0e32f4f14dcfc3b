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
from dataclasses import dataclass

from srq.errors import SrqError
from srq.methods.common import QuantResult, as_batches, calibrate, device_of, summary
from srq.methods.config import Bits, Config, MethodConfig, choice
from srq.ops import MatMul
from srq.quant import QuantFormat, QuantSpec, freeze, quantize
from srq.quant.api import LAYER_POLICIES
from srq.quant.dobi import STEPS, TIES

OPS = ("auto", "transformer", "cnn")


@dataclass(frozen=True)
class DOBISettings(Config):
    candidates: int = 100
    one_sided_for: tuple = ("*.matmul_av", "*.fc2")
    one_sided_step: str = "half"
    include_last: bool = False
    tie: str = "first"

    def validate(self):
        choice(self.one_sided_step, STEPS, "dobi.one_sided_step")
        choice(self.tie, TIES, "dobi.tie")


@dataclass(frozen=True)
class DOBIConfig(MethodConfig):
    """DOBI bound initialisation alone (``method=dobi``); the base of 2DQuant and HarmoQ."""

    name: str = "dobi"
    ops: str = "auto"
    layer_policy: str = "first_last_8bit"
    exclude: tuple = ()
    mode: str = "free"  # free (the paper's two bounds) | integer (deployable: 0 on the grid)
    dobi: DOBISettings = DOBISettings()

    def validate(self):
        choice(self.ops, OPS, "method.ops")
        choice(self.mode, ("free", "integer"), "method.mode")
        choice(self.layer_policy, LAYER_POLICIES, "layer_policy")


def op_set(model, ops: str) -> str:
    """``auto`` → ``transformer`` when the model has attention :class:`MatMul` modules."""
    has_matmul = any(isinstance(m, MatMul) for m in model.modules())
    if ops == "auto":
        return "transformer" if has_matmul else "cnn"
    if ops == "transformer" and not has_matmul:
        raise SrqError("method.ops=transformer needs a model with attention matmuls (srq.MatMul "
                       "modules); this one has none (use ops=cnn or auto)")
    return ops


def dobi_spec(cfg: DOBIConfig, bits: Bits, ops: str) -> QuantSpec:
    wbits, abits = bits.weight_bits, bits.act_bits
    if (wbits is None and abits is None) or bits.palettize:
        raise SrqError(f"method={cfg.name} needs uniform bits; pick bits=w4a4 / w3a3 / "
                       f"w2a2, or w4a32 / w32a4 for one side only (got bits={bits.name})")
    d = cfg.dobi
    args = (("candidates", int(d.candidates)), ("include_last", bool(d.include_last)),
            ("step", str(d.one_sided_step)), ("tie", str(d.tie)))
    try:
        weight = None if wbits is None else QuantFormat(int(wbits), cfg.mode, observer="dobi",
                                                        observer_args=args)
        act = None if abits is None else QuantFormat(int(abits), cfg.mode, observer="dobi",
                                                     observer_args=args)
    except ValueError as exc:
        raise SrqError(f"{exc}; pick another bits= config") from exc
    overrides = () if act is None else tuple(
        (glob, act.replace(observer_args=tuple(sorted(args + (("one_sided", True),)))))
        for glob in d.one_sided_for)
    if ops == "transformer":
        return QuantSpec(weight=weight, input=act, layer_policy="all", matmul=True,
                         input_overrides=overrides)
    return QuantSpec(weight=weight, input=act, layer_policy=cfg.layer_policy,
                     edge_weight=weight and weight.replace(bits=8),
                     edge_input=act and act.replace(bits=8), input_overrides=overrides)


def quantized_copy(model, spec: QuantSpec, ops: str, exclude, example):
    """A deep copy of ``model`` with the op set ``ops`` wrapped by ``spec`` (uncalibrated):
    cnn → every conv/linear; transformer → every Linear and attention MatMul."""
    student = copy.deepcopy(model)
    quantize(student, spec, include=op_names(model, ops), exclude=list(exclude), example_input=example)
    return student


def op_names(model, ops: str) -> list[str]:
    """The include globs of op set ``ops``: cnn → every module ("*"); transformer → the names
    of the Linear and attention MatMul modules."""
    if ops == "cnn":
        return ["*"]
    return [n for n, m in model.named_modules() if type(m).__name__ in ("Linear", "MatMul")]


def dobi_calibrated(model, cfg: DOBIConfig, batches, prepare=None) -> tuple:
    """quantize [+ ``prepare(student)``] + DOBI calibration on ``batches`` → (student, info,
    seconds)."""
    ops = op_set(model, cfg.ops)
    spec = dobi_spec(cfg, cfg.bits, ops)
    start = time.perf_counter()
    student = quantized_copy(model, spec, ops, cfg.exclude, batches[0][:1])
    if prepare is not None:
        prepare(student)
    calibrate(student, batches)
    return student, {"ops": ops}, time.perf_counter() - start


def dobi_ptq(model, cfg: DOBIConfig, calib, **_) -> QuantResult:
    batches = as_batches(calib, cfg.calib.batch_size, device_of(model))
    student, info, seconds = dobi_calibrated(model, cfg, batches)
    freeze(student)
    return QuantResult(student, {"calibrate": round(seconds, 3), "finetune": 0.0},
                       {"calibration": info, **summary(student)})
