"""Benchmark test sets (Set5, Set14, B100, any folder) as datasets and a DataModule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset

from srq.data.images import bicubic_downsample, list_images, modcrop, read_image
from srq.data.store import fetch, fetch_folder
from srq.errors import SrqError

BENCHMARK_SETS = ("Set5", "Set14", "B100", "Urban100", "Manga109", "DIV2K_valid")


@dataclass(frozen=True)
class ImagePair:
    name: str
    hr: Path
    lr: Path | None  # None: LR is made from HR with MATLAB bicubic


class SRPairs(Dataset):
    """(name, LR uint8 (3,h,w), HR uint8 (3,sh,sw)) pairs; HR modcropped to the scale."""

    def __init__(self, name: str, pairs: list[ImagePair], scale: int):
        self.name, self.pairs, self.scale = name, pairs, scale

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        pair = self.pairs[index]
        hr = modcrop(read_image(pair.hr), self.scale)
        lr = bicubic_downsample(hr, self.scale) if pair.lr is None else read_image(pair.lr)
        h, w = lr.shape[-2:]
        if (h * self.scale, w * self.scale) != tuple(hr.shape[-2:]):
            raise SrqError(
                f"{self.name}/{pair.name}: LR {w}x{h} × scale {self.scale} does not match HR "
                f"{hr.shape[-1]}x{hr.shape[-2]}; is the LR folder for another scale?"
            )
        return pair.name, lr, hr


def benchmark_set(name: str, scale: int, generate_lr: bool = False) -> SRPairs:
    """A standard benchmark set from the store (mirror, cache or download). Urban100,
    Manga109 and DIV2K_valid come as HR images only (srq/data/archives.py): their LR is made
    with MATLAB bicubic (≤ 0.01 dB from the stored LR of the other sets)."""
    from srq.data.archives import ARCHIVE_SETS, archive_folder

    if name not in BENCHMARK_SETS:
        raise SrqError(f"unknown benchmark set {name!r}; valid: {', '.join(BENCHMARK_SETS)}")
    if name in ARCHIVE_SETS:
        return SRPairs(name, [ImagePair(p.stem, p, None) for p in archive_folder(name)], scale)
    hr_paths = fetch_folder(f"benchmark/{name}/HR/")
    pairs = []
    for hr in hr_paths:
        stem = hr.stem
        lr = None if generate_lr else fetch(f"benchmark/{name}/LR_bicubic/X{scale}/{stem}x{scale}.png")
        pairs.append(ImagePair(stem, hr, lr))
    return SRPairs(name, pairs, scale)


def folder_set(hr_dir: str, scale: int, lr_dir: str | None = None, lr_suffix: str = "",
               name: str = "folder") -> SRPairs:
    """HR images from ``hr_dir``; LR from ``lr_dir`` (file ``<stem><lr_suffix>.*``) or made
    with MATLAB bicubic when ``lr_dir`` is None."""
    if hr_dir is None:
        raise SrqError("data=folder needs data.hr_dir=<folder of HR images>")
    pairs = []
    lr_files = {}
    if lr_dir is not None:
        lr_files = {p.stem: p for p in list_images(lr_dir)}
    for hr in list_images(hr_dir):
        lr = None
        if lr_dir is not None:
            key = f"{hr.stem}{lr_suffix}"
            if key not in lr_files:
                raise SrqError(
                    f"no LR image {key}.* in {lr_dir} for HR {hr.name}; set data.lr_suffix "
                    "(e.g. x4) or leave data.lr_dir unset to generate LR with MATLAB bicubic"
                )
            lr = lr_files[key]
        pairs.append(ImagePair(hr.stem, hr, lr))
    return SRPairs(name, pairs, scale)


def _single(batch):
    (name, lr, hr), = batch
    return name, lr.unsqueeze(0), hr.unsqueeze(0)


class BenchmarkDataModule(L.LightningDataModule):
    """Test-only DataModule: one dataloader (batch 1, native image size) per set."""

    def __init__(self, sets: list[SRPairs], num_workers: int = 0):
        super().__init__()
        self.sets = sets
        self.num_workers = num_workers

    @property
    def set_names(self) -> list[str]:
        return [s.name for s in self.sets]

    def test_dataloader(self):
        return [
            DataLoader(s, batch_size=1, shuffle=False, num_workers=self.num_workers,
                       collate_fn=_single)
            for s in self.sets
        ]


def build_test_sets(data_cfg, scale: int) -> list[SRPairs]:
    """Test sets chosen by a ``data`` config: ``sets: [Set5, ...]`` or ``hr_dir`` (folder)."""
    if data_cfg.get("hr_dir") is not None or data_cfg.get("name") == "folder":
        return [folder_set(data_cfg.get("hr_dir"), scale, data_cfg.get("lr_dir"),
                           data_cfg.get("lr_suffix", ""), data_cfg.get("set_name", "folder"))]
    generate = bool(data_cfg.get("generate_lr", False))
    sets = [benchmark_set(name, scale, generate) for name in data_cfg.sets]
    skip = int(data_cfg.get("skip_first", 0) or 0)
    for s in sets:  # e.g. the first images calibrate (calib=b100_head20), the rest evaluate
        s.pairs = s.pairs[skip:]
    return sets


__all__ = ["BenchmarkDataModule", "SRPairs", "benchmark_set", "build_test_sets", "folder_set",
           "BENCHMARK_SETS"]
