"""Execute notebooks/results.ipynb in place (outputs stored), reading the sweep(s) given.

    python scripts/execute_notebook.py outputs/seeds_2026-12-02 [--out notebooks/results.ipynb]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "results.ipynb"


def main(argv: list[str] | None = None) -> int:
    import nbformat
    from nbclient import NotebookClient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="sweep or outputs directories")
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK)
    parser.add_argument("--out", type=Path, help="where to write the executed notebook (default: in place)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    nb = nbformat.read(args.notebook, as_version=4)
    os.environ["SRQ_NOTEBOOK_ROOTS"] = ":".join(str(p.resolve()) for p in args.roots)
    NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(args.notebook.parent)}}).execute()
    out = args.out or args.notebook
    nbformat.write(nb, out)
    print(f"executed {args.notebook.name} on {', '.join(map(str, args.roots))} → {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
