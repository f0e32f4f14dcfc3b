"""Stateful quantizer modules: a format, an observer, and (learnable) bounds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from srq.quant.observers import Observer, build_observer
from srq.quant.primitives import (
    MODES,
    ROUNDINGS,
    SYMMETRIC_MODES,
    fake_quantize,
    fake_quantize_inference,
    random_mask,
)


@dataclass(frozen=True)
class QuantFormat:
    """How one tensor is quantized.

    ``bits``: 2–8 or 16. ``mode``: ``free``/``integer`` (asymmetric) or
    ``two_bound``/``narrow``/``full`` (symmetric), see :mod:`srq.quant.primitives`.
    ``axis``: None per-tensor, else the per-channel axis. ``observer``: how calibration sets
    the bounds (``minmax``, ``ema_minmax``, ``moving_average``, ``percentile``, ``mse``) with
    ``observer_args``.
    """

    bits: int
    mode: str = "free"
    axis: int | None = None
    observer: str = "minmax"
    observer_args: tuple[tuple[str, float], ...] = ()
    rounding: str = "half_even"

    def __post_init__(self):
        if not (2 <= self.bits <= 8 or self.bits == 16):
            raise ValueError(f"unsupported bit-width {self.bits}: srq quantizes to 2–8 or 16 bits")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"unknown rounding {self.rounding!r}; valid: {', '.join(ROUNDINGS)}")

    @property
    def symmetric(self) -> bool:
        return self.mode in SYMMETRIC_MODES

    def __str__(self) -> str:
        gran = "per_tensor" if self.axis is None else f"per_channel({self.axis})"
        one_sided = " one-sided" if dict(self.observer_args).get("one_sided") else ""
        return f"int{self.bits} {self.mode} {gran} {self.observer}{one_sided}"

    def replace(self, **changes) -> "QuantFormat":
        return dataclasses.replace(self, **changes)


class Quantizer(nn.Module):
    """What every quantizer shares: a format, an ``observer`` with ``forward(x) -> x``,
    ``compute_bounds()`` and a ``batches`` count, and three states: ``observing``
    (statistics only, output = input), ``enabled`` (fake-quantize), neither (pass-through).
    """

    def __init__(self, fmt):
        super().__init__()
        self.fmt = fmt
        self.observing = False
        self.enabled = False
        self.calibrated = False
        self.register_buffer("eps", torch.tensor(0.0), persistent=False)

    def finish_calibration(self) -> None:
        raise NotImplementedError

    def learnable(self) -> dict[str, nn.Parameter]:
        """The bound parameters an optimizer may train, by name."""
        raise NotImplementedError

    def project_(self) -> None:
        """Keep learned bounds valid after an optimizer step (METHODS.md §1.5)."""


class UniformQuantizer(Quantizer):
    """Fake-quantizes a tensor with bounds (l, u) set by calibration, optionally learnable.

    ``lo``/``hi`` are parameters so later methods can learn them (symmetric formats use
    ``hi`` only, l = −u).
    """

    def __init__(self, fmt: QuantFormat):
        super().__init__(fmt)
        kwargs = dict(fmt.observer_args)
        if fmt.observer in ("mse", "dobi"):
            kwargs.update(bits=fmt.bits, mode=fmt.mode)
        self.observer: Observer = build_observer(fmt.observer, axis=fmt.axis,
                                                 symmetric=fmt.symmetric, **kwargs)
        self.lo = nn.Parameter(torch.tensor(0.0), requires_grad=False)
        self.hi = nn.Parameter(torch.tensor(0.0), requires_grad=False)
        self.drop_prob, self.drop_generator = 0.0, None  # QDrop while reconstructing (reconstruct.py)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            return self.observer(x)
        if not self.enabled:
            return x
        keep = (random_mask(x.shape, self.drop_prob, self.drop_generator, x.device)
                if self.drop_prob > 0 else None)
        if self.fmt.rounding == "half_even" and not (torch.is_grad_enabled() and (
                x.requires_grad or self.lo.requires_grad or self.hi.requires_grad)):
            y = fake_quantize_inference(x, self.lo, self.hi, self.fmt.bits, self.fmt.mode)
            return y if keep is None else torch.where(keep, x, y)
        return fake_quantize(x, self.lo, self.hi, self.fmt.bits, self.fmt.mode, self.fmt.rounding, keep)

    @torch.no_grad()
    def set_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Set (l, u), widening a zero range so Δ > 0 (a constant tensor stays exact)."""
        lo, hi = lo.float(), hi.float()
        if self.fmt.symmetric:
            hi = torch.maximum(hi.abs(), -lo)
            hi = torch.where(hi > 0, hi, torch.ones_like(hi))
            lo = -hi
        else:
            flat = hi <= lo
            pad = torch.where(lo.abs() > 0, lo.abs() * 1e-3, torch.ones_like(lo))
            lo, hi = torch.where(flat, lo - pad, lo), torch.where(flat, hi + pad, hi)
        for name, value in (("lo", lo), ("hi", hi)):
            old = getattr(self, name)
            if old.shape == value.shape and old.device == value.device:  # in place: optimizers keep it
                old.data.copy_(value)
            else:
                setattr(self, name, nn.Parameter(value.clone(), requires_grad=old.requires_grad))
        self.eps = 1e-4 * (hi - lo).detach().clone()
        self.calibrated = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Loading calibrated bounds (any shape) makes the quantizer calibrated and enabled.
        Bounds of the same shape load in place, so an optimizer holding them keeps working."""
        was_calibrated = self.calibrated
        if prefix + "hi" in state_dict:
            for key in ("lo", "hi"):
                value = state_dict[prefix + key]
                if getattr(self, key).shape != value.shape:
                    setattr(self, key, nn.Parameter(torch.empty_like(value), requires_grad=False))
            self.calibrated = self.enabled = True
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "hi" in state_dict and not was_calibrated:  # else: keep calibration's ε
            self.eps = 1e-4 * (self.hi - self.lo).detach().clone()

    def finish_calibration(self) -> None:
        self.set_bounds(*self.observer.compute_bounds())

    def learnable(self) -> dict[str, nn.Parameter]:
        return {"hi": self.hi} if self.fmt.symmetric else {"lo": self.lo, "hi": self.hi}

    @torch.no_grad()
    def project_(self) -> None:
        """u ≥ l + ε with ε = 10⁻⁴·(u₀ − l₀) (symmetric: u ≥ ε)."""
        if self.fmt.symmetric:
            self.hi.copy_(torch.maximum(self.hi, self.eps / 2))
        else:
            self.hi.copy_(torch.maximum(self.hi, self.lo + self.eps))

    def extra_repr(self) -> str:
        return f"{self.fmt}, enabled={self.enabled}"


__all__ = ["QuantFormat", "Quantizer", "UniformQuantizer"]
