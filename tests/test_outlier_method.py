"""plq / plq_saft through the CLI: contract, resume=<run dir>, determinism, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import results_files, srq, wandb_history

TINY = ["model=imdn_x4", "bits=w4a4", "data=set5", "logger=none", "eval.limit_images=2",
        "method.calib.num_patches=6", "method.calib.val_patches=2", "method.calib.patch_size=32"]


def _run(tmp_path: Path, *args):
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = srq([*TINY, *args], tmp_path, {"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = results_files(tmp_path)[-1]
    return json.loads(path.read_text()), path.parent, proc


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir):
    return _run(tmp_path_factory.mktemp("straight"), "method=plq_saft", "method.finetune.epochs=3",
                "logger=wandb")


def test_plq_saft_contract(straight):
    res, run_dir, proc = straight
    ft = res["finetune"]
    assert ft["epochs"] == 3 and ft["steps"] == 9 and ft["loss"] == "saft" and ft["staged"]
    assert res["time_s"]["finetune"] > 0 and res["time_s"]["calibrate"] > 0
    assert Path(ft["checkpoint"]).is_file() and Path(ft["checkpoint"]).parent.parent == run_dir
    assert 0 < ft["sensitivity_max"] <= 1 and ft["val_psnr_y_vs_fp"] > 10
    qmap = res["quantization_map"]
    names = list(qmap)
    assert qmap[names[0]]["input"].startswith("int8") and qmap[names[-1]]["input"].startswith("int8")
    assert all(qmap[n]["input"].startswith("plq4") for n in names[1:-1])
    assert res["calibration"]["source"] == "div2k_lr" and res["calibration"]["num_patches"] == 6
    # per-epoch logs: loss and validation PSNR against the FP model (CSV logger)
    metrics = (run_dir / "csv" / "metrics.csv").read_text()
    assert "train/loss_epoch" in metrics and "val/psnr_y_vs_fp" in metrics
    assert "Epoch 2" in proc.stdout + proc.stderr  # progress bar
    # the same curves and the final metrics table in the offline W&B run
    history = wandb_history(run_dir)
    assert len(history["train/loss_epoch"]) == 3 and len(history["val/psnr_y_vs_fp"]) == 3
    assert history["val/psnr_y_vs_fp"][-1] == pytest.approx(ft["val_psnr_y_vs_fp"], abs=1e-4)
    assert history["Set5/psnr_y"] == [pytest.approx(res["metrics"]["Set5"]["psnr_y"], abs=1e-3)]
    assert history["metrics/_type"] == ["table-file"]


def test_resume_continues_to_the_same_result(straight, tmp_path):
    first, first_dir, _ = _run(tmp_path / "a", "method=plq_saft", "method.finetune.epochs=2")
    resumed, _, _ = _run(tmp_path / "b", "method=plq_saft", "method.finetune.epochs=3",
                         f"resume={first_dir}")
    assert resumed["finetune"]["resumed_from"].endswith("last.ckpt")
    assert resumed["metrics"]["Set5"]["psnr_y"] == straight[0]["metrics"]["Set5"]["psnr_y"]
    assert first["metrics"]["Set5"]["psnr_y"] != straight[0]["metrics"]["Set5"]["psnr_y"]


def test_same_seed_same_psnr(straight, tmp_path):
    again, _, _ = _run(tmp_path, "method=plq_saft", "method.finetune.epochs=3")
    assert again["metrics"]["Set5"]["psnr_y"] == straight[0]["metrics"]["Set5"]["psnr_y"]


def test_plq_only_has_no_finetune(tmp_path, data_dir):
    res, run_dir, _ = _run(tmp_path, "method=plq")
    assert res["finetune"] is None and res["time_s"]["finetune"] == 0
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.parametrize("args,expected", [
    (["method=plq", "bits=w2a2"], "needs 3–8 bits"),
    (["method=plq_saft", "resume=/nonexistent/run"], "no checkpoint at"),
    (["method=plq_saft", "bits=wp4a8"], "pick bits=w4a4"),
])
def test_bad_input(tmp_path, data_dir, args, expected):
    proc = srq([*TINY, *args], tmp_path)
    assert proc.returncode == 2
    assert expected in proc.stderr and "Traceback" not in proc.stderr
