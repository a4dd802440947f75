"""What :func:`~softcamify.evaluation.diff.diff` returns and judges: :class:`DiffReport` and its gates
(``max_flips``, ``min_rank_corr``, ``min_topk_iou``, ``max_prob_change``, ``max_peak_shift``,
``max_accuracy_drop``, ``fail_on_new_shortcut``), judged into :class:`~softcamify.evaluation.gates.GateOutcome` s.
Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from . import metrics as M
from .gates import Gate, GateOutcome

__all__ = ["DIFF_GATES", "DiffReport", "diff_gates", "judge"]

#: the gates of ``diff``: option → (the reported value it reads, op, valid range)
DIFF_GATES: dict[str, tuple[str, str, tuple[float, float]]] = {
    "max_flips": ("flips", "<=", (0.0, math.inf)),
    "min_rank_corr": ("rank_corr", ">=", (-1.0, 1.0)),
    "min_topk_iou": ("topk_iou", ">=", (0.0, 1.0)),
    "max_prob_change": ("max_prob_change", "<=", (0.0, 1.0)),
    "max_peak_shift": ("peak_shift", "<=", (0.0, 1.0)),
    "max_accuracy_drop": ("accuracy_drop", "<=", (-1.0, 1.0)),
}


@dataclass
class DiffReport:
    """What :func:`~softcamify.evaluation.diff.diff` returns (JSON: :meth:`to_dict`)."""

    old: dict[str, Any]  # description, backend, evidence grid, input size
    new: dict[str, Any]
    data: dict[str, Any]  # source, images, labelled, masks
    settings: dict[str, Any]
    predictions: dict[str, Any]  # flips, flipped images, |Δp|, accuracies
    agreement: dict[str, Any]  # overall means and per class
    localization: dict[str, Any] | None  # per model, with masks
    shortcuts: list[dict[str, Any]]  # per class: both models' fixed-region share and flags
    per_image: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    gates: list[GateOutcome] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)  # the most-changed images, for the page
    report: str | None = None
    junit: str | None = None

    @property
    def new_shortcuts(self) -> list[str]:
        """Classes flagged for the new model and not for the old one."""
        return [s["class"] for s in self.shortcuts if s["new"]["flagged"] and not s["old"]["flagged"]]

    def to_dict(self) -> dict[str, Any]:
        return M.json_safe(
            {
                "old": self.old,
                "new": self.new,
                "data": self.data,
                "settings": self.settings,
                "predictions": self.predictions,
                "agreement": self.agreement,
                "localization": self.localization,
                "shortcuts": self.shortcuts,
                "new_shortcuts": self.new_shortcuts,
                "gates": [g.to_dict() for g in self.gates],
                "notes": self.notes,
                "report": self.report,
                "junit": self.junit,
            }
        )


# --------------------------------------------------------------------------------------------------------
# Gates
# --------------------------------------------------------------------------------------------------------


def diff_gates(
    max_flips: int | None = None,
    min_rank_corr: float | None = None,
    min_topk_iou: float | None = None,
    max_prob_change: float | None = None,
    max_peak_shift: float | None = None,
    fail_on_new_shortcut: bool = False,
    max_accuracy_drop: float | None = None,
) -> list[Gate]:
    """The gates asked for, checked (a threshold outside its range is a :class:`UsageError`)."""
    given = {
        "max_flips": max_flips,
        "min_rank_corr": min_rank_corr,
        "min_topk_iou": min_topk_iou,
        "max_prob_change": max_prob_change,
        "max_peak_shift": max_peak_shift,
        "max_accuracy_drop": max_accuracy_drop,
    }
    gates = []
    for option, value in given.items():
        if value is None:
            continue
        metric, op, (lo, hi) = DIFF_GATES[option]
        v = float(value)
        if not math.isfinite(v) or not lo <= v <= hi:
            rng = f"at least {lo:g}" if hi == math.inf else f"between {lo:g} and {hi:g}"
            raise UsageError(f"{option} must be {rng}, got {value}.", param=option)
        if option == "max_flips" and v != int(v):
            raise UsageError(f"max_flips is a number of images, got {value}.", param=option)
        gates.append(Gate(metric, op, v))
    if fail_on_new_shortcut:
        gates.append(Gate("new_shortcuts", "<=", 0.0))
    return gates


def judge(report: DiffReport, gates: Sequence[Gate]) -> list[GateOutcome]:
    values = {
        "flips": float(report.predictions["flips"]),
        "rank_corr": report.agreement["overall"]["rank_corr"],
        "topk_iou": report.agreement["overall"]["topk_iou"],
        "max_prob_change": report.predictions["max_prob_change"],
        "peak_shift": report.agreement["overall"]["peak_shift"],
        "new_shortcuts": float(len(report.new_shortcuts)),
        "accuracy_drop": _accuracy_drop(report.predictions),
    }
    out = []
    for g in gates:
        v = values[g.metric]
        value = None if v is None or not math.isfinite(float(v)) else float(v)
        passed = value is not None and (value >= g.threshold if g.op == ">=" else value <= g.threshold)
        out.append(GateOutcome(g, value, passed))
    return out


def _accuracy_drop(predictions: dict[str, Any]) -> float | None:
    """OLD's accuracy minus NEW's (None without labels: its gate then fails, as an unmeasured value)."""
    acc = predictions.get("accuracy")
    return None if acc is None else float(acc["old"]) - float(acc["new"])


# --------------------------------------------------------------------------------------------------------
