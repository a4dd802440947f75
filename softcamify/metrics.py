"""Classification and explanation metrics, in plain numpy (no torch: usable from the ONNX-only path).

Classification metrics take integer labels ``y_true`` (shape N) and class probabilities ``probs``
(shape N×K, e.g. a softmax). Explanation metrics take one saliency map ``s`` (h×w, any scale and sign,
e.g. one class of a SoftCAM evidence map) and a boolean annotation mask ``m`` (H×W); the map is
upsampled to the mask size first (bilinear, ``align_corners=False``, as ``torch.nn.functional.interpolate``).

Conventions, shared by every function here:

* An **empty mask** makes a localisation score undefined: the function returns ``nan`` and the caller
  skips that image (:func:`aggregate` ignores ``nan``).
* A map with **no positive evidence** scores 0 on the mass-based localisation metrics.
* Scores for a map that is constant everywhere (no pixel singled out) are documented per function.
* :func:`json_safe` turns ``nan``/``inf`` into ``None`` and numpy values into Python ones;
  :func:`classification_report` and :func:`aggregate` already return JSON-safe dicts.

Definitions follow the SoftCAM authors' evaluation code where it exists (activation precision and
sensitivity, top-k patch precision, deletion with max-scored patches), Quantus for the Gini index and the
pointing game's tie rule, and the Score-CAM reference code for the energy-based pointing game.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .errors import InputError, UsageError

__all__ = [
    "TopKResult",
    "accuracy",
    "activation_precision",
    "activation_sensitivity",
    "aggregate",
    "balanced_accuracy",
    "classification_report",
    "confusion_matrix",
    "deletion_insertion",
    "deletion_insertion_batch",
    "energy_pointing_game",
    "gaussian_blur",
    "gini",
    "grid_oracle",
    "json_safe",
    "normalize_saliency",
    "oracle_precision",
    "pointing_game",
    "pooled_topk_precision",
    "quadratic_kappa",
    "roc_auc_ovr",
    "sensitivity_specificity",
    "share_of_oracle",
    "sparsity",
    "topk_patch_precision",
    "upsample",
]

ResizeMode = Literal["bilinear", "bicubic", "nearest"]

# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------


def json_safe(obj: Any) -> Any:
    """Return ``obj`` with numpy scalars/arrays turned into Python values and ``nan``/``inf`` into ``None``.

    Dicts, lists and tuples are converted recursively (tuples become lists), so ``json.dumps`` of the
    result is strict JSON.
    """
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def _as_labels(y: Any, name: str, num_classes: int | None = None) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise InputError(f"{name} must be a 1-D array of class indices, got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError(f"{name} must contain integer class indices.")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise InputError(f"{name} contains a negative class index ({arr.min()}).")
    if num_classes is not None and arr.size and arr.max() >= num_classes:
        raise InputError(f"{name} contains class index {arr.max()} but there are only {num_classes} classes.")
    return arr


def _as_probs(probs: Any, n: int) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or p.shape[0] != n:
        raise InputError(f"probs must have shape (N, K) with N={n} rows, got shape {np.shape(probs)}.")
    if not np.all(np.isfinite(p)):
        raise InputError("probs contains NaN or infinite values.")
    return p


def _as_map(s: Any, name: str = "saliency map") -> np.ndarray:
    a = np.asarray(s, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise InputError(f"The {name} must be a non-empty 2-D array (h×w), got shape {np.shape(s)}.")
    if not np.all(np.isfinite(a)):
        raise InputError(f"The {name} contains NaN or infinite values.")
    return a


def _as_mask(m: Any) -> np.ndarray:
    a = np.asarray(m)
    if a.ndim != 2 or a.size == 0:
        raise InputError(f"The mask must be a non-empty 2-D array (H×W), got shape {np.shape(m)}.")
    return a.astype(bool) if a.dtype == bool else a > 0


def _map_and_mask(s: Any, m: Any, mode: ResizeMode = "bilinear") -> tuple[np.ndarray, np.ndarray]:
    mask = _as_mask(m)
    sal = _as_map(s)
    if sal.shape != mask.shape:
        sal = upsample(sal, mask.shape, mode=mode)
    return sal, mask


# --------------------------------------------------------------------------------------------------------
# Resizing (torch.nn.functional.interpolate semantics, align_corners=False)
# --------------------------------------------------------------------------------------------------------


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
    """Resize the last two axes of ``map`` to ``size = (H, W)``; returns float64.

    Matches ``torch.nn.functional.interpolate(x, size, mode=mode, align_corners=False)`` (no
    antialiasing): for output pixel ``i`` the source coordinate is ``(i + 0.5)·h/H − 0.5``; bilinear
    clamps it at 0 and blends the two neighbours, bicubic uses Keys' kernel (a = −0.75) on four clamped
    neighbours (so it can overshoot the input range, as torch does), nearest takes ``floor(i·h/H)``.
    Works for any leading axes (e.g. K×h×w) and for shrinking too. Bilinear and nearest outputs are clipped
    to each map's input range (they lie in it mathematically; the clip only removes floating-point rounding,
    so a constant map stays exactly constant).
    """
    a = np.asarray(map, dtype=np.float64)
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


# --------------------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------------------


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """K×K int64 matrix ``C[i, j]`` = number of samples of true class i predicted as class j."""
    if num_classes < 1:
        raise UsageError(f"num_classes must be at least 1, got {num_classes}.")
    t = _as_labels(y_true, "y_true", num_classes)
    p = _as_labels(y_pred, "y_pred", num_classes)
    if t.shape != p.shape:
        raise InputError(f"y_true and y_pred have different lengths ({t.size} and {p.size}).")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Share of correct predictions, ``Σ 1[ŷ_i = y_i] / N``; ``nan`` for N = 0."""
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise InputError(f"y_true and y_pred have different lengths ({t.size} and {p.size}).")
    return float(np.mean(t == p)) if t.size else float("nan")


