"""The user flow: ``quantize(model, spec, include, exclude)`` → ``with calibration_mode(model):
run batches`` → ``freeze(model)``; ``quantization_map(model)`` says what got which format.

    >>> spec = QuantSpec(weight=QuantFormat(4, "two_bound"), input=QuantFormat(4))
    >>> quantize(model, spec, exclude=["*.cca.*"], example_input=lr)   # doctest: +SKIP
    >>> with calibration_mode(model):                                  # doctest: +SKIP
    ...     for batch in calibration_batches: model(batch)
    >>> freeze(model)                                                  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import fnmatch
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from srq.quant.modules import WRAPPERS, QuantMatMul, QuantModule, build_quantizer
from srq.quant.plq import PLQFormat
from srq.quant.quantizer import QuantFormat, Quantizer

LAYER_POLICIES = ("first_last_8bit", "first_last_fp", "all")


@dataclass(frozen=True)
class QuantSpec:
    """What to quantize and how.

    ``weight`` / ``input``: formats of weights and input activations of the quantized
    modules (None keeps that tensor FP). ``layer_policy``: the SR convention
    ``first_last_8bit`` (first and last layers at 8 bit, formats otherwise unchanged),
    ``first_last_fp`` (those two stay FP) or ``all``. ``matmul``: also quantize the inputs
    of attention matmuls (``MatMul`` modules) with the ``input`` format. ``edge_weight`` /
    ``edge_input``: formats for the first/last layers under ``first_last_8bit`` (default:
    ``weight`` / ``input`` at ``edge_bits``; needed when ``input`` is not uniform).
    """

    weight: QuantFormat | None
    input: QuantFormat | PLQFormat | None
    layer_policy: str = "first_last_8bit"
    output: QuantFormat | None = None
    edge_bits: int = 8
    matmul: bool = False
    edge_weight: QuantFormat | None = None
    edge_input: QuantFormat | None = None
    input_overrides: tuple = ()

    def __post_init__(self):
        if self.layer_policy not in LAYER_POLICIES:
            raise ValueError(f"unknown layer_policy {self.layer_policy!r}; valid: "
                             f"{', '.join(LAYER_POLICIES)}")


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def execution_order(model: nn.Module, example_input: torch.Tensor, names: list[str]) -> list[str]:
    """``names`` sorted by first call in a forward pass on ``example_input``; names that are
    never called (e.g. CARN-M's ×2/×3 upsamplers in the ×4 model) are dropped."""
    order: list[str] = []
    modules = dict(model.named_modules())
    forward_with_hooks(model, example_input, [modules[n].register_forward_pre_hook(
        lambda mod, args, n=n: order.append(n) if n not in order else None) for n in names])
    return order


def forward_with_hooks(model: nn.Module, inputs: torch.Tensor | list[torch.Tensor], handles: list
                       ) -> None:
    """No-grad forwards of ``inputs`` (one tensor or a list of batches); the hook ``handles``
    are removed afterwards, also on an error."""
    try:
        with torch.no_grad():
            for batch in [inputs] if isinstance(inputs, torch.Tensor) else inputs:
                model(batch)
    finally:
        for handle in handles:
            handle.remove()


def quantize(model: nn.Module, spec: QuantSpec, include: list[str] | None = None,
             exclude: list[str] | None = None, example_input: torch.Tensor | None = None
             ) -> nn.Module:
    """Wrap the Conv2d / ConvTranspose2d / Linear (and, with ``spec.matmul``, MatMul)
    modules whose names match ``include`` and none of ``exclude`` (fnmatch globs), in place.

    First/last layer: by execution order on ``example_input`` (registration order without
    it), among the selected weight layers; modules that do not run on ``example_input`` stay
    unwrapped. Returns ``model``.
    """
    include, exclude = include or ["*"], exclude or []
    selected = []
    inside = [n for n, _ in wrapped_modules(model)]  # already quantized: leave alone
    for name, module in model.named_modules():
        kind = type(module)
        if kind not in WRAPPERS or not name or any(name.startswith(f"{w}.") for w in inside):
            continue
        if WRAPPERS[kind] is QuantMatMul and not spec.matmul:
            continue
        if _matches(name, include) and not _matches(name, exclude):
            selected.append(name)
    if example_input is not None:
        selected = execution_order(model, example_input, selected)
    modules = dict(model.named_modules())
    weighted = [n for n in selected if WRAPPERS[type(modules[n])] is not QuantMatMul]
    edges = {weighted[0], weighted[-1]} if weighted else set()
    for name in selected:
        weight_fmt, input_fmt = spec.weight, spec.input
        if name in edges and spec.layer_policy == "first_last_fp":
            continue
        if name in edges and spec.layer_policy == "first_last_8bit":
            weight_fmt = spec.edge_weight or (
                weight_fmt and weight_fmt.replace(bits=max(spec.edge_bits, weight_fmt.bits)))
            input_fmt = spec.edge_input or (
                input_fmt and input_fmt.replace(bits=max(spec.edge_bits, input_fmt.bits)))
        output_fmt = spec.output
        if WRAPPERS[type(modules[name])] is QuantMatMul:
            weight_fmt = None  # a matmul has no weight: only its operands are quantized
        if weight_fmt is None and input_fmt is None and output_fmt is None:
            continue
        module = modules[name]
        if getattr(module, "palette", None) is not None:
            weight_fmt = None  # already palettized: its weight is fixed
        wrapper = WRAPPERS[type(module)](module, weight_fmt, input_fmt, output_fmt)
        override = next((f for glob, f in spec.input_overrides if fnmatch.fnmatchcase(name, glob)), None)
        if override is not None and wrapper.input_quantizer is not None:
            wrapper.input_quantizer = build_quantizer(override)
        wrapper.is_edge = name in edges and spec.layer_policy != "all"
        device = _device_of(module, example_input)
        if device is not None:
            wrapper.to(device)  # quantizer bounds live beside the weights they quantize
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, wrapper)
    return model


