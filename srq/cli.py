"""The ``srq`` command: ``srq model=<name> method=<name> bits=<name> data=<name> [-m]``."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from srq.errors import SrqError


@hydra.main(version_base="1.3", config_path="pkg://srq.conf", config_name="config")
def _main(cfg: DictConfig) -> float | None:
    from srq.run import RESULTS, run

    _quiet_libraries()

    try:
        results = run(cfg)
    except SrqError as exc:
        print(f"srq: error: {exc}", file=sys.stderr)
        _remove_failed_run_dir(Path(cfg.paths.output_dir), RESULTS)
        raise SystemExit(2) from None
    metric = cfg.get("optimized_metric")
    if metric:
        set_name, key = metric.split("/")
        return results["metrics"][set_name][key]
    return None


def _quiet_libraries() -> None:
    """Keep the console for srq's own lines and progress bars."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def _remove_failed_run_dir(run_dir: Path, results_name: str) -> None:
    """A failed run leaves nothing behind: drop its Hydra dir if it holds no results and no
    fine-tuning checkpoint (that one stays for ``resume=<run dir>``)."""
    if (run_dir.is_dir() and (run_dir / ".hydra").is_dir() and not (run_dir / results_name).exists()
            and not (run_dir / "checkpoints").exists()):
        shutil.rmtree(run_dir, ignore_errors=True)


GROUPS = ("model", "method", "bits", "data", "trainer", "logger", "experiment", "debug",
          "hparams_search")


def check_group_choices(args: list[str]) -> str | None:
    """One-line message for a ``group=option`` argument naming no config, else None.

    Hydra would report it too, over several lines; sweeps (``a,b``) are checked per item.
    """
    from importlib import resources

    conf = resources.files("srq.conf")
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in GROUPS or any(c in value for c in "()[]{}*$"):
            continue
        options = sorted(p.name[:-5] for p in conf.joinpath(key).iterdir()
                         if p.name.endswith(".yaml"))
        for choice in value.split(","):
            if choice not in options and choice != "null":
                return (f"unknown {key} {choice!r}; valid {key} options: {', '.join(options)}")
    return None


def main() -> None:
    problem = check_group_choices(sys.argv[1:])
    if problem:
        print(f"srq: error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    _main()


if __name__ == "__main__":
    main()
