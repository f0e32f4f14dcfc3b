"""Collect every results.json under a directory into one markdown (and optional CSV) table.

    python scripts/collect_results.py outputs/multiruns/2026-11-26/12-00-00-000000 [--csv out.csv]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a run or sweep directory")
    parser.add_argument("--csv", type=Path, help="also write the rows as CSV here")
    args = parser.parse_args(argv)
    rows = collect(args.root)
    if not rows:
        print(f"no results.json under {args.root}", file=sys.stderr)
        return 1
    print(markdown(rows))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
