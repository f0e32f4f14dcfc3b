"""One srq run: config → model + data → method → evaluation → results.json (+ W&B)."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from srq.data.benchmark import build_test_sets
from srq.data.validation import VAL_SET, calibration_hashes, validation_config, validation_set
from srq.errors import SrqError
from srq.lit.evaluate import evaluate_sets
from srq.loggers import finish_wandb, make_loggers
from srq.methods import FPConfig, method_function
from srq.methods.config import MethodConfig
from srq.models.zoo import build_model, count_params, get_spec
from srq.quant import quantization_map
from srq.quant.integer import integer_report
from srq.quant.size import fp32_size_mb
from srq.results import (
    git_commit,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)

RESULTS = "results.json"


def evaluate(model: torch.nn.Module, sets, cfg: DictConfig, loggers, prefix: str = "",
             save_dir: Path | None = None):
    """Metrics of ``model`` on ``sets``: ({set: summary}, per-image records, seconds).
    ``save_dir``: where the SR outputs of ``eval.save_images`` go (None: nowhere)."""
    trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False)
    return evaluate_sets(
        model, sets, trainer, num_workers=cfg.data.get("num_workers", 0), tile=cfg.eval.tile,
        tile_overlap=cfg.eval.tile_overlap, log_images=cfg.eval.log_images if loggers else 0,
        image_crop=cfg.eval.image_crop, prefix=prefix, save_dir=save_dir,
        save_images=cfg.eval.get("save_images") or (),
    )


def trainer_device(trainer_cfg) -> torch.device:
    """Where calibration and fine-tuning compute: the ``trainer`` config's accelerator."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise SrqError("trainer=gpu but no CUDA device is visible here; use trainer=cpu "
                           "(or trainer=default, which picks the GPU when there is one)")
        return torch.device("cuda")
    if accelerator == "auto" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def validate_options(cfg: DictConfig) -> None:
    """Options checked before any work starts (one clear line each)."""
    tile, overlap = cfg.eval.get("tile"), cfg.eval.get("tile_overlap")
    if tile is not None:
        if int(tile) <= 0 or overlap is None or not 0 <= int(overlap) < int(tile):
            raise SrqError(f"eval.tile={tile} eval.tile_overlap={overlap}: tiles need "
                           "0 <= tile_overlap < tile; e.g. eval.tile=64 eval.tile_overlap=16")
    limit = cfg.eval.get("limit_images")
    if limit is not None and int(limit) < 1:
        raise SrqError(f"eval.limit_images={limit} evaluates nothing; use a positive number or null")
    export = cfg.get("export")
    if export not in (None, "onnx"):
        raise SrqError(f"export={export} is not a deployment format; use export=onnx or leave it unset")
    if export and cfg.get("quantized") is None and str(cfg.method.name) == "fp":
        raise SrqError("export=onnx exports a quantized model; pick a method (e.g. method=mse "
                       "bits=w8a8) or quantized=<file.srq>")
    if export:
        from srq.deploy import require_onnx

        require_onnx()
    val = validation_config(cfg.get("val"))
    metric = cfg.get("optimized_metric")
    if metric:
        set_name, sep, key = str(metric).partition("/")
        if not sep or key not in ("psnr_y", "ssim_y", "psnr_rgb"):
            raise SrqError(f"optimized_metric={metric}: use <set>/<metric> with metric psnr_y, "
                           "ssim_y or psnr_rgb, e.g. optimized_metric=val/psnr_y")
        if set_name == VAL_SET and not val.enabled and _sweep_group() is not None:
            raise SrqError(f"optimized_metric={metric} needs the validation split; set "
                           "val.source=t91 (or optimized_metric=null)")
        evaluated = cfg.data.get("sets") or [cfg.data.get("set_name", "folder")]
        if set_name != VAL_SET and set_name not in evaluated:
            raise SrqError(f"optimized_metric={metric}: this run evaluates {', '.join(evaluated)}, "
                           f"not {set_name}; use optimized_metric=val/{key}")
        if set_name != VAL_SET:
            log.warning("optimized_metric=%s chooses on a test set; choose on val/%s (held-out "
                        "images) so that test numbers stay unbiased", metric, key)


