"""DataConfig: the one resolver and validator of a model's preprocessing (no torch).

A model's eval transform is timm's: resize (keeping the aspect ratio, by ``crop_pct``), crop
(``crop_mode``), scale to [0, 1], normalize by ``mean``/``std`` per channel. Where the numbers come from
differs (timm's ``pretrained_cfg``, a training run's ``args.yaml``, softcamify metadata in a
``.safetensors`` or ``.onnx`` file, options given by the user), but they are merged, completed and
checked here only, with one set of rules:

- ``input_size`` is ``[C, H, W]`` (``[C, D, H, W]`` for a volume model); ``H`` or ``[H, W]`` take
  ``channels`` (default 3);
- ``mean``/``std`` have one value per channel; a single value is broadcast, the three values of an RGB
  config on a one-channel model are averaged; ``std`` is positive; all are finite;
- ``interpolation`` and ``crop_mode`` are names (``bicubic`` and ``center`` when absent; timm's
  training-only ``random`` reads ``bilinear``); ``crop_pct`` is in (0, 1] or absent (then
  :data:`~softcamify.images.DEFAULT_CROP_PCT` at preprocessing time);
- no image larger than Pillow's decompression-bomb limit is ever asked for.

A wrong value is a :class:`~softcamify.errors.UsageError` whose ``param`` is the key
(``mean``, ``input_size`` ...), so the CLI names its own option.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import UsageError

__all__ = ["DATA_KEYS", "MAX_PIXELS", "DataConfig", "resolve_data_config", "with_spatial_size"]

DATA_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
MAX_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS: a larger input only exhausts memory
CROP_MODES = ("center", "squash", "border")
_DEFAULTS: dict[str, Any] = {"interpolation": "bicubic", "crop_pct": None, "crop_mode": "center"}


@dataclass(frozen=True)
class DataConfig:
    """A complete, checked eval preprocessing. Build it with :func:`resolve_data_config`."""

    input_size: tuple[int, ...]  # (C, H, W), or (C, D, H, W) for a volume model
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float | None = None
    crop_mode: str = "center"

    @property
    def channels(self) -> int:
        return self.input_size[0]

    @property
    def size(self) -> tuple[int, ...]:
        """The spatial size: (H, W), or (D, H, W) for a volume model."""
        return tuple(self.input_size[1:])

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes."""
        return len(self.input_size) - 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly, the keys of :data:`DATA_KEYS` (what metadata files and reports hold)."""
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
        }

    def applied(self) -> dict[str, Any]:
        """:meth:`to_dict` with ``crop_pct`` as preprocessing applies it (the default filled in)."""
        from .images import DEFAULT_CROP_PCT

        return {**self.to_dict(), "crop_pct": self.crop_pct or DEFAULT_CROP_PCT}

    def with_overrides(self, **overrides: Any) -> DataConfig:
        """This config with the given (non-``None``) keys replaced, checked again."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if not given:
            return self
        return resolve_data_config({**self.to_dict(), **given}, channels=self.channels)

    def preprocess(self, img: Any) -> np.ndarray:
        """The eval transform of one image (a path, Pillow image or uint8 array): float32 C×H×W."""
        from .images import preprocess

        return preprocess(
            img,
            input_size=self.size,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
            crop_pct=self.crop_pct,
            crop_mode=self.crop_mode,
            channels=self.channels,
        )

    def resized(self, size: tuple[int, int]) -> DataConfig:
        """The same preprocessing at another input size ``(H, W)``."""
        return replace(self, input_size=(self.channels, int(size[0]), int(size[1])))


def _input_size(value: Any, channels: int | None) -> tuple[int, ...]:
    raw = value
    if isinstance(value, (int, np.integer)):
        value = [int(value), int(value)]
    try:
        dims = [int(v) for v in value]
        if any(float(v) != int(v) for v in value):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise UsageError(
            f"input_size {raw!r} is not (H, W) or (C, H, W) in whole pixels.", param="input_size"
        ) from None
    if len(dims) == 2:
        dims = [channels or 3, *dims]
    if len(dims) not in (3, 4):
        raise UsageError(
            f"input_size {list(dims)} is not (H, W), (C, H, W) or (C, D, H, W) for a volume.", param="input_size"
        )
    c, spatial = dims[0], dims[1:]
    if channels is not None and c != channels:
        raise UsageError(f"input_size has {c} channels but the model takes {channels}.", param="input_size")
    if min(dims) < 1 or math.prod(spatial) > MAX_PIXELS:
        what = "image" if len(spatial) == 2 else "volume"
        raise UsageError(f"input_size {'×'.join(map(str, dims))} is not a usable {what} size.", param="input_size")
    return tuple(dims)


