"""FP evaluation time per model on one benchmark set, forward and metrics apart → JSON + markdown.

    python scripts/bench_eval.py --set Set5 --models imdn_x4 pan_x4 --repeats 3 --out bench/eval.json
    python scripts/bench_eval.py --models imdn_x4 --image 1024x680 --out docs/bench/eval_large.json

Each model is timed in a fresh subprocess (so peak RSS is its own): median of ``repeats``
full passes over the set after one warm-up pass, for the forward passes alone, for srq's
metrics (``sr_image_metrics``) on those outputs and for BasicSR's ``calculate_psnr`` +
``calculate_ssim`` (Y channel) on the same outputs, plus peak resident memory (and peak
CUDA memory on a GPU). ``--image WxH``: one synthetic HR image of that size instead of a
set (LR = its MATLAB-bicubic downsampling), e.g. the 1024×680 of an Urban100 image.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from srq.results import write_bench_report

WORKER = r"""
import json, resource, statistics, sys, time, numpy as np, torch
from basicsr.metrics import calculate_psnr, calculate_ssim
from srq.data.benchmark import benchmark_set
from srq.data.images import bicubic_downsample
from srq.metrics.sr import sr_image_metrics
from srq.models.zoo import build_model
name, set_name, repeats, image = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
device = "cuda" if torch.cuda.is_available() else "cpu"
model = build_model(name).to(device)
if image != "-":
    w, h = (int(v) for v in image.split("x"))
    gen = torch.Generator().manual_seed(0)
    hr = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
    hr = (torch.nn.functional.avg_pool2d(hr[None].float(), 5, 1, 2)[0]).round().to(torch.uint8)
    hr = hr[:, : h - h % model.scale, : w - w % model.scale]
    pairs = [(hr, bicubic_downsample(hr, model.scale))]
else:
    pairs = [(hr, lr) for _, lr, hr in benchmark_set(set_name, model.scale)]
images = [(lr[None].float().to(device) / 255) for _, lr in pairs]

def timed(fn):
    times = []
    for rep in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if rep:
            times.append(time.perf_counter() - start)
    return statistics.median(times), out

with torch.inference_mode():
    forward_s, outputs = timed(lambda: [model(x).cpu() for x in images])
ours_s, ours = timed(lambda: [sr_image_metrics(sr, hr[None], model.scale) for sr, (hr, _) in zip(outputs, pairs)])
def basicsr():
    vals = []
    for sr, (hr, _) in zip(outputs, pairs):
        a = (sr[0].clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()[..., ::-1].astype(np.float64)
        b = hr.permute(1, 2, 0).numpy()[..., ::-1].astype(np.float64)
        vals.append((calculate_psnr(a, b, model.scale, test_y_channel=True),
                     calculate_ssim(a, b, model.scale, test_y_channel=True)))
    return vals
basicsr_s, ref = timed(basicsr)
diff_psnr = max(abs(float(o["psnr_y"][0]) - r[0]) for o, r in zip(ours, ref))
diff_ssim = max(abs(float(o["ssim_y"][0]) - r[1]) for o, r in zip(ours, ref))
out = {"forward_s": forward_s, "metrics_s": ours_s, "basicsr_metrics_s": basicsr_s,
       "max_abs_diff_psnr_y": diff_psnr, "max_abs_diff_ssim_y": diff_ssim,
       "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
       "device": device, "threads": torch.get_num_threads(), "n_images": len(images),
       "hr_size": "x".join(map(str, pairs[0][0].shape[-1:-3:-1]))}
if device == "cuda":
    out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    from srq.models.zoo import model_names

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="Set5")
    parser.add_argument("--models", nargs="*", help="default: every model with pretrained weights")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image", help="WxH: one synthetic HR image of this size instead of --set")
    parser.add_argument("--out", type=Path, default=Path("bench/eval.json"))
    args = parser.parse_args(argv)
    if not args.models:
        from srq.models.zoo import get_spec

        args.models = [n for n in model_names()
                       if get_spec(n).checkpoint and get_spec(n).checkpoint.store]
    rows = []
    for name in args.models:
        proc = subprocess.run([sys.executable, "-c", WORKER, name, args.set, str(args.repeats),
                               args.image or "-"], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({"model": name, "set": f"synthetic {args.image}" if args.image else args.set,
                     "ms_per_image": 1000 * res["forward_s"] / res["n_images"],
                     "metrics_speedup_vs_basicsr": res["basicsr_metrics_s"] / res["metrics_s"], **res})
        print(f"{name:18s} forward {res['forward_s']:7.2f} s  metrics {res['metrics_s']:6.2f} s  "
              f"BasicSR {res['basicsr_metrics_s']:6.2f} s  peak RSS {res['peak_rss_mb']:7.0f} MB",
              flush=True)
    write_bench_report(
        args.out, {"set": args.set, "image": args.image, "repeats": args.repeats, "rows": rows},
        ["model", "images", "forward s (median)", "srq metrics s", "BasicSR metrics s",
         "BasicSR / srq", "max |ΔPSNR| / |ΔSSIM|", "peak RSS MB", "device"],
        lambda r: [r["model"], f"{r['set']} ({r['n_images']})", f"{r['forward_s']:.2f}",
                   f"{r['metrics_s']:.3f}", f"{r['basicsr_metrics_s']:.3f}",
                   f"{r['metrics_speedup_vs_basicsr']:.1f}×",
                   f"{r['max_abs_diff_psnr_y']:.1e} / {r['max_abs_diff_ssim_y']:.1e}",
                   f"{r['peak_rss_mb']:.0f}", r["device"]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
