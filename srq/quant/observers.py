"""Observers: statistics of a tensor over calibration batches → quantization bounds (l, u).

Each observer is an ``nn.Module`` whose ``forward(x)`` records statistics and returns ``x``
unchanged, and whose ``compute_bounds()`` returns ``(l, u)`` shaped for the channel axis
(per-tensor: 0-dim tensors). ``symmetric`` observers report ``l = −u`` with u = max |x|.
"""

from __future__ import annotations

import torch
from torch import nn

from srq.quant.primitives import channel_shape, fake_quantize, reduce_dims


class Observer(nn.Module):
    """Base: per-tensor (``axis=None``) or per-channel statistics, EMA over batches.

    ``beta``: None → plain running min/max over all batches; else the first batch sets
    (l₁, u₁) and later ones update l_i = β l_{i−1} + (1 − β) l(x_i) (same for u).
    """

    def __init__(self, axis: int | None = None, symmetric: bool = False, beta: float | None = None):
        super().__init__()
        self.axis, self.symmetric, self.beta = axis, symmetric, beta
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))
        self.register_buffer("batches", torch.tensor(0))

    def batch_bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dims = reduce_dims(x, self.axis)
        shape = channel_shape(x, self.axis)
        return x.amin(dim=dims).reshape(shape), x.amax(dim=dims).reshape(shape)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xd = x.detach().float()
        if not torch.isfinite(xd).all():
            raise FloatingPointError(
                "observer saw NaN/inf activations: the FP model overflows on this calibration "
                "data (check the input range of the model and the calibration images)"
            )
        if self.symmetric:
            amax = self._symmetric_bound(xd)
            lo, hi = -amax, amax
        else:
            lo, hi = self.batch_bounds(xd)
        if int(self.batches) == 0:
            self.lo, self.hi = lo.clone(), hi.clone()
        elif self.beta is None:
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        else:
            self.lo = self.beta * self.lo + (1 - self.beta) * lo
            self.hi = self.beta * self.hi + (1 - self.beta) * hi
        self.batches += 1
        return x

    def _symmetric_bound(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.batch_bounds(x)
        return torch.maximum(-lo, hi)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for key in ("lo", "hi"):
            if prefix + key in state_dict:
                setattr(self, key, torch.empty_like(state_dict[prefix + key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def compute_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        if int(self.batches) == 0:
            raise RuntimeError("observer has seen no data: run calibration batches first "
                               "(the calibration set is empty or this layer was never called)")
        return self.lo.clone(), self.hi.clone()

    def extra_repr(self) -> str:
        return f"axis={self.axis}, symmetric={self.symmetric}, beta={self.beta}"


class MinMaxObserver(Observer):
    """l = min x, u = max x over everything observed."""

    def __init__(self, axis=None, symmetric=False):
        super().__init__(axis, symmetric, beta=None)


class EMAMinMaxObserver(Observer):
    """Per-batch min/max, exponential moving average with β (first batch initialises)."""

    def __init__(self, axis=None, symmetric=False, beta: float = 0.9):
        super().__init__(axis, symmetric, beta=beta)


class MovingAverageMinMaxObserver(EMAMinMaxObserver):
    """coreai/torch.ao form a_i = c·x_i + (1 − c)·a_{i−1}, averaging constant c (0.01)."""

    def __init__(self, axis=None, symmetric=False, averaging_constant: float = 0.01):
        super().__init__(axis, symmetric, beta=1.0 - averaging_constant)


class PercentileObserver(Observer):
    """Per batch l = P_p(x), u = P_{100−p}(x) (percent p), then EMA with β."""

    def __init__(self, axis=None, symmetric=False, p: float = 1.0, beta: float = 0.9):
        super().__init__(axis, symmetric, beta=beta)
        if not 0 <= p < 50:
            raise ValueError(f"percentile p must be in [0, 50), got {p}")
        self.p = p

    def batch_bounds(self, x):
        flat = _channel_rows(x, self.axis)
        k_lo = max(1, int(round(self.p / 100 * (flat.shape[1] - 1))) + 1)
        k_hi = max(1, flat.shape[1] - k_lo + 1)
        lo = flat.kthvalue(k_lo, dim=1).values
        hi = flat.kthvalue(k_hi, dim=1).values
        shape = channel_shape(x, self.axis)
        return lo.reshape(shape), hi.reshape(shape)

    def _symmetric_bound(self, x):
        flat = _channel_rows(x, self.axis).abs()
        k = max(1, int(round((1 - self.p / 100) * (flat.shape[1] - 1))) + 1)
        return flat.kthvalue(k, dim=1).values.reshape(channel_shape(x, self.axis))


class MSEObserver(Observer):
    """Clipping by grid search: candidates (1 − i/N)·(l₀, u₀), i = 0…N−1 (N ≥ 100), pick the
    one minimising E(x − Q(x))² per batch (per channel), then EMA with β.

    ``bits`` and ``mode`` are the format the bounds are for; per-tensor statistics larger
    than ``max_samples`` elements are estimated on an evenly strided subset.
    """

    def __init__(self, axis=None, symmetric=False, bits: int = 8, mode: str = "free",
                 candidates: int = 100, beta: float = 0.9, max_samples: int = 1 << 18):
        super().__init__(axis, symmetric, beta=beta)
        if candidates < 2:
            raise ValueError("MSE search needs at least 2 candidates")
        self.bits, self.mode, self.candidates = bits, mode, candidates
        self.max_samples = max_samples

    def _search(self, x, lo0, hi0):
        if self.axis is None and x.numel() > self.max_samples:
            # the error is estimated on an evenly strided subset (the extremes l₀, u₀ are
            # still those of the whole tensor)
            x = x.flatten()[:: -(-x.numel() // self.max_samples)]
        best_err = best_lo = best_hi = None
        dims = reduce_dims(x, self.axis)
        for i in range(self.candidates):
            f = 1.0 - i / self.candidates
            lo, hi = lo0 * f, hi0 * f
            if self.symmetric:
                lo = -hi
            span_ok = (hi - lo) > 0
            xq = fake_quantize(x, lo, torch.where(span_ok, hi, lo + 1), self.bits, self.mode)
            err = (x - xq).pow(2).mean(dim=dims).reshape(lo0.shape if lo0.dim() else ())
            if best_err is None:
                best_err, best_lo, best_hi = err, lo.clone(), hi.clone()
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_lo = torch.where(better, lo, best_lo)
                best_hi = torch.where(better, hi, best_hi)
        return best_lo, best_hi

    def batch_bounds(self, x):
        lo0, hi0 = super().batch_bounds(x)
        return self._search(x, lo0, hi0)

    def _symmetric_bound(self, x):
        lo0, hi0 = super().batch_bounds(x)
        amax = torch.maximum(-lo0, hi0)
        return self._search(x, -amax, amax)[1]


class DOBIObserver(Observer):
    """DOBI (METHODS.md §5.3): per batch, the best of ``candidates`` narrowed (l, u) by
    quantization MSE at ``bits`` (see :func:`srq.quant.dobi.dobi_search`); over several
    batches the bounds are averaged (one batch: exactly DOBI). Per-channel: one search per
    channel."""

    def __init__(self, axis=None, symmetric=False, bits: int = 8, mode: str = "free",
                 candidates: int = 100, one_sided: bool = False, step: str = "half",
                 include_last: bool = False, tie: str = "first", max_samples: int = 1 << 22):
        super().__init__(axis, symmetric, beta=None)
        if symmetric:
            raise ValueError("DOBI searches two free bounds: use mode free (Q-range)")
        if mode not in ("free", "integer"):
            raise ValueError(f"DOBI searches two bounds of the free or integer format, not {mode!r}")
        self.bits, self.candidates, self.one_sided = bits, candidates, one_sided
        self.integer = mode == "integer"
        self.step, self.include_last, self.tie, self.max_samples = step, include_last, tie, max_samples

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from srq.quant.dobi import dobi_search

        rows = _channel_rows(x.detach().float(), self.axis)
        found = [dobi_search(r, self.bits, self.candidates, self.one_sided, self.step,
                             self.include_last, self.tie, self.max_samples, self.integer)[:2]
                 for r in rows]
        shape = channel_shape(x, self.axis)
        lo = torch.stack([f[0] for f in found]).reshape(shape)
        hi = torch.stack([f[1] for f in found]).reshape(shape)
        k = int(self.batches)
        if k == 0:
            self.lo, self.hi = lo, hi
        else:
            self.lo = (self.lo * k + lo) / (k + 1)
            self.hi = (self.hi * k + hi) / (k + 1)
        self.batches += 1
        return x


def _channel_rows(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """(C, rest) view: one row per channel (one row per-tensor)."""
    if axis is None:
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


OBSERVERS = {
    "minmax": MinMaxObserver,
    "ema_minmax": EMAMinMaxObserver,
    "moving_average": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "dobi": DOBIObserver,
}


def build_observer(name: str, **kwargs) -> Observer:
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer {name!r}; valid: {', '.join(OBSERVERS)}")
    return OBSERVERS[name](**kwargs)
