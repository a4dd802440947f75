"""The one image collector: the image files under a folder, for every consumer.

Dataset discovery (class folders), ``predict`` / ``explain`` inputs and ``convert --calibration`` all walk
folders with :func:`collect_image_files`, so they agree on which files a folder holds. Torch-free
(the ONNX path uses it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..images import is_image_file
from ..volumes.io import is_volume_file

__all__ = ["collect_image_files"]


def _is_ancestor(candidate: str, real: str) -> bool:
    """True when the real path ``candidate`` is ``real`` or a folder above it."""
    return real == candidate or real.startswith(candidate.rstrip(os.sep) + os.sep)


def collect_image_files(
    folder: str | os.PathLike,
    skipped: list[tuple[Path, str]] | None = None,
    volumes: bool = False,
) -> list[Path]:
    """Image files under ``folder``: recursive, in walk order, one rule for hidden entries and symlinks.

    With ``volumes`` the files collected are volumes instead (:func:`softcamify.volumes.is_volume_file`:
    ``.nii``, ``.nii.gz``, ``.npy``, ``.npz``), by the same rule.

    The rule:

    * Order: a folder's own image files (sorted by name) come first, then each subfolder's (sorted by
      name), depth first. Paths are under ``folder`` as given (symlinks are not resolved).
    * Hidden files and folders (names starting with ``.``) and files without an image extension
      (:func:`softcamify.images.is_image_file`) are ignored.
    * Symlinked files count like files. Symlinked folders are followed, each real folder once: a folder
      whose real path was already visited is not entered again, and a link to the folder itself or a
      folder above it (``up -> ..``, a loop) is not entered at all. So symlink loops end and a link up
      to the dataset root never pulls a sibling class's images into a class.
    * Unusable files (broken links, unreadable or empty files): with a ``skipped`` list they are left out
      and appended to it as ``(path, reason)`` (dataset discovery reports them); without one (the default)
      they are returned like the others, so the reader that opens them reports the file.

    An unlistable or missing ``folder`` gives an empty list; the caller says what it expected.
    """
    wanted = is_volume_file if volumes else is_image_file
    found: list[Path] = []
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(os.fspath(folder), followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and not _is_ancestor(os.path.realpath(os.path.join(dirpath, d)), real)
        )
        for name in sorted(filenames):
            if not wanted(name):
                continue
            p = Path(dirpath) / name
            if skipped is not None:
                reason = _unusable(p)
                if reason:
                    skipped.append((p, reason))
                    continue
            found.append(p)
    return found


def _unusable(path: Path) -> str:
    """Why ``path`` cannot be an image ('' when it may be one: decoding is the reader's job)."""
    try:
        st = path.stat()
    except OSError:
        return "broken link or unreadable"
    return "empty file" if st.st_size == 0 else ""


def calibration_images(folder: str | os.PathLike, data_config: dict[str, Any], limit: int = 64) -> np.ndarray:
    """The first ``limit`` images of a calibration folder (by path), preprocessed as ``data_config`` says:
    N×C×H×W float32. Not a folder, no images, or a volume model's ``data_config`` is an error naming
    ``calibration``."""
    from ..errors import InputError, UsageError
    from ..images import preprocess_batch

    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"calibration {root} is not a folder of images.", param="calibration")
    if len(data_config["input_size"]) != 3:
        raise UsageError(
            "calibration takes images; a volume model is verified on random volumes: drop calibration.",
            param="calibration",
        )
    # sorted by path (not walk order) so the same `limit` images are used as before; broken links left out
    paths = sorted(p for p in collect_image_files(root) if p.is_file())
    if not paths:
        raise InputError(f"calibration {root} contains no images.", param="calibration")
    c, h, w = data_config["input_size"]
    return preprocess_batch(
        paths[:limit],
        input_size=(h, w),
        mean=data_config["mean"],
        std=data_config["std"],
        interpolation=data_config["interpolation"],
        crop_pct=data_config["crop_pct"],
        crop_mode=data_config.get("crop_mode", "center"),
        channels=c,
    )
