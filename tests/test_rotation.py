"""Hadamard rotations of Linear inputs: the fast transform against the Kronecker-built matrix,
the FP function unchanged on the zoo's transformers, the quantization gain on an outlier, and
the artifact round trip."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import srq
from srq.quant import QuantFormat, QuantSpec, calibration_mode, quantize, quantizers, wrapped_modules
from srq.quant.rotation import fwht, hadamard_matrix, rotate_inputs, rotate_linear_inputs
from tiny_nets import TinyTransformer


def test_fwht_is_the_orthogonal_sylvester_hadamard_transform():
    x = torch.randn(5, 3, 64, dtype=torch.float64)
    h = hadamard_matrix(64)
    assert torch.allclose(h @ h.T, torch.eye(64, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(fwht(x), x @ h.T, atol=1e-12)
    assert torch.allclose(fwht(fwht(x)), x, atol=1e-12)
    assert torch.equal(hadamard_matrix(2) * 2 ** 0.5, torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="power-of-2"):
        fwht(torch.randn(2, 36))


def _quantized(model, example, bits=4):
    spec = QuantSpec(weight=QuantFormat(bits, "narrow", axis=0, observer="minmax"),
                     input=QuantFormat(bits, "integer", observer="minmax"), layer_policy="all")
    include = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    quantize(model, spec, include=include, example_input=example)
    return model


@pytest.mark.parametrize("name, rotated", [("imdtn_x4", 24), ("lmlt_tiny_x4", 0)])
def test_rotation_keeps_the_fp_function_of_the_zoo_transformers(name, rotated, data_dir):
    from srq.models.zoo import build_model
    fp = build_model(name).eval()
    x = torch.rand(1, 3, 24, 24)
    student = _quantized(build_model(name).eval(), x)
    names = rotate_linear_inputs(student)
    assert len(names) == rotated  # LMLT-Tiny's linears are 36 wide: not a power of 2, left alone
    _assert_same_fp_function(fp, student, x)


def _assert_same_fp_function(fp, student, x):
    """With every quantizer off, the rotated student computes fp's function (≤ 1e-5)."""
    for _, q in quantizers(student):
        q.enabled = False
    with torch.no_grad():
        ref, out = fp(x), student(x)
    assert float((out - ref).abs().max()) <= 1e-5


def test_rotation_lowers_the_4bit_error_of_a_layer_with_an_outlier_channel():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(512, 64)
    x[:, 3] *= 40.0  # one outlier channel, as after a LayerNorm in a transformer
    errors = {}
    for rotate in (False, True):
        student = _quantized(nn.Sequential(nn.Linear(64, 32)), x[:1])
        student[0].module.load_state_dict(lin.state_dict())
        if rotate:
            assert rotate_linear_inputs(student) == ["0"]
        with calibration_mode(student), torch.no_grad():
            student(x)
        with torch.no_grad():
            errors[rotate] = float((student(x) - lin(x)).pow(2).mean())
    assert errors[True] < 0.7 * errors[False]  # measured 0.57×


def test_lowbit_with_rotation_round_trips_through_the_artifact(tmp_path):
    torch.manual_seed(0)
    fp, x = TinyTransformer().eval(), torch.rand(8, 3, 8, 8)
    cfg = srq.config("lowbit", bits="w4a4", overrides=["rotation=hadamard", "rotation_layers=linear",
                                                      "reconstruction.iterations=3",
                                                      "reconstruction.crop=4"])
    q = srq.quantize(fp, cfg, calib=x)
    qmap = srq.quant.quantization_map(q)
    assert {n for n, f in qmap.items() if f.get("input_rotation") == "hadamard"} == {"fc1", "fc2"}
    assert q.srq_method["info"]["calibration"]["rotated_linears"] == 2
    srq.save(q, tmp_path / "tiny.srq")
    loaded = srq.load(tmp_path / "tiny.srq", model=TinyTransformer())
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
        assert float((q(x) - fp(x)).abs().mean()) < 0.1 * float(fp(x).abs().mean())


def test_fwht_along_the_channel_dim_is_the_matrix_over_that_dim():
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    h = hadamard_matrix(16)
    assert torch.allclose(fwht(x, dim=1), torch.einsum("ij,njhw->nihw", h, x), atol=1e-12)
    assert torch.allclose(fwht(fwht(x, dim=1), dim=1), x, atol=1e-12)


@pytest.mark.parametrize("shape, dim", [((3, 5, 32), -1), ((2, 16, 5, 7), 1), ((2, 8, 4, 3), 2)])
def test_fwht_under_autograd_is_the_same_transform_and_its_gradient_is_h(shape, dim):
    """With autograd recording, fwht takes the dense product (x H or a 1×1 conv) where it can:
    the same values as the butterflies, and ∂/∂x of <g, H x> = H g."""
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    g = torch.randn(*shape, dtype=torch.float64)
    h = hadamard_matrix(shape[dim])
    y = fwht(x, dim=dim)
    assert torch.allclose(y, fwht(x.detach(), dim=dim), atol=1e-12)
    (y * g).sum().backward()
    assert torch.allclose(x.grad, torch.movedim(torch.movedim(g, dim, -1) @ h, -1, dim), atol=1e-12)


