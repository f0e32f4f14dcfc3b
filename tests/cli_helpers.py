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
