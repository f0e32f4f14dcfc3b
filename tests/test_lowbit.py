"""Low-bit components (issue 16): learned rounding, block reconstruction, bias correction and
``method=lowbit``, against torch's fake-quantize kernels and hand-computed values."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import srq
from srq.methods.config import ConfigError
from srq.quant import QuantFormat, QuantSpec, calibration_mode, quantize
from srq.quant.adaround import AdaRoundWeight, beta_schedule, rectified_sigmoid, rounding_regularizer
from srq.quant.bias_correction import correct_bias
from srq.quant.modules import QuantConv2d
from srq.quant.quantizer import UniformQuantizer
from srq.quant.reconstruct import ReconstructionOptions, reconstruct, reconstruction_units


class Block(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.b(torch.relu(self.a(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(Block(), Block())
        self.tail = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        return self.tail(self.body(self.head(x)))


def _calibrated(fp, w_bits, a_bits, x, layer_policy="all"):
    student = copy.deepcopy(fp)
    spec = QuantSpec(weight=QuantFormat(w_bits, "narrow", axis=0, observer="mse"),
                     input=None if a_bits is None else QuantFormat(a_bits, "integer", observer="minmax"),
                     layer_policy=layer_policy)
    quantize(student, spec, example_input=x[:1])
    with calibration_mode(student), torch.no_grad():
        student(x)
    return student


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    return Net().eval(), torch.rand(16, 3, 16, 16)


def test_adaround_starts_at_the_weight_and_hardens_to_torch_nearest_rounding():
    torch.manual_seed(1)
    w = torch.randn(6, 4, 3, 3)
    q = UniformQuantizer(QuantFormat(4, "narrow", axis=0))
    q.observer(w)
    q.finish_calibration()
    ada = AdaRoundWeight(q, w)
    assert torch.allclose(ada(), w, atol=1e-6)  # minmax range: every weight inside, W̃ = W
    ada.harden()
    scale = q.hi.detach().flatten() / 7
    expected = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(6, dtype=torch.int32),
                                                      0, -7, 7)
    assert torch.allclose(ada(), expected, atol=1e-6)
    assert ada.flipped() == 0.0


@pytest.mark.parametrize("mode", ["narrow", "integer"])
def test_adaround_gain_scales_the_grid_and_is_written_into_the_quantizers_bounds(mode):
    torch.manual_seed(3)
    w = torch.randn(6, 4, 3, 3) + (0.3 if mode == "integer" else 0.0)
    q = UniformQuantizer(QuantFormat(4, mode, axis=0))
    q.observer(w)
    q.finish_calibration()
    ada = AdaRoundWeight(q, w)
    ada.harden()
    codes = ada() / ada.scale - ada.origin / ada.scale  # the integer part k of W̃ = γ(o + Δk), γ = 1
    gain = torch.linspace(0.7, 1.3, 6).reshape(6, 1, 1, 1)
    with torch.no_grad():
        ada.gain.copy_(gain)
    assert torch.allclose(ada(), gain * ada.scale * codes, atol=1e-6)  # o = 0 on both grids
    lo, hi = q.lo.detach().clone(), q.hi.detach().clone()
    ada.commit_gain(q)
    assert torch.allclose(q.hi, hi * gain.reshape(hi.shape)) and torch.allclose(q.lo, lo * gain.reshape(lo.shape))
    assert torch.allclose(q(ada()), ada(), atol=1e-6)  # W̃ sits on the committed grid, same codes
    step = (hi - lo).flatten() / 15 if mode == "integer" else hi.flatten() / 7
    zp = torch.round(-lo.flatten() / step).int() if mode == "integer" else torch.zeros(6, dtype=torch.int32)
    expected = torch.fake_quantize_per_channel_affine(ada(), step * gain.flatten(), zp, 0,
                                                      *((0, 15) if mode == "integer" else (-7, 7)))
    assert torch.allclose(expected, ada(), atol=1e-5)  # torch's kernel on γΔ, same zero point


def test_adaround_on_an_asymmetric_grid_clamps_to_the_code_range():
    torch.manual_seed(2)
    w = torch.randn(200) * 2
    q = UniformQuantizer(QuantFormat(3, "integer"))
    q.set_bounds(torch.tensor(-1.0), torch.tensor(1.5))  # clips both tails
    ada = AdaRoundWeight(q, w)
    with torch.no_grad():
        ada.V.fill_(10.0)  # every weight rounded up
    ada.harden()
    scale, zero = 2.5 / 7, round(1.0 / (2.5 / 7))
    ref = torch.fake_quantize_per_tensor_affine(w, scale, zero, 0, 7)
    up = scale * (torch.clamp(torch.floor(w / scale) + 1 + zero, 0, 7) - zero)
    assert torch.allclose(ada(), up, atol=1e-6)
    assert ada().min() >= ref.min() - 1e-6 and ada().max() <= ref.max() + 1e-6


def test_rounding_regularizer_and_beta_schedule_by_hand():
    h = torch.tensor([0.0, 1.0, 0.5, 0.75])
    assert float(rounding_regularizer(h, 2.0)) == pytest.approx(0 + 0 + 1 + 0.75)
    assert float(rectified_sigmoid(torch.tensor(0.0))) == pytest.approx(0.5)
    assert float(rectified_sigmoid(torch.tensor(50.0))) == 1.0
    assert beta_schedule(19, 100, 0.2) is None
    assert beta_schedule(20, 100, 0.2) == pytest.approx(20.0)
    assert beta_schedule(60, 100, 0.2) == pytest.approx(11.0)
    assert beta_schedule(100, 100, 0.2) == pytest.approx(2.0)


def test_units_are_blocks_plus_lone_layers_in_execution_order(toy):
    fp, x = toy
    student = _calibrated(fp, 4, 8, x)
    assert reconstruction_units(student, ["body.1", "body.0"], x[:1]) == ["head", "body.0", "body.1", "tail"]
    assert reconstruction_units(student, [], x[:1]) == ["head", "body.0.a", "body.0.b", "body.1.a",
                                                        "body.1.b", "tail"]


def _output_error(model, fp, x):
    with torch.no_grad():
        return float((model(x) - fp(x)).pow(2).mean())


def test_learned_rounding_beats_nearest_and_ends_on_the_grid(toy):
    fp, x = toy
    before = {k: v.clone() for k, v in fp.state_dict().items()}
    nearest = _calibrated(fp, 2, None, x)
    learned = copy.deepcopy(nearest)
    records = reconstruct(learned, fp, [x[:8], x[8:]], reconstruction_units(learned, ["body.0", "body.1"], x[:1]),
                          ReconstructionOptions(iterations=150, batch_size=8, drop_prob=0.0, act_lr=0.0,
                                                crop=None), progress=False)
    assert [r["unit"] for r in records] == ["head", "body.0", "body.1", "tail"]
    assert _output_error(learned, fp, x) < 0.8 * _output_error(nearest, fp, x)
    assert any(r["flipped"] > 0 for r in records)
    for name, m in learned.named_modules():
        if isinstance(m, QuantConv2d):  # every weight already on its grid: quantizing is the identity
            w = m.module.weight
            assert torch.allclose(m.weight_quantizer(w), w, atol=1e-6), name
    assert all(torch.equal(before[k], v) for k, v in fp.state_dict().items())  # the teacher is untouched


def test_reconstruction_learns_activation_bounds_and_qdrop_keeps_fp_elements(toy):
    fp, x = toy
    student = _calibrated(fp, 4, 4, x)
    bounds = {n: (m.input_quantizer.lo.clone(), m.input_quantizer.hi.clone())
              for n, m in student.named_modules() if isinstance(m, QuantConv2d)}
    reconstruct(student, fp, [x], ["body.0"], ReconstructionOptions(
        iterations=20, batch_size=4, act_lr=1e-2, learn_rounding=False, crop=8), progress=False)
    moved = [n for n, m in student.named_modules() if isinstance(m, QuantConv2d)
             and not torch.equal(m.input_quantizer.hi, bounds[n][1])]
    assert moved == ["body.0.a", "body.0.b"]  # only the reconstructed unit's bounds
    assert not any(p.requires_grad for _, q in srq.quant.quantizers(student) for p in q.learnable().values())

    from srq.quant.reconstruct import _drop_hook, _mix
    g = torch.Generator().manual_seed(0)
    q_in, fp_in = torch.zeros(10000), torch.ones(10000)
    assert float(_mix(q_in, fp_in, 0.5, g).mean()) == pytest.approx(0.5, abs=0.03)
    assert torch.equal(_mix(q_in, fp_in, 0.0, g), q_in)
    assert torch.equal(_drop_hook(1.0, g)(None, (fp_in,), q_in), fp_in)


def test_bias_correction_zeroes_every_layers_mean_channel_shift(toy):
    fp, x = toy
    student = _calibrated(fp, 2, 8, x)
    info = correct_bias(student, fp, [x[:8], x[8:]])
    assert info["layers"] == 6 and info["skipped"] == 0 and info["shift"] > 0
    outs = {}
    hooks = [m.register_forward_hook(lambda mod, a, out, n=(tag, name): outs.__setitem__(n, out))
             for tag, model in (("fp", fp), ("q", student)) for name, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, QuantConv2d)) and not name.endswith(".module")]
    with torch.no_grad():
        fp(x), student(x)
    for h in hooks:
        h.remove()
    names = [n for t, n in outs if t == "q"]
    assert len(names) == 6
    for name in names:
        shift = (outs["fp", name] - outs["q", name]).mean((0, 2, 3))
        assert shift.abs().max() < 1e-5, name


def test_method_lowbit_runs_every_component_and_is_a_frozen_model(toy, tmp_path):
    fp, x = toy
    cfg = srq.config("lowbit", bits="w3a3", overrides=["method.reconstruction.iterations=10",
                                                       "method.reconstruction.crop=8",
                                                       "method.bias_correction.enabled=true"])
    assert cfg.reconstruction.drop_prob == 0.5 and cfg.bias_correction.stage == "after"
    q = srq.quantize(fp, cfg, calib=x, feature_blocks=["body.0", "body.1"])
    info = q.srq_method["info"]
    assert info["calibration"]["bias_correction"]["layers"] == 6
    assert [r["unit"] for r in info["finetune"]["records"]] == ["head", "body.0", "body.1", "tail"]
    assert info["finetune"]["iterations"] == 10  # the override, not auto's 500
    assert all(m.frozen for m in q.modules() if isinstance(m, QuantConv2d))
    loaded = srq.load(srq.save(q, tmp_path / "toy_lowbit.srq"), model=Net())
    with torch.no_grad():  # the artifact holds the learned rounding and bounds exactly
        assert torch.equal(loaded(x), q(x))
    assert info["calibration"]["input_shift"] == "mean"  # auto below 8-bit activations
    off = srq.config("lowbit", bits="w3a3", overrides=["method.reconstruction.enabled=false",
                                                       "method.bias_correction.enabled=false",
                                                       "method.input_shift=none"])
    mse = srq.config("mse", bits="w3a3")
    a, b = srq.quantize(fp, off, calib=x), srq.quantize(fp, mse, calib=x)
    with torch.no_grad():  # every component off: exactly the MSE baseline
        assert torch.equal(a(x), b(x))


class Distill(nn.Module):
    """conv → LeakyReLU → split: one piece to a conv, one to a concat with a conv's output
    → 1×1 conv; plus a residual add that must keep its channels unscaled."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1)
        self.c3 = nn.Conv2d(10, 8, 1)
        self.c4 = nn.Conv2d(8, 3, 3, padding=1)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x):
        d, r = torch.split(self.act(self.c1(x)), (2, 6), dim=1)
        y = self.c3(torch.cat([d, self.act(self.c2(r))], dim=1))
        return self.c4(self.act(y) + y)  # y feeds an add: c3's channels stay unscaled


