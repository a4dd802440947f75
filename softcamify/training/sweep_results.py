"""What a λ sweep returns and reports: :class:`SweepRun`, :class:`SweepResult`, :class:`SweepReporter`,
:class:`SweepInterrupted`.

Part of :mod:`softcamify.training.sweep`, which re-exports all four.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import EXIT_INTERRUPTED, SoftcamifyError
from ..evaluation.metrics import json_safe

__all__ = ["SweepRun", "SweepResult", "SweepReporter", "SweepInterrupted"]


@dataclass
class SweepRun:
    """One λ pair: its run folder and its validation scores.

    ``score`` is the localization score the rule ranks by (``share_of_oracle`` with masks, ``sparsity``
    without), ``tiebreak`` the rule's second key (``stability`` without masks, else None).
    """

    tag: str
    l1: float
    l2: float
    run_dir: str
    best_path: str | None = None
    device: str = "cpu"
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    share_of_oracle: float | None = None
    activation_precision: float | None = None
    pointing_game: float | None = None
    sparsity: float | None = None
    stability: float | None = None
    map_l1: float | None = None
    score: float | None = None
    tiebreak: float | None = None
    qualified: bool = False
    recommended: bool = False
    pareto: bool = False
    best_epoch: int | None = None
    epochs_completed: int = 0
    finetune_val: dict[str, Any] | None = None  # finetune's own validation record of the best epoch
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:  # the rule reads runs and sweep.json entries alike
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def to_dict(self) -> dict[str, Any]:
        return json_safe({f.name: getattr(self, f.name) for f in fields(self)})


@dataclass
class SweepResult:
    """What :func:`sweep` returns; ``to_dict()`` is ``sweep.json`` and the ``--json`` output."""

    out_dir: str
    grid: list[dict[str, Any]]
    reference: dict[str, Any]
    runs: list[SweepRun]
    recommended: SweepRun | None
    rule: dict[str, Any]
    tolerance: float
    localization: str  # "share_of_oracle" (masks) or "sparsity" (no masks)
    data: dict[str, Any]
    config: dict[str, Any]
    devices: list[str]
    paths: dict[str, str | None]
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "out_dir": self.out_dir,
                "grid": self.grid,
                "rule": self.rule,
                "tolerance": self.tolerance,
                "localization": self.localization,
                "reference": self.reference,
                "runs": [r.to_dict() for r in self.runs],
                "recommended": self.recommended.to_dict() if self.recommended is not None else None,
                "data": self.data,
                "config": self.config,
                "devices": self.devices,
                "paths": self.paths,
                "notes": self.notes,
                "elapsed_s": self.elapsed_s,
            }
        )


class SweepInterrupted(SoftcamifyError):
    """Ctrl-C (or SIGTERM) during a sweep: completed runs stay in ``OUT/runs``; no summary file is written."""

    exit_code = EXIT_INTERRUPTED


class SweepReporter:
    """Receives progress from :func:`sweep`; the base class ignores it all. Runs on several devices call
    ``run_start``/``epoch_end``/``run_end`` from worker threads."""

    def start(self, info: dict[str, Any]) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def reference(self, entry: dict[str, Any]) -> None:
        pass

    def run_start(self, tag: str, device: str, index: int, total: int) -> None:
        pass

    def epoch_end(self, tag: str, record: dict[str, Any]) -> None:
        pass

    def run_end(self, run: SweepRun) -> None:
        pass

    def end(self, result: SweepResult) -> None:
        pass
