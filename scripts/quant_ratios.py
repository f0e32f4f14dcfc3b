"""Theoretical compression and speed-up ratios of a method's quantized op set (2DQuant's way).

    python scripts/quant_ratios.py --models swinir_s_x4 imdtn_x4 lmlt_tiny_x4 imdn_x4 \
        --bits w4a4 w3a3 w2a2 --out docs/bench/ratios.json

compression = 32·P_tot / (32·(P_tot − P_q) + Σ b_w·P_m) and speed-up =
F_tot / (F_tot − F_q + Σ F_m·b/32) (METHODS.md §3.5; ``srq.quant.size.theoretical_ratios``),
with MACs counted for one LR input of ``--size``² (128: 2DQuant's F_q = 14.34 G for
SwinIR-light). Op counts, not measured speed. Only shapes matter, so models use random
weights (no checkpoint needed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from srq.api import method_config
from srq.methods.dobi import dobi_spec, op_set, quantized_copy
from srq.models.zoo import build_model
from srq.quant.size import op_macs, theoretical_ratios
from srq.results import write_bench_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["swinir_s_x4", "imdtn_x4", "lmlt_tiny_x4"])
    parser.add_argument("--bits", nargs="+", default=["w4a4", "w3a3", "w2a2"])
    parser.add_argument("--method", default="dobi", help="a DOBI-initialised method: dobi | 2dquant | harmoq")
    parser.add_argument("--size", type=int, default=128, help="LR input height = width")
    parser.add_argument("--out", type=Path, default=Path("bench/ratios.json"))
    args = parser.parse_args(argv)
    rows = []
    example = torch.rand(1, 3, args.size, args.size)
    for model_name in args.models:
        teacher = build_model(model_name, pretrained=False)
        macs = op_macs(teacher, example)
        for bits in args.bits:
            with initialize_config_module(config_module="srq.conf", version_base="1.3"):
                cfg = compose(config_name="config", overrides=[
                    f"model={model_name}", f"method={args.method}", f"bits={bits}", "logger=none"])
            method = method_config(cfg, teacher.scale)
            ops = op_set(teacher, method.ops)
            student = quantized_copy(teacher, dobi_spec(method, method.bits, ops), ops, method.exclude,
                                     example)
            row = {"model": model_name, "bits": bits, "ops": ops, "input": [args.size, args.size],
                   **theoretical_ratios(student, macs)}
            rows.append(row)
            print(f"{model_name} {bits} ({ops}): compression {row['compression']:.2f}×, "
                  f"speed-up {row['speedup']:.2f}× (F_q/F_tot = {row['quantized_macs'] / 1e9:.2f}/"
                  f"{row['macs'] / 1e9:.2f} G MACs)")
    write_bench_report(args.out, {"method": args.method, "rows": rows},
                       ["model", "bits", "op set", "P_q / P_tot", "F_q / F_tot (G MACs)",
                        "compression", "speed-up"],
                       lambda r: [r["model"], r["bits"], r["ops"],
                                  f"{r['quantized_params']:,} / {r['params']:,}",
                                  f"{r['quantized_macs'] / 1e9:.2f} / {r['macs'] / 1e9:.2f}",
                                  f"{r['compression']:.2f}×", f"{r['speedup']:.2f}×"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