def test_scale_migration_sites_follow_splits_and_concats_and_skip_adds():
    from srq.quant.scale_migration import migration_sites

    torch.manual_seed(0)
    sites = {(s.producer, s.channel): s.consumers for s in migration_sites(Distill(), torch.rand(1, 3, 8, 8))}
    assert sites[("c1", 0)] == {"c3": [0]} and sites[("c1", 1)] == {"c3": [1]}
    assert sites[("c1", 2)] == {"c2": [0]} and sites[("c1", 7)] == {"c2": [5]}
    assert sites[("c2", 0)] == {"c3": [2]}
    assert not any(p == "c3" for p, _ in sites)  # its output feeds the residual add
    assert len(sites) == 16


def test_scale_migration_keeps_the_function_and_balances_activation_and_weight_ranges():
    from srq.quant.scale_migration import input_channel_absmax, migrate_scales, migration_sites

    torch.manual_seed(0)
    fp, x = Distill().eval(), torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        fp.c1.weight[3] *= 30  # an outlier channel
    moved = copy.deepcopy(fp)
    info = migrate_scales(moved, [x], alpha=0.5)
    assert info["sites"] == 16 and info["scale_max"] > 1
    with torch.no_grad():
        assert torch.allclose(moved(x), fp(x), rtol=1e-5, atol=1e-5)
    x_max = input_channel_absmax(moved, ["c2"], [x])["c2"]
    w_max = moved.c2.weight.abs().amax(dim=(0, 2, 3))
    assert torch.allclose(x_max, w_max, rtol=1e-4)  # α = ½: max|X/s| = max|W·s| per channel
    assert (x_max.max() / x_max.min()) < (input_channel_absmax(fp, ["c2"], [x])["c2"].max()
                                         / input_channel_absmax(fp, ["c2"], [x])["c2"].min())


