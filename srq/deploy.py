"""Deployment: a frozen quantized model → ONNX with QuantizeLinear/DequantizeLinear (QDQ) nodes,
run by ONNX Runtime.

Every enabled activation quantizer becomes ``[Clip →] QuantizeLinear → DequantizeLinear``
(per-tensor; the Clip only when the b-bit code range is narrower than uint8's); every quantized
weight is stored as its integer codes (uint8 initializer, per-channel scale and zero point)
feeding a ``DequantizeLinear``. ONNX Runtime fuses ``DQ → Conv/MatMul → Q`` into integer kernels
(QLinearConv, MatMulInteger…). Codes below 8 bits lie inside their low-bit range (ONNX INT4 is
not used: ONNX Runtime's CPU integer Conv does not take it). Values: ONNX QuantizeLinear is
y = sat(⌊x/Δ⌉ + z), the same integer grid as :mod:`srq.quant.primitives`.

Every tensor is uint8: a signed code range is stored shifted by 128 (r + 128, z + 128), which
leaves Δ·(r − z) unchanged. ONNX Runtime's u8×s8 kernels on x86 CPUs without VNNI (AVX2,
AVX-512F) add pairs of u8·s8 products in int16 and saturate (measured here on an AVX2 EPYC:
mean |ORT − fake-quant| 0.044 on a W8A8 IMDTN, 1e-8 with u8×u8); u8×u8 is exact on every CPU.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from srq.errors import SrqError
from srq.quant.api import wrapped_modules
from srq.quant.integer import integer_report
from srq.quant.modules import QuantModule
from srq.quant.primitives import choose_qparams, fake_quantize_codes, qrange
from srq.quant.quantizer import UniformQuantizer

log = logging.getLogger(__name__)

OPSET = 17
INPUT, OUTPUT = "lr", "sr"


def require_onnx() -> None:
    """One clear line when the deployment extras are missing."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise SrqError(f"{' and '.join(missing)} not installed; ONNX export and inference need "
                       "them: pip install 'srq[deploy]' (from a checkout: pip install '.[deploy]')")


def _uint8_shift(r_min: int) -> int:
    """What a code range starting at ``r_min`` is shifted by to be stored as uint8."""
    return 128 if r_min < 0 else 0


