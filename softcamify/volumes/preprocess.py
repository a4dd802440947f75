"""Volume preprocessing, explicit and recorded: :class:`VolumeConfig`, resampling and its inverse.

A model trained on volumes sees them after three steps, in this order (:func:`preprocess_volume`):

1. **channels**: a one-channel volume is repeated to ``channels``; another count must match;
2. **intensity**: a window ``(low, high)`` (CT: ``-1000,400`` HU) clips and scales to ``[0, 1]``, or a
   per-volume, per-channel z-score (MRI), or nothing (the values as stored);
3. **resampling** to a ``target_shape`` (``D,H,W`` voxels) or a ``target_spacing`` (millimetres per voxel
   along the file's axes; the shape then follows from the volume's spacing), or none.

The resampling (:func:`resample`) is separable linear interpolation on voxel centres, pure numpy, matching
``torch.nn.functional.interpolate(mode='trilinear', align_corners=False)`` (no antialiasing, as MONAI's
``Resize``). It keeps the field of view: the first and last voxel's outer faces stay where they were, so a
grid of any size over the preprocessed volume maps back onto the original scan by the same rule
(:func:`evidence_to_scan`). :meth:`VolumeConfig.to_dict` is what model metadata records. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, UsageError
from .io import Volume, VolumeGeometry

__all__ = [
    "VolumeConfig",
    "CT_WINDOW",
    "resample",
    "preprocessed_shape",
    "preprocessed_geometry",
    "apply_intensity",
    "preprocess_volume",
    "evidence_to_scan",
    "model_volume_config",
    "with_volume_config",
    "VOLUME_KEY",
]

#: The key of a model's ``data_config`` (and of an ONNX export's ``metadata_props``) that records its
#: :class:`VolumeConfig`.
VOLUME_KEY = "volume"

#: The usual CT window (lung to soft tissue), in Hounsfield units.
CT_WINDOW = (-1000.0, 400.0)
#: The largest preprocessed volume (voxels per channel) accepted: 1024³ float32 is 4 GiB.
MAX_VOXELS = 1 << 30


def _triple(value: Sequence[Any] | None, name: str, kind: type) -> tuple | None:
    if value is None:
        return None
    vals = tuple(value)
    if len(vals) != 3:
        raise UsageError(f"{name} needs three values (D,H,W), got {len(vals)}.", param=name)
    try:
        out = tuple(kind(v) for v in vals)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{name} values must be numbers, got {vals}.", param=name) from e
    if kind is int and any(float(v) != int(v) for v in vals):
        raise UsageError(f"{name} values must be whole numbers of voxels, got {vals}.", param=name)
    if not all(math.isfinite(v) and v > 0 for v in out):
        raise UsageError(f"{name} values must be positive, got {vals}.", param=name)
    return out


@dataclass(frozen=True)
class VolumeConfig:
    """How volumes are preprocessed for a model (see the module docs for the order of the steps).

    Attributes:
        target_shape: Resample every volume to ``(D, H, W)`` voxels (batches of equal shape).
        target_spacing: Or resample to this voxel size in millimetres along the file's axes (shapes then
            vary with the scans: batch size 1, or a model indifferent to the shape). Not with ``target_shape``.
        window: ``(low, high)``: clip to it and scale to ``[0, 1]`` (CT in HU: ``(-1000, 400)``).
        zscore: Or subtract each channel's mean and divide by its standard deviation, per volume.
        channels: Channels the model takes; one-channel volumes are repeated to it.
    """

    target_shape: tuple[int, int, int] | None = None
    target_spacing: tuple[float, float, float] | None = None
    window: tuple[float, float] | None = None
    zscore: bool = False
    channels: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_shape", _triple(self.target_shape, "target_shape", int))
        object.__setattr__(self, "target_spacing", _triple(self.target_spacing, "target_spacing", float))
        if self.target_shape is not None and self.target_spacing is not None:
            raise UsageError(
                "target_shape and target_spacing both resample the volume; give one of them.",
                param=("target_shape", "target_spacing"),
            )
        if self.target_shape is not None and math.prod(self.target_shape) > MAX_VOXELS:
            raise UsageError(
                f"target_shape {self.target_shape} has more than {MAX_VOXELS:,} voxels; choose a smaller shape.",
                param="target_shape",
            )
        if self.window is not None:
            w = tuple(float(v) for v in self.window)
            if len(w) != 2 or not all(math.isfinite(v) for v in w) or not w[0] < w[1]:
                raise UsageError(
                    f"window must be two numbers LOW,HIGH with LOW < HIGH (CT: -1000,400), got {self.window}.",
                    param="window",
                )
            object.__setattr__(self, "window", w)
        if self.window is not None and self.zscore:
            raise UsageError(
                "window and zscore both scale the intensities; give one of them.", param=("window", "zscore")
            )
        if int(self.channels) != self.channels or self.channels < 1:
            raise UsageError(f"channels must be a positive whole number, got {self.channels}.", param="channels")
        object.__setattr__(self, "channels", int(self.channels))

    @classmethod
    def from_options(
        cls,
        window: str | None = None,
        zscore: bool = False,
        target_shape: str | None = None,
        target_spacing: str | None = None,
        channels: int = 1,
    ) -> VolumeConfig:
        """The config from command-line strings: ``window='-1000,400'``, ``target_shape='64,64,64'`` (or
        ``'64'`` for a cube, ``64x64x64``), ``target_spacing='1.5,1.5,2'`` (or ``'1.5'``)."""
        return cls(
            target_shape=_parse_triple(target_shape, "target_shape"),  # type: ignore[arg-type]
            target_spacing=_parse_triple(target_spacing, "target_spacing"),  # type: ignore[arg-type]
            window=_parse_numbers(window, "window", 2),  # type: ignore[arg-type]
            zscore=zscore,
            channels=channels,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for model metadata (``from_dict`` reads it back)."""
        return {
            "spatial_dims": 3,
            "target_shape": list(self.target_shape) if self.target_shape else None,
            "target_spacing": list(self.target_spacing) if self.target_spacing else None,
            "window": list(self.window) if self.window else None,
            "zscore": self.zscore,
            "channels": self.channels,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VolumeConfig:
        if d.get("spatial_dims", 3) != 3:
            raise InputError(f"A volume config has spatial_dims {d.get('spatial_dims')}; softcamify reads 3.")
        return cls(
            target_shape=tuple(d["target_shape"]) if d.get("target_shape") else None,  # type: ignore[arg-type]
            target_spacing=tuple(d["target_spacing"]) if d.get("target_spacing") else None,  # type: ignore[arg-type]
            window=tuple(d["window"]) if d.get("window") else None,  # type: ignore[arg-type]
            zscore=bool(d.get("zscore", False)),
            channels=int(d.get("channels", 1)),
        )


def _parse_numbers(value: str | None, name: str, count: int | None) -> list[float] | None:
    if value is None or not str(value).strip():
        return None
    text = str(value).replace("x", ",").replace("×", ",").replace(" ", ",")
    parts = [p for p in text.split(",") if p]
    try:
        nums = [float(p) for p in parts]
    except ValueError as e:
        raise UsageError(f"{name} {value!r} must be numbers separated by commas.", param=name) from e
    if count is not None and len(nums) != count:
        raise UsageError(f"{name} {value!r} needs {count} numbers separated by commas.", param=name)
    return nums


def _parse_triple(value: str | None, name: str) -> list[float] | None:
    nums = _parse_numbers(value, name, None)
    if nums is None:
        return None
    if len(nums) == 1:
        nums = nums * 3
    if len(nums) != 3:
        raise UsageError(f"{name} {value!r} needs one number or three (D,H,W).", param=name)
    return nums


# --- resampling ----------------------------------------------------------------------------------------------


def _linear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of linear interpolation from ``n_in`` to ``n_out`` samples, on voxel
    centres (``align_corners=False``): output ``i`` reads source coordinate ``(i + 0.5)·n_in/n_out − 0.5``,
    clamped at 0, between its two neighbours (the last one repeated at the far edge)."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = src - i0
    return i0, i1, w


def resample(array: Any, shape: Sequence[int]) -> np.ndarray:
    """Resize the last three axes of ``array`` to ``shape`` by separable linear interpolation (trilinear).

    The same values as ``torch.nn.functional.interpolate(x, shape, mode='trilinear', align_corners=False)``
    (no antialiasing when shrinking); any leading axes (``C×D×H×W``, ``K×d×h×w``) are kept. Returns float32
    (a copy), computed in float32 as torch does; a constant volume stays exactly constant.
    """
    a = np.asarray(array)
    if a.ndim < 3 or 0 in a.shape[-3:]:
        raise InputError(f"Cannot resample an array of shape {a.shape}; expected (..., D, H, W).")
    target = tuple(int(s) for s in shape)
    if len(target) != 3 or min(target) < 1:
        raise UsageError(f"A resampling shape must be three positive integers (D, H, W), got {tuple(shape)}.")
    out = a.astype(np.float32)  # float32 arithmetic, as torch's: half the memory of float64 on a full CT
    for axis_from_end, n_out in zip((3, 2, 1), target, strict=True):
        axis = out.ndim - axis_from_end
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        i0, i1, w = _linear_weights(n_in, n_out)
        bshape = [1] * out.ndim
        bshape[axis] = n_out
        wb = w.astype(np.float32).reshape(bshape)
        lo = np.take(out, i0, axis=axis)
        out = lo + (np.take(out, i1, axis=axis) - lo) * wb  # equal neighbours give exactly their value
    return np.ascontiguousarray(out, dtype=np.float32)


def preprocessed_shape(geometry: VolumeGeometry, config: VolumeConfig) -> tuple[int, int, int]:
    """The spatial shape a volume of ``geometry`` has after ``config``'s resampling."""
    if config.target_shape is not None:
        return config.target_shape
    if config.target_spacing is not None:
        shape = tuple(
            max(1, int(round(n * s / t)))
            for n, s, t in zip(geometry.shape, geometry.spacing, config.target_spacing, strict=True)
        )
        if math.prod(shape) > MAX_VOXELS:
            raise UsageError(
                f"target_spacing {config.target_spacing} makes a volume of {geometry.shape} voxels at "
                f"{geometry.spacing} mm {shape} voxels, more than {MAX_VOXELS:,}; choose a coarser spacing.",
                param="target_spacing",
            )
        return shape  # type: ignore[return-value]
    return geometry.shape


def preprocessed_geometry(geometry: VolumeGeometry, config: VolumeConfig) -> VolumeGeometry:
    """The geometry of the preprocessed volume: its shape and the affine that places its voxels in the
    scan's world (same field of view; voxel ``i'`` sits at original voxel ``(i' + 0.5)·n/n' − 0.5``)."""
    new = preprocessed_shape(geometry, config)
    scale = np.array([n / m for n, m in zip(geometry.shape, new, strict=True)], dtype=np.float64)
    to_original = np.eye(4)
    to_original[:3, :3] = np.diag(scale)
    to_original[:3, 3] = 0.5 * scale - 0.5
    affine = np.asarray(geometry.affine, dtype=np.float64) @ to_original
    spacing = tuple(float(s * k) for s, k in zip(geometry.spacing, scale, strict=True))
    return VolumeGeometry(new, affine, spacing)  # type: ignore[arg-type]


def apply_intensity(array: np.ndarray, config: VolumeConfig) -> np.ndarray:
    """The intensity step of ``config`` on a ``C×D×H×W`` array (float32)."""
    a = np.asarray(array, dtype=np.float32)
    if config.window is not None:
        lo, hi = config.window
        return ((np.clip(a, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    if config.zscore:
        flat = a.reshape(a.shape[0], -1).astype(np.float64)
        mean = flat.mean(axis=1)
        std = flat.std(axis=1)
        safe = np.where(std > 0, std, 1.0)
        out = (a - mean[:, None, None, None]) / safe[:, None, None, None]
        return np.where((std > 0)[:, None, None, None], out, 0.0).astype(np.float32)
    return a


def _match_channels(volume: Volume, channels: int) -> np.ndarray:
    a = volume.array
    if a.shape[0] == channels:
        return a
    if a.shape[0] == 1:
        return np.repeat(a, channels, axis=0)
    raise InputError(
        f"Volume {volume.path} has {a.shape[0]} channels but the model takes {channels}; give volumes with "
        f"{channels} channel(s) or one."
    )


def preprocess_volume(volume: Volume, config: VolumeConfig) -> np.ndarray:
    """The model's input for ``volume``: ``C×D'×H'×W'`` float32 after channels, intensity and resampling."""
    a = apply_intensity(_match_channels(volume, config.channels), config)
    shape = preprocessed_shape(volume.geometry, config)
    return a if shape == volume.shape else resample(a, shape)


def evidence_to_scan(
    evidence: Any,
    geometry: VolumeGeometry,
    config: VolumeConfig | None = None,
) -> np.ndarray:
    """An evidence grid (``d×h×w`` or ``K×d×h×w``) over the preprocessed volume, in the original scan's
    geometry: an array of ``geometry.shape`` (with the leading ``K`` kept), float32, voxel for voxel on the
    scan, so it is written with the scan's affine.

    The grid covers the preprocessed volume's field of view, which is the scan's (the resampling keeps it),
    so upsampling the grid to the preprocessed shape and undoing the resampling is one linear interpolation
    on voxel centres from the grid to the original shape; it is done in one step (one interpolation instead
    of two: the same geometry, no extra blur). ``config`` is checked against ``geometry`` (a target spacing
    that gives no valid shape is refused) and otherwise changes nothing, as no preprocessing step here moves
    the field of view.
    """
    a = np.asarray(evidence)
    if a.ndim not in (3, 4) or 0 in a.shape:
        raise InputError(f"An evidence grid must be d×h×w or K×d×h×w, got shape {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise InputError("The evidence grid contains NaN or infinite values.")
    if config is not None:
        preprocessed_shape(geometry, config)
    return resample(a, geometry.shape)


def model_volume_config(data_config: Any) -> VolumeConfig:
    """The :class:`VolumeConfig` a volume model records in its ``data_config`` (under :data:`VOLUME_KEY`);
    a model without one (converted without volume options) takes its volumes as they are, resampled to its
    ``input_size`` (``[C, D, H, W]``), with ``C`` channels."""
    cfg = dict(data_config or {})
    stored = cfg.get(VOLUME_KEY)
    if isinstance(stored, str):  # an ONNX metadata_props value
        import json

        stored = json.loads(stored)
    if stored:
        return VolumeConfig.from_dict(dict(stored))
    size = [int(v) for v in cfg.get("input_size") or []]
    if len(size) != 4:
        raise InputError(f"A volume model needs an input_size [C, D, H, W], not {size}.")
    return VolumeConfig(target_shape=tuple(size[1:]), channels=size[0])  # type: ignore[arg-type]


def with_volume_config(data_config: Any, config: VolumeConfig) -> dict[str, Any]:
    """``data_config`` recording ``config`` (under :data:`VOLUME_KEY`); with a ``target_shape`` the model's
    ``input_size`` becomes ``[C, *target_shape]`` (what export and the probes build their example from)."""
    cfg = dict(data_config or {})
    cfg[VOLUME_KEY] = config.to_dict()
    size = [int(v) for v in cfg.get("input_size") or []]
    if config.target_shape is not None:
        cfg["input_size"] = [int(config.channels), *config.target_shape]
    elif len(size) == 4:
        cfg["input_size"] = [int(config.channels), *size[1:]]
    return cfg