@pytest.mark.parametrize("name", ["imdn_x4", "rfdn_x4", "carn_m_x4"])
def test_scale_migration_leaves_zoo_cnns_unchanged(name, data_dir):
    from srq.models.zoo import build_model
    from srq.quant.scale_migration import migrate_scales

    fp = build_model(name)
    x = torch.rand(2, 3, 24, 24)
    moved = copy.deepcopy(fp)
    info = migrate_scales(moved, [x])
    assert info["sites"] > 0
    with torch.no_grad():
        ref = fp(x)
        assert (moved(x) - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))


def test_reconstruction_can_train_the_blocks_biases_alone(toy):
    fp, x = toy
    student = _calibrated(fp, 2, None, x)
    before = {n: p.clone() for n, p in student.named_parameters() if n.endswith("bias")}
    error = _output_error(student, fp, x)
    steps = {n: p.clone() for n, p in student.named_parameters() if "weight_quantizer" in n}
    reconstruct(student, fp, [x], ["body.0", "body.1"], ReconstructionOptions(
        iterations=60, batch_size=8, learn_rounding=False, act_lr=0.0, drop_prob=0.0, bias_lr=1e-2,
        weight_scale_lr=1e-2, crop=None), progress=False)  # gains scale learned grids only: no-op here
    assert all(torch.equal(p, steps[n]) for n, p in student.named_parameters() if n in steps)
    changed = sorted(n for n, p in student.named_parameters() if n in before and not torch.equal(p, before[n]))
    assert changed == ["body.0.a.module.bias", "body.0.b.module.bias", "body.1.a.module.bias",
                       "body.1.b.module.bias"]
    assert _output_error(student, fp, x) < error


