"""Forward hooks by module name (used by calibration statistics and distillation losses)."""

from __future__ import annotations

import torch
from torch import nn

FEATURE_SITES = ("output", "input")


class FeatureTaps:
    """Forward hooks on the modules named ``names`` recording their output (or first input)
    in ``features``; hooks are removed on exit (also on errors).

        >>> with FeatureTaps(model, ["body.0.conv1"]) as taps:   # doctest: +SKIP
        ...     model(x); f = taps.features["body.0.conv1"]
    """

    def __init__(self, model: nn.Module, names, site: str = "output"):
        if site not in FEATURE_SITES:
            raise ValueError(f"unknown feature site {site!r}; valid: {', '.join(FEATURE_SITES)}")
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise KeyError(f"no module named {', '.join(missing[:3])} in {type(model).__name__}")
        self.model, self.names, self.site = model, list(names), site
        self.modules = modules
        self.features: dict[str, torch.Tensor] = {}
        self._hooks = []

    def __enter__(self) -> "FeatureTaps":
        for name in self.names:
            if self.site == "output":
                hook = self.modules[name].register_forward_hook(
                    lambda mod, args, out, name=name: self.features.__setitem__(name, out))
            else:
                hook = self.modules[name].register_forward_pre_hook(
                    lambda mod, args, name=name: self.features.__setitem__(name, args[0]))
            self._hooks.append(hook)
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


__all__ = ["FEATURE_SITES", "FeatureTaps"]
