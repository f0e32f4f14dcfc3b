"""Writing run artefacts atomically (a crash never leaves a half-written file)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import tempfile
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_csv_atomic(path: str | Path, rows: list[dict]) -> Path:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return write_text_atomic(path, buf.getvalue())


def git_commit() -> str | None:
    """Commit of the srq source tree (``SRQ_GIT_COMMIT`` overrides; None when not in git)."""
    if os.environ.get("SRQ_GIT_COMMIT"):
        return os.environ["SRQ_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_bench_report(out: str | Path, report: dict, columns: list[str], cells) -> Path:
    """A benchmark's JSON (``report`` plus machine and date) at ``out`` and a markdown table
    beside it (``out`` with ``.md``): ``cells(row)`` gives one table row per ``report["rows"]``."""
    import platform
    import time

    out = Path(out)
    report = {**report, "machine": platform.platform(), "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d")}
    write_json_atomic(out, report)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in report["rows"]]
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return out
