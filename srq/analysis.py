"""Reading sweeps: every results.json under some directories → rows, seed statistics per
cell, paired comparisons of two methods (used by scripts/collect_results.py, srq-report
and notebooks/results.ipynb).

A *cell* is the set of runs whose configs are equal once every ``seed`` key, the paths and
the logger are set aside (runs that differ only in seed); its statistics are the mean, the
sample standard deviation s = sqrt(Σ(x − x̄)² / (n − 1)) and n. A paired comparison of A and
B matches their runs of one (model, bits, set) by seed: d_i = x_A,i − x_B,i, reported as
mean ± std of d, n and the sign count #(d_i > 0).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

IGNORED_KEYS = ("seed",)            # at any depth
IGNORED_SECTIONS = ("paths", "logger", "threads", "hydra")


def natural_key(path: Path) -> list:
    """Sort key: job directories ``2_x`` before ``10_x``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def load_runs(*roots: str | Path) -> list[dict]:
    """Every results.json under ``roots`` (a run dir, a sweep dir, outputs/), each with
    ``run_dir`` added, in natural order."""
    runs = []
    for root in roots:
        for path in sorted(Path(root).rglob("results.json"), key=natural_key):
            res = json.loads(path.read_text())
            res["run_dir"] = str(path.parent)
            runs.append(res)
    return runs


def _flatten(node, prefix: str = "", run_dir: str | None = None) -> dict:
    """{dotted key: JSON value} of a config, without seeds, paths, logger and any value that
    names the run's own directory (e.g. trainer.default_root_dir)."""
    out = {}
    if isinstance(node, dict):
        for k, v in node.items():
            if k in IGNORED_KEYS or (not prefix and k in IGNORED_SECTIONS):
                continue
            out.update(_flatten(v, f"{prefix}{k}.", run_dir))
    elif not (run_dir and isinstance(node, str) and run_dir in node):
        out[prefix[:-1]] = json.dumps(node, sort_keys=True)
    return out


