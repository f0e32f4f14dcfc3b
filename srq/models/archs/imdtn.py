"""IMDTN: information multi-distillation blocks with Swin window attention (NTIRE 2022 ESR, team09).

Input is RGB in [0, 1]; the model mirror-pads itself to the next multiple of the window
size strictly above H and W and crops the output back to (scale*H, scale*W).
"""

import torch
import torch.nn as nn

from srq.models.archs.common import MatMul


def _mirror_index(n: int, target: int, device: torch.device) -> torch.Tensor:
    """Indices of a length-``target`` symmetric extension (edge repeated) of a length-``n`` axis."""
    idx = torch.arange(target, device=device) % (2 * n)
    return torch.where(idx < n, idx, 2 * n - 1 - idx)


def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def _to_windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, ws * ws, C), windows in raster order."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def _from_windows(x: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """(B * nW, ws * ws, C) -> (B, H, W, C)."""
    c = x.shape[-1]
    x = x.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def _shift_mask(h: int, w: int, ws: int, shift: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Additive mask (nW, ws*ws, ws*ws): 0 within a region, -100 across regions of the rolled map."""

    def regions(n):
        pos = torch.arange(n, device=device)
        return (pos >= n - ws).long() + (pos >= n - shift).long()

    label = regions(h)[:, None] * 3 + regions(w)[None, :]
    label = _to_windows(label.view(1, h, w, 1), ws).squeeze(-1)
    diff = label[:, None, :] - label[:, :, None]
    zero = torch.zeros((), device=device, dtype=dtype)
    return torch.where(diff != 0, zero - 100.0, zero)


def _relative_position_index(ws: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside square windows with a learned relative-position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", _relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.matmul_qk = MatMul()
        self.matmul_av = MatMul()
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor = None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = self.matmul_qk(q, k.transpose(-2, -1))
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b // nw, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(b, self.num_heads, n, n)
        attn = self.softmax(attn)
        out = self.matmul_av(attn, v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class Mlp(nn.Module):
    """Two Linear layers with GELU in between."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted) window attention + MLP on channels-last maps (B, H, W, C)."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float,
                 mask_size: tuple):
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.mask_size = tuple(mask_size)
        if shift > 0:
            self.register_buffer("attn_mask", _shift_mask(mask_size[0], mask_size[1], window_size, shift))

    def _mask(self, h: int, w: int, ref: torch.Tensor):
        if self.shift == 0:
            return None
        if (h, w) == self.mask_size:
            return self.attn_mask.to(ref.dtype)
        return _shift_mask(h, w, self.window_size, self.shift, device=ref.device, dtype=ref.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        ws, s = self.window_size, self.shift
        y = self.norm1(x)
        if s > 0:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = self.attn(_to_windows(y, ws), self._mask(h, w, x))
        y = _from_windows(y, ws, h, w)
        if s > 0:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class SwinStage(nn.Module):
    """Sequence of Swin blocks, alternating plain and shifted windows."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 mask_size: tuple):
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio, mask_size)
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x


class ResidualSwin(nn.Module):
    """Swin stage on an NCHW map with a skip connection around it."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 mask_size: tuple):
        super().__init__()
        self.residual_group = SwinStage(dim, depth, num_heads, window_size, mlp_ratio, mask_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.residual_group(x.permute(0, 2, 3, 1))
        return y.permute(0, 3, 1, 2) + x


class IMDTBlock(nn.Module):
    """Distillation (grouped convs, channel shuffle, LeakyReLU) followed by a residual Swin stage."""

    def __init__(self, nf: int = 64, distill_rate: float = 0.25, num_heads: int = 2, window_size: int = 6,
                 depth: int = 2, mlp_ratio: float = 2.0, mask_size: tuple = (48, 48)):
        super().__init__()
        self.distilled = int(nf * distill_rate)
        self.remaining = nf - self.distilled
        self.c1 = nn.Conv2d(nf, nf, 3, padding=1, groups=4)
        self.c2 = nn.Conv2d(self.remaining, nf, 3, padding=1, groups=4)
        self.c3 = nn.Conv2d(self.remaining, nf, 3, padding=1, groups=4)
        self.c4 = nn.Conv2d(self.remaining, self.distilled, 3, padding=1)
        self.act = nn.LeakyReLU(0.05)
        self.transformer = ResidualSwin(nf, depth, num_heads, window_size, mlp_ratio, mask_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = (self.distilled, self.remaining)
        out1 = self.act(_channel_shuffle(self.c1(x) + x, 4))
        d1, r1 = torch.split(out1, split, dim=1)
        out2 = self.act(_channel_shuffle(self.c2(r1) + out1, 4))
        d2, r2 = torch.split(out2, split, dim=1)
        out3 = self.act(_channel_shuffle(self.c3(r2) + out2, 4))
        d3, r3 = torch.split(out3, split, dim=1)
        out = torch.cat([d1, d2, d3, self.c4(r3)], dim=1)
        return self.transformer(out) + x


class IMDTN(nn.Module):
    """IMDTN super-resolution network: (N, 3, H, W) RGB [0, 1] -> (N, 3, scale*H, scale*W)."""

    def __init__(self, scale: int = 4, in_ch: int = 3, nf: int = 64, num_blocks: int = 3, num_heads: int = 2,
                 window_size: int = 6, depth: int = 2, mlp_ratio: float = 2.0, mask_size: tuple = (48, 48)):
        super().__init__()
        self.scale = scale
        self.window_size = window_size
        self.num_blocks = num_blocks
        self.fea_conv = nn.Conv2d(in_ch, nf, 3, padding=1)
        for i in range(num_blocks):
            self.add_module(f"IMDTB{i + 1}", IMDTBlock(nf, 0.25, num_heads, window_size, depth, mlp_ratio,
                                                         mask_size))
        self.c = nn.Sequential(nn.Conv2d(nf * num_blocks, nf, 1), nn.LeakyReLU(0.05))
        self.LR_conv = nn.Conv2d(nf, nf, 3, padding=1)
        self.upsampler = nn.Sequential(nn.Conv2d(nf, in_ch * scale * scale, 3, padding=1),
                                       nn.PixelShuffle(scale))

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ws = self.window_size
        th, tw = (h // ws + 1) * ws, (w // ws + 1) * ws
        x = x.index_select(2, _mirror_index(h, th, x.device))
        return x.index_select(3, _mirror_index(w, tw, x.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        fea = self.fea_conv(self._pad(x))
        feats = []
        y = fea
        for i in range(self.num_blocks):
            y = getattr(self, f"IMDTB{i + 1}")(y)
            feats.append(y)
        y = self.LR_conv(self.c(torch.cat(feats, dim=1))) + fea
        return self.upsampler(y)[..., : h * self.scale, : w * self.scale]
