"""Quantization math in plain torch: primitives, observers, quantizer modules, the
quantize → calibration_mode → freeze flow, palettization and size accounting."""

from srq.quant.api import (
                           QuantSpec,
                           calibration_mode,
                           freeze,
                           quantization_map,
                           quantize,
                           quantizers,
                           wrapped_modules,
)
from srq.quant.quantizer import QuantFormat, UniformQuantizer

__all__ = ["QuantFormat", "QuantSpec", "UniformQuantizer", "calibration_mode", "freeze",
           "quantization_map", "quantize", "quantizers", "wrapped_modules"]
