"""Typed method configs: frozen dataclasses that Hydra builds through ``_target_`` and that
validate themselves (an unknown key or a wrong type is one clear error, before any work).

Every method config has ``name``, ``bits`` (:class:`Bits`) and ``calib``
(:class:`CalibSettings`); nested sections are dataclasses too. :func:`build_method_config`
turns a ``method=`` group into its config (as ``hydra.utils.instantiate(..., _convert_="all")``
does, with errors that name the key and the valid ones).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

from srq.errors import SrqError


class ConfigError(SrqError, TypeError):
    """A method config with an unknown key or a value of the wrong type."""


def _origin_types(hint) -> tuple:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in _origin_types(arg))
    return (origin or hint,)


def _coerce(value, hint, where: str):
    """``value`` as the annotated type: nested dicts → dataclasses, lists → tuples, ints → floats."""
    allowed = _origin_types(hint)
    if value is None:
        if type(None) in allowed or hint is Any:
            return None
        raise ConfigError(f"{where} must not be null")
    for t in allowed:
        if dataclasses.is_dataclass(t) and isinstance(value, t):
            return value
        if dataclasses.is_dataclass(t) and isinstance(value, dict):
            return from_mapping(t, value, where)
    if hint is Any or object in allowed:
        return value
    if bool in allowed and isinstance(value, bool):
        return value
    if int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    if float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if str in allowed and isinstance(value, str):
        return value
    if tuple in allowed and isinstance(value, (list, tuple)):
        return tuple(value)
    if dict in allowed and isinstance(value, dict):
        return dict(value)
    names = ", ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"{where}={value!r} has the wrong type (expected {names})")


def from_mapping(cls, data: dict, where: str = "method"):
    """``cls(**data)`` with nested sections converted and unknown keys reported by name."""
    if isinstance(data, cls):
        return data
    data = {k: v for k, v in dict(data).items() if not str(k).startswith("_")}
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]} is not an option of {cls.__name__}; valid keys: "
                          f"{', '.join(sorted(known))}")
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()})


class Config:
    """Mixin: nested dicts given to the constructor become their dataclass types."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            coerced = _coerce(value, hints[f.name], f"method.{f.name}")
            if coerced is not value:
                object.__setattr__(self, f.name, coerced)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values outside the allowed choices."""

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def choice(value, options, where: str) -> None:
    if value not in options:
        raise ConfigError(f"unknown {where} {value!r}; valid: {', '.join(map(str, options))}")


@dataclass(frozen=True)
class Bits(Config):
    """Bit-widths (``bits=`` group): None keeps that side FP; ``palettize``: k-means weights."""

    name: str = "fp32"
    weight_bits: int | None = None
    act_bits: int | None = None
    palettize: bool = False

    @property
    def quantizes(self) -> bool:
        return self.weight_bits is not None or self.act_bits is not None


@dataclass(frozen=True)
class CalibSettings(Config):
    """Which calibration patches a method uses, merged over the ``calib=`` group by the app
    (None: the group's value). ``hr_patch_size``: when ``patch_size`` is None, LR patches of
    hr_patch_size/scale (seed 003's 96 at ×4); ``val_patches`` held out for validation."""

    source: str | None = None
    num_patches: int | None = None
    patch_size: int | None = None
    hr_patch_size: int | None = None
    batch_size: int | None = None
    val_patches: int = 0
    seed: int | None = None
    folder: str | None = None
    folder_is_hr: bool | None = None
    set_name: str | None = None


@dataclass(frozen=True)
class MethodConfig(Config):
    """Fields every method config has."""

    name: str = ""
    bits: Bits = dataclasses.field(default_factory=Bits)
    calib: CalibSettings = dataclasses.field(default_factory=CalibSettings)

    @property
    def train_patches(self) -> int | None:
        """Fine-tuning patches drawn beside the calibration ones (same source, seed + 2)."""
        return None

    @property
    def needs_hr(self) -> bool:
        """Whether the method needs the HR crops of its calibration patches."""
        return False

    def require_bits(self, what: str) -> None:
        if not self.bits.quantizes:
            raise SrqError(f"method={self.name} needs a quantized bits= config ({what}), not "
                           f"bits={self.bits.name}")


def resolve_calib(group: dict, own: dict | None, scale: int | None = None) -> CalibSettings:
    """The method's calibration settings ``own`` merged over the ``calib=`` group: a method
    value wins unless it is None; ``patch_size`` None with ``hr_patch_size`` set gives
    hr_patch_size // scale (when the scale is known)."""
    own = dict(own or {})
    merged = {k: v for k, v in dict(group).items() if k in _CALIB_KEYS}
    merged.update({k: v for k, v in own.items() if v is not None})
    if own.get("patch_size") is None and own.get("hr_patch_size") and scale:
        merged["patch_size"] = int(own["hr_patch_size"]) // int(scale)
    return from_mapping(CalibSettings, merged, "calib")


_CALIB_KEYS = {f.name for f in fields(CalibSettings)}


def build_method_config(method: dict, bits: dict, calib: CalibSettings):
    """The typed config of a ``method=`` group: the class named by ``_target_`` (Hydra's
    convention) built from the group's keys, with ``bits`` and the resolved ``calib``."""
    from hydra.utils import get_class

    method = dict(method)
    target = method.pop("_target_", None)
    if target is None:
        raise SrqError(f"method={method.get('name')} names no config class (_target_)")
    try:
        cls = get_class(target)
    except Exception as exc:
        raise SrqError(f"method._target_={target} is not a config class ({exc})") from None
    method.pop("calib", None)
    return from_mapping(cls, {**method, "bits": from_mapping(Bits, bits, "bits"), "calib": calib})


__all__ = ["Bits", "CalibSettings", "Config", "ConfigError", "MethodConfig", "build_method_config",
           "choice", "from_mapping", "resolve_calib"]
