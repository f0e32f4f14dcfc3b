"""Piecewise-linear (dual-region) activation quantizer (METHODS.md §4.2–4.3).

Bounds ``l_a < −bp < 0 < bp < u_a``; the b-bit budget is split into a dense region
[−bp, bp] with ``n_d = 2^{b−1} − 1`` steps and two outlier tails [l_a, −bp) and (bp, u_a]
with ``n_t = 2^{b−2} − 1`` steps each:

    Δ_d = 2bp/n_d,   Δ⁻ = (−bp − l_a)/n_t,   Δ⁺ = (u_a − bp)/n_t
    dense, centred:  x_q = clip(Δ_d ⌊clip(x, −bp, bp)/Δ_d⌉, −bp, bp)     (0 exact)
    dense, offset:   x_q = −bp + Δ_d ⌊(clip(x, −bp, bp) + bp)/Δ_d⌉        (2^{b−1} levels)
    x < −bp:         x_q = l_a + Δ⁻ ⌊(clip(x, l_a, −bp) − l_a)/Δ⁻⌉
    x > bp:          x_q = bp + Δ⁺ ⌊(clip(x, bp, u_a) − bp)/Δ⁺⌉

The region is chosen by the unquantized x (a constant mask backwards); rounding is
straight-through and clipping passes gradients to the bound it clips to, so l_a, u_a and
bp all get gradients (one fused autograd function computes them in closed form).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from srq.quant.quantizer import Quantizer

DENSE_GRIDS = ("centered", "offset")
BP_STATS = ("abs", "raw")


@dataclass(frozen=True)
class PLQFormat:
    """A piecewise-linear activation format. ``bits`` 3–8; calibration: the first batch
    sets l_a = min, u_a = max, bp = P_percentile(|x|) (``bp_stat='abs'``) or of x
    (``'raw'``), later batches update all three by EMA with ``beta``."""

    bits: int
    dense_grid: str = "centered"
    bp_stat: str = "abs"
    percentile: float = 99.0
    beta: float = 0.9

    def __post_init__(self):
        if not 3 <= self.bits <= 8:
            raise ValueError(f"unsupported bit-width {self.bits} for the piecewise-linear "
                             "quantizer: it needs 3–8 bits (its tails have 2^(b-2) − 1 steps)")
        if self.dense_grid not in DENSE_GRIDS:
            raise ValueError(f"unknown dense_grid {self.dense_grid!r}; valid: {', '.join(DENSE_GRIDS)}")
        if self.bp_stat not in BP_STATS:
            raise ValueError(f"unknown bp_stat {self.bp_stat!r}; valid: {', '.join(BP_STATS)}")
        if not 50 < self.percentile < 100:
            raise ValueError(f"breakpoint percentile must be in (50, 100), got {self.percentile}")

    def __str__(self) -> str:
        return f"plq{self.bits} {self.dense_grid} per_tensor ema({self.beta})"

    def replace(self, **changes) -> "PLQFormat":
        return dataclasses.replace(self, **changes)


def _plq_grid(x, la, bp, ua, bits: int, centered: bool):
    """Per element: region masks, origin o, step s and t = (clip(x, l_a, u_a) − o)/s, so that
    x_q = o + s⌊t⌉ (dense centred: then clipped to ±bp)."""
    n_d, n_t = 2 ** (bits - 1) - 1, 2 ** (bits - 2) - 1
    below, above = x < -bp, x > bp
    origin_dense = torch.zeros_like(bp) if centered else -bp
    o = torch.where(below, la, torch.where(above, bp, origin_dense))
    s = torch.where(below, (-bp - la) / n_t, torch.where(above, (ua - bp) / n_t, 2 * bp / n_d))
    return below, above, o, s, (x.clamp(la, ua) - o) / s


class _PLQFakeQuantize(torch.autograd.Function):
    """Fused forward/backward of :func:`fake_quantize_plq`: saves x and the ∂x_q/∂x mask and
    recomputes the grid backwards only when a bound needs its gradient (the composed autograd
    graph kept ~20 intermediate tensors per call).

    With r = ⌊t⌉ − t (straight-through rounding) the gradients are, per element
        ∂x_q/∂x  = 1[l_a ≤ x ≤ u_a] (0 where the centred dense value is clipped to ±bp)
        ∂x_q/∂l_a = 1[x < l_a] − r/n_t              (x < −bp)
        ∂x_q/∂u_a = 1[x > u_a] + r/n_t              (x > bp)
        ∂x_q/∂bp  = −r/n_t (tails), 2r/n_d (dense), ±1 (centred dense clipped to ±bp).
    """

    @staticmethod
    def forward(ctx, x, la, bp, ua, bits: int, centered: bool):
        below, above, o, s, t = _plq_grid(x, la, bp, ua, bits, centered)
        out = o + s * torch.round(t)
        passes = (x >= la) & (x <= ua)  # ∂x_q/∂x, kept (1 byte/element) for the backward
        if centered:  # s·⌊t⌉ beyond ±bp (only possible in the dense region) is clipped
            clipped = ~(below | above) & (out.abs() > bp)
            out = torch.where(clipped, out.clamp(-bp, bp), out)
            passes &= ~clipped
        ctx.save_for_backward(x, la, bp, ua, passes)
        ctx.bits, ctx.centered = bits, centered
        return out

    @staticmethod
    def backward(ctx, grad):
        x, la, bp, ua, passes = ctx.saved_tensors
        need_x, need_la, need_bp, need_ua = ctx.needs_input_grad[:4]
        g_x = grad * passes if need_x else None
        g_la = g_bp = g_ua = None
        if not (need_la or need_bp or need_ua):
            return g_x, g_la, g_bp, g_ua, None, None
        n_d, n_t = 2 ** (ctx.bits - 1) - 1, 2 ** (ctx.bits - 2) - 1
        below, above, o, s, t = _plq_grid(x, la, bp, ua, ctx.bits, ctx.centered)
        q = torch.round(t)
        g_r = grad * (q - t)
        low_sum = (g_r * below).sum() if need_la or need_bp else 0.0
        high_sum = (g_r * above).sum() if need_ua or need_bp else 0.0
        if need_la:
            g_la = (grad * (x < la)).sum() - low_sum / n_t
        if need_ua:
            g_ua = (grad * (x > ua)).sum() + high_sum / n_t
        if need_bp:
            dense = ~(below | above)
            g_bp = (g_r * (dense & passes)).sum() * (2 / n_d) - (low_sum + high_sum) / n_t
            if ctx.centered:  # clipped dense values move with ±bp
                g_bp = g_bp + (grad * torch.sign(s * q) * (dense & ~passes)).sum()
        return g_x, g_la, g_bp, g_ua, None, None


def fake_quantize_plq(x: torch.Tensor, la: torch.Tensor, bp: torch.Tensor, ua: torch.Tensor,
                      bits: int, dense_grid: str = "centered") -> torch.Tensor:
    """Quantize–dequantize ``x`` on the piecewise-linear grid (module docstring), with
    straight-through rounding and clipping gradients to the bound clipped to."""
    if dense_grid not in DENSE_GRIDS:
        raise ValueError(f"unknown dense_grid {dense_grid!r}; valid: {', '.join(DENSE_GRIDS)}")
    return _PLQFakeQuantize.apply(x, la, bp, ua, bits, dense_grid == "centered")


def plq_codes(x: torch.Tensor, la, bp, ua, bits: int, dense_grid: str = "centered"
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(region, code) of every element: region −1 / 0 / +1 (low tail, dense, high tail) and
    its integer code r in that region's formula (for tests and inspection)."""
    with torch.no_grad():
        la, bp, ua = (torch.as_tensor(v, dtype=x.dtype) for v in (la, bp, ua))
        n_d, n_t = 2 ** (bits - 1) - 1, 2 ** (bits - 2) - 1
        step_d = 2 * bp / n_d
        c = x.clamp(-bp, bp)
        dense = torch.round(c / step_d) if dense_grid == "centered" else torch.round((c + bp) / step_d)
        low = torch.round((x.clamp(la, -bp) - la) / ((-bp - la) / n_t))
        high = torch.round((x.clamp(bp, ua) - bp) / ((ua - bp) / n_t))
        region = torch.where(x < -bp, -1, torch.where(x > bp, 1, 0))
        return region, torch.where(region < 0, low, torch.where(region > 0, high, dense))


