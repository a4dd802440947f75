"""The image region a model sees, at the original resolution: what overlays are drawn on."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

from .. import images as _images


def input_view(img: Image.Image, data_config: dict[str, Any], min_side: int = 224, max_side: int = 1024) -> Image.Image:
    """The part of ``img`` the model's eval transform keeps, as RGB, at (about) the original resolution.

    The resize + center crop of the eval transform is undone: the crop box is mapped back to the
    original image (in float pixel coordinates, not rounded) and that exact region is resampled, so
    overlays are sharp and aligned with the maps. The view has the model input's aspect ratio (a square
    input gives a square view, whatever the rounding of the resize), except with ``crop_mode='squash'``,
    where the squash is undone and the region keeps its own aspect ratio. The longer side is then scaled
    into ``[min_side, max_side]``. When the transform pads (``crop_mode='border'`` or a crop larger than
    the resized image) the model's own input (resized, padded) is returned instead.
    """
    c, in_h, in_w = (int(v) for v in data_config["input_size"])
    crop_pct = data_config.get("crop_pct") or _images.DEFAULT_CROP_PCT
    crop_mode = data_config.get("crop_mode") or "center"
    interpolation = data_config.get("interpolation") or "bicubic"
    rgb = img.convert("RGB")
    new_h, new_w = _images._resize_shape((rgb.height, rgb.width), (in_h, in_w), crop_pct, crop_mode)
    if crop_mode == "border" or new_h < in_h or new_w < in_w:
        arr = _images.resize_crop(rgb, (in_h, in_w), interpolation, crop_pct, crop_mode)
        source = Image.fromarray(arr if arr.shape[-1] == 3 else np.repeat(arr, 3, axis=-1))
        box: tuple[float, float, float, float] | None = None
        region_w, region_h = float(in_w), float(in_h)
    else:
        # the crop of the resized image (as _images._center_crop_or_pad cuts it), in original pixels
        top = int(round((new_h - in_h) / 2.0))
        left = int(round((new_w - in_w) / 2.0))
        sy, sx = rgb.height / new_h, rgb.width / new_w
        box = (left * sx, top * sy, (left + in_w) * sx, (top + in_h) * sy)
        source = rgb
        region_w, region_h = box[2] - box[0], box[3] - box[1]
    # aspect ratio of the view: the model input's. The aspect-preserving resize truncates one side to an
    # integer, so the region is a fraction of a percent off square; cutting it as is (or rounding its
    # edges one by one) stretched the square maps. 'squash' undoes its deliberate stretch instead.
    aspect_w, aspect_h = (region_w, region_h) if crop_mode == "squash" and box is not None else (in_w, in_h)
    long_side = max(region_w, region_h)
    target = min(max(long_side, min_side), max_side)
    f = target / max(aspect_w, aspect_h)
    size = (max(1, round(aspect_w * f)), max(1, round(aspect_h * f)))
    if box is None:
        return source if size == source.size else source.resize(size, Image.Resampling.BICUBIC)
    # cut the pixels the region touches first, so that resampling never blends in what lies beyond them
    outer = (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3]))
    cut = source.crop(outer)
    inner = (box[0] - outer[0], box[1] - outer[1], box[2] - outer[0], box[3] - outer[1])
    if size == cut.size and inner == (0, 0, *cut.size):
        return cut  # the exact pixels, no resampling
    return cut.resize(size, Image.Resampling.BICUBIC, box=inner)
