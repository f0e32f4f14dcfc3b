"""Running a teacher/student fine-tune: loaders, Lightning Trainer, atomic checkpoint, resume.

A :class:`Fitter` is the fit hook methods receive: ``fitter(module, train, val, batch_size,
epochs=… | steps=…, callbacks=…)``. The library default trains on the model's device with no
logger and no checkpoint; the ``srq`` app builds one from the run's ``trainer`` config, its
loggers, ``<run dir>/checkpoints`` and ``resume=``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from torch.utils.data import DataLoader

from srq.errors import SrqError
from srq.lit.distill import AtomicLastCheckpoint, DistillationModule, EpochSeededSampler


def default_trainer(**kwargs) -> L.Trainer:
    """A quiet single-device Trainer on the best accelerator (progress bar on)."""
    options = dict(accelerator="auto", devices=1, logger=False, enable_model_summary=False,
                   enable_checkpointing=False)
    options.update(kwargs)
    return L.Trainer(**options)


class Fitter:
    """Fine-tune a :class:`DistillationModule` for ``epochs`` or ``steps``.

    ``trainer``: a factory ``(**options) -> Trainer`` (default :func:`default_trainer`);
    ``checkpoint_dir``: where ``last.ckpt`` goes after each epoch (None: no checkpoint);
    ``resume``: a checkpoint to continue; ``seed``: the per-epoch shuffling seed.
    """

    def __init__(self, trainer: Callable[..., L.Trainer] | None = None,
                 checkpoint_dir: str | Path | None = None, resume: str | None = None,
                 seed: int = 0, loggers=None):
        self.trainer = trainer or default_trainer
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.resume, self.seed, self.loggers = resume, int(seed), loggers

    def __call__(self, module: DistillationModule, train, val, batch_size: int,
                 epochs: int | None = None, steps: int | None = None, callbacks=()) -> dict:
        """Returns the common part of results.json's ``finetune``."""
        loader = DataLoader(train, batch_size=batch_size, drop_last=len(train) >= batch_size,
                            sampler=EpochSeededSampler(len(train), self.seed))
        val_loader = DataLoader(val, batch_size=4) if val is not None and len(val) else None
        checkpoint = AtomicLastCheckpoint(self.checkpoint_dir) if self.checkpoint_dir else None
        length = {"max_epochs": int(epochs)} if steps is None else {"max_steps": int(steps), "max_epochs": -1}
        options = {}
        if self.trainer is default_trainer:  # train where the model is
            device = next(module.student.parameters()).device
            options["accelerator"] = "gpu" if device.type == "cuda" else "cpu"
        callbacks = [*callbacks, *([checkpoint] if checkpoint else [])]
        trainer = self.trainer(
            **options, **length, logger=self.loggers or False, callbacks=callbacks,
            enable_checkpointing=False, log_every_n_steps=max(1, min(10, len(loader))),
            num_sanity_val_steps=0, limit_val_batches=1.0 if val_loader is not None else 0)
        # one progress bar whether or not `rich` is installed: Lightning picks RichProgressBar
        # when it is, which shows step-based runs as "Epoch 0/-2"; a bar the caller chose stays
        for i, c in enumerate(trainer.callbacks):
            if isinstance(c, RichProgressBar) and not any(c is mine for mine in callbacks):
                trainer.callbacks[i] = TQDMProgressBar()
        try:
            trainer.fit(module, loader, val_loader, ckpt_path=self.resume)
        except FloatingPointError as exc:
            raise SrqError(str(exc)) from exc
        finally:
            module.teacher.requires_grad_(False)
            module.student.requires_grad_(False)
        if trainer.interrupted:
            where = f"resume with resume={self.checkpoint_dir.parent}" if checkpoint else "run it again"
            raise SrqError(f"fine-tuning was interrupted; {where}")
        val_psnr = trainer.callback_metrics.get("val/psnr_y_vs_fp")
        return {"steps": int(trainer.global_step), "batch_size": int(batch_size), "patches": len(train),
                "val_psnr_y_vs_fp": None if val_psnr is None else round(float(val_psnr), 4),
                "checkpoint": str(checkpoint.path) if checkpoint else None,
                "resumed_from": self.resume}


__all__ = ["Fitter", "default_trainer"]
