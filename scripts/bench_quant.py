"""Fake-quantized vs FP inference time on the same images, and calibration time → JSON + md.

    python scripts/bench_quant.py --models imdn_x4 pan_x4 --methods minmax mse --bits w8a8 w4a4

Per (model, method, bits): calibration time (one run), then FP and frozen fake-quant passes
over Set5 alternated ``repeats`` times; medians and their ratio are reported (goal ≤ 1.5×).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from srq.data.benchmark import benchmark_set
from srq.run import quantize_from_config
from srq.models.zoo import build_model
from srq.results import write_bench_report


def _pass(model, images) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for x in images:
            model(x)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["imdn_x4", "pan_x4"])
    parser.add_argument("--methods", nargs="+", default=["minmax"])
    parser.add_argument("--bits", nargs="+", default=["w8a8", "w4a4"])
    parser.add_argument("--set", default="Set5")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/quant.json"))
    args = parser.parse_args(argv)
    rows = []
    for model_name in args.models:
        for method_name in args.methods:
            for bits in args.bits:
                with initialize_config_module(config_module="srq.conf", version_base="1.3"):
                    cfg = compose(config_name="config", overrides=[
                        f"model={model_name}", f"method={method_name}", f"bits={bits}",
                        "logger=none"])
                teacher = build_model(model_name)
                images = [lr[None].float() / 255 for _, lr, _ in benchmark_set(args.set, teacher.scale)]
                start = time.perf_counter()
                _, _, result = quantize_from_config(cfg, teacher)
                calibrate_s = time.perf_counter() - start
                student = result.student
                _pass(teacher, images[:1]), _pass(student, images[:1])  # warm-up
                fp_t, q_t = [], []
                for _ in range(args.repeats):
                    fp_t.append(_pass(teacher, images))
                    q_t.append(_pass(student, images))
                row = {"model": model_name, "method": method_name, "bits": bits,
                       "calibrate_s": calibrate_s, "fp_median_s": statistics.median(fp_t),
                       "quant_median_s": statistics.median(q_t), "fp_s": fp_t, "quant_s": q_t}
                row["ratio"] = row["quant_median_s"] / row["fp_median_s"]
                rows.append(row)
                print(f"{model_name} {method_name} {bits}: FP {row['fp_median_s']:.2f} s, "
                      f"fake-quant {row['quant_median_s']:.2f} s ({row['ratio']:.2f}x), "
                      f"calibration {calibrate_s:.1f} s", flush=True)
    write_bench_report(
        args.out, {"set": args.set, "repeats": args.repeats, "threads": torch.get_num_threads(),
                   "rows": rows},
        ["model", "method", "bits", "FP s", "fake-quant s", "ratio", "calibration s"],
        lambda r: [r["model"], r["method"], r["bits"], f"{r['fp_median_s']:.2f}",
                   f"{r['quant_median_s']:.2f}", f"{r['ratio']:.2f}", f"{r['calibrate_s']:.1f}"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
