"""Image reading and timm-compatible eval preprocessing, with numpy and Pillow only.

This module must not import torch: the ONNX deployment path (``softcamify predict model.onnx``) runs
where only onnxruntime, numpy and Pillow are installed. The eval transform here reproduces timm's
``transforms_imagenet_eval`` (resize, center crop, to [0, 1], normalize) on the same Pillow resample
filters torchvision uses for PIL images, so a tensor made here and one made by
``timm.data.create_transform(**data_config, is_training=False)`` agree to float32 rounding.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError, UsageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "is_image_file",
    "open_image",
    "to_channels",
    "original_size",
    "preprocess",
    "preprocess_image",
    "preprocess_batch",
    "resize_crop",
    "load_mask",
    "mask_to_input",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
    ".webp",
    ".gif",
    ".ppm",
    ".pgm",
)

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875

_PIL_INTERP = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}

PathLike = Union[str, os.PathLike]
ImageLike = Union[PathLike, Image.Image, np.ndarray]


def is_image_file(path: PathLike) -> bool:
    """True when ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive) and is not hidden."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _check_channels(channels: int) -> int:
    if channels not in (1, 3):
        raise UsageError(f"channels={channels} is not supported; use 1 (grayscale) or 3 (RGB).")
    return channels


def _int_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16/32-bit integer or float image to 8 bits by its dtype's range (never clipped).

    * ``I;16*`` (uint16): 0..65535 -> 0..255.
    * ``I`` (int32): a 16-bit image stored as int32 (all values in 0..65535, the usual case for
      16-bit PNG/TIFF) is scaled as 16-bit; anything else by the full int32 range.
    * ``F`` (float32): values in [0, 1] are scaled by 255, values in [0, 255] kept, anything else
      min-max scaled (a float image has no fixed range).
    """
    a = arr.astype(np.float64)
    if mode.startswith("I;16"):
        out = a / 257.0
    elif mode == "I":
        if a.size == 0 or (a.min() >= 0 and a.max() <= 65535):
            out = a / 257.0
        else:
            out = (a - np.iinfo(np.int32).min) / (2.0**32 - 1) * 255.0
    else:  # 'F'
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            out = a * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            out = a
        else:
            out = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    return np.rint(out).astype(np.uint8)


def _composite_on_black(img: Image.Image) -> Image.Image:
    """RGBA (or anything with alpha) -> RGB composited onto black."""
    rgba = img.convert("RGBA")
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, rgba).convert("RGB")


def to_channels(img: Image.Image, channels: int = 3) -> Image.Image:
    """Convert a loaded Pillow image of any mode to 'L' (``channels=1``) or 'RGB' (``channels=3``)."""
    _check_channels(channels)
    mode = img.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        img = Image.fromarray(_int_to_uint8(np.asarray(img), mode), mode="L")
    elif mode == "1":
        img = img.convert("L")
    elif mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        img = _composite_on_black(img)
    elif img.mode not in ("L", "RGB"):  # CMYK, YCbCr, LAB, HSV, ...
        img = img.convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


@contextmanager
def _decoded(p: Path) -> Iterator[Image.Image]:
    """The first frame of image file ``p``, fully decoded and EXIF-oriented (malformed EXIF: as stored).

    Pillow's decompression-bomb limit is an error here (the warning too), and the file stays open until
    the block ends; :func:`open_image` and :func:`load_mask` read every image file through this.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(p) as im:
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()
            try:
                oriented = ImageOps.exif_transpose(im)
            except Exception:  # malformed EXIF: keep the pixels as stored
                oriented = im
            yield oriented


