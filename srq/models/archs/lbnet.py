"""LBNet-T: lightweight bimodal network for image super-resolution (Gao et al., IJCAI 2022).

Layout and parameter names follow the official LBNet-T checkpoints so that they load
with ``strict=True``. Input and output are RGB in [0, 255]; the whole image is
processed without padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srq.models.archs.common import MatMul

__all__ = ["LBNet", "MatMul"]


def _conv(in_ch: int, out_ch: int, k: int, bias: bool = True, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, k, padding=k // 2, bias=bias, groups=groups)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation gate: global average pool, 1x1 bottleneck, sigmoid."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = channels // reduction
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(self.pool(x))


class SpatialAttention(nn.Module):
    """Spatial gate from the channel-wise mean and max maps (7x7 conv, sigmoid)."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv1(stats))


class FRDAB(nn.Module):
    """Feature refinement dual-attention block."""

    def __init__(self, n_feats: int):
        super().__init__()
        half = n_feats // 2
        self.c1 = _conv(n_feats, n_feats, 1)
        self.c2 = _conv(n_feats, half, 3)
        self.c3 = _conv(n_feats, half, 3)
        self.c4 = _conv(2 * n_feats, n_feats, 3)
        self.c5 = _conv(half, half, 3)
        self.c6 = _conv(2 * n_feats, n_feats, 1)
        self.se = ChannelAttention(2 * n_feats, reduction=16)
        self.sa = SpatialAttention()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a1 = self.act(self.c1(x))
        a2 = self.act(self.c2(a1))
        a3 = self.act(self.c3(a1))
        a4 = self.act(self.c4(torch.cat([a1, a2, a3], dim=1)))
        a5 = self.c5(a3)
        mixed = torch.cat([a2, a5, a4], dim=1)
        return x + self.c6(self.se(mixed) + self.sa(mixed))


class LFFM(nn.Module):
    """Local feature fusion module: three FRDABs with dense 1x1 fusion and a skip."""

    def __init__(self, n_feats: int):
        super().__init__()
        self.b1 = FRDAB(n_feats)
        self.b2 = FRDAB(n_feats)
        self.b3 = FRDAB(n_feats)
        self.c1 = nn.Conv2d(2 * n_feats, n_feats, 1, groups=2)
        self.c2 = nn.Conv2d(3 * n_feats, n_feats, 1, groups=2)
        self.c3 = nn.Conv2d(4 * n_feats, n_feats, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o1 = self.b1(x)
        o2 = self.b2(self.c1(torch.cat([x, o1], dim=1)))
        o3 = self.b3(self.c2(torch.cat([x, o1, o2], dim=1)))
        return x + self.c3(torch.cat([x, o1, o2, o3], dim=1))


class EffAttention(nn.Module):
    """Multi-head self-attention restricted to consecutive chunks of the token sequence.

    The N tokens are cut, in raster order, into consecutive chunks of
    ``max(N // chunks, 1)`` tokens (a shorter last chunk holds any remainder) and
    attention runs inside each chunk, so the result depends on the image size.
    """

    def __init__(self, dim: int, num_heads: int, chunks: int = 16):
        super().__init__()
        self.num_heads = num_heads
        self.chunks = chunks
        self.scale = (dim // num_heads) ** -0.5
        self.reduce = nn.Linear(dim, dim, bias=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.matmul_qk = MatMul()
        self.matmul_av = MatMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        size = max(n // self.chunks, 1)
        outs = []
        for start in range(0, n, size):
            sl = slice(start, start + size)
            attn = self.matmul_qk(q[:, :, sl], k[:, :, sl].transpose(-2, -1)) * self.scale
            outs.append(self.matmul_av(attn.softmax(dim=-1), v[:, :, sl]))
        out = torch.cat(outs, dim=2).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class Mlp(nn.Module):
    """Two-layer ReLU MLP."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransBlock(nn.Module):
    """Pre-norm transformer block (chunked attention + ReLU MLP)."""

    def __init__(self, dim: int, num_heads: int, chunks: int = 16):
        super().__init__()
        self.atten = EffAttention(dim, num_heads, chunks)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim // 4)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.atten(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LBNet(nn.Module):
    """LBNet-T super-resolution network; RGB [0, 255] in, RGB [0, 255] out.

    Args:
        scale: upscaling factor (pixel-shuffle tail).
        n_feats: feature channels (18 for LBNet-T).
        num_heads: attention heads over the ``9 * n_feats``-dim tokens.
        chunks: number of token chunks the attention is restricted to.
        repeats: how often each shared transformer block is applied.
        rgb_range: pixel range, used only to initialise the mean-shift convs.
    """

    def __init__(
        self,
        scale: int,
        n_feats: int = 18,
        num_heads: int = 6,
        chunks: int = 16,
        repeats: int = 3,
        rgb_range: float = 255.0,
    ):
        super().__init__()
        self.scale = scale
        self.repeats = repeats
        dim = 9 * n_feats

        self.sub_mean = nn.Conv2d(3, 3, 1)
        self.add_mean = nn.Conv2d(3, 3, 1)
        mean = torch.tensor([0.4488, 0.4371, 0.4040]) * rgb_range
        with torch.no_grad():
            for conv, sign in ((self.sub_mean, -1.0), (self.add_mean, 1.0)):
                conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
                conv.bias.copy_(sign * mean)

        self.head = _conv(3, n_feats, 3)
        self.r1 = LFFM(n_feats)
        self.r2 = LFFM(n_feats)
        self.r3 = LFFM(n_feats)
        self.se1 = ChannelAttention(n_feats, reduction=16)
        self.se2 = ChannelAttention(n_feats, reduction=16)
        self.se3 = ChannelAttention(n_feats, reduction=16)
        self.attention = TransBlock(dim, num_heads, chunks)
        self.attention2 = TransBlock(dim, num_heads, chunks)
        self.c1 = _conv(6 * n_feats, n_feats, 1)
        self.c2 = _conv(n_feats, n_feats, 3)
        self.c3 = _conv(n_feats, n_feats, 3)
        self.tail = nn.Sequential(_conv(n_feats, 3 * scale * scale, 3), nn.PixelShuffle(scale))

    def _transformer(self, block: TransBlock, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        tokens = F.unfold(x, kernel_size=3, padding=1).transpose(1, 2)
        for _ in range(self.repeats):
            tokens = block(tokens)
        return F.fold(tokens.transpose(1, 2), (h, w), kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(self.sub_mean(x))
        y1 = self.r1(feat)
        y2 = self.r2(y1)
        y3 = self.r3(y2)
        y4 = self.r1(y3 + self.se1(y1))
        y5 = self.r2(y4 + self.se2(y2))
        y6 = self.r3(y5 + self.se3(y3))
        fused = self.c1(torch.cat([y1, y2, y3, y4, y5, y6], dim=1))
        out = self.c2(self._transformer(self.attention, fused))
        out = self.c3(self._transformer(self.attention2, out))
        return self.add_mean(self.tail(out + feat))
