"""Model zoo: pretrained models reproduce their measured PSNR; official layouts load strictly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from srq.data.benchmark import benchmark_set
from srq.errors import SrqError
from srq.lit.evaluate import evaluate_sets
from srq.models.catalog import edsr_pytorch_keys
from srq.models.zoo import (
    MODELS,
    build_model,
    count_params,
    load_weights,
    model_names,
    read_state_dict,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
PRETRAINED = [n for n in model_names() if MODELS[n].checkpoint and MODELS[n].checkpoint.store]
OFFICIAL = [n for n in model_names() if MODELS[n].checkpoint and MODELS[n].checkpoint.url]


def test_every_model_has_a_config_and_back():
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == model_names()


def test_model_names_follow_arch_and_scale():
    for name, spec in MODELS.items():
        assert name == f"{spec.arch}_x{spec.scale}"


@pytest.mark.parametrize("name", PRETRAINED)
def test_pretrained_reproduces_set5(data_dir, name):
    """FP Y-PSNR on Set5 equals the value measured for shared/data's README (±0.01 dB)."""
    spec = MODELS[name]
    model = build_model(name)
    summary, records, _ = evaluate_sets(model, [benchmark_set("Set5", spec.scale)])
    assert summary["Set5"]["n_images"] == 5
    assert summary["Set5"]["psnr_y"] == pytest.approx(spec.reference_psnr["Set5"], abs=0.01)


@pytest.mark.parametrize("name", ["imdn_x4", "pan_x4", "rfdn_x4"])
def test_known_parameter_counts(name):
    expected = {"imdn_x4": 715_176, "pan_x4": 272_419, "rfdn_x4": 433_448}[name]
    assert count_params(build_model(name, pretrained=False)) == expected


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_architectures_random_weights(name, tmp_path):
    """No official checkpoint offline: shapes, state-dict round trip, strict reload."""
    spec = MODELS[name]
    torch.manual_seed(0)
    model = build_model(name, pretrained=False)
    lr = torch.rand(1, 3, 12, 20)
    with torch.no_grad():
        out = model(lr)
    assert out.shape == (1, 3, 12 * spec.scale, 20 * spec.scale)
    path = tmp_path / "ckpt.pth"
    torch.save({"params": model.net.state_dict()}, path)
    again = build_model(name, pretrained=False, checkpoint=str(path))
    with torch.no_grad():
        assert torch.equal(again(lr), out)