def open_image(path: PathLike, channels: int = 3) -> Image.Image:
    """Read an image file fully and return it as 'L' (``channels=1``) or 'RGB' (``channels=3``).

    The whole file is decoded here (truncation and corruption surface as :class:`InputError`, never
    later in a DataLoader worker). EXIF orientation is applied, animated images give their first
    frame, and Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) stays active: images
    above it are refused rather than decoded. See :func:`to_channels` for the mode conversions.
    """
    _check_channels(channels)
    p = Path(path)
    if not p.exists():
        raise InputError(f"Image {p} does not exist; check the path.")
    if p.is_dir():
        raise InputError(f"Image path {p} is a folder, not an image file.")
    try:
        if p.stat().st_size == 0:
            raise InputError(f"Image {p} is empty (0 bytes); re-export it or remove it.")
    except OSError as e:
        raise InputError(f"Image {p} cannot be read: {e.strerror or e}.") from e
    try:
        with _decoded(p) as im:
            return to_channels(im, channels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(
            f"Image {p} has more pixels than Pillow's safety limit ({Image.MAX_IMAGE_PIXELS}); "
            "downscale it first (it may be a decompression bomb)."
        ) from e
    except UnidentifiedImageError as e:
        raise InputError(f"File {p} is not an image that Pillow can read; remove it or convert it.") from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        raise InputError(f"Image {p} is truncated or corrupt ({e}); re-export it or remove it.") from e


def original_size(path: PathLike) -> tuple[int, int]:
    """(height, width) of the image at ``path`` as :func:`open_image` returns it (EXIF-rotated).

    Reads only the header: cheap, for placing overlays at the original resolution.
    """
    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                try:
                    orientation = im.getexif().get(0x0112, 1)
                except Exception:
                    orientation = 1
    except FileNotFoundError as e:
        raise InputError(f"Image {p} does not exist; check the path.") from e
    except IsADirectoryError as e:
        raise InputError(f"Image path {p} is a folder, not an image file.") from e
    except Image.DecompressionBombError as e:
        raise InputError(f"Image {p} has more pixels than Pillow's safety limit; downscale it first.") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"File {p} is not an image that Pillow can read; remove it or convert it.") from e
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def _as_size(input_size: int | Sequence[int]) -> tuple[int, int]:
    """224 -> (224, 224); (H, W) -> (H, W); (C, H, W) -> (H, W)."""
    if isinstance(input_size, (int, np.integer)):
        size = (int(input_size), int(input_size))
    else:
        seq = tuple(int(x) for x in input_size)
        if len(seq) == 3:
            seq = seq[1:]
        elif len(seq) == 1:
            seq = seq * 2
        if len(seq) != 2:
            raise UsageError(f"input_size {tuple(input_size)} is not H, (H, W) or (C, H, W).")
        size = (seq[0], seq[1])
    if min(size) < 1:
        raise UsageError(f"input_size {size} must be positive.")
    return size


def _interp(interpolation: str) -> Image.Resampling:
    try:
        return _PIL_INTERP[interpolation]
    except KeyError:
        raise UsageError(f"interpolation {interpolation!r} is not one of {', '.join(_PIL_INTERP)}.") from None


def _resize_shape(img_hw: tuple[int, int], input_size: tuple[int, int], crop_pct: float, crop_mode: str):
    """Output (H, W) of the resize step of timm's ``transforms_imagenet_eval``."""
    img_h, img_w = img_hw
    scale_h, scale_w = (math.floor(x / crop_pct) for x in input_size)
    if crop_mode == "squash":
        return scale_h, scale_w
    if crop_mode == "border":  # ResizeKeepRatio(longest=1.0)
        ratio = max(img_h / scale_h, img_w / scale_w)
        return round(img_h / ratio), round(img_w / ratio)
    if scale_h == scale_w:  # torchvision Resize(int): shorter side to scale, longer truncated
        s = scale_h
        if img_w <= img_h:
            return int(s * img_h / img_w), s
        return s, int(s * img_w / img_h)
    ratio = min(img_h / scale_h, img_w / scale_w)  # ResizeKeepRatio(longest=0.)
    return round(img_h / ratio), round(img_w / ratio)


