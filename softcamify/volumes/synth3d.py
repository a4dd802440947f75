"""A synthetic CT-like lesion dataset of volumes with exact lesion masks (``softcamify datasets synth3d``).

Each volume is a textured, ellipsoidal "body" of soft tissue (about 40 HU, low-frequency texture and noise)
in air (-1000 HU), with two fixed bright "organs" in every class. The classes differ only by small
ellipsoidal lesions, brighter than the tissue around them:

* ``healthy``: none (an all-zero mask);
* ``lesion``: one to three lesions inside the body.

The layout is the one of ``softcamify datasets synth`` (:mod:`softcamify.data.synth`), so the same discovery
reads it::

    OUT/{train,val,test}/<class>/<id>.nii.gz          volumes (int16, HU), or .npy with format='npy'
    OUT/masks/{train,val,test}/<class>/<id>.nii.gz    lesion masks (uint8, 1 = lesion)
    OUT/manifest.json                                 seed, options, geometry, per-volume lesions

NIfTI files carry a non-trivial affine (``spacing`` mm voxels, the volume centred on the world origin), so
geometry round trips mean something. Every volume has its own ``numpy.random.Generator(PCG64)`` seeded with
``(seed, index)``; the files are byte-identical for a seed (gzip without a time stamp). Torch-free.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import OutputError, UsageError
from ..io import check_output_dir, make_output_dir, write_bytes_atomic, write_text_atomic
from .io import require_nibabel
from .preprocess import resample

__all__ = [
    "make_volumes",
    "synth_volume",
    "volume_bytes",
    "CLASSES",
    "GENERATOR_NAME",
    "FORMATS",
    "DEFAULT_SPACING",
]

GENERATOR_NAME = "softcamify.volumes.synth3d"
CLASSES = ("healthy", "lesion")
SPLITS = ("train", "val", "test")
FORMATS = ("nii", "npy")
DEFAULT_SPACING = (1.5, 1.5, 1.5)
MIN_SIDE, MAX_SIDE = 16, 256
AIR, TISSUE, ORGAN, LESION = -1000.0, 40.0, 160.0, 200.0  # HU


def _check_options(n: int, shape: Sequence[int], fmt: str, contrast: float, splits: Sequence[float]) -> tuple:
    shp = tuple(int(s) for s in shape)
    if len(shp) != 3 or any(s < MIN_SIDE or s > MAX_SIDE for s in shp):
        raise UsageError(
            f"shape {tuple(shape)} must be three sides (D,H,W) between {MIN_SIDE} and {MAX_SIDE} voxels.",
            param="shape",
        )
    if n < len(CLASSES):
        raise UsageError(f"n {n} is below the number of classes ({len(CLASSES)}); ask for more volumes.", param="n")
    if fmt not in FORMATS:
        raise UsageError(f"fmt {fmt!r} is not one of {', '.join(FORMATS)}.", param="fmt")
    if not contrast > 0:
        raise UsageError(f"contrast {contrast} must be positive (1.0 is the default).", param="contrast")
    if len(splits) != 3 or min(splits) < 0 or splits[0] <= 0 or abs(sum(splits) - 1.0) > 1e-6:
        raise UsageError(
            f"splits {tuple(splits)} must be three non-negative fractions (train > 0) summing to 1.", param="splits"
        )
    return shp


def affine_for(shape: Sequence[int], spacing: Sequence[float] = DEFAULT_SPACING) -> np.ndarray:
    """The synthetic volumes' affine: ``spacing`` mm voxels along R, A, S, the volume centred on the origin."""
    aff = np.eye(4)
    aff[:3, :3] = np.diag([float(s) for s in spacing])
    aff[:3, 3] = [-(n - 1) * s / 2.0 for n, s in zip(shape, spacing, strict=True)]
    return aff


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates in [-1, 1] along each axis (broadcastable)."""
    axes = [((np.arange(n) + 0.5) / n * 2.0 - 1.0) for n in shape]
    return (
        axes[0][:, None, None],
        axes[1][None, :, None],
        axes[2][None, None, :],
    )


def _ellipsoid(shape: tuple[int, int, int], center: Any, radii: Any) -> np.ndarray:
    z, y, x = _grid(shape)
    d = ((z - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 + ((x - center[2]) / radii[2]) ** 2
    return np.asarray(d <= 1.0)


def synth_volume(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    n_lesions: int,
    contrast: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """One volume: (int16 HU array ``D×H×W``, uint8 mask, lesions as ``{center, radii}`` in voxels)."""
    body_r = (0.78, 0.70, 0.82)
    body = _ellipsoid(shape, (0.0, 0.0, 0.0), body_r)
    coarse = rng.normal(size=tuple(max(2, s // 6) for s in shape))
    texture = resample(coarse, shape).astype(np.float64)
    vol = np.where(body, TISSUE + 25.0 * texture, AIR)
    organs = np.zeros(shape, dtype=bool)
    for c in ((0.1, -0.35, 0.3), (-0.2, 0.3, -0.35)):  # two "organs" every class has
        organs |= _ellipsoid(shape, c, (0.18, 0.14, 0.16))
    vol[organs] = ORGAN
    mask = np.zeros(shape, dtype=bool)
    lesions: list[dict[str, Any]] = []
    tries = 0
    while len(lesions) < n_lesions and tries < 200:
        tries += 1
        radii = rng.uniform(0.10, 0.18, size=3)
        center = rng.uniform(-0.5, 0.5, size=3)
        if np.sum((center / np.array(body_r)) ** 2) > 0.45:  # well inside the body
            continue
        blob = _ellipsoid(shape, center, radii)
        if not blob.any() or (blob & (mask | organs)).any():
            continue
        mask |= blob
        vol[blob] = TISSUE + (LESION - TISSUE) * contrast + 10.0 * texture[blob]
        lesions.append(
            {
                "center": [round(float((c + 1.0) / 2.0 * n - 0.5), 3) for c, n in zip(center, shape, strict=True)],
                "radii": [round(float(r / 2.0 * n), 3) for r, n in zip(radii, shape, strict=True)],
                "voxels": int(blob.sum()),
            }
        )
    vol = vol + rng.normal(scale=8.0, size=shape) * body
    return np.round(vol).astype(np.int16), mask.astype(np.uint8), lesions


def volume_bytes(array: np.ndarray, fmt: str, affine: np.ndarray | None = None) -> bytes:
    """A volume file's bytes: ``nii`` (gzipped NIfTI-1 with ``affine``, no time stamp: reproducible) or
    ``npy``."""
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        return buf.getvalue()
    nib = require_nibabel()
    img = nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine)
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _remove_previous(out: Path) -> None:
    """With ``force``: delete the files a previous synth3d run listed in its manifest (nothing else)."""
    try:
        old = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(old, dict) or old.get("generator") != GENERATOR_NAME:
        return
    root = out.resolve()
    for item in old.get("volumes", []):
        for key in ("path", "mask"):
            rel = item.get(key) if isinstance(item, dict) else None
            if not isinstance(rel, str):
                continue
            p = (out / rel).resolve()
            if root in p.parents and p.is_file():
                p.unlink()


def _counts(n: int, splits: Sequence[float]) -> list[tuple[str, str]]:
    """(class, split) per volume: classes balanced, each class split train / val / test in order."""
    plan: list[tuple[str, str]] = []
    per_class = [n // len(CLASSES) + (1 if i < n % len(CLASSES) else 0) for i in range(len(CLASSES))]
    for name, k in zip(CLASSES, per_class, strict=True):
        n_train = max(1, int(round(k * splits[0])))
        n_val = int(round(k * splits[1]))
        for j in range(k):
            split = "train" if j < n_train else "val" if j < n_train + n_val else "test"
            plan.append((name, split))
    return plan


def make_volumes(
    out_dir: str | os.PathLike,
    n: int = 60,
    shape: Sequence[int] = (32, 32, 32),
    seed: int = 0,
    fmt: str | None = None,
    contrast: float = 1.0,
    spacing: Sequence[float] = DEFAULT_SPACING,
    splits: Sequence[float] = (0.6, 0.2, 0.2),
    force: bool = False,
) -> dict[str, Any]:
    """Write the synthetic volume dataset to ``out_dir`` and return its manifest.

    Args:
        n: Number of volumes (classes balanced, each split 60/20/20 into train/val/test).
        shape: ``(D, H, W)`` voxels, each side 16 to 256.
        seed: Same seed, byte-identical files.
        fmt: ``'nii'`` (``.nii.gz``, needs nibabel) or ``'npy'``; None: ``nii`` when nibabel is installed.
        contrast: Lesion contrast factor (below 1: harder).
        spacing: Voxel size in mm, recorded in the NIfTI affine (and the manifest).
        force: Write into a non-empty folder (files a previous synth3d manifest lists are removed first).

    The caller wraps it in :func:`softcamify.io.cleanup_on_failure` for a failure to leave nothing behind
    (the CLI does).
    """
    if fmt is None:
        try:
            import nibabel  # noqa: F401
        except ImportError:
            fmt = "npy"
        else:
            fmt = "nii"
    shp = _check_options(n, shape, fmt, contrast, splits)
    out = check_output_dir(out_dir, force=force)
    if fmt == "nii":
        require_nibabel()  # the extra's message before any file is written
    if force:
        _remove_previous(out)
    make_output_dir(out)
    if (out / "manifest.json").exists() and not force:
        raise OutputError(f"Output {out / 'manifest.json'} already exists; pass force to overwrite it.", param="force")
    affine = affine_for(shp, spacing)
    ext = ".nii.gz" if fmt == "nii" else ".npy"
    items: list[dict[str, Any]] = []
    counts = {s: dict.fromkeys(CLASSES, 0) for s in SPLITS}
    for i, (name, split) in enumerate(_counts(n, splits)):
        rng = np.random.Generator(np.random.PCG64([seed, i]))
        n_lesions = 0 if name == "healthy" else int(rng.integers(1, 4))
        vol, mask, lesions = synth_volume(rng, shp, n_lesions, contrast)
        vid = f"{name}_{i:05d}"
        rel = f"{split}/{name}/{vid}{ext}"
        mrel = f"masks/{split}/{name}/{vid}{ext}"
        for r, arr in ((rel, vol), (mrel, mask)):
            make_output_dir((out / r).parent)
            write_bytes_atomic(out / r, volume_bytes(arr, fmt, affine), force=force)
        counts[split][name] += 1
        items.append({"id": vid, "split": split, "class": name, "path": rel, "mask": mrel, "lesions": lesions})
    manifest: dict[str, Any] = {
        "generator": GENERATOR_NAME,
        "version": __version__,
        "seed": seed,
        "n": n,
        "shape": list(shp),
        "spacing": [float(s) for s in spacing],
        "affine": affine.tolist(),
        "format": fmt,
        "classes": list(CLASSES),
        "options": {"contrast": contrast, "splits": list(splits)},
        "counts": counts,
        "volumes": items,
    }
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=1) + "\n", force=True)
    return manifest
