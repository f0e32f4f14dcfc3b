"""SwinIR from ``basicsr.archs.swinir_arch`` with its attention matmuls as modules.

Each ``WindowAttention`` computes Q·Kᵀ and A·V through ``matmul_qk`` / ``matmul_av``
(:class:`MatMul`), so quantizers can wrap both; parameters, buffers and the state-dict
layout stay basicsr's (official checkpoints load unchanged).
"""

from __future__ import annotations

from basicsr.archs.swinir_arch import SwinIR, WindowAttention
from torch import nn

from srq.models.archs.common import MatMul


class MatMulWindowAttention(WindowAttention):
    """softmax(q·s·Kᵀ + B (+ mask))·V with both products as MatMul modules."""

    def forward(self, x, mask=None):
        b_, n, c = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(b_, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = self.matmul_qk(q * self.scale, k.transpose(-2, -1))
        area = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(area, area, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(b_ // nw, nw, heads, n, n) + mask[None, :, None]).view(-1, heads, n, n)
        attn = self.attn_drop(self.softmax(attn))
        out = self.matmul_av(attn, v).transpose(1, 2).reshape(b_, n, c)
        return self.proj_drop(self.proj(out))


def with_matmul_modules(model: nn.Module) -> nn.Module:
    """Turn every basicsr ``WindowAttention`` in ``model`` into :class:`MatMulWindowAttention`."""
    for module in model.modules():
        if type(module) is WindowAttention:
            module.__class__ = MatMulWindowAttention
            module.matmul_qk = MatMul()
            module.matmul_av = MatMul()
    return model


def swinir(**kwargs) -> nn.Module:
    """basicsr ``SwinIR(**kwargs)`` with matmul modules in every attention."""
    return with_matmul_modules(SwinIR(**kwargs))
