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
        return MethodResult(student=teacher)


METHODS: dict[str, Callable] = {"fp": FullPrecision}


def build_method(name: str, cfg=None):
    if name not in METHODS:
        raise SrqError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name](cfg)
