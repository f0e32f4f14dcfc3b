"""Deployment: QDQ ONNX export run by onnxruntime against fake-quant, integer-format
conversion and refusal, the CLI's export=onnx (PSNR from the raw ONNX output, computed with
BasicSR's oracle) and srq-infer."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")

import srq  # noqa: E402
from srq.deploy import OrtModel, export_model, export_onnx  # noqa: E402
from srq.errors import SrqError  # noqa: E402
from srq.models.archs.imdtn import IMDTN  # noqa: E402
from srq.models.wrapper import SRNet  # noqa: E402
from srq.quant import quantization_map  # noqa: E402
from srq.quant.integer import integer_report, to_integer_formats  # noqa: E402
from cli_helpers import srq as run_srq  # noqa: E402


class SmallCNN(nn.Module):
    """×2 CNN with a transposed conv and a channel-attention Linear (three wrapper kinds)."""

    def __init__(self, c=8):
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.body = nn.Conv2d(c, c, 3, padding=1)
        self.fc = nn.Linear(c, c)
        self.up = nn.ConvTranspose2d(c, c, 2, stride=2)
        self.tail = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        f = torch.relu(self.head(x))
        f = f + torch.relu(self.body(f))
        gate = torch.sigmoid(self.fc(f.mean((2, 3))))[..., None, None]
        return self.tail(self.up(f * gate))


INFER = [shutil.which("srq-infer") or sys.executable, *([] if shutil.which("srq-infer") else
                                                        ["-m", "srq.infer"])]


def small_cnn():
    torch.manual_seed(0)
    return SRNet(SmallCNN(), scale=2).eval()


def small_attention():
    """A randomly initialised IMDTN (Swin windows, shifted masks, self-padding): the
    windowed-attention op set at a size the test can afford."""
    torch.manual_seed(0)
    return SRNet(IMDTN(scale=2, nf=16, num_blocks=1, num_heads=2, window_size=4, depth=2,
                       mask_size=(8, 8)), scale=2).eval()


def quantized(model, method="minmax", bits="w8a8", overrides=()):
    extra = ["matmul=true"] if method == "minmax" else []
    cfg = srq.config(method, bits=bits, overrides=["layer_policy=all", *extra, *overrides])
    calib = torch.rand(8, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    return srq.quantize(model, cfg, calib=calib)


@pytest.mark.parametrize("build", [small_cnn, small_attention], ids=["cnn", "window_attention"])
def test_onnx_export_equals_fake_quant(build, tmp_path):
    q = quantized(build())
    assert integer_report(q)["deployable"]
    qmap = quantization_map(q)
    if build is small_attention:
        assert any("matmul" in name for name in qmap)
    info = export_onnx(q, tmp_path / "m.onnx")
    assert info["quantize_linear"] > 0 and info["integer_weights"] == sum(
        1 for f in qmap.values() if f["weight"])
    # ONNX Runtime running the graph's ops as written (no fusion) = fake-quant within 1e-5,
    # at sizes other than the traced one (dynamic H, W; padding and cropping in the graph).
    # ORT's float ops sum in another order (~1e-7 apart): where a value lies that close to a
    # rounding boundary one code flips and differs by one step Δ downstream. The CNN has no
    # such value at these inputs; attention (softmax) has a few, so there every QDQ node is
    # checked on ORT's own input instead (see _qdq_nodes_exact).
    ort = OrtModel(info["path"], scale=2, optimize=False)
    gen = torch.Generator().manual_seed(2)
    for shape in ((1, 3, 12, 12), (2, 3, 9, 14)):
        x = torch.rand(*shape, generator=gen)
        with torch.no_grad():
            ref = q(x)
        out = ort(x)
        assert out.shape == ref.shape == (shape[0], 3, 2 * shape[2], 2 * shape[3])
        diff = (out - ref).abs()
        if build is small_cnn:
            assert diff.max().item() < 1e-5
        else:
            assert diff.mean().item() < 1e-3
        _qdq_nodes_exact(info["path"], x, n_act=sum(1 for f in qmap.values() for k in (
            "input", "other") if f.get(k)))
    # the fused integer kernels stay close (one code step at most where rounding flips)
    fused = OrtModel(info["path"], scale=2)
    x = torch.rand(1, 3, 16, 16, generator=gen)
    with torch.no_grad():
        assert (fused(x) - q(x)).abs().mean().item() < 1e-3


def _constants(graph) -> dict:
    """Every constant tensor of an ONNX graph by name: initializers, Constant nodes, Identity
    of either."""
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        if node.op_type == "Identity" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
    return consts


def _qdq_nodes_exact(path, x, n_act):
    """Every QuantizeLinear → DequantizeLinear pair, fed ORT's own input, gives
    Δ·(clip(⌊x/Δ⌉ + z, r_min, r_max) − z) with the Clip bounds folded in — i.e. the graph holds
    the calibrated Δ, z and code range of each activation quantizer."""
    import onnx
    import onnxruntime

    graph = onnx.load(path)
    consts = _constants(graph.graph)
    producer = {o: n for n in graph.graph.node for o in n.output}
    dq_of = {n.input[0]: n for n in graph.graph.node if n.op_type == "DequantizeLinear"}
    pairs = [(n, dq_of[n.output[0]]) for n in graph.graph.node if n.op_type == "QuantizeLinear"]
    assert len(pairs) == n_act
    for q, dq in pairs:
        graph.graph.output.add().name = q.input[0]
        graph.graph.output.add().name = dq.output[0]
    so = onnxruntime.SessionOptions()
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = onnxruntime.InferenceSession(graph.SerializeToString(), so,
                                        providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"lr": x.numpy()})))
    for q, dq in pairs:
        scale, zp = consts[q.input[1]], consts[q.input[2]]
        info = np.iinfo(zp.dtype)
        r_min, r_max = info.min, info.max
        clip = producer.get(q.input[0])
        if clip is not None and clip.op_type == "Clip":
            r_min = int(np.rint(consts[clip.input[1]] / scale)) + int(zp)
            r_max = int(np.rint(consts[clip.input[2]] / scale)) + int(zp)
        t = torch.from_numpy(values[q.input[0]])
        codes = torch.clamp(torch.round(t / float(scale)) + int(zp), r_min, r_max)
        expected = ((codes - int(zp)) * float(scale)).numpy()
        np.testing.assert_array_equal(values[dq.output[0]], expected.astype(np.float32))


def test_weights_are_stored_as_integer_codes_within_their_bit_range(tmp_path):
    import onnx

    q = quantized(small_cnn(), bits="w4a8")
    path = export_onnx(q, tmp_path / "m.onnx")["path"]
    graph = onnx.load(path).graph
    # every integer tensor is uint8 (u8×u8 kernels: exact on CPUs without VNNI, see srq.deploy)
    assert not any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)
    tensors = _constants(graph)
    weight_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in tensors
                 and tensors[n.input[0]].ndim > 1]
    assert len(weight_dq) == 5
    for n in weight_dq:  # signed narrow 4-bit codes r − z in [−7, 7], stored as r + 128
        assert tensors[n.input[0]].dtype == np.uint8
        codes, zp = tensors[n.input[0]].astype(int), tensors[n.input[2]].astype(int)
        assert (zp == 128).all()
        assert codes.min() - 128 >= -7 and codes.max() - 128 <= 7
    x = torch.rand(1, 3, 10, 10, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (OrtModel(path, scale=2, optimize=False)(x) - q(x)).abs().max() < 1e-5


def test_low_bit_activations_are_clipped_to_their_code_range(tmp_path):
    q = quantized(small_cnn(), bits="w4a4")
    path = export_onnx(q, tmp_path / "m.onnx")["path"]
    x = torch.rand(1, 3, 10, 10, generator=torch.Generator().manual_seed(4)) * 1.5
    with torch.no_grad():
        assert (OrtModel(path, scale=2, optimize=False)(x) - q(x)).abs().max() < 1e-5
    n_act = sum(1 for f in quantization_map(q).values() if f["input"])
    _qdq_nodes_exact(path, x, n_act)


def test_hadamard_rotated_inputs_export_and_run_in_onnx_runtime(tmp_path):
    # the online rotation (fast Walsh–Hadamard over the channels of conv inputs and the last
    # dim of Linear inputs) is traced as plain float ops before each QuantizeLinear
    q = quantized(small_cnn(), method="lowbit", bits="w8a8", overrides=[
        "rotation=hadamard", "rotation_layers=all", "reconstruction.enabled=false"])
    rotated = {n for n, f in quantization_map(q).items() if f.get("input_rotation") == "hadamard"}
    assert rotated == {"net.body", "net.fc", "net.tail"}  # 8 wide; head (3) and up (transposed) not
    path = export_onnx(q, tmp_path / "m.onnx")["path"]
    ort = OrtModel(path, scale=2, optimize=False)
    for shape in ((1, 3, 10, 10), (2, 3, 7, 12)):
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            assert (ort(x) - q(x)).abs().max() < 1e-5
    # lowbit's default on transformers (rotation=auto: every power-of-2 Linear input)
    q = quantized(small_attention(), method="lowbit", bits="w8a8", overrides=["reconstruction.enabled=false"])
    assert q.srq_method["info"]["calibration"]["rotated_linears"] > 0
    ort = OrtModel(export_onnx(q, tmp_path / "a.onnx")["path"], scale=2, optimize=False)
    x = torch.rand(1, 3, 9, 14, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():  # softmax: a code may flip by one step (see the test above)
        assert (ort(x) - q(x)).abs().mean() < 1e-3


def test_non_integer_formats_convert_or_stop(tmp_path):
    free = quantized(small_cnn(), overrides=["act.mode=free"])
    report = integer_report(free)
    assert not report["deployable"] and report["convertible"] and not report["blocked"]
    with pytest.raises(SrqError, match="no integer kernel"):
        export_model(free)
    names = to_integer_formats(free)
    assert names == sorted(report["convertible"]) and integer_report(free)["deployable"]
    info = export_onnx(free, tmp_path / "m.onnx")
    x = torch.rand(1, 3, 10, 10, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (OrtModel(info["path"], scale=2, optimize=False)(x) - free(x)).abs().max() < 1e-5
    plq = quantized(small_cnn(), method="plq", bits="w4a4")
    assert integer_report(plq)["blocked"]
    with pytest.raises(SrqError, match="no integer kernel"):
        export_model(plq)


@pytest.fixture(scope="module")
def mse_run(tmp_path_factory):
    """`srq model=imdn_x4 method=mse bits=w8a8 data=set5 export=onnx` in a fresh directory."""
    root = tmp_path_factory.mktemp("deploy")
    proc = run_srq(["model=imdn_x4", "method=mse", "bits=w8a8", "data=set5", "export=onnx",
                    "logger=none", "hydra.run.dir=run"], cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


def _set5():
    """(Set5 ×4 LR files, HR folder) from the data store (the mirror in CI)."""
    from srq.data.store import fetch_folder

    lr = sorted(fetch_folder("benchmark/Set5/LR_bicubic/X4/"))
    return lr, fetch_folder("benchmark/Set5/HR/")[0].parent


def test_cli_export_psnr_from_raw_onnx_output(mse_run):
    """Y-PSNR of the raw ONNX Runtime output, computed here with BasicSR's calculate_psnr,
    within 0.05 dB of the run's fake-quant PSNR."""
    from basicsr.metrics import calculate_psnr
    from PIL import Image

    import onnxruntime as ort

    results = json.loads((mse_run / "results.json").read_text())
    onnx = results["export"]["onnx"]
    assert results["deployable"] is True and onnx["opset"] >= 13 and onnx["onnxruntime_version"]
    assert set(onnx["metrics"]["Set5"]) == set(results["metrics"]["Set5"])
    sess = ort.InferenceSession(str(mse_run / "model.onnx"), providers=["CPUExecutionProvider"])
    lr_files, hr_dir = _set5()
    psnrs = []
    for lr_path in lr_files:
        lr = np.asarray(Image.open(lr_path).convert("RGB"), dtype=np.float32) / 255.0
        out = sess.run(None, {"lr": lr.transpose(2, 0, 1)[None]})[0][0]
        sr = (np.clip(out, 0, 1) * 255.0).round().transpose(1, 2, 0)
        hr = np.asarray(Image.open(hr_dir / lr_path.name.replace("x4", "")).convert("RGB"))
        hr = hr[: sr.shape[0], : sr.shape[1]].astype(np.float64)
        psnrs.append(calculate_psnr(sr[..., ::-1], hr[..., ::-1], crop_border=4, test_y_channel=True))
    ours = float(np.mean(psnrs))
    assert ours == pytest.approx(onnx["metrics"]["Set5"]["psnr_y"], abs=1e-4)
    assert abs(ours - results["metrics"]["Set5"]["psnr_y"]) < 0.05


