"""CRAFT: cross-refinement adaptive fusion transformer (Li et al., ICCV 2023).

Configured as the NTIRE 2024 efficient-SR (team34) x4 model; parameter and buffer
names follow that checkpoint so that it loads with ``strict=True``. Input and output
are RGB in [0, 1]; the dataset mean is subtracted and re-added inside. The model does
not pad: both image sides must be multiples of ``CRAFT.pad_multiple`` (16), so callers
reflect-pad bottom/right (``CRAFT.pad_mode``) and crop the output to ``scale * (H, W)``.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from srq.models.archs.common import MatMul

__all__ = ["CRAFT", "MatMul", "PAD_MULTIPLE", "PAD_MODE"]

PAD_MULTIPLE = 16
PAD_MODE = "reflect"


def _relative_position_tables(win_h: int, win_w: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Relative offsets ``((2h-1)(2w-1), 2)`` and pairwise index ``(hw, hw)`` for a window."""
    dy = torch.arange(1 - win_h, win_h)
    dx = torch.arange(1 - win_w, win_w)
    offsets = torch.stack(torch.meshgrid(dy, dx, indexing="ij")).flatten(1).t().float()
    coords = torch.stack(torch.meshgrid(torch.arange(win_h), torch.arange(win_w), indexing="ij"))
    coords = coords.flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    index = (rel[0] + win_h - 1) * (2 * win_w - 1) + (rel[1] + win_w - 1)
    return offsets.contiguous(), index.contiguous()


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of an (N, C, H, W) tensor."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Mlp(nn.Module):
    """Two-layer GELU MLP."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DynamicPosBias(nn.Module):
    """MLP mapping relative offsets to one bias per head (CrossFormer style)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        pos_dim = dim // 4
        self.pos_proj = nn.Linear(2, pos_dim)
        self.pos1 = nn.Sequential(nn.LayerNorm(pos_dim), nn.ReLU(), nn.Linear(pos_dim, pos_dim))
        self.pos2 = nn.Sequential(nn.LayerNorm(pos_dim), nn.ReLU(), nn.Linear(pos_dim, pos_dim))
        self.pos3 = nn.Sequential(nn.LayerNorm(pos_dim), nn.ReLU(), nn.Linear(pos_dim, num_heads))

    def forward(self, offsets: torch.Tensor) -> torch.Tensor:
        return self.pos3(self.pos2(self.pos1(self.pos_proj(offsets))))


