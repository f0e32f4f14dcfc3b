"""Data store (mirror, cache, download + sha256), LR generation, calibration, tiling."""

from __future__ import annotations

import hashlib

import pytest
import torch

from srq.data import store
from srq.data.benchmark import benchmark_set, folder_set
from srq.data.calibration import (
    CalibrationConfig,
    CalibrationDataModule,
    CalibrationPatches,
)
from srq.data.images import bicubic_downsample, read_image
from srq.errors import SrqError
from srq.lit.evaluate import evaluate_sets
from srq.models.tiling import tiled_forward
from srq.models.zoo import build_model


def test_manifest_covers_the_benchmarks_and_weights():
    entries = store.manifest()
    assert sum(d.startswith("benchmark/Set5/HR/") for d in entries) == 5
    assert sum(d.startswith("benchmark/B100/HR/") for d in entries) == 100
    assert all(e.url.startswith("https://raw.githubusercontent.com/") for e in entries.values())
    converted = entries["weights/LMLT-Tiny/LMLT_tiny_x2.pth"]
    assert converted.src_sha256 != converted.sha256


def test_mirror_files_are_verified(data_dir):
    path = store.fetch("benchmark/Set5/HR/baby.png")
    assert path == data_dir / "benchmark/Set5/HR/baby.png"


def _fake_entry(monkeypatch, tmp_path, payload: bytes, sha: str):
    source = tmp_path / "upstream" / "file.bin"
    source.parent.mkdir()
    source.write_bytes(payload)
    entry = store.StoreEntry("weights/Fake/file.bin", source.as_uri(), sha, sha)
    monkeypatch.setattr(store, "manifest", lambda: {entry.dst: entry})
    monkeypatch.delenv("SRQ_DATA_DIR", raising=False)
    monkeypatch.setenv("SRQ_CACHE", str(tmp_path / "cache"))
    return entry


def test_download_into_cache_verifies_sha256(monkeypatch, tmp_path):
    payload = b"weights" * 100
    entry = _fake_entry(monkeypatch, tmp_path, payload, hashlib.sha256(payload).hexdigest())
    path = store.fetch(entry.dst)
    assert path == tmp_path / "cache" / entry.dst and path.read_bytes() == payload
    assert store.fetch(entry.dst) == path  # second time from the cache


def test_download_with_wrong_sha256_leaves_nothing(monkeypatch, tmp_path):
    entry = _fake_entry(monkeypatch, tmp_path, b"tampered", "0" * 64)
    with pytest.raises(SrqError, match="sha256 mismatch"):
        store.fetch(entry.dst)
    assert not list((tmp_path / "cache").rglob("*.bin*"))


def test_corrupt_cache_file_is_reported(monkeypatch, tmp_path):
    payload = b"good"
    entry = _fake_entry(monkeypatch, tmp_path, payload, hashlib.sha256(payload).hexdigest())
    path = store.fetch(entry.dst)
    path.write_bytes(b"bad!")
    with pytest.raises(SrqError, match="delete it to download it again"):
        store.fetch(entry.dst)


def test_mirror_without_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("SRQ_DATA_DIR", str(tmp_path))
    with pytest.raises(SrqError, match="has no benchmark/Set5/HR/baby.png"):
        store.fetch("benchmark/Set5/HR/baby.png")


def test_generated_lr_matches_stored_matlab_lr(data_dir):
    """basicsr's MATLAB imresize reproduces the stored LR images to within two grey levels
    (MATLAB's own rounding differs in ~10% of pixels), and FP PSNR to within 0.01 dB."""
    for _, lr, hr in benchmark_set("Set5", 4):
        generated = bicubic_downsample(hr, 4)
        diff = (generated.int() - lr.int()).abs()
        assert generated.shape == lr.shape and diff.max() <= 2 and diff.float().mean() < 0.2
    summary, _, _ = evaluate_sets(build_model("imdn_x4"), [benchmark_set("Set5", 4, generate_lr=True)])
    assert summary["Set5"]["psnr_y"] == pytest.approx(32.210, abs=0.01)


def test_folder_set_generates_lr_and_modcrops(data_dir, tmp_path):
    from PIL import Image

    img = read_image(data_dir / "benchmark/Set5/HR/bird.png")[:, :101, :99]
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / "crop.png")
    ((name, lr, hr),) = list(folder_set(str(tmp_path), 4))
    assert name == "crop" and hr.shape[-2:] == (100, 96) and lr.shape[-2:] == (25, 24)


def test_calibration_patches_are_seeded(data_dir):
    a = CalibrationPatches(CalibrationConfig(num_patches=8, seed=3), scale=4)
    b = CalibrationPatches(CalibrationConfig(num_patches=8, seed=3), scale=4)
    c = CalibrationPatches(CalibrationConfig(num_patches=8, seed=4), scale=4)
    assert a.patches.shape == (8, 3, 64, 64)
    assert torch.equal(a.patches, b.patches) and not torch.equal(a.patches, c.patches)
    assert a.patches.min() >= 0 and a.patches.max() <= 1


def test_calibration_datamodule_and_sources(data_dir):
    dm = CalibrationDataModule(CalibrationConfig(source="div2k_lr", num_patches=6), 4, batch_size=4)
    dm.setup()
    assert [b.shape[0] for b in dm.calibration_dataloader()] == [4, 2]
    with pytest.raises(SrqError, match="unknown calibration source"):
        CalibrationConfig(source="set5")
    with pytest.raises(SrqError, match="lower calib.patch_size"):
        CalibrationPatches(CalibrationConfig(patch_size=400), scale=4)


