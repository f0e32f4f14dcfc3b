"""Our 4-bit k-means palettization vs coremltools' PostTrainingPalettizer on one model.

    pip install coremltools   # not a dependency of srq
    python scripts/compare_coremltools.py --model imdn_x4 --set Set5 [--out bench/cmt.json]

Both palettize every Conv2d weight with ≥ 1024 elements, per tensor, 16 entries, FP LUT
(coremltools' default) and FP activations; Set5 Y-PSNR of both is printed and saved.
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
    from coremltools.optimize.torch.palettization import (PostTrainingPalettizer,
                                                          PostTrainingPalettizerConfig)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="imdn_x4")
    parser.add_argument("--set", default="Set5")
    parser.add_argument("--n-bits", type=int, default=4)
    parser.add_argument("--fast-kmeans", action=argparse.BooleanOptionalAction, default=False,
                        help="coremltools' approximate fast k-means (its default: on)")
    parser.add_argument("--out", type=Path, default=Path("bench/coremltools_palettization.json"))
    args = parser.parse_args(argv)
    fp = build_model(args.model)
    sets = [benchmark_set(args.set, fp.scale)]
    ours = copy.deepcopy(fp)
    palettize(ours.net, PalettSpec(n_bits=args.n_bits, lut_bits=None, min_numel=1024))
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"srq − coremltools: {result['difference_db']:+.3f} dB → {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
