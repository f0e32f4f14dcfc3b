"""The ``.srq`` artifact: one self-describing file holding a frozen quantized model.

It is a safetensors file (no pickled code) whose metadata ``srq`` is a JSON header:

    format, format_version, srq_version, model {name | class, scale, fp_checkpoint_sha256},
    method, bits, config (the resolved method config), quantization_map (machine-readable
    formats per module), palettes, info (calibration, fine-tuning, timings), payload_bytes

and whose tensors are the quantized weights packed at their bit-width, the quantizers'
parameters and the FP rest (:mod:`srq.quant.serialize`). ``srq_sha256`` (also metadata) is
the sha256 of the header text and every tensor's bytes: an edited or damaged file is refused.
Loading needs no calibration data and gives back the frozen model bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from srq.errors import SrqError

FORMAT = "srq-quantized-model"
FORMAT_VERSION = 1


def _digest(header_text: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(header_text.encode())
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_identity(model: nn.Module) -> dict:
    """How to rebuild the architecture: a zoo name, else the class path."""
    cls = type(model)
    return {"name": getattr(model, "srq_name", None), "class": f"{cls.__module__}.{cls.__qualname__}",
            "scale": getattr(model, "scale", None),
            "fp_checkpoint_sha256": getattr(model, "srq_checkpoint_sha256", None)}


def _zoo_buffers_to_skip(model: nn.Module, name: str | None) -> set[str]:
    """Buffers a freshly built zoo model has with the same values (attention masks, index
    tables): the architecture rebuilds them, so the file does not store them."""
    if not name:
        return set()
    from srq.models.zoo import build_model

    fresh = build_model(name, pretrained=False).state_dict()
    params = {k for k, _ in model.named_parameters()}
    skip = set()
    for key, value in model.state_dict().items():
        base = key.replace(".module.", ".")
        ref = fresh.get(key, fresh.get(base))
        if key not in params and ref is not None and ref.shape == value.shape and \
                ref.dtype == value.dtype and torch.equal(ref, value.detach().cpu()):
            skip.add(key)
    return skip


def save(model: nn.Module, path: str | Path, method: dict | None = None) -> dict:
    """Write the frozen quantized ``model`` to ``path`` atomically; returns the header.

    ``method``: {"name", "bits", "config", "info"} of the method that made it (``srq.quantize``
    attaches it to the model as ``srq_method``)."""
    from safetensors.torch import save_file

    from srq import __version__
    from srq.quant.serialize import payload_bytes, quantized_state

    method = method or getattr(model, "srq_method", None) or {}
    identity = model_identity(model)
    try:
        qmap, palettes, tensors = quantized_state(model, _zoo_buffers_to_skip(model, identity["name"]))
    except ValueError as exc:
        raise SrqError(f"cannot save: {exc}") from None
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "srq_version": __version__,
              "model": identity, "method": method.get("name"), "bits": method.get("bits"),
              "config": method.get("config"), "quantization_map": qmap, "palettes": palettes,
              "info": method.get("info") or {}, "payload_bytes": payload_bytes(tensors)}
    text = json.dumps(header, sort_keys=True, default=str)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"srq": text, "srq_sha256": _digest(text, tensors)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return header


def read(path: str | Path, tensors: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """(header, tensors) of an artifact, verified; one clear :class:`SrqError` otherwise."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise SrqError(f"quantized model {path} does not exist; pass the .srq file a run wrote "
                       "(<run dir>/<name>.srq)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            data = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except Exception as exc:  # safetensors reports damage with several exception types
        raise SrqError(f"{path} is not a readable srq artifact (truncated or damaged: "
                       f"{str(exc).splitlines()[0][:120]}); write it again with srq.save or rerun") from None
    text = meta.get("srq")
    if text is None:
        raise SrqError(f"{path} is a safetensors file but not an srq artifact (no srq header)")
    try:
        header = json.loads(text)
    except json.JSONDecodeError:
        raise SrqError(f"{path}: the srq header is not valid JSON (edited by hand?); write the "
                       "artifact again") from None
    if header.get("format") != FORMAT:
        raise SrqError(f"{path} is not an srq artifact (format {header.get('format')!r})")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise SrqError(f"{path} has artifact format version {version!r}; this srq reads version "
                       f"{FORMAT_VERSION}: use the srq release that wrote it, or re-quantize")
    if tensors and meta.get("srq_sha256") != _digest(text, data):
        raise SrqError(f"{path} was changed after it was written (checksum mismatch: header "
                       "edited or data damaged); write it again")
    return header, data


def load(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """The frozen quantized model in ``path``: rebuilt from the zoo when it was saved from a
    zoo model, else loaded into ``model`` (a fresh, unquantized instance of its class)."""
    from srq.quant import wrapped_modules
    from srq.quant.serialize import restore_quantized

    header, tensors = read(path)
    identity = header["model"]
    if model is None:
        if not identity.get("name"):
            raise SrqError(f"{path} holds a {identity.get('class')} the zoo does not know; pass a "
                           "fresh instance: srq.load(path, model=MyNet())")
        from srq.models.zoo import build_model

        model = build_model(identity["name"], pretrained=False)
    elif next(wrapped_modules(model), None) is not None:
        raise SrqError("srq.load needs an unquantized model instance; this one is already quantized")
    try:
        restore_quantized(model, header["quantization_map"], header.get("palettes", {}), tensors)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise SrqError(f"{path} does not fit {type(model).__name__} ({exc}); it was saved from "
                       f"{identity.get('name') or identity.get('class')}") from None
    model.srq_name = identity.get("name")
    model.srq_checkpoint_sha256 = identity.get("fp_checkpoint_sha256")
    model.srq_method = {k: header.get(k) for k in ("method", "bits", "config", "info")}
    return model.eval()


__all__ = ["FORMAT_VERSION", "load", "read", "save"]