@dataclass
class Cell:
    """Runs of one configuration over seeds."""

    model: str
    method: str
    bits: str
    variant: str                     # the keys in which this cell differs from its siblings
    runs: list[dict] = field(default_factory=list)

    @property
    def seeds(self) -> list:
        return [r.get("seed") for r in self.runs]

    @property
    def repeated_seeds(self) -> list:
        """Seeds with more than one run in this cell (reruns): only the last one counts."""
        seen = [s for s in self.seeds]
        return sorted({s for s in seen if seen.count(s) > 1}, key=lambda s: (s is None, s))

    def values(self, set_name: str, key: str = "psnr_y") -> dict:
        """{seed: value} of ``set_name`` (a test set, or ``val``) over the cell's runs."""
        out = {}
        for r in self.runs:
            summary = r.get("val") if set_name == "val" else r["metrics"].get(set_name)
            if summary is not None and summary.get(key) is not None:
                out[r.get("seed")] = float(summary[key])
        return out

    def val_images(self, seed) -> list | None:
        run = next((r for r in reversed(self.runs) if r.get("seed") == seed), None)
        return None if run is None else (run.get("val") or {}).get("images")

    def fp(self, set_name: str, key: str = "psnr_y") -> float | None:
        r = self.runs[0]
        summary = (r.get("val") or {}).get("fp") if set_name == "val" else r.get("fp_metrics", {}).get(set_name)
        return None if not summary else summary.get(key)

    def seconds(self, key: str) -> float | None:
        vals = [r["time_s"].get(key) for r in self.runs if r.get("time_s", {}).get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    @property
    def size_mb(self) -> float:
        return self.runs[0]["model_size_mb"]["quantized"]

    @property
    def label(self) -> str:
        return f"{self.method}[{self.variant}]" if self.variant else self.method


def cells(runs: list[dict]) -> list[Cell]:
    """Group ``runs`` into cells (equal configs but for seeds), in first-seen order. A key
    that some runs of a model/method/bits lack is compared only if the runs that have it
    disagree: a key added to srq's configs later (one value, its default) does not split
    runs made before and after it."""
    flat = [_flatten(r.get("config") or {}, run_dir=((r.get("config") or {}).get("paths") or {}).get("output_dir"))
            for r in runs]
    present: dict[tuple, set] = {}
    values: dict[tuple, dict[str, set]] = {}
    for r, f in zip(runs, flat):
        mmb = (r["model"], r["method"], r["bits"])
        present[mmb] = set(f) if mmb not in present else present[mmb] & set(f)
        for k, v in f.items():
            values.setdefault(mmb, {}).setdefault(k, set()).add(v)
    groups: dict[tuple, list[int]] = {}
    for i, (r, f) in enumerate(zip(runs, flat)):
        mmb = (r["model"], r["method"], r["bits"])
        kept = {k: v for k, v in f.items() if k in present[mmb] or len(values[mmb][k]) > 1}
        key = (*mmb, tuple(sorted(kept.items())))
        groups.setdefault(key, []).append(i)
    # variant label: keys that differ among cells of the same model/method/bits
    by_mmb: dict[tuple, list[tuple]] = {}
    for key in groups:
        by_mmb.setdefault(key[:3], []).append(key)
    out = []
    for key, members in groups.items():
        siblings = [dict(k[3]) for k in by_mmb[key[:3]]]
        mine = dict(key[3])
        keys = set().union(*siblings)
        differing = sorted(k for k in keys if len({s.get(k) for s in siblings}) > 1)
        variant = ",".join(f"{k.removeprefix('method.')}={json.loads(mine[k])}" for k in differing
                           if k in mine)
        out.append(Cell(*key[:3], variant, [runs[i] for i in members]))
    return out


def mean_std(values) -> tuple[float, float, int]:
    """(mean, sample std (n − 1; nan for n = 1), n)."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else math.nan
    return mean, std, n


def fmt_stat(values, digits: int = 3) -> str:
    """"mean ± std (n)"; one run: "value (n=1)"."""
    mean, std, n = mean_std(values)
    if n == 0:
        return "–"
    if n == 1:
        return f"{mean:.{digits}f} (n=1)"
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({n})"


def set_names(runs: list[dict]) -> list[str]:
    return list(dict.fromkeys(s for r in runs for s in r["metrics"]))


def seeds_table(runs: list[dict], key: str = "psnr_y") -> str:
    """Markdown: one row per cell, mean ± std (n) over seeds for val and every test set."""
    sets = set_names(runs)
    has_val = any(r.get("val") for r in runs)
    cols = (["val"] if has_val else []) + sets
    head = "| model | method | bits | variant | seeds | " + " | ".join(
        f"{s} {key}" for s in cols) + " | calibrate s | fine-tune s |"
    lines = [head, "|" + "---|" * (len(cols) + 7)]
    notes = []
    for c in cells(runs):
        if c.repeated_seeds:
            notes.append(f"{c.model} {c.label} {c.bits}: seed(s) {c.repeated_seeds} ran more than "
                         "once; the statistics use the last run of each seed")
        stats = [fmt_stat(c.values(s, key).values(), 4 if key.startswith("ssim") else 3) for s in cols]
        t_cal, t_ft = c.seconds("calibrate"), c.seconds("finetune")
        seeds = ",".join(str(s) for s in sorted(c.seeds, key=lambda s: (s is None, s)))
        lines.append(f"| {c.model} | {c.method} | {c.bits} | {c.variant or '–'} | {seeds} | "
                     + " | ".join(stats)
                     + f" | {'–' if t_cal is None else f'{t_cal:.0f}'} | {'–' if t_ft is None else f'{t_ft:.0f}'} |")
    return "\n".join(lines + [""] + [f"Note: {n}" for n in notes] if notes else lines)


@dataclass(frozen=True)
class Paired:
    """A − B over the seeds both ran, for one (model, bits, set)."""

    model: str
    bits: str
    set_name: str
    a: str
    b: str
    diffs: tuple[float, ...]
    seeds: tuple

    @property
    def wins(self) -> int:
        return sum(d > 0 for d in self.diffs)


def paired(runs: list[dict], a: str, b: str, key: str = "psnr_y") -> list[Paired]:
    """Paired differences of method (or cell label) ``a`` minus ``b``, matched by seed."""
    def matches(c: Cell, name: str) -> bool:
        return name in (c.method, c.label)

    all_cells = cells(runs)
    out = []
    sets = (["val"] if any(r.get("val") for r in runs) else []) + set_names(runs)
    for ca in (c for c in all_cells if matches(c, a)):
        for cb in (c for c in all_cells if matches(c, b) and (c.model, c.bits) == (ca.model, ca.bits)):
            for s in sets:
                va, vb = ca.values(s, key), cb.values(s, key)
                common = sorted(set(va) & set(vb), key=lambda x: (x is None, x))
                if s == "val":  # pair only runs scored on the same held-out images
                    common = [k for k in common if ca.val_images(k) == cb.val_images(k)]
                if common:
                    out.append(Paired(ca.model, ca.bits, s, ca.label, cb.label,
                                      tuple(va[k] - vb[k] for k in common), tuple(common)))
    return out


def paired_table(pairs: list[Paired], key: str = "psnr_y") -> str:
    lines = [f"| model | bits | set | A | B | A − B {key} (mean ± std) | n | A > B |",
             "|" + "---|" * 8]
    for p in pairs:
        mean, std, n = mean_std(p.diffs)
        spread = "" if n < 2 else f" ± {std:.3f}"
        lines.append(f"| {p.model} | {p.bits} | {p.set_name} | {p.a} | {p.b} | {mean:+.3f}{spread} | "
                     f"{n} | {p.wins} of {n} |")
    return "\n".join(lines)


__all__ = ["Cell", "Paired", "cells", "fmt_stat", "load_runs", "mean_std", "paired",
           "paired_table", "seeds_table", "set_names"]
