"""Where data and weights come from: a local mirror, the cache, or the original URL.

Every file srq fetches is listed in ``manifest.jsonl`` (path in the store, original public
URL pinned to a commit, sha256). Resolution order for a store path ``dst``:

1. ``$SRQ_DATA_DIR/dst`` when ``SRQ_DATA_DIR`` is set (a mirror with the layout of the
   manifest, e.g. ``shared/data``); verified against the manifest's sha256.
2. ``$SRQ_CACHE`` (default ``~/.cache/srq``), filled by downloading the original URL and
   verifying its sha256.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tqdm.auto import tqdm

from srq.errors import SrqError


@dataclass(frozen=True)
class StoreEntry:
    """One file: its path in the store, its original URL and the hashes it may have.

    ``sha256`` is the file as kept in a mirror; ``src_sha256`` the file as served by
    ``url`` (they differ where the mirror holds a lossless conversion, e.g. BMP → PNG or
    a ``{"params": state_dict}`` container unpacked to the state_dict).
    """

    dst: str
    url: str
    sha256: str
    src_sha256: str

    @property
    def accepted(self) -> tuple[str, ...]:
        return (self.sha256, self.src_sha256)


@functools.lru_cache(maxsize=1)
def manifest() -> dict[str, StoreEntry]:
    text = resources.files("srq.data").joinpath("manifest.jsonl").read_text()
    entries = {}
    for line in text.splitlines():
        if line.strip():
            row = json.loads(line)
            entries[row["dst"]] = StoreEntry(
                row["dst"], row["url"], row["sha256"], row.get("src_sha256", row["sha256"])
            )
    return entries


def mirror_dir() -> Path | None:
    """The local mirror named by ``SRQ_DATA_DIR``, or None."""
    value = os.environ.get("SRQ_DATA_DIR")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise SrqError(
            f"SRQ_DATA_DIR={value} is not a directory; point it at a folder with the layout of "
            "shared/data (benchmark/, calib/, weights/) or unset it to download into the cache"
        )
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("SRQ_CACHE", "~/.cache/srq")).expanduser()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=4096)
def _verified(path: Path, mtime_ns: int, size: int, accepted: tuple[str, ...]) -> bool:
    return sha256_of(path) in accepted


def verify(path: Path, accepted: tuple[str, ...], what: str) -> Path:
    """Raise SrqError unless ``path`` hashes to one of ``accepted`` (cached per file state)."""
    stat = path.stat()
    if not _verified(path, stat.st_mtime_ns, stat.st_size, accepted):
        raise SrqError(
            f"sha256 mismatch for {path} ({what}): expected {accepted[0]}, got {sha256_of(path)}; "
            "the file is corrupt or not the one srq expects: delete it to download it again, "
            "or point SRQ_DATA_DIR at a correct copy"
        )
    return path


def download(url: str, target: Path, accepted: tuple[str, ...] | None, what: str) -> Path:
    """Download ``url`` to ``target`` atomically; verify its sha256 when ``accepted`` is given."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, leave=False,
                              desc=f"download {Path(what).name}", disable=total is None) as bar:
                        while block := response.read(1 << 20):
                            out.write(block)
                            bar.update(len(block))
            except OSError as exc:
                raise SrqError(
                    f"cannot download {what} from {url} ({exc}); check the network, or set "
                    "SRQ_DATA_DIR to a local folder that holds the file"
                ) from exc
        if accepted is not None:
            got = sha256_of(Path(tmp))
            if got not in accepted:
                raise SrqError(
                    f"sha256 mismatch for {what} downloaded from {url}: expected {accepted[0]}, "
                    f"got {got}; the upstream file changed or the download was corrupted: try "
                    "again, or set SRQ_DATA_DIR to a verified copy"
                )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def fetch(dst: str) -> Path:
    """Path of the verified local copy of store file ``dst`` (mirror, cache or download)."""
    entries = manifest()
    if dst not in entries:
        raise SrqError(f"{dst} is not in srq's data manifest (srq/data/manifest.jsonl)")
    entry = entries[dst]
    mirror = mirror_dir()
    if mirror is not None:
        path = mirror / dst
        if not path.is_file():
            raise SrqError(
                f"SRQ_DATA_DIR={mirror} has no {dst}; copy it there or unset SRQ_DATA_DIR "
                "to download it into the cache"
            )
        return verify(path, entry.accepted, dst)
    suffix = Path(entry.url).suffix
    path = (cache_dir() / dst).with_suffix(suffix)
    if path.is_file():
        return verify(path, entry.accepted, dst)
    return download(entry.url, path, entry.accepted, dst)


def fetch_folder(prefix: str) -> list[Path]:
    """Fetch every manifest file under ``prefix`` (e.g. ``benchmark/Set5/HR/``), sorted by name."""
    names = sorted(d for d in manifest() if d.startswith(prefix))
    if not names:
        raise SrqError(f"srq's data manifest has no files under {prefix}")
    return [fetch(name) for name in names]
