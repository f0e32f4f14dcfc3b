"""Every model srq knows, registered into :data:`srq.models.zoo.MODELS`.

``reference_psnr`` values are FP Y-PSNR measured with srq's protocol on the checkpoints
named here (they equal the numbers in shared/data/README.md); ``published_psnr`` are the
papers' tables. Names are ``<arch>_x<scale>``.
"""

from __future__ import annotations

from srq.models.zoo import Checkpoint, ModelSpec, register

ARCHS = "srq.models.archs"


def _by_scale(values: dict[str, tuple], scale: int) -> dict[str, float]:
    """{set: (x2, x3, x4)} → {set: value at scale}, skipping unknown (None) entries."""
    return {k: v[scale - 2] for k, v in values.items() if v[scale - 2] is not None}


# --- CNNs with pretrained weights in the data store --------------------------------------
_CNN = {
    # arch: (class, input_range, color, pad, {scale: store path}, reference, published)
    "imdn": ("imdn:IMDN", 1.0, "rgb", 1,
             {s: f"weights/IMDN/IMDN_x{s}.pth" for s in (2, 3, 4)},
             {"Set5": (37.996, 34.360, 32.210), "Set14": (33.627, 30.322, 28.582),
              "B100": (32.189, 29.095, 27.561)},
             {"Set5": (38.00, 34.36, 32.21), "Set14": (33.63, 30.32, 28.58),
              "B100": (32.19, 29.09, 27.56)}),
    "pan": ("pan:PAN", 1.0, "rgb", 1,
            {s: f"weights/PAN/PANx{s}_DF2K.pth" for s in (2, 3, 4)},
            {"Set5": (38.001, 34.400, 32.131), "Set14": (33.593, 30.355, 28.611),
             "B100": (32.189, 29.113, 27.599)},
            {"Set5": (38.00, 34.40, 32.13), "Set14": (33.59, 30.36, 28.61),
             "B100": (32.18, 29.11, 27.59)}),
    "carn_m": ("carn:CARNM", 1.0, "rgb", 1,
               {s: "weights/CARN-M/carn_m.pth" for s in (2, 3, 4)},
               {"Set5": (37.678, 34.058, 31.883)},
               {"Set5": (37.53, 33.99, 31.92)}),
    "rfdn": ("rfdn:RFDN", 255.0, "rgb", 1,
             {4: "weights/RFDN/RFDN_AIM.pth"},
             {"Set5": (None, None, 32.159)}, {}),
    "vdsr": ("vdsr:VDSR", 1.0, "y_upsampled", 1,
             {s: "weights/VDSR/vdsr_statedict.pth" for s in (2, 3, 4)},
             {"Set5": (37.573, 33.741, 31.433)},
             {"Set5": (37.65, 33.77, 31.45)}),
    "fsrcnn": ("fsrcnn:FSRCNN", 1.0, "y", 1,
               {s: f"weights/FSRCNN/fsrcnn_x{s}.pth" for s in (2, 3, 4)},
               {"Set5": (37.100, 32.587, 30.505)},
               {"Set5": (37.12, 33.22, 30.50)}),
}

for _arch, (_cls, _range, _color, _pad, _files, _ref, _pub) in _CNN.items():
    for _scale, _store in _files.items():
        register(ModelSpec(
            name=f"{_arch}_x{_scale}", arch=_arch, scale=_scale, builder=f"{ARCHS}.{_cls}",
            input_range=_range, color=_color, pad_multiple=_pad,
            checkpoint=Checkpoint(store=_store),
            reference_psnr=_by_scale(_ref, _scale), published_psnr=_by_scale(_pub, _scale),
        ))