def test_tiling_of_a_pointwise_model_is_exact():
    def nearest(x):
        return torch.nn.functional.interpolate(x * 2 + 1, scale_factor=3, mode="nearest")

    lr = torch.rand(1, 3, 37, 29)
    assert torch.allclose(tiled_forward(nearest, lr, 3, tile=16, overlap=4), nearest(lr))


def test_tiling_of_a_real_model_is_close(data_dir):
    model = build_model("pan_x4")
    _, lr, hr = benchmark_set("Set5", 4)[0]
    x = lr[None].float() / 255
    with torch.no_grad():
        full = model(x)
        tiled = tiled_forward(model, x, 4, tile=48, overlap=16)
        whole_tile = tiled_forward(model, x, 4, tile=512, overlap=16)
    assert torch.equal(whole_tile, full)
    assert (tiled - full).abs().mean() < 2e-3


def test_validation_patches_come_from_images_without_a_training_patch(data_dir):
    """Held-out validation: its source images (by pixel hash) gave no calibration or training
    patch; when every usable image did, the run says so (val_disjoint false)."""
    from srq.data.calibration import CalibrationConfig, calibration_data
    from srq.data.images import pixel_hash

    def hashes(patches):
        return {pixel_hash(patches.images[i]) for i in set(patches.sources)}

    data = calibration_data(CalibrationConfig(source="t91", num_patches=6, patch_size=32, seed=0), 4,
                            val_patches=8, train_patches=6)
    info = data.describe()
    assert info["val_disjoint"] is True and info["val_source_images"] >= 2
    assert not hashes(data.val) & (hashes(data.calib) | hashes(data.train))
    # the calibration draw is the one made without validation (same seed, same patches)
    alone = calibration_data(CalibrationConfig(source="t91", num_patches=6, patch_size=32, seed=0), 4)
    assert all(torch.equal(a, b) for a, b in zip(alone.calib.items, data.calib.items))
    full = calibration_data(CalibrationConfig(source="t91", num_patches=32, patch_size=64, seed=0), 4,
                            val_patches=8, train_patches=128)  # 2DQuant's draw: all 19 images used
    assert full.describe()["val_disjoint"] is False


def _hr_images(folder, n: int):
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    gen = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(gen.integers(0, 256, (50 + 4 * i, 66, 3), dtype=np.uint8)).save(
            folder / f"img_{i + 1:03d}.png")
    return folder


def _fake_archive(monkeypatch, tmp_path, name: str, kind: str):
    """A small stand-in for the public archive of ``name`` (3 HR images under its member
    dir, plus a non-image file), served from a file:// URL with its real md5."""
    import tarfile
    import zipfile

    from srq.data import archives

    spec = archives.ARCHIVE_SETS[name]
    src = _hr_images(tmp_path / "src" / spec.member_dir, 3)
    (src / "readme.txt").write_text("not an image")
    path = tmp_path / f"upstream.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for f in sorted(src.iterdir()):
                zf.write(f, f"{spec.member_dir}/{f.name}")
    else:
        with tarfile.open(path, "w:gz") as tf:
            tf.add(src, arcname=spec.member_dir)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    fake = archives.ArchiveSet(name, path.as_uri(), f"md5:{md5}", spec.member_dir, 3, "test")
    monkeypatch.setitem(archives.ARCHIVE_SETS, name, fake)
    monkeypatch.setenv("SRQ_CACHE", str(tmp_path / "cache"))
    return path


@pytest.mark.parametrize("name, kind", [("Urban100", "tar.gz"), ("DIV2K_valid", "zip")])
def test_archive_sets_download_verify_extract_and_cache(monkeypatch, tmp_path, name, kind):
    monkeypatch.setenv("SRQ_DATA_DIR", str(tmp_path / "mirror_without_it"))
    (tmp_path / "mirror_without_it").mkdir()
    upstream = _fake_archive(monkeypatch, tmp_path, name, kind)
    pairs = benchmark_set(name, 2)
    assert [p.name for p in pairs.pairs] == ["img_001", "img_002", "img_003"]
    _, lr, hr = pairs[1]
    assert tuple(hr.shape) == (3, 54, 66) and tuple(lr.shape) == (3, 27, 33)
    assert torch.equal(lr, bicubic_downsample(hr, 2))  # HR-only sets: MATLAB-bicubic LR
    upstream.unlink()  # the second time needs no download
    assert len(benchmark_set(name, 2)) == 3


def test_archive_with_a_wrong_checksum_is_refused_and_not_kept(monkeypatch, tmp_path):
    from srq.data import archives

    monkeypatch.delenv("SRQ_DATA_DIR", raising=False)
    _fake_archive(monkeypatch, tmp_path, "Urban100", "tar.gz")
    spec = archives.ARCHIVE_SETS["Urban100"]
    monkeypatch.setitem(archives.ARCHIVE_SETS, "Urban100",
                        archives.ArchiveSet("Urban100", spec.url, "md5:" + "0" * 32, spec.member_dir, 3, "t"))
    with pytest.raises(SrqError, match="md5 mismatch for Urban100"):
        benchmark_set("Urban100", 4)
    assert not list((tmp_path / "cache").rglob("*.tar.gz"))
    assert not (tmp_path / "cache" / "benchmark" / "Urban100" / "HR").exists()


def test_archive_sets_come_from_a_mirror_and_manga109_says_where_to_get_it(monkeypatch, tmp_path):
    mirror = tmp_path / "mirror"
    _hr_images(mirror / "benchmark" / "Urban100" / "HR", 2)
    monkeypatch.setenv("SRQ_DATA_DIR", str(mirror))
    monkeypatch.setenv("SRQ_CACHE", str(tmp_path / "cache"))
    assert [p.name for p in benchmark_set("Urban100", 4).pairs] == ["img_001", "img_002"]
    with pytest.raises(SrqError, match="manga109.org"):
        benchmark_set("Manga109", 4)