class WindowBlock(nn.Module):
    """A conv applied window by window: needs H, W multiples of ``window_size``."""

    def __init__(self, c=8, window_size=6):
        super().__init__()
        self.window_size, self.conv, self.sides = window_size, nn.Conv2d(c, c, 1), set()

    def forward(self, x):
        b, c, h, w = x.shape
        ws = self.window_size
        self.sides.add((h, w))
        windows = x.view(b, c, h // ws, ws, w // ws, ws)  # fails unless h, w are multiples of ws
        return x + self.conv(windows.permute(0, 2, 4, 1, 3, 5).reshape(-1, c, ws, ws)).view(
            b, h // ws, w // ws, c, ws, ws).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def test_reconstruction_crops_whole_windows_of_windowed_blocks():
    from srq.quant.reconstruct import spatial_multiple
    torch.manual_seed(0)
    fp = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), WindowBlock()).eval()
    x = torch.rand(4, 3, 24, 24)
    assert spatial_multiple(fp) == 6
    student = _calibrated(fp, 4, 4, x)
    with pytest.raises(RuntimeError):  # a 16×16 crop splits windows
        reconstruct(student, fp, [x], ["1"], ReconstructionOptions(iterations=2, crop=16, crop_multiple=1),
                    progress=False)
    student[1].sides.clear()
    reconstruct(student, fp, [x], ["1"], ReconstructionOptions(iterations=3, crop=16), progress=False)
    assert student[1].sides == {(12, 12)}  # every step: 16 floored to 12


