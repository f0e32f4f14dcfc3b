"""The FP reference is computed once per weights × images × options and reused across runs."""

from __future__ import annotations

import json

import torch
from cli_helpers import results_files, srq

from srq.data.benchmark import benchmark_set
from srq.lit.fp_cache import cached_reference, reference_key
from srq.models.zoo import build_model


def test_key_follows_weights_images_and_options(data_dir, tmp_path):
    model = build_model("imdn_x4")
    sets = [benchmark_set("Set5", 4)]
    sets[0].pairs = sets[0].pairs[:2]
    base = reference_key(model, sets, {"tile": None})
    assert reference_key(build_model("imdn_x4"), sets, {"tile": None}) == base  # same weights
    assert reference_key(model, sets, {"tile": 64}) != base
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-6
    assert reference_key(model, sets, {"tile": None}) != base
    # a changed image file (same name) is a different reference
    model = build_model("imdn_x4")
    import shutil

    from srq.data.benchmark import ImagePair, SRPairs

    hr = tmp_path / "baby.png"
    shutil.copy(sets[0].pairs[0].hr, hr)
    mine = [SRPairs("Set5", [ImagePair("baby", hr, None)], 4)]
    first = reference_key(model, mine, {})
    from PIL import Image

    img = Image.open(hr).convert("RGB")
    img.putpixel((0, 0), (0, 0, 0))
    img.save(hr)
    assert reference_key(model, mine, {}) != first
    # a corrupt cache file is recomputed, not trusted
    calls = []

    def compute():
        calls.append(1)
        return {"Set5": {"psnr_y": 1.0}}, []

    assert cached_reference(model, mine, {}, compute, tmp_path / "c")[2] is False
    assert cached_reference(model, mine, {}, compute, tmp_path / "c")[2] is True
    (cache_file,) = (tmp_path / "c" / "fp_reference").glob("*.json")
    cache_file.write_text(cache_file.read_text()[:10])
    assert cached_reference(model, mine, {}, compute, tmp_path / "c")[2] is False
    assert len(calls) == 2


def test_second_run_reads_the_fp_reference_from_the_cache(data_dir, tmp_path):
    env = {"SRQ_CACHE": str(tmp_path / "cache")}
    args = ["model=imdn_x4", "method=minmax", "bits=w8a8", "eval.limit_images=2",
            "val.num_images=2", "logger=none"]
    first = srq(args, tmp_path, env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "FP reference from the cache" not in first.stdout + first.stderr
    second = srq(args + ["seed=1"], tmp_path, env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "FP reference from the cache" in second.stdout + second.stderr
    a, b = (json.loads(p.read_text()) for p in results_files(tmp_path))
    # the first run computed the reference, the second read it: the same numbers
    assert a["fp_metrics"] == b["fp_metrics"] and a["val"]["fp"] == b["val"]["fp"]
    assert a["fp_metrics"]["Set5"]["n_images"] == 2
