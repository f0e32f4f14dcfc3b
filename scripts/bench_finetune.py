"""Seconds per fine-tuning step (teacher + quantized student) vs an FP forward/backward → JSON + md.

    python scripts/bench_finetune.py --models imdn_x4 pan_x4 --method plq_saft --bits w4a4

One SAFT step = teacher forward (no grad, feature taps) + student forward (fake quant, taps)
+ L_sen + λ·L_rec + backward + Adam step + bound projection. The reference is one FP
forward/backward (L1 to a fixed target, all weights trainable) on the same batch. Steps are
alternated ``repeats`` times after a warm-up; medians and their ratio are reported (goal ≤ 2.5×).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from srq.methods.outlier import OutlierAwarePTQ, finetune_data
from srq.methods.uniform import run_calibration
from srq.models.zoo import build_model
from srq.quant import quantize
from srq.results import write_bench_report


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["imdn_x4", "pan_x4"])
    parser.add_argument("--method", default="plq_saft")
    parser.add_argument("--bits", default="w4a4")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench/finetune.json"))
    args = parser.parse_args(argv)
    rows = []
    for model_name in args.models:
        with initialize_config_module(config_module="srq.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=[
                f"model={model_name}", f"method={args.method}", f"bits={args.bits}",
                "logger=none", "method.calib.num_patches=16", "method.calib.val_patches=0"])
        teacher = build_model(model_name)
        method = OutlierAwarePTQ(cfg.method)
        train, _, info = finetune_data(cfg, cfg.method, teacher.scale)
        student = copy.deepcopy(teacher)
        quantize(student, method.spec(cfg.bits), example_input=train[0][None])
        run_calibration(student, train, info["batch_size"])
        module = method.distillation_module(teacher, student, train, info)
        optimizers = module.configure_optimizers()
        groups = [p for params in module._groups.values() for p in params]
        batch = torch.stack([train[i] for i in range(args.batch_size)])

        def saft_step():
            out_s, out_t, fs, ft = module._forward_pair(batch)
            loss = module.objective(out_s, out_t, fs, ft)
            for opt in optimizers:
                opt.zero_grad()
            loss.backward()
            for opt in optimizers:
                opt.step()
            for project in module.projections:
                project()

        fp = copy.deepcopy(teacher).requires_grad_(True)
        fp_opt = torch.optim.Adam(fp.parameters(), lr=0.0)
        with torch.no_grad():
            target = teacher(batch)

        def fp_step():
            fp_opt.zero_grad()
            (fp(batch) - target).abs().mean().backward()
            fp_opt.step()

        saft_step(), fp_step()  # warm-up
        saft_t, fp_t = [], []
        for _ in range(args.repeats):
            saft_t.append(_timed(saft_step))
            fp_t.append(_timed(fp_step))
        row = {"model": model_name, "method": args.method, "bits": args.bits,
               "batch": list(batch.shape), "trainable_params": sum(p.numel() for p in groups),
               "saft_step_s": statistics.median(saft_t), "fp_step_s": statistics.median(fp_t),
               "device": str(batch.device), "threads": torch.get_num_threads()}
        row["ratio"] = row["saft_step_s"] / row["fp_step_s"]
        rows.append(row)
        print(f"{model_name}: SAFT step {row['saft_step_s']:.3f} s, FP fwd/bwd "
              f"{row['fp_step_s']:.3f} s, ratio {row['ratio']:.2f}")
    write_bench_report(args.out, {"repeats": args.repeats, "rows": rows},
                       ["model", "bits", "batch", "SAFT step s", "FP fwd/bwd s", "ratio"],
                       lambda r: [r["model"], r["bits"], "×".join(map(str, r["batch"])),
                                  f"{r['saft_step_s']:.3f}", f"{r['fp_step_s']:.3f}",
                                  f"{r['ratio']:.2f}"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