class WindowAttention(nn.Module):
    """Multi-head self-attention inside 4×4 windows; the products are srq.MatMul, so their
    operands are 4-D (windows, heads, tokens, head dim), not feature maps."""

    def __init__(self, c=8, heads=2, window_size=4):
        super().__init__()
        self.heads, self.window_size = heads, window_size
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.matmul_qk, self.matmul_av = srq.MatMul(), srq.MatMul()

    def forward(self, x):
        b, c, h, w = x.shape
        ws, nh = self.window_size, self.heads
        t = x.view(b, c, h // ws, ws, w // ws, ws).permute(0, 2, 4, 3, 5, 1).reshape(-1, ws * ws, c)
        q, k, v = self.qkv(t).view(t.shape[0], ws * ws, 3, nh, c // nh).permute(2, 0, 3, 1, 4)
        a = self.matmul_qk(q, k.transpose(-2, -1)).softmax(-1)
        o = self.proj(self.matmul_av(a, v).transpose(1, 2).reshape(t.shape[0], ws * ws, c))
        o = o.view(b, h // ws, w // ws, ws, ws, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)
        return x + o


def test_lowbit_on_a_transformer_quantizes_linears_and_matmuls_and_never_crops_their_operands():
    torch.manual_seed(0)
    fp = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), WindowAttention(), WindowAttention(),
                       nn.Conv2d(8, 3, 3, padding=1)).eval()
    x = torch.rand(8, 3, 16, 16)
    cfg = srq.config("lowbit", bits="w4a4", overrides=[
        "reconstruction.iterations=4", "reconstruction.crop=8", "reconstruction.batch_size=4"])
    seen = []
    hook = lambda m, args: seen.append(tuple(args[0].shape))  # noqa: E731
    from srq.methods import run_method
    from srq.quant import quantization_map
    from srq.quant.modules import QuantMatMul
    import srq.quant.reconstruct as rec
    original = rec._reconstruct_unit

    def spy(name, unit, *a):
        handle = unit.register_forward_pre_hook(hook) if isinstance(unit, QuantMatMul) else None
        try:
            return original(name, unit, *a)
        finally:
            handle and handle.remove()
    rec._reconstruct_unit = spy
    try:
        result = run_method(fp, cfg, x, feature_blocks=None)
    finally:
        rec._reconstruct_unit = original
    qmap = quantization_map(result.model)
    assert sorted(qmap) == sorted(f"{i}.{n}" for i in (1, 2) for n in ("qkv", "proj", "matmul_qk", "matmul_av"))
    assert all("4" in str(f["input"]) for f in qmap.values())  # every layer at 4 bits: no 8-bit edges
    assert len(result.info["finetune"]["records"]) == 8  # layer by layer
    # rotation=auto: Hadamard on the transformer op set, on every power-of-2 Linear input only
    assert result.info["calibration"]["rotation"] == "hadamard"
    assert {n for n, f in qmap.items() if f.get("input_rotation") == "hadamard"} == {
        f"{i}.{n}" for i in (1, 2) for n in ("qkv", "proj")}
    # q (windows, heads, 16 tokens, head dim 4) and softmax(qkᵀ) (…, 16, 16): never cropped;
    # the samples of a product are its 8 × 16 windows, drawn 4 at a time
    assert seen and {s[1:] for s in seen} == {(2, 16, 4), (2, 16, 16)}
    assert {s[0] for s in seen} == {8 * 16, 4}


def test_lowbit_can_start_from_dobi_bounds_and_keeps_them_as_the_grid(toy):
    fp, x = toy
    from srq.methods import run_method
    from srq.quant import quantization_map
    cfg = srq.config("lowbit", bits="w4a4", overrides=["init=dobi", "reconstruction.iterations=5",
                                                      "reconstruction.crop=8", "reconstruction.act_lr=0",
                                                      "reconstruction.weight_scale_lr=0"])
    start = run_method(fp, srq.config("dobi", bits="w4a4"), x).model
    result = run_method(fp, cfg, x, feature_blocks=["body.0", "body.1"])
    qmap = quantization_map(result.model)
    assert qmap == quantization_map(start)  # DOBI's formats (free two-bound grids) throughout
    for (name, m), (_, s) in zip(srq.quant.wrapped_modules(result.model), srq.quant.wrapped_modules(start)):
        # bounds fixed (act_lr=0), so the weights sit on DOBI's grid: W = lo + Δ·k
        wq = m.weight_quantizer
        assert torch.equal(wq.lo, s.weight_quantizer.lo) and torch.equal(m.input_quantizer.hi, s.input_quantizer.hi)
        assert torch.equal(wq(m.module.weight), m.module.weight), name
        off = m.module.weight + 0.3 * float((wq.hi - wq.lo).max()) / (2 ** wq.fmt.bits - 1)
        assert not torch.equal(wq(off), off)  # the check can fail: off-grid weights move
    gained = run_method(fp, srq.config("lowbit", bits="w4a4", overrides=[  # learned steps
        "init=dobi", "reconstruction.iterations=5", "reconstruction.crop=8",
        "reconstruction.weight_scale_lr=0.05"]), x,
        feature_blocks=["body.0", "body.1"]).model
    for (name, m), (_, s) in zip(srq.quant.wrapped_modules(gained), srq.quant.wrapped_modules(result.model)):
        if name.startswith("body"):  # the free grids scaled, the weights on the scaled grids
            assert not torch.equal(m.weight_quantizer.hi, s.weight_quantizer.hi), name
            assert torch.allclose(m.weight_quantizer(m.module.weight), m.module.weight, atol=1e-6), name


def test_lowbit_then_dqc_trains_activation_bounds_only_and_keeps_the_rounding(toy):
    fp, x = toy
    from srq.methods import run_method
    base = ["reconstruction.iterations=5", "reconstruction.crop=8", "calib.seed=0"]
    plain = run_method(fp, srq.config("lowbit", bits="w4a4", overrides=base), x,
                       feature_blocks=["body.0", "body.1"], progress=False).model
    cfg = srq.config("lowbit", bits="w4a4",
                     overrides=base + ["dqc.iterations=4", "dqc.batch_size=4", "dqc.crop=12"])
    sides = []
    hook = fp.head.register_forward_pre_hook(lambda m, a: sides.append(tuple(a[0].shape[-2:])))
    try:
        result = run_method(fp, cfg, x, train=x, feature_blocks=["body.0", "body.1"], progress=False)
    finally:
        hook.remove()
    dqc = result.info["finetune"]["dqc"]
    assert dqc["iterations"] == 4 and dqc["crop"] == 12
    assert sides.count((12, 12)) == 4  # the teacher saw one 12×12 window of the 16×16 patches per DQC step
    pairs = list(zip(srq.quant.wrapped_modules(result.model), srq.quant.wrapped_modules(plain)))
    for (name, m), (_, p) in pairs:
        assert torch.equal(m.module.weight, p.module.weight), name  # same hardened rounding
    assert any(not torch.equal(m.input_quantizer.hi, p.input_quantizer.hi) for (_, m), (_, p) in pairs)


def test_rotation_auto_is_none_on_low_bit_cnns_and_with_dobis_one_sided_fc2(toy):
    from srq.methods.lowbit import rotated_layers_for, rotation_for
    fp, x = toy
    transformer = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), WindowAttention())
    assert rotation_for(fp, srq.config("lowbit", bits="w4a4")) == "none"
    # CNNs with 8-bit activations: conv inputs (RESULTS §12.5); the transformer op set: Linears
    cfg = srq.config("lowbit", bits="w8a8", overrides=["reconstruction.enabled=false"])
    assert (rotation_for(fp, cfg), rotated_layers_for(fp, cfg)) == ("hadamard", "all")
    assert rotated_layers_for(transformer, srq.config("lowbit", bits="w4a4")) == "linear"
    q = srq.quantize(fp, cfg, calib=x)
    rotated = {n for n, f in srq.quant.quantization_map(q).items() if f.get("input_rotation")}
    assert rotated == {"body.0.a", "body.0.b", "body.1.a", "body.1.b", "tail"}  # 8 wide; head: 3
    assert q.srq_method["info"]["calibration"]["rotation_layers"] == "all"
    assert rotation_for(transformer, srq.config("lowbit", bits="w4a4")) == "hadamard"
    assert rotation_for(transformer, srq.config("lowbit", bits="w4a4", overrides=["init=dobi"])) == "none"
    assert rotation_for(transformer, srq.config("lowbit", bits="w4a4", overrides=[
        "init=dobi", "dobi.one_sided_for=[*.matmul_av]"])) == "hadamard"
    assert rotation_for(transformer, srq.config("lowbit", bits="w4a4", overrides=["rotation=none"])) == "none"