class RectWindowAttention(nn.Module):
    """Multi-head attention inside non-overlapping ``win_h x win_w`` rectangle windows.

    Takes q, k, v as (B, H, W, C) and returns (B, H, W, C); H and W must be multiples
    of the window sides.
    """

    def __init__(self, dim: int, num_heads: int, window: Tuple[int, int]):
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.scale = (dim // num_heads) ** -0.5
        self.pos = DynamicPosBias(dim // 4, num_heads)
        self.matmul_qk = MatMul()
        self.matmul_av = MatMul()

    def _partition(self, t: torch.Tensor) -> torch.Tensor:
        b, h, w, c = t.shape
        wh, ww = self.window
        t = t.reshape(b, h // wh, wh, w // ww, ww, self.num_heads, c // self.num_heads)
        return t.permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, self.num_heads, wh * ww, c // self.num_heads)

    def _merge(self, t: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        wh, ww = self.window
        t = t.reshape(b, h // wh, w // ww, self.num_heads, wh, ww, -1)
        return t.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, h, w, -1)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rel_index: torch.Tensor,
        rel_offsets: torch.Tensor,
    ) -> torch.Tensor:
        b, h, w, _ = q.shape
        n = self.window[0] * self.window[1]
        q = self._partition(q) * self.scale
        k = self._partition(k)
        v = self._partition(v)
        attn = self.matmul_qk(q, k.transpose(-2, -1))
        bias = self.pos(rel_offsets)[rel_index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)
        attn = (attn + bias.unsqueeze(0)).softmax(dim=-1)
        return self._merge(self.matmul_av(attn, v), b, h, w)


class SRWAB(nn.Module):
    """Shifted rectangle-window attention block.

    Half the channels attend in ``(a, b)`` windows, the other half in ``(b, a)``
    windows; a depthwise 3x3 conv of V is added before the output projection.
    A shifted block cyclically rolls each half by half a window (no attention mask).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        split_size: Tuple[int, int],
        shifted: bool,
        mlp_ratio: float = 2.0,
    ):
        super().__init__()
        a, b = split_size
        self.shifts = ((a // 2, b // 2), (b // 2, a // 2)) if shifted else ((0, 0), (0, 0))
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.get_v = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.attns = nn.ModuleList(
            [
                RectWindowAttention(dim // 2, num_heads // 2, (a, b)),
                RectWindowAttention(dim // 2, num_heads // 2, (b, a)),
            ]
        )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self,
        x: torch.Tensor,
        h: int,
        w: int,
        rel: Sequence[Tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        b, n, c = x.shape
        half = c // 2
        qkv = self.qkv(self.norm1(x)).reshape(b, h, w, 3, c)
        branches = []
        for i, (attn, shift) in enumerate(zip(self.attns, self.shifts)):
            part = qkv[..., i * half:(i + 1) * half]
            rolled = any(shift)
            if rolled:
                part = torch.roll(part, shifts=(-shift[0], -shift[1]), dims=(1, 2))
            q, k, v = part.unbind(3)
            out = attn(q, k, v, rel[i][0], rel[i][1])
            if rolled:
                out = torch.roll(out, shifts=shift, dims=(1, 2))
            branches.append(out)
        attended = torch.cat(branches, dim=-1).reshape(b, n, c)
        local = self.get_v(qkv[:, :, :, 2].permute(0, 3, 1, 2))
        attended = attended + local.permute(0, 2, 3, 1).reshape(b, n, c)
        x = x + self.proj(attended)
        return x + self.mlp(self.norm2(x))


class HFERB(nn.Module):
    """High-frequency enhancement residual block (conv half, max-pool half)."""

    def __init__(self, dim: int):
        super().__init__()
        self.mid_dim = dim // 2
        self.act = nn.GELU()
        self.last_fc = nn.Conv2d(dim, dim, 1)
        self.fc = nn.Conv2d(self.mid_dim, self.mid_dim, 1)
        self.max_pool = nn.MaxPool2d(3, 1, 1)
        self.conv = nn.Conv2d(self.mid_dim, self.mid_dim, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.act(self.conv(x[:, : self.mid_dim]))
        high = self.act(self.fc(self.max_pool(x[:, self.mid_dim:])))
        return x + self.last_fc(torch.cat([local, high], dim=1))


class ChannelCrossAttention(nn.Module):
    """Transposed (channel) attention: queries from one input, keys/values from another."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.q = nn.Conv2d(dim, dim, 1, bias=False)
        self.q_dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.kv = nn.Conv2d(dim, 2 * dim, 1, bias=False)
        self.kv_dwconv = nn.Conv2d(2 * dim, 2 * dim, 3, padding=1, groups=2 * dim, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)
        self.matmul_qk = MatMul()
        self.matmul_av = MatMul()

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        b, c, h, w = low.shape
        q = self.q_dwconv(self.q(high)).reshape(b, self.num_heads, -1, h * w)
        k, v = self.kv_dwconv(self.kv(low)).chunk(2, dim=1)
        k = k.reshape(b, self.num_heads, -1, h * w)
        v = v.reshape(b, self.num_heads, -1, h * w)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = self.matmul_qk(q, k.transpose(-2, -1)) * self.temperature
        out = self.matmul_av(attn.softmax(dim=-1), v)
        return self.project_out(out.reshape(b, c, h, w))


class GatedFeedForward(nn.Module):
    """1x1 expand, depthwise 3x3, GELU gate, 1x1 project (no biases)."""

    def __init__(self, dim: int, expansion: float):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, 2 * hidden, 1, bias=False)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=False)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(a) * g)