class _QDQ(torch.autograd.Function):
    """x_q = Δ·⌊clip(x, Δ(r_min − z), Δ(r_max − z))·(1/Δ)⌉ (= Δ·(r − z)); exported as
    ``[Clip →] QuantizeLinear → DequantizeLinear``."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, low, high, clip: bool):
        return torch.clamp(x, low, high).mul(1.0 / scale).round_().mul_(scale)

    @staticmethod
    def symbolic(g, x, scale, zero_point, low, high, clip: bool):
        if clip:
            x = g.op("Clip", x, low, high)
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, scale, zero_point), scale,
                    zero_point)


class _WeightDQ(torch.autograd.Function):
    """W = Δ·(r − z) from stored integer codes; exported as ``DequantizeLinear(codes)``."""

    @staticmethod
    def forward(ctx, codes, scale, zero_point, axis: int | None):
        if axis is None:
            return scale * (codes.float() - zero_point.float())
        shape = [1] * codes.dim()
        shape[axis] = -1
        return scale.view(shape) * (codes.float() - zero_point.float().view(shape))

    @staticmethod
    def symbolic(g, codes, scale, zero_point, axis: int | None):
        if axis is None:
            return g.op("DequantizeLinear", codes, scale, zero_point)
        return g.op("DequantizeLinear", codes, scale, zero_point, axis_i=axis)


class ActivationQDQ(nn.Module):
    """An activation quantizer as export sees it (per-tensor scale Δ and zero point z)."""

    def __init__(self, q: UniformQuantizer, name: str):
        super().__init__()
        fmt = q.fmt
        if fmt.axis is not None or q.hi.numel() != 1:
            raise SrqError(f"{name}: per-channel activation quantizers have no ONNX export here; "
                           "use a per-tensor activation format")
        scale, zero_point = choose_qparams(q.lo.detach(), q.hi.detach(), fmt.bits, fmt.mode)
        r_min, r_max = qrange(fmt.bits, fmt.mode)
        shift = _uint8_shift(r_min)
        self.clip = (r_min + shift, r_max + shift) != (0, 255)
        self.register_buffer("scale", scale.reshape(()).float().clone())
        self.register_buffer("zero_point", (zero_point.reshape(()).round() + shift).to(torch.uint8))
        self.register_buffer("low", (self.scale * (r_min - zero_point.reshape(()))).float())
        self.register_buffer("high", (self.scale * (r_max - zero_point.reshape(()))).float())

    def forward(self, x):
        return _QDQ.apply(x, self.scale, self.zero_point, self.low, self.high, self.clip)


class WeightDQ(nn.Module):
    """A frozen weight as integer codes + (per-channel) Δ and z."""

    def __init__(self, q: UniformQuantizer, weight: torch.Tensor):
        super().__init__()
        fmt = q.fmt
        codes = fake_quantize_codes(weight.detach().clone(), q.lo, q.hi, fmt.bits, fmt.mode,
                                    fmt.rounding)
        scale, zero_point = choose_qparams(q.lo.detach(), q.hi.detach(), fmt.bits, fmt.mode)
        shift = _uint8_shift(qrange(fmt.bits, fmt.mode)[0])
        self.axis = None if fmt.axis is None else fmt.axis % weight.dim()
        flat = (lambda t: t.reshape(())) if self.axis is None else (lambda t: t.reshape(-1))
        self.register_buffer("codes", (codes + shift).to(torch.uint8))
        self.register_buffer("scale", flat(scale.float()).clone())
        self.register_buffer("zero_point", (flat(zero_point).round() + shift).to(torch.uint8))

    def forward(self, _weight=None):
        return _WeightDQ.apply(self.codes, self.scale, self.zero_point, self.axis)


def export_model(model: nn.Module) -> nn.Module:
    """A copy of frozen quantized ``model`` whose quantizers are QDQ modules and whose weights
    are integer codes; its forward equals the fake-quant forward (same grid, same rounding)."""
    report = integer_report(model)
    if not report["deployable"]:
        bad = {**{n: "non-integer offset (free/two_bound)" for n in report["convertible"]},
               **report["blocked"]}
        name, why = next(iter(bad.items()))
        raise SrqError(f"{len(bad)} quantizer(s) no integer kernel runs, e.g. {name}: {why}; "
                       "convert them first (srq.quant.integer.to_integer_formats) or quantize "
                       "with an integer format")
    out = copy.deepcopy(model).cpu().eval()
    for name, module in list(wrapped_modules(out)):
        for attr in ("input_quantizer", "other_quantizer", "output_quantizer"):
            q = getattr(module, attr, None)
            if q is None:
                continue
            setattr(module, attr, ActivationQDQ(q, f"{name}.{attr}") if q.enabled else None)
        if isinstance(module, QuantModule) and module.weight_quantizer is not None:
            if not module.frozen:
                raise SrqError(f"{name}: export needs a frozen model (srq.quantize returns one; "
                               "or call srq.quant.freeze)")
            module.weight_quantizer = WeightDQ(module.weight_quantizer, module.module.weight)
            module.module.weight = None  # the codes are the only copy in the graph
            module.frozen = False
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def export_onnx(model: nn.Module, path: str | Path, *, opset: int = OPSET, example_size: int = 32,
                metadata: dict | None = None) -> dict:
    """Write ``model`` (a frozen quantized or an FP SR net, RGB [0, 1] NCHW in, scale× out) to
    ``path`` with dynamic batch, height and width; returns what results.json records."""
    require_onnx()
    import onnx
    import onnxruntime

    color = getattr(model, "color", "rgb")
    if color != "rgb":
        raise SrqError(f"ONNX export takes RGB-input models; this one feeds the net its {color} "
                       "channel and upsamples CbCr with MATLAB bicubic outside the net")
    has_quant = any(True for _ in wrapped_modules(model))
    net = export_model(model) if has_quant else copy.deepcopy(model).cpu().eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    example = torch.rand(1, 3, example_size, example_size)
    dims = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: dims, OUTPUT: dims})
    graph = onnx.load(str(tmp))
    for key, value in (metadata or {}).items():
        graph.metadata_props.add(key=str(key), value=str(value))
    onnx.checker.check_model(graph)
    onnx.save(graph, str(tmp))
    tmp.replace(path)
    ops = [n.op_type for n in graph.graph.node]
    int_weights = sum(1 for t in graph.graph.initializer
                      if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and
                      len(t.dims) > 1)
    return {"path": str(path.resolve()), "opset": opset, "onnx_version": onnx.__version__,
            "onnxruntime_version": onnxruntime.__version__,
            "file_mb": round(path.stat().st_size / 1e6, 4),
            "quantize_linear": ops.count("QuantizeLinear"),
            "dequantize_linear": ops.count("DequantizeLinear"),
            "integer_weights": int_weights}


def session(path: str | Path, threads: int | None = None, optimize: bool = True):
    """An ONNX Runtime CPU session (``optimize=False``: run the graph's ops as written)."""
    require_onnx()
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OrtModel(nn.Module):
    """An ONNX SR model behind the torch interface the evaluator uses: (N,3,h,w) → (N,3,sh,sw).
    ``reference``: a torch model run on the same input; ``max_abs_diff`` keeps the largest
    |ONNX − reference| seen (per pixel, [0, 1] units, before rounding)."""

    def __init__(self, path: str | Path, scale: int | None = None, threads: int | None = None,
                 optimize: bool = True, reference: nn.Module | None = None):
        super().__init__()
        self.path = Path(path)
        self.sess = session(self.path, threads, optimize)
        meta = self.sess.get_modelmeta().custom_metadata_map
        self.metadata = dict(meta)
        self.scale = int(scale or meta.get("scale", 0)) or None
        self.color = "rgb"
        self.reference = reference
        self.max_abs_diff = 0.0

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        x = lr.detach().float().cpu().contiguous().numpy()
        out = torch.from_numpy(self.sess.run(None, {INPUT: x})[0]).to(lr.device)
        if self.reference is not None:
            with torch.no_grad():
                ref = self.reference(lr)
            self.max_abs_diff = max(self.max_abs_diff, float((out - ref).abs().max()))
        return out


__all__ = ["ActivationQDQ", "OPSET", "OrtModel", "WeightDQ", "export_model", "export_onnx",
           "require_onnx", "session"]
