"""Block reconstruction (BRECQ, with QDrop's random dropping; METHODS.md §10.2).

Units — the given blocks, plus every quantized module outside them on its own — are
reconstructed one by one in execution order. For each unit, with inputs x̂ from the already
reconstructed quantized model and targets y = f_FP(x) from the FP model:

    min_{V, l, u}  E ‖f_q(x̃; W̃(V), l, u) − y‖² + λ Σ (1 − |2h(V) − 1|^β),

‖·‖² summed over channels (dim 1) and averaged over the rest, W̃ the AdaRound weights
(:mod:`srq.quant.adaround`), (l, u) the unit's activation bounds (LSQ-style, straight-through),
β annealed 20 → 2 after a warm-up without the regulariser; optionally the weight grids' per-channel
gains γ (W̃ = γ(o + Δk), LSQ-style learned steps); optionally the per-channel input shifts c of
shifted layers (:mod:`srq.quant.input_shift`) with their folds, c = c₀ + δ and b = b₀ + W δ (W the
FP weight, Σₖ Wₖ for a conv), a learned per-channel offset of each input grid (OmniQuant's
learnable equivalent transformation, shift part). QDrop: x̃ takes each element of
x (FP) with probability p, else of x̂, and every activation quantizer inside the unit passes
each element through unquantized with probability p; p = 0 is plain BRECQ. Afterwards the
rounding is hardened, so every weight sits on its quantizer's grid.

Output weighting (``weighting="output"``): the unit's error is weighted per feature channel c by
its sensitivity at the network's output, the diagonal of JᵀJ (J = ∂F/∂z, z the unit's output, F
the FP network) averaged over positions and calibration samples,

    d_c = E ‖(Jᵀ v)_c‖²,  v Rademacher (E v vᵀ = I),  loss = Σ_c d_c ‖out_c − y_c‖² / mean(d),

so error that the rest of the network carries to the output counts more (BRECQ's output-aware
weighting, its Fisher replaced by the output-MSE Hessian JᵀJ, diagonal per channel).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from srq.quant.adaround import AdaRoundWeight, beta_schedule
from srq.quant.api import execution_order, wrapped_modules
from srq.quant.modules import QuantMatMul, QuantModule
from srq.quant.primitives import random_mask
from srq.quant.quantizer import Quantizer, UniformQuantizer


@dataclass(frozen=True)
class ReconstructionOptions:
    """Budget and knobs of :func:`reconstruct`: ``iterations`` per unit on minibatches of
    ``batch_size`` calibration samples; Adam at ``lr`` for V and ``act_lr`` (cosine to 0)
    for activation bounds (0: bounds stay fixed); regulariser weight ``reg_weight``, β from
    ``beta[0]`` to ``beta[1]`` after ``warmup`` of the iterations; QDrop probability
    ``drop_prob``; ``learn_rounding`` False keeps round-to-nearest (bounds only);
    ``bias_lr`` > 0 also trains the unit's biases (Adam, cosine; 0: fixed); ``weight_scale_lr``
    > 0 also trains each weight grid's per-channel gain γ (Adam, cosine; only with
    ``learn_rounding``, whose grids they scale; 0: the calibrated steps stay); ``crop``:
    each step takes one random ``crop``×``crop`` window of the minibatch's 4-D inputs (the
    FP target recomputed on it; not for attention MatMul units) — cheaper steps, more
    positions; None: whole samples;
    ``crop_multiple``: the crop is floored to a multiple of it (windowed attention needs
    whole windows; None: :func:`spatial_multiple` of the student); ``shift_lr`` > 0 also trains
    the input shifts of the unit's shifted layers, each fold into the bias following (Adam,
    cosine; 0: the calibration shifts stay); ``weighting``: none | output (each unit's error
    weighted per channel by :func:`output_sensitivity`)."""

    iterations: int = 500
    batch_size: int = 8
    lr: float = 1e-3
    act_lr: float = 1e-3
    reg_weight: float = 0.01
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2
    drop_prob: float = 0.5
    learn_rounding: bool = True
    bias_lr: float = 0.0
    weight_scale_lr: float = 0.0
    crop: int | None = 32
    crop_multiple: int | None = None
    shift_lr: float = 0.0
    weighting: str = "none"
    seed: int = 0


class _Stop(Exception):
    pass


def reconstruction_units(model: nn.Module, blocks: list[str], example: torch.Tensor) -> list[str]:
    """``blocks`` that hold quantized modules, plus each quantized module outside every block,
    in execution order on ``example``."""
    wrapped = [n for n, _ in wrapped_modules(model)]
    inside = lambda n, b: n == b or n.startswith(b + ".")  # noqa: E731
    units = [b for b in blocks if any(inside(n, b) for n in wrapped)]
    units += [n for n in wrapped if not any(inside(n, b) for b in blocks)]
    return execution_order(model, example, units)


def spatial_multiple(model: nn.Module) -> int:
    """lcm of the ``window_size`` / ``pad_multiple`` ints on ``model``'s modules: the side a
    feature map must be a multiple of for windowed attention (1 for a CNN)."""
    m = 1
    for mod in model.modules():
        for attr in ("window_size", "pad_multiple"):
            v = getattr(mod, attr, None)
            if isinstance(v, int) and v > 0:
                m = math.lcm(m, v)
    return m


def capture(model: nn.Module, name: str, batches, output: bool = False):
    """Per batch: (args, kwargs[, output]) of module ``name`` in a no-grad forward that stops
    there."""
    module = dict(model.named_modules())[name]
    records = []

    def hook(mod, args, kwargs, out=None):
        detach = lambda v: v.detach() if isinstance(v, torch.Tensor) else v  # noqa: E731
        rec = (tuple(detach(a) for a in args), {k: detach(v) for k, v in kwargs.items()})
        records.append(rec + ((detach(out),) if output else ()))
        raise _Stop

    handle = (module.register_forward_hook(hook, with_kwargs=True) if output
              else module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    model(batch)
                except _Stop:
                    pass
    finally:
        handle.remove()
    return records


def _stack(records, index: int):
    """Concatenate field ``index`` (args tuple, kwargs dict or output) over batches."""
    first = records[0][index]
    cat = lambda vals: (torch.cat(vals) if isinstance(vals[0], torch.Tensor)  # noqa: E731
                        and vals[0].dim() > 0 and len(records) > 1 else vals[0])
    if isinstance(first, tuple):
        return tuple(cat([r[index][i] for r in records]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: cat([r[index][k] for r in records]) for k in first}
    return cat([r[index] for r in records])


def _take(value, idx, count: int):
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == count:
        return value[idx]
    return value


def _squared_error(out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """‖out − y‖² summed over dim 1 (channels), averaged over the other dims; with ``weight``,
    each feature channel's square (dim 1 of a 4-D map, else the last dim) times its weight."""
    diff = (out - target).pow(2)
    if weight is not None:
        diff = diff * (weight.view(1, -1, 1, 1) if diff.dim() == 4 else weight)
    return diff.sum(1).mean() if diff.dim() > 1 else diff.mean()


