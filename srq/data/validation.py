"""The validation split: whole held-out images for choosing hyperparameters, never a test set.

Every run reports ``val`` (Y-PSNR/SSIM on these images) beside its test metrics, and a
sweep optimises it. The images come from the calibration pool (T91 by default, or any HR
folder) minus every image that gave a calibration, fine-tuning or validation patch in
this run (compared by decoded pixels). Candidates too small to give a default patch at this
scale (min side < 64·scale, whatever patch size a method uses) come first, in file-name
order, so that at ×4 the split is the same for every seed and method; then the remaining
unused images in name order. Images whose border-cropped HR is under 11 px (the SSIM window)
are never used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from srq.data.benchmark import ImagePair, SRPairs
from srq.data.images import file_pixel_hash, list_images
from srq.errors import SrqError

VAL_SOURCES = ("t91", "folder")
VAL_SET = "val"


@dataclass(frozen=True)
class ValidationConfig:
    """``num_images`` whole HR images of ``source`` (LR made with MATLAB bicubic)."""

    source: str | None = "t91"
    num_images: int = 10
    folder: str | None = None

    def __post_init__(self):
        if self.source is not None and self.source not in VAL_SOURCES:
            raise SrqError(f"val.source={self.source} is not a validation source; use one of "
                           f"{', '.join(VAL_SOURCES)} (or val.source=null for no validation)")
        if self.source == "folder" and not self.folder:
            raise SrqError("val.source=folder needs val.folder=<folder of HR images>")
        if self.source is not None and self.num_images < 1:
            raise SrqError(f"val.num_images={self.num_images}: use at least 1 image "
                           "(or val.source=null for no validation)")

    @property
    def enabled(self) -> bool:
        return self.source is not None


def _pool(cfg: ValidationConfig) -> list[Path]:
    if cfg.source == "t91":
        from srq.data.store import fetch_folder

        return fetch_folder("calib/T91/")
    return list_images(cfg.folder)


DEFAULT_PATCH = 64  # LR px: the calib groups' default patch size


def validation_set(cfg: ValidationConfig, scale: int, exclude: set[str] = frozenset()) -> SRPairs:
    """The ``val`` split as an :class:`SRPairs` named ``val``; ``exclude``: pixel hashes
    (:func:`srq.data.images.pixel_hash`) of images that gave patches."""
    patch_crop = DEFAULT_PATCH * scale
    candidates = []
    for path in _pool(cfg):
        if file_pixel_hash(str(path), path.stat().st_mtime_ns) in exclude:
            continue
        with Image.open(path) as im:  # the header only: no decode for the size
            w, h = im.size
        if min(h - h % scale, w - w % scale) - 2 * scale < 11:
            continue
        candidates.append((min(h, w) >= patch_crop, path.name, path))
    if len(candidates) < cfg.num_images:
        raise SrqError(f"val: only {len(candidates)} {cfg.source} images gave no calibration "
                       f"patch, {cfg.num_images} wanted; lower val.num_images or calibrate on "
                       "fewer patches")
    chosen = sorted(candidates)[: cfg.num_images]
    return SRPairs(VAL_SET, [ImagePair(p.stem, p, None) for _, _, p in chosen], scale)


def calibration_hashes(data) -> set[str]:
    """Pixel hashes of every image that gave a patch in ``data`` (a CalibrationData)."""
    from srq.data.images import pixel_hash

    if data is None:
        return set()
    return {pixel_hash(p.images[i]) for p in data.all_sets() for i in set(p.sources)}


def validation_config(node) -> ValidationConfig:
    """A ``val:`` config node (or None) → :class:`ValidationConfig`."""
    if node is None:
        return ValidationConfig(source=None)
    return ValidationConfig(source=node.get("source"), num_images=int(node.get("num_images", 10)),
                            folder=node.get("folder"))
