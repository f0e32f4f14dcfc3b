"""Where a PTQ result loses PSNR: weights vs activations, and each activation quantizer alone.

    python scripts/quant_loss_breakdown.py --model imdn_x4 --method minmax --bits w8a8 --top 10
    python scripts/quant_loss_breakdown.py --quantized outputs/runs/<run>/<name>.srq

Runs the method once (its calibration), or loads a saved ``.srq`` artifact, then evaluates the
frozen student with (a) every quantizer, (b) weight quantizers only, (c) activation quantizers
only, (d) all but one activation quantizer, for each of them, and with ``--layers`` (e) each
layer's weights back to FP in turn; prints the drops vs FP and writes JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

import srq

from srq.data.benchmark import benchmark_set
from srq.lit.evaluate import evaluate_sets
from srq.models.zoo import build_model
from srq.run import quantize_from_config
from srq.quant import wrapped_modules
from srq.quant.modules import QuantModule
from srq.quant.rotation import fwht


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="imdn_x4")
    parser.add_argument("--method", default="minmax")
    parser.add_argument("--bits", default="w8a8")
    parser.add_argument("--set", default="Set5", help="a benchmark set, or val (the validation "
                        "split of T91: for diagnoses that steer a choice)")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--layers", action="store_true",
                        help="also each layer's weights back to FP, one at a time")
    parser.add_argument("--quantized", type=Path, default=None,
                        help="a saved .srq artifact to break down instead of running --method")
    parser.add_argument("--out", type=Path, default=Path("bench/quant_loss_breakdown.json"))
    args = parser.parse_args(argv)
    if args.quantized is not None:
        student = srq.load(args.quantized)
        args.model = student.srq_name
        args.method, args.bits = student.srq_method["method"], student.srq_method["bits"]
    teacher = build_model(args.model)
    if args.set == "val":
        from srq.data.validation import ValidationConfig, validation_set

        sets = [validation_set(ValidationConfig(), teacher.scale)]
    else:
        sets = [benchmark_set(args.set, teacher.scale)]

    def psnr(model) -> float:
        with torch.no_grad():
            summary, _, _ = evaluate_sets(model, sets)
        return summary[args.set]["psnr_y"]

    if args.quantized is None:
        with initialize_config_module(config_module="srq.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=[
                f"model={args.model}", f"method={args.method}", f"bits={args.bits}", "logger=none"])
        student = quantize_from_config(cfg, teacher)[2].model
    layers = [(n, m) for n, m in wrapped_modules(student) if isinstance(m, QuantModule)]
    fp_weights = dict(teacher.named_parameters())

    def fp_weight(name, module):
        """The teacher's weight as ``module`` stores it (W H where its input is rotated)."""
        w = fp_weights[f"{name}.weight"].detach().clone()
        return fwht(w, dim=1) if getattr(module, "input_rotation", None) == "hadamard" else w
    # a frozen layer's weight is its quantized value; "off" puts the teacher's FP weight back
    weights = {id(m): (m.module.weight.detach().clone(), fp_weight(n, m)) for n, m in layers}
    acts = [(f"{name}.{role}", q) for name, m in wrapped_modules(student)  # a MatMul's 2nd operand too
            for role in ("input", "other", "output")
            if (q := getattr(m, f"{role}_quantizer", None)) is not None]

    def set_weights(on: bool):
        with torch.no_grad():
            for _, m in layers:
                m.module.weight.copy_(weights[id(m)][0 if on else 1])

    def set_acts(on: bool):
        for _, q in acts:
            q.enabled = on

    fp = psnr(teacher)
    result = {"model": args.model, "method": args.method, "bits": args.bits, "set": args.set,
              "quantized": None if args.quantized is None else str(args.quantized),
              "fp": fp, "all": psnr(student)}
    set_acts(False)
    result["weights_only"] = psnr(student)
    set_acts(True)
    set_weights(False)
    result["activations_only"] = psnr(student)
    set_acts(False)  # every quantizer off must give the FP model back (rotations included)
    result["none"] = psnr(student)
    set_acts(True)
    set_weights(True)
    if abs(result["none"] - fp) > 0.01:
        print(f"warning: with every quantizer off the student reads {result['none']:.3f}, not FP "
              f"{fp:.3f}: the breakdown below does not separate weights from activations")
    gains = []
    for name, q in acts:
        q.enabled = False
        gains.append((psnr(student) - result["all"], name))
        q.enabled = True
    gains.sort(reverse=True)
    result["activation_quantizer_gain_when_off"] = {n: round(g, 4) for g, n in gains}
    layer_gains = []
    for name, m in layers if args.layers else []:
        with torch.no_grad():
            m.module.weight.copy_(weights[id(m)][1])
            layer_gains.append((psnr(student) - result["all"], name))
            m.module.weight.copy_(weights[id(m)][0])
    layer_gains.sort(reverse=True)
    if args.layers:
        result["weight_fp_gain_per_layer"] = {n: round(g, 4) for g, n in layer_gains}
    for key in ("all", "weights_only", "activations_only"):
        print(f"{key:18s} {result[key]:.3f} ({result[key] - fp:+.3f} vs FP {fp:.3f})")
    for g, n in gains[: args.top]:
        print(f"  off: {n:45s} {g:+.3f}")
    for g, n in layer_gains[: args.top]:
        print(f"  FP weights: {n:38s} {g:+.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
