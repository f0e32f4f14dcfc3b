"""Integer codes packed at their real bit-width: ``8 // b`` codes per byte for b ∈ {1, 2, 4, 8},
a plain bit stream otherwise (most significant bit first, the last byte zero-padded).

    pack_codes(u, b)  → uint8 of ⌈numel·b/8⌉ bytes,  u ∈ [0, 2^b − 1]
    unpack_codes(data, b, numel) → the ``numel`` codes (int64)
"""

from __future__ import annotations

import torch


_CHUNK = 1 << 20


def packed_nbytes(numel: int, bits: int) -> int:
    return -(-numel * bits // 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes in [0, 2^b − 1] (any integer or integral float tensor) → packed uint8 bytes."""
    if not 1 <= bits <= 8:
        raise ValueError(f"codes are packed at 1–8 bits, not {bits}")
    u = codes.detach().flatten().to("cpu", torch.int64)
    if u.numel() and (int(u.min()) < 0 or int(u.max()) > 2**bits - 1):
        raise ValueError(f"codes outside [0, {2**bits - 1}] cannot be packed at {bits} bits")
    shifts = torch.arange(bits - 1, -1, -1, dtype=torch.int64)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.int64)
    out = []
    for start in range(0, max(u.numel(), 1), _CHUNK):  # _CHUNK codes end on a byte boundary
        stream = ((u[start:start + _CHUNK, None] >> shifts) & 1).flatten()  # MSB first
        stream = torch.cat([stream, stream.new_zeros((-stream.numel()) % 8)]).reshape(-1, 8)
        out.append((stream * weights).sum(dim=1).to(torch.uint8))
    return torch.cat(out)


def unpack_codes(data: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: the first ``numel`` codes as int64."""
    if data.numel() != packed_nbytes(numel, bits):
        raise ValueError(f"{data.numel()} bytes cannot hold {numel} codes of {bits} bits "
                         f"(expected {packed_nbytes(numel, bits)})")
    shifts = torch.arange(7, -1, -1, dtype=torch.int64)
    place = 2 ** torch.arange(bits - 1, -1, -1, dtype=torch.int64)
    data = data.to("cpu", torch.int64)
    step = _CHUNK * bits // 8  # bytes of one chunk of codes
    out = []
    for start in range(0, numel, _CHUNK):
        n = min(_CHUNK, numel - start)
        chunk = data[start * bits // 8: start * bits // 8 + step]
        stream = ((chunk[:, None] >> shifts) & 1).flatten()[: n * bits]
        out.append((stream.reshape(n, bits) * place).sum(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


__all__ = ["pack_codes", "packed_nbytes", "unpack_codes"]