def balanced_accuracy(y_true: Any, y_pred: Any, num_classes: int | None = None) -> float:
    """Mean per-class recall over the classes present in ``y_true``: ``(1/|C|) Σ_c TP_c / (TP_c + FN_c)``.

    Classes that never occur in ``y_true`` are left out (as in scikit-learn); ``nan`` for N = 0.
    """
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise InputError(f"y_true and y_pred have different lengths ({t.size} and {p.size}).")
    if t.size == 0:
        return float("nan")
    k = num_classes if num_classes is not None else int(max(t.max(), p.max())) + 1
    sens, _ = sensitivity_specificity(confusion_matrix(t, p, k))
    return float(np.nanmean(sens))


def sensitivity_specificity(cm: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-class one-vs-rest sensitivity ``TP/(TP+FN)`` and specificity ``TN/(TN+FP)`` from a confusion matrix.

    Rows of ``cm`` are true classes, columns predictions. A ratio with a zero denominator is ``nan``.
    For a binary task, index 1 is the usual "disease" sensitivity/specificity.
    """
    c = np.asarray(cm, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise InputError(f"The confusion matrix must be square (K×K), got shape {c.shape}.")
    tp = np.diag(c)
    fn = c.sum(axis=1) - tp
    fp = c.sum(axis=0) - tp
    tn = c.sum() - tp - fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        spec = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
    return sens, spec


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.size]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def _binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc_ovr(y_true: Any, probs: Any) -> float:
    """ROC-AUC: binary, or the unweighted (macro) mean of one-vs-rest AUCs.

    Each AUC is the Mann–Whitney statistic ``(R₊ − n₊(n₊+1)/2) / (n₊·n₋)`` with average ranks for tied
    scores (a tie counts one half), i.e. the probability that a random positive outscores a random
    negative. With K = 2 (or a 1-D array of scores) only class 1's probability is used. For K > 2, a
    class is skipped when it is absent from ``y_true`` (or is the only class present); ``nan`` when no
    class is usable.
    """
    t = _as_labels(y_true, "y_true")
    p = _as_probs(probs, t.size)
    k = p.shape[1]
    if t.size and t.max() >= k:
        raise InputError(f"y_true contains class index {t.max()} but probs has only {k} columns.")
    if k == 2:
        return _binary_auc(t == 1, p[:, 1])
    aucs = [_binary_auc(t == c, p[:, c]) for c in range(k)]
    usable = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(usable)) if usable else float("nan")


def quadratic_kappa(y_true: Any, y_pred: Any, num_classes: int) -> float:
    """Cohen's kappa with quadratic weights (ordinal grades, e.g. diabetic-retinopathy stages).

    ``κ = 1 − Σ w_ij O_ij / Σ w_ij E_ij`` with ``w_ij = (i − j)² / (K − 1)²``, ``O`` the confusion matrix
    and ``E = outer(row sums, column sums) / N`` the agreement expected by chance. 1 = perfect, 0 =
    chance, negative = worse than chance. ``nan`` when undefined (N = 0, K = 1, or both raters using a
    single identical class).
    """
    if num_classes < 2:
        return float("nan")
    o = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    n = o.sum()
    if n == 0:
        return float("nan")
    i, j = np.indices(o.shape)
    w = (i - j) ** 2 / (num_classes - 1) ** 2
    e = np.outer(o.sum(axis=1), o.sum(axis=0)) / n
    den = float((w * e).sum())
    if den == 0.0:
        return float("nan")
    return float(1.0 - (w * o).sum() / den)


def classification_report(
    y_true: Any, probs: Any, class_names: Sequence[str], ordinal: bool = False
) -> dict[str, Any]:
    """All classification metrics in one JSON-safe dict (predictions are ``argmax(probs)``).

    Keys: ``n``, ``num_classes``, ``class_names``, ``accuracy``, ``balanced_accuracy``, ``roc_auc``
    (:func:`roc_auc_ovr`), ``confusion_matrix`` (rows = true class), ``per_class`` (list of
    ``{name, support, sensitivity, specificity, precision, roc_auc}``); for K = 2 also top-level
    ``sensitivity``/``specificity`` of class 1; with ``ordinal=True`` also ``quadratic_kappa``.
    Undefined values (``nan``) are ``None``.
    """
    t = _as_labels(y_true, "y_true")
    p = _as_probs(probs, t.size)
    k = p.shape[1]
    if len(class_names) != k:
        raise UsageError(f"Got {len(class_names)} class names for {k} classes; give one name per class.")
    if t.size and t.max() >= k:
        raise InputError(f"y_true contains class index {t.max()} but there are only {k} classes.")
    y_pred = np.argmax(p, axis=1) if t.size else np.zeros(0, dtype=np.int64)
    cm = confusion_matrix(t, y_pred, k)
    sens, spec = sensitivity_specificity(cm)
    col = cm.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ppv = np.where(col > 0, np.diag(cm) / np.maximum(col, 1), np.nan)
    per_class = [
        {
            "name": str(class_names[c]),
            "support": int(cm[c].sum()),
            "sensitivity": sens[c],
            "specificity": spec[c],
            "precision": ppv[c],
            "roc_auc": _binary_auc(t == c, p[:, c]),
        }
        for c in range(k)
    ]
    out: dict[str, Any] = {
        "n": int(t.size),
        "num_classes": k,
        "class_names": [str(c) for c in class_names],
        "accuracy": accuracy(t, y_pred),
        "balanced_accuracy": balanced_accuracy(t, y_pred, k),
        "roc_auc": roc_auc_ovr(t, p) if t.size else float("nan"),
        "confusion_matrix": cm,
        "per_class": per_class,
    }
    if k == 2:
        out["sensitivity"] = sens[1]
        out["specificity"] = spec[1]
    if ordinal:
        out["quadratic_kappa"] = quadratic_kappa(t, y_pred, k)
    return json_safe(out)


# --------------------------------------------------------------------------------------------------------
# Localisation (needs an annotation mask)
# --------------------------------------------------------------------------------------------------------


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
    target = _dilate_disk(mask, int(tolerance_px)) if tolerance_px else mask
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


def _as_grid(grid: Any, name: str = "grid") -> tuple[int, int]:
    try:
        gh, gw = (int(v) for v in grid)
        ok = not isinstance(grid, str) and all(float(v) == int(v) for v in grid)
    except (TypeError, ValueError):
        ok = False
    if not ok or gh < 1 or gw < 1:
        raise UsageError(f"{name} must be two positive integers (rows, columns), got {grid!r}.")
    return gh, gw


def grid_oracle(mask: Any, grid: Sequence[int]) -> np.ndarray:
    """The mask average-pooled to ``grid = (gh, gw)``: the best map a map on that grid can be.

    Cell (i, j) holds the share of its area covered by the mask. When H or W is not a multiple of the grid
    the cells cut through pixels and each pixel counts with the exact area it has in the cell (integer
    interval overlaps, one rounding at the end; not a resize), so ``oracle.mean() == mask.mean()`` for every
    grid. Returns a gh×gw float64 array in [0, 1]; a grid finer than the mask is allowed (each cell then
    lies within one or two pixels).
    """
    m = _as_mask(mask).astype(np.int64)
    gh, gw = _as_grid(grid)
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
        return json_safe(
            {
                "precision": self.precision,
                "hits": self.hits,
                "picks": self.picks,
                "hit_flags": self.hit_flags,
                "boxes": self.boxes,
                "scores": self.scores,
            }
        )


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


# --------------------------------------------------------------------------------------------------------
# Complexity (no mask)
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# Faithfulness (needs the model)
# --------------------------------------------------------------------------------------------------------


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
    image: Any, saliency: Any, target: int, steps: int, patch: int, baseline: Baseline, mode: str,
    patch_score: str, blur_sigma: float,
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
        tile_score = (
            blocks.max(axis=(1, 3)) if patch_score == "max" else np.nanmean(blocks, axis=(1, 3))
        ).ravel()
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
        raise UsageError(f"images, saliencies and targets must have one entry per image, got {n}, "
                         f"{len(sals)} and {len(tgts)}.")
    modes = [mode] * n if isinstance(mode, str) else list(mode)
    bases = list(baseline) if isinstance(baseline, (list, tuple)) else [baseline] * n
    if len(modes) != n or len(bases) != n:
        raise UsageError(f"mode and baseline must be one value or one per image ({n}), got {len(modes)} and "
                         f"{len(bases)}.")
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
        predict_fn, [image], [saliency], [target], steps=steps, patch=patch, baseline=baseline, mode=mode,
        batch_size=batch_size, patch_score=patch_score, blur_sigma=blur_sigma,
    )[0]


# --------------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------------


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean, standard deviation (population, ddof = 0) and count of every numeric key over records.

    ``nan``/``None`` values are skipped (e.g. localisation scores of images without an annotation) and
    ``n`` counts the values used; booleans count as 0/1; non-numeric keys are ignored. JSON-safe: a key
    with no usable value has ``mean``/``std`` ``None`` and ``n`` 0. Keys keep first-seen order.
    """
    values: dict[str, list[float]] = {}
    for rec in records:
        for key, v in rec.items():
            if isinstance(v, (bool, np.bool_, numbers.Real)):
                values.setdefault(key, [])
                f = float(v)
                if math.isfinite(f):
                    values[key].append(f)
            elif v is None:
                values.setdefault(key, [])
    out: dict[str, dict[str, Any]] = {}
    for key, vals in values.items():
        arr = np.asarray(vals, dtype=np.float64)
        out[key] = {
            "mean": float(arr.mean()) if arr.size else None,
            "std": float(arr.std()) if arr.size else None,
            "n": int(arr.size),
        }
    return out
