"""Teacher/student fine-tuning of quantization parameters (LightningModule).

A frozen FP **teacher** and a quantized **student**; only the parameters listed in
``param_groups`` train, each group with its own Adam (so a group that sits out an epoch
keeps its moments); the learning rate is a pure function of (epoch, step) — ``lr_schedule``
``exponential`` lr·γ^epoch, ``cosine`` over ``total_steps`` or ``constant`` — set before
every step, so a resumed run follows the same schedule. ``schedule`` says which groups
train in which epoch (cycled: ``[["u_w"], ["l_a", "u_a"], ["bp"]]`` is SAFT's staged
alternation). The objective is any :class:`srq.lit.losses.WeightedSum`; features of the
layers it names are tapped on both networks every step. Quantizer bounds are projected back
into their valid range after every step. Checkpoints hold the student, optimizers,
and loop state, not the teacher. ``crop``: each step trains on one random crop×crop window
of the LR batch (cheaper steps, more positions).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import Sampler

from srq.lit.losses import FeatureTaps, WeightedSum
from srq.metrics.sr import sr_image_metrics
from srq.quant.reconstruct import apply_crop, crop_window

LR_SCHEDULES = ("exponential", "cosine", "constant")


class EpochSeededSampler(Sampler[int]):
    """A random permutation per epoch drawn from ``seed + epoch``: the order of epoch e is the
    same whether training ran straight through or resumed from a checkpoint."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