def _device_of(module: nn.Module, example_input: torch.Tensor | None) -> torch.device | None:
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = example_input
    return None if tensor is None else tensor.device


def quantizers(model: nn.Module) -> Iterator[tuple[str, Quantizer]]:
    for name, module in model.named_modules():
        if isinstance(module, Quantizer):
            yield name, module


def wrapped_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if isinstance(module, (QuantModule, QuantMatMul)):
            yield name, module


@contextlib.contextmanager
def calibration_mode(model: nn.Module):
    """Statistics on, fake quantization off; bounds are computed and quantization enabled
    on exit. Weight bounds come from the weights themselves on entry."""
    for _, module in wrapped_modules(model):
        if isinstance(module, QuantModule) and module.weight_quantizer is not None:
            wq = module.weight_quantizer
            wq.observer(module.module.weight)
            wq.finish_calibration()
    activation = [(n, q) for n, q in quantizers(model) if not q.calibrated]
    for _, q in activation:
        q.observing, q.enabled = True, False
    try:
        yield model
    finally:
        for _, q in activation:
            q.observing = False
    unseen = [n for n, q in activation if int(q.observer.batches) == 0]
    if unseen:
        raise RuntimeError(
            f"calibration saw no data for {len(unseen)} quantizer(s) ({', '.join(unseen[:3])}"
            f"{', ...' if len(unseen) > 3 else ''}): run at least one batch through the model "
            "inside calibration_mode, or exclude modules that are never called"
        )
    for _, q in activation:
        q.finish_calibration()
    for _, q in quantizers(model):
        q.enabled = True


def freeze(model: nn.Module) -> nn.Module:
    """Fix everything: bounds become constants and every quantized weight is replaced, in
    place, by its value on the grid, ``W ← dequantize(codes(W))`` (no second FP copy is kept).
    Freezing a model whose quantizers never saw data is an error."""
    from srq.quant.primitives import dequantize, fake_quantize_codes

    unseen = [n for n, q in quantizers(model) if not q.calibrated]
    if unseen:
        raise RuntimeError(
            f"freeze: {len(unseen)} quantizer(s) never saw data ({', '.join(unseen[:3])}"
            f"{', ...' if len(unseen) > 3 else ''}); calibrate first (run batches inside "
            "calibration_mode(model)) or load calibrated bounds")
    for _, q in quantizers(model):
        for p in q.learnable().values():
            p.requires_grad_(False)
    for _, module in wrapped_modules(model):
        if isinstance(module, QuantModule) and module.weight_quantizer is not None and not module.frozen:
            wq, weight = module.weight_quantizer, module.module.weight
            with torch.no_grad():
                codes = fake_quantize_codes(weight.detach().clone(), wq.lo, wq.hi, wq.fmt.bits,
                                            wq.fmt.mode, wq.fmt.rounding)
                weight.copy_(dequantize(codes, wq.lo, wq.hi, wq.fmt.bits, wq.fmt.mode))
            module.frozen = True
    return model


def quantization_map(model: nn.Module) -> dict[str, dict[str, str | None]]:
    """{module name: {"weight": format, "input": format}} for every wrapped module."""
    return {name: module.formats() for name, module in wrapped_modules(model)}
