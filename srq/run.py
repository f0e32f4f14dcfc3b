"""One srq run: config → model + data → method → evaluation → results.json (+ W&B)."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from srq.data.benchmark import build_test_sets
from srq.errors import SrqError
from srq.lit.evaluate import evaluate_sets
from srq.loggers import finish_wandb, make_loggers
from srq.methods import build_method
from srq.models.zoo import build_model, count_params, get_spec
from srq.quant.size import fp32_size_mb
from srq.results import (
    git_commit,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)

RESULTS = "results.json"


def evaluate(model: torch.nn.Module, sets, cfg: DictConfig, loggers, prefix: str = ""):
    """Metrics of ``model`` on ``sets``: ({set: summary}, per-image records, seconds)."""
    trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False)
    return evaluate_sets(
        model, sets, trainer, num_workers=cfg.data.get("num_workers", 0), tile=cfg.eval.tile,
        tile_overlap=cfg.eval.tile_overlap, log_images=cfg.eval.log_images if loggers else 0,
        image_crop=cfg.eval.image_crop, prefix=prefix,
    )


def run(cfg: DictConfig) -> dict:
    """Execute one run described by ``cfg``; return the results dict (also written to disk)."""
    run_dir = Path(cfg.paths.output_dir)
    if (run_dir / RESULTS).exists():
        raise SrqError(f"{run_dir / RESULTS} already exists; srq never overwrites a run: "
                       "choose another hydra.run.dir")
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    spec = get_spec(cfg.model.name)
    method = build_method(cfg.method.name, cfg.method)
    sets = build_test_sets(cfg.data, spec.scale)
    if cfg.eval.get("limit_images"):
        for s in sets:
            s.pairs = s.pairs[: cfg.eval.limit_images]
    teacher = build_model(cfg.model.name, pretrained=cfg.model.get("pretrained", True),
                          checkpoint=cfg.model.get("checkpoint"))
    config = OmegaConf.to_container(cfg, resolve=True)
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    resume = resume_checkpoint(cfg)
    loggers = make_loggers(cfg.logger, run_dir, run_dir.name, _sweep_group(), config)
    try:
        result = method.apply(teacher, context={"cfg": cfg, "spec": spec, "run_dir": run_dir,
                                                "loggers": loggers, "resume": resume})
        student = result.student
        metrics, records, t_eval = evaluate(student, sets, cfg, loggers)
        warnings = output_warnings(student, sets, metrics)
        if student is teacher:
            fp_metrics = metrics
        else:
            fp_metrics, fp_records = _fp_reference(teacher, sets, cfg)
            fp_by_image = {(r["set"], r["image"]): r for r in fp_records}
            for rec in records:
                rec["fp_psnr_y"] = fp_by_image[(rec["set"], rec["image"])]["psnr_y"]
        results = {
            "model": spec.name, "scale": spec.scale, "method": cfg.method.name,
            "bits": cfg.bits.name, "data": cfg.data.name,
            "metrics": metrics, "fp_metrics": fp_metrics,
            "time_s": {**result.time_s, "evaluate": round(t_eval, 3)},
            "model_size_mb": {"fp32": round(fp32_size_mb(teacher), 4),
                              "quantized": round(result.info.get("size_mb", fp32_size_mb(teacher)), 4)},
            "params": count_params(teacher),
            "quantization_map": result.info.get("quantization_map", {}),
            "calibration": result.info.get("calibration"),
            "finetune": result.info.get("finetune"),
            "eval": {"tile": cfg.eval.tile, "tile_overlap": cfg.eval.tile_overlap,
                     "limit_images": cfg.eval.get("limit_images")},
            "device": str(next(student.parameters()).device),
            "warnings": warnings,
            "config": config, "git_commit": git_commit(), "seed": cfg.seed,
        }
        write_csv_atomic(run_dir / "per_image.csv", records)
        write_json_atomic(run_dir / RESULTS, results)
        _log_tables(loggers, metrics, records, results["quantization_map"])
    finally:
        finish_wandb()
    for set_name, m in metrics.items():
        log.info("%s %s: psnr_y %.3f ssim_y %.4f psnr_rgb %.3f (%d images)", spec.name, set_name,
                 m["psnr_y"], m["ssim_y"], m["psnr_rgb"], m["n_images"])
    log.info("results: %s", run_dir / RESULTS)
    return results


def output_warnings(model, sets, metrics: dict) -> list[str]:
    """Problems a number alone would hide: NaN metrics, or an output that has collapsed to
    a (nearly) constant image (checked on the first image of the first set)."""
    warnings = [f"{name}: {key} is NaN" for name, m in metrics.items() for key, v in m.items()
                if isinstance(v, float) and v != v]
    if sets and len(sets[0]):
        _, lr, _ = sets[0][0]
        device = next(model.parameters()).device
        with torch.no_grad():
            out = model((lr[None].float() / 255).to(device))
        if not torch.isfinite(out).all():
            warnings.append("the quantized model outputs NaN/inf")
        elif float(out.clamp(0, 1).std()) < 1e-3:
            warnings.append("the output collapsed to a constant image (std < 1e-3 on "
                            f"{sets[0].name}/{sets[0].pairs[0].name}); the bit-width is too low "
                            "for this method/model")
    for w in warnings:
        log.warning(w)
    return warnings


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """``resume=<run dir>`` (or a ``.ckpt`` file) → the checkpoint fine-tuning restarts from.

    The earlier run must be the same model, method, bits and seed; its checkpoint holds the
    fine-tuned quantizer state, optimizers and epoch counter.
    """
    target = cfg.get("resume")
    if not target:
        return None
    path = Path(str(target)).expanduser()
    ckpt = path if path.suffix == ".ckpt" else path / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise SrqError(f"resume={target}: no checkpoint at {ckpt} (fine-tuning writes "
                       "<run dir>/checkpoints/last.ckpt after each epoch)")
    old_cfg = ckpt.parent.parent / "config.yaml"
    if old_cfg.is_file():
        old = OmegaConf.load(old_cfg)
        keys = ("model.name", "method.name", "bits.name", "seed")
        diff = [f"{k}: {OmegaConf.select(old, k)} → {OmegaConf.select(cfg, k)}" for k in keys
                if OmegaConf.select(old, k) != OmegaConf.select(cfg, k)]
        if diff:
            raise SrqError(f"resume={target} was a different run ({'; '.join(diff)}); use the "
                           "same model/method/bits/seed")
    return str(ckpt)


_FP_MEMO: dict[str, tuple[dict, list]] = {}


def _fp_reference(teacher, sets, cfg):
    """FP metrics of the teacher, computed once per process for the same model, checkpoint,
    data and evaluation settings (a multirun sweep runs its jobs in one process)."""
    key = OmegaConf.to_yaml(OmegaConf.create({
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "eval": OmegaConf.to_container(cfg.eval, resolve=True),
        "images": [[s.name, [p.name for p in s.pairs]] for s in sets]}))
    if key not in _FP_MEMO:
        metrics, records, _ = evaluate(teacher, sets, cfg, [], prefix="fp/")
        _FP_MEMO[key] = (metrics, records)
    return _FP_MEMO[key]


def _sweep_group() -> str | None:
    """W&B group = the multirun sweep dir, so a sweep's jobs show together."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return Path(hc.sweep.dir).name if hc.mode.name == "MULTIRUN" else None


def _log_tables(loggers, metrics: dict, records: list[dict], qmap: dict) -> None:
    for logger in loggers:
        if hasattr(logger, "log_table"):
            if qmap:
                logger.log_table("quantization_map", columns=["module", "weight", "input", "output"],
                                 data=[[name, f.get("weight"), f.get("input"), f.get("output")]
                                       for name, f in qmap.items()])
            rows = [[s, m["psnr_y"], m["ssim_y"], m["psnr_rgb"], m["n_images"]]
                    for s, m in metrics.items()]
            logger.log_table("metrics", columns=["set", "psnr_y", "ssim_y", "psnr_rgb", "n_images"],
                             data=rows)
            logger.log_table("per_image", columns=list(records[0]),
                             data=[list(r.values()) for r in records])
