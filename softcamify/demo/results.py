"""The demo's progress and results as data: steps, the reporter protocol, the run's result (``demo.json``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .._version import __version__
from .settings import MARKER_KEY


@dataclass
class StepResult:
    """One step of the demo: what it did (``summary``), key figures (``details``), how long it took."""

    key: str
    title: str
    seconds: float = 0.0
    summary: str = ""
    details: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["details"] = {k: v for k, v in self.details}
        return d


class DemoReporter:
    """Receives the demo's progress; the base class ignores it (the CLI shows rich progress and tables)."""

    def step_start(self, step: StepResult, index: int, count: int) -> None:
        pass

    def progress(self, done: int, total: int | None, text: str = "") -> None:
        pass

    def step_end(self, step: StepResult) -> None:
        pass

    def note(self, message: str) -> None:
        pass


@dataclass
class DemoResult:
    """What :func:`run_demo` returns; ``to_dict()`` is the ``--json`` output (also ``OUT_DIR/demo.json``)."""

    out_dir: str
    report: str
    device: str
    seconds: float
    steps: list[StepResult]
    figures: dict[str, Any]
    files: dict[str, str]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from ..evaluation.metrics import json_safe

        return json_safe(
            {
                MARKER_KEY: __version__,
                "status": "done",
                "out_dir": self.out_dir,
                "report": self.report,
                "device": self.device,
                "seconds": self.seconds,
                "steps": [s.to_dict() for s in self.steps],
                "figures": self.figures,
                "files": self.files,
                "settings": self.settings,
                "notes": self.notes,
            }
        )


class SweepProgress:
    """Forwards the λ sweep's progress (the softcamify.training.sweep.SweepReporter protocol) to the demo
    reporter."""

    def __init__(self, rep: DemoReporter):
        self.rep = rep
        self.index = self.total = 0
        self.tag = ""

    def start(self, info: dict[str, Any]) -> None:
        pass

    def note(self, message: str) -> None:
        self.rep.note(message)

    def reference(self, entry: dict[str, Any]) -> None:
        pass

    def run_start(self, tag: str, device: str, index: int, total: int) -> None:
        self.index, self.total, self.tag = index - 1, total, tag  # index counts from 1
        self.rep.progress(index - 1, total, f"run {index}/{total}: {tag}")

    def epoch_end(self, tag: str, record: dict[str, Any]) -> None:
        v = record["val"]
        self.rep.progress(
            self.index,
            self.total,
            f"run {self.index + 1}/{self.total}: {tag} · epoch {record['epoch']} · "
            f"val acc {v.get('accuracy', float('nan')):.2f}",
        )

    def run_end(self, run: Any) -> None:
        self.rep.progress(self.index + 1, self.total, f"run {self.index + 1}/{self.total}: {run.tag} done")

    def end(self, result: Any) -> None:
        pass


def pick(d: Any, keys: Sequence[str]) -> dict[str, Any]:
    """``{key: d.get(key)}`` for ``keys``, in that order (None for a key ``d`` lacks): a figure's fields."""
    return {k: d.get(k) for k in keys}


def grid_text(g: Any) -> str:
    """A grid shape as ``h×w`` (empty for None)."""
    return "×".join(str(int(v)) for v in g or [])
