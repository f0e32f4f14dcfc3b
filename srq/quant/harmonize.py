"""Harmonized scales (HarmoQ's HSO, METHODS.md §6.2a — an *inferred* design): exact FP
reparametrisations y = W x = (W·diag(s))(x ⊘ s) that balance weight and activation
quantization difficulty.

With m_j = E[x_j²] (calibration inputs) and n_j = mean_r W_rj², the product of the two
noise terms A(s)·B(s) = (Σ m_j/s_j²)(Σ n_j s_j²) is minimal at s_j = (m_j/n_j)^{1/4}
(general: s_j = m_j^{α/2} n_j^{−(1−α)/2}); s is normalised by its geometric mean and
clamped to [1e-2, 1e2]. Folds, each leaving the FP output unchanged:

* LayerNorm → Linear (qkv after ``norm1``, fc1 after ``norm2``): γ, β of the norm ⊘ s,
  columns of the linear ⊙ s;
* v → proj inside attention: rows of W_v (and b_v, and a depthwise conv on v if the
  attention has one, ``get_v``) ⊘ s, columns of W_proj ⊙ s;
* q ↔ k: t_j = (E[q_j²]/E[k_j²])^{1/4}, rows of W_q, b_q ⊘ t, rows of W_k, b_k ⊙ t.
"""

from __future__ import annotations

import torch
from torch import nn

from srq.quant.taps import FeatureTaps


def harmonized_scale(m: torch.Tensor, n: torch.Tensor, alpha: float = 0.5,
                     clamp: float = 1e2) -> torch.Tensor:
    """s_j = m_j^{α/2} n_j^{−(1−α)/2}, divided by its geometric mean, clamped to [1/c, c]."""
    eps = torch.finfo(torch.float64).tiny
    log_s = 0.5 * alpha * torch.log(m.double() + eps) - 0.5 * (1 - alpha) * torch.log(n.double() + eps)
    log_s = log_s - log_s.mean()
    return torch.exp(log_s).clamp(1 / clamp, clamp).float()


def _is_swin_block(m: nn.Module) -> bool:
    return (isinstance(getattr(m, "norm1", None), nn.LayerNorm) and hasattr(m, "attn")
            and isinstance(getattr(m.attn, "qkv", None), nn.Linear)
            and isinstance(getattr(m, "norm2", None), nn.LayerNorm)
            and isinstance(getattr(getattr(m, "mlp", None), "fc1", None), nn.Linear))


def _is_attention(m: nn.Module) -> bool:
    qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
    return (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)
            and qkv.out_features == 3 * qkv.in_features == 3 * proj.in_features)


def fold_plan(model: nn.Module) -> dict[str, list[str]]:
    """Module names by fold kind: ``norm_linear`` (Swin blocks), ``attention`` (v→proj, q↔k)."""
    plan = {"norm_linear": [], "attention": []}
    for name, m in model.named_modules():
        if _is_swin_block(m):
            plan["norm_linear"].append(name)
        if _is_attention(m):
            plan["attention"].append(name)
    return plan


@torch.no_grad()
def _second_moments(model: nn.Module, names: list[str], batches, site: str) -> dict[str, torch.Tensor]:
    """E[x_j²] per channel of each Linear's input/output (channels last)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    with FeatureTaps(model, names, site) as taps:
        for batch in batches:
            taps.features.clear()
            model(batch)
            for n in names:
                f = taps.features[n].double()
                f = f.reshape(-1, f.shape[-1])
                sums[n] = sums.get(n, 0) + f.pow(2).sum(0)
                counts[n] = counts.get(n, 0) + f.shape[0]
    return {n: sums[n] / counts[n] for n in names}


@torch.no_grad()
def harmonize(model: nn.Module, batches, alpha: float = 0.5, qk: bool = True,
              norm_linear: bool = True, v_proj: bool = True) -> dict[str, int]:
    """Fold harmonized scales into ``model`` in place (FP output unchanged); ``batches`` is a
    list of calibration inputs. Returns how many folds of each kind were made."""
    batches = list(batches)
    plan = fold_plan(model)
    modules = dict(model.named_modules())
    done = {"norm_linear": 0, "v_proj": 0, "q_k": 0}
    if norm_linear and plan["norm_linear"]:
        sites = [f"{b}.attn.qkv" for b in plan["norm_linear"]] + [f"{b}.mlp.fc1" for b in plan["norm_linear"]]
        moments = _second_moments(model, sites, batches, "input")
        for block in plan["norm_linear"]:
            blk = modules[block]
            for norm, linear, site in ((blk.norm1, blk.attn.qkv, f"{block}.attn.qkv"),
                                       (blk.norm2, blk.mlp.fc1, f"{block}.mlp.fc1")):
                s = harmonized_scale(moments[site], linear.weight.double().pow(2).mean(0), alpha)
                norm.weight.div_(s)
                norm.bias.div_(s)
                linear.weight.mul_(s[None, :])
                done["norm_linear"] += 1
    attn_names = plan["attention"]
    if v_proj and attn_names:
        moments = _second_moments(model, [f"{a}.proj" for a in attn_names], batches, "input")
        for a in attn_names:
            attn = modules[a]
            c = attn.proj.in_features
            s = harmonized_scale(moments[f"{a}.proj"], attn.proj.weight.double().pow(2).mean(0), alpha)
            attn.qkv.weight[2 * c:].div_(s[:, None])
            if attn.qkv.bias is not None:
                attn.qkv.bias[2 * c:].div_(s)
            get_v = getattr(attn, "get_v", None)  # a depthwise conv on v (LMLT's LePE)
            if isinstance(get_v, nn.Conv2d) and get_v.bias is not None:
                get_v.bias.div_(s)
            attn.proj.weight.mul_(s[None, :])
            done["v_proj"] += 1
    if qk and attn_names:
        outputs = _second_moments(model, [f"{a}.qkv" for a in attn_names], batches, "output")
        for a in attn_names:
            attn = modules[a]
            c = attn.proj.in_features
            e = outputs[f"{a}.qkv"]
            t = (e[:c] / e[c:2 * c].clamp_min(1e-30)).pow(0.25).clamp(1e-2, 1e2).float()
            attn.qkv.weight[:c].div_(t[:, None])
            attn.qkv.weight[c:2 * c].mul_(t[:, None])
            if attn.qkv.bias is not None:
                attn.qkv.bias[:c].div_(t)
                attn.qkv.bias[c:2 * c].mul_(t)
            done["q_k"] += 1
    return done


__all__ = ["fold_plan", "harmonize", "harmonized_scale"]
