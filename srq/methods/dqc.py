"""2DQuant = DOBI + DQC (distillation quantization calibration, METHODS.md §5.4).

After DOBI, every quantizer's (l, u) trains (weights, biases, norms stay fixed) to match the
FP teacher: L = L_O + λ·L_F, L_O the mean L1 between outputs, L_F the normalized distance of
the feature-block outputs (catalog.FEATURE_BLOCKS; SwinIR: the four residual groups). Adam
with the preset's lr, betas, schedule, iterations and batch; the last step is kept (no
checkpoint is ever picked on a test set); LR patches only.
"""

from __future__ import annotations

import time

from srq.lit.distill import DistillationModule
from srq.lit.losses import NormalizedFeatureLoss, OutputL1, WeightedSum
from srq.methods.dobi import DOBIInit
from srq.methods.finetune import fit, more_patches
from srq.models.zoo import feature_blocks, get_spec
from srq.quant import freeze, quantization_map, quantizers
from srq.quant.size import quantized_size_mb


class TwoDQuant(DOBIInit):
    def distillation_module(self, teacher, student, arch: str) -> DistillationModule:
        q = self.cfg.dqc
        blocks = feature_blocks(teacher, arch) if float(q.feat_weight) > 0 else []
        terms = {"out": (1.0, OutputL1())}
        if blocks:
            terms["feat"] = (float(q.feat_weight), NormalizedFeatureLoss(
                blocks, norm="per_sample", distance=q.feat_distance, layer_reduce="sum"))
        bounds = [p for _, qz in quantizers(student) for p in qz.learnable().values()]
        module = DistillationModule(
            teacher, student, WeightedSum(terms), {"bounds": bounds}, [["bounds"]],
            lr=float(q.lr), betas=tuple(q.betas), lr_schedule=q.lr_schedule,
            total_steps=int(q.iterations), projections=[qz.project_ for _, qz in quantizers(student)],
            scale=teacher.scale)
        module.feature_blocks = blocks
        return module

    def apply(self, teacher, context):
        from srq.methods import MethodResult

        run_cfg, q = context["cfg"], self.cfg.dqc
        student, train, val, info, t_calib = self.prepare(teacher, context)
        start = time.perf_counter()
        if q.get("num_patches"):  # DQC's own training patches (same source, seed + 2)
            train = more_patches(train, int(q.num_patches), teacher.scale)
        module = self.distillation_module(teacher, student, get_spec(run_cfg.model.name).arch)
        common = fit(module, train, val, int(q.batch_size), context, steps=int(q.iterations))
        freeze(student)
        info_ft = {"preset": q.preset, "iterations": int(q.iterations), **common, "lr": float(q.lr),
                   "betas": list(q.betas), "lr_schedule": q.lr_schedule,
                   "feature_blocks": len(module.feature_blocks), "select": "last"}
        return MethodResult(
            student=student,
            time_s={"calibrate": round(t_calib, 3), "finetune": round(time.perf_counter() - start, 3)},
            info={"calibration": info, "finetune": info_ft, "size_mb": quantized_size_mb(student),
                  "quantization_map": quantization_map(student)})
