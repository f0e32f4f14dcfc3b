"""Teacher/student fine-tuning: taps, losses, staged schedule, resume and determinism."""

import copy
import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from srq.lit.distill import AtomicLastCheckpoint, DistillationModule, EpochSeededSampler
from srq.lit.losses import (
    FeatureTaps,
    NormalizedFeatureLoss,
    OutputL1,
    WeightedSum,
    entropy,
    feature_std,
    sensitivity_weights,
)
from srq.quant import QuantFormat, QuantSpec, calibration_mode, quantize
from srq.quant.plq import PLQFormat


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 3, 3, padding=1))


def test_feature_taps_record_and_always_remove_hooks():
    model = _net()
    x = torch.randn(2, 3, 8, 8)
    with FeatureTaps(model, ["0", "2"]) as taps:
        model(x)
    assert torch.equal(taps.features["0"], model[0](x))
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError):
        with FeatureTaps(model, ["2"], site="input"):
            raise RuntimeError("boom")
    assert all(not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(KeyError, match="no module named nope"):
        FeatureTaps(model, ["nope"])


def test_normalized_feature_loss_hand_computed():
    # one sample, features [3, 4] vs [4, 3]: normalized [0.6, 0.8] vs [0.8, 0.6] → ‖·‖ = 0.2√2
    ft = {"a": torch.tensor([[3.0, 4.0]]), "b": torch.tensor([[1.0, 0.0]])}
    fs = {"a": torch.tensor([[4.0, 3.0]]), "b": torch.tensor([[0.0, 2.0]])}   # b: ‖[1,−1]‖ = √2
    loss = NormalizedFeatureLoss(["a", "b"], {"a": 0.25, "b": 0.75})
    expected = (0.25 * 0.2 * math.sqrt(2) + 0.75 * math.sqrt(2)) / 2
    assert float(loss(None, None, fs, ft)) == pytest.approx(expected, rel=1e-6)
    # a scaled copy of the teacher's feature costs nothing
    assert float(NormalizedFeatureLoss(["a"])(None, None, {"a": 7 * ft["a"]}, ft)) == pytest.approx(0, abs=1e-7)


def test_output_l1_and_weighted_sum():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.5, 2.0, 1.0])
    assert float(OutputL1()(a, b)) == pytest.approx(2.5 / 3)
    assert float(OutputL1("sum")(a, b)) == pytest.approx(2.5)
    total = WeightedSum({"rec": (5.0, OutputL1())})
    assert float(total(a, b, {}, {})) == pytest.approx(5 * 2.5 / 3)
    assert float(total.parts["rec"]) == pytest.approx(2.5 / 3)


def test_sensitivity_softmax_and_entropy():
    w = sensitivity_weights({"a": 1.0, "b": 2.0, "c": 3.0})
    z = math.exp(1) + math.exp(2) + math.exp(3)
    assert w["c"] == pytest.approx(math.exp(3) / z)
    assert sum(w.values()) == pytest.approx(1.0)
    flat = sensitivity_weights({"a": 5.0, "b": 5.0})
    assert entropy(flat) == pytest.approx(math.log(2))
    # τ → large flattens
    assert entropy(sensitivity_weights({"a": 1.0, "b": 30.0}, temperature=1e6)) == pytest.approx(math.log(2))


def test_feature_std_is_mean_over_samples_of_per_sample_std():
    model = nn.Sequential(nn.Identity())
    x = torch.stack([torch.zeros(1, 2, 2), torch.tensor([[[0.0, 2.0], [0.0, 2.0]]])])
    sigma = feature_std(model, ["0"], [x], site="input")
    # sample 1: std 0; sample 2: values 0,2,0,2 → unbiased std = √(4/3)
    assert sigma["0"] == pytest.approx(math.sqrt(4 / 3) / 2)


def test_epoch_seeded_sampler_depends_only_on_epoch():
    s = EpochSeededSampler(10, seed=3)
    s.set_epoch(2)
    first = list(s)
    other = EpochSeededSampler(10, seed=3)
    other.set_epoch(2)
    assert list(other) == first and sorted(first) == list(range(10))
    other.set_epoch(3)
    assert list(other) != first


