"""The `srq` command-line contract, run as a user would (a subprocess in a fresh directory)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import results_files, srq

CONTRACT_KEYS = {"model", "scale", "method", "bits", "metrics", "fp_metrics", "time_s",
                 "model_size_mb", "params", "config", "git_commit", "seed"}


def test_main_job_writes_the_contract(data_dir, tmp_path):
    proc = srq(["model=imdn_x4", "method=fp", "data=set5", "logger=none"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = results_files(tmp_path)
    results = json.loads(path.read_text())
    assert CONTRACT_KEYS <= set(results)
    assert results["model"] == "imdn_x4" and results["scale"] == 4
    assert (results["method"], results["bits"]) == ("fp", "fp32")
    set5 = results["metrics"]["Set5"]
    assert set5["psnr_y"] == pytest.approx(32.210, abs=0.01)
    assert set5["n_images"] == 5 and 0.85 < set5["ssim_y"] < 0.95 and "psnr_rgb" in set5
    assert results["fp_metrics"] == results["metrics"]
    assert set(results["time_s"]) >= {"calibrate", "finetune", "evaluate"}
    assert results["params"] == 715_176
    assert results["model_size_mb"]["fp32"] == pytest.approx(2.86, abs=0.01)
    assert results["config"]["model"]["name"] == "imdn_x4"
    run_dir = path.parent
    rows = (run_dir / "per_image.csv").read_text().splitlines()
    assert rows[0].startswith("set,image,psnr_y") and len(rows) == 6
    assert (run_dir / "config.yaml").is_file()
    assert not list(run_dir.glob(".*.tmp"))


def test_multirun_gives_each_job_its_own_dir(data_dir, tmp_path):
    proc = srq(["-m", "model=imdn_x2,pan_x2", "eval.limit_images=1", "logger=none"], tmp_path,
               module=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = results_files(tmp_path)
    assert len(files) == 2 and files[0].parent != files[1].parent
    assert {json.loads(f.read_text())["model"] for f in files} == {"imdn_x2", "pan_x2"}


@pytest.mark.parametrize("args", [["model=imdn_x9"], ["-m", "model=imdn_x4,imdn_x9"],
                                  ["data=set7"], ["method=gptq"]])
def test_unknown_names_list_valid_ones(tmp_path, args):
    proc = srq(args, tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    bad = args[-1].split(",")[-1].split("=")[-1]
    assert line.startswith("srq: error: unknown") and repr(bad) in line
    assert {"imdn_x9": "imdn_x4", "set7": "set5", "gptq": "fp"}[bad] in line
    assert not (tmp_path / "outputs").exists()


def _corrupt_mirror(data_dir: Path, root: Path) -> Path:
    """A mirror of Set5 + IMDN x4 weights in which one HR image is damaged."""
    mirror = root / "mirror"
    for sub in ("benchmark/Set5", "weights/IMDN"):
        shutil.copytree(data_dir / sub, mirror / sub)
    bad = mirror / "benchmark/Set5/HR/bird.png"
    bad.write_bytes(bad.read_bytes()[:-10] + b"0123456789")
    return mirror


def _bad_folder(root: Path) -> Path:
    folder = root / "hr"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"this is not a png")
    return folder


@pytest.mark.parametrize("case", ["no_data_dir", "sha256", "wrong_scale", "unreadable", "no_folder"])
def test_bad_input_fails_cleanly(data_dir, tmp_path, case):
    env, args = {}, ["model=imdn_x4", "logger=none"]
    expected = {"no_data_dir": "SRQ_DATA_DIR", "sha256": "sha256 mismatch",
                "wrong_scale": "does not fit model imdn_x4", "unreadable": "cannot read image",
                "no_folder": "does not exist"}[case]
    if case == "no_data_dir":
        env["SRQ_DATA_DIR"] = str(tmp_path / "nowhere")
    elif case == "sha256":
        env["SRQ_DATA_DIR"] = str(_corrupt_mirror(data_dir, tmp_path))
    elif case == "wrong_scale":
        args.append(f"model.checkpoint={data_dir / 'weights/IMDN/IMDN_x2.pth'}")
    elif case == "unreadable":
        args += ["data=folder", f"data.hr_dir={_bad_folder(tmp_path)}"]
    else:
        args += ["data=folder", f"data.hr_dir={tmp_path / 'missing'}"]
    proc = srq(args, tmp_path, env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("srq: error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not results_files(tmp_path)
    assert not list((tmp_path / "outputs").glob("runs/*/*")), "a failed run left its directory"


def test_wandb_offline_without_key(data_dir, tmp_path):
    """No key, no network: W&B goes offline by itself and the run still finishes."""
    env = {"HOME": str(tmp_path), "WANDB_MODE": None, "WANDB_API_KEY": None}
    proc = srq(["model=fsrcnn_x2", "eval.limit_images=2", "logger=wandb"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = results_files(tmp_path)
    (wandb_run,) = path.parent.glob("wandb/offline-run-*")
    assert len(list(wandb_run.glob("files/media/images/Set5/*.png"))) == 4  # 2 × (SR, HR)
    tables = {p.name.split("_")[0] for p in wandb_run.glob("files/media/table/*.table.json")}
    assert {"metrics", "per"} <= tables
