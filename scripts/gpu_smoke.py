"""Every method on one CNN and one transformer with tiny budgets, on CUDA → JSON + markdown.

    python scripts/gpu_smoke.py                         # CUDA (the device tool's machine)
    python scripts/gpu_smoke.py --device cpu --methods minmax dobi   # the same checks here

Per (model, method, bits): the library flow on real patches (srq.config → srq.quantize with
calibration / validation / training patches and the zoo's feature blocks → srq.save →
srq.load), then checks that every parameter and buffer of the quantized model lives on the
device, that its output is finite and on the device, and that the reloaded artifact gives the
same output bit for bit. A few minutes in all on one GPU; needs the data mirror (SRQ_DATA_DIR).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path

import torch

# (method, bits, overrides): tiny budgets that still run every step of each method
CASES = [
    ("minmax", "w8a8", []), ("ema_minmax", "w4a4", []), ("percentile", "w4a4", []),
    ("mse", "w4a4", ["weight.args.candidates=10", "act.args.candidates=10"]),
    ("coreai", "w8a8", []), ("coreai", "wp4a8", ["sensitive=true"]),
    ("plq_saft", "w4a4", ["finetune.epochs=3", "finetune.batch_size=2"]),
    ("dobi", "w4a4", []),
    ("2dquant", "w4a4", ["dqc.iterations=4", "dqc.batch_size=2", "dqc.num_patches=8"]),
    ("harmoq", "w2a2", ["src.enabled=true", "abr.rounds=2", "abr.steps=2", "abr.batch_size=2",
                        "abr.num_patches=8", "abr.lambda_bal=0.01"]),
    ("harmoq", "w3a3", ["order=abstract", "src.enabled=true", "abr.rounds=1", "abr.steps=2",
                        "abr.batch_size=2", "abr.num_patches=8"]),
    ("lowbit", "w4a4", ["reconstruction.iterations=4", "reconstruction.batch_size=2",
                        "reconstruction.crop=16", "reconstruction.bias_lr=1e-3",
                        "scale_migration.enabled=true"]),
]
SMALL = ["calib.num_patches=8", "calib.patch_size=32", "calib.val_patches=2"]


def run_case(model_name: str, method: str, bits: str, overrides: list[str], device: str,
             workdir: Path) -> dict:
    import srq
    from srq.lit.fit import Fitter, default_trainer
    from srq.models.zoo import build_model, get_spec
    from srq.run import draw_calibration

    spec = get_spec(model_name)
    cfg = srq.config(method, bits=bits, overrides=[*overrides, *SMALL])
    data = draw_calibration(cfg, spec.scale)
    model = build_model(model_name).to(device)
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    start = time.perf_counter()
    qmodel = srq.quantize(model, cfg, calib=data.calib, train=data.train, val=data.val,
                          hr=data.calib.hr if cfg.needs_hr else None,
                          feature_blocks=spec.feature_block_names(model) or None,
                          fit=Fitter(trainer=partial(default_trainer, accelerator=accelerator,
                                                     enable_progress_bar=False)))
    seconds = time.perf_counter() - start
    off = [n for n, t in [*qmodel.named_parameters(), *qmodel.named_buffers()]
           if t.device.type != torch.device(device).type]
    x = torch.rand(1, 3, 24, 24, device=device)
    with torch.no_grad():
        y = qmodel(x)
    path = workdir / f"{model_name}_{method}_{bits}.srq"
    srq.save(qmodel, path)
    with torch.no_grad():
        y2 = srq.load(path).to(device)(x)
    return {"model": model_name, "method": method, "bits": bits, "seconds": round(seconds, 2),
            "off_device": off[:5], "output_device": str(y.device), "finite": bool(torch.isfinite(y).all()),
            "reload_identical": bool(torch.equal(y, y2)), "file_mb": round(path.stat().st_size / 1e6, 4),
            "ok": not off and y.device.type == torch.device(device).type and bool(torch.isfinite(y).all())
            and bool(torch.equal(y, y2))}


def main(argv: list[str] | None = None) -> int:
    from srq.results import write_bench_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", default=["imdn_x4", "imdtn_x4"])
    parser.add_argument("--methods", nargs="+", default=None, help="default: every case")
    parser.add_argument("--out", type=Path, default=Path("bench/gpu_smoke.json"))
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_smoke: error: no CUDA device here; run it on the device machine or pass --device cpu")
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in args.models:
            for method, bits, overrides in CASES:
                if args.methods and method not in args.methods:
                    continue
                try:
                    row = run_case(model_name, method, bits, overrides, args.device, Path(tmp))
                except Exception as exc:  # report every case, then fail
                    row = {"model": model_name, "method": method, "bits": bits, "ok": False,
                           "error": f"{type(exc).__name__}: {exc}",
                           "where": traceback.format_exc().splitlines()[-3:]}
                rows.append(row)
                print(f"{model_name} {method} {bits}: {'ok' if row['ok'] else 'FAILED'} "
                      f"{row.get('seconds', '')} {row.get('error', '')}", flush=True)
    write_bench_report(args.out, {"device": args.device, "torch": torch.__version__,
                                  "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                                  "rows": rows},
                       ["model", "method", "bits", "ok", "seconds", "reload identical"],
                       lambda r: [r["model"], r["method"], r["bits"], str(r["ok"]),
                                  str(r.get("seconds", "–")), str(r.get("reload_identical", "–"))])
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
