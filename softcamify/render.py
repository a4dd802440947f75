"""Heatmaps for evidence maps: colour maps, a colour scale shared across classes, overlays, legends.

numpy + Pillow only (no torch, no matplotlib). SoftCAM maps are signed (positive = evidence for the
class, negative = against), so the default colour map is diverging (blue–white–red, white at 0) and the
scale is symmetric around 0 and shared by every class of one image: colours are comparable across
classes, and a class with little evidence looks pale instead of being stretched to full contrast.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import InputError, UsageError
from .evaluation.metrics import upsample
from .io import atomic_output

__all__ = [
    "COLORMAPS",
    "apply_colormap",
    "colorbar",
    "colormap",
    "font",
    "heatmap",
    "is_diverging",
    "overlay",
    "save_png",
    "scale_maps",
]

# Anchor colours (RGB 0..255) at evenly spaced positions in [0, 1], interpolated linearly to 256 entries.
_RDBU_R = [  # ColorBrewer RdBu (11 classes), reversed: dark blue -> near white -> dark red
    (5, 48, 97), (33, 102, 172), (67, 147, 195), (146, 197, 222), (209, 229, 240), (247, 247, 247),
    (253, 219, 199), (244, 165, 130), (214, 96, 77), (178, 24, 43), (103, 0, 31),
]  # fmt: skip
_COOLWARM = [  # Moreland's smooth diverging map (grey-white middle)
    (59, 76, 192), (89, 119, 227), (123, 159, 249), (158, 190, 255), (192, 212, 245), (221, 220, 220),
    (242, 203, 183), (247, 172, 142), (238, 132, 104), (214, 82, 68), (180, 4, 38),
]  # fmt: skip
_BWR = [(0, 0, 255), (255, 255, 255), (255, 0, 0)]
_INFERNO = [  # perceptually uniform, black -> purple -> orange -> pale yellow
    (0, 0, 4), (22, 11, 57), (66, 10, 104), (106, 23, 110), (147, 38, 103), (188, 55, 84),
    (221, 81, 58), (243, 120, 25), (252, 165, 10), (246, 215, 70), (252, 255, 164),
]  # fmt: skip
_GRAY = [(0, 0, 0), (255, 255, 255)]
# Jet, per channel as (position, value 0..1) breakpoints (the classic MATLAB/matplotlib definition).
_JET = {
    "r": [(0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)],
    "g": [(0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)],
    "b": [(0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)],
}

#: name -> True for diverging maps (values in [-1, 1], 0 in the middle), False for sequential ([0, 1]).
COLORMAPS: dict[str, bool] = {
    "RdBu_r": True,
    "coolwarm": True,
    "bwr": True,
    "inferno": False,
    "jet": False,
    "gray": False,
}
_ALIASES = {"diverging": "RdBu_r", "signed": "RdBu_r", "sequential": "inferno", "positive": "inferno"}


def _resolve(name: str) -> str:
    key = _ALIASES.get(name, name)
    if key not in COLORMAPS:
        choices = ", ".join([*COLORMAPS, *_ALIASES])
        raise UsageError(f"Unknown colour map {name!r}; choose one of {choices}.")
    return key


def is_diverging(name: str) -> bool:
    """True if ``name`` is a diverging map (expects values in [-1, 1]), False if sequential ([0, 1])."""
    return COLORMAPS[_resolve(name)]


def _from_anchors(anchors: list[tuple[int, int, int]]) -> np.ndarray:
    pos = np.linspace(0.0, 1.0, len(anchors))
    x = np.linspace(0.0, 1.0, 256)
    rgb = np.asarray(anchors, dtype=np.float64)
    return np.stack([np.interp(x, pos, rgb[:, ch]) for ch in range(3)], axis=1)


@cache
def _lut(key: str) -> np.ndarray:
    if key == "jet":
        x = np.linspace(0.0, 1.0, 256)
        lut = np.stack([np.interp(x, *zip(*_JET[ch], strict=True)) * 255.0 for ch in "rgb"], axis=1)
    else:
        anchors = {"RdBu_r": _RDBU_R, "coolwarm": _COOLWARM, "bwr": _BWR, "inferno": _INFERNO, "gray": _GRAY}
        lut = _from_anchors(anchors[key])
    out = np.clip(np.round(lut), 0, 255).astype(np.uint8)
    out.setflags(write=False)
    return out


def colormap(name: str = "RdBu_r") -> np.ndarray:
    """256×3 uint8 lookup table for ``name``.

    Diverging (signed evidence, white/light grey in the middle = 0): ``RdBu_r`` (default, alias
    ``diverging``), ``coolwarm``, ``bwr``. Sequential (positive-only): ``inferno`` (alias ``sequential``),
    ``jet``, ``gray``. Built by linear interpolation between a few anchor colours; no matplotlib needed.
    """
    return _lut(_resolve(name)).copy()


def _finite_maps(maps: Any) -> np.ndarray:
    a = np.asarray(maps, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[-1] == 0 or a.shape[-2] == 0:
        raise InputError(f"Evidence maps must have shape K×h×w (or h×w), got {np.shape(maps)}.")
    if not np.all(np.isfinite(a)):
        raise InputError("The evidence maps contain NaN or infinite values.")
    return a


def scale_maps(maps: Any, positive: bool = False) -> tuple[np.ndarray, float, float]:
    """Scale the K maps of ONE image with a single shared colour scale; returns ``(scaled, vmin, vmax)``.

    Signed (default): ``vmax = max |A|`` over all classes, ``vmin = −vmax``, ``scaled = A / vmax`` in
    [−1, 1] (0 stays 0; use a diverging colour map). ``positive=True``: ``ReLU(A)``, ``vmin = 0``,
    ``vmax = max A``, ``scaled`` in [0, 1] (use a sequential colour map). All-zero maps give
    ``vmax = 0`` and all-zero ``scaled``. ``scaled`` has the input's shape (h×w input allowed), float32.
    """
    a = _finite_maps(maps)
    if positive:
        a = np.maximum(a, 0.0)
        vmax = float(a.max())
        vmin = 0.0
    else:
        vmax = float(np.abs(a).max())
        vmin = -vmax
    scaled = a / vmax if vmax > 0 else np.zeros_like(a)
    scaled = scaled.astype(np.float32).reshape(np.shape(maps))
    return scaled, vmin, vmax


def apply_colormap(map: Any, cmap: str = "RdBu_r") -> np.ndarray:
    """Colour a scaled map (h×w): H×W×3 uint8.

    Diverging maps read values in [−1, 1] (0 → middle colour); sequential maps read [0, 1]. Values
    outside the range are clipped.
    """
    a = np.asarray(map, dtype=np.float64)
    if a.ndim != 2:
        raise InputError(f"A map to colour must be 2-D (h×w), got shape {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise InputError("The map contains NaN or infinite values.")
    key = _resolve(cmap)
    t = (np.clip(a, -1.0, 1.0) + 1.0) / 2.0 if COLORMAPS[key] else np.clip(a, 0.0, 1.0)
    idx = np.round(t * 255.0).astype(np.intp)
    return _lut(key)[idx]


def _as_rgb(image: Any) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"The image must be a PIL image or an H×W×3 array, got shape {a.shape}.")
    a = a[..., :3]
    if a.dtype != np.uint8:
        f = a.astype(np.float64)
        if not np.all(np.isfinite(f)):
            raise InputError("The image contains NaN or infinite values.")
        if np.issubdtype(a.dtype, np.floating) and f.max() <= 1.0:
            f = f * 255.0  # float image in [0, 1]
        a = np.clip(np.round(f), 0, 255).astype(np.uint8)
    return a


def heatmap(map: Any, cmap: str = "RdBu_r", size: tuple[int, int] | None = None) -> Image.Image:
    """The coloured map alone as a PIL RGB image, upsampled bilinearly to ``size = (H, W)`` if given."""
    a = np.asarray(map, dtype=np.float64)
    if size is not None and tuple(a.shape) != tuple(size):
        a = upsample(a, size)
    return Image.fromarray(apply_colormap(a, cmap))


def overlay(image: Any, map: Any, alpha: float = 0.5, cmap: str = "RdBu_r", weighted: bool = False) -> Image.Image:
    """Blend a scaled map over an image: ``out = (1 − α)·image + α·colour(map)``; returns PIL RGB.

    ``image``: a PIL image or an H×W×3 uint8 array (H×W grey and float arrays in [0, 1] are accepted).
    ``map``: h×w, already scaled (see :func:`scale_maps`) to [−1, 1] for a diverging ``cmap`` or [0, 1]
    for a sequential one; it is upsampled bilinearly to the image size (``align_corners=False``, the same
    code as :mod:`softcamify.evaluation.metrics`). ``weighted=True`` multiplies α by ``|map|`` per pixel, so
    regions without evidence keep the image unchanged. ``alpha=0`` returns the image itself (as RGB).
    """
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"alpha must be between 0 and 1, got {alpha}.")
    rgb = _as_rgb(image)
    if alpha == 0.0:
        return Image.fromarray(rgb.copy())
    a = np.asarray(map, dtype=np.float64)
    if a.ndim != 2:
        raise InputError(f"The map must be 2-D (h×w), got shape {a.shape}.")
    h, w = rgb.shape[:2]
    if a.shape != (h, w):
        a = upsample(a, (h, w))
    colour = apply_colormap(a, cmap).astype(np.float64)
    weight = np.full((h, w, 1), float(alpha))
    if weighted:
        weight = weight * np.clip(np.abs(a), 0.0, 1.0)[..., None]
    out = (1.0 - weight) * rgb.astype(np.float64) + weight * colour
    return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def colorbar(vmin: float, vmax: float, cmap: str = "RdBu_r", width: int = 256, height: int = 40) -> Image.Image:
    """A small horizontal legend: the colour ramp from ``vmin`` (left) to ``vmax`` (right), white background.

    Below the ramp (when ``height`` >= 24) the values at the left end, middle and right end are printed
    with Pillow's default font. For a signed map pass the symmetric ``(vmin, vmax)`` from
    :func:`scale_maps`, so the middle of the ramp is 0.
    """
    if width < 2 or height < 2:
        raise UsageError(f"A colour bar needs width and height of at least 2 pixels, got {width}×{height}.")
    lut = colormap(cmap)
    text_h = 14 if height >= 24 else 0
    bar_h = height - text_h
    idx = np.round(np.linspace(0, 255, width)).astype(np.intp)
    img = Image.new("RGB", (width, height), (255, 255, 255))
    img.paste(Image.fromarray(np.repeat(lut[idx][None], bar_h, axis=0)), (0, 0))
    if text_h:
        draw = ImageDraw.Draw(img)
        font = ImageFont.load_default()
        labels = [(_fmt(vmin), "l"), (_fmt((vmin + vmax) / 2.0), "m"), (_fmt(vmax), "r")]
        for text, where in labels:
            tw = draw.textlength(text, font=font)
            x = 0 if where == "l" else (width - tw) / 2 if where == "m" else width - tw
            draw.text((max(0, x), bar_h + 1), text, fill=(0, 0, 0), font=font)
    return img


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at ``size`` pixels, for text drawn into images (plots, demo panels).

    Where ``load_default`` takes no size (Pillow before 10.1) it is the small fixed-size bitmap font.
    """
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1: no size argument, the small bitmap font
        return ImageFont.load_default()


def save_png(img: Any, path: str | os.PathLike, force: bool = False) -> Path:
    """Write ``img`` (PIL image or uint8 array) as PNG atomically; refuses to overwrite unless ``force``."""
    pil = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))
    with atomic_output(path, force=force) as tmp:
        pil.save(tmp, format="PNG")
    return Path(path)
