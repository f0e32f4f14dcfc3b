"""The sweep aggregator reads every results.json under a directory, in job order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "collect_results.py"


def _result(model: str, psnr: float) -> dict:
    metrics = {"Set5": {"psnr_y": psnr, "ssim_y": 0.9, "psnr_rgb": psnr - 2, "n_images": 5}}
    return {"model": model, "method": "minmax", "bits": "w8a8", "metrics": metrics,
            "fp_metrics": metrics, "time_s": {"evaluate": 1.0},
            "model_size_mb": {"fp32": 2.0, "quantized": 0.5}}


def test_collect_results_markdown_and_csv(tmp_path):
    for job, (model, psnr) in enumerate([("imdn_x4", 32.1), ("pan_x4", 31.9)] * 6):
        run = tmp_path / f"{job}_{model}"
        run.mkdir()
        (run / "results.json").write_text(json.dumps(_result(model, psnr + job)))
    csv_path = tmp_path / "all.csv"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--csv", str(csv_path)],
                          capture_output=True, text=True, check=True)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 + 12
    assert lines[2].startswith("| imdn_x4 | minmax | w8a8 | Set5 | 32.100 |")
    assert "| 42.900 |" in lines[-1]  # job 11 comes last, not after job 1
    assert len(csv_path.read_text().splitlines()) == 13


def test_collect_results_empty_dir(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True,
                          text=True)
    assert proc.returncode == 1 and "no results.json" in proc.stderr
