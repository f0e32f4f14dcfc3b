"""Block-reconstruction speed (method=lowbit): seconds per step of each model's feature blocks
→ JSON + markdown, optionally beside another git revision of srq.

    python scripts/bench_reconstruct.py --models imdn_x4 imdtn_x4 --out docs/bench/reconstruct.json
    python scripts/bench_reconstruct.py --compare-to d1fda2b --repeats 3 --out docs/bench/reconstruct.json

Each measurement is a fresh subprocess: the zoo model, ``--patches`` seeded random LR patches
(16 of 48×48 by default), ``method=lowbit`` at ``--bits`` with ``reconstruction.iterations`` =
``--steps`` low and high; a unit's seconds per step is (t_high − t_low) / (high − low) from the run's reconstruction
records (so capturing the unit's inputs is not counted), summed over the model's feature
blocks. ``--compare-to REV`` checks REV out into a temporary git worktree and times it the
same way (its ``srq`` imported first), alternating with this checkout ``--repeats``
times; the table gives medians and the ratio REV / this checkout. Threads: ``--threads``
(the jobs in docs/RESULTS.md §12 ran with 1 thread each, two side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from srq.results import write_bench_report

WORKER = r"""
import json, os, sys
if os.environ.get("SRQ_BENCH_SRC"):  # that tree's srq, ahead of an editable install's finder
    sys.path.insert(0, os.environ["SRQ_BENCH_SRC"])
    sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
import torch
import srq
from srq.models.zoo import build_model, feature_blocks
name, bits, steps, drop, threads, patches, size = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:8])
steps, threads, patches, size = int(steps), int(threads), int(patches), int(size)
torch.set_num_threads(threads)
model = build_model(name).eval()
calib = torch.rand(patches, 3, size, size, generator=torch.Generator().manual_seed(0))
blocks = feature_blocks(model, name)
cfg = srq.config("lowbit", bits=bits, overrides=[f"reconstruction.iterations={steps}",
                                                 f"reconstruction.drop_prob={drop}"])
q = srq.quantize(model, cfg, calib=calib, feature_blocks=blocks)
records = q.srq_method["info"]["finetune"]["records"]
print(json.dumps({"srq": srq.__file__, "blocks": blocks,
                  "seconds": {r["unit"]: r["seconds"] for r in records}}))
"""


def _measure(src: str | None, name: str, bits: str, steps: int, drop: float, threads: int,
             patches: int, size: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if src is not None:
        env["SRQ_BENCH_SRC"] = src
    proc = subprocess.run([sys.executable, "-c", WORKER, name, bits, str(steps), str(drop), str(threads),
                           str(patches), str(size)], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir())  # not the repo root: `-c` puts the cwd on sys.path
    if proc.returncode != 0:
        raise RuntimeError(f"{name} ({src or 'this checkout'}): {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if src is not None and not out["srq"].startswith(src):
        raise RuntimeError(f"the worker imported {out['srq']}, not the worktree {src}")
    return out


def _per_step(src, name, bits, low, high, drop, threads, patches, size) -> float:
    """Σ over feature blocks of (t_high − t_low) / (high − low): seconds per step."""
    a = _measure(src, name, bits, low, drop, threads, patches, size)
    b = _measure(src, name, bits, high, drop, threads, patches, size)
    return sum((b["seconds"][u] - a["seconds"][u]) / (high - low) for u in a["blocks"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["imdn_x4", "imdtn_x4", "pan_x4", "lmlt_tiny_x4"])
    parser.add_argument("--bits", default="w4a4")
    parser.add_argument("--steps", type=int, nargs=2, default=[5, 25], metavar=("LOW", "HIGH"))
    parser.add_argument("--drop-probs", type=float, nargs="*", default=[0.5, 0.0],
                        help="reconstruction.drop_prob values (QDrop on: 0.5, the default; off: 0)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--patches", type=int, default=16, help="calibration patches (random, seeded)")
    parser.add_argument("--patch-size", type=int, default=48, help="their LR size")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--compare-to", metavar="REV", help="a git revision to time beside this checkout")
    parser.add_argument("--out", type=Path, default=Path("bench/reconstruct.json"))
    args = parser.parse_args(argv)
    low, high = args.steps
    if not 0 <= low < high:
        parser.error(f"--steps {low} {high}: need 0 ≤ LOW < HIGH")
    root = Path(__file__).resolve().parents[1]
    # SIGTERM exits through the finally blocks: the worker is killed, the worktree removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="srq-bench-") as tmp:
        sources = {"this checkout": None}
        if args.compare_to:
            tree = str(Path(tmp) / "tree")
            subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", tree, args.compare_to],
                           check=True, capture_output=True)
            os.symlink("../conf", Path(tree) / "srq" / "conf")  # what the install maps to srq.conf
            sources = {args.compare_to: tree, **sources}
        rows = []
        try:
            for name in args.models:
                for drop in args.drop_probs:
                    times = {label: [] for label in sources}
                    for _ in range(args.repeats):  # alternate, so load drifts hit both alike
                        for label, src in sources.items():
                            times[label].append(_per_step(src, name, args.bits, low, high, drop, args.threads,
                                                         args.patches, args.patch_size))
                    row = {"model": name, "bits": args.bits, "drop_prob": drop, "threads": args.threads,
                           "s_per_step": {k: statistics.median(v) for k, v in times.items()}, "runs": times}
                    if args.compare_to:
                        row["ratio"] = row["s_per_step"][args.compare_to] / row["s_per_step"]["this checkout"]
                    rows.append(row)
                    print(name, drop, {k: round(v, 3) for k, v in row["s_per_step"].items()},
                          f"ratio {row.get('ratio', float('nan')):.2f}", flush=True)
        finally:
            if args.compare_to:
                subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", tree], check=False)
    base = args.compare_to
    write_bench_report(
        args.out, {"bits": args.bits, "steps": [low, high], "repeats": args.repeats,
                   "patches": args.patches, "patch_size": args.patch_size,
                   "compare_to": base, "rows": rows},
        ["model", "bits", "QDrop p", "threads", "s / step (this checkout)"]
        + ([f"s / step ({base})", f"{base} / this"] if base else []),
        lambda r: [r["model"], r["bits"], f"{r['drop_prob']:g}", str(r["threads"]),
                   f"{r['s_per_step']['this checkout']:.3f}"]
        + ([f"{r['s_per_step'][base]:.3f}", f"{r['ratio']:.2f}×"] if base else []))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
