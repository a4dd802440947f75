"""The explanation metrics of maps for one chunk of images: localisation and complexity of each map against
its mask, an image's reference values, and deletion/insertion through the model (batched over images)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import metrics as M

__all__ = ["faithfulness_metrics", "localisation_metrics", "reference_values"]


def localisation_metrics(
    saliency: np.ndarray, mask: np.ndarray, s: dict[str, Any]
) -> tuple[dict[str, Any], M.TopKResult]:
    """Mask-based and complexity metrics of one map (deletion/insertion: :func:`faithfulness_metrics`)."""
    size = mask.shape
    up = M.upsample(saliency, size)
    norm = M.normalize_saliency(up)
    rec: dict[str, Any] = {
        "activation_precision": M.activation_precision(up, mask),
        "activation_sensitivity": M.activation_sensitivity(up, mask),
        "pointing_game": M.pointing_game(saliency, mask, tolerance_px=s["pointing_tolerance"]),
        "energy_pointing_game": M.energy_pointing_game(up, mask),
        "sparsity": M.sparsity(norm, threshold=s["sparsity_threshold"]),
        "gini": M.gini(norm),
    }
    topk = M.topk_patch_precision(
        saliency,
        mask,
        k=s["topk"],
        patch=s["patch_size"],
        stride=s["patch_stride"],
        threshold=s["topk_threshold"],
    )
    rec["topk_precision"] = topk.precision
    return rec, topk


def reference_values(mask: np.ndarray, grid: Sequence[int]) -> dict[str, float]:
    """An image's reference values: its mask share (chance) and the grid oracle's activation precision."""
    return {"chance": float(mask.mean()), "oracle_precision": M.oracle_precision(mask, grid)}


def faithfulness_metrics(
    predict: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    saliencies: Sequence[np.ndarray],
    targets: Sequence[int],
    s: dict[str, Any],
    batched: bool = True,
) -> list[tuple[float, np.ndarray, float, np.ndarray]]:
    """``(deletion AUC, deletion curve, insertion AUC, insertion curve)`` of each image of ``x``.

    Batched (default): the deletion and insertion inputs of every image stream through the model together
    (:func:`softcamify.evaluation.metrics.deletion_insertion_batch`), ``s["deletion_batch_size"]`` perturbed
    images per forward, every forward full. ``batched=False`` is the per-image path (two
    :func:`~softcamify.evaluation.metrics.deletion_insertion` calls per image and method, ``batch_size``
    inputs per forward, the last one of each curve partial): the same values, kept for
    benchmarks/evaluate_speed.py.
    """
    common = {"steps": s["steps"], "patch": s["deletion_patch"]}
    n = len(saliencies)
    if not batched:
        out = []
        for j in range(n):
            d_auc, d_curve = M.deletion_insertion(
                predict,
                x[j],
                saliencies[j],
                targets[j],
                baseline=0.0,
                mode="deletion",
                batch_size=s["batch_size"],
                **common,
            )
            i_auc, i_curve = M.deletion_insertion(
                predict,
                x[j],
                saliencies[j],
                targets[j],
                baseline="blur",
                mode="insertion",
                batch_size=s["batch_size"],
                **common,
            )
            out.append((d_auc, d_curve, i_auc, i_curve))
        return out
    res = M.deletion_insertion_batch(
        predict,
        [*x[:n], *x[:n]],
        [*saliencies, *saliencies],
        [*targets, *targets],
        baseline=[0.0] * n + ["blur"] * n,
        mode=["deletion"] * n + ["insertion"] * n,
        batch_size=s["deletion_batch_size"],
        **common,
    )
    return [(res[j][0], res[j][1], res[n + j][0], res[n + j][1]) for j in range(n)]
