"""Classification metrics: integer labels ``y_true`` (shape N) and class probabilities ``probs``
(shape N×K, e.g. a softmax); :func:`classification_report` gathers them in one JSON-safe dict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import InputError, UsageError
from .summary import json_safe

__all__ = [
    "accuracy",
    "balanced_accuracy",
    "classification_report",
    "confusion_matrix",
    "quadratic_kappa",
    "roc_auc_ovr",
    "sensitivity_specificity",
]


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
    """Per-class one-vs-rest sensitivity ``TP/(TP+FN)`` and specificity ``TN/(TN+FP)`` from a confusion
    matrix.

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


def classification_report(y_true: Any, probs: Any, class_names: Sequence[str], ordinal: bool = False) -> dict[str, Any]:
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
