"""Wall-clock of one multirun sweep, one job at a time vs hydra/launcher=joblib → JSON + markdown.

    python scripts/bench_launchers.py --jobs 1 2 --seeds 4 --out docs/bench/launchers.json

Each configuration runs the same sweep (``--args``, default IMDN ×4 minmax W4A4 on Set5 over
``--seeds`` seeds) in a fresh process and a fresh output dir; n_jobs = 1 is Hydra's basic
launcher (sequential, torch's default threads), n_jobs = k the joblib launcher with k
processes of cores // k torch threads each. Reports the wall-clock and the speed-up over
n_jobs = 1, and the largest Set5 PSNR difference per seed from the first configuration (thread
counts change float summation order, not the method).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from srq.results import write_bench_report

DEFAULT_ARGS = ["model=imdn_x4", "method=minmax", "bits=w4a4", "data=set5", "logger=none"]


def run_sweep(n_jobs: int, seeds: int, args: list[str], root: Path) -> dict:
    sweep = root / f"jobs{n_jobs}"
    cmd = [sys.executable, "-m", "srq", "-m", *args, "seed=" + ",".join(map(str, range(seeds))),
           f"hydra.sweep.dir={sweep}"]
    if n_jobs > 1:
        cmd += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root,  # not the repo: its srq/ lacks conf/
                          env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"n_jobs={n_jobs} failed:\n{proc.stderr[-3000:]}")
    runs = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    psnr = {r["seed"]: r["metrics"][next(iter(r["metrics"]))]["psnr_y"] for r in runs}
    return {"n_jobs": n_jobs, "wall_s": wall, "jobs": len(runs), "psnr_by_seed": psnr,
            "torch_threads": sorted({r["torch_threads"] for r in runs})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--args", nargs="*", default=DEFAULT_ARGS, help="the sweep's overrides")
    parser.add_argument("--out", type=Path, default=Path("bench/launchers.json"))
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="srq-bench-launchers-"))
    try:
        rows = [run_sweep(n, args.seeds, args.args, root) for n in args.jobs]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = rows[0]["wall_s"]
    for r in rows:
        r["speedup"] = base / r["wall_s"]
        r["max_psnr_diff"] = max(abs(v - rows[0]["psnr_by_seed"][k]) for k, v in r["psnr_by_seed"].items())
        print(f"n_jobs={r['n_jobs']}: {r['wall_s']:.1f} s for {r['jobs']} jobs "
              f"({r['speedup']:.2f}× vs n_jobs={rows[0]['n_jobs']}), threads {r['torch_threads']}")
    write_bench_report(
        args.out, {"args": args.args, "seeds": args.seeds, "cores": os.cpu_count(), "rows": rows},
        ["n_jobs", "launcher", "jobs", "torch threads per job", "wall s", "speed-up",
         "max |ΔPSNR| vs n_jobs=1"],
        lambda r: [str(r["n_jobs"]), "basic" if r["n_jobs"] == 1 else "joblib", str(r["jobs"]),
                   ",".join(map(str, r["torch_threads"])), f"{r['wall_s']:.1f}", f"{r['speedup']:.2f}×",
                   f"{r['max_psnr_diff']:.1e}"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
