"""Explanation metrics of one saliency map ``s`` (h×w, any scale and sign) against a boolean annotation
mask ``m`` (H×W): localisation (activation precision and sensitivity, pointing games, top-k patch precision),
the grid oracle and share of oracle, and complexity (sparsity, Gini). Deletion/insertion: ``faithfulness``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, overload

import numpy as np

from ...errors import InputError, UsageError
from .mapops import (
    ResizeMode,
    _area_overlaps,
    _as_map,
    _as_mask,
    _dilate_ball,
    _dilate_disk,
    _map_and_mask,
    normalize_saliency,
    upsample,
)
from .summary import json_safe

__all__ = [
    "TopKResult",
    "activation_precision",
    "activation_sensitivity",
    "as_grid",
    "energy_pointing_game",
    "gini",
    "grid_oracle",
    "oracle_precision",
    "pointing_game",
    "pooled_topk_precision",
    "share_of_oracle",
    "sparsity",
    "topk_patch_precision",
]


def activation_precision(s: Any, m: Any, mode: ResizeMode = "bilinear") -> float:
    """Share of positive saliency mass inside the annotation: ``Σ(n·m) / Σ n`` (Barnett et al. 2021).

    ``n = normalize_saliency(upsample(s, mask size))`` (ReLU, then min–max to [0, 1]), as in the SoftCAM
    authors' ``calculate_mass_within``. Returns ``nan`` for an empty mask and 0 for a map without positive
    evidence. A constant positive map scores the mask's area share.
    """
    sal, mask = _map_and_mask(s, m, mode)
    if not mask.any():
        return float("nan")
    n = normalize_saliency(sal)
    total = float(n.sum())
    return float(n[mask].sum() / total) if total > 0 else 0.0


def activation_sensitivity(s: Any, m: Any, mode: ResizeMode = "bilinear") -> float:
    """Mean normalized saliency inside the annotation: ``Σ(n·m) / Σ m`` (SoftCAM paper, Eq. 7).

    Same ``n`` as :func:`activation_precision`; penalizes annotated regions the map misses. Returns
    ``nan`` for an empty mask and 0 for a map without positive evidence.
    """
    sal, mask = _map_and_mask(s, m, mode)
    if not mask.any():
        return float("nan")
    n = normalize_saliency(sal)
    return float(n[mask].sum() / mask.sum())


def pointing_game(s: Any, m: Any, tolerance_px: int = 0, mode: ResizeMode = "bilinear") -> float:
    """Hit (1.0) if the maximum of the upsampled map lies inside the annotation, else miss (0.0).

    ``tolerance_px`` > 0 dilates the mask by a disk of that radius (Zhang et al. 2018 use 15 px).
    Tied maxima: a hit if any of them is inside (as Quantus' ``PointingGame``); a constant map (every
    pixel tied) is a miss, since it points nowhere. Returns ``nan`` for an empty mask. Returned as a float
    so per-image values average to the hit rate.
    """
    if tolerance_px < 0:
        raise UsageError(f"tolerance_px must be 0 or more, got {tolerance_px}.")
    raw = _as_map(s)
    sal, mask = _map_and_mask(raw, m, mode)
    if not mask.any():
        return float("nan")
    if raw.max() == raw.min():
        return 0.0
    top = float(sal.max())
    # Tied maxima up to floating-point noise of the resizing (1e-9 of the map's range).
    peak = sal >= top - 1e-9 * (top - float(sal.min()))
    dilate = _dilate_disk if mask.ndim == 2 else _dilate_ball
    target = dilate(mask, int(tolerance_px)) if tolerance_px else mask
    return float(bool(np.any(target & peak)))


def energy_pointing_game(s: Any, m: Any, mode: ResizeMode = "bilinear") -> float:
    """Energy-based pointing game (Score-CAM, Wang et al. 2020): ``Σ(r·m) / Σ r`` with ``r = ReLU(s)``.

    The share of positive-saliency energy inside the annotation, on the upsampled map *without* min
    shifting, so it is invariant to rescaling ``s`` by a positive factor. (Score-CAM feeds it a min–max
    normalized map; when the map has any non-positive pixel this equals :func:`activation_precision`.)
    Returns ``nan`` for an empty mask and 0 for a map without positive evidence.
    """
    sal, mask = _map_and_mask(s, m, mode)
    if not mask.any():
        return float("nan")
    r = np.maximum(sal, 0.0)
    total = float(r.sum())
    return float(r[mask].sum() / total) if total > 0 else 0.0


@overload
def as_grid(grid: Any, name: str = ..., dims: Literal[2] = ...) -> tuple[int, int]: ...
@overload
def as_grid(grid: Any, name: str = ..., dims: int = ...) -> tuple[int, ...]: ...
def as_grid(grid: Any, name: str = "grid", dims: int = 2) -> tuple[int, ...]:
    """``grid`` as ``(rows, columns)``, two positive integers (``dims=3``: ``(depth, rows, columns)``); a
    :class:`UsageError` naming ``name`` else."""
    try:
        values = tuple(int(v) for v in grid)
        ok = not isinstance(grid, str) and len(values) == dims and all(float(v) == int(v) for v in grid)
    except (TypeError, ValueError):
        ok, values = False, ()
    if not ok or any(v < 1 for v in values):
        what = (
            "two positive integers (rows, columns)" if dims == 2 else "three positive integers (depth, rows, columns)"
        )
        raise UsageError(f"{name} must be {what}, got {grid!r}.", param=name)
    return values


def grid_oracle(mask: Any, grid: Sequence[int]) -> np.ndarray:
    """The mask average-pooled to ``grid = (gh, gw)``: the best map a map on that grid can be.

    Cell (i, j) holds the share of its area covered by the mask. When H or W is not a multiple of the grid
    the cells cut through pixels and each pixel counts with the exact area it has in the cell (integer
    interval overlaps, one rounding at the end; not a resize), so ``oracle.mean() == mask.mean()`` for every
    grid. Returns a gh×gw float64 array in [0, 1]; a grid finer than the mask is allowed (each cell then
    lies within one or two pixels).
    """
    m = _as_mask(mask).astype(np.int64)
    cells = as_grid(grid, dims=m.ndim)
    if m.ndim == 3:  # a volume: the same exact pooling along its three axes
        od, oh, ow = (_area_overlaps(n, g) for n, g in zip(m.shape, cells, strict=True))
        covered3 = np.einsum("ai,bj,ck,ijk->abc", od, oh, ow, m, optimize=True)
        return covered3 / float(m.size)
    gh, gw = cells
    height, width = m.shape
    covered = _area_overlaps(height, gh) @ m @ _area_overlaps(width, gw).T  # exact integer areas
    return covered / float(height * width)


def oracle_precision(mask: Any, grid: Sequence[int], mode: ResizeMode = "bilinear") -> float:
    """Activation precision of the grid oracle, upsampled to the mask: the ceiling for maps on ``grid``.

    ``activation_precision(upsample(grid_oracle(mask, grid), mask size), mask)``: the oracle is upsampled
    to the mask size exactly as :func:`activation_precision` upsamples any map (bilinear), so this is what
    a map on ``grid`` scores when it equals the pooled mask — the ceiling that :func:`share_of_oracle`
    divides by. Below 1 whenever the mask does not fill whole cells (a coarse
    grid blurs the lesion's border). ``nan`` for an empty mask.
    """
    mk = _as_mask(mask)
    oracle = grid_oracle(mk, grid)
    return activation_precision(upsample(oracle, mk.shape, mode=mode), mk, mode)


def share_of_oracle(precision: float, chance: float, oracle: float, eps: float = 1e-9) -> float:
    """Activation precision on a chance-to-oracle scale: ``(precision − chance) / (oracle − chance)``.

    ``chance`` is the mask's area share, what a constant positive map scores on
    :func:`activation_precision`; ``oracle`` is :func:`oracle_precision` on the reference grid. 0 = no better
    than a constant map, 1 = as good as the pooled mask; not clipped: negative is worse than chance (mass
    outside the lesion) and above 1 is possible (a map sharper than the pooled mask). ``nan`` when an input
    is ``nan`` or ``oracle ≤ chance + eps`` (a mask that fills the image: no map can beat chance).
    """
    p, c, o = float(precision), float(chance), float(oracle)
    if not (math.isfinite(p) and math.isfinite(c) and math.isfinite(o)) or o <= c + eps:
        return float("nan")
    return (p - c) / (o - c)


@dataclass(frozen=True)
class TopKResult:
    """Outcome of :func:`topk_patch_precision` for one image.

    ``picks`` patches were selected (at most k, fewer when not enough grid positions pass the threshold);
    ``hit_flags[i]`` says whether pick i overlaps the annotation; ``boxes[i]`` is its ``(top, left,
    height, width)`` in mask pixels; ``scores[i]`` its value on the patch grid.
    """

    precision: float
    hits: int
    picks: int
    hit_flags: list[bool] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def precision_at(self, k: int) -> float:
        """Hits among the first ``min(k, picks)`` picks divided by that number; ``nan`` with no pick."""
        n = min(k, self.picks)
        return sum(self.hit_flags[:n]) / n if n > 0 else float("nan")

    def curve(self) -> list[float]:
        """Precision at 1, 2, …, ``picks``."""
        return [self.precision_at(i) for i in range(1, self.picks + 1)]

    def as_dict(self) -> dict[str, Any]:
        return json_safe({f.name: getattr(self, f.name) for f in fields(self)})


def topk_patch_precision(
    s: Any,
    m: Any,
    k: int = 10,
    patch: int = 33,
    stride: int = 8,
    threshold: float | None = 1.0,
    window: tuple[tuple[int, int], tuple[int, int]] = ((-2, 1), (-1, 2)),
    mode: ResizeMode = "bicubic",
) -> TopKResult:
    """Top-k localisation precision on a BagNet-like patch grid (SoftCAM authors' ``get_topk_precision``).

    1. ``s`` is resized (bicubic by default, as the authors) to the patch grid ``G_h × G_w`` with
       ``G = (H − patch) // stride + 1`` for a mask of H×W (512 px, 33, 8 → 60×60).
    2. Greedy picks: grid positions are visited from the highest value down; a position is picked if its
       value is ``> threshold`` (``None``: no threshold) and it was not suppressed by an earlier pick.
       Each pick suppresses the grid cells at row offsets ``window[0][0]..window[0][1]`` and column
       offsets ``window[1][0]..window[1][1]`` around it (the authors' 4×4 window, clipped at the borders).
       Stops after ``k`` picks.
    3. Pick (r, c) is the ``patch × patch`` box at pixel (r·stride, c·stride); a **hit** when the mask has
       any positive pixel inside.

    ``precision = hits / picks`` (``nan`` when nothing passes the threshold). The default threshold 1 is
    the authors', for raw logit-scale evidence maps; for maps scaled to [0, 1] pass a lower value or
    ``None``. Differences from the authors' code: values are compared as floats (their code truncated
    them to int first), and only picks suppress their neighbours. An empty mask returns ``precision=nan``
    with no picks, so pooled curves skip the image. Pool images with :func:`pooled_topk_precision`.
    """
    if k < 1 or patch < 1 or stride < 1:
        raise UsageError(f"k, patch and stride must be positive, got k={k}, patch={patch}, stride={stride}.")
    (r0, r1), (c0, c1) = window
    if r0 > r1 or c0 > c1:
        raise UsageError(f"The suppression window {window} must give (low, high) offsets with low <= high.")
    mask = _as_mask(m)
    sal = _as_map(s)
    height, width = mask.shape
    if height < patch or width < patch:
        raise InputError(f"The mask ({height}×{width}) is smaller than one {patch}×{patch} patch.")
    if not mask.any():
        return TopKResult(float("nan"), 0, 0)
    gh, gw = (height - patch) // stride + 1, (width - patch) // stride + 1
    grid = sal if sal.shape == (gh, gw) else upsample(sal, (gh, gw), mode=mode)
    flat = grid.ravel()
    order = np.argsort(-flat, kind="stable")
    suppressed = np.zeros((gh, gw), dtype=bool)
    csum = np.zeros((height + 1, width + 1), dtype=np.int64)
    csum[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0), axis=1)
    flags: list[bool] = []
    boxes: list[tuple[int, int, int, int]] = []
    scores: list[float] = []
    for idx in order:
        value = float(flat[idx])
        if threshold is not None and not value > threshold:
            break
        r, c = divmod(int(idx), gw)
        if suppressed[r, c]:
            continue
        suppressed[max(r + r0, 0) : max(r + r1 + 1, 0), max(c + c0, 0) : max(c + c1 + 1, 0)] = True
        y, x = r * stride, c * stride
        inside = csum[y + patch, x + patch] - csum[y, x + patch] - csum[y + patch, x] + csum[y, x]
        flags.append(bool(inside > 0))
        boxes.append((y, x, patch, patch))
        scores.append(value)
        if len(flags) >= k:
            break
    hits = sum(flags)
    picks = len(flags)
    return TopKResult(hits / picks if picks else float("nan"), hits, picks, flags, boxes, scores)


def pooled_topk_precision(results: Iterable[TopKResult], k_max: int) -> list[float]:
    """Precision@k for k = 1..k_max pooled over images, as in the paper: ``Σ_i hits_i(k) / Σ_i picks_i(k)``.

    ``hits_i(k)``/``picks_i(k)`` count image i's first ``min(k, picks_i)`` picks, so images with fewer
    picks contribute fewer patches; ``nan`` where no image has a pick.
    """
    res = list(results)
    out = []
    for kk in range(1, k_max + 1):
        picks = sum(min(kk, r.picks) for r in res)
        hits = sum(sum(r.hit_flags[: min(kk, r.picks)]) for r in res)
        out.append(hits / picks if picks else float("nan"))
    return out


def sparsity(maps: Any, threshold: float = 0.01, relative: bool = True) -> float | np.ndarray:
    """Share of map values with ``|A| < t``; higher means sparser.

    With ``relative=True`` (default) ``t = threshold · max|A|`` of *that map* (1 % of its peak
    magnitude), so the score does not depend on the map's scale; with ``relative=False`` ``t`` is the
    absolute ``threshold``. An all-zero map has sparsity 1. A 2-D map gives a float; an array of maps
    (..., h, w) gives one value per map.
    """
    a = np.abs(np.asarray(maps, dtype=np.float64))
    if a.ndim < 2 or a.shape[-1] == 0 or a.shape[-2] == 0:
        raise InputError(f"sparsity needs maps of shape (..., h, w), got {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise InputError("The map contains NaN or infinite values.")
    if threshold < 0:
        raise UsageError(f"The sparsity threshold must be 0 or more, got {threshold}.")
    peak = a.max(axis=(-2, -1), keepdims=True)
    t = threshold * peak if relative else np.full_like(peak, threshold)
    share = np.mean(a < t, axis=(-2, -1))
    share = np.where(peak[..., 0, 0] == 0, 1.0, share)
    return float(share) if share.ndim == 0 else share


def gini(values: Any) -> float:
    """Gini index of ``|values|`` (Quantus ``Sparseness``, Chalasani et al. 2020).

    With ``a`` the sorted magnitudes (ascending, 1-based index i, n values):
    ``G = Σ (2i − n − 1)·a_i / (n·Σ a)``. 0 for a uniform map, ``1 − 1/n`` for a single spike; 0 for an
    all-zero input.
    """
    a = np.sort(np.abs(np.asarray(values, dtype=np.float64)).ravel())
    if a.size == 0:
        raise InputError("gini needs at least one value.")
    if not np.all(np.isfinite(a)):
        raise InputError("The values contain NaN or infinite values.")
    total = a.sum()
    if total == 0:
        return 0.0
    n = a.size
    i = np.arange(1, n + 1)
    return float(np.sum((2 * i - n - 1) * a) / (n * total))
