"""Uniform quantization as pure functions (no state, no Lightning/Hydra).

Notation (METHODS.md §1): ``b`` bits, ``n = 2^b − 1``, bounds ``l < u``, step
``Δ = (u − l)/n``. Formats:

* ``free`` (asymmetric Q-range, the papers'): c = clip(x, l, u), r = ⌊(c − l)/Δ⌉, x_q = l + Δ r.
  0 is in general not on the grid.
* ``integer`` (asymmetric, integer zero point; torch's ``fake_quantize_*_affine`` and ONNX
  QuantizeLinear): the range is widened to hold 0 (l ← min(l, 0), u ← max(u, 0)),
  z = clip(⌊−l/Δ⌉, 0, n), r = clip(⌊x·(1/Δ)⌉ + z, 0, n), x_q = (r − z) Δ — rounding before
  adding z, so ties round half-even in x/Δ (not in x/Δ + z), as torch's kernels do.
* ``two_bound`` (symmetric Q-range): ``free`` with l = −u (2^b levels, 0 not on the grid).
* ``narrow`` (symmetric): Δ = u/(2^{b−1} − 1), r = clip(⌊x/Δ⌉, −(2^{b−1}−1), 2^{b−1}−1), x_q = Δ r.
* ``full`` (symmetric, torchao/coreai default): Δ = u/((2^b − 1)/2),
  r = clip(⌊x/Δ⌉, −2^{b−1}, 2^{b−1} − 1), x_q = Δ r.

``fake_quantize`` is differentiable in x, l and u: rounding is the identity backwards
(straight-through), clipping passes the gradient to the bound it clips to, and Δ stays in
the graph, which gives ∂x_q/∂u = 1[x ≥ u] + (r − t)/n and ∂x_q/∂l = 1[x ≤ l] − (r − t)/n for
``free`` with t = (c − l)/Δ (LSQ form, METHODS.md §1.4).
"""

from __future__ import annotations

import math

import torch

SYMMETRIC_MODES = ("two_bound", "narrow", "full")
ASYMMETRIC_MODES = ("free", "integer")
MODES = ASYMMETRIC_MODES + SYMMETRIC_MODES
ROUNDINGS = ("half_even", "half_away")


class _RoundSTE(torch.autograd.Function):
    """⌊t⌉ forward, identity backward."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, half_away: bool) -> torch.Tensor:
        if half_away:
            return torch.sign(t) * torch.floor(t.abs() + 0.5)
        return torch.round(t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def round_ste(t: torch.Tensor, rounding: str = "half_even") -> torch.Tensor:
    """Round to nearest (ties to even by default, like ``torch.round``) with a straight-through gradient."""
    return _RoundSTE.apply(t, rounding == "half_away")


def clip(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """clip(x, l, u) with ∂/∂x = 1[l ≤ x ≤ u], ∂/∂l = 1[x < l], ∂/∂u = 1[x > u]."""
    return torch.where(x < lo, lo, torch.where(x > hi, hi, x))


def qrange(bits: int, mode: str) -> tuple[int, int]:
    """Integer code range (r_min, r_max) of a format."""
    if mode in ("free", "integer", "two_bound"):
        return 0, 2**bits - 1
    if mode == "narrow":
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    if mode == "full":
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    raise ValueError(f"unknown quantization mode {mode!r}; valid: {', '.join(MODES)}")


def choose_qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int, mode: str
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale Δ, offset) of a format from bounds.

    Codes map back as x_q = Δ·(r − offset) for ``integer``/``narrow``/``full`` (offset = zero
    point z, 0 for symmetric) and as x_q = l + Δ·r for ``free``/``two_bound`` (offset = −l/Δ,
    not an integer). For symmetric modes only ``hi`` (= max |x|) is used.
    """
    n = 2**bits - 1
    if mode == "two_bound":
        lo = -hi
    if mode in ("free", "two_bound"):
        scale = (hi - lo) / n
        return scale, -lo / scale
    if mode == "integer":
        lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
        scale = (hi - lo) / n
        return scale, torch.clamp(torch.round(-lo / scale), 0, n)
    if mode == "narrow":
        return hi / (2 ** (bits - 1) - 1), torch.zeros_like(hi)
    if mode == "full":
        return hi / (n / 2), torch.zeros_like(hi)
    raise ValueError(f"unknown quantization mode {mode!r}; valid: {', '.join(MODES)}")


