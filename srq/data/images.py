"""Image I/O and the MATLAB-compatible bicubic used to make LR images."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from srq.errors import SrqError

IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")


def read_image(path: str | Path) -> torch.Tensor:
    """Read an image as a (3, H, W) uint8 RGB tensor (grey images are replicated to RGB)."""
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SrqError(
            f"cannot read image {path} ({exc}); replace it with a valid PNG/BMP/JPEG or remove it "
            "from the folder"
        ) from exc
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def pixel_hash(img: torch.Tensor) -> str:
    """sha256 of an image's decoded pixels and shape (same picture → same hash, whatever the
    file name or format)."""
    import hashlib

    t = img.detach().cpu().contiguous()
    h = hashlib.sha256(str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=4096)
def file_pixel_hash(path: str, mtime_ns: int) -> str:
    """:func:`pixel_hash` of an image file, cached per (path, modification time): a sweep
    checks the same test images in every job."""
    return pixel_hash(read_image(path))


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise SrqError(f"image folder {folder} does not exist; pass an existing directory")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SrqError(
            f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
            "pass a folder with images"
        )
    return files


def modcrop(img: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop the bottom/right so that H and W are multiples of ``scale``."""
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def to_float(img: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [0, 1]."""
    return img.float() / 255.0


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """float [0, 1] → uint8, clamped and rounded the way BasicSR's ``tensor2img`` does."""
    return (img.clamp(0, 1) * 255.0).round().to(torch.uint8)


def imresize(img: torch.Tensor, factor: float) -> torch.Tensor:
    """MATLAB ``imresize(img, factor, 'bicubic')`` (antialiased) of a float (C, H, W) image.

    Uses ``basicsr.utils.matlab_functions.imresize``; no rounding.
    """
    from basicsr.utils.matlab_functions import imresize as matlab_imresize

    return matlab_imresize(img.float(), factor)


def bicubic_downsample(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """uint8 (3, H, W) HR → uint8 LR of size H/scale × W/scale, as MATLAB makes benchmark LR."""
    hr = modcrop(hr, scale)
    return to_uint8(imresize(to_float(hr), 1.0 / scale))


def write_png(img: torch.Tensor, path: Path) -> None:
    """(3, H, W) uint8 → PNG, atomically (a partial file never has the final name)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        Image.fromarray(img.permute(1, 2, 0).cpu().numpy()).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