def test_input_shift_auto_is_mean_below_8_bit_activations_and_never_with_dobis_one_sided_fc2(toy):
    from srq.methods.lowbit import input_shift_for
    fp, x = toy
    assert input_shift_for(srq.config("lowbit", bits="w4a4")) == "mean"
    assert input_shift_for(srq.config("lowbit", bits="w8a8")) == "none"
    assert input_shift_for(srq.config("lowbit", bits="w4a4", overrides=["init=dobi"])) == "none"
    assert input_shift_for(srq.config("lowbit", bits="w4a4", overrides=[
        "init=dobi", "dobi.one_sided_for=[*.matmul_av]"])) == "mean"
    with pytest.raises(ConfigError, match="input_shift=none"):
        srq.config("lowbit", bits="w4a4", overrides=["input_shift=midpoint", "init=dobi"])
    cfg = srq.config("lowbit", bits="w4a4", overrides=["reconstruction.enabled=false"])
    q = srq.quantize(fp, cfg, calib=x)  # the shift ran: every conv with a padded/bias fold
    shifted = {n for n, f in srq.quant.quantization_map(q).items() if f.get("input_shift")}
    assert shifted and q.srq_method["info"]["calibration"]["shifted_convs"] == len(shifted)
    with torch.no_grad():  # the same model unshifted is the MSE baseline: the shift changed it
        plain = srq.quantize(fp, srq.config("mse", bits="w4a4"), calib=x)
        assert not torch.equal(q(x), plain(x))


