"""Run the installed `srq` command the way a user does (a subprocess in a fresh directory)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def srq(args: list[str], cwd: Path, env_extra: dict | None = None, module: bool = False):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env_extra or {})}
    env = {k: v for k, v in env.items() if v is not None}
    cmd = [sys.executable, "-m", "srq"] if module else [shutil.which("srq") or "srq"]
    return subprocess.run(cmd + args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


def results_files(root: Path) -> list[Path]:
    return sorted(root.glob("outputs/**/results.json"))


def wandb_history(run_dir: Path) -> dict[str, list]:
    """Every value each key got in the history of the offline W&B run under ``run_dir``.

    Reads the run's ``.wandb`` file: a 7-byte header, then LevelDB-log framed records
    (32 KiB blocks; each chunk: crc32 u32, length u16, type u8 — 1 full, 2 first, 3 middle,
    4 last) holding ``wandb_internal_pb2.Record`` protobufs.
    """
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    raw = path.read_bytes()
    assert raw[:4] == b":W&B", f"not a W&B datastore: {path}"
    history: dict[str, list] = {}
    pos, chunks = 7, []
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # block trailer too short for a header
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        chunks.append(raw[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            if record.WhichOneof("record_type") == "history":
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)
                    history.setdefault(key, []).append(json.loads(item.value_json))
        elif kind == 0:
            chunks = []
    return history
