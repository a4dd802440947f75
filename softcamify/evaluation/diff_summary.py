"""The summary of :func:`~softcamify.evaluation.diff.diff`'s pass: the evidence agreement per image and class on
the common grid (Spearman rank correlation, top-k IoU, peak shift, sparsity change), aggregated per class and
overall; the prediction changes; both models' localization with masks; the shortcut flags per model and class;
the per-image rows and the most-changed examples, assembled into a :class:`~.diff_results.DiffReport`.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import UsageError
from ..runtime import Runtime
from . import metrics as M
from .diff_pass import DiffImage, DiffPass
from .diff_results import DiffReport
from .metrics.agreement import region_size

__all__ = ["PER_IMAGE_CLASSES", "examples", "summarize"]

#: classes whose per-image values are kept in the per-image rows (more: only the means over classes)
PER_IMAGE_CLASSES = 20
_LOCALIZATION = ("activation_precision", "activation_sensitivity", "pointing_game", "energy_pointing_game")


# --------------------------------------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------------------------------------


def _model_info(rt: Runtime, grid: Sequence[int]) -> dict[str, Any]:
    return {
        "model": rt.description,
        "backend": rt.backend,
        "architecture": rt.architecture,
        "input_size": list(rt.input_size),
        "evidence_grid": [int(v) for v in grid],
    }


def _mean(values: Any) -> float | None:
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


# Long by the report's many parts, each a few lines, assembled in one place.
def summarize(
    old: Runtime,
    new: Runtime,
    items: Sequence[DiffImage],
    labels: np.ndarray | None,
    names: list[str],
    acc: DiffPass,
    notes: list[str],
    *,
    topk: int | None,
    region: float,
    threshold: float,
    min_images: int,
    sparsity_threshold: float,
) -> DiffReport:
    probs = np.concatenate(acc.probs, axis=1)  # 2×N×K
    maps_old = np.concatenate(acc.grid_maps[0])
    maps_new = np.concatenate(acc.grid_maps[1])
    grid = maps_old.shape[-2:]
    grid_old, grid_new = acc.shown[0][0].shape, acc.shown[1][0].shape
    if grid_old != grid_new:
        notes.append(
            f"The evidence grids differ (OLD {grid_old[0]}×{grid_old[1]}, NEW {grid_new[0]}×{grid_new[1]}): the "
            f"maps were compared on the common {grid[0]}×{grid[1]} grid, the finer one area-averaged onto it."
        )
    if old.data_config != new.data_config:
        notes.append("The models preprocess images differently; each map covers its own model's view of the image.")
    cells = int(grid[0] * grid[1])
    k = topk if topk is not None else max(1, round(0.1 * cells))
    if not 1 <= k <= cells:
        raise UsageError(f"topk must be between 1 and the {cells} cells of the common grid, got {k}.", param="topk")
    rho = M.rank_correlation(maps_old, maps_new)  # N×K
    iou = M.topk_iou(maps_old, maps_new, k)
    shift_cells, shift = M.peak_shift(maps_old, maps_new)
    d_sparsity = M.positive_sparsity(maps_new, sparsity_threshold) - M.positive_sparsity(maps_old, sparsity_threshold)
    per_metric: dict[str, np.ndarray] = {
        "rank_corr": np.asarray(rho),
        "topk_iou": np.asarray(iou),
        "peak_shift_cells": np.asarray(shift_cells),
        "peak_shift": np.asarray(shift),
        "sparsity_change": np.asarray(d_sparsity),
    }
    constant = int(np.isnan(np.asarray(rho)).sum())
    if constant:
        notes.append(f"{constant} map pair(s) have a constant map (no ranking): left out of the rank correlation.")
    agreement = {
        "grid": [int(v) for v in grid],
        "topk": k,
        "overall": {key: _mean(v) for key, v in per_metric.items()},
        "per_class": [
            {"class": name, **{key: _mean(v[:, c]) for key, v in per_metric.items()}} for c, name in enumerate(names)
        ],
    }
    predictions = _predictions(probs, items, labels, names)
    report = DiffReport(
        old=_model_info(old, grid_old),
        new=_model_info(new, grid_new),
        data={"images": len(items), "labelled": labels is not None, "class_names": names},
        settings={
            "common_grid": [int(v) for v in grid],
            "resampling": "exact area averaging onto the coarser grid (per axis)",
            "topk": k,
            "shortcut_region": region,
            "shortcut_region_cells": region_size(grid, region),
            "shortcut_threshold": threshold,
            "shortcut_min_images": min_images,
            "sparsity_threshold": sparsity_threshold,
        },
        predictions=predictions,
        agreement=agreement,
        localization=_localization(acc),
        shortcuts=_shortcuts(maps_old, maps_new, probs, labels, names, region, threshold, min_images),
        per_image=_per_image(items, probs, names, labels, per_metric),
        notes=notes,
    )
    return report


def _predictions(
    probs: np.ndarray, items: Sequence[DiffImage], labels: np.ndarray | None, names: Sequence[str]
) -> dict[str, Any]:
    top_old, top_new = probs[0].argmax(1), probs[1].argmax(1)
    flipped = np.flatnonzero(top_old != top_new)
    delta = np.abs(probs[1] - probs[0])
    out: dict[str, Any] = {
        "flips": int(flipped.size),
        "flip_rate": float(flipped.size / len(items)),
        "flipped": [
            {
                "path": str(items[i].path),
                "old": names[top_old[i]],
                "new": names[top_new[i]],
                "old_probability": float(probs[0][i, top_old[i]]),
                "new_probability": float(probs[1][i, top_new[i]]),
                **({"label": names[int(labels[i])]} if labels is not None else {}),
            }
            for i in flipped.tolist()
        ],
        "max_prob_change": float(delta.max()),
        "mean_prob_change": float(delta.max(axis=1).mean()),
    }
    if labels is not None:
        k = len(names)
        out["accuracy"] = {"old": M.accuracy(labels, top_old), "new": M.accuracy(labels, top_new)}
        out["balanced_accuracy"] = {
            "old": M.balanced_accuracy(labels, top_old, k),
            "new": M.balanced_accuracy(labels, top_new, k),
        }
    return out


def _localization(acc: DiffPass) -> dict[str, Any] | None:
    if not acc.loc_index:
        return None
    return {
        "images": len(acc.loc_index),
        "metrics": {
            key: {"old": _mean([r[key] for r in acc.loc[0]]), "new": _mean([r[key] for r in acc.loc[1]])}
            for key in _LOCALIZATION
        },
    }


def _shortcuts(
    maps_old: np.ndarray,
    maps_new: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray | None,
    names: Sequence[str],
    region: float,
    threshold: float,
    min_images: int,
) -> list[dict[str, Any]]:
    """Per class, both models' fixed-region share (images labelled with the class, else predicted as it)."""
    out = []
    for c, name in enumerate(names):
        row: dict[str, Any] = {"class": name}
        for side, maps in (("old", maps_old), ("new", maps_new)):
            who = labels if labels is not None else probs[0 if side == "old" else 1].argmax(1)
            sel = np.flatnonzero(who == c)
            rs = M.fixed_region_share(maps[sel, c], region) if sel.size else None
            if rs is None:
                row[side] = {"share": None, "uniform": None, "lift": None, "images": 0, "cells": [], "flagged": False}
                continue
            flagged = rs.images >= min_images and rs.share >= threshold
            row[side] = {**rs.to_dict(), "flagged": bool(flagged)}
        out.append(row)
    return out