@pytest.mark.parametrize("name, layers, rotated", [("imdn_x4", "conv", 26), ("imdn_x4", "linear", 0),
                                                   ("imdtn_x4", "all", None)])
def test_conv_rotation_keeps_the_fp_function(name, layers, rotated, data_dir):
    from srq.models.zoo import build_model
    from srq.quant.modules import QuantConv2d
    fp = build_model(name).eval()
    x = torch.rand(1, 3, 24, 24)
    student = build_model(name).eval()
    quantize(student, QuantSpec(weight=QuantFormat(4, "narrow", axis=0, observer="minmax"),
                                input=QuantFormat(4, "integer", observer="minmax"), layer_policy="all",
                                matmul=True),
             example_input=x)  # with the attention MatMuls: rotation passes them by
    names = rotate_inputs(student, layers)
    modules = dict(student.named_modules())
    convs = [n for n in names if isinstance(modules[n], QuantConv2d)]
    # every power-of-2-wide, ungrouped conv and nothing else: a hand count on IMDN (6 blocks ×
    # c1, c5 and the attention's two 1×1 convs, + LR_conv and the upsampler's conv)
    if rotated is not None:
        assert len(names) == rotated
    assert all(modules[n].module.groups == 1 and modules[n].module.in_channels in (4, 16, 32, 64)
               for n in convs)
    _assert_same_fp_function(fp, student, x)


def test_conv_rotation_lowers_the_4bit_error_of_an_input_with_an_outlier_channel():
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 16, 3, padding=1)
    x = torch.randn(64, 32, 8, 8)
    x[:, 5] *= 30.0
    errors = {}
    for rotate in (False, True):
        student = nn.Sequential(copy.deepcopy(conv))
        quantize(student, QuantSpec(weight=QuantFormat(8, "narrow", axis=0, observer="minmax"),
                                    input=QuantFormat(4, "integer", observer="minmax"), layer_policy="all"),
                 example_input=x[:1])  # 8-bit weights: the input grid's error dominates
        if rotate:
            assert rotate_inputs(student, "conv") == ["0"]
        with calibration_mode(student), torch.no_grad():
            student(x)
        with torch.no_grad():
            errors[rotate] = float((student(x) - conv(x)).pow(2).mean())
    assert errors[True] < 0.7 * errors[False], errors  # measured 0.56×


def test_grouped_and_odd_width_convs_are_not_rotated():
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 12, 1),
                          nn.Conv2d(12, 8, 1), nn.Conv2d(8, 8, 1))
    quantize(model, QuantSpec(weight=QuantFormat(4, "narrow", axis=0), input=QuantFormat(4, "integer"),
                              layer_policy="all"), example_input=torch.rand(1, 16, 4, 4))
    assert rotate_inputs(model, "conv") == ["1", "3"]
    assert rotate_inputs(model, "conv") == []  # once only
    with pytest.raises(ValueError, match="layers='convs'"):
        rotate_inputs(model, "convs")


def test_lowbit_rotation_layers_switch_and_its_error():
    torch.manual_seed(0)
    fp, x = TinyTransformer().eval(), torch.rand(8, 3, 8, 8)
    base = ["rotation=hadamard", "reconstruction.enabled=false", "layer_policy=all"]
    for layers, linears, convs in (("linear", 2, 0), ("conv", 0, 1), ("all", 2, 1)):
        q = srq.quantize(fp, srq.config("lowbit", bits="w4a4", overrides=[*base, f"rotation_layers={layers}"]),
                         calib=x)
        info = q.srq_method["info"]["calibration"]
        assert (info["rotated_linears"], info["rotated_convs"]) == (linears, convs)  # tail: 16 wide
    with pytest.raises(srq.SrqError, match="rotation_layers"):
        srq.config("lowbit", bits="w4a4", overrides=["rotation_layers=convs"])


def test_lowbit_rotation_exclude_leaves_the_named_layers_unrotated():
    torch.manual_seed(0)
    fp, x = TinyTransformer().eval(), torch.rand(8, 3, 8, 8)
    base = ["rotation=hadamard", "rotation_layers=linear", "reconstruction.enabled=false"]
    q = srq.quantize(fp, srq.config("lowbit", bits="w4a4", overrides=[*base, "rotation_exclude=[fc2]"]),
                     calib=x)
    qmap = srq.quant.quantization_map(q)
    assert {n for n, f in qmap.items() if f.get("input_rotation") == "hadamard"} == {"fc1"}
    assert q.srq_method["info"]["calibration"]["rotated_linears"] == 1
    with pytest.raises(srq.SrqError, match=r"rotation_exclude: '\*\.fc3' matches no quantized layer"):
        srq.quantize(fp, srq.config("lowbit", bits="w4a4", overrides=[*base, "rotation_exclude=[*.fc3]"]),
                     calib=x)
