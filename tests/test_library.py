"""srq as a library: the README example on a model the zoo does not know, artifacts that load
bit for bit in a fresh process, typed configs, freeze, packing and layering."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import srq
from srq.errors import SrqError
from srq.quant import QuantFormat, QuantSpec, calibration_mode, freeze, quantize
from srq.quant.packing import pack_codes, unpack_codes
from srq.quant.primitives import MODES, dequantize, fake_quantize, fake_quantize_codes

REPO = Path(__file__).resolve().parents[1]

# A small SR net defined here (not in the zoo), with one attention block whose products
# are marked as srq.MatMul, so both op sets (CNN and transformer) have something to quantize.
NET_SOURCE = '''
import torch
from torch import nn
import srq


class TinyAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.matmul_qk, self.matmul_av = srq.MatMul(), srq.MatMul()

    def forward(self, x):                       # x: (N, C, H, W)
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)        # (N, HW, C)
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        a = self.matmul_qk(q, k.transpose(1, 2)).div(c ** 0.5).softmax(-1)
        return x + self.proj(self.matmul_av(a, v)).transpose(1, 2).reshape(n, c, h, w)


class TinySR(nn.Module):
    """×2: conv → (conv, ReLU, conv) residual → attention → conv → pixel shuffle."""

    def __init__(self, c=8):
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))
        self.attn = TinyAttention(c)
        self.tail = nn.Conv2d(c, 3 * 4, 3, padding=1)
        self.up = nn.PixelShuffle(2)

    def forward(self, x):
        f = self.head(x)
        f = self.attn(f + self.body(f))
        return self.up(self.tail(f))
'''
exec(compile(NET_SOURCE, "tiny_sr", "exec"))  # defines TinySR here too

BUDGETS = {
    "minmax": [], "mse": [], "dobi": ["ops=cnn"],
    "2dquant": ["dqc.iterations=3", "dqc.batch_size=2"],
    "plq_saft": ["finetune.epochs=1", "finetune.batch_size=4"],
}


def _calib():
    torch.manual_seed(0)
    return torch.rand(8, 3, 12, 12)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every method through the README flow: config → quantize → save; outputs kept."""
    out = tmp_path_factory.mktemp("artifacts")
    torch.manual_seed(0)
    model = TinySR().eval()
    torch.save(model.state_dict(), out / "fp.pt")
    x = torch.rand(1, 3, 10, 14)
    torch.save(x, out / "x.pt")
    outputs = {}
    for method, overrides in BUDGETS.items():
        cfg = srq.config(method, bits="w4a4", overrides=overrides)
        qmodel = srq.quantize(model, cfg, calib=_calib(), feature_blocks=["body", "attn"])
        srq.save(qmodel, out / f"{method}.srq")
        with torch.no_grad():
            outputs[method] = qmodel(x)
    return out, model, outputs


def test_quantize_leaves_the_model_alone_and_returns_a_quantized_copy(saved):
    out, model, outputs = saved
    fresh = TinySR()
    fresh.load_state_dict(torch.load(out / "fp.pt"))
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.load(out / "x.pt")
    with torch.no_grad():
        fp = model(x)
    for method, y in outputs.items():
        assert y.shape == fp.shape
        assert 0 < float((y - fp).abs().max()) < 1.0, method  # quantized, and still the same net


