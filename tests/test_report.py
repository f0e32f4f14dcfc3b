"""srq-report: figures, tables over seeds and the published numbers, from a sweep's results."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

PAPER = {"table": "2DQuant Table 3 (x4)", "model": "SwinIR-light x4", "metric": "psnr_y",
         "fp": {"Set5": 32.45}, "values": {"2dquant": {"w4a4": {"Set5": 31.77}}}}


def _run(root: Path, job: int, method: str, bits: str, seed: int, psnr: float, t: float,
         image: Path | None = None) -> Path:
    run = root / f"{job}_imdn_x4_{method}_{bits}"
    run.mkdir(parents=True)
    metrics = {"Set5": {"psnr_y": psnr, "ssim_y": 0.85, "psnr_rgb": psnr - 2, "n_images": 5}}
    fp = {"Set5": {"psnr_y": 32.21, "ssim_y": 0.8948, "psnr_rgb": 30.2, "n_images": 5}}
    res = {"model": "imdn_x4", "scale": 4, "method": method, "bits": bits, "metrics": metrics,
           "fp_metrics": fp, "val": {"psnr_y": psnr - 1, "ssim_y": 0.8, "n_images": 10,
                                     "fp": {"psnr_y": 31.0}},
           "time_s": {"calibrate": t, "finetune": 10 * t}, "seed": seed,
           "model_size_mb": {"fp32": 2.86, "quantized": 0.36 if bits == "w4a4" else 0.72},
           "config": {"seed": seed, "method": {"name": method}, "paper": PAPER}}
    (run / "results.json").write_text(json.dumps(res))
    if image is not None:
        (run / "sr").mkdir()
        shutil.copy(image, run / "sr" / "Set5_butterfly.png")
        (run / "per_image.csv").write_text(f"set,image,psnr_y,ssim_y,psnr_rgb\nSet5,butterfly,{psnr},0.8,20\n")
    return run


def test_report_writes_figures_tables_and_the_paper_beside_ours(data_dir, tmp_path):
    hr = np.array(Image.open(data_dir / "benchmark/Set5/HR/butterfly.png").convert("RGB"))
    noisy = np.clip(hr.astype(int) + np.random.default_rng(0).integers(-9, 10, hr.shape), 0, 255)
    Image.fromarray(noisy.astype(np.uint8)).save(tmp_path / "sr.png")
    sweep = tmp_path / "sweep"
    job = 0
    for method, base, t in (("2dquant", 29.0, 20.0), ("dobi", 28.0, 15.0)):
        for bits, shift in (("w4a4", 0.0), ("w8a8", 3.0)):
            for seed in (0, 1, 2):
                _run(sweep, job, method, bits, seed, base + shift + 0.1 * seed, t,
                     image=tmp_path / "sr.png" if seed == 0 and bits == "w4a4" else None)
                job += 1
    out = tmp_path / "report"
    proc = subprocess.run(["srq-report", str(sweep), "--out", str(out), "--compare", "2dquant", "dobi",
                           "--paper", "twodquant_grid"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (out / "report.md").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["drop_vs_time.png", "psnr_vs_bits.png", "size_vs_psnr.png",
                    "visual_imdn_x4_w4a4_Set5_butterfly.png"]
    for name in pngs:
        assert f"]({name})" in text
        img = np.asarray(Image.open(out / name).convert("L"), dtype=float)
        assert img.shape[0] > 200 and img.shape[1] > 300 and img.std() > 10, name
    # cells over seeds: 29.0, 29.1, 29.2 → 29.100 ± 0.100 (3)
    assert "| imdn_x4 | 2dquant | w4a4 | – | 0,1,2 | 28.100 ± 0.100 (3) | 29.100 ± 0.100 (3) | 20 | 200 |" in text
    # paired: 2dquant − dobi = +1.000 in every seed
    assert "| imdn_x4 | w4a4 | Set5 | 2dquant | dobi | +1.000 ± 0.000 | 3 | 3 of 3 |" in text
    # ours beside the published row: drop −3.11 vs the paper's −0.68
    assert "| imdn_x4 | 2dquant | w4a4 | Set5 | 29.100 ± 0.100 (3) | 31.77 | -3.11 | -0.68 |" in text
    # --paper: the published table of an experiment config the runs did not use
    assert "**2DQuant (NeurIPS 2024) Table 3, x4**" in text
    assert "| imdn_x4 | dobi | w4a4 | Set5 | 28.100 ± 0.100 (3) | 31.10 | -4.11 | -1.35 |" in text
    bad = subprocess.run(["srq-report", str(sweep), "--out", str(out), "--paper", "nope"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--paper nope: no such experiment" in bad.stderr


def test_report_on_an_empty_dir_is_one_line(tmp_path):
    proc = subprocess.run(["srq-report", str(tmp_path), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no results.json" in proc.stderr


def test_results_notebook_executes_on_a_sweep(data_dir, tmp_path):
    """notebooks/results.ipynb runs top to bottom through srq.analysis on a sweep."""
    pytest.importorskip("nbclient")
    import nbformat

    sweep = tmp_path / "sweep"
    for job, (method, seed, psnr) in enumerate([("2dquant", 0, 29.0), ("2dquant", 1, 29.2),
                                                ("dobi", 0, 28.0), ("dobi", 1, 28.4)]):
        _run(sweep, job, method, "w4a4", seed, psnr, 10.0)
    script = Path(__file__).resolve().parents[1] / "scripts" / "execute_notebook.py"
    out = tmp_path / "executed.ipynb"
    proc = subprocess.run([sys.executable, str(script), str(sweep), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = nbformat.read(out, as_version=4)
    text = json.dumps([c.get("outputs", []) for c in nb.cells], ensure_ascii=False)
    assert "4 runs, 2 cells" in text
    assert "+0.900 ± 0.141" in text  # 2dquant − dobi per seed: 1.0, 0.8
    assert sum(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells for o in c.get("outputs", [])) == 3


def test_report_logs_figures_and_tables_to_wandb_offline(data_dir, tmp_path):
    from cli_helpers import wandb_history

    sweep = tmp_path / "sweep"
    for job, (method, seed) in enumerate([("2dquant", 0), ("dobi", 0)]):
        _run(sweep, job, method, "w4a4", seed, 29.0 - job, 10.0)
    proc = subprocess.run(["srq-report", str(sweep), "--out", str(tmp_path / "r"), "--wandb", "srq-test",
                           "--compare", "2dquant", "dobi"], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = wandb_history(sweep)
    # nested keys: images and tables as W&B media files
    assert history["report/PSNR vs bit-width/_type"] == ["image-file"]
    assert history["report/cells/_type"] == ["table-file"] and history["report/cells/nrows"] == [4]
    assert history["report/2dquant_vs_dobi/nrows"] == [2]  # val and Set5
