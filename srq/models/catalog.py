"""Every model srq knows, registered into :data:`srq.models.zoo.MODELS`.

``reference_psnr`` values are FP Y-PSNR measured with srq's protocol on the checkpoints
named here (they equal the numbers in shared/data/README.md); ``published_psnr`` are the
papers' tables. Names are ``<arch>_x<scale>``.
"""

from __future__ import annotations

import dataclasses

from srq.models.spec import Checkpoint, ModelSpec
from srq.models.spec import register as _register_spec

# --- Feature blocks: where distillation losses tap "block outputs" (one '*' = one name part) --
FEATURE_BLOCKS: dict[str, tuple[str, ...]] = {
    "imdn": ("net.IMDB*",), "rfdn": ("net.B*",), "pan": ("net.SCPA_trunk.*",),
    "carn_m": ("net.b*",), "imdtn": ("net.IMDTB*",), "lmlt_tiny": ("net.feats.*",),
    "lbnet_t": ("net.r*",), "craft": ("net.layers.*",),
    "swinir_s": ("net.layers.*.residual_group",),  # 2DQuant's sites: each RSTB's BasicLayer
    "edsr": ("net.body.*",), "edsr_baseline": ("net.body.*",), "rdn": ("net.rdbs.*",),
    "srresnet": ("net.body.*",),
}


def register(spec: ModelSpec) -> ModelSpec:
    """Register ``spec`` with its architecture's feature blocks."""
    return _register_spec(dataclasses.replace(spec, feature_blocks=FEATURE_BLOCKS.get(spec.arch, ())))


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


# --- Small windowed-attention transformers (SwinIR-S stand-ins) with weights in the store --
register(ModelSpec(
    name="imdtn_x4", arch="imdtn", scale=4, builder=f"{ARCHS}.imdtn:IMDTN",
    checkpoint=Checkpoint(store="weights/IMDTN/team09_imdtn.pth"),
    reference_psnr={"Set5": 32.150, "Set14": 28.618, "B100": 27.608},
))
_LMLT_FILES = {2: "LMLT_tiny_x2.pth", 3: "LMLT_tiny_x3_new.pth", 4: "LMLT_tiny_x4_new.pth"}
for _scale, _file in _LMLT_FILES.items():
    register(ModelSpec(
        name=f"lmlt_tiny_x{_scale}", arch="lmlt_tiny", scale=_scale, builder=f"{ARCHS}.lmlt:LMLT",
        checkpoint=Checkpoint(store=f"weights/LMLT-Tiny/{_file}", container="params"),
        reference_psnr=_by_scale({"Set5": (37.994, 34.362, 32.187),
                                  "Set14": (None, None, 28.650), "B100": (None, None, 27.602)},
                                 _scale),
    ))

_LBNET_REF = {"Set5": (37.955, 34.327, 32.075), "Set14": (None, None, 28.536),
              "B100": (None, None, 27.545)}
for _scale in (2, 3, 4):
    register(ModelSpec(
        name=f"lbnet_t_x{_scale}", arch="lbnet_t", scale=_scale, builder=f"{ARCHS}.lbnet:LBNet",
        input_range=255.0,
        checkpoint=Checkpoint(store=f"weights/LBNet-T/LBNet-T_X{_scale}.pth"),
        reference_psnr=_by_scale(_LBNET_REF, _scale),
        published_psnr=_by_scale({"Set5": (37.95, 34.33, 32.08), "Set14": (None, None, 28.54),
                                  "B100": (None, None, 27.54)}, _scale),
    ))
register(ModelSpec(
    name="craft_x4", arch="craft", scale=4, builder=f"{ARCHS}.craft:CRAFT", pad_multiple=16,
    checkpoint=Checkpoint(store="weights/CRAFT/team34_craft.pth", container="params"),
    reference_psnr={"Set5": 32.404, "Set14": 28.838, "B100": 27.726},
    published_psnr={"Set5": 32.52, "Set14": 28.85, "B100": 27.72},
))


# --- The papers' models: official checkpoints by URL (not reachable offline here) --------
def edsr_pytorch_keys(state: dict) -> dict:
    """EDSR-PyTorch ``.pt`` layout → basicsr EDSR (as BasicSR's own conversion does).

    head.0 → conv_first; body.i.body.{0,2} → body.i.conv{1,2}; body.N → conv_after_body;
    tail.0.k → upsample.k; tail.1 → conv_last; sub_mean/add_mean dropped (basicsr keeps the
    mean as a constant). A state_dict already in basicsr layout is returned unchanged.
    """
    if not any(k.startswith("head.") for k in state):
        return state
    n_blocks = max(int(k.split(".")[1]) for k in state if k.startswith("body."))
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] in ("sub_mean", "add_mean"):
            continue
        if parts[0] == "head":
            new = ["conv_first"] + parts[2:]
        elif parts[0] == "body" and int(parts[1]) == n_blocks:
            new = ["conv_after_body"] + parts[2:]
        elif parts[0] == "body":
            new = ["body", parts[1], {"0": "conv1", "2": "conv2"}[parts[3]]] + parts[4:]
        elif parts[0] == "tail" and parts[1] == "0":
            new = ["upsample"] + parts[2:]
        elif parts[0] == "tail":
            new = ["conv_last"] + parts[2:]
        else:
            new = parts
        out[".".join(new)] = value
    return out