def _per_image(path: Path) -> dict[str, float]:
    with path.open() as f:
        return {r["image"]: float(r["psnr_y"]) for r in csv.DictReader(f)}


@pytest.mark.parametrize("which", ["srq", "onnx"])
def test_srq_infer_matches_the_run(mse_run, tmp_path, which):
    """srq-infer on the Set5 ×4 LR folder: 5 PNGs whose PSNR against HR equals the run's
    per-image PSNR (artifact: per_image.csv; model.onnx: per_image_onnx.csv)."""
    from srq.data.images import read_image
    from srq.metrics.sr import sr_image_metrics

    model = next(mse_run.glob("*.srq")) if which == "srq" else mse_run / "model.onnx"
    expected = _per_image(mse_run / ("per_image.csv" if which == "srq" else "per_image_onnx.csv"))
    lr_files, hr_dir = _set5()
    cmd = [*INFER, str(model), "--input", str(lr_files[0].parent),
           "--output", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outs = sorted((tmp_path / "out").glob("*.png"))
    assert len(outs) == 5
    for lr_path, out in zip(lr_files, outs):
        name = lr_path.name.replace("x4", "").removesuffix(".png")
        hr = read_image(hr_dir / f"{name}.png")
        sr = read_image(out)[None].float() / 255.0
        got = float(sr_image_metrics(sr, hr[None, :, : sr.shape[-2], : sr.shape[-1]], 4)["psnr_y"][0])
        assert got == pytest.approx(expected[name], abs=1e-6), name
    # a second run keeps what is there
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "kept 5 existing" in again.stderr
    assert [p.stat().st_mtime_ns for p in outs] == [p.stat().st_mtime_ns for p in sorted(
        (tmp_path / "out").glob("*.png"))]


def test_srq_infer_compare_and_bad_input(mse_run, tmp_path):
    lr_files, _ = _set5()
    proc = subprocess.run([*INFER, str(mse_run / "model.onnx"), "-i", str(lr_files[0]), "-o",
                           str(tmp_path), "--compare", "--tile", "48", "--tile-overlap", "8"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from srq.data.images import read_image

    panel = read_image(next(tmp_path.glob("*_compare.png")))
    assert panel.shape[-1] == 3 * panel.shape[-2] + 2 * 4
    bad = subprocess.run([*INFER, str(tmp_path / "missing.srq"), "-i", str(lr_files[0]), "-o",
                          str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr


def test_cli_export_converts_a_non_integer_format(tmp_path):
    """A free-offset activation format is moved to the nearest integer grid on export and
    results.json says so; exporting an FP run stops with one line."""
    proc = run_srq(["model=imdn_x4", "method=minmax", "bits=w8a8", "method.act.mode=free",
                    "data=set5", "eval.limit_images=1", "export=onnx", "logger=none",
                    "hydra.run.dir=run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    onnx = results["export"]["onnx"]
    assert results["deployable"] is False and onnx["converted"]["quantizers"] > 0
    change = onnx["converted"]["psnr_y_change"]["Set5"]
    assert abs(change) < 0.1
    assert abs(onnx["psnr_y_vs_fake_quant"]["Set5"]) < 0.05
    fp = run_srq(["model=imdn_x4", "export=onnx", "logger=none", "hydra.run.dir=fp"], cwd=tmp_path)
    assert fp.returncode == 2 and "export=onnx exports a quantized model" in fp.stderr
    assert not (tmp_path / "fp").exists()


def test_cli_export_of_a_saved_artifact(mse_run, tmp_path):
    """`srq quantized=<file.srq> export=onnx`: the same graph quality from the artifact alone."""
    artifact = next(mse_run.glob("*.srq"))
    proc = run_srq([f"quantized={artifact}", "export=onnx", "data=set5", "eval.limit_images=2",
                    "logger=none", "hydra.run.dir=again"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "again" / "results.json").read_text())
    onnx = results["export"]["onnx"]
    assert results["quantized_from"] == str(artifact) and results["deployable"] is True
    assert abs(onnx["psnr_y_vs_fake_quant"]["Set5"]) < 0.05
    assert (tmp_path / "again" / "model.onnx").stat().st_size == pytest.approx(
        (mse_run / "model.onnx").stat().st_size, rel=0.01)


def test_cli_export_refuses_palettized_weights_and_keeps_the_run(tmp_path):
    """coreai bits=wp4 (k-means LUT weights): no integer grid → one line, exit 2; the run's
    results.json and .srq stay."""
    proc = run_srq(["model=imdn_x4", "method=coreai", "bits=wp4", "data=set5",
                    "eval.limit_images=1", "export=onnx", "logger=none", "hydra.run.dir=run"],
                   cwd=tmp_path)
    assert proc.returncode == 2
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("srq: error")]
    assert len(line) == 1 and "palettized weight" in line[0] and "no integer-grid" in line[0]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["deployable"] is False and "export" not in results
    assert list((tmp_path / "run").glob("*.srq")) and not (tmp_path / "run" / "model.onnx").exists()


def test_2dquant_in_integer_mode_trains_and_exports_as_is(tmp_path):
    """`method.mode=integer`: DOBI scores its candidates on the integer grid and DQC trains the
    bounds through it; the result is deployable, so export needs no conversion."""
    proc = run_srq(["model=imdtn_x4", "method=2dquant", "method.mode=integer", "bits=w4a4",
                    "method.dqc.iterations=4", "method.dqc.batch_size=2", "method.dqc.num_patches=4",
                    "method.calib.num_patches=4", "method.calib.patch_size=32",
                    "method.calib.val_patches=2", "data=set5", "eval.limit_images=1",
                    "export=onnx", "logger=none", "hydra.run.dir=run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["deployable"] is True and results["export"]["onnx"]["converted"] is None
    formats = [f for m in results["quantization_map"].values() for f in m.values() if f]
    assert formats and all(" integer " in f for f in formats)
    assert abs(results["export"]["onnx"]["psnr_y_vs_fake_quant"]["Set5"]) < 0.05
