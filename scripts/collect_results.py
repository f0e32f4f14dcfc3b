"""Collect every results.json under a directory into one markdown (and optional CSV) table.

    python scripts/collect_results.py outputs/multiruns/2026-11-26/12-00-00-000000 [--csv out.csv]
    python scripts/collect_results.py <sweep dir> --by-run    # one row per run, sets side by side

The default layout has one row per (run, test set). ``--by-run`` puts each run on one row:
"PSNR / SSIM" for every test set in the sweep, then the calibration and fine-tuning seconds
from ``time_s``.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path


def _natural(path: Path) -> list:
    """Sort key: job directories ``2_x`` before ``10_x``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def collect(root: Path) -> list[dict]:
    rows = []
    for path in sorted(root.rglob("results.json"), key=_natural):
        res = json.loads(path.read_text())
        for set_name, m in res["metrics"].items():
            fp = res.get("fp_metrics", {}).get(set_name, {})
            rows.append({
                "model": res["model"], "method": res["method"], "bits": res["bits"],
                "set": set_name, "psnr_y": m["psnr_y"], "ssim_y": m["ssim_y"],
                "fp_psnr_y": fp.get("psnr_y"), "n_images": m["n_images"],
                "size_mb": res["model_size_mb"]["quantized"],
                "calibrate_s": res["time_s"].get("calibrate"),
                "finetune_s": res["time_s"].get("finetune"),
                "eval_s": res["time_s"].get("evaluate"), "run_dir": str(path.parent),
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
    parser.add_argument("root", type=Path, help="a run or sweep directory")
    parser.add_argument("--csv", type=Path, help="also write the rows as CSV here")
    parser.add_argument("--by-run", action="store_true",
                        help="one row per run, test sets side by side, with process times")
    args = parser.parse_args(argv)
    rows = collect(args.root)
    if not rows:
        print(f"no results.json under {args.root}", file=sys.stderr)
        return 1
    print(markdown_by_run(rows) if args.by_run else markdown(rows))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
