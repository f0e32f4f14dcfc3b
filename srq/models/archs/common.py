"""Small building blocks shared by several architectures."""

from __future__ import annotations

from srq.ops import MatMul

__all__ = ["MatMul"]