def quantize(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int, mode: str,
             rounding: str = "half_even") -> torch.Tensor:
    """Integer codes r (as a float tensor) of ``x`` for the format; see the module docstring."""
    scale, offset = choose_qparams(lo, hi, bits, mode)
    r_min, r_max = qrange(bits, mode)
    if mode in ("free", "two_bound"):
        low = -hi if mode == "two_bound" else lo
        return round_ste((clip(x, low, hi) - low) / scale, rounding)
    return torch.clamp(round_ste(x * (1.0 / scale), rounding) + offset, r_min, r_max)


def deployable_mode(mode: str) -> bool:
    """Whether integer kernels run the format: x_q = Δ·(r − z) with integer z, 0 on the grid."""
    return mode in ("integer", "narrow", "full")


def dequantize(codes: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int, mode: str
               ) -> torch.Tensor:
    """Real values of integer codes: inverse of :func:`quantize` on the grid."""
    scale, offset = choose_qparams(lo, hi, bits, mode)
    if mode in ("free", "two_bound"):
        low = -hi if mode == "two_bound" else lo
        return low + scale * codes
    return scale * (codes - offset)


def random_mask(shape, p: float, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Bernoulli(p) mask of ``shape``: 1[v < p·2¹⁶ − 2¹⁵] for v uniform over the int16 values,
    four v from each random int64 word, so P(1) is p rounded to a multiple of 2⁻¹⁶ (exact for
    QDrop's ½). One ``torch.rand`` float per element took 2.8× the time on CPU (QDrop draws
    one mask per quantized activation per step)."""
    n = math.prod(shape)
    words = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), generator=generator, device=device)
    v = words.view(torch.int16)[:n].view(shape)
    return v < round(float(p) * 65536) - 32768 if p < 1 else torch.ones_like(v, dtype=torch.bool)


class _ClipRound(torch.autograd.Function):
    """y = o + Δ·⌊t⌉ with t = (clip(x, a, b) − o)/Δ (``free``: o = a) or t = clip(x, a, b)·(1/Δ)
    (o = 0), in a few in-place passes over x; backward in closed form, the gradients that
    autograd gives :func:`clip` and :func:`round_ste`: ∂y/∂x = 1[a ≤ x ≤ b], ∂y/∂a = 1[x < a],
    ∂y/∂b = 1[x > b], ∂y/∂Δ = ⌊t⌉ − t (o's own path cancels: ∂y/∂o = 1 − 1); where ``keep``
    (QDrop) y = x with ∂y/∂x = 1 and nothing to the bounds. The autograd graph of where/compare
    ops it replaces (with bound gradients expanded to x's shape) took 2× the time on CPU."""

    @staticmethod
    def forward(ctx, x, low, high, scale, free: bool, half_away: bool, keep=None):
        t = torch.clamp(x, low, high)
        t = t.sub_(low).div_(scale) if free else t.mul_(1.0 / scale)
        r = torch.sign(t) * torch.floor(t.abs() + 0.5) if half_away else torch.round(t)
        err = torch.sub(r, t, out=t)  # ⌊t⌉ − t, for ∂y/∂Δ; t is not needed any more
        y = r.mul_(scale)
        y = y.add_(low) if free else y
        below, above = x < low, x > high  # the masks, not x: a caller may change x in place
        if keep is not None:  # QDrop: x itself where keep, with x's gradient (identity)
            y = torch.where(keep, x, y)
            below.logical_and_(~keep), above.logical_and_(~keep), err.masked_fill_(keep, 0.0)
        ctx.save_for_backward(below, above, low, high, scale, err)
        return y

    @staticmethod
    def backward(ctx, grad):
        below, above, low, high, scale, err = ctx.saved_tensors
        need_x, need_low, need_high, need_scale = ctx.needs_input_grad[:4]
        gx = grad.masked_fill(below | above, 0.0) if need_x else None
        gl = torch.where(below, grad, 0.0).sum_to_size(low.shape) if need_low else None
        gh = torch.where(above, grad, 0.0).sum_to_size(high.shape) if need_high else None
        gs = (grad * err).sum_to_size(scale.shape) if need_scale else None
        return gx, gl, gh, gs, None, None, None


def fake_quantize(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int,
                  mode: str = "free", rounding: str = "half_even",
                  keep: torch.Tensor | None = None) -> torch.Tensor:
    """x_q = dequantize(quantize(x)) with straight-through gradients to x, l and u.

    ``lo``/``hi`` broadcast against ``x`` (per-tensor: scalars; per-channel: shaped for the
    channel axis, see :func:`channel_shape`). ``keep`` (bool, x's shape): QDrop's
    x̃ = x where keep, else x_q (METHODS.md §10.1), fused into the same pass.
    """
    half_away = rounding == "half_away"
    if mode in ("free", "two_bound"):
        low = -hi if mode == "two_bound" else lo
        scale = (hi - low) / (2**bits - 1)
        return _ClipRound.apply(x, low, hi, scale, True, half_away, keep)
    scale, offset = choose_qparams(lo, hi, bits, mode)
    r_min, r_max = qrange(bits, mode)
    if mode == "integer":
        offset = offset.detach()
    # clip in the real domain so the clipped elements pass their gradient to the bound;
    # ⌊c·(1/Δ)⌉ then + z, as torch's fake_quantize kernels do (bit-identical ties)
    low, high = scale * (r_min - offset), scale * (r_max - offset)
    return _ClipRound.apply(x, low, high, scale, False, half_away, keep)


@torch.no_grad()
def fake_quantize_inference(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int,
                            mode: str = "free") -> torch.Tensor:
    """:func:`fake_quantize` without autograd (half-even rounding): the same operations in
    the same order, done in place on one clamped copy (fewer passes over memory)."""
    if mode in ("free", "two_bound"):
        low = -hi if mode == "two_bound" else lo
        scale = (hi - low) / (2**bits - 1)
        return torch.clamp(x, low, hi).sub_(low).div_(scale).round_().mul_(scale).add_(low)
    scale, offset = choose_qparams(lo, hi, bits, mode)
    r_min, r_max = qrange(bits, mode)
    low, high = scale * (r_min - offset), scale * (r_max - offset)
    return torch.clamp(x, low, high).mul_(1.0 / scale).round_().mul_(scale)


@torch.no_grad()
def fake_quantize_codes(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int,
                        mode: str = "free", rounding: str = "half_even") -> torch.Tensor:
    """The integer codes r (a float tensor) that :func:`fake_quantize_inference` puts on the
    grid, computed the same way, so that ``dequantize(r) == fake_quantize_inference(x)``
    bit for bit: ``free``/``two_bound`` r = ⌊(c − l)/Δ⌉ ∈ [0, 2^b − 1]; the others
    r = ⌊c·(1/Δ)⌉ + z ∈ :func:`qrange` (z = 0 when symmetric)."""
    if mode in ("free", "two_bound"):
        low = -hi if mode == "two_bound" else lo
        scale = (hi - low) / (2**bits - 1)
        return _round(torch.clamp(x, low, hi).sub_(low).div_(scale), rounding)
    scale, offset = choose_qparams(lo, hi, bits, mode)
    r_min, r_max = qrange(bits, mode)
    low, high = scale * (r_min - offset), scale * (r_max - offset)
    return _round(torch.clamp(x, low, high).mul_(1.0 / scale), rounding).add_(offset)


def _round(t: torch.Tensor, rounding: str) -> torch.Tensor:
    return t.round_() if rounding == "half_even" else torch.sign(t) * torch.floor(t.abs() + 0.5)


def channel_shape(x: torch.Tensor, axis: int | None) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector along ``axis`` of ``x`` (``()`` per-tensor)."""
    if axis is None:
        return ()
    shape = [1] * x.dim()
    shape[axis] = x.shape[axis]
    return tuple(shape)


def reduce_dims(x: torch.Tensor, axis: int | None) -> tuple[int, ...]:
    """Dims to reduce for statistics: all (per-tensor) or all but ``axis`` (per-channel)."""
    axis = None if axis is None else axis % x.dim()
    return tuple(d for d in range(x.dim()) if d != axis)