def _center_crop_or_pad(arr: np.ndarray, size: tuple[int, int], fill: Sequence[int] | int = 0) -> np.ndarray:
    """torchvision ``center_crop`` on an H x W x C uint8 array (pads with ``fill`` when too small)."""
    crop_h, crop_w = size
    h, w = arr.shape[:2]
    if crop_w > w or crop_h > h:
        left = (crop_w - w) // 2 if crop_w > w else 0
        top = (crop_h - h) // 2 if crop_h > h else 0
        right = (crop_w - w + 1) // 2 if crop_w > w else 0
        bottom = (crop_h - h + 1) // 2 if crop_h > h else 0
        padded = np.empty((h + top + bottom, w + left + right, arr.shape[2]), dtype=arr.dtype)
        padded[...] = np.asarray(fill, dtype=arr.dtype).reshape(1, 1, -1)
        padded[top : top + h, left : left + w] = arr
        arr = padded
        h, w = arr.shape[:2]
        if (h, w) == (crop_h, crop_w):
            return arr
    top = int(round((h - crop_h) / 2.0))
    left = int(round((w - crop_w) / 2.0))
    return arr[top : top + crop_h, left : left + crop_w]


def resize_crop(
    img: Image.Image,
    input_size: int | Sequence[int],
    interpolation: str = "bicubic",
    crop_pct: float | None = DEFAULT_CROP_PCT,
    crop_mode: str | None = "center",
    fill: Sequence[int] | int = 0,
) -> np.ndarray:
    """The geometric part of timm's eval transform: resize then center crop, as H x W x C uint8.

    ``crop_mode`` is one of 'center' (default; shorter side to ``floor(size / crop_pct)``, then crop),
    'squash' (both sides to ``floor(size / crop_pct)``) or 'border' (longer side fitted, padded with
    ``fill``), exactly as ``timm.data.transforms_factory.transforms_imagenet_eval``.
    """
    size = _as_size(input_size)
    crop_pct = crop_pct or DEFAULT_CROP_PCT
    crop_mode = crop_mode or "center"
    if crop_mode not in ("center", "squash", "border"):
        raise UsageError(f"crop_mode {crop_mode!r} is not one of center, squash, border.")
    new_h, new_w = _resize_shape((img.height, img.width), size, crop_pct, crop_mode)
    if (new_h, new_w) != (img.height, img.width):
        img = img.resize((new_w, new_h), _interp(interpolation))
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return _center_crop_or_pad(arr, size, fill=fill if crop_mode == "border" else 0)


def _to_pil(img_or_path: ImageLike, channels: int) -> Image.Image:
    if isinstance(img_or_path, Image.Image):
        return to_channels(img_or_path, channels)
    if isinstance(img_or_path, np.ndarray):
        arr = img_or_path
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.dtype != np.uint8:
            raise UsageError(f"image arrays must be uint8 H x W (x C), got dtype {arr.dtype}.")
        return to_channels(Image.fromarray(arr), channels)
    return open_image(img_or_path, channels=channels)


def _norm_stats(values: Sequence[float], channels: int, name: str) -> np.ndarray:
    vals = [float(v) for v in np.atleast_1d(np.asarray(values, dtype=np.float64))]
    if len(vals) == channels:
        pass
    elif len(vals) == 1:
        vals = vals * channels
    elif len(vals) == 3 and channels == 1:  # an RGB data config on a grayscale model
        vals = [sum(vals) / 3.0]
    else:
        raise UsageError(f"{name} has {len(vals)} values but the model takes {channels} channel(s).")
    return np.asarray(vals, dtype=np.float32).reshape(-1, 1, 1)


def preprocess_image(
    img: Image.Image,
    input_size: int | Sequence[int] = (224, 224),
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    interpolation: str = "bicubic",
    crop_pct: float | None = DEFAULT_CROP_PCT,
    crop_mode: str | None = "center",
    channels: int = 3,
) -> np.ndarray:
    """:func:`preprocess` for an image already converted to ``channels`` (the DataLoader path)."""
    fill: Sequence[int] = [round(255 * float(v)) for v in np.atleast_1d(np.asarray(mean, dtype=np.float64))]
    if len(fill) != channels:
        fill = [int(round(sum(fill) / len(fill)))] * channels
    arr = resize_crop(img, input_size, interpolation, crop_pct, crop_mode, fill=fill)
    x = np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32) / np.float32(255)
    # same float32 operations, in the same order, as torchvision's ToTensor + Normalize
    x -= _norm_stats(mean, x.shape[0], "mean")
    x /= _norm_stats(std, x.shape[0], "std")
    return x


