"""Scale migration for CNNs (SmoothQuant-style, METHODS.md §10.4), folded exactly.

For a conv C whose input channel k is output channel j of a conv P, reached only through
positively homogeneous ops (ReLU, LeakyReLU, PReLU, identity) and channel splits /
concatenations, dividing P's output channel j by s > 0 (row j of W_P and b_P) and
multiplying column k of W_C by s leaves the network's function unchanged:

    s = max|X_k|^α / max|W_C[:, k]|^(1−α),

X_k the FP input of C on the calibration data (SmoothQuant's choice; α = 0.5). A channel
that also feeds anything else (a residual add, a gate, a pixel shuffle, the output) keeps
s = 1. The graph comes from ``torch.fx``; a module that does not trace is searched for
traceable children, so the fold covers what it can and never guesses.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from srq.quant.api import forward_with_hooks

HOMOGENEOUS_MODULES = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity, nn.Dropout)
HOMOGENEOUS_FUNCTIONS = (F.relu, F.leaky_relu, torch.relu)


@dataclass
class MigrationSite:
    """Output channel ``channel`` of conv ``producer`` feeding input channels of ``consumers``
    (name → list of input channel indices)."""

    producer: str
    channel: int
    consumers: dict[str, list[int]] = field(default_factory=dict)


def _plain_conv(m) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups == 1


def _dim(node: fx.Node, position: int, default: int = 0) -> int:
    dim = node.kwargs.get("dim", node.args[position] if len(node.args) > position else default)
    return int(dim)


def _channel_dim_ok(dim: int, ndim: int) -> bool:
    return ndim == 4 and dim % ndim == 1


def _sites_in(gm: fx.GraphModule, example: torch.Tensor, prefix: str) -> list[MigrationSite]:
    ShapeProp(gm).propagate(example)
    modules = dict(gm.named_modules())
    src: dict[fx.Node, list | None] = {}  # per node: per channel (producer, channel) or None
    split_sizes: dict[fx.Node, list[int]] = {}
    uses: dict[tuple[str, int], dict[str, list[int]]] = {}
    tainted: set[tuple[str, int]] = set()

    def flat(items):
        for item in items or []:
            if isinstance(item, list):  # a split: one list per piece
                yield from flat(item)
            elif item is not None:
                yield item

    def taint(value):
        for arg in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(arg, fx.Node):
                tainted.update(flat(src.get(arg)))

    def ndim(node):
        meta = node.meta.get("tensor_meta")
        return len(meta.shape) if meta is not None and hasattr(meta, "shape") else -1

    for node in gm.graph.nodes:
        target = modules.get(node.target) if node.op == "call_module" else None
        inputs = [a for a in node.all_input_nodes]
        if node.op == "call_module" and _plain_conv(target):
            name = f"{prefix}{node.target}"
            for k, item in enumerate(src.get(node.args[0]) or []):
                if item is not None:
                    uses.setdefault(item, {}).setdefault(name, []).append(k)
            src[node] = [(name, j) for j in range(target.out_channels)]
        elif (node.op == "call_module" and isinstance(target, HOMOGENEOUS_MODULES)) or (
                node.op == "call_function" and node.target in HOMOGENEOUS_FUNCTIONS):
            src[node] = src.get(node.args[0])
            for extra in inputs[1:]:
                taint(extra)
        elif node.op == "call_function" and node.target is torch.split and _channel_dim_ok(
                _dim(node, 2), ndim(node.args[0])):
            channels = src.get(node.args[0])
            sizes = node.args[1]
            total = len(channels) if channels is not None else 0
            sizes = [sizes] * (total // sizes) if isinstance(sizes, int) else list(sizes)
            if channels is None or sum(sizes) != total:
                taint(node.args[0])
                continue
            split_sizes[node] = sizes
            offsets = [sum(sizes[:i]) for i in range(len(sizes))]
            src[node] = [channels[o:o + s] for o, s in zip(offsets, sizes)]
        elif node.op == "call_function" and node.target is operator.getitem and node.args[0] in split_sizes:
            src[node] = src[node.args[0]][int(node.args[1])]
        elif node.op == "call_function" and node.target is torch.cat and _channel_dim_ok(
                _dim(node, 1), ndim(node)):
            parts = [src.get(a) if isinstance(a, fx.Node) else None for a in node.args[0]]
            if any(p is None for p in parts):
                taint(list(node.args[0]))
                continue
            src[node] = [item for p in parts for item in p]
        else:
            for arg in inputs:
                taint(arg)
    sites = []
    for (producer, channel), consumers in uses.items():
        if (producer, channel) not in tainted:
            sites.append(MigrationSite(producer, channel, consumers))
    return sites


def migration_sites(model: nn.Module, example: torch.Tensor) -> list[MigrationSite]:
    """Every foldable (producer channel → consumer input channels) site of ``model``, found by
    tracing it (or, where it does not trace, its traceable children) on ``example``."""
    sites: list[MigrationSite] = []

    def visit(module: nn.Module, prefix: str, x):
        try:
            gm = fx.symbolic_trace(module)
        except Exception:  # control flow on tensors, untraceable calls: look one level down
            children = list(module.named_children())
            captured: dict[str, torch.Tensor] = {}
            forward_with_hooks(module, x, [child.register_forward_pre_hook(
                lambda m, args, n=n: captured.setdefault(n, args[0]) if args and isinstance(
                    args[0], torch.Tensor) else None) for n, child in children])
            for n, child in children:
                if n in captured:
                    visit(child, f"{prefix}{n}.", captured[n])
            return
        with torch.no_grad():
            sites.extend(_sites_in(gm, x, prefix))

    visit(model, "", example)
    return sites


@torch.no_grad()
def input_channel_absmax(model: nn.Module, names: list[str], batches) -> dict[str, torch.Tensor]:
    """max |x| per input channel of the convs ``names`` over ``batches``."""
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(mod, args):
            amax = args[0].detach().abs().amax(dim=(0, 2, 3))
            out[name] = torch.maximum(out[name], amax) if name in out else amax
        return fn

    forward_with_hooks(model, batches, [modules[n].register_forward_pre_hook(hook(n)) for n in names])
    return out


@torch.no_grad()
def migrate_scales(model: nn.Module, batches, alpha: float = 0.5, max_scale: float = 1e4) -> dict:
    """Fold SmoothQuant scales into ``model`` (FP, in place) at every :func:`migration_sites`
    site; returns {"sites": folded channels, "consumers": convs rescaled, "scale_min/max"}."""
    sites = migration_sites(model, batches[0][:1])
    if not sites:
        return {"sites": 0, "consumers": 0, "scale_min": 1.0, "scale_max": 1.0}
    modules = dict(model.named_modules())
    consumers = sorted({c for s in sites for c in s.consumers})
    x_max = input_channel_absmax(model, consumers, batches)
    scales = []
    # deepest consumers first: when P → C is folded, C's rows are final (C → D folded already),
    # and C's input statistics are still the original ones (only P → C rescales them)
    for site in reversed(sites):
        xs = max(float(x_max[c][k]) for c, ks in site.consumers.items() for k in ks)
        ws = max(float(modules[c].weight[:, k].abs().max()) for c, ks in site.consumers.items() for k in ks)
        if xs <= 0 or ws <= 0:
            continue
        s = min(max(xs ** alpha / ws ** (1 - alpha), 1.0 / max_scale), max_scale)
        producer = modules[site.producer]
        producer.weight[site.channel] /= s
        if producer.bias is not None:
            producer.bias[site.channel] /= s
        for c, ks in site.consumers.items():
            for k in ks:
                modules[c].weight[:, k] *= s
        scales.append(s)
    return {"sites": len(scales), "consumers": len(consumers),
            "scale_min": round(min(scales), 4) if scales else 1.0,
            "scale_max": round(max(scales), 4) if scales else 1.0}


__all__ = ["MigrationSite", "input_channel_absmax", "migrate_scales", "migration_sites"]
