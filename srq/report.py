"""``srq-report <sweep or outputs dirs> --out DIR``: a markdown report with PNG figures.

Figures (Y-PSNR of one test set, mean over seeds, error bars = sample std):
- ``psnr_vs_bits.png``: PSNR against bit-width, one panel per model, one line per method
  (cell label), FP dashed;
- ``drop_vs_time.png``: PSNR drop from FP against process time (calibrate + fine-tune s);
- ``size_vs_psnr.png``: quantized model size (MB) against PSNR, FP points included;
- ``visual_<model>_<bits>_<set>_<image>.png``: HR | bicubic | FP | each method on one fixed
  crop, for the images the runs saved (``eval.save_images``).
Tables: cells over seeds (val and every test set), paired comparisons (``--compare A B``),
and the published numbers of the experiment configs' ``paper:`` block beside ours.
``--wandb`` logs the same figures and tables to W&B under the sweep's group.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from srq.analysis import Cell, cells, fmt_stat, load_runs, mean_std, paired, paired_table, seeds_table, set_names
from srq.errors import SrqError
from srq.results import write_text_atomic

_BITS = re.compile(r"^w(p?)(\d+)a(\d+)$")


def bits_order(name: str) -> tuple:
    """Sort key of a bits name: fp32 last, then by weight and activation bits (wp4a8 after w4a8)."""
    m = _BITS.match(name)
    if not m:
        return (1, 0, 0, name)
    return (0, int(m.group(2)), int(m.group(3)), m.group(1))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _std(std: float) -> float:
    """An error bar's half-length: 0 for a single run (std is nan)."""
    return 0.0 if std != std else std


def _quantized(cs: list[Cell]) -> list[Cell]:
    return [c for c in cs if c.method != "fp"]


