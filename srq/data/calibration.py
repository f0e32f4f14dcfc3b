"""Calibration / fine-tuning data: LR patches drawn with a fixed seed, never from a test set.

Sources: ``t91`` (HR training images; an HR crop of ``patch·scale`` is MATLAB-bicubic
downsampled to an LR patch, so even small images give patches at ×4), ``div2k_lr``
(the DIV2K LR ×4 subset; LR crops taken directly), ``folder`` (any folder, HR or LR),
``benchmark`` (the first N whole images of a benchmark set, for calibration/evaluation
splits such as seed 000's 20/80 B100 split).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from srq.data.images import imresize, list_images, read_image, to_float
from srq.data.store import fetch_folder
from srq.errors import SrqError

CALIBRATION_SOURCES = ("t91", "div2k_lr", "folder", "benchmark")


@dataclass(frozen=True)
class CalibrationConfig:
    """Which LR patches to draw: ``num_patches`` of ``patch_size``² from ``source``.

    ``benchmark``: the first ``num_patches`` whole LR images of benchmark set ``set_name``
    (sorted by file name), e.g. seed 000's 20 B100 calibration images; evaluate on the rest
    (``data=b100_coreai``), never on these.
    """

    source: str = "t91"
    num_patches: int = 32
    patch_size: int = 64
    seed: int = 0
    folder: str | None = None
    folder_is_hr: bool = True
    set_name: str = "B100"

    def __post_init__(self):
        if self.source not in CALIBRATION_SOURCES:
            raise SrqError(f"unknown calibration source {self.source!r}; valid: "
                           f"{', '.join(CALIBRATION_SOURCES)}")
        if self.source == "folder" and not self.folder:
            raise SrqError("calibration source 'folder' needs calib.folder=<dir>")
        if self.num_patches < 1 or self.patch_size < 1:
            raise SrqError("the calibration set is empty: calib.num_patches and "
                           "calib.patch_size must be at least 1")


class CalibrationPatches(Dataset):
    """Float LR calibration inputs (3, p, p) in [0, 1], drawn once with ``seed``.

    For HR sources: image i uniformly among those with an HR side ≥ p·scale, a uniform
    crop of p·scale, then MATLAB bicubic ×1/scale (the HR crop is kept in ``hr`` for
    methods that need ground truth). For LR sources: a uniform p×p crop. For
    ``benchmark``: whole LR images (sizes differ; ``patches`` is then unavailable).
    """

    def __init__(self, cfg: CalibrationConfig, scale: int, exclude: frozenset[int] = frozenset()):
        """``exclude``: indices of source images not to draw from (those that gave other
        patches); when every usable image is excluded all are used and ``disjoint`` is False."""
        self.cfg, self.scale = cfg, scale
        self.disjoint = True
        self.items: list[torch.Tensor] = []
        self.hr: list[torch.Tensor] = []
        self.sources: list[int] = []     # per patch: index of its image in ``images``
        self.images: list[torch.Tensor] = []  # the source images (uint8), LR or HR
        self.images_are_hr = True
        if cfg.source == "benchmark":
            from srq.data.benchmark import benchmark_set

            pairs = benchmark_set(cfg.set_name, scale)
            self.images_are_hr = False
            order = self._candidates(len(pairs), exclude)
            for i in order[: cfg.num_patches]:
                _, lr, hr = pairs[i]
                self.items.append(to_float(lr))
                self.hr.append(to_float(hr))
                self.images.append(lr)
                self.sources.append(len(self.images) - 1)
            self.usable_images = len(pairs)
            return
        if cfg.source == "t91":
            paths, is_hr = fetch_folder("calib/T91/"), True
        elif cfg.source == "div2k_lr":
            if scale != 4:
                raise SrqError(f"calibration source div2k_lr holds x4 LR images; a x{scale} model "
                               "needs LR at its own scale: use calib.source=t91 (or "
                               "method.calib.source=t91), which downsamples HR crops by the scale")
            paths, is_hr = fetch_folder("calib/DIV2K_test_LRx4_subset/"), False
        else:
            paths, is_hr = list_images(cfg.folder), cfg.folder_is_hr
        self.images_are_hr = is_hr
        crop = cfg.patch_size * scale if is_hr else cfg.patch_size
        images = [read_image(p) for p in paths]
        usable = [im for im in images if min(im.shape[-2:]) >= crop]
        self.images, self.usable_images = usable, len(usable)
        if not usable:
            raise SrqError(f"no calibration image is at least {crop}x{crop} pixels; lower "
                           "calib.patch_size or use another calib.source")
        gen = torch.Generator().manual_seed(cfg.seed)
        candidates = self._candidates(len(usable), exclude)
        for _ in range(cfg.num_patches):
            index = candidates[int(torch.randint(len(candidates), (1,), generator=gen))]
            self.sources.append(index)
            img = usable[index]
            h, w = img.shape[-2:]
            y = int(torch.randint(h - crop + 1, (1,), generator=gen))
            x = int(torch.randint(w - crop + 1, (1,), generator=gen))
            patch = to_float(img[:, y:y + crop, x:x + crop])
            if is_hr:
                self.hr.append(patch)
                patch = imresize(patch, 1.0 / scale).clamp(0, 1)
                patch = (patch * 255).round() / 255  # LR images are stored as uint8
            self.items.append(patch)

    def _candidates(self, n: int, exclude: frozenset[int]) -> list[int]:
        keep = [i for i in range(n) if i not in exclude]
        if not keep:
            self.disjoint = False
            return list(range(n))
        return keep

    def describe(self) -> dict:
        """What results.json's ``calibration`` records about these patches."""
        return {"source": self.cfg.source, "num_patches": len(self), "patch_size": self.cfg.patch_size,
                "source_images": len(set(self.sources)), "usable_images": self.usable_images,
                "seed": self.cfg.seed}

    @property
    def patches(self) -> torch.Tensor:
        """All inputs stacked (N, 3, p, p); only when they share one size."""
        return torch.stack(self.items)

    def batches(self, batch_size: int, with_hr: bool = False):
        """Consecutive batches in a fixed order; whole images of different sizes go one by one."""
        same_size = len({tuple(t.shape) for t in self.items}) == 1
        step = batch_size if same_size else 1
        for start in range(0, len(self.items), step):
            lr = torch.stack(self.items[start:start + step])
            if with_hr:
                if not self.hr:
                    raise SrqError(f"calibration source {self.cfg.source} has no HR images; "
                                   "use calib=t91 (or a folder of HR images)")
                yield lr, torch.stack(self.hr[start:start + step])
            else:
                yield lr

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.items[index]


