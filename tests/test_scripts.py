"""The sweep aggregator reads every results.json under a directory, in job order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_collect_results_by_run_puts_sets_side_by_side(tmp_path):
    """Each run is one row; a set a run did not evaluate shows "–"; times come from time_s."""
    full = _result("imdtn_x4", 30.0)
    full["metrics"]["B100"] = {"psnr_y": 27.25, "ssim_y": 0.75, "n_images": 100}
    full["time_s"] = {"calibrate": 19.4, "finetune": 240.6, "evaluate": 3.0}
    (tmp_path / "0_a").mkdir()
    (tmp_path / "0_a" / "results.json").write_text(json.dumps(full))
    (tmp_path / "1_b").mkdir()
    (tmp_path / "1_b" / "results.json").write_text(json.dumps(_result("lmlt_tiny_x4", 31.0)))
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--by-run"],
                          capture_output=True, text=True, check=True)
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == ("| model | method | bits | Set5 PSNR / SSIM | B100 PSNR / SSIM | "
                        "calibrate s | fine-tune s |")
    assert lines[2] == "| imdtn_x4 | minmax | w8a8 | 30.000 / 0.9000 | 27.250 / 0.7500 | 19 | 241 |"
    assert lines[3] == "| lmlt_tiny_x4 | minmax | w8a8 | 31.000 / 0.9000 | – | – | – |"
    assert len(lines) == 4


def test_collect_results_empty_dir(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True,
                          text=True)
    assert proc.returncode == 1 and "no results.json" in proc.stderr


def test_quant_ratios_reproduce_2dquant_swinir_light(tmp_path):
    """SwinIR-light ×4 (2DQuant's op set): compression 3.07/3.31/3.60 at 4/3/2 bits and
    F_q = 14.34 G MACs at a 128² input are the numbers of the 2DQuant paper (METHODS §3.5)."""
    out = tmp_path / "ratios.json"
    script = Path(__file__).resolve().parents[1] / "scripts" / "quant_ratios.py"
    subprocess.run([sys.executable, str(script), "--models", "swinir_s_x4", "--bits", "w4a4",
                    "w3a3", "w2a2", "--out", str(out)], capture_output=True, text=True, check=True)
    rows = json.loads(out.read_text())["rows"]
    assert [round(r["compression"], 2) for r in rows] == [3.07, 3.31, 3.60]
    assert {(r["params"], r["quantized_params"]) for r in rows} == {(897_228, 691_200)}
    assert round(rows[0]["quantized_macs"] / 1e9, 2) == 14.34
    speedups = [r["speedup"] for r in rows]
    assert 1 < speedups[0] < speedups[1] < speedups[2] < rows[0]["macs"] / (rows[0]["macs"] - rows[0]["quantized_macs"])
    assert out.with_suffix(".md").read_text().count("| swinir_s_x4 |") == 3


def test_gpu_smoke_script_checks_pass_on_the_cpu(tmp_path, data_dir):
    """The CUDA smoke script's checks (on the device, finite, reload identical), here on the CPU
    for two methods; without CUDA its default device is refused with one line."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_smoke.py"
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, str(script), "--device", "cpu", "--models", "imdn_x4",
                           "--methods", "minmax", "dobi", "--out", str(out)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["ok"], r["reload_identical"]) for r in rows] == [
        ("minmax", True, True), ("dobi", True, True)]
    import torch

    if not torch.cuda.is_available():
        proc = subprocess.run([sys.executable, str(script), "--out", str(out)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2 and "no CUDA device" in proc.stdout


def test_bench_deploy_rows_and_markdown(tmp_path, data_dir):
    """bench_deploy writes one row per (runtime, size, threads) with the documented keys; the
    int8 exports keep Set5 PSNR near FP and are smaller files than the FP32 export."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_deploy.py"
    out = tmp_path / "deploy.json"
    proc = subprocess.run([sys.executable, str(script), "--models", "imdn_x4", "--method", "minmax",
                           "--sizes", "24", "--threads", "1", "--repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    keys = {"model", "runtime", "bits", "lr_size", "threads", "median_ms", "psnr_y", "file_mb"}
    assert all(set(r) == keys for r in rows)
    by = {r["runtime"]: r for r in rows}
    assert set(by) == {"torch_fp32", "ort_fp32", "ort_int8_srq", "ort_int8_quantize_static"}
    assert abs(by["ort_fp32"]["psnr_y"] - by["torch_fp32"]["psnr_y"]) < 1e-3
    for runtime in ("ort_int8_srq", "ort_int8_quantize_static"):
        assert by["torch_fp32"]["psnr_y"] - 1.0 < by[runtime]["psnr_y"] < by["torch_fp32"]["psnr_y"]
        assert by[runtime]["file_mb"] < 0.5 * by["ort_fp32"]["file_mb"]
    assert "ort_int8_srq" in out.with_suffix(".md").read_text()


def _seeded(method: str, seed: int, psnr: float, val: float, lr: float = 0.01) -> dict:
    metrics = {"Set5": {"psnr_y": psnr, "ssim_y": 0.9, "psnr_rgb": psnr - 2, "n_images": 5}}
    return {"model": "imdn_x4", "method": method, "bits": "w4a4", "metrics": metrics,
            "fp_metrics": metrics, "val": {"psnr_y": val, "ssim_y": 0.8, "n_images": 10},
            "time_s": {"calibrate": 10.0 + seed, "finetune": 20.0}, "seed": seed,
            "model_size_mb": {"fp32": 2.0, "quantized": 0.5},
            "config": {"seed": seed, "model": {"name": "imdn_x4"},
                       "method": {"name": method, "lr": lr, "calib": {"seed": seed}},
                       "paths": {"output_dir": f"/x/{method}/{seed}"},
                       # derived from the run dir: differs per run, must not split cells
                       "trainer": {"default_root_dir": f"/x/{method}/{seed}"}}}


def test_collect_results_seeds_and_paired_comparison(tmp_path):
    """Runs that differ only in seed form one cell: mean ± sample std (n), computed by hand;
    two lr variants stay apart; --compare pairs A and B by seed with a sign count."""
    a = {0: (28.0, 27.0), 1: (28.3, 27.1), 2: (27.7, 26.9)}
    b = {0: (27.9, 26.8), 1: (28.0, 27.2), 2: (27.5, 26.7)}
    job = 0
    for method, table in (("2dquant", a), ("dobi", b)):
        for seed, (psnr, val) in table.items():
            (tmp_path / f"{job}_x").mkdir()
            (tmp_path / f"{job}_x" / "results.json").write_text(json.dumps(_seeded(method, seed, psnr, val)))
            job += 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text(json.dumps(_seeded("dobi", 0, 20.0, 19.0, lr=0.1)))
    # a key one run has and the others lack (added to srq's configs later) does not split a cell
    later = json.loads((tmp_path / "5_x" / "results.json").read_text())
    later["config"]["eval"] = {"fp_cache": True}
    (tmp_path / "5_x" / "results.json").write_text(json.dumps(later))
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--seeds"],
                          capture_output=True, text=True, check=True)
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("| model | method | bits | variant | seeds | val psnr_y | Set5 psnr_y |")
    # 2dquant Set5: mean 28.0, s = sqrt((0 + 0.09 + 0.09) / 2) = 0.3; val: 27.0, s = 0.1
    assert lines[2] == "| imdn_x4 | 2dquant | w4a4 | – | 0,1,2 | 27.000 ± 0.100 (3) | 28.000 ± 0.300 (3) | 11 | 20 |"
    assert "| imdn_x4 | dobi | w4a4 | lr=0.01 | 0,1,2 |" in lines[3] and "27.800 ± 0.265 (3)" in lines[3]
    assert lines[4].startswith("| imdn_x4 | dobi | w4a4 | lr=0.1 | 0 | 19.000 (n=1) | 20.000 (n=1) |")
    # a rerun of one seed is flagged, not averaged in twice
    (tmp_path / "rerun").mkdir()
    (tmp_path / "rerun" / "results.json").write_text(json.dumps(_seeded("dobi", 0, 20.0, 19.0, lr=0.1)))
    again = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--seeds"],
                           capture_output=True, text=True, check=True).stdout
    assert "Note: imdn_x4 dobi[lr=0.1] w4a4: seed(s) [0] ran more than once" in again
    (tmp_path / "rerun" / "results.json").unlink()
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--compare", "2dquant",
                           "dobi[lr=0.01]"], capture_output=True, text=True, check=True)
    rows = proc.stdout.strip().splitlines()
    # Set5 d = 0.1, 0.3, 0.2 → +0.200 ± 0.100, ahead in 3 of 3; val d = 0.2, -0.1, 0.2 → 2 of 3
    assert "| imdn_x4 | w4a4 | Set5 | 2dquant | dobi[lr=0.01] | +0.200 ± 0.100 | 3 | 3 of 3 |" in rows
    assert "| imdn_x4 | w4a4 | val | 2dquant | dobi[lr=0.01] | +0.100 ± 0.173 | 3 | 2 of 3 |" in rows
    missing = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--compare", "2dquant", "mse"],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "share a model, bits and seed" in missing.stderr


def test_bench_eval_times_forward_and_metrics_apart(tmp_path, data_dir):
    """bench_eval on one synthetic image: srq's metrics equal BasicSR's on the same outputs."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_eval.py"
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, str(script), "--models", "imdn_x4", "--image", "160x120",
                           "--repeats", "1", "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["hr_size"] == "160x120" and row["n_images"] == 1
    assert row["max_abs_diff_psnr_y"] < 1e-4 and row["max_abs_diff_ssim_y"] < 1e-6
    assert row["forward_s"] > 0 and row["metrics_s"] > 0 and row["basicsr_metrics_s"] > 0
    assert "| imdn_x4 | synthetic 160x120 (1) |" in out.with_suffix(".md").read_text()


def test_bit_dip_probe_measures_and_removes_the_residual():
    """ResidualProbe against hand values: r_q = 2·r_FP gives ratio 2, cosine 1; −r_FP cosine −1;
    'zero' leaves the skip path only."""
    import importlib.util

    import torch
    from torch import nn

    spec = importlib.util.spec_from_file_location("bit_dip", SCRIPT.parent / "bit_dip.py")
    bit_dip = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bit_dip)

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return x + self.body(x)

    torch.manual_seed(0)
    fp, x = Res(), [torch.rand(2, 3, 4, 4), torch.rand(1, 3, 4, 4)]
    fp_probe = bit_dip.ResidualProbe(fp.body)
    with torch.no_grad():
        for t in x:
            fp(t)
        for gain, ratio, cosine in ((2.0, 2.0, 1.0), (-1.0, 1.0, -1.0)):
            q = Res()
            q.body.load_state_dict(fp.body.state_dict())
            q.body.weight.mul_(gain)
            q.body.bias.mul_(gain)
            probe = bit_dip.ResidualProbe(q.body)
            probe.ref = fp_probe.ref
            probe.compare()
            for t in x:
                q(t)
            assert probe.summary() == {"residual_norm_ratio": ratio, "residual_cosine": cosine}
        probe.mode = "zero"
        assert torch.equal(q(x[0]), x[0])


def test_bench_reconstruct_times_a_worktree_of_another_revision(tmp_path, data_dir):
    """bench_reconstruct beside a git revision: both sides time the feature blocks, the other
    side imports the worktree's srq (the script refuses otherwise), and the table has the ratio."""
    root = Path(__file__).resolve().parents[1]
    if subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    out = tmp_path / "rec.json"
    proc = subprocess.run([sys.executable, str(root / "scripts" / "bench_reconstruct.py"), "--models",
                           "carn_m_x4", "--steps", "0", "2", "--drop-probs", "0.5", "--patches", "4",
                           "--patch-size", "24", "--compare-to", "HEAD", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert set(row["s_per_step"]) == {"HEAD", "this checkout"}
    assert all(v > 0 for v in row["s_per_step"].values())
    assert row["ratio"] == row["s_per_step"]["HEAD"] / row["s_per_step"]["this checkout"]
    assert "| carn_m_x4 | w4a4 | 0.5 | 1 |" in out.with_suffix(".md").read_text()
    listed = subprocess.run(["git", "-C", str(root), "worktree", "list"], capture_output=True, text=True).stdout
    assert "srq-bench-" not in listed  # the temporary worktree is gone