def set_threads(cfg: DictConfig) -> int:
    """torch's intra-op threads for this job: ``threads`` when set; under
    ``hydra/launcher=joblib`` the machine's cores shared among ``n_jobs`` parallel jobs
    (cores // n_jobs, at least 1), under submitit its ``cpus_per_task``; else torch's default."""
    import os

    n = cfg.get("threads")
    if n is None:
        from hydra.core.hydra_config import HydraConfig

        multirun = HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN"
        launcher = HydraConfig.get().get("launcher") if multirun else None
        target = str((launcher or {}).get("_target_", ""))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        if "joblib" in target:
            jobs = int(launcher.get("n_jobs") or -1)
            jobs = max(1, cores + 1 + jobs) if jobs < 0 else jobs  # joblib: -1 all, -2 all but one
            n = max(1, cores // max(1, jobs))
        elif "submitit" in target and launcher.get("cpus_per_task"):
            n = int(launcher.cpus_per_task)
    if n is not None:
        if int(n) < 1:
            raise SrqError(f"threads={n}: use a positive thread count, or threads=null for the default")
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def _plain(node):
    return OmegaConf.to_container(node, resolve=True)


def calibration_config(method_cfg: MethodConfig):
    from srq.data.calibration import CalibrationConfig

    c = method_cfg.calib
    return CalibrationConfig(source=c.source, num_patches=int(c.num_patches), patch_size=int(c.patch_size),
                             seed=int(c.seed), folder=c.folder,
                             folder_is_hr=True if c.folder_is_hr is None else bool(c.folder_is_hr),
                             set_name=c.set_name or "B100")


def draw_calibration(method_cfg: MethodConfig, scale: int):
    """The one calibration builder: the patches ``method_cfg.calib`` names (seed), its
    validation patches (seed + 1) and its fine-tuning patches (seed + 2)."""
    from srq.data.calibration import calibration_data

    return calibration_data(calibration_config(method_cfg), scale,
                            val_patches=method_cfg.calib.val_patches,
                            train_patches=method_cfg.train_patches)


def apply_method(teacher, method_cfg: MethodConfig, data, spec, fitter=None):
    """Run ``method_cfg`` on ``teacher`` with the app's data (``data``: from
    :func:`draw_calibration`, None for ``fp``) and the spec's feature blocks."""
    from srq.methods import run_method

    if data is None:
        return run_method(teacher, method_cfg, None)
    return run_method(teacher, method_cfg, data.calib, train=data.train, val=data.val, fit=fitter,
                      feature_blocks=spec.feature_block_names(teacher),
                      hr=data.calib.hr if method_cfg.needs_hr else None)


def quantize_from_config(cfg: DictConfig, teacher=None):
    """(method config, data, result) of a composed run config, without a run directory
    (benchmark scripts): the same builder and method call as :func:`run`."""
    from srq.api import method_config

    spec = get_spec(cfg.model.name)
    teacher = teacher if teacher is not None else build_model(cfg.model.name)
    method_cfg = method_config(cfg, spec.scale)
    data = None if isinstance(method_cfg, FPConfig) else draw_calibration(method_cfg, spec.scale)
    return method_cfg, data, apply_method(teacher, method_cfg, data, spec)


def run(cfg: DictConfig) -> dict:
    """Execute one run described by ``cfg``; return the results dict (also written to disk)."""
    run_dir = Path(cfg.paths.output_dir)
    if (run_dir / RESULTS).exists():
        raise SrqError(f"{run_dir / RESULTS} already exists; srq never overwrites a run: "
                       "choose another hydra.run.dir")
    if cfg.get("quantized"):
        return run_artifact(cfg, run_dir)
    import lightning as L

    from srq.api import method_config
    from srq.lit.fit import Fitter

    validate_options(cfg)
    set_threads(cfg)
    resume = resume_checkpoint(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    spec = get_spec(cfg.model.name)
    method_cfg = method_config(cfg, spec.scale)
    method_function(method_cfg)  # a config class without a method fails here, before any work
    device = trainer_device(cfg.trainer)
    sets = build_test_sets(cfg.data, spec.scale)
    if cfg.eval.get("limit_images"):
        for s in sets:
            s.pairs = s.pairs[: cfg.eval.limit_images]
    teacher = build_model(cfg.model.name, pretrained=cfg.model.get("pretrained", True),
                          checkpoint=cfg.model.get("checkpoint")).to(device)
    quantizing = not isinstance(method_cfg, FPConfig)
    data = None
    if quantizing:
        method_cfg.require_bits("e.g. bits=w8a8")
        data = draw_calibration(method_cfg, spec.scale)
        check_disjoint(_patch_sources(data.all_sets()), sets)
    val = held_out_validation(cfg, spec.scale, calibration_hashes(data), sets)
    config = _plain(cfg)
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    loggers = make_loggers(cfg.logger, run_dir, run_dir.name, _sweep_group(), config)
    try:
        fitter = Fitter(trainer=lambda **kw: hydra.utils.instantiate(cfg.trainer, **kw),
                        checkpoint_dir=run_dir / "checkpoints", resume=resume, seed=int(cfg.seed),
                        loggers=loggers)
        result = apply_method(teacher, method_cfg, data, spec, fitter)
        student = result.model
        artifact = None
        if quantizing:
            artifact = write_artifact(student, run_dir, cfg, method_cfg, result, data)
        calibration = None
        if data is not None:
            calibration = {**data.describe(), "batch_size": method_cfg.calib.batch_size,
                           **(result.info.get("calibration") or {})}
        size = artifact["payload_mb"] if artifact else fp32_size_mb(teacher)
        results = evaluate_and_write(cfg, run_dir, student, teacher, sets, val, loggers, {
            "model": spec.name, "scale": spec.scale, "method": cfg.method.name,
            "bits": cfg.bits.name, "data": cfg.data.name,
            "time_s": dict(result.time_s),
            "model_size_mb": {"fp32": round(fp32_size_mb(teacher), 4), "quantized": round(size, 4)},
            "params": count_params(teacher),
            "quantization_map": result.info.get("quantization_map", {}),
            "calibration": calibration,
            "finetune": result.info.get("finetune"),
            "artifact": artifact, "deployable": integer_report(student)["deployable"]})
        if cfg.get("export"):
            results = export_and_evaluate(cfg, run_dir, student, sets, results)
    finally:
        finish_wandb()
    _log_metrics(spec.name, results["metrics"], run_dir)
    return results


def evaluate_and_write(cfg: DictConfig, run_dir: Path, student, teacher, sets, val, loggers,
                       fields: dict) -> dict:
    """Evaluate ``student`` (and, once per process, the FP ``teacher``) on ``sets`` and the
    validation split ``val`` (or None); write per_image.csv (test sets), per_image_val.csv
    and results.json (``fields`` plus metrics, ``val`` and the run's common keys)."""
    every = list(sets) + ([val] if val is not None else [])
    metrics, records, t_eval = evaluate(student, every, cfg, loggers, save_dir=run_dir / "sr")
    warnings = output_warnings(student, sets, metrics)
    if student is teacher:
        fp_metrics, fp_records = metrics, records
    else:
        fp_metrics, fp_records = _fp_reference(teacher, every, cfg)
        fp_by_image = {(r["set"], r["image"]): r for r in fp_records}
        for rec in records:
            rec["fp_psnr_y"] = fp_by_image[(rec["set"], rec["image"])]["psnr_y"]
    val_summary = None
    if val is not None:
        metrics, fp_metrics = dict(metrics), dict(fp_metrics)
        val_summary = {**metrics.pop(VAL_SET), "source": cfg.val.source,
                       "images": [p.name for p in val.pairs],
                       "fp": {k: v for k, v in fp_metrics.pop(VAL_SET).items() if k != "n_images"}}
        write_csv_atomic(run_dir / "per_image_val.csv", [r for r in records if r["set"] == VAL_SET])
        records = [r for r in records if r["set"] != VAL_SET]
    head = ("model", "scale", "method", "bits", "data")
    results = {**{k: fields[k] for k in head}, "metrics": metrics, "fp_metrics": fp_metrics,
               "val": val_summary, **{k: v for k, v in fields.items() if k not in head}}
    results["time_s"] = {**fields["time_s"], "evaluate": round(t_eval, 3)}
    results.update({
        "eval": {"tile": cfg.eval.tile, "tile_overlap": cfg.eval.tile_overlap,
                 "limit_images": cfg.eval.get("limit_images")},
        "device": str(next(student.parameters()).device), "warnings": warnings,
        # fine-tuned results depend on the intra-op thread count (reduction order), see RESULTS §9
        "torch_threads": torch.get_num_threads(),
        "config": _plain(cfg), "git_commit": git_commit(), "seed": fields.get("seed", cfg.seed)})
    write_csv_atomic(run_dir / "per_image.csv", records)
    write_json_atomic(run_dir / RESULTS, results)
    _log_tables(loggers, metrics, records, results["quantization_map"])
    return results


def _log_metrics(name: str, metrics: dict, run_dir: Path) -> None:
    for set_name, m in metrics.items():
        log.info("%s %s: psnr_y %.3f ssim_y %.4f psnr_rgb %.3f (%d images)", name, set_name,
                 m["psnr_y"], m["ssim_y"], m["psnr_rgb"], m["n_images"])
    log.info("results: %s", run_dir / RESULTS)


def write_artifact(student, run_dir: Path, cfg: DictConfig, method_cfg: MethodConfig, result,
                   data) -> dict:
    """``<run dir>/<model>_<method>_<bits>.srq``; returns results.json's ``artifact``."""
    from srq.artifact import save

    path = run_dir / f"{cfg.model.name}_{cfg.method.name}_{cfg.bits.name}.srq"
    info = {k: v for k, v in result.info.items() if k != "quantization_map"}
    info["time_s"] = result.time_s
    info["torch_threads"] = torch.get_num_threads()
    info["seed"] = cfg.seed
    if data is not None:
        info["calibration"] = {**data.describe(), **(info.get("calibration") or {})}
    header = save(student, path, {"name": cfg.method.name, "bits": cfg.bits.name,
                                  "config": method_cfg.to_dict(), "info": info})
    log.info("quantized model: %s", path)
    return {"path": str(path.resolve()), "file_mb": round(path.stat().st_size / 1e6, 4),
            "payload_mb": header["payload_bytes"] / 1e6, "format_version": header["format_version"]}


def run_artifact(cfg: DictConfig, run_dir: Path) -> dict:
    """``srq quantized=<file> data=<set>``: evaluate a saved quantized model (model and
    scale from the file) through the same evaluator; FP metrics from the zoo model."""
    from srq.artifact import load, read

    validate_options(cfg)
    set_threads(cfg)
    path = Path(str(cfg.quantized)).expanduser().resolve()
    header, _ = read(path, tensors=False)
    name = header["model"].get("name")
    if not name:
        raise SrqError(f"{path} holds a {header['model'].get('class')} the zoo does not know; "
                       "evaluate it from Python (srq.load(path, model=MyNet()))")
    spec = get_spec(name)
    student = load(path)
    sets = build_test_sets(cfg.data, spec.scale)
    if cfg.eval.get("limit_images"):
        for s in sets:
            s.pairs = s.pairs[: cfg.eval.limit_images]
    info = header.get("info") or {}
    calib_info = info.get("calibration") or {}
    val = held_out_validation(cfg, spec.scale, _redrawn_t91_hashes(calib_info, spec.scale), sets)
    config = _plain(cfg)
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    loggers = make_loggers(cfg.logger, run_dir, run_dir.name, _sweep_group(), config)
    try:
        teacher = build_model(name, pretrained=True)
        artifact = {"path": str(path), "file_mb": round(path.stat().st_size / 1e6, 4),
                    "payload_mb": header["payload_bytes"] / 1e6,
                    "format_version": header["format_version"]}
        results = evaluate_and_write(cfg, run_dir, student, teacher, sets, val, loggers, {
            "model": name, "scale": spec.scale, "method": header.get("method"),
            "bits": header.get("bits"), "data": cfg.data.name,
            "time_s": {"calibrate": 0.0, "finetune": 0.0},
            "model_size_mb": {"fp32": round(fp32_size_mb(teacher), 4),
                              "quantized": round(header["payload_bytes"] / 1e6, 4)},
            "params": count_params(teacher),
            "quantization_map": quantization_map(student),
            "calibration": info.get("calibration"), "finetune": info.get("finetune"),
            "artifact": artifact, "quantized_from": str(path),
            # the seed that made the model (so re-evaluations pair with their run by seed);
            # files from before it was recorded: the calibration seed, else this run's
            "seed": info.get("seed", calib_info.get("seed", cfg.seed)), "eval_seed": cfg.seed,
            "deployable": integer_report(student)["deployable"]})
        if cfg.get("export"):
            results = export_and_evaluate(cfg, run_dir, student, sets, results)
    finally:
        finish_wandb()
    _log_metrics(name, results["metrics"], run_dir)
    return results


def export_and_evaluate(cfg: DictConfig, run_dir: Path, student, sets, results: dict) -> dict:
    """``export=onnx``: ``<run dir>/model.onnx`` from the frozen ``student``, evaluated through
    ONNX Runtime by the same evaluator; results.json gains ``export.onnx``. Non-integer offsets
    (free / two_bound) are moved to the nearest integer grid first and that model's fake-quant
    metrics are recorded too; formats with no integer grid stop with one line (results.json
    and the artifact stay)."""
    import copy
    import time

    from srq.deploy import OrtModel, export_onnx
    from srq.quant.integer import to_integer_formats

    report = integer_report(student)
    if report["blocked"]:
        name, why = next(iter(report["blocked"].items()))
        saved = (results.get("artifact") or {}).get("path") or results.get("quantized_from")
        raise SrqError(f"export=onnx: {len(report['blocked'])} quantizer(s) have no integer-grid "
                       f"equivalent, e.g. {name}: {why}; export a uniform-format method instead "
                       f"(method=mse/minmax/percentile/coreai bits=w8a8, or dobi/2dquant with "
                       f"method.mode=integer) — this run's results and "
                       f"quantized model are kept ({saved})")
    start = time.perf_counter()
    model, converted = student, None
    if report["convertible"]:
        model = copy.deepcopy(student)
        names = to_integer_formats(model)
        conv_metrics, _, _ = evaluate(model, sets, cfg, loggers=None)
        converted = {"quantizers": len(names), "to": "integer (zero point ⌊−l/Δ⌉)",
                     "metrics_fake_quant": conv_metrics,
                     "psnr_y_change": {s: round(conv_metrics[s]["psnr_y"] - results["metrics"][s]["psnr_y"], 4)
                                       for s in conv_metrics}}
        log.warning("export=onnx: %d quantizer(s) with a non-integer offset moved to the nearest "
                    "integer grid (Y-PSNR change %s)", len(names), converted["psnr_y_change"])
    info = export_onnx(model, run_dir / "model.onnx", metadata={
        "srq_model": results["model"], "scale": results["scale"], "srq_method": results["method"],
        "srq_bits": results["bits"], "srq_artifact": (results.get("artifact") or {}).get("path", "")})
    t_export = time.perf_counter() - start
    ort_model = OrtModel(info["path"], scale=results["scale"], reference=model)
    metrics, records, t_eval = evaluate(ort_model, sets, cfg, loggers=None)
    reference = converted["metrics_fake_quant"] if converted else results["metrics"]
    info.update({
        "metrics": metrics,
        "psnr_y_vs_fake_quant": {s: round(metrics[s]["psnr_y"] - reference[s]["psnr_y"], 4)
                                 for s in metrics},
        "max_abs_diff_vs_fake_quant": ort_model.max_abs_diff,
        "converted": converted, "runtime": "onnxruntime CPUExecutionProvider",
        "time_s": {"export": round(t_export, 3), "evaluate": round(t_eval, 3)}})
    write_csv_atomic(run_dir / "per_image_onnx.csv", records)
    results = {**results, "export": {"onnx": info}}
    write_json_atomic(run_dir / RESULTS, results)
    for set_name, m in metrics.items():
        log.info("onnx %s: psnr_y %.3f (fake-quant %+.4f dB), max |onnx − fake-quant| %.2e",
                 set_name, m["psnr_y"], info["psnr_y_vs_fake_quant"][set_name],
                 ort_model.max_abs_diff)
    return results


def _patch_sources(calibration_sets) -> dict[str, str]:
    """{pixel hash: description} of the images that gave calibration patches."""
    from srq.data.images import pixel_hash

    return {pixel_hash(patches.images[i]): f"{patches.cfg.source} image {i}"
            for patches in calibration_sets for i in sorted(set(patches.sources))}


def _redrawn_t91_hashes(calib_info: dict, scale: int) -> set[str]:
    """Images that gave the patches of a saved model's T91 calibration (drawn again from its
    recorded source, count, size and seed), so ``val`` holds them out as the original run did."""
    from srq.data.calibration import CalibrationConfig, calibration_data

    if calib_info.get("source") != "t91":
        return set()
    data = calibration_data(
        CalibrationConfig(source="t91", num_patches=int(calib_info["num_patches"]),
                          patch_size=int(calib_info["patch_size"]), seed=int(calib_info["seed"])),
        scale, val_patches=int(calib_info.get("val_patches") or 0),
        train_patches=(calib_info.get("train") or {}).get("num_patches"))
    return calibration_hashes(data)


def held_out_validation(cfg: DictConfig, scale: int, exclude: set[str], sets):
    """The run's ``val`` split (None when ``val.source=null``), checked against the test sets."""
    from srq.data.images import file_pixel_hash

    vcfg = validation_config(cfg.get("val"))
    if not vcfg.enabled:
        return None
    val = validation_set(vcfg, scale, exclude)
    check_disjoint({file_pixel_hash(str(p.hr), p.hr.stat().st_mtime_ns): f"val image {p.name}"
                    for p in val.pairs}, sets)
    return val


def check_disjoint(calib_hashes: dict[str, str], test_sets) -> None:
    """Calibration, fine-tuning and validation images (``calib_hashes``: {pixel hash:
    description}) never overlap an evaluated test set: compared by the sha256 of their
    decoded pixels (LR with LR, HR with HR), not by name."""
    from srq.data.images import file_pixel_hash

    for test in test_sets:
        for pair in test.pairs:
            for path in (pair.hr, pair.lr):
                if path is None:
                    continue
                found = calib_hashes.get(file_pixel_hash(str(path), Path(path).stat().st_mtime_ns))
                if found:
                    raise SrqError(
                        f"calibration data overlaps the test set: {found} has the same pixels as "
                        f"{test.name}/{pair.name}; calibrate on other images (e.g. calib=t91) or "
                        "evaluate on the disjoint split (data=b100_coreai for calib=b100_head20)")


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
    """FP metrics of the teacher, computed once per model weights, images and evaluation
    settings: in memory within a process, on disk (``eval.fp_cache``) across the processes
    of a sweep (joblib, submitit) and across sweeps (srq/lit/fp_cache.py)."""
    from srq.lit.fp_cache import cached_reference

    options = {"tile": cfg.eval.tile, "tile_overlap": cfg.eval.tile_overlap,
               "y_output": getattr(teacher, "color", "rgb"),
               "precision": str(cfg.trainer.get("precision", "32-true"))}
    key = OmegaConf.to_yaml(OmegaConf.create({
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True), "eval": options,
        "images": [[s.name, [p.name for p in s.pairs]] for s in sets]}))
    if key not in _FP_MEMO:
        def compute():
            metrics, records, _ = evaluate(teacher, sets, cfg, [], prefix="fp/")
            return metrics, records

        if cfg.eval.get("fp_cache", True):
            metrics, records, _ = cached_reference(teacher, sets, options, compute)
        else:
            metrics, records = compute()
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
