"""``srq-infer``: super-resolve a user's images with a quantized model (``.srq`` or ``model.onnx``).

    srq-infer <model.srq | model.onnx> --input <image or folder> --output <folder>
              [--tile N --tile-overlap N] [--compare] [--threads N]

Each input ``name.ext`` gives ``<output>/name_x<scale>.png`` (uint8, clamped and rounded as
the evaluator does; whole-image output equals the run's per-image PSNR). Existing outputs are
never overwritten: they are skipped (so an interrupted folder resumes) and files are written
atomically. ``--compare`` also writes ``name_x<scale>_compare.png``: MATLAB-bicubic | FP |
quantized crops of the same region, side by side.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from srq.data.images import write_png
from srq.errors import SrqError

SUFFIX = ".png"


def load_model(path: Path, threads: int | None):
    """(model callable, scale, zoo name or None) for a ``.srq`` artifact or an ``.onnx`` export."""
    if not path.is_file():
        raise SrqError(f"{path} does not exist; pass a .srq artifact or a model.onnx from a run dir")
    if path.suffix == ".onnx":
        from srq.deploy import OrtModel

        model = OrtModel(path, threads=threads)
        if not model.scale:
            raise SrqError(f"{path} does not record its scale (not written by srq export=onnx); "
                           "re-export it with `srq quantized=<file.srq> export=onnx`")
        return model, model.scale, model.metadata.get("srq_model") or None
    if path.suffix == ".srq":
        from srq.artifact import load, read

        header, _ = read(path, tensors=False)
        name = header["model"].get("name")
        if not name:
            raise SrqError(f"{path} holds a {header['model'].get('class')} the zoo does not know; "
                           "run it from Python (srq.load(path, model=MyNet()))")
        model = load(path).eval()
        return model, int(model.scale), name
    raise SrqError(f"{path}: unknown model file type {path.suffix!r}; pass a .srq or .onnx file")


def input_images(path: Path) -> list[Path]:
    from srq.data.images import IMAGE_SUFFIXES, list_images

    if path.is_dir():
        return list_images(path)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return [path]
    raise SrqError(f"--input {path}: not an image ({', '.join(IMAGE_SUFFIXES)}) or a folder of them")


def super_resolve(model, lr: torch.Tensor, scale: int, tile: int | None, overlap: int) -> torch.Tensor:
    """uint8 (3, h, w) → uint8 (3, scale·h, scale·w)."""
    from srq.data.images import to_float, to_uint8
    from srq.models.tiling import tiled_forward

    x = to_float(lr)[None]
    with torch.no_grad():
        sr = tiled_forward(model, x, scale, tile, overlap) if tile else model(x)
    return to_uint8(sr[0])


def compare_panel(lr: torch.Tensor, fp: torch.Tensor, quant: torch.Tensor, scale: int,
                  crop: int) -> torch.Tensor:
    """bicubic | FP | quantized crops (centre, ``crop`` HR pixels a side), 4-pixel white gaps."""
    from srq.data.images import to_float, to_uint8
    from srq.models.wrapper import bicubic_upsample

    bicubic = to_uint8(bicubic_upsample(to_float(lr)[None], scale)[0])
    h, w = quant.shape[-2:]
    c = min(crop, h, w)
    y0, x0 = (h - c) // 2, (w - c) // 2
    gap = torch.full((3, c, 4), 255, dtype=torch.uint8)
    parts = []
    for img in (bicubic, fp, quant):
        parts += [img[:, y0:y0 + c, x0:x0 + c], gap]
    return torch.cat(parts[:-1], dim=2)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="srq-infer", description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="a .srq artifact or a model.onnx from `srq ... export=onnx`")
    p.add_argument("--input", "-i", type=Path, required=True, help="an image or a folder of images")
    p.add_argument("--output", "-o", type=Path, required=True, help="folder for the SR images")
    p.add_argument("--tile", type=int, default=None, help="LR tile size (default: whole image)")
    p.add_argument("--tile-overlap", type=int, default=16, help="LR pixels shared by neighbouring tiles")
    p.add_argument("--compare", action="store_true", help="also write bicubic | FP | quantized crops")
    p.add_argument("--crop", type=int, default=192, help="side of the --compare crop (HR pixels)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch/ORT's)")
    return p.parse_args(argv)


def run(argv=None) -> list[Path]:
    """Super-resolve every input image; returns the files written (skipped ones excluded)."""
    from tqdm.auto import tqdm

    from srq.data.images import read_image

    args = parse_args(argv)
    if args.tile is not None and (args.tile <= 0 or not 0 <= args.tile_overlap < args.tile):
        raise SrqError(f"--tile {args.tile} --tile-overlap {args.tile_overlap}: tiles need "
                       "0 <= tile-overlap < tile; e.g. --tile 128 --tile-overlap 16")
    if args.threads:
        torch.set_num_threads(args.threads)
    images = input_images(args.input)
    model, scale, name = load_model(args.model, args.threads)
    fp = None
    if args.compare:
        if name is None:
            raise SrqError(f"--compare needs the FP model, but {args.model} names no zoo model")
        from srq.models.zoo import build_model

        fp = build_model(name).eval()
    args.output.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    for path in tqdm(images, desc=f"srq-infer ×{scale}", unit="img", file=sys.stderr):
        out = args.output / f"{path.stem}_x{scale}{SUFFIX}"
        panel = args.output / f"{path.stem}_x{scale}_compare{SUFFIX}"
        todo_panel = args.compare and not panel.exists()
        if out.exists() and not todo_panel:
            skipped.append(out)
            continue
        lr = read_image(path)
        sr = super_resolve(model, lr, scale, args.tile, args.tile_overlap)
        if not out.exists():
            write_png(sr, out)
            written.append(out)
        if todo_panel:
            fp_sr = super_resolve(fp, lr, scale, args.tile, args.tile_overlap)
            write_png(compare_panel(lr, fp_sr, sr, scale, args.crop), panel)
            written.append(panel)
    if skipped:
        print(f"srq-infer: kept {len(skipped)} existing output(s) in {args.output} "
              "(never overwritten; delete them to redo)", file=sys.stderr)
    print(f"srq-infer: wrote {len(written)} file(s) to {args.output}", file=sys.stderr)
    return written


def main(argv=None) -> None:
    try:
        run(argv)
    except SrqError as exc:
        print(f"srq-infer: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
