"""What ``explain`` is given: images (files, folders, Pillow images, arrays) and the classes to show."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .. import images as _images
from ..data.collect import collect_image_files
from ..errors import InputError, UsageError

ImageSource = str | os.PathLike | Image.Image | np.ndarray


@dataclass
class PredictionFields:
    """What image and volume explanations share: the source, its prediction (``logits``, ``probs``), the
    evidence ``maps`` (K×spatial) and the class indices ``classes`` shown."""

    source: str
    name: str
    class_names: list[str]
    logits: np.ndarray
    probs: np.ndarray
    maps: np.ndarray
    classes: list[int]

    @property
    def prediction(self) -> int:
        return int(np.argmax(self.probs))

    @property
    def predicted_class(self) -> str:
        return self.class_names[self.prediction]

    @property
    def probability(self) -> float:
        return float(self.probs[self.prediction])

    def _prediction_dict(self) -> dict[str, Any]:
        """The head of ``to_dict``: source, name, prediction, its probability, all probabilities and logits."""
        return {
            "source": self.source,
            "name": self.name,
            "prediction": self.prediction,
            "predicted_class": self.predicted_class,
            "probability": self.probability,
            "probabilities": {n: float(p) for n, p in zip(self.class_names, self.probs, strict=True)},
            "logits": [float(v) for v in self.logits],
        }


def collect_images(inputs: ImageSource | Iterable[ImageSource]) -> list[ImageSource]:
    """Expand files and folders into a list: a folder's images as
    :func:`softcamify.data.collect.collect_image_files` finds them (recursive, sorted, hidden entries and
    non-images skipped, symlinked folders followed once, never up into a folder above).

    PIL images and uint8 arrays pass through. A missing path, a file that is not an image, or nothing
    found at all is an :class:`InputError`.
    """
    if isinstance(inputs, (str, os.PathLike, Image.Image, np.ndarray)):
        inputs = [inputs]
    out: list[ImageSource] = []
    for item in inputs:
        if isinstance(item, (Image.Image, np.ndarray)):
            out.append(item)
            continue
        p = Path(item)
        if p.is_dir():
            found = collect_image_files(p)
            if not found:
                exts = ", ".join(e[1:] for e in _images.IMAGE_EXTENSIONS)
                raise InputError(f"Folder {p} contains no images ({exts}).")
            out.extend(found)
        elif p.is_file():
            if not _images.is_image_file(p):
                raise InputError(f"{p} is not an image file (expected one of {', '.join(_images.IMAGE_EXTENSIONS)}).")
            out.append(p)
        else:
            raise InputError(f"Image {p} does not exist; check the path.")
    if not out:
        raise InputError("No images were given.")
    unique: list[ImageSource] = []
    seen: set[str] = set()
    for item in out:  # the same file named twice (or inside a folder also given) is explained once
        if isinstance(item, Path):
            key = os.path.realpath(item)
            if key in seen:
                continue
            seen.add(key)
        unique.append(item)
    return unique


def parse_classes(spec: str | int | Sequence[str | int] | None, class_names: Sequence[str]) -> str | list[int]:
    """``"pred"``, ``"all"``, or the class indices of a list of names/indices (``"0,2"``, ``"cat,dog"``).

    Unknown names and out-of-range indices are a :class:`UsageError` naming the model's classes.
    """
    if spec is None:
        return "pred"
    if isinstance(spec, str):
        key = spec.strip()
        if key.lower() in ("pred", "predicted", "top", "top1"):
            return "pred"
        if key.lower() == "all":
            return "all"
        items: list[str | int] = [s.strip() for s in key.split(",")]
    elif isinstance(spec, int):
        items = [spec]
    else:
        items = list(spec)
    names = [str(c) for c in class_names]
    k = len(names)
    out: list[int] = []
    for item in items:
        if isinstance(item, str) and item in names:
            idx = names.index(item)
        elif isinstance(item, (int, np.integer)) or (isinstance(item, str) and re.fullmatch(r"-?\d+", item)):
            idx = int(item)
            if not 0 <= idx < k:
                raise UsageError(
                    f"classes: class index {idx} is out of range; the model has {k} classes (0–{k - 1}).",
                    param="classes",
                )
        else:
            shown = ", ".join(names[:12]) + (", …" if k > 12 else "")
            if item == "":
                raise UsageError(
                    "classes has an empty entry; give pred, all, or comma-separated names or indices.", param="classes"
                )
            raise UsageError(
                f"classes: unknown class {item!r}; the model's classes are {shown} (or indices 0–{k - 1}).",
                param="classes",
            )
        if idx not in out:
            out.append(idx)
    return out


def safe_name(text: str, limit: int = 60) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "image"
    return s[:limit]


def describe(src: ImageSource, i: int) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return f"<image {i}>"


def unique_names(sources: Sequence[ImageSource]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for i, src in enumerate(sources):
        base = safe_name(Path(src).stem) if isinstance(src, (str, os.PathLike)) else f"image_{i:04d}"
        n = seen.get(base, 0)
        seen[base] = n + 1
        names.append(base if n == 0 else f"{base}_{n + 1}")
    # a generated suffix may collide with a real name: make all unique
    taken: set[str] = set()
    out = []
    for nm in names:
        cand, j = nm, 2
        while cand in taken:
            cand, j = f"{nm}_{j}", j + 1
        taken.add(cand)
        out.append(cand)
    return out


def open_source(src: ImageSource, channels: int) -> Image.Image:
    if isinstance(src, Image.Image):
        return _images.to_channels(src, channels)
    if isinstance(src, np.ndarray):
        arr = src[:, :, 0] if src.ndim == 3 and src.shape[2] == 1 else src
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
            raise InputError(f"Image arrays must be uint8 H×W or H×W×C, got {arr.dtype} {arr.shape}.")
        return _images.to_channels(Image.fromarray(arr), channels)
    return _images.open_image(src, channels=channels)


def check_headers(sources: Sequence[ImageSource]) -> None:
    """Fail before writing anything when a file is not an image at all (header check, cheap)."""
    for src in sources:
        if isinstance(src, (str, os.PathLike)):
            _images.original_size(src)
