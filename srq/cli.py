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
    except BaseException:  # a bug or ^C: still leave no half-made run dir behind
        _remove_failed_run_dir(Path(cfg.paths.output_dir), RESULTS)
        raise
    return optimized_value(results, cfg.get("optimized_metric"))


def optimized_value(results: dict, metric: str | None) -> float | None:
    """``optimized_metric`` (``val/<key>`` or ``<set>/<key>``) read from a run's results."""
    if not metric:
        return None
    set_name, _, key = str(metric).partition("/")
    summary = results.get("val") if set_name == "val" else results["metrics"].get(set_name)
    return None if summary is None else float(summary[key])


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
        for parent in list(run_dir.parents)[:3]:  # <date>/, runs/, outputs/ when now empty
            try:
                parent.rmdir()
            except OSError:
                break


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


def artifact_overrides(args: list[str]) -> list[str]:
    """``quantized=<file>``: the model, method and bits of the artifact as overrides (so the
    run dir and config name them), checked against any given; [] without ``quantized=``."""
    value = next((a.partition("=")[2] for a in args if a.startswith("quantized=")), None)
    if not value:
        return []
    from srq.artifact import read

    header, _ = read(value, tensors=False)
    name = header["model"].get("name")
    if not name:
        raise SrqError(f"{value} holds a {header['model'].get('class')} the zoo does not know; "
                       "evaluate it from Python (srq.load(path, model=MyNet()))")
    wanted = {"model": name, "method": header.get("method"), "bits": header.get("bits")}
    extra = []
    for key, choice in wanted.items():
        given = next((a.partition("=")[2] for a in args if a.startswith(f"{key}=")), None)
        if given is None:
            extra.append(f"{key}={choice}")
        elif given != choice:
            raise SrqError(f"{key}={given} contradicts {value}, which holds {key} {choice}; drop "
                           f"{key}= (model, method and bits come from the artifact)")
    return extra


def main() -> None:
    args = sys.argv[1:]
    problem = check_group_choices(args)
    if not problem:
        try:
            extra = artifact_overrides(args)
        except SrqError as exc:
            problem = str(exc)
        else:
            sys.argv = sys.argv[:1] + args + extra
    if problem:
        print(f"srq: error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    _main()


if __name__ == "__main__":
    main()