@dataclass
class CalibrationData:
    """Everything a method gets from the one calibration builder: ``calib`` patches (seed),
    held-out ``val`` patches (seed + 1) and fine-tuning ``train`` patches (seed + 2)."""

    calib: CalibrationPatches
    val: CalibrationPatches | None = None
    train: CalibrationPatches | None = None

    def describe(self) -> dict:
        info = self.calib.describe()
        info["val_patches"] = 0 if self.val is None else len(self.val)
        if self.val is not None:
            info["val_source_images"] = len(set(self.val.sources))
            # True: no validation patch comes from an image that gave a calibration/training patch
            info["val_disjoint"] = self.val.disjoint
        if self.train is not None:
            info["train"] = self.train.describe()
        return info

    def all_sets(self) -> list[CalibrationPatches]:
        return [p for p in (self.calib, self.val, self.train) if p is not None]


def calibration_data(cfg: CalibrationConfig, scale: int, val_patches: int = 0,
                     train_patches: int | None = None) -> CalibrationData:
    """The patches a run needs, drawn once: ``cfg`` for calibration, ``train_patches`` more
    with seed + 2 and ``val_patches`` with seed + 1 (same source and patch size), the latter
    from images that gave no calibration or training patch when any are left."""
    calib = CalibrationPatches(cfg, scale)
    train = (CalibrationPatches(dataclasses.replace(cfg, num_patches=int(train_patches),
                                                    seed=cfg.seed + 2), scale)
             if train_patches else None)
    used = frozenset(calib.sources) | frozenset(train.sources if train is not None else ())
    val = (CalibrationPatches(dataclasses.replace(cfg, num_patches=int(val_patches), seed=cfg.seed + 1),
                              scale, exclude=used) if val_patches else None)
    if val is not None and not val.disjoint:
        import logging

        logging.getLogger(__name__).warning(
            "every usable %s image gave a calibration or training patch: the %d validation "
            "patches come from those images too (val_disjoint: false); use more or larger "
            "calibration images for a held-out validation", cfg.source, len(val))
    return CalibrationData(calib, val, train)


class CalibrationDataModule(L.LightningDataModule):
    """Calibration patches as a DataModule (train loader shuffles with a seeded generator)."""

    def __init__(self, cfg: CalibrationConfig, scale: int, batch_size: int = 16):
        super().__init__()
        self.cfg, self.scale, self.batch_size = cfg, scale, batch_size
        self.dataset: CalibrationPatches | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = CalibrationPatches(self.cfg, self.scale)

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.cfg.seed)
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, generator=gen)

    def calibration_dataloader(self) -> DataLoader:
        """All patches in a fixed order (for statistics collection)."""
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False)

    def batches(self, with_hr: bool = False):
        self.setup()
        return self.dataset.batches(self.batch_size, with_hr)
