"""Test sets that come as one archive of HR images (Urban100, DIV2K validation) or that may
not be redistributed at all (Manga109), beside the per-file manifest of store.py.

Resolution for set ``name`` (its HR images; LR is made with MATLAB bicubic):
1. ``$SRQ_DATA_DIR/benchmark/<name>/HR/`` when that folder exists (a mirror you filled);
2. ``$SRQ_CACHE/benchmark/<name>/HR/`` when an earlier download completed (marker file);
3. the archive's public URL: downloaded into the cache, its checksum verified (the md5 or
   sha256 published with it), the images of ``member_dir`` extracted, the marker written.
Manga109 has no public URL (its licence forbids redistribution): the error says where to
request it and where to put it.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from srq.data.images import IMAGE_SUFFIXES, list_images
from srq.errors import SrqError


@dataclass(frozen=True)
class ArchiveSet:
    name: str
    url: str | None
    checksum: str | None        # "md5:<hex>" or "sha256:<hex>", as published for the archive
    member_dir: str             # folder inside the archive that holds the HR images
    count: int                  # images in the official set
    source: str                 # where the URL and checksum come from
    how: str = ""               # what to do when there is no URL


ARCHIVE_SETS = {
    "Urban100": ArchiveSet(
        "Urban100",
        "https://huggingface.co/datasets/eugenesiow/Urban100/resolve/main/data/Urban100_HR.tar.gz",
        "md5:65d9d84a34b72c6f7ca1e26a12df1e4c", "Urban100_HR", 100,
        "Hugging Face eugenesiow/Urban100 (md5 as pinned by the deepinv datasets)"),
    "DIV2K_valid": ArchiveSet(
        "DIV2K_valid", "http://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_valid_HR.zip",
        "md5:9fcdda83005c5e5997799b69f955ff88", "DIV2K_valid_HR", 100,
        "the DIV2K site, ETH Zurich (md5 as pinned by the deepinv datasets)"),
    "Manga109": ArchiveSet(
        "Manga109", None, None, "", 109, "manga109.org (request form; no redistribution)",
        how="Manga109's licence forbids redistribution, so srq cannot download it: request it "
            "at http://www.manga109.org/en/download.html and put its 109 images in "
            "$SRQ_DATA_DIR/benchmark/Manga109/HR/ (or use data=folder data.hr_dir=<folder>)"),
}

_MARKER = ".srq-complete"


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: Path, checksum: str, what: str) -> None:
    """Raise SrqError unless ``path`` has ``checksum`` ("md5:…" / "sha256:…")."""
    algo, _, expected = checksum.partition(":")
    got = _digest(path, algo)
    if got != expected:
        raise SrqError(f"{algo} mismatch for {what} ({path.name}): expected {expected}, got {got}; "
                       "the upstream file changed or the download was corrupted: try again, or "
                       "put a verified copy of the HR images in $SRQ_DATA_DIR/benchmark/"
                       f"{what}/HR/")


def _extract(archive: Path, member_dir: str, target: Path) -> int:
    """Copy the images under ``member_dir/`` of a .zip / .tar(.gz) into ``target`` (flat,
    names kept; nothing outside ``target`` is ever written). Returns their number."""
    target.mkdir(parents=True)
    n = 0
    prefix = member_dir.strip("/") + "/"

    def wanted(name: str) -> str | None:
        name = name.replace("\\", "/").lstrip("./")
        if not name.startswith(prefix) or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            return None
        return Path(name).name

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                base = wanted(info.filename)
                if base and not info.is_dir():
                    with zf.open(info) as src, open(target / base, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    n += 1
    else:
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                base = wanted(member.name)
                if base and member.isfile():
                    with tf.extractfile(member) as src, open(target / base, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    n += 1
    return n


def archive_folder(name: str) -> list[Path]:
    """The HR images of archive set ``name`` (mirror, cache, or download + verify + extract)."""
    from srq.data.store import cache_dir, mirror_dir

    spec = ARCHIVE_SETS[name]
    mirror = mirror_dir()
    if mirror is not None and (mirror / "benchmark" / name / "HR").is_dir():
        return list_images(mirror / "benchmark" / name / "HR")
    folder = cache_dir() / "benchmark" / name / "HR"
    if _complete(folder, spec):
        return list_images(folder)
    if spec.url is None:
        raise SrqError(spec.how)
    import fcntl

    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / ".lock", "w") as lock:  # parallel jobs: one downloads, the rest wait
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _complete(folder, spec):
            _download_and_extract(spec, folder)
    return list_images(folder)


def _complete(folder: Path, spec: ArchiveSet) -> bool:
    marker = folder / _MARKER
    return marker.is_file() and marker.read_text().strip() == (spec.checksum or "")


def _download_and_extract(spec: ArchiveSet, folder: Path) -> None:
    from srq.data.store import cache_dir, download

    name = spec.name
    archive = cache_dir() / "archives" / Path(spec.url).name
    if not archive.is_file():
        download(spec.url, archive, None, name)
    try:
        verify_checksum(archive, spec.checksum, name)
    except SrqError:
        archive.unlink(missing_ok=True)  # never keep a file that failed its check
        raise
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".extract."))
    try:
        n = _extract(archive, spec.member_dir, tmp / "HR")
        if n == 0:
            raise SrqError(f"{archive.name} holds no images under {spec.member_dir}/; delete it "
                           "to download it again")
        (tmp / "HR" / _MARKER).write_text(spec.checksum + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        (tmp / "HR").rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