class _EDSRPyTorch(nn.Module):
    """Independent re-statement of EDSR-PyTorch's forward and key layout (head/body/tail,
    MeanShift 1x1 convs, input in [0, 255]) to check the key mapping end to end."""

    def __init__(self, feat: int, blocks: int, scale: int, res_scale: float):
        super().__init__()
        mean = torch.tensor([0.4488, 0.4371, 0.4040]) * 255
        self.sub_mean = nn.Conv2d(3, 3, 1)
        self.add_mean = nn.Conv2d(3, 3, 1)
        for conv, sign in ((self.sub_mean, -1), (self.add_mean, 1)):
            conv.weight.data = torch.eye(3).view(3, 3, 1, 1)
            conv.bias.data = sign * mean
        self.head = nn.Sequential(nn.Conv2d(3, feat, 3, padding=1))
        body = [nn.Module() for _ in range(blocks)]
        for b in body:
            b.body = nn.Sequential(nn.Conv2d(feat, feat, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(feat, feat, 3, padding=1))
        self.body = nn.Sequential(*body, nn.Conv2d(feat, feat, 3, padding=1))
        self.res_scale = res_scale
        self.tail = nn.Sequential(
            nn.Sequential(nn.Conv2d(feat, feat * scale * scale, 3, padding=1), nn.PixelShuffle(scale)),
            nn.Conv2d(feat, 3, 3, padding=1))

    def forward(self, x):
        x = self.head(self.sub_mean(x))
        res = x
        for block in list(self.body)[:-1]:
            res = res + block.body(res) * self.res_scale
        res = self.body[-1](res) + x
        return self.add_mean(self.tail(res))


def test_edsr_pytorch_checkpoint_layout_maps_to_basicsr():
    from basicsr.archs.edsr_arch import EDSR

    torch.manual_seed(0)
    official = _EDSRPyTorch(feat=16, blocks=2, scale=2, res_scale=0.1)
    ours = EDSR(3, 3, num_feat=16, num_block=2, upscale=2, res_scale=0.1, img_range=255.0,
                rgb_mean=(0.4488, 0.4371, 0.4040))
    ours.load_state_dict(edsr_pytorch_keys(official.state_dict()), strict=True)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(ours(x), official(x * 255) / 255, atol=1e-5)


def test_mmagic_rdn_and_kair_msrresnet_layouts(tmp_path):
    rdn = MODELS["rdn_x2"].build_net()
    path = tmp_path / "rdn.pth"
    torch.save({"meta": {}, "state_dict": {f"generator.{k}": v for k, v in rdn.state_dict().items()}},
               path)
    load_weights(MODELS["rdn_x2"].build_net(), read_state_dict(path, MODELS["rdn_x2"].checkpoint),
                 "rdn_x2", str(path))
    srres = MODELS["srresnet_x4"].build_net()
    kair = {k.replace("body.", "recon_trunk.").replace("conv_hr.", "HRconv."): v
            for k, v in srres.state_dict().items()}
    assert any(k.startswith("recon_trunk.") for k in kair)
    path = tmp_path / "msrresnet.pth"
    torch.save(kair, path)
    load_weights(MODELS["srresnet_x4"].build_net(),
                 read_state_dict(path, MODELS["srresnet_x4"].checkpoint), "srresnet_x4", str(path))


def test_wrong_scale_checkpoint_names_the_keys(data_dir):
    path = data_dir / "weights" / "IMDN" / "IMDN_x2.pth"
    with pytest.raises(SrqError, match=r"does not fit model imdn_x4.*upsampler.*another scale"):
        build_model("imdn_x4", checkpoint=str(path))


def test_wrong_architecture_checkpoint(data_dir):
    path = data_dir / "weights" / "PAN" / "PANx4_DF2K.pth"
    with pytest.raises(SrqError, match=r"missing keys: .*unexpected keys: "):
        build_model("imdn_x4", checkpoint=str(path))


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(SrqError, match="cannot read checkpoint"):
        build_model("imdn_x4", checkpoint=str(path))


def test_unknown_model_lists_valid_names():
    with pytest.raises(SrqError, match=r"unknown model 'imdn_x9'.*imdn_x4"):
        build_model("imdn_x9")


@pytest.mark.parametrize("name", ["fsrcnn_x3", "vdsr_x2"])
def test_y_models_return_rgb_of_input_size(name):
    model = build_model(name, pretrained=False)
    out = model(torch.rand(1, 3, 10, 14))
    assert out.shape == (1, 3, 10 * model.scale, 14 * model.scale)


def test_imdn_x2_b100(data_dir):
    """The issue's B100 check: IMDN ×2 FP on B100 = 32.189 dB (about a minute on 2 cores)."""
    summary, _, _ = evaluate_sets(build_model("imdn_x2"), [benchmark_set("B100", 2)])
    assert summary["B100"]["n_images"] == 100
    assert summary["B100"]["psnr_y"] == pytest.approx(32.189, abs=0.01)


@pytest.mark.parametrize("zipfile", [False, True])
def test_whole_model_pickle_is_read_without_its_class(tmp_path, zipfile):
    """VDSR's original file is ``{"epoch", "model": Net}`` from PyTorch 0.3: the pickled
    classes are replaced by inert placeholders and the weights come out as a state_dict."""
    torch.manual_seed(0)
    original = build_model("vdsr_x2", pretrained=False)
    path = tmp_path / "model_epoch_50.pth"
    torch.save({"epoch": 50, "model": original.net}, path, _use_new_zipfile_serialization=zipfile)
    loaded = build_model("vdsr_x3", checkpoint=str(path))
    for key, value in original.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[key], value)


def test_official_checkpoint_download_records_unknown_sha256(monkeypatch, tmp_path):
    """A checkpoint published without a sha256 (SwinIR-S ×3, and the EDSR files that carry only
    a prefix): the hash seen on first download is recorded and enforced afterwards."""
    import dataclasses
    import hashlib

    from srq.models import zoo

    net = MODELS["edsr_baseline_x3"].build_net()
    payload = tmp_path / "upstream.pt"
    torch.save(net.state_dict(), payload)
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    spec = dataclasses.replace(MODELS["edsr_baseline_x3"], checkpoint=dataclasses.replace(
        MODELS["edsr_baseline_x3"].checkpoint, url=payload.as_uri(), hash_prefix=None))
    monkeypatch.setitem(zoo.MODELS, "edsr_baseline_x3", spec)
    monkeypatch.delenv("SRQ_DATA_DIR", raising=False)
    monkeypatch.setenv("SRQ_CACHE", str(tmp_path / "cache"))
    model = build_model("edsr_baseline_x3")
    path = zoo.checkpoint_path(spec)
    assert path.with_name(path.name + ".sha256").read_text().startswith(digest)
    assert torch.equal(model.net.conv_first.weight, net.conv_first.weight)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SrqError, match="changed since its sha256 was recorded"):
        build_model("edsr_baseline_x3")


def test_swinir_matmul_modules_match_basicsr():
    """Our attention forward with MatMul modules equals basicsr's own on the same weights."""
    from basicsr.archs.swinir_arch import SwinIR

    from srq.models.archs.swinir import swinir

    kwargs = dict(upscale=2, in_chans=3, img_size=16, window_size=4, img_range=1.0, depths=[2, 2],
                  embed_dim=12, num_heads=[2, 2], mlp_ratio=2, upsampler="pixelshuffledirect",
                  resi_connection="1conv")
    torch.manual_seed(0)
    reference = SwinIR(**kwargs).eval()
    ours = swinir(**kwargs).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    names = [n for n, m in ours.named_modules() if type(m).__name__ == "MatMul"]
    assert len(names) == 2 * 4 and names[0].endswith("attn.matmul_qk")
    x = torch.rand(1, 3, 16, 16)  # 4×4 windows, shifted blocks use the mask
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-6)