def _stats(name: str, value: Any, channels: int) -> tuple[float, ...]:
    try:
        vals = [float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()]
    except (TypeError, ValueError):
        raise UsageError(f"{name} {value!r} is not a list of numbers.", param=name) from None
    if len(vals) == 1:
        vals = vals * channels
    elif len(vals) == 3 and channels == 1:  # an RGB config on a grayscale model
        vals = [sum(vals) / 3.0]
    if len(vals) != channels:
        raise UsageError(f"{name} has {len(vals)} values but the model takes {channels} channel(s).", param=name)
    if not all(math.isfinite(v) for v in vals):
        raise UsageError(f"{name} {vals} must be finite numbers.", param=name)
    if name == "std" and any(v <= 0 for v in vals):
        raise UsageError(f"std {vals} must be above 0 (it divides the image).", param="std")
    return tuple(vals)


def _name(key: str, value: Any, allowed: Sequence[str] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{key} {value!r} is not a name like bicubic or center.", param=key)
    if allowed is not None and value not in allowed:
        raise UsageError(f"{key} {value!r} is not one of {', '.join(allowed)}.", param=key)
    return value


def resolve_data_config(
    config: Mapping[str, Any] | DataConfig | None = None,
    *,
    channels: int | None = None,
    **overrides: Any,
) -> DataConfig:
    """The :class:`DataConfig` of ``config`` (any mapping with :data:`DATA_KEYS`; other keys are
    ignored) with the non-``None`` ``overrides`` applied, completed and checked.

    ``channels`` is the number of input channels the model takes, when known (its first convolution,
    its graph's input); ``mean``, ``std`` and ``input_size`` are required.
    """
    unknown = set(overrides) - set(DATA_KEYS)
    if unknown:
        raise TypeError(f"resolve_data_config() got unexpected keys {sorted(unknown)}")
    base = config.to_dict() if isinstance(config, DataConfig) else dict(config or {})
    cfg = {k: base.get(k) for k in DATA_KEYS}
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    missing = [k for k in ("input_size", "mean", "std") if cfg.get(k) is None]
    if missing:
        raise UsageError(f"The preprocessing is unknown: give {', '.join(missing)}.", param=tuple(missing))
    size = _input_size(cfg["input_size"], channels)
    c, h, w = size[0], size[-2], size[-1]
    interpolation = cfg.get("interpolation") or _DEFAULTS["interpolation"]
    if interpolation == "random":
        interpolation = "bilinear"  # timm's training-time choice; eval uses bilinear
    crop_pct = cfg.get("crop_pct")
    if crop_pct is not None:
        try:
            crop_pct = float(crop_pct)
        except (TypeError, ValueError):
            raise UsageError(f"crop_pct {crop_pct!r} is not a number in (0, 1].", param="crop_pct") from None
        if not 0 < crop_pct <= 1:
            raise UsageError(f"crop_pct {crop_pct} is not in (0, 1].", param="crop_pct")
        if h * w / crop_pct**2 > MAX_PIXELS:  # the resize before the crop
            raise UsageError(f"input_size {h}×{w} with crop_pct {crop_pct} is too large.", param="crop_pct")
    return DataConfig(
        input_size=size,
        mean=_stats("mean", cfg["mean"], c),
        std=_stats("std", cfg["std"], c),
        interpolation=_name("interpolation", interpolation),
        crop_pct=crop_pct,
        crop_mode=_name("crop_mode", cfg.get("crop_mode") or _DEFAULTS["crop_mode"], CROP_MODES),
    )


def with_spatial_size(config: Mapping[str, Any], size: Sequence[int]) -> dict[str, Any]:
    """``config`` (a data config dict) with its spatial size replaced by ``size``: (H, W) for an image model,
    (D, H, W) for a volume model (one whose ``input_size`` is [C, D, H, W]). Raises :class:`UsageError` when
    ``size`` has another number of axes than the model reads."""
    spatial = len(config["input_size"]) - 1
    if len(size) != spatial:
        want = "D,H,W (3 numbers)" if spatial == 3 else "H,W (or one number)"
        raise UsageError(
            f"input_size {'×'.join(map(str, size))} has {len(size)} axes but the model reads {spatial}-D "
            f"inputs; give {want}.",
            param="input_size",
        )
    return {**config, "input_size": [config["input_size"][0], *(int(v) for v in size)]}
