"""Experiment loggers: CSV always, W&B when configured (offline without a key, never hanging)."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger


def wandb_key_configured() -> bool:
    """True when an API key is in the environment or in ~/.netrc (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def wandb_mode(requested: str = "auto") -> str:
    """The W&B mode to use: ``WANDB_MODE`` wins, else ``requested``; ``auto`` → online only
    with a configured key, offline otherwise (offline never touches the network)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    os.environ.pop("WANDB_MODE", None)  # an empty value would fail wandb's validation
    if requested == "auto":
        return "online" if wandb_key_configured() else "offline"
    return requested


def make_loggers(logger_cfg, run_dir: Path, run_name: str, group: str | None,
                 config: dict) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    if logger_cfg.get("name") != "wandb":
        return loggers
    mode = wandb_mode(logger_cfg.get("mode", "auto"))
    if mode == "disabled":
        return loggers
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_SILENT", "true")
    # mode goes to wandb.init; WandbLogger(offline=True) would set WANDB_MODE for the whole
    # process and leak into later jobs of a multirun
    loggers.append(WandbLogger(
        project=logger_cfg.get("project", "srq"), entity=logger_cfg.get("entity"),
        name=run_name, group=group, tags=list(logger_cfg.get("tags") or []),
        save_dir=str(run_dir), config=config, mode=mode,
    ))
    return loggers


def finish_wandb() -> None:
    """End the W&B run if one is active (call in a ``finally``)."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