def mmagic_rdn_keys(state: dict) -> dict:
    """mmagic/mmediting RDN checkpoints: drop the ``generator.`` prefix."""
    return {k.removeprefix("generator."): v for k, v in state.items()}


def msrresnet_keys(state: dict) -> dict:
    """KAIR/mmsr MSRResNet layout → basicsr: recon_trunk → body, HRconv → conv_hr."""
    return {k.replace("recon_trunk.", "body.").replace("HRconv.", "conv_hr."): v
            for k, v in state.items()}


_EDSR_URL = "https://cv.snu.ac.kr/research/EDSR/models/{}.pt"
_EDSR = {
    # name: (num_feat, num_block, res_scale, {scale: (file, sha256 or None)}, published Set5)
    "edsr_baseline": (64, 16, 1.0, {
        2: ("edsr_baseline_x2-1bc95232",
            "1bc9523228fdc3b0a5ddb0d7062001e22b31bbb398ae09cfdefb97e8ee06e171"),
        3: ("edsr_baseline_x3-abf2a44e", None),
        4: ("edsr_baseline_x4-6b446fab",
            "6b446fab734f4de74448d2fd1f3f990f5bae726e49dc7eff2ae9cefe444a1723")},
        (37.99, None, 32.09)),
    "edsr": (256, 32, 0.1, {
        2: ("edsr_x2-0edfb8a3", None), 3: ("edsr_x3-ea3ef2c6", None),
        4: ("edsr_x4-4f62e9ef", None)},
        (38.11, 34.65, 32.46)),
}
for _arch, (_feat, _blocks, _res, _files, _pub) in _EDSR.items():
    for _scale, (_file, _sha) in _files.items():
        register(ModelSpec(
            name=f"{_arch}_x{_scale}", arch=_arch, scale=_scale,
            builder="basicsr.archs.edsr_arch:EDSR", scale_arg="upscale",
            kwargs=dict(num_in_ch=3, num_out_ch=3, num_feat=_feat, num_block=_blocks,
                        res_scale=_res, img_range=255.0, rgb_mean=(0.4488, 0.4371, 0.4040)),
            checkpoint=Checkpoint(url=_EDSR_URL.format(_file), sha256=_sha,
                                  hash_prefix=_file.rsplit("-", 1)[1],
                                  mirror=f"weights/EDSR/{_file}.pt", key_map=edsr_pytorch_keys),
            published_psnr=_by_scale({"Set5": _pub}, _scale),
        ))

_RDN_URL = "https://download.openmmlab.com/mmediting/restorers/rdn/{}.pth"
for _scale, _file in {2: "rdn_x2c64b16_g1_1000k_div2k_20210419-dc146009",
                      3: "rdn_x3c64b16_g1_1000k_div2k_20210419-b93cb6aa",
                      4: "rdn_x4c64b16_g1_1000k_div2k_20210419-3577d44f"}.items():
    register(ModelSpec(
        name=f"rdn_x{_scale}", arch="rdn", scale=_scale, builder=f"{ARCHS}.rdn:RDN",
        checkpoint=Checkpoint(url=_RDN_URL.format(_file), hash_prefix=_file.rsplit("-", 1)[1],
                              mirror=f"weights/RDN/{_file}.pth", container="state_dict",
                              key_map=mmagic_rdn_keys),
        published_psnr=_by_scale({"Set5": (38.24, 34.71, 32.47)}, _scale),
    ))

register(ModelSpec(
    name="srresnet_x4", arch="srresnet", scale=4, scale_arg="upscale",
    builder="basicsr.archs.srresnet_arch:MSRResNet",
    kwargs=dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16),
    checkpoint=Checkpoint(
        url="https://github.com/cszn/KAIR/releases/download/v1.0/msrresnet_x4_psnr.pth",
        mirror="weights/SRResNet/msrresnet_x4_psnr.pth", key_map=msrresnet_keys),
))

_SWINIR_URL = "https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/{}.pth"
_SWINIR_S = {2: "193b229909ca89cd8b55de9c9e7fce146ae759d59dfcd78d8feb9dd1d6fa0fd7", 3: None,
             4: "09fad24e32ae62722e1a055efde9921328f4137981bab0a42a4a3a806306c58e"}
for _scale, _sha in _SWINIR_S.items():
    _file = f"002_lightweightSR_DIV2K_s64w8_SwinIR-S_x{_scale}"
    register(ModelSpec(
        name=f"swinir_s_x{_scale}", arch="swinir_s", scale=_scale,
        builder="srq.models.archs.swinir:swinir", scale_arg="upscale",
        kwargs=dict(in_chans=3, img_size=64, window_size=8, img_range=1.0, depths=[6] * 4,
                    embed_dim=60, num_heads=[6] * 4, mlp_ratio=2,
                    upsampler="pixelshuffledirect", resi_connection="1conv"),
        pad_multiple=8,
        checkpoint=Checkpoint(url=_SWINIR_URL.format(_file), sha256=_sha,
                              mirror=f"weights/SwinIR/{_file}.pth", container="params"),
        published_psnr=_by_scale({"Set5": (38.14, 34.62, 32.44)}, _scale),
    ))