def _feature_dim(t: torch.Tensor) -> int:
    return 1 if t.dim() == 4 else t.dim() - 1


def output_sensitivity(model: nn.Module, names: list[str], batches, generator: torch.Generator,
                       probes: int = 1) -> dict[str, torch.Tensor | None]:
    """Per module of ``names``: d_c = E (Jᵀv)_c² over positions, samples and ``probes``
    Rademacher draws v per batch, J = ∂model/∂(its output), scaled to mean 1 (the diagonal of
    JᵀJ per feature channel; dim 1 of a 4-D output, else the last dim); None where the output
    is not one floating tensor or carries no gradient. A zero probe added to each output keeps
    the gradient flowing through later modules, so every module's J is the whole rest of the
    network."""
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    for batch in batches:
        for _ in range(int(probes)):
            taps: dict[str, list[torch.Tensor]] = {}

            def hook(name):
                def fn(mod, args, out):
                    if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.dim() < 2:
                        return None
                    zero = torch.zeros_like(out, requires_grad=True)
                    taps.setdefault(name, []).append(zero)
                    return out + zero
                return fn

            handles = [modules[n].register_forward_hook(hook(n)) for n in names]
            try:
                with torch.enable_grad():
                    y = model(batch)
                    v = torch.randint(0, 2, y.shape, generator=generator, device=y.device).to(y.dtype) * 2 - 1
                    zeros = [z for zs in taps.values() for z in zs]
                    grads = torch.autograd.grad(y, zeros, grad_outputs=v, allow_unused=True) if zeros else []
            finally:
                for h in handles:
                    h.remove()
            it = iter(grads)
            for name, zs in taps.items():
                for z in zs:
                    g = next(it)
                    if g is None:
                        continue
                    dim = _feature_dim(g)
                    sums[name] = sums.get(name, 0) + g.pow(2).transpose(0, dim).reshape(g.shape[dim], -1).sum(1)
    out = {}
    for name in names:  # the sums over positions, samples and draws: their mean-1 scaling is E's
        d = sums.get(name)
        out[name] = None if d is None or float(d.mean()) <= 0 else d / d.mean()
    return out


