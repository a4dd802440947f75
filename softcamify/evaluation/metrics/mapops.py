"""Operations on maps and masks: validation, resizing (``torch.nn.functional.interpolate`` semantics,
``align_corners=False``), ReLU + min–max normalization, exact area pooling, disk dilation, Gaussian blur.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from ...errors import InputError, UsageError

__all__ = ["ResizeMode", "gaussian_blur", "normalize_saliency", "upsample"]

ResizeMode = Literal["bilinear", "bicubic", "nearest"]


def _as_map(s: Any, name: str = "saliency map") -> np.ndarray:
    a = np.asarray(s, dtype=np.float64)
    if a.ndim not in (2, 3) or a.size == 0:
        raise InputError(f"The {name} must be a non-empty 2-D (h×w) or 3-D (d×h×w) array, got shape {np.shape(s)}.")
    if not np.all(np.isfinite(a)):
        raise InputError(f"The {name} contains NaN or infinite values.")
    return a


def _as_mask(m: Any) -> np.ndarray:
    a = np.asarray(m)
    if a.ndim not in (2, 3) or a.size == 0:
        raise InputError(f"The mask must be a non-empty 2-D (H×W) or 3-D (D×H×W) array, got shape {np.shape(m)}.")
    return a.astype(bool) if a.dtype == bool else a > 0


def _map_and_mask(s: Any, m: Any, mode: ResizeMode = "bilinear") -> tuple[np.ndarray, np.ndarray]:
    mask = _as_mask(m)
    sal = _as_map(s)
    if sal.ndim != mask.ndim:
        raise InputError(f"A {sal.ndim}-D map cannot be compared with a {mask.ndim}-D mask.")
    if sal.shape != mask.shape:
        sal = upsample(sal, mask.shape, mode=mode)
    return sal, mask


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys cubic-convolution weights for taps at offsets -1, 0, 1, 2 (torch uses a = -0.75)."""

    def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _interp_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """(n_out × n_in) matrix R with ``out = R @ in`` along one axis."""
    scale = n_in / n_out
    dst = np.arange(n_out, dtype=np.float64)
    mat = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    if mode == "nearest":
        idx = np.minimum(np.floor(dst * scale).astype(np.int64), n_in - 1)
        mat[rows, idx] = 1.0
    elif mode == "bilinear":
        src = np.maximum((dst + 0.5) * scale - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        lam = src - i0
        np.add.at(mat, (rows, i0), 1.0 - lam)
        np.add.at(mat, (rows, i1), lam)
    elif mode == "bicubic":
        src = (dst + 0.5) * scale - 0.5
        i = np.floor(src).astype(np.int64)
        w = _cubic_weights(src - i)
        for tap in range(4):
            np.add.at(mat, (rows, np.clip(i - 1 + tap, 0, n_in - 1)), w[:, tap])
    else:
        raise UsageError(f"Unknown resize mode {mode!r}; use 'bilinear', 'bicubic' or 'nearest'.")
    return mat


def upsample(map: Any, size: Sequence[int], mode: ResizeMode = "bilinear") -> np.ndarray:
    """Resize the last two axes of ``map`` to ``size = (H, W)`` (the last three to ``size = (D, H, W)``: a
    volume, separably by the same rule along each axis); returns float64.

    Matches ``torch.nn.functional.interpolate(x, size, mode=mode, align_corners=False)`` (no
    antialiasing): for output pixel ``i`` the source coordinate is ``(i + 0.5)·h/H − 0.5``; bilinear
    clamps it at 0 and blends the two neighbours, bicubic uses Keys' kernel (a = −0.75) on four clamped
    neighbours (so it can overshoot the input range, as torch does), nearest takes ``floor(i·h/H)``.
    Works for any leading axes (e.g. K×h×w) and for shrinking too. Bilinear and nearest outputs are clipped
    to each map's input range (they lie in it mathematically; the clip only removes floating-point rounding,
    so a constant map stays exactly constant).
    """
    a = np.asarray(map, dtype=np.float64)
    if len(size) == 3:
        return _upsample_3d(a, size, mode)
    if a.ndim < 2 or a.shape[-1] == 0 or a.shape[-2] == 0:
        raise InputError(f"Cannot resize an array of shape {a.shape}; expected (..., h, w).")
    if len(size) != 2 or any(int(v) < 1 for v in size):
        raise UsageError(f"Resize size must be two positive integers (H, W), got {tuple(size)}.")
    out_h, out_w = int(size[0]), int(size[1])
    h, w = a.shape[-2:]
    if (h, w) == (out_h, out_w):
        return a.copy()
    rh = _interp_matrix(h, out_h, mode)
    rw = _interp_matrix(w, out_w, mode)
    out = np.einsum("ij,...jk,lk->...il", rh, a, rw, optimize=True)
    if mode != "bicubic":
        # Bilinear and nearest outputs are convex combinations of the inputs: clip away the rounding of the
        # weights (a constant map stays exactly constant, so its min–max normalization is all ones).
        np.clip(out, a.min(axis=(-2, -1), keepdims=True), a.max(axis=(-2, -1), keepdims=True), out=out)
    return out


def _upsample_3d(a: np.ndarray, size: Sequence[int], mode: ResizeMode) -> np.ndarray:
    """:func:`upsample` of the last three axes (a volume: ``(..., d, h, w)`` to ``(..., D, H, W)``)."""
    if a.ndim < 3 or 0 in a.shape[-3:]:
        raise InputError(f"Cannot resize an array of shape {a.shape} to a volume; expected (..., d, h, w).")
    if any(int(v) < 1 for v in size):
        raise UsageError(f"Resize size must be three positive integers (D, H, W), got {tuple(size)}.")
    out_shape = tuple(int(v) for v in size)
    if tuple(a.shape[-3:]) == out_shape:
        return a.copy()
    rd, rh, rw = (_interp_matrix(n, m, mode) for n, m in zip(a.shape[-3:], out_shape, strict=True))
    out = np.einsum("ai,bj,ck,...ijk->...abc", rd, rh, rw, a, optimize=True)
    if mode != "bicubic":
        np.clip(out, a.min(axis=(-3, -2, -1), keepdims=True), a.max(axis=(-3, -2, -1), keepdims=True), out=out)
    return out


def normalize_saliency(s: Any) -> np.ndarray:
    """ReLU, then min–max scaling to [0, 1]: ``n = (r − min r)/(max r − min r)`` with ``r = max(s, 0)``.

    Special cases: a map without positive values (all ``r = 0``) stays all zero; a constant positive map
    becomes all ones (every pixel carries the same evidence).
    """
    r = np.maximum(np.asarray(s, dtype=np.float64), 0.0)
    if r.size == 0:
        return r
    if not np.all(np.isfinite(r)):
        raise InputError("The saliency map contains NaN or infinite values.")
    lo, hi = float(r.min()), float(r.max())
    if hi <= 0.0:
        return np.zeros_like(r)
    if hi == lo:
        return np.ones_like(r)
    return (r - lo) / (hi - lo)


def _dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of ``mask`` by a Euclidean disk of ``radius`` pixels (row runs via cumulative sums)."""
    if radius <= 0:
        return mask.copy()
    h, w = mask.shape
    csum = np.zeros((h, w + 1), dtype=np.int64)
    np.cumsum(mask, axis=1, out=csum[:, 1:])
    cols = np.arange(w)
    out = np.zeros_like(mask, dtype=bool)
    for dy in range(-radius, radius + 1):
        half = int(math.isqrt(radius * radius - dy * dy))
        lo = np.clip(cols - half, 0, w)
        hi = np.clip(cols + half + 1, 0, w)
        run = (csum[:, hi] - csum[:, lo]) > 0  # any mask pixel within ±half columns, same row
        # out[y] |= run[y + dy]
        if dy >= 0:
            out[: h - dy] |= run[dy:]
        else:
            out[-dy:] |= run[: h + dy]
    return out


def _dilate_ball(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of a 3-D ``mask`` by a Euclidean ball of ``radius`` voxels."""
    if radius <= 0:
        return mask.copy()
    out = np.zeros_like(mask, dtype=bool)
    d, h, w = mask.shape
    r = int(radius)
    for dz in range(-r, r + 1):
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if dz * dz + dy * dy + dx * dx > r * r:
                    continue
                src = mask[max(0, -dz) : d - max(0, dz), max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
                out[max(0, dz) : d - max(0, -dz), max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)] |= src
    return out


def _area_overlaps(n_in: int, n_out: int) -> np.ndarray:
    """(n_out × n_in) int64 overlaps, in units of ``1/n_out`` pixel, of cell i of n_out with pixel p of n_in.

    Cell i spans ``[i·n_in/n_out, (i+1)·n_in/n_out)`` and pixel p spans ``[p, p+1)``; scaled by ``n_out``
    both are integer intervals (``[i·n_in, (i+1)·n_in)`` and ``[p·n_out, (p+1)·n_out)``), so the overlaps
    are exact integers: each row sums to ``n_in``, each column to ``n_out``.
    """
    cells = np.arange(n_out, dtype=np.int64)[:, None]
    pix = np.arange(n_in, dtype=np.int64)[None, :]
    lo = np.maximum(cells * n_in, pix * n_out)
    hi = np.minimum((cells + 1) * n_in, (pix + 1) * n_out)
    return np.maximum(hi - lo, 0)


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """Area-weighted averaging matrix (n_out × n_in): row i gives cell i the mean of the pixels it covers."""
    return _area_overlaps(n_in, n_out) / n_in


def gaussian_blur(image: Any, sigma: float = 5.0) -> np.ndarray:
    """Separable Gaussian blur of the last two axes (reflect padding, radius ⌈3σ⌉); float32."""
    x = np.asarray(image, dtype=np.float32)
    if sigma <= 0:
        return x.copy()
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kern = np.exp(-0.5 * (taps / sigma) ** 2)
    kern = (kern / kern.sum()).astype(np.float32)
    for axis in (-2, -1):
        n = x.shape[axis]
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="reflect" if n > radius else "edge")
        out = np.zeros_like(x)
        for t, wgt in enumerate(kern):
            out += wgt * np.take(padded, np.arange(t, t + n), axis=axis)
        x = out
    return x