def test_reconstruction_steps_auto_double_at_two_bits_and_a_count_overrides_them():
    from srq.methods.lowbit import reconstruction_steps_for
    steps = {b: reconstruction_steps_for(srq.config("lowbit", bits=b))
             for b in ("w4a4", "w3a3", "w8a8", "w2a2", "w2a32", "w32a2")}
    assert steps == {"w4a4": 500, "w3a3": 500, "w8a8": 500, "w2a2": 1000, "w2a32": 1000, "w32a2": 1000}
    fixed = srq.config("lowbit", bits="w2a2", overrides=["reconstruction.iterations=7"])
    assert reconstruction_steps_for(fixed) == 7
    assert reconstruction_steps_for(srq.config("lowbit_gpu", bits="w2a2")) == 20000
    with pytest.raises(ConfigError, match="step count or auto"):
        srq.config("lowbit", bits="w2a2", overrides=["reconstruction.iterations=many"])


def test_rotation_with_dobis_one_sided_fc2_is_one_clear_error():
    with pytest.raises(ConfigError, match="one_sided_for"):
        srq.config("lowbit", bits="w4a4", overrides=["rotation=hadamard", "init=dobi"])
    assert srq.config("lowbit", bits="w4a4", overrides=[
        "rotation=hadamard", "init=dobi", "dobi.one_sided_for=[*.matmul_av]"]).rotation == "hadamard"


def test_reconstruction_can_learn_the_weight_steps_and_keeps_every_weight_on_its_new_grid(toy):
    fp, x = toy
    student = _calibrated(fp, 2, None, x)
    bounds = {n: m.weight_quantizer.hi.detach().clone() for n, m in student.named_modules()
              if isinstance(m, QuantConv2d)}
    reconstruct(student, fp, [x], ["body.0", "body.1"], ReconstructionOptions(
        iterations=100, batch_size=8, drop_prob=0.0, act_lr=0.0, crop=None, weight_scale_lr=1e-2),
        progress=False)
    for name, m in student.named_modules():
        if isinstance(m, QuantConv2d) and name.startswith("body"):  # the reconstructed units
            w, q = m.module.weight, m.weight_quantizer
            assert not torch.equal(q.hi, bounds[name]), name  # the steps moved ...
            assert torch.allclose(q(w), w, atol=1e-6), name  # ... and the weights sit on the new grid
            codes = w.detach() / q.hi.detach()  # narrow 2 bit: Δ = u, codes in {-1, 0, 1}
            assert torch.allclose(codes, codes.round(), atol=1e-5), name


class _Chain(nn.Module):
    """x → a (3×3 conv) → b (1×1, per-channel gains h) → c (1×1, dense M): the rest of the
    network after a is linear, so diag(JᵀJ) is known by hand."""

    def __init__(self, h: torch.Tensor, m: torch.Tensor):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b, self.c = nn.Conv2d(4, 4, 1, bias=False), nn.Conv2d(4, m.shape[0], 1, bias=False)
        with torch.no_grad():
            self.b.weight.copy_(torch.diag(h)[:, :, None, None])
            self.c.weight.copy_(m[:, :, None, None])

    def forward(self, x):
        return self.c(self.b(self.a(x)))


def test_output_sensitivity_is_the_diagonal_of_jtj_through_every_later_module():
    from srq.quant.reconstruct import output_sensitivity

    torch.manual_seed(0)
    h, m = torch.tensor([2.0, 1.0, 0.5, 3.0]), torch.randn(2, 4)
    net, x = _Chain(h, m).eval(), torch.rand(4, 3, 32, 32)
    d = output_sensitivity(net, ["a", "b", "c"], [x[:2], x[2:]], torch.Generator().manual_seed(0), probes=4)
    col = m.pow(2).sum(0)  # diag(MᵀM): E (Mᵀv)² for Rademacher v
    for name, truth in (("b", col), ("a", col * h.pow(2))):  # a's J goes through b too
        torch.testing.assert_close(d[name], truth / truth.mean(), rtol=0.03, atol=0.0)
    torch.testing.assert_close(d["c"], torch.ones(2))  # the output itself: v² = 1 exactly
    assert all(p.grad is None for p in net.parameters())  # the teacher gathers no gradients


