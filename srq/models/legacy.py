"""State dicts out of whole-model pickles (old ``torch.save(model)`` files, e.g. VDSR's).

Such files name the author's classes (``vdsr.Net``), which srq does not import. The
unpickler here resolves only torch's tensor/storage rebuild functions and a few containers;
every other class becomes an inert :class:`PickledObject` that just keeps its state, from
which the ``_parameters`` / ``_buffers`` / ``_modules`` of each ``nn.Module`` are collected.
No code from the file runs.
"""

from __future__ import annotations

import collections
import pickle
import types
import warnings
from pathlib import Path

import torch

_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_tensor"): getattr(torch._utils, "_rebuild_tensor", None),
    ("torch", "Size"): torch.Size,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("copyreg", "_reconstructor"): None,  # filled below
    ("builtins", "object"): object,
    ("builtins", "set"): set,
}


class PickledObject:
    """Placeholder for a class the file names: keeps the pickled state, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.__dict__["_args"] = args

    def __setstate__(self, state):
        if isinstance(state, tuple):  # (dict, slots) form
            state = {k: v for part in state if isinstance(part, dict) for k, v in part.items()}
        if isinstance(state, dict):
            self.__dict__.update(state)


def _reconstructor(cls, base, state):
    return object.__new__(cls) if isinstance(cls, type) else PickledObject()


_ALLOWED[("copyreg", "_reconstructor")] = _reconstructor


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        found = _ALLOWED.get((module, name))
        if found is not None:
            return found
        if module.startswith("torch") and name.endswith("Storage"):
            return getattr(torch, name)
        return type(name, (PickledObject,), {"__module__": f"pickled.{module}"})


unpickler_module = types.SimpleNamespace(Unpickler=_Unpickler, load=pickle.load,
                                         __name__="srq_restricted_pickle")


def module_state_dict(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten a pickled module tree (``_parameters``, ``_buffers``, ``_modules``) to a state_dict."""
    state: dict[str, torch.Tensor] = {}
    attrs = getattr(obj, "__dict__", {})
    for group in ("_parameters", "_buffers"):
        for key, value in (attrs.get(group) or {}).items():
            if isinstance(value, torch.Tensor):
                state[prefix + key] = value.detach().clone() if value.requires_grad else value
    for key, child in (attrs.get("_modules") or {}).items():
        if child is not None:
            state.update(module_state_dict(child, f"{prefix}{key}."))
    return state


def load_module_pickle(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict of the (first) module pickled in ``path``, e.g. ``{"model": Net}``."""
    with warnings.catch_warnings():  # "couldn't retrieve source code for container ..."
        warnings.simplefilter("ignore")
        obj = torch.load(path, map_location="cpu", pickle_module=unpickler_module,
                         weights_only=False)
    if isinstance(obj, dict):
        modules = [v for v in obj.values() if hasattr(v, "_modules")]
        obj = modules[0] if modules else obj
    state = module_state_dict(obj)
    if not state:
        raise ValueError("no module parameters found in the pickle")
    return state