def _drop_hook(p: float, generator: torch.Generator):
    def hook(mod, args, out):
        return torch.where(random_mask(out.shape, p, generator, out.device), args[0], out)
    return hook


def reconstruct(student: nn.Module, teacher: nn.Module, batches: list[torch.Tensor],
                units: list[str], options: ReconstructionOptions = ReconstructionOptions(),
                progress: bool = True) -> list[dict]:
    """Reconstruct ``student`` (quantized, calibrated, not frozen) unit by unit against
    ``teacher`` (its FP original; never modified) on ``batches``; returns one record per unit
    (its name, quantized modules, first/last minibatch loss, share of flipped roundings,
    seconds)."""
    from tqdm.auto import tqdm

    o = options
    if o.crop_multiple is None:
        o = replace(o, crop_multiple=spatial_multiple(student))
    generator = torch.Generator(device=batches[0].device).manual_seed(int(o.seed))
    modules, fp_modules = dict(student.named_modules()), dict(teacher.named_modules())
    if o.weighting not in ("none", "output"):
        raise ValueError(f"weighting={o.weighting!r}; valid: none, output")
    weights = (output_sensitivity(teacher, list(units), batches, generator)
               if o.weighting == "output" else {})
    records = []
    frozen = [p for p in student.parameters() if p.requires_grad]
    for p in frozen:  # only V and the unit's bounds train
        p.requires_grad_(False)
    try:
        bar = tqdm(units, desc="reconstruct", unit="block", disable=not progress, leave=False)
        for name in bar:
            records.append(_reconstruct_unit(name, modules[name], fp_modules[name], student, teacher,
                                             batches, o, generator, progress, weights.get(name)))
            bar.set_postfix(loss=f"{records[-1]['loss_last']:.3g}")
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return records