def test_weighted_squared_error_by_hand():
    from srq.quant.reconstruct import _squared_error

    out, y = torch.zeros(1, 2, 1, 2), torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])
    assert float(_squared_error(out, y)) == pytest.approx((1 + 9 + 4 + 0) / 2)
    assert float(_squared_error(out, y, torch.tensor([0.5, 1.5]))) == pytest.approx(
        (0.5 * 1 + 1.5 * 9 + 0.5 * 4 + 1.5 * 0) / 2)
    tokens = torch.zeros(1, 2, 2)  # (B, N, C): weights along the last dim
    assert float(_squared_error(tokens, torch.ones(1, 2, 2), torch.tensor([0.0, 2.0]))) == pytest.approx(4 / 2)


def test_output_weighting_weights_each_units_error_by_its_channels_sensitivity():
    """The rest of the network after ``a`` is diagonal (gains g·h per channel), so Rademacher
    probes give diag(JᵀJ) exactly and the first step's loss (one sample, nearest rounding,
    no QDrop) is the hand-weighted error of the quantized unit."""
    from srq.quant.reconstruct import _squared_error

    torch.manual_seed(0)
    h, g = torch.tensor([4.0, 1.0, 0.5, 0.25]), torch.tensor([1.0, 2.0, 1.0, 0.5])
    fp, x = _Chain(h, torch.diag(g)).eval(), torch.rand(1, 3, 32, 32)  # one sample: every step takes it
    d = (g * h).pow(2) / (g * h).pow(2).mean()
    first = {}
    for weighting in ("none", "output"):
        student = copy.deepcopy(fp)
        quantize(student, QuantSpec(weight=QuantFormat(3, "narrow", axis=0, observer="mse"),
                                    input=QuantFormat(4, "integer", observer="minmax"), layer_policy="all"),
                 include=["a"], example_input=x[:1])
        with calibration_mode(student), torch.no_grad():
            student(x)
        with torch.no_grad():
            truth = {"none": _squared_error(student.a(x), fp.a(x)),
                     "output": _squared_error(student.a(x), fp.a(x), d)}[weighting]
        records = reconstruct(student, fp, [x], ["a"], ReconstructionOptions(
            iterations=1, batch_size=1, learn_rounding=False, act_lr=1e-9, drop_prob=0.0, crop=None,
            weighting=weighting), progress=False)
        first[weighting] = records[0]["loss_first"]
        assert first[weighting] == pytest.approx(float(truth), rel=1e-5)
    assert first["output"] != pytest.approx(first["none"], rel=0.05)  # the weights do change it
    with pytest.raises(ValueError, match="weighting"):
        reconstruct(student, fp, [x], ["a"], ReconstructionOptions(weighting="fisher"), progress=False)
    with pytest.raises(ConfigError, match="method.reconstruction.weighting"):
        srq.config("lowbit", bits="w4a4", overrides=["reconstruction.weighting=fisher"])


def test_auto_steps_follow_the_bits_and_a_models_own_settings():
    """``iterations: auto`` takes auto_iterations [above 2 bits, at ≤ 2 bits]; the
    conf/method_model file of (lowbit, lmlt_tiny_x4) lowers them for that model only; a
    step count given wins; other presets keep theirs."""
    from srq.methods.lowbit import reconstruction_steps_for

    def steps(method="lowbit", bits="w4a4", model=None, overrides=()):
        return reconstruction_steps_for(srq.config(method, bits=bits, model=model, overrides=overrides))

    assert (steps(), steps(bits="w2a2"), steps(bits="w2a32")) == (500, 1000, 1000)
    assert steps(model="imdtn_x4", bits="w2a2") == 1000
    assert (steps(model="lmlt_tiny_x4"), steps(model="lmlt_tiny_x4", bits="w2a2")) == (350, 400)
    assert steps(model="lmlt_tiny_x4", overrides=["reconstruction.iterations=40"]) == 40
    assert steps(model="lmlt_tiny_x4", overrides=["reconstruction.auto_iterations=[60,70]"]) == 60
    assert steps("lowbit_gpu", model="lmlt_tiny_x4") == 20000
    with pytest.raises(ConfigError, match="auto_iterations"):
        srq.config("lowbit", bits="w4a4", overrides=["reconstruction.auto_iterations=[500]"])


def test_every_method_model_file_names_a_method_and_a_model():
    """conf/method_model/<method>_<model>.yaml is optional in the defaults list, so a
    misspelt name would be skipped in silence."""
    from importlib import resources

    conf = resources.files("srq.conf")
    names = {g: {p.name[:-5] for p in conf.joinpath(g).iterdir() if p.name.endswith(".yaml")}
             for g in ("method", "model", "method_model")}
    assert names["method_model"]
    for name in names["method_model"]:
        assert any(name.startswith(m + "_") and name[len(m) + 1:] in names["model"]
                   for m in names["method"]), name
