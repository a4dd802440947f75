"""Agreement of two models' evidence maps, and how much of a class's evidence sits in one fixed region.

Every function takes maps already on one common grid (:func:`common_grid`, :func:`area_pool` brings maps of
different grids there) and works on stacks ``(..., h, w)``: one value per map pair. Numpy only (torch-free).

* :func:`rank_correlation` — Spearman's ρ of two maps: Pearson's correlation of their cell ranks (ties get
  their average rank); ``nan`` when a map is constant (no ranking).
* :func:`topk_iou` — intersection over union of the ``k`` highest cells of each map.
* :func:`peak_shift` — distance between the two maps' maxima, in cells and as a fraction of the grid's
  diagonal (from the centre of one corner cell to the centre of the opposite one), so 0 = same cell,
  1 = opposite corners.
* :func:`positive_sparsity` — the project's sparsity (:func:`~.saliency.sparsity`) of the positive evidence,
  ReLU then min–max scaled, as ``evaluate`` reports it.
* :func:`fixed_region_share` — the shortcut statistic (docs/ci.md): over many images, the share of each
  image's positive evidence that falls in the ``m`` cells where the class's evidence gathers on average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import InputError, UsageError
from .mapops import _area_weights
from .saliency import sparsity

__all__ = [
    "RegionShare",
    "area_pool",
    "common_grid",
    "fixed_region_share",
    "peak_shift",
    "positive_sparsity",
    "rank_correlation",
    "topk_iou",
]


def common_grid(a: Sequence[int], b: Sequence[int]) -> tuple[int, int]:
    """The grid two maps are compared on: the coarser of the two along each axis (``min`` rows, ``min``
    columns), so no map is compared on cells finer than it resolves."""
    return min(int(a[0]), int(b[0])), min(int(a[1]), int(b[1]))


def area_pool(maps: Any, size: Sequence[int]) -> np.ndarray:
    """Resample the last two axes of ``maps`` to ``size = (h, w)`` by exact area averaging (float64).

    Each output cell is the area-weighted mean of the input cells it covers (cells cut by a boundary count
    with the share of their area inside), so the mean of a map, and hence a SoftCAM map's logit, is kept.
    Equal sizes return a copy. Meant for shrinking to :func:`common_grid`; growing repeats cells.
    """
    a = np.asarray(maps, dtype=np.float64)
    if a.ndim < 2 or a.shape[-1] == 0 or a.shape[-2] == 0:
        raise InputError(f"Cannot resample an array of shape {a.shape}; expected (..., h, w).")
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise UsageError(f"The grid must be two positive integers, got {tuple(size)}.")
    if a.shape[-2:] == (h, w):
        return a.copy()
    rh = _area_weights(a.shape[-2], h)
    rw = _area_weights(a.shape[-1], w)
    return np.einsum("ij,...jk,lk->...il", rh, a, rw, optimize=True)


def _flat(maps: Any) -> np.ndarray:
    a = np.asarray(maps, dtype=np.float64)
    if a.ndim < 2:
        raise InputError(f"Maps must have shape (..., h, w), got {a.shape}.")
    return a.reshape(*a.shape[:-2], a.shape[-2] * a.shape[-1])


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, ties given their average rank (vectorized over leading axes)."""
    n = x.shape[-1]
    order = np.argsort(x, axis=-1, kind="stable")
    xs = np.take_along_axis(x, order, axis=-1)
    pos = np.broadcast_to(np.arange(n), x.shape)
    new = np.ones(x.shape, dtype=bool)
    new[..., 1:] = xs[..., 1:] != xs[..., :-1]
    start = np.maximum.accumulate(np.where(new, pos, 0), axis=-1)  # first index of each tie group
    last = np.ones(x.shape, dtype=bool)
    last[..., :-1] = new[..., 1:]
    end = np.flip(np.minimum.accumulate(np.flip(np.where(last, pos, n), -1), axis=-1), -1)  # its last index
    ranks = np.empty(x.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, (start + end) / 2.0 + 1.0, axis=-1)
    return ranks


def rank_correlation(a: Any, b: Any) -> np.ndarray | float:
    """Spearman's rank correlation of each pair of maps (``(..., h, w)`` each, the same shape).

    ``ρ = corr(rank(a), rank(b))`` over the cells, ties at their average rank; ``nan`` where either map is
    constant. 1 = the same ordering of cells, −1 = the reverse.
    """
    fa, fb = _flat(a), _flat(b)
    if fa.shape != fb.shape:
        raise InputError(f"Maps of different shapes cannot be compared: {np.shape(a)} and {np.shape(b)}.")
    ra = _average_ranks(fa)
    rb = _average_ranks(fb)
    ra -= ra.mean(axis=-1, keepdims=True)
    rb -= rb.mean(axis=-1, keepdims=True)
    den = np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, (ra * rb).sum(-1) / np.where(den > 0, den, 1.0), np.nan)
    rho = np.clip(rho, -1.0, 1.0)
    return float(rho) if rho.ndim == 0 else rho


def _topk_sets(flat: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-flat, axis=-1, kind="stable")[..., :k]  # ties: the first cells in row-major order
    sets = np.zeros(flat.shape, dtype=bool)
    np.put_along_axis(sets, order, True, axis=-1)
    return sets