def _setup(seed=0):
    teacher = _net()
    student = copy.deepcopy(teacher)
    spec = QuantSpec(weight=QuantFormat(4, "narrow", axis=0), input=PLQFormat(4),
                     edge_weight=QuantFormat(8, "narrow", axis=0),
                     edge_input=QuantFormat(8, "free", observer="ema_minmax"))
    quantize(student, spec)
    gen = torch.Generator().manual_seed(seed)
    data = [torch.rand(3, 12, 12, generator=gen) for _ in range(8)]
    with calibration_mode(student), torch.no_grad():
        student(torch.stack(data))
    layers = ["2", "4"]
    groups = {"weight_bound": [student[2].weight_quantizer.hi, student[4].weight_quantizer.hi],
              "act_bounds": [student[2].input_quantizer.la, student[2].input_quantizer.ua,
                             student[4].input_quantizer.la, student[4].input_quantizer.ua],
              "breakpoint": [student[2].input_quantizer.bp, student[4].input_quantizer.bp]}
    objective = WeightedSum({"sen": (1.0, NormalizedFeatureLoss(layers)), "rec": (5.0, OutputL1())})
    projections = [q.project_ for i in (2, 4) for q in (student[i].weight_quantizer,
                                                         student[i].input_quantizer)]
    module = DistillationModule(teacher, student, objective, groups,
                                [["weight_bound"], ["act_bounds"], ["breakpoint"]],
                                lr=1e-2, projections=projections)
    loader = DataLoader(data, batch_size=2, sampler=EpochSeededSampler(len(data), seed))
    return module, loader


def _trainer(tmp_path, epochs, callbacks=()):
    return L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False,
                     callbacks=[AtomicLastCheckpoint(tmp_path / "checkpoints"), *callbacks],
                     default_root_dir=tmp_path)


def _bounds(student):
    return {k: v.detach().clone() for k, v in student.state_dict().items()
            if k.endswith((".hi", ".la", ".ua", ".bp", ".lo"))}


class _Snapshots(L.Callback):
    def __init__(self):
        self.states = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.states.append(_bounds(pl_module.student))


def test_staged_schedule_trains_one_group_per_epoch_and_teacher_stays_fixed(tmp_path):
    module, loader = _setup()
    teacher_before = copy.deepcopy(module.teacher.state_dict())
    weights_before = {k: v.clone() for k, v in module.student.state_dict().items()
                      if k.endswith("module.weight")}
    start = _bounds(module.student)
    snaps = _Snapshots()
    _trainer(tmp_path, 3, [snaps]).fit(module, loader)
    changed = [{k for k in start if not torch.equal(prev[k], cur[k])}
               for prev, cur in zip([start] + snaps.states[:-1], snaps.states)]
    assert changed[0] == {"2.weight_quantizer.hi", "4.weight_quantizer.hi"}
    # inputs are post-ReLU: the low tail is empty, l_a gets no gradient (only projection
    # l_a ≤ −bp − ε moves it, when bp moves)
    tails = {"2.input_quantizer.la", "4.input_quantizer.la"}
    assert {"2.input_quantizer.ua", "4.input_quantizer.ua"} <= changed[1]
    assert changed[1] <= {"2.input_quantizer.ua", "4.input_quantizer.ua"} | tails
    assert {"2.input_quantizer.bp", "4.input_quantizer.bp"} <= changed[2]
    assert changed[2] <= {"2.input_quantizer.bp", "4.input_quantizer.bp"} | tails
    for k, v in module.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k])
    for k, v in weights_before.items():
        assert torch.equal(module.student.state_dict()[k], v)  # weights stay frozen
    # edge layers (first/last) are not trained
    assert not any(k.startswith(("0.", "6.")) for c in changed for k in c)


