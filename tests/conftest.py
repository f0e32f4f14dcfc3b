"""Shared fixtures. Data comes from SRQ_DATA_DIR (CI: ../shared/data beside the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
_default_mirror = REPO.parent / "shared" / "data"
if not os.environ.get("SRQ_DATA_DIR") and _default_mirror.is_dir():
    os.environ["SRQ_DATA_DIR"] = str(_default_mirror)
os.environ.setdefault("WANDB_MODE", "offline")
# a fresh cache per test session (FP references, downloads): tests never see an old one
if not os.environ.get("SRQ_CACHE"):
    import tempfile

    os.environ["SRQ_CACHE"] = tempfile.mkdtemp(prefix="srq-test-cache-")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    value = os.environ.get("SRQ_DATA_DIR")
    if not value or not Path(value).is_dir():
        pytest.skip("no data mirror: set SRQ_DATA_DIR to a folder with shared/data's layout")
    return Path(value)