def figure_psnr_vs_bits(cs: list[Cell], set_name: str, path: Path) -> Path:
    plt = _plt()
    models = list(dict.fromkeys(c.model for c in cs))
    fig, axes = plt.subplots(1, len(models), figsize=(4.8 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [c for c in _quantized(cs) if c.model == model]
        bits = sorted({c.bits for c in mine}, key=bits_order)
        for label in dict.fromkeys(c.label for c in mine):
            pts = sorted(((bits.index(c.bits), *mean_std(c.values(set_name).values())[:2])
                          for c in mine if c.label == label and c.values(set_name)))
            if pts:
                xs, ys, es = zip(*pts)
                ax.errorbar(xs, ys, yerr=[_std(e) for e in es], marker="o", capsize=3,
                            label=label)
        fp = next((c.fp(set_name) for c in cs if c.model == model and c.fp(set_name)), None)
        if fp:
            ax.axhline(fp, ls="--", c="k", lw=1, label=f"FP {fp:.2f}")
        ax.set_xticks(range(len(bits)), bits)
        ax.set_title(f"{model} · {set_name}")
        ax.set_xlabel("bits")
        ax.set_ylabel("Y-PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def figure_drop_vs_time(cs: list[Cell], set_name: str, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    markers = "osD^v<>pP*X"
    models = list(dict.fromkeys(c.model for c in cs))
    for c in _quantized(cs):
        vals, fp = c.values(set_name), c.fp(set_name)
        if not vals or fp is None:
            continue
        seconds = (c.seconds("calibrate") or 0) + (c.seconds("finetune") or 0)
        mean, std, _ = mean_std(vals.values())
        ax.errorbar(max(seconds, 0.1), fp - mean, yerr=_std(std), capsize=3,
                    marker=markers[models.index(c.model) % len(markers)], ls="none")
        ax.annotate(f"{c.label} {c.bits}", (max(seconds, 0.1), fp - mean), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("process time: calibrate + fine-tune (s, log)")
    ax.set_ylabel(f"{set_name} Y-PSNR drop from FP (dB)")
    ax.set_title("PSNR drop vs process time (" + ", ".join(
        f"{m}: {markers[i % len(markers)]}" for i, m in enumerate(models)) + ")", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def figure_size_vs_psnr(cs: list[Cell], set_name: str, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    seen_fp = set()
    for c in cs:
        vals = c.values(set_name)
        if not vals:
            continue
        mean, std, _ = mean_std(vals.values())
        ax.errorbar(c.size_mb, mean, yerr=_std(std), marker="o", capsize=3, ls="none")
        ax.annotate(f"{c.model} {c.label} {c.bits}", (c.size_mb, mean), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
        fp = c.fp(set_name)
        if c.model not in seen_fp and fp is not None:
            seen_fp.add(c.model)
            size = c.runs[0]["model_size_mb"]["fp32"]
            ax.scatter([size], [fp], marker="*", s=120, c="k")
            ax.annotate(f"{c.model} FP", (size, fp), fontsize=7, xytext=(3, -9), textcoords="offset points")
    ax.set_xlabel("model size (MB; quantized payload, FP32 for ★)")
    ax.set_ylabel(f"{set_name} Y-PSNR (dB)")
    ax.set_title("model size vs PSNR")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _per_image_psnr(run: dict, set_name: str, image: str) -> float | None:
    import csv

    path = Path(run["run_dir"]) / "per_image.csv"
    if not path.is_file():
        return None
    for row in csv.DictReader(path.open()):
        if row["set"] == set_name and row["image"] == image:
            return float(row["psnr_y"])
    return None


def saved_images(cs: list[Cell]) -> dict[tuple, dict[str, Path]]:
    """{(model, bits, set, image): {cell label: SR png of its first seed that saved it}}."""
    from srq.data.benchmark import BENCHMARK_SETS

    out: dict[tuple, dict[str, Path]] = {}
    for c in _quantized(cs):
        for run in sorted(c.runs, key=lambda r: (r.get("seed") is None, r.get("seed"))):
            for png in sorted((Path(run["run_dir"]) / "sr").glob("*.png")):
                known = [s for s in BENCHMARK_SETS if png.stem.startswith(s + "_")]
                if not known:  # a folder set or the val split: no HR to show beside it
                    continue
                set_name = max(known, key=len)
                image = png.stem[len(set_name) + 1:]
                out.setdefault((c.model, c.bits, set_name, image), {}).setdefault(c.label, png)
    return out


def figure_visual(key: tuple, panels: dict[str, Path], cs: list[Cell], path: Path, crop: int,
                  crop_at: tuple[int, int] | None = None) -> Path:
    """HR | bicubic | FP | each method on one crop (HR pixels) of one image, PSNR of the
    whole image in the titles (FP and bicubic computed here, methods from the runs)."""
    import torch

    from srq.data.benchmark import benchmark_set
    from srq.data.images import imresize, read_image, to_float, to_uint8
    from srq.metrics.sr import sr_image_metrics
    from srq.models.zoo import build_model, get_spec

    model_name, bits, set_name, image = key
    scale = get_spec(model_name).scale
    pairs = benchmark_set(set_name, scale)
    index = [p.name for p in pairs.pairs].index(image)
    _, lr, hr = pairs[index]
    bicubic = to_uint8(imresize(to_float(lr), scale).clamp(0, 1))
    with torch.no_grad():
        fp = to_uint8(build_model(model_name).eval()(to_float(lr)[None])[0].clamp(0, 1))

    def psnr(img):
        return float(sr_image_metrics(img[None], hr[None], scale)["psnr_y"][0])

    columns = [("HR", hr, None), ("bicubic", bicubic, psnr(bicubic)), ("FP", fp, psnr(fp))]
    by_label = {c.label: c for c in cs if c.model == model_name and c.bits == bits}
    for label, png in panels.items():
        run = next(r for r in by_label[label].runs if Path(r["run_dir"]) == png.parent.parent)
        columns.append((f"{label} {bits}", read_image(png), _per_image_psnr(run, set_name, image)))
    h, w = hr.shape[-2:]
    c = min(crop, h, w)
    y0, x0 = crop_at if crop_at else ((h - c) // 2, (w - c) // 2)
    y0, x0 = min(max(0, y0), h - c), min(max(0, x0), w - c)
    plt = _plt()
    fig, axes = plt.subplots(1, len(columns), figsize=(2.3 * len(columns), 2.7), squeeze=False)
    for ax, (title, img, value) in zip(axes[0], columns):
        ax.imshow(img[:, y0:y0 + c, x0:x0 + c].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(title + ("" if value is None else f"\n{value:.2f} dB"), fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{model_name} ×{scale} · {set_name}/{image} · crop {c}² at ({y0}, {x0})", fontsize=9)
    return _save(fig, path)


def experiment_paper(name: str) -> dict:
    """The ``paper:`` block of ``conf/experiment/<name>.yaml`` (for runs not launched by it)."""
    from importlib import resources

    import yaml

    path = resources.files("srq.conf").joinpath("experiment", f"{name}.yaml")
    if not path.is_file():
        options = sorted(p.name[:-5] for p in resources.files("srq.conf").joinpath("experiment").iterdir()
                         if p.name.endswith(".yaml"))
        raise SrqError(f"--paper {name}: no such experiment; valid: {', '.join(options)}")
    paper = yaml.safe_load(path.read_text()).get("paper")
    if not paper:
        raise SrqError(f"--paper {name}: that experiment names no published table (paper: null)")
    return paper


def paper_table(runs: list[dict], cs: list[Cell], extra: list[dict] = ()) -> str:
    """Ours (mean ± std (n) over seeds) beside the published numbers of each experiment
    config's ``paper:`` block (``values: {method: {bits: {set: value}}}``) and of ``extra``."""
    papers = {p["table"]: p for p in extra}
    for r in runs:
        p = (r.get("config") or {}).get("paper")
        if p:
            papers.setdefault(p["table"], p)
    out = []
    for title, p in papers.items():
        metric = p.get("metric", "psnr_y")
        fp = p.get("fp") or {}
        out += [f"**{title}** (paper model: {p.get('model', '?')}; {metric})", "",
                "| model | method | bits | set | ours | paper | ours − FP | paper − FP |",
                "|" + "---|" * 8]
        missing = 0
        for method, by_bits in (p.get("values") or {}).items():
            for bits, by_set in by_bits.items():
                for set_name, published in by_set.items():
                    mine = [c for c in cs if c.method == method and c.bits == bits and c.values(set_name, metric)]
                    if not mine:
                        missing += 1
                    for c in mine:
                        vals = list(c.values(set_name, metric).values())
                        ofp = c.fp(set_name, metric)
                        od = f"{mean_std(vals)[0] - ofp:+.2f}" if ofp is not None else "–"
                        pd = f"{published - fp[set_name]:+.2f}" if set_name in fp else "–"
                        out.append(f"| {c.model} | {method} | {bits} | {set_name} | {fmt_stat(vals)} | "
                                   f"{published:.2f} | {od} | {pd} |")
        if missing:
            out += ["", f"({missing} published rows have no run here.)"]
        out.append("")
    return "\n".join(out)


def build_report(roots: list[Path], out: Path, set_name: str | None = None,
                 compare: list[tuple[str, str]] = (), crop: int = 96,
                 crop_at: tuple[int, int] | None = None, wandb_project: str | None = None,
                 papers: list[str] = ()) -> Path:
    """Write ``out/report.md`` and its figures; returns the report's path."""
    runs = load_runs(*roots)
    if not runs:
        raise SrqError(f"no results.json under {', '.join(map(str, roots))}; point srq-report at a "
                       "sweep dir (outputs/multiruns/<date>/<time>) or at outputs/")
    sets = set_names(runs)
    set_name = set_name or sets[0]
    if set_name not in sets:
        raise SrqError(f"--set {set_name}: the runs evaluated {', '.join(sets)}; pick one of those")
    out.mkdir(parents=True, exist_ok=True)
    cs = cells(runs)
    figures = {
        "PSNR vs bit-width": figure_psnr_vs_bits(cs, set_name, out / "psnr_vs_bits.png"),
        "PSNR drop vs process time": figure_drop_vs_time(cs, set_name, out / "drop_vs_time.png"),
        "Model size vs PSNR": figure_size_vs_psnr(cs, set_name, out / "size_vs_psnr.png"),
    }
    for key, panels in saved_images(cs).items():
        name = "visual_" + "_".join(key) + ".png"
        figures[f"Visual comparison {key[0]} {key[1]} {key[2]}/{key[3]}"] = figure_visual(
            key, panels, cs, out / name, crop, crop_at)
    lines = [f"# srq report: {', '.join(str(r) for r in roots)}", "",
             f"{len(runs)} runs in {len(cs)} cells (runs that differ only in seed form one cell); "
             f"figures use {set_name} Y-PSNR, mean over seeds, error bars = sample std.", "",
             "## Cells over seeds (Y-PSNR; val = held-out images, never a test set)", "",
             seeds_table(runs), ""]
    for a, b in compare:
        pairs = paired(runs, a, b)
        lines += [f"## {a} vs {b}, paired by seed", "",
                  paired_table(pairs) if pairs else f"(no runs of {a} and {b} share a model, bits and seed)", ""]
    published = paper_table(runs, cs, [experiment_paper(p) for p in papers])
    if published:
        lines += ["## Beside the published numbers", "", published]
    lines += ["## Figures", ""]
    lines += [f"### {title}\n\n![{title}]({path.name})\n" for title, path in figures.items()]
    report = write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
    if wandb_project:
        log_to_wandb(wandb_project, roots, runs, figures, compare)
    return report


def log_to_wandb(project: str, roots: list[Path], runs: list[dict], figures: dict, compare) -> None:
    """The report's figures and tables as one W&B run (job_type report) in the sweep's group."""
    import wandb

    group = Path(roots[0]).resolve().name
    run = wandb.init(project=project, group=group, job_type="report", name=f"report-{group}",
                     dir=str(Path(roots[0])), reinit=True)
    try:
        payload = {f"report/{t}": wandb.Image(str(p)) for t, p in figures.items()}
        rows = []
        for c in cells(runs):
            for s in (["val"] if any(r.get("val") for r in runs) else []) + set_names(runs):
                mean, std, n = mean_std(c.values(s).values())
                if n:
                    rows.append([c.model, c.label, c.bits, s, mean, std if n > 1 else None, n])
        payload["report/cells"] = wandb.Table(
            columns=["model", "method", "bits", "set", "psnr_y_mean", "psnr_y_std", "n"], data=rows)
        for a, b in compare:
            payload[f"report/{a}_vs_{b}"] = wandb.Table(
                columns=["model", "bits", "set", "mean_diff", "n", "wins"],
                data=[[p.model, p.bits, p.set_name, mean_std(p.diffs)[0], len(p.diffs), p.wins]
                      for p in paired(runs, a, b)])
        run.log(payload)
    finally:
        run.finish()


def _crop_at(text: str | None):
    if not text:
        return None
    y, _, x = text.partition(",")
    return int(y), int(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="srq-report", description=__doc__.splitlines()[0])
    parser.add_argument("roots", type=Path, nargs="+", help="sweep, run or outputs directories")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.md and the PNGs")
    parser.add_argument("--set", dest="set_name", help="test set of the figures (default: the first)")
    parser.add_argument("--compare", nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="paired comparison A − B by seed (repeatable)")
    parser.add_argument("--crop", type=int, default=96, help="side of the visual crop in HR pixels")
    parser.add_argument("--crop-at", help="top,left of the visual crop in HR pixels (default: centre)")
    parser.add_argument("--wandb", metavar="PROJECT", help="also log figures and tables to W&B")
    parser.add_argument("--paper", action="append", default=[], metavar="EXPERIMENT",
                        help="also print the published numbers of this experiment= config")
    args = parser.parse_args(argv)
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        print("srq-report: error: the figures need matplotlib; pip install \"srq[report]\"",
              file=sys.stderr)
        return 2
    try:
        path = build_report(args.roots, args.out, args.set_name, [tuple(c) for c in args.compare],
                            args.crop, _crop_at(args.crop_at), args.wandb, args.paper)
    except SrqError as exc:
        print(f"srq-report: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} and {len(list(args.out.glob('*.png')))} figures in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
