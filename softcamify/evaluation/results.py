"""What :func:`softcamify.evaluation.evaluate` returns: per-method records and their summaries, the whole
result and its JSON form (``to_dict()`` is the ``--json`` output and ``metrics.json``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import metrics as M

__all__ = ["METRICS", "REFERENCES", "EvaluationResult", "MethodResult"]

#: metric key -> (label, higher_is_better)
METRICS: dict[str, tuple[str, bool]] = {
    "activation_precision": ("activation precision", True),
    "share_of_oracle": ("share of oracle", True),
    "activation_sensitivity": ("activation sensitivity", True),
    "pointing_game": ("pointing game", True),
    "energy_pointing_game": ("energy pointing game", True),
    "topk_precision": ("top-k patch precision", True),
    "deletion_auc": ("deletion AUC", False),
    "insertion_auc": ("insertion AUC", True),
    "sparsity": ("sparsity", True),
    "gini": ("Gini index", True),
}

#: reference values of each image, the same for every method: key -> label. ``chance`` is the mask's area
#: share (what a constant map scores on activation precision), ``oracle_precision`` the activation precision
#: of the mask average-pooled to the report's common reference grid (``settings["oracle_grid"]``).
REFERENCES: dict[str, str] = {
    "oracle_precision": "oracle precision (grid oracle)",
    "chance": "chance (mask share)",
}


@dataclass
class MethodResult:
    """Per-image explanation metrics of one method (SoftCAM, or a baseline on one model)."""

    key: str
    label: str
    model: str  # "softcam" or "original"
    records: list[dict[str, Any]] = field(default_factory=list)
    topk: list[M.TopKResult] = field(default_factory=list)
    deletion: list[np.ndarray] = field(default_factory=list)
    insertion: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self, k: int) -> dict[str, Any]:
        keys = [key for key in (*METRICS, *REFERENCES) if key != "topk_precision"]
        agg = M.aggregate({key: r.get(key) for key in keys} for r in self.records)
        curve = M.pooled_topk_precision(self.topk, k) if self.topk else []
        picks = sum(min(k, t.picks) for t in self.topk)
        metrics: dict[str, Any] = {}
        for key in (*METRICS, *REFERENCES):
            if key == "topk_precision":
                metrics[key] = {"mean": curve[-1] if curve else None, "std": None, "n": picks, "pooled": True}
            else:
                metrics[key] = agg.get(key, {"mean": None, "std": None, "n": 0})
        return M.json_safe(
            {
                "key": self.key,
                "label": self.label,
                "model": self.model,
                "images": len(self.records),
                "metrics": metrics,
                "topk_curve": curve,
                "deletion_curve": _mean_curve(self.deletion),
                "insertion_curve": _mean_curve(self.insertion),
                "seconds": self.seconds,
            }
        )


def _mean_curve(curves: Sequence[np.ndarray]) -> list[list[float]] | None:
    if not curves:
        return None
    if len({c.shape for c in curves}) != 1:
        return None
    stack = np.stack(curves)
    return np.stack([stack[0, :, 0], stack[:, :, 1].mean(axis=0)], axis=1).tolist()


@dataclass
class EvaluationResult:
    """What :func:`evaluate` returns; ``to_dict()`` is the ``--json`` output."""

    model: str
    backend: str
    data: dict[str, Any]
    counts: dict[str, int]
    classification: dict[str, Any]
    original_classification: dict[str, Any] | None
    methods: list[MethodResult]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    per_image: list[dict[str, Any]] = field(default_factory=list)
    #: the report's example images (image, mask, maps, row…), for :func:`~softcamify.evaluation.write_report`;
    #: not part of ``to_dict()``
    examples: list[dict[str, Any]] = field(default_factory=list)
    report: str | None = None
    #: the quality gates judged on this result (:class:`~softcamify.evaluation.gates.GateOutcome`), in order
    gates: list[Any] = field(default_factory=list)
    junit: str | None = None

    def method_summaries(self) -> list[dict[str, Any]]:
        return [m.summary(int(self.settings["topk"])) for m in self.methods]

    def to_dict(self) -> dict[str, Any]:
        return M.json_safe(
            {
                "model": self.model,
                "backend": self.backend,
                "data": self.data,
                "counts": self.counts,
                "classification": self.classification,
                "original_classification": self.original_classification,
                "explanation": {
                    "methods": self.method_summaries(),
                    "metrics": {k: v[0] for k, v in METRICS.items()},
                    "higher_is_better": {k: v[1] for k, v in METRICS.items()},
                    "references": dict(REFERENCES),
                },
                "settings": self.settings,
                "notes": self.notes,
                "report": self.report,
                "gates": [g.to_dict() for g in self.gates],
                "junit": self.junit,
            }
        )


def image_counts(
    n: int, with_mask: int, annotated: int, explained: int, mask_root: Any, notes: list[str], unit: str = "image"
) -> dict[str, int]:
    """The image (or volume: ``unit``) counts of a result; what had no mask is said in ``notes``."""
    counts = {
        "images": n,
        "with_mask": with_mask,
        "annotated": annotated,
        "empty_mask": with_mask - annotated,
        "without_mask": n - with_mask,
        "explained": explained,
    }
    if mask_root is None:
        notes.append("No masks (none given and no masks/ folder in DATA_DIR): classification metrics only.")
    elif not annotated:
        notes.append(f"No {unit} of this split has a mask with foreground under {mask_root}: classification only.")
    if counts["without_mask"] and mask_root is not None:
        notes.append(f"{counts['without_mask']} {unit}(s) have no mask and were evaluated for classification only.")
    return counts
