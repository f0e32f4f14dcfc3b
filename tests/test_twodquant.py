"""2DQuant: transformer op set with attention matmuls, 16-bit transparency, DOBI/DQC runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import results_files, srq
from omegaconf import OmegaConf

from srq.methods.config import Bits
from srq.methods.dobi import DOBIConfig, dobi_spec, op_set
from srq.models.zoo import build_model
from srq.quant import (
    QuantFormat,
    QuantSpec,
    calibration_mode,
    freeze,
    quantization_map,
    quantize,
)


def _dobi_cfg(**over) -> DOBIConfig:
    base = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "conf" / "method" / "dobi.yaml"))
    base = {k: v for k, v in {**base, **over}.items() if k not in ("_target_", "calib")}
    return DOBIConfig(**base)


def test_swinir_quantization_map_is_linears_and_two_matmuls_per_block():
    model = build_model("swinir_s_x4", pretrained=False)
    cfg = _dobi_cfg()
    assert op_set(model, cfg.ops) == "transformer"
    spec = dobi_spec(cfg, Bits("w4a4", 4, 4), "transformer")
    include = [n for n, m in model.named_modules() if type(m).__name__ in ("Linear", "MatMul")]
    quantize(model, spec, include=include)
    qmap = quantization_map(model)
    blocks = {n.rsplit(".", 2)[0] for n in qmap}
    assert len(blocks) == 24 and len(qmap) == 24 * 6
    for block in blocks:
        leaves = sorted(n[len(block) + 1:] for n in qmap if n.startswith(block + "."))
        assert leaves == ["attn.matmul_av", "attn.matmul_qk", "attn.proj", "attn.qkv", "mlp.fc1", "mlp.fc2"]
        assert qmap[f"{block}.mlp.fc2"]["input"].endswith("one-sided")        # post-GELU
        assert qmap[f"{block}.attn.matmul_av"]["input"].endswith("one-sided")  # post-softmax
        assert not qmap[f"{block}.attn.matmul_av"]["other"].endswith("one-sided")  # v
        assert not qmap[f"{block}.attn.qkv"]["input"].endswith("one-sided")
    assert not any("conv" in n for n in qmap)  # convolutions stay FP


@pytest.mark.parametrize("name", ["swinir_s_x4", "imdtn_x4"])
def test_16_bit_quantized_transformer_equals_fp(name):
    fp = build_model(name, pretrained=name != "swinir_s_x4").eval()
    model = build_model(name, pretrained=name != "swinir_s_x4").eval()
    model.load_state_dict(fp.state_dict())
    fmt = QuantFormat(16, "free")
    include = [n for n, m in model.named_modules() if type(m).__name__ in ("Linear", "MatMul")]
    quantize(model, QuantSpec(weight=fmt, input=fmt, layer_policy="all", matmul=True), include=include)
    torch.manual_seed(0)
    x = torch.rand(1, 3, 24, 24)
    with calibration_mode(model), torch.no_grad():
        model(x)
    freeze(model)
    with torch.no_grad():
        diff = (model(x) - fp(x)).abs().max().item()
    assert 0 < diff < 1e-3


TINY = ["model=imdtn_x4", "data=set5", "logger=none", "eval.limit_images=1",
        "method.calib.num_patches=4", "method.calib.patch_size=32", "method.calib.val_patches=2"]


def _run(tmp_path: Path, *args):
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = srq([*TINY, *args], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(results_files(tmp_path)[-1].read_text())


def test_dobi_and_2dquant_runs(tmp_path, data_dir):
    dqc = ["method=2dquant", "bits=w4a4", "method.dqc.iterations=4", "method.dqc.batch_size=2",
           "method.dqc.num_patches=4"]
    a = _run(tmp_path / "a", *dqc)
    # the same run with other test sets and W&B on: the same quantized model, bit for bit
    (tmp_path / "b").mkdir()
    proc = srq([*[t for t in TINY if not t.startswith(("data=", "logger="))], "data=set14",
                "logger=wandb", *dqc], tmp_path / "b")
    assert proc.returncode == 0, proc.stderr[-3000:]
    b = json.loads(results_files(tmp_path / "b")[-1].read_text())
    from srq.artifact import read

    (_, ta), (_, tb) = read(a["artifact"]["path"]), read(b["artifact"]["path"])
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert abs(a["artifact"]["file_mb"] / a["model_size_mb"]["quantized"] - 1) < 0.10
    ft = a["finetune"]
    assert ft["preset"] == "cpu" and ft["steps"] == 4 and ft["feature_blocks"] == 3
    assert a["calibration"]["ops"] == "transformer" and a["time_s"]["finetune"] > 0
    d = _run(tmp_path / "d", "method=dobi", "bits=w4a4")
    assert d["finetune"] is None
    assert d["quantization_map"].keys() == a["quantization_map"].keys()


def test_two_bit_is_finite(tmp_path, data_dir):
    res = _run(tmp_path, "method=dobi", "bits=w2a2")
    assert res["metrics"]["Set5"]["psnr_y"] == res["metrics"]["Set5"]["psnr_y"]  # not NaN
    assert isinstance(res["warnings"], list)


@pytest.mark.parametrize("bits,weight,act", [("w4a32", True, False), ("w32a4", False, True)])
def test_one_sided_bit_configs_quantize_only_that_side(bits, weight, act):
    """The weight-only / activation-only configs of experiment=harmoq_asymmetry."""
    bits_cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "bits" / f"{bits}.yaml")
    model = build_model("imdtn_x4")
    spec = dobi_spec(_dobi_cfg(), Bits(**OmegaConf.to_container(bits_cfg)), "transformer")
    include = [n for n, m in model.named_modules() if type(m).__name__ in ("Linear", "MatMul")]
    quantize(model, spec, include=include)
    qmap = quantization_map(model)
    assert qmap and all((f["weight"] is not None) == weight for f in qmap.values()
                        if "other" not in f)
    assert all((f["input"] is not None) == act for f in qmap.values())
    assert any("other" in f for f in qmap.values()) == act  # matmuls only with activations
