"""PTQ methods: one registry mapping ``method=<name>`` to a method object.

A method turns the FP teacher into a student: ``method.apply(teacher, context)`` returns a
:class:`MethodResult` with the student and its timings. Later methods add calibration
and fine-tuning; ``fp`` returns the teacher itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from srq.errors import SrqError


@dataclass
class MethodResult:
    student: nn.Module
    time_s: dict[str, float] = field(default_factory=lambda: {"calibrate": 0.0, "finetune": 0.0})
    info: dict = field(default_factory=dict)


class FullPrecision:
    """The unquantized model: student = teacher."""

    name = "fp"

    def __init__(self, cfg=None):
        self.cfg = cfg

    def apply(self, teacher: nn.Module, context=None) -> MethodResult:
        bits = context["cfg"].bits if context else None
        if bits is not None and (bits.weight_bits is not None or bits.act_bits is not None):
            raise SrqError(f"method=fp does not quantize, so bits={bits.name} has no effect; "
                           "use bits=fp32, or a quantizing method such as method=minmax")
        return MethodResult(student=teacher)


def _uniform(cfg):
    from srq.methods.uniform import UniformPTQ

    return UniformPTQ(cfg)


def _coreai(cfg):
    from srq.methods.coreai import CoreAIFlow

    return CoreAIFlow(cfg)


def _outlier(cfg):
    from srq.methods.outlier import OutlierAwarePTQ

    return OutlierAwarePTQ(cfg)


def _dobi(cfg):
    from srq.methods.dobi import DOBIInit

    return DOBIInit(cfg)


def _2dquant(cfg):
    from srq.methods.dqc import TwoDQuant

    return TwoDQuant(cfg)


def _harmoq(cfg):
    from srq.methods.harmoq import HarmoQ

    return HarmoQ(cfg)


METHODS: dict[str, Callable] = {"fp": FullPrecision, "minmax": _uniform, "ema_minmax": _uniform,
                                "percentile": _uniform, "mse": _uniform, "coreai": _coreai,
                                "plq": _outlier, "plq_saft": _outlier, "saft": _outlier,
                                "plq_vft": _outlier, "dobi": _dobi, "2dquant": _2dquant,
                                "2dquant_paper": _2dquant, "2dquant_code": _2dquant,
                                "harmoq": _harmoq, "harmoq_gpu": _harmoq}


def build_method(name: str, cfg=None):
    if name not in METHODS:
        raise SrqError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name](cfg)
