"""Model size accounting in MB (10^6 bytes), METHODS.md §3.5.

FP parameters count 4 bytes each. A quantized weight counts ``bits/8`` bytes per element
plus its quantization parameters: 4 bytes per scale, plus 4 per zero point/lower bound for
asymmetric formats, one set per tensor or per channel. A palettized weight counts
``n_bits/8`` per element plus its LUTs (2^n entries of 1 byte when int8, else 4) and one
4-byte scale per int8 LUT. Biases and every other parameter stay FP32.
"""

from __future__ import annotations

from torch import nn


def fp32_size_mb(model: nn.Module) -> float:
    return 4 * sum(p.numel() for p in model.parameters()) / 1e6


def _weight_bytes(module: nn.Module) -> tuple[float, int] | None:
    """(bytes, parameter numel) of a module's palettized or quantized weight, None if FP."""
    palette = getattr(module, "palette", None)
    if palette is not None:
        return palette.size_bytes(), module.weight.numel()
    wq = getattr(module, "weight_quantizer", None)
    if wq is None:
        return None
    weight = module.module.weight
    fmt = wq.fmt
    groups = 1 if fmt.axis is None else weight.shape[fmt.axis]
    qparams = groups * (4 if fmt.symmetric else 8)
    return weight.numel() * fmt.bits / 8 + qparams, weight.numel()


def quantized_size_mb(model: nn.Module) -> float:
    """Size with quantized/palettized weights at their bit-width, the rest FP32."""
    from srq.quant.api import quantizers

    qparams = {id(p) for _, q in quantizers(model) for p in q.parameters()}
    total = 4 * sum(p.numel() for p in model.parameters() if id(p) not in qparams)
    for module in model.modules():
        counted = _weight_bytes(module)
        if counted is not None:
            size, numel = counted
            total += size - 4 * numel
    return total / 1e6


def op_macs(model: nn.Module, example) -> dict[str, int]:
    """Multiply–accumulates of every Conv2d / Linear / MatMul module for one forward of
    ``example``, by module name (forward hooks; other ops are not counted).

        conv: numel(out)·C_in/groups·k_h·k_w    linear: numel(out)·C_in    matmul: numel(out)·K
    """
    from srq.quant.api import forward_with_hooks

    macs: dict[str, int] = {}

    def hook(name):
        def count(module, inputs, out):
            if isinstance(module, nn.Conv2d):
                k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            elif isinstance(module, nn.Linear):
                k = module.in_features
            else:  # MatMul: (…, m, K) @ (…, K, n)
                k = inputs[0].shape[-1]
            macs[name] = macs.get(name, 0) + out.numel() * k
        return count

    forward_with_hooks(model, example, [
        m.register_forward_hook(hook(name)) for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) or type(m).__name__ == "MatMul"])
    return macs


def theoretical_ratios(student: nn.Module, macs: dict[str, int],
                       skip_params: tuple[str, ...] = ("relative_position_bias_table",)) -> dict:
    """2DQuant's theoretical ratios (METHODS.md §3.5), for any mix of bit-widths:

        compression = 32·P_tot / (32·(P_tot − P_q) + Σ_q b_w·P_m)
        speed-up    = F_tot / (F_tot − F_q + Σ_q F_m·max(b_w, b_a)/32)

    P: parameter scalars except ``skip_params`` (P_q: the quantized weights); F: the MACs of
    :func:`op_macs` on the FP model (F_q: the quantized ops, each at its wider operand).
    """
    from srq.quant.api import wrapped_modules
    from srq.quant.modules import QuantMatMul

    p_tot = sum(p.numel() for name, p in student.named_parameters()
                if not any(s in name for s in skip_params) and "quantizer" not in name)
    f_tot = sum(macs.values())
    p_bits, f_q, f_scaled, p_q = 32.0 * p_tot, 0, 0.0, 0
    for name, module in wrapped_modules(student):
        wq = getattr(module, "weight_quantizer", None)
        if wq is not None:
            n = module.module.weight.numel()
            p_q += n
            p_bits -= (32 - wq.fmt.bits) * n
        operands = ((module.input_quantizer, module.other_quantizer) if isinstance(module, QuantMatMul)
                    else (module.input_quantizer, wq))  # an FP weight keeps the op at 32 bits
        bits = max(32 if q is None else q.fmt.bits for q in operands)
        if bits < 32 and name in macs:
            f_q += macs[name]
            f_scaled += macs[name] * bits / 32
    return {"params": p_tot, "quantized_params": p_q, "macs": f_tot, "quantized_macs": f_q,
            "compression": 32.0 * p_tot / p_bits, "speedup": f_tot / (f_tot - f_q + f_scaled)}