class PLQObserver(nn.Module):
    """First batch: l_a = min x, u_a = max x, bp = P_p(|x|) (or P_p(x)); then EMA with β."""

    def __init__(self, fmt: PLQFormat):
        super().__init__()
        self.fmt = fmt
        for name in ("la", "bp", "ua"):
            self.register_buffer(name, torch.tensor(0.0))
        self.register_buffer("batches", torch.tensor(0))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xd = x.detach().float().flatten()
        if not torch.isfinite(xd).all():
            raise FloatingPointError(
                "observer saw NaN/inf activations: the FP model overflows on this calibration "
                "data (check the input range of the model and the calibration images)")
        values = xd.abs() if self.fmt.bp_stat == "abs" else xd
        k = min(len(values), max(1, int(round(self.fmt.percentile / 100 * (len(values) - 1))) + 1))
        stats = {"la": xd.min(), "bp": values.kthvalue(k).values, "ua": xd.max()}
        beta = self.fmt.beta
        for name, value in stats.items():
            old = getattr(self, name)
            setattr(self, name, value.clone() if int(self.batches) == 0 else beta * old + (1 - beta) * value)
        self.batches += 1
        return x

    def compute_bounds(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if int(self.batches) == 0:
            raise RuntimeError("observer has seen no data: run calibration batches first")
        return self.la.clone(), self.bp.clone(), self.ua.clone()


class PiecewiseLinearQuantizer(Quantizer):
    """Dual-region activation quantizer with learnable ``la``, ``bp``, ``ua``.

    Empty tails (e.g. after ReLU, min x ≥ −bp) are padded so the formulas stay valid:
    l_a ≤ −bp − ε and u_a ≥ bp + ε, bp ≥ ε, with ε = 10⁻⁴·(u_a − l_a) at calibration
    (the tail's codes then go unused).
    """

    def __init__(self, fmt: PLQFormat):
        super().__init__(fmt)
        self.observer = PLQObserver(fmt)
        self.la = nn.Parameter(torch.tensor(-1.0), requires_grad=False)
        self.bp = nn.Parameter(torch.tensor(0.5), requires_grad=False)
        self.ua = nn.Parameter(torch.tensor(1.0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            return self.observer(x)
        if not self.enabled:
            return x
        return fake_quantize_plq(x, self.la, self.bp, self.ua, self.fmt.bits, self.fmt.dense_grid)

    @torch.no_grad()
    def set_bounds(self, la: torch.Tensor, bp: torch.Tensor, ua: torch.Tensor) -> None:
        la, bp, ua = (torch.as_tensor(v, dtype=torch.float32) for v in (la, bp, ua))
        span = float(ua - la)
        self.eps = torch.tensor(1e-4 * span if span > 0 else 1e-4 * max(float(ua.abs()), 1.0),
                                device=ua.device)
        for name, value in (("la", la), ("bp", bp), ("ua", ua)):
            old = getattr(self, name)
            setattr(self, name, nn.Parameter(value.clone(), requires_grad=old.requires_grad))
        self.project_()
        self.calibrated = True

    def finish_calibration(self) -> None:
        self.set_bounds(*self.observer.compute_bounds())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        was_calibrated = self.calibrated
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "bp" in state_dict:
            if not was_calibrated:  # else: keep calibration's ε (a resumed fine-tune)
                self.eps = 1e-4 * (self.ua - self.la).detach().clone()
            self.calibrated = self.enabled = True

    def learnable(self) -> dict[str, nn.Parameter]:
        return {"la": self.la, "ua": self.ua, "bp": self.bp}

    @torch.no_grad()
    def project_(self) -> None:
        """bp ≥ ε, l_a ≤ −bp − ε, u_a ≥ bp + ε."""
        eps = self.eps
        self.bp.copy_(torch.maximum(self.bp, eps))
        self.la.copy_(torch.minimum(self.la, -self.bp - eps))
        self.ua.copy_(torch.maximum(self.ua, self.bp + eps))

    def extra_repr(self) -> str:
        return f"{self.fmt}, enabled={self.enabled}"


__all__ = ["PLQFormat", "PiecewiseLinearQuantizer", "fake_quantize_plq", "plq_codes"]
