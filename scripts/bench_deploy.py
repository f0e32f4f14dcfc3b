"""Deployed-model speed and quality: torch FP32, ONNX Runtime FP32, ORT int8 from srq's export
and ORT's own ``quantize_static`` on the same model and calibration patches → JSON + md.

    python scripts/bench_deploy.py --models imdn_x4 pan_x4 imdtn_x4 --out bench/deploy.json

Per model: quantize with ``--method`` at ``--bits`` (srq's calibration patches, seed 0), export
FP and quantized ONNX, run ``quantize_static`` (QDQ, per-channel uint8 weights, uint8
activations, MinMax calibration; u8×u8 like srq's export, as u8×s8 saturates on CPUs without
VNNI) fed the same LR patches. Y-PSNR on ``--set`` through srq's evaluator for every runtime;
latency = median of ``--repeats`` timed runs (after one warm-up) on a fixed random LR input of
each ``--sizes`` at each ``--threads``. Rows:
``{model, runtime, bits, lr_size, threads, median_ms, psnr_y, file_mb}``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_module

from srq.data.benchmark import benchmark_set
from srq.deploy import OrtModel, export_onnx, session
from srq.lit.evaluate import evaluate_sets
from srq.methods.common import samples
from srq.models.zoo import build_model
from srq.quant.size import fp32_size_mb
from srq.results import write_bench_report
from srq.run import quantize_from_config

RUNTIMES = ("torch_fp32", "ort_fp32", "ort_int8_srq", "ort_int8_quantize_static")


def quantize_static_model(fp_onnx: Path, out: Path, calib: torch.Tensor) -> Path:
    """ORT's own static quantization of the FP export, calibrated on ``calib`` (N, 3, h, w)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"lr": calib[i:i + 1].numpy()} for i in range(len(calib))])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax)
    return out


def _median_ms(fn, x, repeats: int) -> float:
    fn(x)  # warm-up (ORT plans memory, torch picks kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _psnr(model, set_name: str, scale: int) -> float:
    metrics, _, _ = evaluate_sets(model, [benchmark_set(set_name, scale)])
    return metrics[set_name]["psnr_y"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["imdn_x4"])
    parser.add_argument("--method", default="mse")
    parser.add_argument("--bits", default="w8a8")
    parser.add_argument("--overrides", nargs="*", default=[],
                        help="extra srq overrides, e.g. method.act.observer=minmax")
    parser.add_argument("--set", default="Set5")
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--out", type=Path, default=Path("bench/deploy.json"))
    parser.add_argument("--workdir", type=Path, default=None, help="keep the .onnx files here")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="srq_bench_deploy_"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        with initialize_config_module(config_module="srq.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=[
                f"model={name}", f"method={args.method}", f"bits={args.bits}", "logger=none",
                *args.overrides])
        fp = build_model(name).eval()
        _, data, result = quantize_from_config(cfg, fp)
        q = result.student.eval()
        calib = torch.stack(samples(data.calib)).float()
        files = {"torch_fp32": None,
                 "ort_fp32": workdir / f"{name}_fp32.onnx",
                 "ort_int8_srq": workdir / f"{name}_{args.method}_{args.bits}.onnx",
                 "ort_int8_quantize_static": workdir / f"{name}_quantize_static.onnx"}
        export_onnx(fp, files["ort_fp32"], metadata={"scale": fp.scale})
        export_onnx(q, files["ort_int8_srq"], metadata={"scale": fp.scale})
        if "ort_int8_quantize_static" in args.runtimes:
            quantize_static_model(files["ort_fp32"], files["ort_int8_quantize_static"], calib)
        for runtime in args.runtimes:
            path = files[runtime]
            bits = "fp32" if runtime.endswith("fp32") else (
                args.bits if runtime == "ort_int8_srq" else "w8a8")
            if path is None:
                psnr, file_mb = _psnr(fp, args.set, fp.scale), fp32_size_mb(fp)
            else:
                psnr = _psnr(OrtModel(path, scale=fp.scale), args.set, fp.scale)
                file_mb = path.stat().st_size / 1e6
            for threads in args.threads:
                if path is None:
                    torch.set_num_threads(threads)

                    def fn(x, m=fp):
                        with torch.inference_mode():
                            return m(torch.from_numpy(x))
                else:
                    sess = session(path, threads=threads)

                    def fn(x, s=sess):
                        return s.run(None, {"lr": x})

                for size in args.sizes:
                    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
                    ms = _median_ms(fn, x, args.repeats)
                    rows.append({"model": name, "runtime": runtime, "bits": bits, "lr_size": size,
                                 "threads": threads, "median_ms": round(ms, 2),
                                 "psnr_y": round(psnr, 4), "file_mb": round(file_mb, 4)})
                    print(rows[-1], flush=True)
    report = {"method": args.method, "bits": args.bits, "set": args.set, "repeats": args.repeats,
              "overrides": args.overrides, "calibration": "srq's calib patches (seed 0) for both "
              "srq and quantize_static", "rows": rows}
    base = {(r["model"], r["lr_size"], r["threads"]): r for r in rows if r["runtime"] == "ort_fp32"}
    write_bench_report(
        args.out, report,
        ["model", "runtime", "bits", "LR", "threads", "median ms", "× ORT FP32", "Y-PSNR", "MB"],
        lambda r: [r["model"], r["runtime"], r["bits"], f"{r['lr_size']}²", str(r["threads"]),
                   f"{r['median_ms']:.1f}",
                   (f"{base[(r['model'], r['lr_size'], r['threads'])]['median_ms'] / r['median_ms']:.2f}"
                    if (r["model"], r["lr_size"], r["threads"]) in base else "–"),
                   f"{r['psnr_y']:.3f}", f"{r['file_mb']:.3f}"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