class DistillationModule(L.LightningModule):
    """Fine-tune the student's ``param_groups`` to match the teacher under ``objective``."""

    def __init__(self, teacher: nn.Module, student: nn.Module, objective: WeightedSum,
                 param_groups: dict[str, list[nn.Parameter]], schedule: list[list[str]],
                 lr: float = 1e-3, gamma: float = 0.9, projections=(), scale: int = 4,
                 feature_site: str = "output", lr_schedule: str = "exponential",
                 total_steps: int | None = None, betas: tuple[float, float] = (0.9, 0.999),
                 crop: int | None = None, crop_multiple: int = 1, seed: int = 0):
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
        if lr_schedule == "cosine" and not total_steps:
            raise ValueError("the cosine schedule needs total_steps")
        groups = {k: v for k, v in param_groups.items() if v}
        if not groups:
            raise ValueError("nothing to fine-tune: every parameter group is empty")
        unknown = sorted({g for epoch in schedule for g in epoch} - set(param_groups))
        if unknown:
            raise ValueError(f"schedule names unknown parameter groups {unknown}; "
                             f"known: {sorted(param_groups)}")
        self.schedule = [[g for g in epoch if g in groups] for epoch in schedule]
        self.group_names = list(groups)
        self.teacher, self.student = teacher, student
        self.teacher.requires_grad_(False)
        self.student.requires_grad_(False)
        for params in groups.values():
            for p in params:
                (p[0] if isinstance(p, tuple) else p).requires_grad_(True)
        self._groups = groups
        self.objective = objective
        self.lr, self.gamma, self.betas = lr, gamma, tuple(betas)
        self.lr_schedule, self.total_steps = lr_schedule, total_steps
        self.projections = list(projections)
        self.scale = scale
        self.feature_site = feature_site
        self.crop, self.crop_multiple, self.seed = crop, int(crop_multiple), int(seed)
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints leave the teacher out

    def active_groups(self, epoch: int) -> list[str]:
        return self.schedule[epoch % len(self.schedule)]

    def activate(self, epoch: int) -> list[str]:
        """Gradients on for the groups that train in ``epoch``, off for the rest (no backward
        work for a group sitting out); returns their names."""
        active = self.active_groups(epoch)
        for name, params in self._groups.items():
            for p in params:
                (p[0] if isinstance(p, tuple) else p).requires_grad_(name in active)
        return active

    def _optimizers(self) -> list:
        optimizers = self.optimizers()
        return optimizers if isinstance(optimizers, list) else [optimizers]

    def lr_at(self, epoch: int, step: int) -> float:
        if self.lr_schedule == "exponential":
            return self.lr * self.gamma**epoch
        if self.lr_schedule == "cosine":
            return 0.5 * self.lr * (1 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))
        return self.lr

    def on_train_epoch_start(self) -> None:
        self.teacher.eval()
        self.student.eval()  # no dropout/BN in SR nets; quantizers behave the same

    def on_train_batch_start(self, batch, batch_idx) -> None:
        lr = self.lr_at(self.current_epoch, self.global_step)
        for opt in self._optimizers():
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)

    def _forward_pair(self, x):
        """Outputs and tapped features of both networks; inputs tapped for losses that
        name ``input_names`` are keyed ``"<name>#input"``."""
        names, inputs = self.objective.tapped, getattr(self.objective, "tapped_inputs", [])
        with torch.no_grad(), FeatureTaps(self.teacher, names, self.feature_site) as t_taps, \
                FeatureTaps(self.teacher, inputs, "input") as t_in:
            out_t = self.teacher(x)
        with FeatureTaps(self.student, names, self.feature_site) as s_taps, \
                FeatureTaps(self.student, inputs, "input") as s_in:
            out_s = self.student(x)
        fs = {**s_taps.features, **{f"{k}#input": v for k, v in s_in.features.items()}}
        ft = {**t_taps.features, **{f"{k}#input": v for k, v in t_in.features.items()}}
        return out_s, out_t, fs, ft

    def crop_batch(self, batch):
        """One random ``crop``×``crop`` window (floored to ``crop_multiple``) of the LR batch,
        drawn from (seed, global step), so a resumed run draws the same windows; the batch
        itself when ``crop`` is None or no smaller than the batch."""
        if self.crop is None:
            return batch
        generator = torch.Generator(device=batch.device).manual_seed(
            self.seed * 1_000_003 + int(self.global_step))
        return apply_crop(batch, crop_window([batch], self.crop, generator, self.crop_multiple))

    def training_step(self, batch, batch_idx):
        batch = self.crop_batch(batch)
        active = self.activate(self.current_epoch)
        by_name = dict(zip(self.group_names, self._optimizers()))
        out_s, out_t, fs, ft = self._forward_pair(batch)
        loss = self.objective(out_s, out_t, fs, ft)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fine-tuning loss became {float(loss)} at epoch "
                                     f"{self.current_epoch}, step {batch_idx}; lower method.finetune.lr")
        if active:
            for name in active:
                by_name[name].zero_grad()
            self.manual_backward(loss)
            for name in active:
                by_name[name].step()
            for project in self.projections:
                project()
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=batch.shape[0])
        self.log("train/lr", self.lr_at(self.current_epoch, self.global_step), on_step=False, on_epoch=True,
                 batch_size=batch.shape[0])
        for name, value in self.objective.parts.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=batch.shape[0])
        return loss.detach()

    def validation_step(self, batch, batch_idx):
        """Y-PSNR of the student against the teacher's uint8 output (no HR needed)."""
        with torch.no_grad():
            reference = (self.teacher(batch).clamp(0, 1) * 255).round().to(torch.uint8)
            psnr = sr_image_metrics(self.student(batch), reference, self.scale)["psnr_y"]
        self.log("val/psnr_y_vs_fp", psnr.clamp(max=100).mean().float(), prog_bar=True,
                 on_epoch=True, batch_size=batch.shape[0])

    def configure_optimizers(self):
        return [torch.optim.Adam(self._param_groups(self._groups[name]), lr=self.lr, betas=self.betas)
                for name in self.group_names]

    @staticmethod
    def _param_groups(params) -> list[dict]:
        """Parameters or (parameter, lr_scale) pairs → Adam param groups (a relative
        parametrisation l = l₀ + (u₀ − l₀)θ is, for Adam, a per-parameter lr ∝ u₀ − l₀)."""
        groups = []
        for p in params:
            param, scale = p if isinstance(p, tuple) else (p, 1.0)
            groups.append({"params": [param], "lr_scale": float(scale)})
        return groups

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if not k.startswith("teacher.")}


class AtomicLastCheckpoint(L.Callback):
    """``<dir>/last.ckpt`` after every training epoch, written to a temporary file and
    renamed, so an interruption never leaves a half-written checkpoint."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    @property
    def path(self) -> Path:
        return self.directory / "last.ckpt"

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".last.ckpt.{os.getpid()}.tmp"
        trainer.save_checkpoint(tmp)
        os.replace(tmp, self.path)


__all__ = ["AtomicLastCheckpoint", "DistillationModule", "EpochSeededSampler"]
