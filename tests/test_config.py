"""The Hydra config tree composes for every group option (lightning-hydra-template style)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"


def _compose(overrides: list[str]):
    with initialize_config_module(config_module="srq.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_default_config_has_the_contract_groups():
    cfg = _compose([])
    for key in ("model", "method", "bits", "data", "trainer", "logger", "paths"):
        assert key in cfg, key
    assert cfg.model.name == "imdn_x4" and cfg.method.name == "fp" and cfg.bits.name == "fp32"


@pytest.mark.parametrize("group", ["model", "method", "bits", "data", "trainer", "logger",
                                   "calib", "experiment", "hparams_search"])
def test_every_option_composes(group):
    for option in _options(group):
        overrides = [f"{group}={option}"]
        if group == "data" and option == "folder":
            overrides.append("data.hr_dir=/tmp")
        cfg = _compose(overrides)
        OmegaConf.to_container(cfg.model, resolve=True)
        if group == "hparams_search":  # @package _global_: a sweeper scored on val
            assert cfg.optimized_metric == "val/psnr_y"
            assert cfg.hydra.sweeper.storage.endswith("/optuna.db") and cfg.hydra.sweeper.params
            assert cfg.method.name == option.removesuffix("_optuna").replace("dqc", "2dquant")
            # trial 0 is the composed method's values: every searched key, inside its range
            from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

            (queued,) = OmegaConf.to_container(cfg.hydra.sweeper.enqueue_trials, resolve=True)
            space, _ = create_params_from_overrides(
                [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])
            assert set(queued) == set(space)
            for key, value in queued.items():
                assert value == OmegaConf.select(cfg, key), (option, key)
                assert space[key]._contains(space[key].to_internal_repr(value)), (option, key, value)
        elif group != "experiment":  # experiments are @package _global_
            assert cfg[group] is not None


def test_run_dirs_are_unique_per_job_and_named():
    cfg = _compose(["model=pan_x2", "data=b100"])
    assert "pan_x2_fp_fp32_b100" in cfg.hydra.run.dir
    assert "%f" in OmegaConf.to_container(cfg.hydra, resolve=False)["run"]["dir"]
    assert "${hydra.job.num}" in OmegaConf.to_container(cfg.hydra, resolve=False)["sweep"]["subdir"]


def test_experiment_and_debug_compose():
    cfg = _compose(["experiment=fp_benchmark"])
    assert list(cfg.data.sets) == ["Set5", "Set14", "B100"]
    cfg = _compose(["debug=default"])
    assert cfg.eval.limit_images == 1 and cfg.logger.name == "none"


def test_every_config_group_ships_with_the_package():
    """`pip install .` (not editable) must carry every group folder as srq.conf.<group>."""
    import tomllib

    project = tomllib.loads((CONF.parent / "pyproject.toml").read_text())
    packages = set(project["tool"]["setuptools"]["packages"])
    groups = {p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert {f"srq.conf.{g}" for g in groups} <= packages


def test_every_experiment_names_its_paper_table():
    """Each experiment's header says what it reproduces; its ``paper:`` block (or null) holds
    the published numbers srq-report prints beside ours, each inside a plausible PSNR range."""
    for option in _options("experiment"):
        text = (CONF / "experiment" / f"{option}.yaml").read_text()
        assert text.splitlines()[1].startswith("# Reproduces: "), option
        paper = _compose([f"experiment={option}"]).get("paper")
        if paper is None:
            continue
        assert paper.table and paper.metric in ("psnr_y", "psnr_rgb"), option
        for method, by_bits in paper["values"].items():
            for bits, by_set in by_bits.items():
                assert bits in _options("bits"), (option, bits)
                for set_name, value in by_set.items():
                    assert set_name in paper.fp and 10 < value <= paper.fp[set_name] + 1e-9, (option, method)
