"""Lightning module that evaluates an SR model on test sets with srq's metrics."""

from __future__ import annotations

from collections import defaultdict

import lightning as L
import torch
from torch import nn

from srq.data.images import to_uint8
from srq.metrics.sr import sr_image_metrics, summarize
from srq.models.tiling import tiled_forward

METRIC_KEYS = ("psnr_y", "ssim_y", "psnr_rgb")


class SREvaluation(L.LightningModule):
    """Test-only module: ``trainer.test(module, datamodule)`` fills ``records`` and ``summary``.

    Batches are ``(names, lr uint8, hr uint8)`` with batch size 1; dataloader i is set
    ``set_names[i]``. ``tile``: LR tile size for tiled inference (None: whole image).
    ``save_images``: names (``<image>`` or ``<set>/<image>``) whose SR output is written to
    ``save_dir/<set>_<image>.png`` (uint8, as scored).
    """

    def __init__(self, model: nn.Module, scale: int, set_names: list[str], tile: int | None = None,
                 tile_overlap: int = 16, log_images: int = 0, image_crop: int = 128,
                 prefix: str = "", save_dir=None, save_images=()):
        super().__init__()
        self.model = model
        self.scale = scale
        self.set_names = list(set_names)
        self.tile, self.tile_overlap = tile, tile_overlap
        self.log_images, self.image_crop = log_images, image_crop
        self.prefix = prefix
        self.save_dir, self.save_images = save_dir, set(save_images or ())
        self.records: list[dict] = []
        self.summary: dict[str, dict] = {}

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        if self.tile:
            return tiled_forward(self.model, lr, self.scale, self.tile, self.tile_overlap)
        return self.model(lr)

    def on_test_epoch_start(self) -> None:
        self.model.eval()
        self.records = []

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        name, lr, hr = batch
        sr = self(lr.float() / 255.0)
        values = sr_image_metrics(sr, hr, self.scale,
                                  y_output=getattr(self.model, "color", "rgb") != "rgb")
        set_name = self.set_names[dataloader_idx]
        self.records.append({"set": set_name, "image": name,
                             **{k: float(values[k][0]) for k in METRIC_KEYS}})
        if self.save_dir is not None and ({name, f"{set_name}/{name}"} & self.save_images):
            from pathlib import Path

            from srq.data.images import write_png

            Path(self.save_dir).mkdir(parents=True, exist_ok=True)
            write_png(to_uint8(sr[0]), Path(self.save_dir) / f"{set_name}_{name}.png")
        if batch_idx < self.log_images:
            self._log_crop(set_name, name, sr, hr)

    def on_test_epoch_end(self) -> None:
        per_set: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for rec in self.records:
            for key in METRIC_KEYS:
                per_set[rec["set"]][key].append(rec[key])
        self.summary = {s: summarize(per_set[s]) for s in self.set_names if s in per_set}
        for set_name, summary in self.summary.items():
            for key in METRIC_KEYS:
                self.log(f"{self.prefix}{set_name}/{key}", summary[key], add_dataloader_idx=False)

    def _log_crop(self, set_name: str, name: str, sr: torch.Tensor, hr: torch.Tensor) -> None:
        image_loggers = [lg for lg in self.loggers if hasattr(lg, "log_image")]
        if not image_loggers:
            return
        c = self.image_crop
        h, w = hr.shape[-2:]
        y0, x0 = max(0, (h - c) // 2), max(0, (w - c) // 2)
        crop_sr = to_uint8(sr[0, :, y0:y0 + c, x0:x0 + c]).permute(1, 2, 0).cpu().numpy()
        crop_hr = hr[0, :, y0:y0 + c, x0:x0 + c].permute(1, 2, 0).cpu().numpy()
        for logger in image_loggers:
            logger.log_image(key=f"{self.prefix}{set_name}/{name}", images=[crop_sr, crop_hr],
                             caption=["SR", "HR"])


def evaluate_sets(model: nn.Module, sets, trainer: L.Trainer | None = None, num_workers: int = 0,
                  **module_kwargs) -> tuple[dict[str, dict], list[dict], float]:
    """Evaluate ``model`` (an SRNet) on ``sets`` (SRPairs): ({set: summary}, records, seconds).

    ``trainer``: a configured Lightning Trainer; default: CPU/GPU auto, no logger, no bar.
    """
    import time

    from srq.data.benchmark import BenchmarkDataModule

    if trainer is None:
        trainer = L.Trainer(accelerator="auto", devices=1, logger=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False)
    module = SREvaluation(model, model.scale, [s.name for s in sets], **module_kwargs)
    start = time.perf_counter()
    trainer.test(module, datamodule=BenchmarkDataModule(sets, num_workers), verbose=False)
    return module.summary, module.records, time.perf_counter() - start
