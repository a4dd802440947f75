"""Faithfulness: deletion and insertion curves (Petsiuk et al. 2018; SoftCAM's AUDC), which need the model
(a ``predict_fn`` from images to class probabilities); many images and both modes in one batched call.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ...errors import InputError, UsageError
from .mapops import _as_map, gaussian_blur, upsample

__all__ = ["Baseline", "DeletionMode", "deletion_insertion", "deletion_insertion_batch"]

Baseline = float | str | np.ndarray
DeletionMode = Literal["deletion", "insertion"]


@dataclass
class _Curve:
    """One deletion/insertion curve to compute: the image, its baseline and each pixel's tile rank."""

    img: np.ndarray  # C×H×W float32
    base: np.ndarray  # C×H×W float32, or a float32 scalar (0-d)
    pixel_rank: np.ndarray  # H×W: position of each pixel's tile in the ranking
    counts: np.ndarray  # tiles perturbed at each step (steps + 1 values)
    fractions: np.ndarray  # fraction of pixels perturbed at each step
    target: int
    deletion: bool

    def perturbed(self, c: int) -> np.ndarray:
        sel = (self.pixel_rank < c)[None]
        return np.where(sel, self.base, self.img) if self.deletion else np.where(sel, self.img, self.base)


def _prepare_curve(
    image: Any,
    saliency: Any,
    target: int,
    steps: int,
    patch: int,
    baseline: Baseline,
    mode: str,
    patch_score: str,
    blur_sigma: float,
) -> _Curve:
    if mode not in ("deletion", "insertion"):
        raise UsageError(f"mode must be 'deletion' or 'insertion', got {mode!r}.")
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3:
        raise InputError(f"The image must be a C×H×W array, got shape {img.shape}.")
    if not np.all(np.isfinite(img)):
        raise InputError("The image contains NaN or infinite values.")
    _, height, width = img.shape
    sal = upsample(_as_map(saliency), (height, width))

    base: np.ndarray
    if isinstance(baseline, str):
        if baseline != "blur":
            raise UsageError(f"baseline must be a number, 'blur' or an array, got {baseline!r}.")
        base = gaussian_blur(img, blur_sigma)
    elif isinstance(baseline, numbers.Real):
        base = np.asarray(float(baseline), dtype=np.float32)  # broadcast by np.where: no full-size copy
    else:
        base = np.broadcast_to(np.asarray(baseline, dtype=np.float32), img.shape).copy()

    # Tile ids and scores.
    ny, nx = -(-height // patch), -(-width // patch)
    tile_id = (np.arange(height)[:, None] // patch) * nx + (np.arange(width)[None, :] // patch)
    n_tiles = ny * nx
    if patch == 1:
        tile_score = sal.ravel()
    else:
        pad_h, pad_w = ny * patch - height, nx * patch - width
        fill = -np.inf if patch_score == "max" else np.nan
        padded = np.pad(sal, ((0, pad_h), (0, pad_w)), constant_values=fill)
        blocks = padded.reshape(ny, patch, nx, patch)
        tile_score = (blocks.max(axis=(1, 3)) if patch_score == "max" else np.nanmean(blocks, axis=(1, 3))).ravel()
    order = np.argsort(-tile_score, kind="stable")
    rank = np.empty(n_tiles, dtype=np.int64)
    rank[order] = np.arange(n_tiles)
    pixel_rank = rank[tile_id]

    n_steps = min(steps, n_tiles)
    counts = np.round(np.linspace(0, n_tiles, n_steps + 1)).astype(np.int64)
    fractions = np.array([np.mean(pixel_rank < c) for c in counts], dtype=np.float64)
    return _Curve(img, base, pixel_rank, counts, fractions, int(target), mode == "deletion")


def deletion_insertion_batch(
    predict_fn: Callable[[np.ndarray], Any],
    images: Any,
    saliencies: Sequence[Any],
    targets: Sequence[int],
    steps: int = 20,
    patch: int = 16,
    baseline: Baseline | Sequence[Baseline] = 0.0,
    mode: DeletionMode | Sequence[DeletionMode] = "deletion",
    batch_size: int = 128,
    patch_score: Literal["max", "mean"] = "max",
    blur_sigma: float = 5.0,
) -> list[tuple[float, np.ndarray]]:
    """:func:`deletion_insertion` for many images at once: the same ``(auc, curve)`` per image, in order.

    Curve ``i`` perturbs ``images[i]`` (an N×C×H×W array or a sequence of C×H×W arrays of one shape) in the
    order of ``saliencies[i]`` and reads the probability of ``targets[i]``. ``mode`` and ``baseline`` are
    one value for every curve or a list/tuple with one value per image (a numpy array is one C×H×W
    baseline shared by all); so the deletion and the insertion curves of a set of images go in one call
    by listing each image twice. The perturbed inputs of all curves are streamed through ``predict_fn`` in
    chunks of ``batch_size`` (images of different curves share a chunk), so the model sees few large
    batches while at most ``batch_size`` perturbed inputs exist at a time. Each curve's values are those
    of :func:`deletion_insertion` (up to the model's own batch-size-dependent rounding).
    """
    if patch_score not in ("max", "mean"):
        raise UsageError(f"patch_score must be 'max' or 'mean', got {patch_score!r}.")
    if steps < 1 or patch < 1 or batch_size < 1:
        raise UsageError(f"steps, patch and batch_size must be positive, got {steps}, {patch}, {batch_size}.")
    imgs = list(images)
    sals = list(saliencies)
    tgts = [int(t) for t in targets]
    n = len(imgs)
    if len(sals) != n or len(tgts) != n:
        raise UsageError(
            f"images, saliencies and targets must have one entry per image, got {n}, {len(sals)} and {len(tgts)}."
        )
    modes = [mode] * n if isinstance(mode, str) else list(mode)
    bases = list(baseline) if isinstance(baseline, (list, tuple)) else [baseline] * n
    if len(modes) != n or len(bases) != n:
        raise UsageError(
            f"mode and baseline must be one value or one per image ({n}), got {len(modes)} and {len(bases)}."
        )
    curves = [
        _prepare_curve(imgs[i], sals[i], tgts[i], steps, patch, bases[i], modes[i], patch_score, blur_sigma)
        for i in range(n)
    ]
    if len({c.img.shape for c in curves}) > 1:
        raise InputError(f"The images must share one shape, got {sorted({c.img.shape for c in curves})}.")
    jobs = [(i, int(c)) for i, cv in enumerate(curves) for c in cv.counts]
    scores = [np.zeros(len(cv.counts), dtype=np.float64) for cv in curves]
    filled = [0] * n
    for start in range(0, len(jobs), batch_size):
        part = jobs[start : start + batch_size]
        batch = np.empty((len(part), *curves[0].img.shape), dtype=np.float32)
        for b, (i, c) in enumerate(part):
            batch[b] = curves[i].perturbed(c)
        out = np.asarray(predict_fn(batch), dtype=np.float64)
        if out.ndim != 2 or out.shape[0] != batch.shape[0]:
            raise InputError(f"predict_fn must return probabilities of shape (N, K); got {out.shape}.")
        for b, (i, _) in enumerate(part):
            t = curves[i].target
            if not 0 <= t < out.shape[1]:
                raise UsageError(f"target class {t} is out of range for {out.shape[1]} classes.")
            scores[i][filled[i]] = out[b, t]
            filled[i] += 1
    results: list[tuple[float, np.ndarray]] = []
    for cv, y in zip(curves, scores, strict=True):
        auc = float(np.sum(np.diff(cv.fractions) * (y[1:] + y[:-1]) / 2.0))
        results.append((auc, np.stack([cv.fractions, y], axis=1)))
    return results


def deletion_insertion(
    predict_fn: Callable[[np.ndarray], Any],
    image: Any,
    saliency: Any,
    target: int,
    steps: int = 20,
    patch: int = 16,
    baseline: float | str | np.ndarray = 0.0,
    mode: Literal["deletion", "insertion"] = "deletion",
    batch_size: int = 32,
    patch_score: Literal["max", "mean"] = "max",
    blur_sigma: float = 5.0,
) -> tuple[float, np.ndarray]:
    """Deletion / insertion curve and its area (Petsiuk et al. 2018; SoftCAM's AUDC).

    The map is upsampled (bilinear) to the image size and the image is cut into non-overlapping
    ``patch × patch`` tiles (smaller at the right/bottom edges; ``patch=1`` ranks single pixels). Each tile
    is scored by the **max** (``patch_score="max"``, as the SoftCAM authors) or mean of the signed
    upsampled map and tiles are ranked from the highest score down (ties: raster order). For
    ``deletion``, the top tiles are progressively replaced by the baseline; for ``insertion``, the image
    starts as the baseline and the top tiles are progressively restored. ``steps + 1`` images are
    evaluated (0, 1/steps, …, all tiles; ``steps`` is capped at the number of tiles) through
    ``predict_fn(batch N×C×H×W float32) -> probs N×K`` in chunks of ``batch_size``.

    ``baseline``: a number (0.0 = the dataset mean colour for a mean/std-normalized input), ``"blur"``
    (a Gaussian-blurred copy, σ = ``blur_sigma``; the usual insertion start) or a C×H×W array.

    Returns ``(auc, curve)``: ``curve`` is a (steps + 1)×2 float64 array of (fraction of pixels
    perturbed, probability of ``target``), and ``auc`` the trapezoid area over that fraction in [0, 1].
    Lower deletion AUC and higher insertion AUC mean a more faithful map. Many images (and both modes)
    at once: :func:`deletion_insertion_batch`, which this calls with one image.
    """
    if mode not in ("deletion", "insertion"):
        raise UsageError(f"mode must be 'deletion' or 'insertion', got {mode!r}.")
    if isinstance(baseline, (list, tuple)):
        baseline = np.asarray(baseline, dtype=np.float32)  # one array, not one baseline per image
    return deletion_insertion_batch(
        predict_fn,
        [image],
        [saliency],
        [target],
        steps=steps,
        patch=patch,
        baseline=baseline,
        mode=mode,
        batch_size=batch_size,
        patch_score=patch_score,
        blur_sigma=blur_sigma,
    )[0]