def test_artifacts_load_bit_identical_in_a_fresh_process(saved, tmp_path):
    out, _, outputs = saved
    script = NET_SOURCE + textwrap.dedent(f'''
        import sys
        out = {str(out)!r}
        x = torch.load(out + "/x.pt")
        for method in sys.argv[1:]:
            qmodel = srq.load(out + "/" + method + ".srq", model=TinySR())
            with torch.no_grad():
                torch.save(qmodel(x), out + "/" + method + ".loaded.pt")
    ''')
    (tmp_path / "load.py").write_text(script)
    proc = subprocess.run([sys.executable, str(tmp_path / "load.py"), *BUDGETS], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for method, y in outputs.items():
        assert torch.equal(torch.load(out / f"{method}.loaded.pt"), y), method


def test_artifact_header_is_self_describing(saved):
    from srq.artifact import read

    out, model, _ = saved
    header, tensors = read(out / "2dquant.srq")
    assert header["format_version"] == 1 and header["method"] == "2dquant" and header["bits"] == "w4a4"
    assert header["model"]["class"].endswith("TinySR") and header["model"]["name"] is None
    assert header["config"]["dqc"]["iterations"] == 3
    modules = header["quantization_map"]["modules"]
    formats = header["quantization_map"]["formats"]
    # ops=auto: the net has srq.MatMul products → 2DQuant's transformer op set
    assert set(modules) == {"attn.qkv", "attn.proj", "attn.matmul_qk", "attn.matmul_av"}
    assert formats[modules["attn.qkv"]["weight"]]["bits"] == 4
    assert formats[modules["attn.matmul_qk"]["other"]]["bits"] == 4
    # weights packed at their bit-width: 4-bit codes two per byte
    n = model.attn.qkv.weight.numel()
    assert tensors["attn.qkv.weight.codes"].numel() == (n * 4 + 7) // 8
    assert header["info"]["finetune"]["feature_blocks"] == 2
    header, tensors = read(out / "dobi.srq")  # ops=cnn: every conv/linear, first/last at 8 bit
    modules, formats = header["quantization_map"]["modules"], header["quantization_map"]["formats"]
    assert set(modules) == {"head", "body.0", "body.2", "attn.qkv", "attn.proj", "tail"}
    assert formats[modules["head"]["weight"]]["bits"] == 8 and formats[modules["tail"]["weight"]]["bits"] == 8
    assert formats[modules["body.0"]["weight"]]["bits"] == 4


def test_transformer_op_set_on_a_user_model_quantizes_its_matmuls():
    cfg = srq.config("dobi", bits="w4a4")  # ops=auto: MatMul modules → transformer op set
    qmodel = srq.quantize(TinySR().eval(), cfg, calib=_calib())
    qmap = {n: m.formats() for n, m in qmodel.named_modules() if hasattr(m, "formats")}
    assert set(qmap) == {"attn.qkv", "attn.proj", "attn.matmul_qk", "attn.matmul_av"}
    assert qmap["attn.matmul_qk"]["other"].startswith("int4")


def test_config_typos_and_bad_values_fail_with_one_line():
    with pytest.raises(SrqError, match=r"method.dqc.iteratons is not an option of DQCSettings; valid keys"):
        srq.config("2dquant", bits="w4a4", overrides=["+dqc.iteratons=3"])
    with pytest.raises(SrqError, match="has the wrong type"):
        srq.config("2dquant", bits="w4a4", overrides=["dqc.iterations=many"])
    with pytest.raises(SrqError, match="unknown method.ops 'gpu'"):
        srq.config("dobi", bits="w4a4", overrides=["ops=gpu"])
    with pytest.raises(SrqError, match="unknown method 'nope'"):
        srq.config("nope")
    cfg = srq.config("mse", bits="w8a8")
    with pytest.raises(Exception):  # frozen
        cfg.name = "x"


def test_hydra_instantiate_builds_the_same_typed_config():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from srq.methods.dqc import TwoDQuantConfig

    yaml = OmegaConf.merge(OmegaConf.load(REPO / "conf/method/dobi.yaml"),
                           OmegaConf.load(REPO / "conf/method/2dquant.yaml"))
    yaml.pop("defaults", None)
    built = instantiate(yaml, _convert_="all", bits={"name": "w4a4", "weight_bits": 4, "act_bits": 4})
    assert isinstance(built, TwoDQuantConfig) and built.dqc.iterations == 300
    assert built.bits.weight_bits == 4 and built.dobi.one_sided_for == ("*.matmul_av", "*.fc2")


def test_freeze_needs_calibration_and_keeps_one_weight_copy():
    model = TinySR().eval()
    spec = QuantSpec(weight=QuantFormat(4, "narrow", axis=0), input=QuantFormat(4))
    quantize(model, spec)
    with pytest.raises(RuntimeError, match="never saw data"):
        freeze(model)
    with calibration_mode(model), torch.no_grad():
        model(_calib())
    freeze(model)
    state = model.state_dict()
    for name in ("head", "body.0", "attn.qkv", "tail"):  # one weight-sized tensor per layer: no copy
        n = model.get_submodule(name).module.weight.numel()
        assert [k for k, t in state.items() if k.startswith(name + ".") and t.numel() == n] == \
            [f"{name}.module.weight"]
    wrapper = model.body[0]
    wq = wrapper.weight_quantizer
    codes = fake_quantize_codes(wrapper.module.weight.clone(), wq.lo, wq.hi, 4, "narrow")
    assert codes.min() >= -7 and codes.max() <= 7  # the weight itself sits on the 4-bit grid
    assert torch.equal(dequantize(codes, wq.lo, wq.hi, 4, "narrow"), wrapper.module.weight)


@pytest.mark.parametrize("mode", MODES)
def test_codes_dequantize_to_the_fake_quantized_value_bit_for_bit(mode):
    torch.manual_seed(1)
    w = torch.randn(6, 4, 3, 3)
    lo, hi = w.amin((1, 2, 3), keepdim=True) * 0.7, w.amax((1, 2, 3), keepdim=True) * 0.6
    for bits in (2, 3, 4, 8):
        codes = fake_quantize_codes(w.clone(), lo, hi, bits, mode)
        assert torch.equal(dequantize(codes, lo, hi, bits, mode), fake_quantize(w, lo, hi, bits, mode))
    if mode == "integer":  # torch's own affine kernel (integer zero point) agrees
        scale = (hi - lo).flatten() / 15
        zp = torch.round(-lo.flatten() / scale).int()
        ref = torch.fake_quantize_per_channel_affine(w, scale, zp, 0, 0, 15)
        assert torch.allclose(dequantize(fake_quantize_codes(w.clone(), lo, hi, 4, mode), lo, hi, 4, mode),
                              ref, atol=1e-6)


def test_packing_is_hand_checkable_and_round_trips():
    assert pack_codes(torch.tensor([1, 2, 3, 15]), 4).tolist() == [0x12, 0x3F]
    assert pack_codes(torch.tensor([0, 1, 2, 3]), 2).tolist() == [0b00011011]
    assert pack_codes(torch.tensor([5, 2, 7]), 3).tolist() == [0b10101011, 0b10000000]
    for bits in range(1, 9):
        u = torch.randint(0, 2**bits, (1001,))
        assert torch.equal(unpack_codes(pack_codes(u, bits), bits, 1001), u)
    with pytest.raises(ValueError, match="cannot be packed"):
        pack_codes(torch.tensor([16]), 4)


def _corrupt(src: Path, dst: Path, how: str) -> Path:
    raw = bytearray(src.read_bytes())
    if how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "header":  # an edit by hand that keeps the JSON valid
        i = raw.index(b"iterations")
        raw[i:i + 10] = b"iterationZ"
    elif how == "version":
        i = raw.index(b'format_version\\": 1')
        raw[i:i + 19] = b'format_version\\": 7'
    dst.write_bytes(bytes(raw))
    return dst


@pytest.mark.parametrize("how,message", [
    ("truncated", "not a readable srq artifact"),
    ("header", "changed after it was written"),
    ("version", "artifact format version 7"),
])
def test_bad_artifacts_stop_with_one_clear_error(saved, tmp_path, how, message):
    out, _, _ = saved
    bad = _corrupt(out / "2dquant.srq", tmp_path / f"{how}.srq", how)
    with pytest.raises(SrqError, match=message):
        srq.load(bad, model=TinySR())


def test_an_artifact_for_another_architecture_is_refused(saved):
    out, _, _ = saved

    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(3, 4, 3, padding=1)

    with pytest.raises(SrqError, match="does not fit Other"):
        srq.load(out / "minmax.srq", model=Other())
    with pytest.raises(SrqError, match="the zoo does not know; pass a fresh instance"):
        srq.load(out / "minmax.srq")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package,forbidden", [
    ("quant", ("srq.models", "srq.methods", "srq.lit", "srq.data")),
    ("methods", ("srq.models", "srq.data")),
])
def test_layering(package, forbidden):
    """srq/quant is plain torch; methods get modules and batches, never the zoo or data."""
    bad = [(p.name, name) for p in sorted((REPO / "srq" / package).glob("*.py"))
           for name in _imports(p) if name.startswith(forbidden)]
    assert not bad, bad


def test_no_import_cycle_between_catalog_and_zoo():
    assert "srq.models.zoo" not in _imports(REPO / "srq/models/catalog.py")


def test_readme_python_example_runs(tmp_path):
    """The README's Python block, run as written on the test's own net."""
    text = (REPO / "README.md").read_text()
    block = text.split("```python\n", 1)[1].split("```", 1)[0]
    prelude = NET_SOURCE + textwrap.dedent('''
        torch.manual_seed(0)
        model, MyNet = TinySR().eval(), TinySR
        lr_batches = torch.rand(8, 3, 12, 12)
    ''')
    script = prelude + block.replace('"dqc.iterations=50"', '"dqc.iterations=2", "dqc.batch_size=2"')
    (tmp_path / "example.py").write_text(script)
    proc = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "mine_w4a4.srq").is_file()
    json.dumps(srq.artifact.read(tmp_path / "mine_w4a4.srq", tensors=False)[0])
