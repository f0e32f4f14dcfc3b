"""FP evaluation time and peak memory per model on one benchmark set → JSON + markdown.

    python scripts/bench_eval.py --set Set5 --models imdn_x4 pan_x4 --repeats 3 --out bench/eval.json

Each model is timed in a fresh subprocess (so peak RSS is its own): median of ``repeats``
full passes over the set after one warm-up pass, plus peak resident memory (and peak CUDA
memory on a GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from srq.results import write_bench_report

WORKER = r"""
import json, resource, sys, time, torch
from srq.data.benchmark import benchmark_set
from srq.models.zoo import build_model
name, set_name, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
device = "cuda" if torch.cuda.is_available() else "cpu"
model = build_model(name).to(device)
images = [(lr[None].float().to(device) / 255) for _, lr, _ in benchmark_set(set_name, model.scale)]
times = []
with torch.inference_mode():
    for rep in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for x in images:
            model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        if rep:
            times.append(time.perf_counter() - start)
out = {"times_s": times, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
       "device": device, "threads": torch.get_num_threads(), "n_images": len(images)}
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
    parser.add_argument("--out", type=Path, default=Path("bench/eval.json"))
    args = parser.parse_args(argv)
    if not args.models:
        from srq.models.zoo import get_spec

        args.models = [n for n in model_names()
                       if get_spec(n).checkpoint and get_spec(n).checkpoint.store]
    rows = []
    for name in args.models:
        proc = subprocess.run([sys.executable, "-c", WORKER, name, args.set, str(args.repeats)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        median = statistics.median(res["times_s"])
        rows.append({"model": name, "set": args.set, "median_s": median,
                     "ms_per_image": 1000 * median / res["n_images"], **res})
        print(f"{name:18s} {median:8.2f} s  {rows[-1]['ms_per_image']:8.1f} ms/img  "
              f"peak RSS {res['peak_rss_mb']:7.0f} MB", flush=True)
    write_bench_report(
        args.out, {"set": args.set, "repeats": args.repeats, "rows": rows},
        ["model", "median s", "ms/image", "peak RSS MB", "device"],
        lambda r: [r["model"], f"{r['median_s']:.2f}", f"{r['ms_per_image']:.0f}",
                   f"{r['peak_rss_mb']:.0f}", r["device"]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
