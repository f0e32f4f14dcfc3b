"""PTQ methods through the CLI contract: minmax grid ends, coreai joint flow, bad bits/calibration."""

from __future__ import annotations

import json

import pytest
from cli_helpers import results_files, srq


def _run(tmp_path, *args):
    proc = srq(["logger=none", *args], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(results_files(tmp_path)[-1].read_text())


@pytest.fixture(scope="module")
def minmax_runs(tmp_path_factory, data_dir):
    out = {}
    for bits in ("w8a8", "w4a4"):
        out[bits] = _run(tmp_path_factory.mktemp(bits), "model=imdn_x4", "method=minmax",
                         f"bits={bits}", "data=set5")
    return out


def test_minmax_w8a8_is_close_to_fp_and_w4a4_is_worse(minmax_runs):
    w8, w4 = minmax_runs["w8a8"], minmax_runs["w4a4"]
    fp = w8["fp_metrics"]["Set5"]["psnr_y"]
    assert fp == pytest.approx(32.210, abs=0.01)
    # measured: −0.15 dB (Brevitas W8A8 minmax on the same model: −0.13, docs/RESULTS.md)
    assert fp - 0.25 < w8["metrics"]["Set5"]["psnr_y"] < fp
    assert w4["metrics"]["Set5"]["psnr_y"] < w8["metrics"]["Set5"]["psnr_y"] - 1.0


def test_quantization_map_and_sizes(minmax_runs):
    for bits, res in minmax_runs.items():
        qmap = res["quantization_map"]
        names = list(qmap)
        assert names[0] == "net.fea_conv" and names[-1] == "net.upsampler.0"
        for edge in (names[0], names[-1]):
            assert qmap[edge]["weight"].startswith("int8") and qmap[edge]["input"].startswith("int8")
        assert qmap["net.IMDB1.c1"]["weight"].startswith(f"int{bits[1]}")
        assert res["time_s"]["calibrate"] > 0 and res["calibration"]["num_patches"] == 32
    sizes = minmax_runs["w8a8"]["model_size_mb"]
    assert sizes["quantized"] <= sizes["fp32"] / 3.5
    assert minmax_runs["w4a4"]["model_size_mb"]["quantized"] < sizes["quantized"]


def test_coreai_joint_flow(data_dir, tmp_path):
    res = _run(tmp_path, "model=imdn_x2", "method=coreai", "bits=wp4a8", "data=b100_coreai",
               "calib=b100_head20", "calib.num_patches=2", "eval.limit_images=2")
    assert res["metrics"]["B100"]["n_images"] == 2
    assert res["model_size_mb"]["quantized"] <= res["model_size_mb"]["fp32"] / 6
    layer = res["quantization_map"]["net.IMDB1.c1"]
    assert layer["weight"].startswith("palettized 4-bit") and layer["input"].startswith("int8")
    assert layer["output"].startswith("int8")
    assert res["metrics"]["B100"]["psnr_y"] > 25


@pytest.mark.parametrize("args,expected", [
    (["method=minmax", "bits=w4a4", "bits.weight_bits=1"], "unsupported bit-width 1"),
    (["method=minmax", "bits=w8a8", "calib.num_patches=0"], "calibration set is empty"),
    (["method=fp", "bits=w8a8"], "method=fp does not quantize"),
    (["method=minmax", "bits=wp4"], "use method=coreai"),
])
def test_bad_quantization_input(data_dir, tmp_path, args, expected):
    proc = srq(["model=imdn_x4", "logger=none", "eval.limit_images=1", *args], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("srq: error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-2000:]