class HFB(nn.Module):
    """Hybrid fusion block: channel cross-attention then gated feed-forward."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion: float):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = ChannelCrossAttention(dim, num_heads)
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = GatedFeedForward(dim, ffn_expansion)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = low + self.attn(self.norm1(low), high)
        return x + self.ffn(self.norm2(x))


class CRFB(nn.Module):
    """Cross-refinement fusion block: per step two SRWABs, one HFERB, one HFB."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        split_size: Tuple[int, int],
        mlp_ratio: float,
        ffn_expansion: float,
    ):
        super().__init__()
        self.depth = depth
        self.srwa_blocks = nn.ModuleList(
            [SRWAB(dim, num_heads, split_size, i % 2 == 1, mlp_ratio) for i in range(2 * depth)]
        )
        self.hfer_blocks = nn.ModuleList([HFERB(dim) for _ in range(depth)])
        self.hf_blocks = nn.ModuleList([HFB(dim, num_heads, ffn_expansion) for _ in range(depth)])

    def forward(self, x: torch.Tensor, rel: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        b, c, h, w = x.shape
        for i in range(self.depth):
            low = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
            low = self.srwa_blocks[2 * i](low, h, w, rel)
            low = self.srwa_blocks[2 * i + 1](low, h, w, rel)
            low = low.reshape(b, h, w, c).permute(0, 3, 1, 2)
            x = self.hf_blocks[i](low, self.hfer_blocks[i](x))
        return x


class RCRFG(nn.Module):
    """Residual group: CRFB, 3x3 conv, skip."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        split_size: Tuple[int, int],
        mlp_ratio: float,
        ffn_expansion: float,
    ):
        super().__init__()
        self.residual_group = CRFB(dim, depth, num_heads, split_size, mlp_ratio, ffn_expansion)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: torch.Tensor, rel: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        return x + self.conv(self.residual_group(x, rel))


class CRAFT(nn.Module):
    """CRAFT super-resolution network; RGB [0, 1] in, RGB [0, 1] out.

    H and W of the input must be multiples of ``pad_multiple``; pad with
    ``F.pad(x, (0, -W % 16, 0, -H % 16), mode=pad_mode)`` and crop the output.

    Args:
        scale: upscaling factor (one conv + pixel shuffle).
        embed_dim: feature channels.
        depths: CRFB steps per residual group.
        num_heads: heads per group (split over the two window orientations).
        split_size: rectangle window ``(short, long)`` side.
        mlp_ratio: hidden ratio of the window-block MLP.
        ffn_expansion: hidden ratio of the fusion-block gated feed-forward.
    """

    pad_multiple = PAD_MULTIPLE
    pad_mode = PAD_MODE

    def __init__(
        self,
        scale: int = 4,
        embed_dim: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (6, 6, 6, 6),
        split_size: Tuple[int, int] = (4, 16),
        mlp_ratio: float = 2.0,
        ffn_expansion: float = 2.66,
    ):
        super().__init__()
        self.scale = scale
        split_size = tuple(split_size)
        self.register_buffer(
            "mean", torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1), persistent=False
        )
        offsets_h, index_h = _relative_position_tables(split_size[0], split_size[1])
        offsets_v, index_v = _relative_position_tables(split_size[1], split_size[0])
        self.register_buffer("relative_position_index_h", index_h)
        self.register_buffer("relative_position_index_v", index_v)
        # The released checkpoint stores the two offset tables under swapped names.
        # Both have the same shape for a (a, b) / (b, a) pair, and the bias MLP
        # (width 1 behind a LayerNorm) ignores its input, so outputs are unaffected;
        # the swap keeps a fresh model's buffers equal to the checkpoint's.
        self.register_buffer("biases_v", offsets_h)
        self.register_buffer("biases_h", offsets_v)

        self.conv_first = nn.Conv2d(3, embed_dim, 3, 1, 1)
        self.layers = nn.ModuleList(
            [
                RCRFG(embed_dim, d, nh, split_size, mlp_ratio, ffn_expansion)
                for d, nh in zip(depths, num_heads)
            ]
        )
        self.norm = ChannelLayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.upsample = nn.Sequential(
            nn.Conv2d(embed_dim, 3 * scale * scale, 3, 1, 1), nn.PixelShuffle(scale)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rel = (
            (self.relative_position_index_h, self.biases_h),
            (self.relative_position_index_v, self.biases_v),
        )
        feat = self.conv_first(x - self.mean)
        body = feat
        for layer in self.layers:
            body = layer(body, rel)
        out = self.conv_after_body(self.norm(body)) + feat
        return self.upsample(out) + self.mean
