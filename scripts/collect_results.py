"""Collect every results.json under a directory into one markdown (and optional CSV) table.

    python scripts/collect_results.py outputs/multiruns/2026-11-26/12-00-00-000000 [--csv out.csv]
    python scripts/collect_results.py <sweep dir> --by-run    # one row per run, sets side by side
    python scripts/collect_results.py <sweep dir> [<more dirs>] --seeds           # mean ± std (n)
    python scripts/collect_results.py <dirs> --compare 2dquant dobi               # paired by seed

The default layout has one row per (run, test set). ``--by-run`` puts each run on one row:
"PSNR / SSIM" for every test set in the sweep, then the calibration and fine-tuning seconds
from ``time_s``. ``--seeds`` groups runs that differ only in ``seed`` into one row per cell:
mean ± sample std (n) of val and each test set. ``--compare A B`` pairs the runs of methods
A and B (or cell labels ``method[key=value]``) by seed per model, bits and set: mean ± std
of A − B, n, and in how many seeds A was ahead. (Grouping and statistics: srq.analysis.)
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from srq.analysis import load_runs, paired, paired_table, seeds_table


def collect(*roots: Path) -> list[dict]:
    rows = []
    for res in load_runs(*roots):
        for set_name, m in res["metrics"].items():
            fp = res.get("fp_metrics", {}).get(set_name, {})
            rows.append({
                "model": res["model"], "method": res["method"], "bits": res["bits"],
                "set": set_name, "psnr_y": m["psnr_y"], "ssim_y": m["ssim_y"],
                "fp_psnr_y": fp.get("psnr_y"), "n_images": m["n_images"],
                "size_mb": res["model_size_mb"]["quantized"],
                "calibrate_s": res["time_s"].get("calibrate"),
                "finetune_s": res["time_s"].get("finetune"),
                "eval_s": res["time_s"].get("evaluate"), "run_dir": res["run_dir"],
            })
    return rows


def markdown(rows: list[dict]) -> str:
    head = "| model | method | bits | set | Y-PSNR | Y-SSIM | FP Y-PSNR | size MB | images |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['bits']} | {r['set']} | "
                     f"{r['psnr_y']:.3f} | {r['ssim_y']:.4f} | {r['fp_psnr_y']:.3f} | "
                     f"{r['size_mb']:.2f} | {r['n_images']} |")
    return "\n".join(lines)


def markdown_by_run(rows: list[dict]) -> str:
    """One line per run directory; a "–" where a run did not evaluate a set."""
    sets = list(dict.fromkeys(r["set"] for r in rows))
    runs: dict[str, dict] = {}
    for r in rows:
        runs.setdefault(r["run_dir"], {"first": r})[r["set"]] = r
    head = "| model | method | bits | " + " | ".join(f"{s} PSNR / SSIM" for s in sets)
    lines = [head + " | calibrate s | fine-tune s |", "|" + "---|" * (len(sets) + 5)]

    def seconds(v):
        return "–" if v is None else f"{v:.0f}"

    for run in runs.values():
        r = run["first"]
        cells = [f"{run[s]['psnr_y']:.3f} / {run[s]['ssim_y']:.4f}" if s in run else "–"
                 for s in sets]
        lines.append(f"| {r['model']} | {r['method']} | {r['bits']} | " + " | ".join(cells)
                     + f" | {seconds(r['calibrate_s'])} | {seconds(r['finetune_s'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", type=Path, nargs="+", help="run, sweep or outputs directories")
    parser.add_argument("--csv", type=Path, help="also write the rows as CSV here")
    parser.add_argument("--by-run", action="store_true",
                        help="one row per run, test sets side by side, with process times")
    parser.add_argument("--seeds", action="store_true",
                        help="one row per cell (runs differing only in seed): mean ± std (n)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="paired differences A − B by seed (method names or cell labels)")
    parser.add_argument("--metric", default="psnr_y", choices=("psnr_y", "ssim_y", "psnr_rgb"))
    args = parser.parse_args(argv)
    rows = collect(*args.roots)
    if not rows:
        print(f"no results.json under {' '.join(map(str, args.roots))}", file=sys.stderr)
        return 1
    if args.compare:
        pairs = paired(load_runs(*args.roots), *args.compare, key=args.metric)
        if not pairs:
            print(f"no runs of {args.compare[0]} and {args.compare[1]} share a model, bits and "
                  "seed; run both with the same seeds (e.g. seed=0,1,2)", file=sys.stderr)
            return 1
        print(paired_table(pairs, args.metric))
    elif args.seeds:
        print(seeds_table(load_runs(*args.roots), args.metric))
    else:
        print(markdown_by_run(rows) if args.by_run else markdown(rows))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
