"""The validation split: held-out whole images, disjoint from calibration, scored like a test set."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from cli_helpers import results_files, srq
from PIL import Image

from srq.data.images import pixel_hash, read_image
from srq.data.validation import ValidationConfig, validation_set
from srq.errors import SrqError


def _folder(root, sizes):
    root.mkdir()
    gen = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(gen.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"im{i}.png")
    return root


def test_split_skips_used_images_and_prefers_ones_too_small_for_a_patch(tmp_path):
    # at ×1 the default patch is 64 px: im0, im2 can give one; im1, im3, im4 cannot; im3 gave a
    # patch (excluded); im5 leaves under 11 px after the border crop (SSIM's window): never used
    folder = _folder(tmp_path / "pool", [(80, 90), (40, 50), (70, 64), (30, 30), (50, 40), (12, 40)])
    used = {pixel_hash(read_image(folder / "im3.png"))}
    cfg = ValidationConfig(source="folder", folder=str(folder), num_images=3)
    split = validation_set(cfg, scale=1, exclude=used)
    assert [p.name for p in split.pairs] == ["im1", "im4", "im0"]
    name, lr, hr = split[0]
    assert tuple(hr.shape) == (3, 40, 50) and tuple(lr.shape) == (3, 40, 50)
    assert [p.name for p in validation_set(cfg, scale=2, exclude=used).pairs] == ["im0", "im1", "im2"]
    assert tuple(validation_set(cfg, scale=2, exclude=used)[1][1].shape) == (3, 20, 25)
    with pytest.raises(SrqError, match="only 4 folder images"):
        validation_set(ValidationConfig(source="folder", folder=str(folder), num_images=5), 1, used)


def test_every_run_reports_val(data_dir, tmp_path):
    """FP IMDN ×2 and a calibrated one: val scored as BasicSR scores it, held out from the
    calibration patches, per-image rows apart from the test sets'."""
    from basicsr.metrics import calculate_psnr

    from srq.data.calibration import CalibrationConfig, CalibrationPatches
    from srq.models.zoo import build_model

    for method in (["method=fp"], ["method=minmax", "bits=w8a8"]):
        proc = srq(["model=imdn_x2", *method, "eval.limit_images=1", "val.num_images=12",
                    "logger=none"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {json.loads(f.read_text())["method"]: json.loads(f.read_text()) for f in results_files(tmp_path)}
    fp, q = runs["fp"], runs["minmax"]
    assert q["val"]["n_images"] == 12 and q["val"]["source"] == "t91"
    # held out: no val image gave one of the run's 32 calibration patches
    patches = CalibrationPatches(CalibrationConfig(source="t91", num_patches=32, patch_size=64, seed=0), 2)
    used = {pixel_hash(patches.images[i]) for i in patches.sources}
    t91 = data_dir / "calib/T91"
    assert not used & {pixel_hash(read_image(t91 / f"{n}.png")) for n in q["val"]["images"]}
    # FP val PSNR = BasicSR's calculate_psnr on the FP model's outputs
    model = build_model("imdn_x2").eval()
    from srq.data.benchmark import ImagePair, SRPairs

    split = SRPairs("val", [ImagePair(n, t91 / f"{n}.png", None) for n in fp["val"]["images"]], 2)
    psnrs = []
    with torch.no_grad():
        for _, lr, hr in split:
            sr = model(lr[None].float() / 255)[0].clamp(0, 1)
            sr = (sr * 255).round().permute(1, 2, 0).numpy()[..., ::-1]
            psnrs.append(calculate_psnr(sr, hr.permute(1, 2, 0).numpy()[..., ::-1].astype(np.float64),
                                        crop_border=2, test_y_channel=True))
    assert fp["val"]["psnr_y"] == pytest.approx(float(np.mean(psnrs)), abs=1e-4)
    rows = list(csv.DictReader(open(next(tmp_path.glob("outputs/**/*minmax*/per_image_val.csv")))))
    assert [r["image"] for r in rows] == q["val"]["images"]
    assert float(np.mean([float(r["psnr_y"]) for r in rows])) == pytest.approx(q["val"]["psnr_y"], abs=1e-9)
    assert 0 < q["val"]["fp"]["psnr_y"] - q["val"]["psnr_y"] < 1.0
    assert all(r["set"] != "val" for r in csv.DictReader(
        open(next(tmp_path.glob("outputs/**/*minmax*/per_image.csv")))))


@pytest.mark.parametrize("args, expected", [
    (["optimized_metric=val/psnr"], "optimized_metric=val/psnr"),
    (["val.source=div2k"], "val.source=div2k"),
    (["optimized_metric=B100/psnr_y"], "evaluates Set5, not B100"),
])
def test_bad_validation_options_fail_cleanly(data_dir, tmp_path, args, expected):
    proc = srq(["model=imdn_x4", "logger=none", *args], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("srq: error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-2000:]
