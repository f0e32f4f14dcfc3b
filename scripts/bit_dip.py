"""Why a PTQ result can be worse at 3 bits than at 2: how much of the body's residual survives.

    python scripts/bit_dip.py --model imdn_x4 --method mse --bits w2a2,w3a3,w4a4 --body net.LR_conv

SR nets add a deep body's output to a shallow skip (IMDN: ``upsampler(LR_conv(body) + fea)``,
LMLT: ``to_img(feats(y) + y)``). ``--body`` names the module whose output is that residual.
For the FP model and each bit-width this prints the PSNR, the PSNR with the residual zeroed
(the skip-only net), and, on the benchmark images, the residual's relative size
‖r_q‖ / ‖r_FP‖ and its cosine with the FP residual, plus the share of body weights (not the 8-bit
edge layers) quantized to 0. Writes JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from srq.data.benchmark import benchmark_set
from srq.lit.evaluate import evaluate_sets
from srq.models.zoo import build_model
from srq.quant import wrapped_modules
from srq.quant.modules import QuantModule
from srq.run import quantize_from_config


class ResidualProbe:
    """Forward hook on the body module: records Σ‖r‖², Σ‖r_ref‖², Σ⟨r, r_ref⟩ against the
    reference outputs it recorded first (``record``), or zeroes the output (``zero``)."""

    def __init__(self, module: torch.nn.Module):
        self.mode, self.ref, self.i, self.stats = "record", [], 0, [0.0, 0.0, 0.0]
        module.register_forward_hook(self._hook)

    def _hook(self, mod, args, out):
        if self.mode == "zero":
            return torch.zeros_like(out)
        if self.mode == "record":
            self.ref.append(out.detach().double())
        elif self.mode == "compare":
            ref, r = self.ref[self.i], out.detach().double()
            self.i += 1
            self.stats[0] += float((r * r).sum())
            self.stats[1] += float((ref * ref).sum())
            self.stats[2] += float((r * ref).sum())
        return None

    def compare(self):
        self.mode, self.i, self.stats = "compare", 0, [0.0, 0.0, 0.0]

    def summary(self) -> dict:
        rr, ff, rf = self.stats
        return {"residual_norm_ratio": round((rr / ff) ** 0.5, 4),
                "residual_cosine": round(rf / (rr * ff) ** 0.5, 4) if rr > 0 else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="imdn_x4")
    parser.add_argument("--method", default="mse")
    parser.add_argument("--bits", default="w2a2,w3a3,w4a4")
    parser.add_argument("--body", default="net.LR_conv", help="module whose output is the residual")
    parser.add_argument("--set", default="Set5")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override")
    parser.add_argument("--out", type=Path, default=Path("bench/bit_dip.json"))
    args = parser.parse_args(argv)
    teacher = build_model(args.model)
    sets = [benchmark_set(args.set, teacher.scale)]

    def psnr(model) -> float:
        with torch.no_grad():
            summary, _, _ = evaluate_sets(model, sets)
        return round(summary[args.set]["psnr_y"], 3)

    fp_probe = ResidualProbe(dict(teacher.named_modules())[args.body])
    rows = [{"bits": "fp32", "psnr": psnr(teacher)}]
    fp_probe.mode = "zero"
    rows[0]["psnr_residual_zeroed"] = psnr(teacher)
    fp_probe.mode = "off"
    for bits in args.bits.split(","):
        with initialize_config_module(config_module="srq.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=[
                f"model={args.model}", f"method={args.method}", f"bits={bits}", "logger=none",
                *args.override])
        student = quantize_from_config(cfg, teacher)[2].model
        probe = ResidualProbe(dict(student.named_modules())[args.body])
        probe.ref = fp_probe.ref  # FP residuals, recorded on the same images in the same order
        probe.compare()
        row = {"bits": bits, "psnr": psnr(student), **probe.summary()}
        probe.mode = "zero"
        row["psnr_residual_zeroed"] = psnr(student)
        body = [m for n, m in wrapped_modules(student) if isinstance(m, QuantModule)
                and not m.is_edge and m.weight_quantizer is not None]
        zeros = sum(int((m.module.weight == 0).sum()) for m in body)  # frozen: W holds Q(W)
        row["body_weight_zero_share"] = round(zeros / sum(m.module.weight.numel() for m in body), 4)
        rows.append(row)
        print(json.dumps(row))
    print(json.dumps(rows[0]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "method": args.method, "set": args.set,
                                    "body": args.body, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