def test_fine_tuning_lowers_the_loss(tmp_path):
    module, loader = _setup()
    batch = torch.stack(list(loader.dataset))

    def loss():
        with torch.no_grad():
            return float(OutputL1()(module.student(batch), module.teacher(batch)))

    before = loss()
    _trainer(tmp_path, 6).fit(module, loader)
    assert loss() < before


class _Interrupt(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 2:
            raise RuntimeError("simulated kill")


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    straight, loader = _setup()
    _trainer(tmp_path / "a", 4).fit(straight, loader)

    first, loader = _setup()
    with pytest.raises(RuntimeError, match="simulated kill"):
        _trainer(tmp_path / "b", 4, [_Interrupt()]).fit(first, loader)
    ckpt = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and not list(ckpt.parent.glob("*.tmp"))
    assert not any(k.startswith("teacher.") for k in torch.load(ckpt, weights_only=False)["state_dict"])

    resumed, loader = _setup()  # a fresh process: same calibration, then the checkpoint
    _trainer(tmp_path / "c", 4).fit(resumed, loader, ckpt_path=ckpt)
    a, c = _bounds(straight.student), _bounds(resumed.student)
    assert a.keys() == c.keys()
    for k in a:
        assert torch.equal(a[k], c[k]), k
    start = _bounds(_setup()[0].student)
    assert any(not torch.equal(a[k], start[k]) for k in a)  # it did train


def test_same_seed_same_result(tmp_path):
    one, loader = _setup()
    _trainer(tmp_path / "1", 2).fit(one, loader)
    two, loader = _setup()
    _trainer(tmp_path / "2", 2).fit(two, loader)
    for k, v in _bounds(one.student).items():
        assert torch.equal(v, _bounds(two.student)[k])


def test_crop_batch_takes_one_window_per_step_reproducibly():
    module, loader = _setup()
    batch = next(iter(loader))
    assert module.crop_batch(batch) is batch  # crop None: whole patches
    module.crop, module.crop_multiple = 7, 2
    first = module.crop_batch(batch)
    assert first.shape[-2:] == (6, 6)  # 7 floored to a multiple of 2
    hits = [(t, l) for t in range(7) for l in range(7)
            if torch.equal(batch[..., t:t + 6, l:l + 6], first)]
    assert hits  # a window of the batch itself, the same for every sample
    assert torch.equal(module.crop_batch(batch), first)  # same (seed, step): same window (resume)
    windows = set()
    for seed in range(8):  # another seed: other windows
        module.seed = seed
        windows.add(tuple(module.crop_batch(batch).flatten()[:5].tolist()))
    assert len(windows) > 1
    module.crop = 12  # no smaller than the batch: untouched
    assert module.crop_batch(batch) is batch


def test_schedule_with_unknown_group_is_rejected():
    module, _ = _setup()
    with pytest.raises(ValueError, match="unknown parameter groups"):
        DistillationModule(module.teacher, module.student, module.objective,
                           {"weight_bound": [nn.Parameter(torch.zeros(1))]}, [["bp"]])


@pytest.mark.parametrize("bar_on", [True, False])
def test_fitter_shows_one_tqdm_bar_whether_or_not_rich_is_installed(bar_on):
    """Lightning defaults to RichProgressBar when `rich` is importable (the sweep extras bring
    it) and shows a step-based run as "Epoch 0/-2"; the Fitter swaps in tqdm, and a trainer
    config with the bar off (built as the app builds it, through Hydra) still trains."""
    import hydra
    from lightning.pytorch.callbacks import TQDMProgressBar

    from srq.lit.fit import Fitter

    made = []
    config = {"_target_": "lightning.pytorch.Trainer", "accelerator": "cpu",
              "enable_model_summary": False, "enable_progress_bar": bar_on}

    def factory(**kw):
        made.append(hydra.utils.instantiate(config, **kw))
        return made[-1]

    module, loader = _setup()
    info = Fitter(trainer=factory)(module, loader.dataset, None, batch_size=2, steps=2)
    assert info["steps"] == 2 and len(made) == 1
    bar = made[0].progress_bar_callback
    assert isinstance(bar, TQDMProgressBar) if bar_on else bar is None