def _per_image(
    items: Sequence[DiffImage],
    probs: np.ndarray,
    names: Sequence[str],
    labels: np.ndarray | None,
    per_metric: dict[str, np.ndarray],
) -> list[dict[str, Any]]:
    rows = []
    keep_classes = len(names) <= PER_IMAGE_CLASSES
    for i, it in enumerate(items):
        po, pn = probs[0][i], probs[1][i]
        row: dict[str, Any] = {
            "path": str(it.path),
            "old": names[int(po.argmax())],
            "new": names[int(pn.argmax())],
            "flipped": bool(po.argmax() != pn.argmax()),
            "max_prob_change": float(np.abs(pn - po).max()),
            **{key: _mean(v[i]) for key, v in per_metric.items()},
        }
        if labels is not None:
            row["label"] = names[int(labels[i])]
        if keep_classes:
            row["classes"] = {
                name: {key: float(v[i, c]) for key, v in per_metric.items()} for c, name in enumerate(names)
            }
        rows.append(M.json_safe(row))
    return rows


def examples(
    report: DiffReport, items: Sequence[DiffImage], acc: DiffPass, n: int, labels: np.ndarray | None
) -> list[dict[str, Any]]:
    """The ``n`` most-changed images (lowest mean rank correlation over classes; flips first), with the
    shown class's raw maps of both models."""
    if n == 0:
        return []
    order = sorted(
        range(len(items)),
        key=lambda i: (
            not report.per_image[i]["flipped"],
            report.per_image[i]["rank_corr"] if report.per_image[i]["rank_corr"] is not None else 2.0,
        ),
    )
    names = report.data["class_names"]
    out = []
    for i in order[:n]:
        cls = int(labels[i]) if labels is not None else names.index(report.per_image[i]["old"])
        out.append(
            {
                "index": i,
                "path": items[i].path,
                "class": names[cls],
                "old_map": acc.shown[0][i],
                "new_map": acc.shown[1][i],
                "row": report.per_image[i],
            }
        )
    return out
