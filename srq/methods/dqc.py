"""2DQuant = DOBI + DQC (distillation quantization calibration, METHODS.md §5.4).

After DOBI, every quantizer's (l, u) trains (weights, biases, norms stay fixed) to match the
FP teacher: L = L_O + λ·L_F, L_O the mean L1 between outputs, L_F the normalized distance of
the feature-block outputs (catalog.FEATURE_BLOCKS; SwinIR: the four residual groups). Adam
with the preset's lr, betas, schedule, iterations and batch; the last step is kept (no
checkpoint is ever picked on a test set); LR patches only.
"""

from __future__ import annotations

import time
from pathlib import Path

from torch.utils.data import DataLoader

from srq.data.calibration import CalibrationConfig, CalibrationPatches
from srq.errors import SrqError
from srq.lit.distill import AtomicLastCheckpoint, DistillationModule, EpochSeededSampler
from srq.lit.losses import NormalizedFeatureLoss, OutputL1, WeightedSum
from srq.methods.dobi import DOBIInit
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
        import hydra

        from srq.methods import MethodResult

        run_cfg, q = context["cfg"], self.cfg.dqc
        student, train, val, info, t_calib = self.prepare(teacher, context)
        start = time.perf_counter()
        if q.get("num_patches"):  # DQC's own training patches (same source, seed + 2)
            c = train.cfg
            train = CalibrationPatches(CalibrationConfig(
                source=c.source, num_patches=int(q.num_patches), patch_size=c.patch_size,
                seed=c.seed + 2, folder=c.folder, folder_is_hr=c.folder_is_hr,
                set_name=c.set_name), teacher.scale)
        arch = get_spec(run_cfg.model.name).arch
        module = self.distillation_module(teacher, student, arch)
        loader = DataLoader(train, batch_size=int(q.batch_size), drop_last=len(train) >= int(q.batch_size),
                            sampler=EpochSeededSampler(len(train), int(run_cfg.seed)))
        val_loader = DataLoader(val, batch_size=4) if val is not None else None
        run_dir = Path(context.get("run_dir") or run_cfg.paths.output_dir)
        checkpoint = AtomicLastCheckpoint(run_dir / "checkpoints")
        trainer = hydra.utils.instantiate(
            run_cfg.trainer, max_steps=int(q.iterations), max_epochs=-1,
            logger=context.get("loggers") or False, callbacks=[checkpoint],
            enable_checkpointing=False, log_every_n_steps=max(1, min(10, len(loader))),
            num_sanity_val_steps=0, limit_val_batches=1.0 if val_loader is not None else 0)
        resume = context.get("resume")
        try:
            trainer.fit(module, loader, val_loader, ckpt_path=resume)
        finally:
            teacher.requires_grad_(False)
            student.requires_grad_(False)
        if trainer.interrupted:
            raise SrqError(f"DQC was interrupted; resume with resume={run_dir}")
        freeze(student)
        val_psnr = trainer.callback_metrics.get("val/psnr_y_vs_fp")
        info_ft = {"preset": q.preset, "iterations": int(q.iterations), "steps": int(trainer.global_step),
                   "batch_size": int(q.batch_size), "patches": len(train), "lr": float(q.lr), "betas": list(q.betas),
                   "lr_schedule": q.lr_schedule, "feature_blocks": len(module.feature_blocks),
                   "select": "last",
                   "val_psnr_y_vs_fp": None if val_psnr is None else round(float(val_psnr), 4),
                   "checkpoint": str(checkpoint.path), "resumed_from": resume}
        return MethodResult(
            student=student,
            time_s={"calibrate": round(t_calib, 3), "finetune": round(time.perf_counter() - start, 3)},
            info={"calibration": info, "finetune": info_ft, "size_mb": quantized_size_mb(student),
                  "quantization_map": quantization_map(student)})
