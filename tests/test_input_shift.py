"""Per-channel input shifts folded into biases: the FP function unchanged (zoo transformer,
zoo CNNs with padded convs, a bias-free layer), the shift equal to the hand-computed channel mean /
midpoint of the rotated input, the 4-bit gain on a rotated GELU output, learned shifts whose
bias folds stay exact, the artifact round trip and ONNX Runtime."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import srq
from srq.quant import QuantFormat, QuantSpec, calibration_mode, quantize, quantizers
from srq.quant.input_shift import shift_inputs
from srq.quant.rotation import fwht, rotate_linear_inputs
from test_deploy import _qdq_nodes_exact
from tiny_nets import TinyTransformer


def _quantized(model, example):
    spec = QuantSpec(weight=QuantFormat(4, "narrow", axis=0, observer="minmax"),
                     input=QuantFormat(4, "integer", observer="minmax"), layer_policy="all")
    include = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    quantize(model, spec, include=include, example_input=example)
    return model


def _fp_output(student, x):
    for _, q in quantizers(student):
        q.enabled = False
    with torch.no_grad():
        out = student(x)
    for _, q in quantizers(student):
        q.enabled = True
    return out


def test_shift_keeps_the_fp_function_of_a_rotated_zoo_transformer(data_dir):
    from srq.models.zoo import build_model
    fp = build_model("imdtn_x4").eval()
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    student = _quantized(copy.deepcopy(fp), x[:1])
    rotate_linear_inputs(student)
    names = shift_inputs(student, [x], "mean")
    assert len(names) == 24
    with torch.no_grad():
        assert float((_fp_output(student, x) - fp(x)).abs().max()) <= 1e-5


@pytest.mark.parametrize("name", ["imdn_x4", "pan_x4"])
def test_conv_shift_keeps_the_fp_function_of_zoo_cnns_at_the_borders_too(name, data_dir):
    from srq.models.zoo import build_model
    from srq.quant.rotation import rotate_inputs
    fp = build_model(name).eval()
    x = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))  # smooth, image-like:
    x = torch.nn.functional.interpolate(x, size=(13, 17), mode="bilinear")  # PAN blows up on noise
    student = copy.deepcopy(fp)
    quantize(student, QuantSpec(weight=QuantFormat(4, "narrow", axis=0), input=QuantFormat(4, "integer"),
                                layer_policy="all"), example_input=x[:1])
    rotate_inputs(student, "all")
    names = shift_inputs(student, [x], "mean", "all")
    layers = {n for n, m in fp.named_modules() if type(m) is nn.Linear
              or type(m) is nn.Conv2d and m.groups == 1}  # not transposed or grouped ones
    assert set(names) == layers
    with torch.no_grad():
        assert float((_fp_output(student, x) - fp(x)).abs().max()) <= 1e-4


@pytest.mark.parametrize("mode", ["mean", "midpoint"])
def test_shift_is_the_channel_statistic_of_the_rotated_input_and_creates_a_missing_bias(mode):
    torch.manual_seed(0)
    lin = nn.Linear(8, 4, bias=False)
    x = torch.randn(3, 5, 8) + torch.arange(8.0)
    student = _quantized(nn.Sequential(copy.deepcopy(lin)), x[:1])
    rotate_linear_inputs(student)
    assert shift_inputs(student, [x[:2], x[2:]], mode) == ["0"]  # two batches pooled
    hx = fwht(x).reshape(-1, 8).double()
    want = hx.mean(0) if mode == "mean" else (hx.amax(0) + hx.amin(0)) / 2
    assert torch.allclose(student[0].input_shift.double(), want, atol=1e-5)
    assert student[0].module.bias is not None
    with torch.no_grad():
        assert torch.allclose(_fp_output(student, x), lin(x), atol=1e-5)
    assert shift_inputs(student, [x], mode) == []  # shifted once only


def test_shift_lowers_the_4bit_error_of_a_rotated_gelu_output():
    # H sends the mean of a non-negative input into channel 0 (√n × the mean): an outlier
    torch.manual_seed(0)
    lin = nn.Linear(64, 16)
    x = torch.nn.functional.gelu(torch.randn(1024, 64) + 0.5)
    errors = {}
    for shift in (False, True):
        student = _quantized(nn.Sequential(copy.deepcopy(lin)), x[:1])
        rotate_linear_inputs(student)
        if shift:
            shift_inputs(student, [x], "mean")
        with calibration_mode(student), torch.no_grad():
            student(x)
        with torch.no_grad():
            errors[shift] = float((student(x) - lin(x)).pow(2).mean())
    assert errors[True] < 0.5 * errors[False]  # measured 0.41×


def test_learned_shifts_move_and_their_bias_folds_keep_the_fp_function():
    from srq.quant.reconstruct import ReconstructionOptions, reconstruct

    torch.manual_seed(0)
    fp = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)).eval()
    x = torch.rand(16, 4, 12, 12) + torch.arange(4.0).view(1, 4, 1, 1)
    student = copy.deepcopy(fp)
    spec = QuantSpec(weight=QuantFormat(4, "narrow", axis=0, observer="minmax"),
                     input=QuantFormat(4, "integer", observer="minmax"), layer_policy="all")
    quantize(student, spec, include=["0", "2"], example_input=x[:1])
    assert shift_inputs(student, [x], "mean", "all") == ["0", "2"]
    with calibration_mode(student), torch.no_grad():
        student(x)
    before = {k: (student[k].input_shift.clone(), student[k].module.bias.detach().clone()) for k in (0, 2)}
    bias = student[0].module.bias
    reconstruct(student, fp, [x[:8], x[8:]], ["0", "2"],
                ReconstructionOptions(iterations=30, crop=None, shift_lr=1e-2), progress=False)
    for k in (0, 2):
        m, (c0, b0) = student[k], before[k]
        assert type(m.module) is nn.Conv2d and not m.input_shift.requires_grad  # plain again
        moved = m.input_shift - c0
        assert float(moved.abs().max()) > 1e-3
        fold = fp[k].weight.detach().sum((2, 3)) @ moved  # b = b₀ + Σₖ Wₖ δ, the FP weight
        assert torch.allclose(m.module.bias.detach(), b0 + fold, atol=1e-5)
    assert student[0].module.bias is bias  # the same Parameter, written in place
    for k in (0, 2):  # FP weights back: the FP function is unchanged by the learned shifts
        student[k].module.weight.data.copy_(fp[k].weight)
    with torch.no_grad():
        assert float((_fp_output(student, x) - fp(x)).abs().max()) <= 1e-5


def test_lowbit_input_shift_round_trips_through_the_artifact_and_onnx_runtime(tmp_path):
    pytest.importorskip("onnxruntime")
    from srq.deploy import OrtModel, export_onnx

    torch.manual_seed(0)
    fp, x = TinyTransformer(fc2_bias=False).eval(), torch.rand(8, 3, 8, 8)
    cfg = srq.config("lowbit", bits="w8a8", overrides=["input_shift=mean", "reconstruction.iterations=3",
                                                      "reconstruction.crop=4",
                                                      "reconstruction.shift_lr=1e-2"])
    q = srq.quantize(fp, cfg, calib=x)
    info = q.srq_method["info"]["calibration"]
    assert (info["shifted_linears"], info["shifted_convs"]) == (2, 2)  # a CNN op set: all layers
    assert all(srq.quant.quantization_map(q)[n].get("input_shift") for n in ("head", "fc1", "fc2", "tail"))
    srq.save(q, tmp_path / "tiny.srq")
    loaded = srq.load(tmp_path / "tiny.srq", model=TinyTransformer(fc2_bias=False))  # fc2 has no bias here
    path = export_onnx(q, tmp_path / "tiny.onnx")["path"]
    ort = OrtModel(path, scale=1, optimize=False)
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
        # exact but where ORT's other float summation order flips one code at a rounding
        # boundary (test_deploy.py): one flip before the tail moves 27 of 1536 outputs
        assert float((ort(x) - q(x)).abs().mean()) < 2e-5
        assert float((q(x) - fp(x)).abs().mean()) < 0.05 * float(fp(x).abs().mean())
    qmap = srq.quant.quantization_map(q)  # every QDQ pair in the graph holds its quantizer's grid
    _qdq_nodes_exact(path, x, n_act=sum(1 for f in qmap.values() for k in ("input", "other") if f.get(k)))
