"""Tiled inference for images that do not fit memory."""

from __future__ import annotations

from typing import Callable

import torch


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def tiled_forward(model: Callable[[torch.Tensor], torch.Tensor], lr: torch.Tensor, scale: int,
                  tile: int, overlap: int) -> torch.Tensor:
    """Run ``model`` on overlapping ``tile``×``tile`` LR tiles and average the overlaps.

    out = Σ_tiles model(tile) / Σ_tiles 1, placed at ``scale`` × the tile's LR offset.
    """
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise ValueError(f"need 0 <= tile_overlap < tile, got tile={tile}, overlap={overlap}")
    n, c, h, w = lr.shape
    stride = tile - overlap
    out = weight = None
    for y in _starts(h, tile, stride):
        for x in _starts(w, tile, stride):
            patch = model(lr[..., y:y + tile, x:x + tile])
            if out is None:
                out = patch.new_zeros(n, patch.shape[1], h * scale, w * scale)
                weight = patch.new_zeros(1, 1, h * scale, w * scale)
            ys, xs = y * scale, x * scale
            out[..., ys:ys + patch.shape[-2], xs:xs + patch.shape[-1]] += patch
            weight[..., ys:ys + patch.shape[-2], xs:xs + patch.shape[-1]] += 1
    return out / weight
