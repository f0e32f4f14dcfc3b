"""Seconds per fine-tuning step (teacher + quantized student) vs an FP forward/backward → JSON + md.

    python scripts/bench_finetune.py --models imdn_x4 pan_x4 --method plq_saft --bits w4a4
    python scripts/bench_finetune.py --models imdtn_x4 --method 2dquant --bits w4a4

One fine-tuning step (SAFT or DQC) = teacher forward (no grad, feature taps) + student forward
(fake quant, taps) + loss + backward + Adam step + bound projection, cycling through the
schedule's stages (only the stage's group gets gradients, as in training). The reference is one FP
forward/backward (L1 to a fixed target, all weights trainable) on the same batch. Steps are
alternated ``repeats`` times after a warm-up; medians and their ratio are reported (goal ≤ 2.5×).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from srq.api import method_config
from srq.methods.common import as_batches, calibrated_copy, samples
from srq.methods.dobi import dobi_calibrated
from srq.methods.dqc import dqc_module
from srq.methods.outlier import OutlierConfig, outlier_spec, saft_module
from srq.models.zoo import build_model, get_spec
from srq.results import write_bench_report
from srq.run import draw_calibration


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["imdn_x4", "pan_x4"])
    parser.add_argument("--method", default="plq_saft")
    parser.add_argument("--bits", default="w4a4")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the method's")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench/finetune.json"))
    args = parser.parse_args(argv)
    rows = []
    for model_name in args.models:
        with initialize_config_module(config_module="srq.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=[
                f"model={model_name}", f"method={args.method}", f"bits={args.bits}",
                "logger=none", "method.calib.num_patches=16", "method.calib.val_patches=0"])
        batch_size = args.batch_size or int(cfg.method.get("finetune", cfg.method.get("dqc")).batch_size)
        teacher = build_model(model_name)
        spec = get_spec(model_name)
        method = method_config(cfg, spec.scale)
        data = draw_calibration(method, spec.scale)
        batches = as_batches(data.calib, method.calib.batch_size)
        train = samples(data.calib)
        if isinstance(method, OutlierConfig):
            student, _ = calibrated_copy(teacher, outlier_spec(method, method.bits), data.calib,
                                         method.calib.batch_size)
            module = saft_module(teacher, student, method, batches, spec.scale)
        else:  # DOBI + DQC
            student, _, _ = dobi_calibrated(teacher, method, batches)
            module = dqc_module(teacher, student, method, spec.feature_block_names(teacher), spec.scale)
        optimizers = module.configure_optimizers()
        groups = [p for params in module._groups.values() for p in params]
        batch = torch.stack([train[i] for i in range(batch_size)])

        stage = itertools.count()

        def finetune_step():  # the stages of a staged schedule in turn (SAFT: u_w, l_a/u_a, bp)
            module.activate(next(stage))
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

        finetune_step(), fp_step()  # warm-up
        step_t, fp_t = [], []
        for _ in range(args.repeats):
            step_t.append(_timed(finetune_step))
            fp_t.append(_timed(fp_step))
        row = {"model": model_name, "method": args.method, "bits": args.bits,
               "batch": list(batch.shape), "trainable_params": sum(p.numel() for p in groups),
               "step_s": statistics.median(step_t), "fp_step_s": statistics.median(fp_t),
               "device": str(batch.device), "threads": torch.get_num_threads()}
        row["ratio"] = row["step_s"] / row["fp_step_s"]
        rows.append(row)
        print(f"{model_name}: fine-tuning step {row['step_s']:.3f} s, FP fwd/bwd "
              f"{row['fp_step_s']:.3f} s, ratio {row['ratio']:.2f}")
    write_bench_report(args.out, {"repeats": args.repeats, "rows": rows},
                       ["model", "bits", "batch", "fine-tuning step s", "FP fwd/bwd s", "ratio"],
                       lambda r: [r["model"], r["bits"], "×".join(map(str, r["batch"])),
                                  f"{r['step_s']:.3f}", f"{r['fp_step_s']:.3f}",
                                  f"{r['ratio']:.2f}"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