def _reconstruct_unit(name, unit, fp_unit, student, teacher, batches, o, generator, progress,
                      weight=None) -> dict:
    """Reconstruct one unit (its error weighted per channel by ``weight``, if any); its record."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    fp = capture(teacher, name, batches, output=True)
    q = capture(student, name, batches, output=False)
    fp_args, fp_kwargs, target = _stack(fp, 0), _stack(fp, 1), _stack(fp, 2)
    q_args, q_kwargs = _stack(q, 0), _stack(q, 1)
    count = target.shape[0]
    operands = isinstance(unit, QuantMatMul)  # (…, n, d) attention operands, not feature maps: no crop
    members = [m for _, m in wrapped_modules(unit)]
    rounding = {}
    if o.learn_rounding:
        for m in members:
            if isinstance(m, QuantModule) and m.weight_quantizer is not None and not m.frozen:
                rounding[m] = (m.weight_quantizer, AdaRoundWeight(m.weight_quantizer, m.module.weight))
                m.weight_quantizer = rounding[m][1]
    act_quantizers = activation_quantizers(members)
    act = [p for qz in act_quantizers for p in qz.learnable().values()] if o.act_lr > 0 else []
    for p in act:
        p.requires_grad_(True)
    fused = [qz for qz in act_quantizers if isinstance(qz, UniformQuantizer)] if o.drop_prob > 0 else []
    for qz in fused:  # QDrop inside the fake-quantize pass; other quantizers: a hook
        qz.drop_prob, qz.drop_generator = float(o.drop_prob), generator
    handles = [qz.register_forward_hook(_drop_hook(o.drop_prob, generator))
               for qz in act_quantizers if qz not in fused] if o.drop_prob > 0 else []
    opts = []
    if rounding:
        opts.append(torch.optim.Adam([a.V for _, a in rounding.values()], lr=o.lr))
    if act:
        opts.append(torch.optim.Adam(act, lr=o.act_lr))
    biases = [m.module.bias for m in members if isinstance(m, QuantModule)
              and getattr(m.module, "bias", None) is not None] if o.bias_lr > 0 else []
    for b in biases:
        b.requires_grad_(True)
    if biases:
        opts.append(torch.optim.Adam(biases, lr=o.bias_lr))
    gains = [a.gain for _, a in rounding.values()] if o.weight_scale_lr > 0 else []
    for g in gains:
        g.requires_grad_(True)
    if gains:
        opts.append(torch.optim.Adam(gains, lr=o.weight_scale_lr))
    shifts = _learned_shifts(members) if o.shift_lr > 0 else []
    if shifts:
        opts.append(torch.optim.Adam([d for _, d in shifts], lr=o.shift_lr))
    schedules = [torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(int(o.iterations), 1))
                 for opt in opts[1 if rounding else 0:]]
    first = last = math.nan
    try:
        steps = tqdm(range(int(o.iterations) if opts else 0), desc=name, unit="step", leave=False,
                     disable=not progress, mininterval=2.0)
        for step in steps:
            idx = torch.randint(count, (min(int(o.batch_size), count),), generator=generator,
                                device=target.device)
            window = None if operands else crop_window(q_args, o.crop, generator, o.crop_multiple or 1)
            q_in = [_take(apply_crop(a, window), idx, count) for a in q_args]  # crop first: copy less
            fp_in = [_take(apply_crop(f, window), idx, count) for f in fp_args]
            kwargs = {k: _take(v, idx, count) for k, v in q_kwargs.items()}
            if window is None:
                y = target[idx]
            else:
                with torch.no_grad():
                    y = fp_unit(*fp_in, **{k: _take(v, idx, count) for k, v in fp_kwargs.items()})
            args = [_mix(a, f, o.drop_prob, generator) for a, f in zip(q_in, fp_in)]
            loss = rec = _squared_error(unit(*args, **kwargs), y, weight)
            beta = beta_schedule(step, int(o.iterations), float(o.warmup), *map(float, o.beta))
            if rounding and beta is not None and o.reg_weight > 0:
                loss = loss + float(o.reg_weight) * sum(a.regularizer(beta) for _, a in rounding.values())
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in opts:
                opt.step()
            for sched in schedules:
                sched.step()
            for qz in act_quantizers if act else []:
                qz.project_()
            for _, ada in rounding.values() if gains else []:
                ada.project_gain_()
            first = float(rec.detach()) if step == 0 else first
            last = float(rec.detach())
    finally:
        for h in handles:
            h.remove()
        for qz in fused:
            qz.drop_prob, qz.drop_generator = 0.0, None
        for p in act + biases + gains:
            p.requires_grad_(False)
        for m, _ in shifts:
            _fix_shift(m)
        flipped = []
        for m, (original, ada) in rounding.items():
            ada.harden()
            flipped.append(ada.flipped())
            with torch.no_grad():
                m.module.weight.copy_(ada())
            ada.commit_gain(original)
            m.weight_quantizer = original
    return {"unit": name, "modules": len(members), "loss_first": first, "loss_last": last,
            "flipped": round(sum(flipped) / len(flipped), 4) if flipped else 0.0,
            "seconds": round(time.perf_counter() - start, 2)}


class _Offset(nn.Module):
    """Parametrization t ↦ t + A δ (A None: t + δ), δ shared with the other tensor it moves."""

    def __init__(self, delta: nn.Parameter, matrix: torch.Tensor | None = None):
        super().__init__()
        self.delta = delta
        self.register_buffer("matrix", matrix)

    def forward(self, t):
        return t + (self.delta if self.matrix is None else self.matrix @ self.delta)


def _learned_shifts(members) -> list[tuple[QuantModule, nn.Parameter]]:
    """For each unfrozen wrapped layer with an input shift c₀: δ = 0 trainable, and while it
    trains c = c₀ + δ and its bias b = b₀ + W δ (the FP weight; Σₖ Wₖ for a conv), so the fold
    stays exact."""
    from torch.nn.utils import parametrize

    out = []
    for m in members:
        if not isinstance(m, QuantModule) or m.frozen or m.input_shift is None:
            continue
        layer = m.module
        w = layer.weight.detach()
        fold = (w if w.dim() == 2 else w.sum((2, 3))).clone()
        delta = nn.Parameter(torch.zeros_like(m.input_shift))
        parametrize.register_parametrization(m, "input_shift", _Offset(delta), unsafe=True)
        parametrize.register_parametrization(layer, "bias", _Offset(delta, fold), unsafe=True)
        out.append((m, delta))
    return out


def _fix_shift(m: QuantModule) -> None:
    """Write the learned c and b into the plain buffer / parameter again."""
    from torch.nn.utils import parametrize

    with torch.no_grad():
        parametrize.remove_parametrizations(m.module, "bias", leave_parametrized=True)
        parametrize.remove_parametrizations(m, "input_shift", leave_parametrized=True)
    m.module.bias.requires_grad_(False)


def activation_quantizers(members) -> list[Quantizer]:
    """The input / other-operand / output quantizers of wrapped modules (not their weights')."""
    names = ("input_quantizer", "other_quantizer", "output_quantizer")
    return [q for m in members for n in names if isinstance(q := getattr(m, n, None), Quantizer)]


def crop_window(args, crop: int | None, generator: torch.Generator, multiple: int = 1):
    """(top, left, size) of a random crop of the 4-D inputs, size floored to a multiple of
    ``multiple``, or None (no crop: ``crop`` is None, an input is not 4-D, the inputs are no
    larger than the crop, or the floored size is 0)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if crop is None or not tensors or any(t.dim() != 4 for t in tensors):
        return None
    h, w = tensors[0].shape[-2:]
    if h <= crop and w <= crop:
        return None
    size = min(int(crop), h, w) // multiple * multiple
    if size == 0:
        return None
    top = int(torch.randint(h - size + 1, (1,), generator=generator, device=tensors[0].device))
    left = int(torch.randint(w - size + 1, (1,), generator=generator, device=tensors[0].device))
    return top, left, size


def apply_crop(value, window):
    """``value[..., top:top + size, left:left + size]`` for a 4-D tensor and a window, else ``value``."""
    if window is None or not isinstance(value, torch.Tensor) or value.dim() != 4:
        return value
    top, left, size = window
    return value[..., top:top + size, left:left + size]


def _mix(q: torch.Tensor, fp: torch.Tensor, p: float, generator: torch.Generator):
    """x̃: each element of ``fp`` with probability ``p``, else of ``q`` (QDrop)."""
    if p <= 0 or not isinstance(q, torch.Tensor) or not q.is_floating_point() or q.shape != fp.shape:
        return q
    return torch.where(random_mask(q.shape, p, generator, q.device), fp, q)


__all__ = ["ReconstructionOptions", "apply_crop", "capture", "crop_window", "output_sensitivity", "reconstruct",
           "reconstruction_units", "spatial_multiple"]
