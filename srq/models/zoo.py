"""The model zoo: one registry of SR models, their conventions and checkpoints."""

from __future__ import annotations

import functools
import importlib
import logging
import os
from pathlib import Path

import torch
from torch import nn

from srq.data import store
from srq.errors import SrqError
from srq.models.legacy import load_module_pickle
from srq.models.spec import MODELS, Checkpoint, ModelSpec, register  # noqa: F401 (re-exported)
from srq.models.wrapper import SRNet

log = logging.getLogger(__name__)


def model_names() -> list[str]:
    _load_catalog()
    return sorted(MODELS)


def get_spec(name: str) -> ModelSpec:
    _load_catalog()
    if name not in MODELS:
        raise SrqError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def feature_blocks(model: nn.Module, arch_or_name: str) -> list[str]:
    """Names of ``model``'s feature blocks (the spec's ``feature_blocks`` globs), by model name
    or architecture."""
    _load_catalog()
    spec = MODELS.get(arch_or_name) or next((s for s in MODELS.values() if s.arch == arch_or_name), None)
    return spec.feature_block_names(model) if spec else []


@functools.lru_cache(maxsize=1)
def _load_catalog() -> None:
    importlib.import_module("srq.models.catalog")


def checkpoint_path(spec: ModelSpec) -> Path:
    """Local, verified path of ``spec``'s checkpoint (mirror, cache or download)."""
    ckpt = spec.checkpoint
    if ckpt is None:
        raise SrqError(f"model {spec.name} has no pretrained checkpoint; pass model.checkpoint=<path>")
    if ckpt.store is not None:
        return store.fetch(ckpt.store)
    filename = ckpt.url.rsplit("/", 1)[-1]
    mirror = store.mirror_dir()
    if mirror is not None and ckpt.mirror and (mirror / ckpt.mirror).is_file():
        path = mirror / ckpt.mirror
    else:
        path = store.cache_dir() / "weights" / spec.arch / filename
        if not path.is_file():
            accepted = (ckpt.sha256,) if ckpt.sha256 else None
            store.download(ckpt.url, path, accepted, f"{spec.name} checkpoint")
    if ckpt.sha256:
        return store.verify(path, (ckpt.sha256,), f"{spec.name} checkpoint")
    digest = store.sha256_of(path)
    if ckpt.hash_prefix and not digest.startswith(ckpt.hash_prefix):
        raise SrqError(
            f"sha256 of {path} does not start with {ckpt.hash_prefix} (the prefix in the official "
            "file name): the file is corrupt or not the official one; delete it to download again"
        )
    _record_sha256(path, digest, spec.name)
    return path


def _record_sha256(path: Path, digest: str, name: str) -> None:
    """No full sha256 is published for this file: record the one seen first and say so;
    later uses must match it."""
    record = path.with_name(path.name + ".sha256")
    if record.is_file():
        if record.read_text().split()[0] != digest:
            raise SrqError(f"{path} changed since its sha256 was recorded in {record}; delete both "
                           "to download it again")
        return
    try:
        record.write_text(f"{digest}  {path.name}\n")
    except OSError:  # a read-only mirror: nothing to record in
        pass
    log.warning("no published sha256 for the %s checkpoint; recorded %s in %s", name, digest, record)


def read_state_dict(path: str | Path, ckpt: Checkpoint | None = None) -> dict[str, torch.Tensor]:
    """Load a checkpoint file as a flat state_dict: unwrap containers, strip prefixes, remap."""
    if not Path(path).is_file():
        raise SrqError(f"checkpoint {path} does not exist; pass an existing file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        try:  # an old whole-model pickle (torch.save(model)), read without running its code
            obj = load_module_pickle(path)
        except Exception:
            raise SrqError(
                f"cannot read checkpoint {path} ({type(exc).__name__}: "
                f"{(str(exc).splitlines() or ['truncated or damaged'])[0][:200]}); pass a complete "
                "torch state_dict file (.pth)"
            ) from exc
    containers = [ckpt.container] if ckpt and ckpt.container else []
    containers += ["params_ema", "params", "state_dict", "model"]
    if isinstance(obj, dict):
        for key in containers:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SrqError(f"checkpoint {path} holds no state_dict of tensors; pass a state_dict file")
    prefix = ckpt.strip_prefix if ckpt else "module."
    if prefix and all(k.startswith(prefix) for k in obj):
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    if ckpt and ckpt.key_map:
        obj = ckpt.key_map(obj)
    return obj


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], name: str, source: str) -> None:
    """``load_state_dict(strict=True)`` with one clear error listing what does not fit."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def head(items):
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {head(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {head(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch (checkpoint vs model): {head(shapes)}")
        raise SrqError(
            f"checkpoint {source} does not fit model {name} ({'; '.join(parts)}); is it for another "
            "scale or architecture? pick the matching model=<arch>_x<scale>"
        )
    net.load_state_dict(state, strict=True)


def build_model(name: str, pretrained: bool = True, checkpoint: str | None = None) -> SRNet:
    """An SRNet (RGB [0,1] in and out) for registry model ``name``, in eval mode.

    ``checkpoint``: a local file instead of the registry's; ``pretrained=False``: random init.
    The model carries its zoo name (``srq_name``) and the sha256 of the FP checkpoint it was
    loaded from (``srq_checkpoint_sha256``; None for random weights), which artifacts record.
    """
    spec = get_spec(name)
    net = spec.build_net()
    path = None
    if checkpoint is not None:
        path = Path(os.path.expanduser(checkpoint))
    elif pretrained:
        path = checkpoint_path(spec)
    if path is not None:
        load_weights(net, read_state_dict(path, spec.checkpoint), name, str(path))
    model = SRNet(net, spec.scale, spec.input_range, spec.color, spec.pad_multiple)
    model.srq_name = name
    model.srq_checkpoint_sha256 = store.sha256_of(path) if path is not None else None
    return model.eval()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
