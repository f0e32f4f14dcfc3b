"""A frozen quantized model as plain data and back: a JSON-able quantization map plus a flat
{name: tensor} dict with every quantized weight packed at its real bit-width.

    quantized_state(model) → (qmap, palettes, tensors)
    restore_quantized(model, qmap, palettes, tensors) → the same frozen model, bit for bit

Stored per quantized weight W with format (b, mode, l, u): its codes u = r − r_min packed
at b bits (``<name>.weight.codes``), and the bounds; W is rebuilt as dequantize(r). Per
palettized weight: the LUT indices packed at n bits, the int8 LUT codes and one scale per LUT
(or the FP32 LUT). Activation quantizers: their bounds (l, u; PLQ: l_a, bp, u_a). Everything
else (biases, unquantized layers, buffers) as stored in the model, FP. Calibration
statistics (observer buffers) are not kept: a frozen model does not calibrate again.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from srq.quant.api import freeze, quantizers, wrapped_modules
from srq.quant.modules import WRAPPERS, QuantMatMul, QuantModule, build_quantizer
from srq.quant.packing import pack_codes, unpack_codes
from srq.quant.palettize import Palette, PalettSpec
from srq.quant.plq import PiecewiseLinearQuantizer, PLQFormat
from srq.quant.primitives import dequantize, fake_quantize_codes, qrange
from srq.quant.quantizer import QuantFormat

KINDS = {cls: cls.__name__ for cls in WRAPPERS}  # Conv2d, ConvTranspose2d, Linear, MatMul


def format_to_dict(fmt) -> dict | None:
    """A quantizer format as JSON-able data (``type``: uniform | plq)."""
    if fmt is None:
        return None
    data = dataclasses.asdict(fmt)
    if isinstance(fmt, PLQFormat):
        return {"type": "plq", **data}
    data["observer_args"] = [list(kv) for kv in fmt.observer_args]
    return {"type": "uniform", **data}


def format_from_dict(data: dict | None):
    if data is None:
        return None
    data = dict(data)
    kind = data.pop("type")
    if kind == "plq":
        return PLQFormat(**data)
    if kind == "uniform":
        data["observer_args"] = tuple(tuple(kv) for kv in data.get("observer_args", ()))
        return QuantFormat(**data)
    raise ValueError(f"unknown quantizer format type {kind!r}")


def _weight_codes(module: QuantModule) -> tuple[torch.Tensor, int]:
    """(codes shifted to [0, 2^b − 1], r_min) of a frozen module's weight."""
    wq = module.weight_quantizer
    fmt = wq.fmt
    codes = fake_quantize_codes(module.module.weight.detach().clone(), wq.lo, wq.hi, fmt.bits,
                                fmt.mode, fmt.rounding)
    r_min = 0 if fmt.mode in ("free", "integer", "two_bound") else qrange(fmt.bits, fmt.mode)[0]
    return codes - r_min, r_min


SLOTS = ("weight_quantizer", "input_quantizer", "other_quantizer", "output_quantizer")


def _param_names(quantizer) -> tuple[str, ...]:
    return ("la", "bp", "ua") if isinstance(quantizer, PiecewiseLinearQuantizer) else ("lo", "hi")


def _bound_shape(slot: str, entry: dict, fmt) -> tuple[int, ...]:
    """Shape of a quantizer bound: per-channel weight bounds broadcast along their axis."""
    if slot == "weight_quantizer" and getattr(fmt, "axis", None) is not None:
        shape = [1] * len(entry["weight_shape"])
        shape[fmt.axis] = entry["weight_shape"][fmt.axis]
        return tuple(shape)
    return ()


