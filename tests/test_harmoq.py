"""HarmoQ (inferred design): exact scale folding, ridge residual correction, balance term."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from cli_helpers import results_files, srq
from torch import nn

from srq.lit.losses import BalanceLoss
from srq.models.zoo import build_model
from srq.quant import QuantFormat, QuantSpec, calibration_mode, quantize
from srq.quant.harmonize import harmonize, harmonized_scale
from srq.quant.residual import (
    ResidualStats,
    correct_linear,
    laplacian_tokens,
    ridge_correction,
)


@pytest.mark.parametrize("name", ["imdtn_x4", "lmlt_tiny_x2", "lmlt_tiny_x4", "swinir_s_x2"])
def test_harmonized_folding_leaves_the_fp_output_unchanged(name):
    model = build_model(name, pretrained=not name.startswith("swinir")).eval()
    reference = copy.deepcopy(model)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    done = harmonize(model, [x])
    assert done["v_proj"] > 0 and done["q_k"] > 0
    changed = any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                        reference.state_dict().values()))
    assert changed
    with torch.no_grad():
        a, b = reference(x), model(x)
    assert float((a - b).abs().max() / a.abs().max()) <= 1e-5


def test_harmonized_scale_is_the_cauchy_schwarz_optimum():
    m, n = torch.tensor([16.0, 1.0, 0.25]), torch.tensor([1.0, 1.0, 4.0])
    s = harmonized_scale(m, n)
    raw = (m / n).pow(0.25)
    assert torch.allclose(s, raw / raw.log().mean().exp())  # (m/n)^¼ over its geometric mean

    def product(scale):
        return float((m / scale**2).sum() * (n * scale**2).sum())

    assert product(s) == pytest.approx(float(torch.sqrt(m * n).sum() ** 2), rel=1e-5)
    assert product(s) < product(torch.ones(3))


def test_ridge_correction_hand_computed():
    g = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    r = torch.eye(2)
    w = torch.tensor([[1.0, 1.0]])
    new_w, pinv = ridge_correction(g, r, w, alpha_damp=0.0)
    assert torch.allclose(new_w, torch.tensor([[1.5, 2.0]])) and not pinv  # W + (G⁻¹ R Wᵀ)ᵀ
    new_w, _ = ridge_correction(g, r, w, alpha_damp=0.01)  # λ = 0.01 · mean(2, 1)
    assert torch.allclose(new_w, torch.tensor([[1 + 1 / 2.015, 1 + 1 / 1.015]]))


def test_ridge_correction_equals_an_augmented_least_squares_solve():
    torch.manual_seed(0)
    x = torch.randn(500, 6, dtype=torch.float64)
    xq = x + 0.1 * torch.randn_like(x)
    w = torch.randn(4, 6, dtype=torch.float64)
    stats = ResidualStats(mu_h=0.0)
    stats.add(x, xq)
    alpha = 0.05
    new_w, _ = ridge_correction(stats.g / stats.count, stats.r / stats.count, w, alpha_damp=alpha)
    lam = alpha * float(torch.diagonal(xq.T @ xq / 500).mean())
    # min ‖x̂W'ᵀ − xWᵀ‖²/N + λ‖W' − W‖²  ⇔  stacked least squares
    a = torch.cat([xq / 500**0.5, lam**0.5 * torch.eye(6, dtype=torch.float64)])
    b = torch.cat([x @ w.T / 500**0.5, lam**0.5 * w.T])
    expected = torch.linalg.lstsq(a, b).solution.T
    assert torch.allclose(new_w, expected, atol=1e-10)


def test_src_reduces_the_layer_output_error_on_calibration_data():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    fp_w, fp_b = layer.weight.detach().clone(), layer.bias.detach().clone()
    x = torch.randn(64, 10, 16) * torch.linspace(0.1, 3, 16)
    q = QuantFormat(3, "free")
    model = nn.Sequential(nn.Linear(16, 8))
    model[0].load_state_dict(layer.state_dict())
    quantize(model, QuantSpec(weight=None, input=q, layer_policy="all"))
    with calibration_mode(model), torch.no_grad():
        model(x)
    with torch.no_grad():
        xq = model[0].input_quantizer(x)
        target = x @ fp_w.T + fp_b
        before = float((model(x) - target).pow(2).mean())
    stats = ResidualStats(mu_h=0.0)
    stats.add(x, xq)
    correct_linear(model[0].module, fp_w, fp_b, stats, alpha_damp=1e-4)
    with torch.no_grad():
        after = float((model(x) - target).pow(2).mean())
    assert after < 0.8 * before  # measured 0.205 → 0.139; the rest is uncorrelated noise


def test_laplacian_tokens_on_a_known_grid():
    grid = torch.zeros(1, 9, 1)
    grid[0, 4, 0] = 1.0  # centre of a 3×3 token grid
    out = laplacian_tokens(grid).reshape(3, 3)
    assert out[1, 1] == -4 and out[0, 1] == out[1, 0] == 1 and out[0, 0] == 0
    assert laplacian_tokens(torch.zeros(1, 10, 2)) is None  # not a square grid


def test_balance_term_gradient_is_finite_at_2_bits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8))
    fmt = QuantFormat(2, "free")
    quantize(model, QuantSpec(weight=fmt, input=fmt, layer_policy="all"))
    x = torch.randn(4, 5, 8)
    with calibration_mode(model), torch.no_grad():
        model(x)
    params = [p for q in (model[0].weight_quantizer, model[0].input_quantizer)
              for p in q.learnable().values()]
    for p in params:
        p.requires_grad_(True)
    loss = BalanceLoss({"0": model[0]})
    value = loss(None, None, {"0#input": x}, {"0#input": x + 0.05 * torch.randn_like(x)})
    value.backward()
    assert torch.isfinite(value)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert any(float(p.grad.abs().sum()) > 0 for p in params)


TINY = ["model=imdtn_x4", "data=set5", "logger=none", "eval.limit_images=1", "bits=w2a2",
        "method.calib.num_patches=4", "method.calib.patch_size=32", "method.calib.val_patches=2",
        "method.abr.rounds=2", "method.abr.steps=2", "method.abr.batch_size=2",
        "method.abr.num_patches=4"]


def _run(tmp_path: Path, *args):
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = srq([*TINY, *args], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(results_files(tmp_path)[-1].read_text())


def test_harmoq_cli_is_deterministic_and_reports_its_steps(tmp_path, data_dir):
    every_part = ["method=harmoq", "method.src.enabled=true", "method.abr.lambda_bal=0.01"]
    a = _run(tmp_path / "a", *every_part)
    b = _run(tmp_path / "b", *every_part)
    assert a["metrics"]["Set5"]["psnr_y"] == b["metrics"]["Set5"]["psnr_y"]
    assert a["metrics"]["Set5"]["psnr_y"] == a["metrics"]["Set5"]["psnr_y"]  # finite, not NaN
    cal = a["calibration"]
    assert cal["hso"]["norm_linear"] == 12 and cal["src"]["layers"] == 24  # 6 blocks × (qkv, fc1)
    assert a["finetune"]["steps"] == 4 and a["finetune"]["rounds"] == 2
    off = _run(tmp_path / "c", "method=harmoq", "method.hso.enabled=false", "method.src.enabled=false",
               "method.abr.enabled=false")
    assert off["calibration"]["hso"] is None and off["finetune"] is None
    literal = _run(tmp_path / "d", *every_part, "method.order=abstract")
    assert literal["calibration"]["order"] == "abstract" and not literal["finetune"]["resolve_src"]
    assert literal["calibration"]["src"]["layers"] == 24 and literal["calibration"]["hso"]["norm_linear"] == 12
    assert literal["metrics"]["Set5"]["psnr_y"] != a["metrics"]["Set5"]["psnr_y"]


def test_harmoq_with_its_own_parts_off_is_2dquant(tmp_path, data_dir):
    """HSO, SRC and the balance term off, DQC's bound parametrisation and loss weights: the
    refinement is DQC, so the result equals method=2dquant's (the ablation table's base row)."""
    common = [a for a in TINY if not a.startswith("method.abr.")]
    results = []
    for name, args in (("dqc", ["method=2dquant", "method.dqc.iterations=4",
                                "method.dqc.batch_size=2", "method.dqc.num_patches=4"]),
                       ("base", ["method=harmoq", "method.hso.enabled=false",
                                 "method.src.enabled=false", "method.abr.lambda_bal=0",
                                 "method.abr.relative=false", "method.abr.lr=1e-2",
                                 "method.abr.lambda_feat=5", "method.abr.rounds=1",
                                 "method.abr.steps=4", "method.abr.batch_size=2",
                                 "method.abr.num_patches=4"])):
        (tmp_path / name).mkdir()
        proc = srq([*common, *args], tmp_path / name)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(json.loads(results_files(tmp_path / name)[-1].read_text()))
    dqc, base = results
    assert base["metrics"]["Set5"]["psnr_y"] == dqc["metrics"]["Set5"]["psnr_y"]
    assert base["finetune"]["steps"] == dqc["finetune"]["steps"] == 4