def topk_iou(a: Any, b: Any, k: int) -> np.ndarray | float:
    """IoU of the ``k`` highest cells of each map (ties broken by row-major order): ``|A ∩ B| / |A ∪ B|``."""
    fa, fb = _flat(a), _flat(b)
    if fa.shape != fb.shape:
        raise InputError(f"Maps of different shapes cannot be compared: {np.shape(a)} and {np.shape(b)}.")
    if not 1 <= k <= fa.shape[-1]:
        raise UsageError(f"topk must be between 1 and the {fa.shape[-1]} cells of the grid, got {k}.", param="topk")
    sa, sb = _topk_sets(fa, k), _topk_sets(fb, k)
    iou = (sa & sb).sum(-1) / (sa | sb).sum(-1)
    return float(iou) if iou.ndim == 0 else iou


def peak_shift(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(cells, fraction)``: the Euclidean distance between the maxima of each pair of maps (first maximum
    in row-major order), in cells and divided by the grid's diagonal ``√((h−1)² + (w−1)²)`` (0 on a 1×1
    grid)."""
    fa, fb = _flat(a), _flat(b)
    h, w = np.shape(a)[-2:]
    ia, ib = np.argmax(fa, axis=-1), np.argmax(fb, axis=-1)
    dist = np.hypot(ia // w - ib // w, ia % w - ib % w).astype(np.float64)
    diag = math.hypot(h - 1, w - 1)
    return dist, (dist / diag if diag > 0 else np.zeros_like(dist))


def positive_sparsity(maps: Any, threshold: float = 0.01) -> np.ndarray | float:
    """Sparsity of each map's positive evidence: ReLU, min–max scaled per map, then
    :func:`~.saliency.sparsity` (share of cells under ``threshold`` × the peak)."""
    r = np.maximum(np.asarray(maps, dtype=np.float64), 0.0)
    lo = r.min(axis=(-2, -1), keepdims=True)
    hi = r.max(axis=(-2, -1), keepdims=True)
    span = hi - lo
    n = np.where(span > 0, (r - lo) / np.where(span > 0, span, 1.0), np.where(hi > 0, 1.0, 0.0))
    return sparsity(n, threshold=threshold)


@dataclass
class RegionShare:
    """The outcome of :func:`fixed_region_share` for one model and class."""

    share: float  # mean share of an image's positive evidence inside the region (nan: no image)
    uniform: float  # what evidence spread evenly over the grid would give: cells / grid cells
    images: int  # images with positive evidence that entered the statistic
    cells: list[tuple[int, int]] = field(default_factory=list)  # the region: (row, column) of its cells
    per_image: np.ndarray = field(default_factory=lambda: np.zeros(0))  # each image's share

    @property
    def lift(self) -> float:
        """How many times the uniform share the region holds (``share / uniform``)."""
        return self.share / self.uniform if self.uniform > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "share": None if math.isnan(self.share) else self.share,
            "uniform": self.uniform,
            "lift": None if math.isnan(self.lift) else self.lift,
            "images": self.images,
            "cells": [list(c) for c in self.cells],
        }


def region_size(grid: Sequence[int], region: float) -> int:
    """The number of cells of the fixed region: ``max(1, ceil(region × cells))``."""
    if not 0 < region < 1:
        raise UsageError(
            f"shortcut_region is a share of the grid between 0 and 1, got {region}.", param="shortcut_region"
        )
    return max(1, math.ceil(region * int(grid[0]) * int(grid[1]) - 1e-9))


def fixed_region_share(maps: Any, region: float = 0.05) -> RegionShare:
    """The shortcut statistic of one model and class over many images (``maps``: N×h×w, one grid).

    1. Each map's positive evidence ``P_i = ReLU(map_i) / Σ ReLU(map_i)`` (images without positive evidence
       are left out).
    2. The class's mean evidence ``P̄ = mean_i P_i``; the fixed region ``R`` is its ``m`` highest cells,
       ``m = max(1, ⌈region × cells⌉)`` (ties: row-major order).
    3. ``share = mean_i Σ_{c∈R} P_i(c)``: how much of an image's evidence falls in that same region.

    Evidence spread evenly gives ``uniform = m / cells``; evidence that sits wherever the object is in each
    image gives little more; evidence that every image puts in the same few cells (a corner marker, a ruler,
    burned-in text) gives a share near 1. The region is chosen on the same images it is measured on, so a
    handful of images with sharp, scattered maps reads somewhat above ``uniform``: judge it over many images.
    """
    a = np.asarray(maps, dtype=np.float64)
    if a.ndim != 3:
        raise InputError(f"fixed_region_share needs N×h×w maps, got shape {a.shape}.")
    h, w = a.shape[1:]
    m = region_size((h, w), region)
    pos = np.maximum(a.reshape(len(a), h * w), 0.0)
    mass = pos.sum(-1)
    keep = mass > 0
    uniform = m / (h * w)
    if not keep.any():
        return RegionShare(float("nan"), uniform, 0)
    p = pos[keep] / mass[keep, None]
    mean = p.mean(0)
    cells = np.argsort(-mean, kind="stable")[:m]
    per_image = p[:, cells].sum(-1)
    return RegionShare(
        float(per_image.mean()),
        uniform,
        int(keep.sum()),
        [(int(c // w), int(c % w)) for c in sorted(cells.tolist())],
        per_image,
    )