def quantized_state(model: nn.Module, skip: set[str] = frozenset()
                    ) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """(qmap, palettes, tensors) of a frozen model; ``skip``: state_dict keys not to store
    (e.g. buffers that the architecture rebuilds identically)."""
    formats: list[dict] = []  # each distinct format once; modules refer to it by index
    modules, palettes, tensors = {}, {}, {}
    derived = set()  # state_dict keys rebuilt from codes / palettes / qparams

    def ref(quantizer):
        if quantizer is None:
            return None
        data = format_to_dict(quantizer.fmt)
        if data not in formats:
            formats.append(data)
        return formats.index(data)

    for name, module in wrapped_modules(model):
        if isinstance(module, QuantModule) and module.weight_quantizer is not None and not module.frozen:
            raise ValueError(f"{name} is not frozen: call freeze(model) before saving it")
        entry = {"kind": KINDS[type(module.module)]}
        if module.is_edge:
            entry["is_edge"] = True
        if getattr(module, "input_rotation", None) is not None:
            entry["input_rotation"] = module.input_rotation
        if getattr(module, "input_shift", None) is not None:
            entry["input_shift"] = True  # c in the state (<name>.input_shift), W c in the bias
        for slot in SLOTS:
            q = getattr(module, slot, None)
            if q is not None:
                entry[slot.removesuffix("_quantizer")] = ref(q)
        wq = getattr(module, "weight_quantizer", None)
        if wq is not None:
            codes, r_min = _weight_codes(module)
            entry["weight_shape"] = list(module.module.weight.shape)
            if r_min:
                entry["weight_code_offset"] = r_min
            tensors[f"{name}.weight.codes"] = pack_codes(codes, wq.fmt.bits)
            derived.add(f"{name}.module.weight")
        bounds = []
        for slot in SLOTS:
            q = getattr(module, slot, None)
            for p in _param_names(q) if q is not None else ():
                bounds.append(getattr(q, p).detach().float().reshape(-1))
                derived.add(f"{name}.{slot}.{p}")
        if bounds:
            tensors[f"{name}.qparams"] = torch.cat(bounds)
        modules[name] = entry
    for name, module in model.named_modules():
        palette = getattr(module, "palette", None)
        if not isinstance(palette, Palette):
            continue
        spec = palette.spec
        palettes[name] = {"spec": dataclasses.asdict(spec), "axis": palette.axis,
                          "channels_per_group": palette.channels_per_group,
                          "shape": list(palette.indices.shape)}
        tensors[f"{name}.palette.indices"] = pack_codes(palette.indices, spec.n_bits)
        if palette.lut_scales is not None:
            scales = palette.lut_scales.reshape(-1, 1)
            tensors[f"{name}.palette.lut_codes"] = torch.round(palette.luts / scales).to(torch.int8)
            tensors[f"{name}.palette.lut_scales"] = palette.lut_scales.detach().clone()
        else:
            tensors[f"{name}.palette.luts"] = palette.luts.detach().clone()
        derived.update({f"{name}.weight", f"{name}.palette.indices", f"{name}.palette.luts",
                        f"{name}.palette.lut_scales"})
    for key, value in model.state_dict().items():
        if key in derived or key in skip or ".observer." in key:
            continue
        tensors[key] = value.detach().clone()
    return {"formats": formats, "modules": modules}, palettes, tensors


def _palette(data: dict, tensors: dict[str, torch.Tensor], name: str) -> Palette:
    spec = PalettSpec(**data["spec"])
    shape = data["shape"]
    numel = 1
    for s in shape:
        numel *= s
    indices = unpack_codes(tensors[f"{name}.palette.indices"], spec.n_bits, numel).reshape(shape)
    if f"{name}.palette.lut_codes" in tensors:
        scales = tensors[f"{name}.palette.lut_scales"]
        luts = tensors[f"{name}.palette.lut_codes"].float() * scales.reshape(-1, 1)
    else:
        scales, luts = None, tensors[f"{name}.palette.luts"]
    return Palette(indices, luts, scales, data["channels_per_group"], data["axis"], spec)


