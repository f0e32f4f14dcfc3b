"""srq as a library: ``config`` → ``quantize`` → ``save`` / ``load``.

    >>> import srq                                                         # doctest: +SKIP
    >>> cfg = srq.config("2dquant", bits="w4a4", overrides=["dqc.iterations=50"])
    >>> qmodel = srq.quantize(model, cfg, calib=lr_batches)   # any nn.Module
    >>> srq.save(qmodel, "mine_w4a4.srq")
    >>> qmodel = srq.load("mine_w4a4.srq", model=MyNet())

Method names, bit configs and keys are the CLI's (``conf/method/*.yaml``, ``conf/bits``).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from srq.errors import SrqError
from srq.methods.config import MethodConfig

_ROOT_KEYS = ("bits.", "seed=")


def compose_run_config(overrides: list[str]):
    """The Hydra run config for ``overrides`` (no run directory is made)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="srq.conf", version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise SrqError(str(exc).splitlines()[0]) from None


def method_config(cfg, scale: int | None = None) -> MethodConfig:
    """The typed method config of a composed run config (bits and calibration resolved)."""
    from omegaconf import OmegaConf

    from srq.methods.config import build_method_config, resolve_calib

    def plain(node):
        return OmegaConf.to_container(node, resolve=True)

    calib = resolve_calib(plain(cfg.calib), plain(cfg.method).get("calib"), scale)
    return build_method_config(plain(cfg.method), plain(cfg.bits), calib)


def config(method: str, bits: str = "fp32", overrides: list[str] | tuple = (),
           calib: str = "t91", model: str | None = None) -> MethodConfig:
    """The typed, validated config of ``method`` at ``bits`` (names of ``conf/method`` and
    ``conf/bits``); ``overrides`` are the CLI's ``method.<key>=<value>`` without the
    ``method.`` prefix (``calib.*`` are the method's calibration settings; ``bits.*`` and
    ``seed=`` are the run's); ``calib``: the ``calib=`` group under them; ``model``: a zoo
    name whose own settings for the method (``conf/method_model/<method>_<model>``) apply."""
    args = [f"method={method}", f"bits={bits}", f"calib={calib}", "logger=none"]
    if model is not None:
        args.insert(0, f"model={model}")
    for item in overrides:
        key = item.lstrip("+~")
        if key.startswith("calib."):  # the method's own calibration settings (they win)
            args.append("++method." + key)
        elif key.startswith(("method.", *_ROOT_KEYS)):
            args.append(item)
        else:
            args.append(item[: len(item) - len(key)] + "method." + key)
    from srq.cli import check_group_choices

    problem = check_group_choices(args[:4])
    if problem:
        raise SrqError(problem)
    return method_config(compose_run_config(args))


def quantize(model: nn.Module, cfg: MethodConfig, calib=None, *, train=None, val=None, hr=None,
             feature_blocks=None, fit=None, teacher=None) -> nn.Module:
    """The frozen quantized copy of ``model`` (``model`` itself is left unchanged).

    ``calib``: an (N, 3, h, w) tensor in [0, 1] or an iterable of such batches. Fine-tuning
    methods also take ``train`` (default: ``calib``) and ``val`` patches, ``feature_blocks``
    (module names or globs of ``model``; default: output-only distillation) and ``fit``
    (a :class:`srq.lit.fit.Fitter`). ``hr``: HR crops of ``calib`` for sensitive k-means.
    Seconds and info are in ``qmodel.srq_method["info"]``.
    """
    from srq.methods import run_method

    if not isinstance(cfg, MethodConfig):
        raise SrqError(f"cfg must be a method config from srq.config(...), not {type(cfg).__name__}")
    if feature_blocks:
        feature_blocks = _match_names(model, feature_blocks)
    result = run_method(model, cfg, calib, train=train, val=val, hr=hr,
                        feature_blocks=feature_blocks, fit=fit, teacher=teacher)
    qmodel = result.model
    info = {k: v for k, v in result.info.items() if k != "quantization_map"}
    qmodel.srq_method = {"name": cfg.name, "bits": cfg.bits.name, "config": cfg.to_dict(),
                         "info": {**info, "time_s": result.time_s}}
    return qmodel


def _match_names(model: nn.Module, names) -> list[str]:
    import fnmatch

    all_names = [n for n, _ in model.named_modules() if n]
    out = [n for n in all_names if any(fnmatch.fnmatchcase(n, p) for p in names)]
    missing = [p for p in names if not any(fnmatch.fnmatchcase(n, p) for n in all_names)]
    if missing:
        raise SrqError(f"feature_blocks: no module of {type(model).__name__} matches {missing[0]!r}")
    return out


def save(qmodel: nn.Module, path: str | Path) -> Path:
    """Write the frozen quantized model to ``path`` (a ``.srq`` artifact, atomically)."""
    from srq.artifact import save as save_artifact

    save_artifact(qmodel, path)
    return Path(path)


def load(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """A frozen quantized model from ``path``: zoo models are rebuilt from the artifact; pass
    ``model`` (a fresh instance of its class) for any other."""
    from srq.artifact import load as load_artifact

    return load_artifact(path, model)


__all__ = ["config", "load", "quantize", "save"]
