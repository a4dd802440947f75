"""Evaluation: how well a SoftCAM model classifies and how well its maps explain, against baselines.

The modules, in the order of one run:

* :mod:`.metrics` — the metrics on arrays, numpy only (classification, saliency, faithfulness, map ops);
* :mod:`.samples` — the images of a split, their labels matched to the model's classes, aligned masks;
* :mod:`.settings` — the explanation metrics' options, checked and resolved for the model's input;
* :mod:`.baselines` — post-hoc CAM methods through pytorch-grad-cam (imports torch);
* :mod:`.scoring` — the metrics of one chunk of maps; :mod:`.run` — :func:`evaluate`, its steps;
* :mod:`.results` — what ``evaluate`` returns; :mod:`.report` — table rows and :func:`write_report`;
* :mod:`.gates` — quality gates on a result (``fail_under``/``fail_over``) and their JUnit XML report;
* :mod:`.diff` — :func:`diff`: two model versions on the same images (flips, evidence agreement, shortcut
  flags, gates); :mod:`.diff_report` writes its page, JSON and JUnit files.

``evaluate`` computes and returns an :class:`EvaluationResult`; ``write_report`` writes it (``evaluate``
calls it when given ``out_dir``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .diff import DiffReport, diff
    from .gates import Gate, GateOutcome, check_gates, parse_gates, require_gates, write_junit
    from .report import classification_rows, metric_rows, write_report
    from .results import METRICS, REFERENCES, EvaluationResult, MethodResult
    from .run import evaluate
    from .samples import evaluation_samples
    from .settings import ExplanationOptions

__all__ = [
    "DiffReport",
    "METRICS",
    "REFERENCES",
    "EvaluationResult",
    "ExplanationOptions",
    "Gate",
    "GateOutcome",
    "MethodResult",
    "check_gates",
    "classification_rows",
    "diff",
    "evaluate",
    "evaluation_samples",
    "metric_rows",
    "parse_gates",
    "require_gates",
    "write_junit",
    "write_report",
]

# Loaded on first use, not here: :mod:`.metrics` sits low in the package (layer 1, tests/test_layering.py),
# imported by softcamify.explanations and softcamify.render, and importing it runs this file first; an eager
# ``from .run import evaluate`` would import explanations back while they are still loading (an import circle).
_HOME = {
    "METRICS": "results",
    "REFERENCES": "results",
    "EvaluationResult": "results",
    "MethodResult": "results",
    "ExplanationOptions": "settings",
    "evaluate": "run",
    "evaluation_samples": "samples",
    "classification_rows": "report",
    "metric_rows": "report",
    "write_report": "report",
    "DiffReport": "diff",
    "diff": "diff",
    "Gate": "gates",
    "GateOutcome": "gates",
    "check_gates": "gates",
    "parse_gates": "gates",
    "require_gates": "gates",
    "write_junit": "gates",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
