"""Our 4-bit k-means palettization vs coremltools' PostTrainingPalettizer on one model.

    pip install coremltools   # not a dependency of srq
    python scripts/compare_coremltools.py --model imdn_x4 --set Set5 [--kmeans-seeds 6]

Both palettize every Conv2d weight (ours: those with ≥ ``--min-numel`` elements, default 0 =
all, as coremltools does), per tensor, 16 entries, FP LUT (coremltools' default) and FP
activations; Set5 Y-PSNR of both is printed and saved. ``--kmeans-seeds N`` adds our
palettizer with N k-means++ seeds, the spread that any agreement must be read against.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from srq.data.benchmark import benchmark_set
from srq.lit.evaluate import evaluate_sets
from srq.models.zoo import build_model
from srq.quant.palettize import PalettSpec, palettize


def main(argv: list[str] | None = None) -> int:
    from coremltools.optimize.torch.palettization import (
        PostTrainingPalettizer,
        PostTrainingPalettizerConfig,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="imdn_x4")
    parser.add_argument("--set", default="Set5")
    parser.add_argument("--n-bits", type=int, default=4)
    parser.add_argument("--fast-kmeans", action=argparse.BooleanOptionalAction, default=False,
                        help="coremltools' approximate fast k-means (its default: on)")
    parser.add_argument("--min-numel", type=int, default=0)
    parser.add_argument("--kmeans-seeds", type=int, default=1,
                        help="also run our palettizer with this many k-means++ seeds (spread)")
    parser.add_argument("--out", type=Path, default=Path("bench/coremltools_palettization.json"))
    args = parser.parse_args(argv)
    fp = build_model(args.model)
    sets = [benchmark_set(args.set, fp.scale)]
    ours = copy.deepcopy(fp)
    palettize(ours.net, PalettSpec(n_bits=args.n_bits, lut_bits=None, min_numel=args.min_numel))
    theirs = copy.deepcopy(fp)
    config = PostTrainingPalettizerConfig.from_dict({"global_config": {
        "n_bits": args.n_bits, "granularity": "per_tensor",
        "enable_fast_kmeans_mode": args.fast_kmeans}, "module_type_configs": {}})
    theirs.net = PostTrainingPalettizer(theirs.net, config).compress()
    result = {"model": args.model, "set": args.set, "n_bits": args.n_bits,
              "coremltools_fast_kmeans": args.fast_kmeans}
    for name, model in (("fp", fp), ("srq", ours), ("coremltools", theirs)):
        with torch.no_grad():
            summary, _, _ = evaluate_sets(model, sets)
        result[name] = summary[args.set]["psnr_y"]
        print(f"{name:12s} {result[name]:.3f} dB")
    result["difference_db"] = result["srq"] - result["coremltools"]
    if args.kmeans_seeds > 1:
        spread = [result["srq"]]
        for seed in range(1, args.kmeans_seeds):
            model = copy.deepcopy(fp)
            palettize(model.net, PalettSpec(n_bits=args.n_bits, lut_bits=None, min_numel=args.min_numel,
                                            seed=seed * 7919))
            with torch.no_grad():
                summary, _, _ = evaluate_sets(model, sets)
            spread.append(summary[args.set]["psnr_y"])
            print(f"srq seed {seed}   {spread[-1]:.3f} dB")
        result["srq_kmeans_seeds"] = spread
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"srq − coremltools: {result['difference_db']:+.3f} dB → {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
