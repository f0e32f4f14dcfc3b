"""Running a teacher/student fine-tune inside ``srq``: loaders, Trainer, checkpoint, resume."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader

from srq.data.calibration import CalibrationConfig, CalibrationPatches
from srq.errors import SrqError
from srq.lit.distill import AtomicLastCheckpoint, DistillationModule, EpochSeededSampler


def finetune_data(run_cfg, method_cfg, scale: int):
    """(training patches, held-out validation patches or None, description): the calib group
    with the method's ``calib`` overrides; validation patches: same source, seed + 1."""
    own = dict(method_cfg.get("calib") or {})
    c = {**dict(run_cfg.calib), **{k: v for k, v in own.items() if v is not None}}
    # the method's patch_size: null means 384/scale (the paper's 96 at ×4), not the calib group's
    patch = (own["patch_size"] or 384 // scale) if "patch_size" in own else c["patch_size"]
    common = dict(source=c["source"], patch_size=int(patch), folder=c.get("folder"),
                  folder_is_hr=c.get("folder_is_hr", True), set_name=c.get("set_name", "B100"))
    train = CalibrationPatches(CalibrationConfig(num_patches=int(c["num_patches"]),
                                                 seed=int(c["seed"]), **common), scale)
    n_val = int(c.get("val_patches") or 0)
    val = CalibrationPatches(CalibrationConfig(num_patches=max(n_val, 1), seed=int(c["seed"]) + 1,
                                               **common), scale) if n_val else None
    return train, val, {"source": c["source"], "num_patches": len(train), "patch_size": int(patch),
                        "batch_size": int(c["batch_size"]), "val_patches": n_val}


def more_patches(patches: CalibrationPatches, n: int, scale: int, seed_offset: int = 2
                 ) -> CalibrationPatches:
    """``n`` further patches from the same source and size, drawn with seed + ``seed_offset``."""
    c = patches.cfg
    return CalibrationPatches(CalibrationConfig(
        source=c.source, num_patches=int(n), patch_size=c.patch_size, seed=c.seed + seed_offset,
        folder=c.folder, folder_is_hr=c.folder_is_hr, set_name=c.set_name), scale)


def fit(module: DistillationModule, train, val, batch_size: int, context, epochs: int | None = None,
        steps: int | None = None, callbacks=()) -> dict:
    """Fine-tune ``module`` with the run's ``trainer`` config for ``epochs`` or ``steps``;
    ``<run dir>/checkpoints/last.ckpt`` after each epoch; ``context['resume']`` continues a
    checkpoint. Returns the common part of results.json's ``finetune``."""
    import hydra

    run_cfg = context["cfg"]
    loader = DataLoader(train, batch_size=batch_size, drop_last=len(train) >= batch_size,
                        sampler=EpochSeededSampler(len(train), int(run_cfg.seed)))
    val_loader = DataLoader(val, batch_size=4) if val is not None else None
    run_dir = Path(context.get("run_dir") or run_cfg.paths.output_dir)
    checkpoint = AtomicLastCheckpoint(run_dir / "checkpoints")
    length = {"max_epochs": int(epochs)} if steps is None else {"max_steps": int(steps), "max_epochs": -1}
    trainer = hydra.utils.instantiate(
        run_cfg.trainer, **length, logger=context.get("loggers") or False,
        callbacks=[*callbacks, checkpoint], enable_checkpointing=False,
        log_every_n_steps=max(1, min(10, len(loader))), num_sanity_val_steps=0,
        limit_val_batches=1.0 if val_loader is not None else 0)
    resume = context.get("resume")
    try:
        trainer.fit(module, loader, val_loader, ckpt_path=resume)
    except FloatingPointError as exc:
        raise SrqError(str(exc)) from exc
    finally:
        module.teacher.requires_grad_(False)
        module.student.requires_grad_(False)
    if trainer.interrupted:
        raise SrqError(f"fine-tuning was interrupted; resume with resume={run_dir}")
    val_psnr = trainer.callback_metrics.get("val/psnr_y_vs_fp")
    return {"steps": int(trainer.global_step), "batch_size": int(batch_size), "patches": len(train),
            "val_psnr_y_vs_fp": None if val_psnr is None else round(float(val_psnr), 4),
            "checkpoint": str(checkpoint.path), "resumed_from": resume}
