"""The FP reference of a sweep, computed once: the teacher's metrics on the evaluated images,
kept on disk under ``<cache>/fp_reference/<key>.json`` (``SRQ_CACHE``, default ~/.cache/srq).

key = sha256 of (the teacher's parameters and buffers, its classes' source files, its scale, every evaluated
image file's sha256 with its set and LR source, the evaluation options (tiling, precision), the device type,
srq's metric version). Any change to the weights, an image or an option gives a new key;
a corrupt or partial cache file is recomputed, never trusted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path

import torch

from srq.results import write_json_atomic

log = logging.getLogger(__name__)

METRICS_VERSION = 2   # bump when the metric code changes its values


@functools.lru_cache(maxsize=65536)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    from srq.data.store import sha256_of

    return sha256_of(Path(path))


def file_sha256(path: Path) -> str:
    st = Path(path).stat()
    return _file_sha256(str(path), st.st_mtime_ns, st.st_size)


def model_sha256(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer (name, shape, dtype, bytes), in state-dict order,
    and of the source files of every module class in the model (a changed forward is a new
    reference)."""
    import inspect

    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    sources = set()
    for module in model.modules():
        try:
            sources.add(inspect.getsourcefile(type(module)))
        except TypeError:
            continue
    for src in sorted(p for p in sources if p and not p.startswith(str(Path(torch.__file__).parent))):
        digest.update(file_sha256(Path(src)).encode())
    return digest.hexdigest()


def reference_key(teacher: torch.nn.Module, sets, options: dict) -> str:
    images = [[s.name, s.scale, [[p.name, file_sha256(p.hr), file_sha256(p.lr) if p.lr else "bicubic"]
                                 for p in s.pairs]] for s in sets]
    device = next(teacher.parameters()).device.type
    blob = json.dumps({"model": model_sha256(teacher), "scale": getattr(teacher, "scale", None),
                       "images": images, "options": options, "device": device,
                       "metrics_version": METRICS_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_reference(teacher, sets, options: dict, compute, cache_root: Path | None = None):
    """(metrics, records) of ``compute()`` for this teacher/images/options, from the disk
    cache when an earlier run (any process) computed them; also returns whether it was a hit."""
    from srq.data.store import cache_dir

    key = reference_key(teacher, sets, options)
    path = (cache_root or cache_dir()) / "fp_reference" / f"{key}.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("key") == key and isinstance(data["metrics"], dict) and isinstance(data["records"], list):
                log.info("FP reference from the cache (%s)", path)
                return data["metrics"], data["records"], True
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        log.warning("FP reference cache file %s is unreadable; recomputing it", path)
    metrics, records = compute()
    try:
        write_json_atomic(path, {"key": key, "metrics": metrics, "records": records})
    except OSError as exc:  # a read-only cache never fails a run
        log.warning("could not write the FP reference cache %s (%s)", path, exc)
    return metrics, records, False
