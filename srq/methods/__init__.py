"""PTQ methods: a frozen config dataclass plus one function over plain objects each, in one
registry (config class → function).

    result = run_method(model, cfg, calib, train=…, val=…, hr=…, feature_blocks=…, fit=…)

``model`` is the FP network (never modified); ``calib`` an (N, 3, h, w) tensor in [0, 1] or an
iterable of such batches; ``train`` / ``val`` fine-tuning and held-out patches (fine-tuning
methods; default: ``calib`` / none); ``hr`` the HR crops of ``calib`` (sensitive k-means);
``feature_blocks`` the module names feature losses tap (none: output-only distillation);
``fit`` a :class:`srq.lit.fit.Fitter`. The result holds the frozen quantized model, seconds
per phase and info. No method reads a run config, a run directory or the model zoo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from srq.errors import SrqError
from srq.methods.common import QuantResult
from srq.methods.config import MethodConfig

MethodResult = QuantResult  # the name scripts used


@dataclass(frozen=True)
class FPConfig(MethodConfig):
    """The unquantized model: the result is the model itself."""

    name: str = "fp"


def full_precision(model, cfg: FPConfig, calib=None, **_) -> QuantResult:
    if cfg.bits.quantizes:
        raise SrqError(f"method=fp does not quantize, so bits={cfg.bits.name} has no effect; "
                       "use bits=fp32, or a quantizing method such as method=minmax")
    return QuantResult(model)


def _registry() -> dict[type, Callable]:
    from srq.methods.coreai import CoreAIConfig, coreai_flow
    from srq.methods.dobi import DOBIConfig, dobi_ptq
    from srq.methods.dqc import TwoDQuantConfig, twodquant
    from srq.methods.harmoq import HarmoQConfig, harmoq
    from srq.methods.lowbit import LowBitConfig, lowbit
    from srq.methods.outlier import OutlierConfig, outlier_ptq
    from srq.methods.uniform import UniformConfig, uniform_ptq

    return {FPConfig: full_precision, UniformConfig: uniform_ptq, CoreAIConfig: coreai_flow,
            OutlierConfig: outlier_ptq, DOBIConfig: dobi_ptq, TwoDQuantConfig: twodquant,
            HarmoQConfig: harmoq, LowBitConfig: lowbit}


def method_function(cfg: MethodConfig) -> Callable:
    """The function that runs config ``cfg`` (by its exact type)."""
    fn = _registry().get(type(cfg))
    if fn is None:
        raise SrqError(f"{type(cfg).__name__} is not a method config; build one with "
                       "srq.config(<method name>)")
    return fn


def run_method(model, cfg: MethodConfig, calib=None, **kwargs) -> QuantResult:
    return method_function(cfg)(model, cfg, calib, **kwargs)


__all__ = ["FPConfig", "MethodConfig", "MethodResult", "QuantResult", "method_function",
           "run_method"]