def restore_quantized(model: nn.Module, qmap: dict, palettes: dict,
                      tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild the frozen quantized model from :func:`quantized_state` data, in place, on an
    unquantized instance of the same architecture. Raises ValueError naming the first thing
    that does not fit (a missing module, another layer type, a shape)."""
    formats = [format_from_dict(f) for f in qmap["formats"]]

    def fmt(entry, key):
        return None if entry.get(key) is None else formats[entry[key]]

    qmap = qmap["modules"]
    modules = dict(model.named_modules())
    by_kind = {v: k for k, v in KINDS.items()}
    for name, entry in qmap.items():
        module = modules.get(name)
        kind = by_kind.get(entry["kind"])
        if module is None or kind is None or type(module) is not kind:
            found = "nothing" if module is None else type(module).__name__
            raise ValueError(f"the artifact quantizes {entry['kind']} {name!r}; the model has {found} there")
        wrapper = WRAPPERS[kind](module, fmt(entry, "weight"), fmt(entry, "input"), fmt(entry, "output"))
        if isinstance(wrapper, QuantMatMul):
            other = fmt(entry, "other")
            wrapper.other_quantizer = None if other is None else build_quantizer(other)
        wrapper.is_edge = bool(entry.get("is_edge"))
        if entry.get("input_rotation") is not None:
            wrapper.input_rotation = entry["input_rotation"]
        if entry.get("input_shift"):
            wrapper.input_shift = torch.zeros(module.weight.shape[1], device=module.weight.device)
            if getattr(module, "bias", False) is None:  # the shift gave the layer a bias
                module.bias = nn.Parameter(torch.zeros(module.weight.shape[0], device=module.weight.device))
        parent, _, child = name.rpartition(".")
        setattr(modules[parent] if parent else model, child, wrapper)
    modules = dict(model.named_modules())  # after wrapping: palettes sit inside wrappers
    for name, data in palettes.items():
        module = modules.get(name)
        if module is None or not hasattr(module, "weight"):
            raise ValueError(f"the model has no weight layer {name!r} (palettized in the artifact)")
        palette = _palette(data, tensors, name)
        if tuple(palette.indices.shape) != tuple(module.weight.shape):
            raise ValueError(f"{name}.weight is {tuple(module.weight.shape)} in the model, "
                             f"{tuple(palette.indices.shape)} in the artifact")
        module.palette = palette.to(module.weight.device)
        with torch.no_grad():
            module.weight.copy_(module.palette.weight())
    state = {k: v for k, v in tensors.items() if not k.endswith((".weight.codes", ".palette.indices",
                                                               ".palette.lut_codes", ".palette.lut_scales",
                                                               ".palette.luts", ".qparams"))}
    for name, entry in qmap.items():  # quantizer bounds, in slot order
        wrapper, flat, at = model.get_submodule(name), tensors.get(f"{name}.qparams"), 0
        for slot in SLOTS:
            q = getattr(wrapper, slot, None)
            for p in _param_names(q) if q is not None else ():
                shape = _bound_shape(slot, entry, q.fmt)
                n = math.prod(shape)
                if flat is None or at + n > flat.numel():
                    raise ValueError(f"the quantizer parameters of {name} are missing or short")
                state[f"{name}.{slot}.{p}"] = flat[at:at + n].reshape(shape)
                at += n
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            raise ValueError(f"the artifact has {key!r}, which the model does not")
        if own[key].shape != value.shape and not _is_bound(key):  # bounds take their saved shape
            raise ValueError(f"{key} is {tuple(own[key].shape)} in the model, "
                             f"{tuple(value.shape)} in the artifact")
    for name, entry in qmap.items():
        if entry.get("weight") is None:
            continue
        wrapper = model.get_submodule(name)
        shape = tuple(entry["weight_shape"])
        if tuple(wrapper.module.weight.shape) != shape:
            raise ValueError(f"{name}.weight is {tuple(wrapper.module.weight.shape)} in the model, "
                             f"{shape} in the artifact")
        fmt = wrapper.weight_quantizer.fmt
        numel = wrapper.module.weight.numel()
        codes = unpack_codes(tensors[f"{name}.weight.codes"], fmt.bits, numel).reshape(shape)
        codes = (codes + int(entry.get("weight_code_offset", 0))).float()
        lo, hi = state[f"{name}.weight_quantizer.lo"], state[f"{name}.weight_quantizer.hi"]
        state[f"{name}.module.weight"] = dequantize(codes, lo, hi, fmt.bits, fmt.mode)
    device = next(iter(model.parameters()), torch.zeros(())).device
    missing, unexpected = model.load_state_dict({k: v.to(device) for k, v in state.items()},
                                                strict=False)
    params = dict(model.named_parameters())
    missing = [k for k in missing if k in params  # buffers: rebuilt by the architecture
               and k.removesuffix(".weight") not in palettes]
    if missing or unexpected:
        raise ValueError(f"the artifact does not fit the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    for name in qmap:
        wrapper = model.get_submodule(name)
        if isinstance(wrapper, QuantModule) and wrapper.weight_quantizer is not None:
            wrapper.frozen = True
    for _, q in quantizers(model):
        q.observing, q.enabled = False, True
    return freeze(model)


def _is_bound(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in ("lo", "hi") and "_quantizer." in key


def payload_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of the stored tensors (what an artifact holds besides its JSON header)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


__all__ = ["format_from_dict", "format_to_dict", "payload_bytes", "quantized_state",
           "restore_quantized"]
