"""What the zoo knows about a model: its builder, conventions, checkpoint and feature blocks."""

from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn


@dataclass(frozen=True)
class Checkpoint:
    """Where a model's pretrained weights come from.

    ``store``: a path in srq's data manifest (mirror/cache/download, sha256-checked).
    ``url``: an official public URL for files outside the manifest, with ``sha256`` when
    known, else ``hash_prefix`` (BasicSR-style file names carry sha256[:8]); ``mirror``
    is the path looked up under ``SRQ_DATA_DIR`` for it.
    ``container``: key holding the state_dict (``params``, ``params_ema``), tried first.
    ``key_map``: (state_dict) → state_dict for official layouts that differ from the arch.
    """

    store: str | None = None
    url: str | None = None
    sha256: str | None = None
    hash_prefix: str | None = None
    mirror: str | None = None
    container: str | None = None
    strip_prefix: str = "module."
    key_map: Callable[[dict], dict] | None = None


@dataclass(frozen=True)
class ModelSpec:
    """One named model: ``<arch>_x<scale>``, its builder and conventions.

    ``builder``: ``"module:Class"`` (imported lazily) called with ``scale_arg=scale`` and ``kwargs``.
    ``input_range``: 1 or 255 (what the net expects for white). ``color``: see SRNet.
    ``reference_psnr``: FP Y-PSNR measured with srq's protocol, {set: dB}, for tests/docs.
    ``published_psnr``: the paper's numbers, {set: dB}.
    """

    name: str
    arch: str
    scale: int
    builder: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_range: float = 1.0
    color: str = "rgb"
    pad_multiple: int = 1
    checkpoint: Checkpoint | None = None
    reference_psnr: dict[str, float] = field(default_factory=dict)
    published_psnr: dict[str, float] = field(default_factory=dict)
    scale_arg: str = "scale"  # basicsr archs call it ``upscale``
    # where distillation losses tap "block outputs": globs over module names of the SRNet,
    # one '*' = one dotted name part (``net.body.*`` = each direct child of ``net.body``)
    feature_blocks: tuple[str, ...] = ()

    def build_net(self) -> nn.Module:
        module_name, cls_name = self.builder.split(":")
        cls = getattr(importlib.import_module(module_name), cls_name)
        return cls(**{self.scale_arg: self.scale}, **self.kwargs)

    def feature_block_names(self, model: nn.Module) -> list[str]:
        """Names of ``model``'s modules matching :attr:`feature_blocks`."""
        patterns = [p.split(".") for p in self.feature_blocks]
        return [name for name, _ in model.named_modules()
                if any(len(parts := name.split(".")) == len(p)
                       and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, p)) for p in patterns)]


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name} registered twice")
    MODELS[spec.name] = spec
    return spec




__all__ = ["MODELS", "Checkpoint", "ModelSpec", "register"]