def preprocess(
    img_or_path: ImageLike,
    input_size: int | Sequence[int] = (224, 224),
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    interpolation: str = "bicubic",
    crop_pct: float | None = DEFAULT_CROP_PCT,
    crop_mode: str | None = "center",
    channels: int = 3,
) -> np.ndarray:
    """timm's eval transform without torch: a float32 C x H x W array ready for the model.

    Equivalent to ``timm.data.create_transform(input_size, interpolation=..., mean=..., std=...,
    crop_pct=..., crop_mode=..., is_training=False)`` applied to ``open_image(path, channels)``:
    the shorter side is resized to ``floor(size / crop_pct)`` (per side for non-square sizes, as
    timm's ``ResizeKeepRatio``), center cropped to ``input_size``, scaled to [0, 1] and normalized.

    Args:
        img_or_path: Image file, Pillow image (any mode) or uint8 H x W (x C) array.
        input_size: H, (H, W) or timm's (C, H, W).
        mean, std: Normalization per channel (a single value is broadcast).
        interpolation: Resize filter, e.g. 'bicubic', 'bilinear', 'nearest'.
        crop_pct: Crop fraction (0.875 when None); 1.0 resizes straight to the input size's scale.
        crop_mode: 'center' (default), 'squash' or 'border'.
        channels: 1 (grayscale 'L') or 3 (RGB).
    """
    _check_channels(channels)
    img = _to_pil(img_or_path, channels)
    return preprocess_image(img, input_size, mean, std, interpolation, crop_pct, crop_mode, channels)


def preprocess_batch(paths: Sequence[ImageLike], **kwargs) -> np.ndarray:
    """:func:`preprocess` each image and stack them into one float32 N x C x H x W array."""
    arrays = [preprocess(p, **kwargs) for p in paths]
    if not arrays:
        size = _as_size(kwargs.get("input_size", (224, 224)))
        return np.zeros((0, kwargs.get("channels", 3), *size), dtype=np.float32)
    return np.stack(arrays, axis=0)


def load_mask(path: PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a segmentation mask as a bool H x W array: any nonzero pixel is foreground.

    Colour masks count a pixel as foreground when any colour channel is nonzero (and, with an alpha
    channel, when it is not fully transparent). EXIF orientation is applied, as for images. With
    ``size=(H, W)`` the mask is resized with nearest-neighbour sampling.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"Mask {p} does not exist or is not a file; check masks.", param="masks")
    try:
        with _decoded(p) as im:
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA")
            elif im.mode in ("La", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGBA" if im.mode in ("La", "RGBa") else "RGB")
            arr = np.asarray(im)
            mode = im.mode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"Mask {p} has more pixels than Pillow's safety limit; downscale it first.") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(f"Mask {p} is not a readable image ({e}); re-export it or remove it.") from e
    if arr.ndim == 2:
        fg = arr != 0
    elif mode in ("LA", "RGBA"):
        fg = np.any(arr[..., :-1] != 0, axis=-1) & (arr[..., -1] != 0)
    else:
        fg = np.any(arr != 0, axis=-1)
    if size is not None:
        h, w = _as_size(size)
        if fg.shape != (h, w):
            m = Image.fromarray(fg.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)
            fg = np.asarray(m) > 0
    return fg


def mask_to_input(
    mask: np.ndarray | PathLike,
    input_size: int | Sequence[int],
    crop_pct: float | None = DEFAULT_CROP_PCT,
    crop_mode: str | None = "center",
) -> np.ndarray:
    """Apply the geometry of :func:`preprocess` to a mask (nearest resize, same crop): bool H x W.

    The result is aligned pixel for pixel with the model input made from the matching image, which is
    what evidence maps (upsampled to the input size) are compared against.
    """
    fg = load_mask(mask) if not isinstance(mask, np.ndarray) else mask.astype(bool)
    img = Image.fromarray(fg.astype(np.uint8) * 255)
    arr = resize_crop(img, input_size, "nearest", crop_pct, crop_mode, fill=0)
    return arr[:, :, 0] > 0
