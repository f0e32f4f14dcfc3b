"""LMLT (Kim et al. 2024): low-to-high multi-level vision transformer for lightweight SR.

Defaults build LMLT-Tiny (dim 36, 8 blocks). Input is RGB in [0, 1]; the model reflect-pads
itself at the bottom/right to a multiple of 64 and crops the features back before upsampling.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from srq.models.archs.common import MatMul


def _reflect_index(n: int, target: int, device: torch.device) -> torch.Tensor:
    """Indices of a length-``target`` reflect extension (edge not repeated) of a length-``n`` axis."""
    idx = torch.arange(target, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = idx % period
    return torch.where(idx < n, idx, period - idx)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        x = (x - mu) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class WindowAttention(nn.Module):
    """Single-head attention in non-overlapping windows plus a per-window depthwise conv of V."""

    def __init__(self, dim: int, window_size: int = 8):
        super().__init__()
        self.window_size = window_size
        self.scale = dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.get_v = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.matmul_qk = MatMul()
        self.matmul_av = MatMul()
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ws = self.window_size
        nh, nw = h // ws, w // ws
        t = x.view(b, c, nh, ws, nw, ws).permute(0, 2, 4, 3, 5, 1).reshape(b * nh * nw, ws * ws, c)
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        v_img = v.transpose(1, 2).reshape(-1, c, ws, ws)
        lepe = self.get_v(v_img).flatten(2).transpose(1, 2)
        attn = self.softmax(self.matmul_qk(q, k.transpose(-2, -1)) * self.scale)
        out = self.proj(self.matmul_av(attn, v) + lepe)
        out = out.view(b, nh, nw, ws, ws, c).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, c, h, w)


class LHSB(nn.Module):
    """Channel-split pyramid of window attentions, run coarse to fine, aggregated into a gate."""

    def __init__(self, dim: int, n_levels: int = 4, window_size: int = 8):
        super().__init__()
        self.n_levels = n_levels
        self.mfr = nn.ModuleList([WindowAttention(dim // n_levels, window_size) for _ in range(n_levels)])
        self.aggr = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        chunks = x.chunk(self.n_levels, dim=1)
        levels = [chunks[0]] + [
            F.adaptive_max_pool2d(chunks[i], (h // 2 ** i, w // 2 ** i)) for i in range(1, self.n_levels)
        ]
        outs = []
        for i in reversed(range(self.n_levels)):
            s = self.mfr[i](levels[i])
            if i > 0:
                levels[i - 1] = levels[i - 1] + F.interpolate(s, scale_factor=2, mode="nearest")
                s = F.interpolate(s, size=(h, w), mode="nearest")
            outs.append(s)
        return self.act(self.aggr(torch.cat(outs, dim=1))) * x


class CCM(nn.Module):
    """Conv3x3 expansion, GELU, conv1x1 projection."""

    def __init__(self, dim: int, growth: float = 2.0):
        super().__init__()
        hidden = int(dim * growth)
        self.ccm = nn.Sequential(nn.Conv2d(dim, hidden, 3, padding=1), nn.GELU(), nn.Conv2d(hidden, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ccm(x)


class AttBlock(nn.Module):
    """Pre-norm LHSB and CCM, each with a residual connection."""

    def __init__(self, dim: int, ffn_scale: float = 2.0, n_levels: int = 4, window_size: int = 8):
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.norm2 = LayerNorm2d(dim)
        self.lhsb = LHSB(dim, n_levels, window_size)
        self.ccm = CCM(dim, ffn_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lhsb(self.norm1(x)) + x
        return self.ccm(self.norm2(x)) + x


class LMLT(nn.Module):
    """LMLT super-resolution network: (N, 3, H, W) RGB [0, 1] -> (N, 3, scale*H, scale*W)."""

    def __init__(self, scale: int = 4, dim: int = 36, n_blocks: int = 8, ffn_scale: float = 2.0,
                 n_levels: int = 4, window_size: int = 8):
        super().__init__()
        self.scale = scale
        self.pad_multiple = window_size * 2 ** (n_levels - 1)
        self.to_feat = nn.Conv2d(3, dim, 3, padding=1)
        self.feats = nn.Sequential(*[AttBlock(dim, ffn_scale, n_levels, window_size) for _ in range(n_blocks)])
        self.to_img = nn.Sequential(nn.Conv2d(dim, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.pad_multiple
        th, tw = -(-h // m) * m, -(-w // m) * m
        if th != h:
            x = x.index_select(2, _reflect_index(h, th, x.device))
        if tw != w:
            x = x.index_select(3, _reflect_index(w, tw, x.device))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = self.to_feat(self._pad(x))
        y = self.feats(y) + y
        return self.to_img(y[:, :, :h, :w])
