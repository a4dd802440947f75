"""Quality gates on an evaluation: thresholds that fail a CI build, and their JUnit XML report.

A gate names one reported metric and a threshold. ``fail_under`` gates pass when the value is at least the
threshold (``op ">="``), ``fail_over`` gates when it is at most the threshold (``op "<="``, for lower-is-better
metrics such as ``deletion_auc``). The spec is comma-separated ``NAME=THRESHOLD`` items (or a mapping)::

    accuracy=0.95,balanced_accuracy=0.9         classification of the SoftCAM model
    sensitivity[malignant]=0.8                  per class: sensitivity, specificity, precision, roc_auc
    original.accuracy=0.9                       the original classifier's (evaluate's ``original``)
    activation_precision=0.3                    an explanation metric of SoftCAM (its mean over images)
    gradcam.pointing_game=0.5                   ... of another method, by its key in the report
    original:gradcam.pointing_game=0.5          ... of a baseline on the original classifier

A gate whose value is undefined (no annotated image, a class without images) fails. Torch-free.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GateFailed, UsageError
from ..io import write_bytes_atomic
from .results import METRICS

__all__ = [
    "CLASSIFICATION",
    "PER_CLASS",
    "Gate",
    "GateOutcome",
    "check_gates",
    "check_gate_targets",
    "junit_xml",
    "parse_gates",
    "require_gates",
    "write_junit",
]

#: classification metrics of the whole split (``sensitivity``/``specificity`` without a class: two classes only)
CLASSIFICATION = ("accuracy", "balanced_accuracy", "roc_auc", "quadratic_kappa", "sensitivity", "specificity")
#: classification metrics reported per class, gated as ``metric[class]``
PER_CLASS = ("sensitivity", "specificity", "precision", "roc_auc")
#: metrics whose values lie in [0, 1] (a threshold outside is a mistake, e.g. a percentage)
_UNIT = {*CLASSIFICATION, *PER_CLASS, *METRICS} - {"quadratic_kappa", "share_of_oracle", "sparsity"}
_OPS = {"fail_under": ">=", "fail_over": "<="}
_ITEM = re.compile(r"^(?:(?P<prefix>[^.\[\]=]+)\.)?(?P<metric>[A-Za-z_]+)(?:\[(?P<cls>[^\]]*)\])?\s*=\s*(?P<value>.*)$")


@dataclass(frozen=True)
class Gate:
    """One threshold: ``value op threshold`` must hold (``op`` is ``">="`` or ``"<="``)."""

    metric: str
    op: str
    threshold: float
    cls: str | None = None  # the class of a per-class metric
    prefix: str | None = None  # the method (explanation metrics) or the model (classification) as written

    @property
    def name(self) -> str:
        """The gate's metric as written: ``accuracy``, ``sensitivity[malignant]``, ``gradcam.pointing_game``."""
        head = f"{self.prefix}.{self.metric}" if self.prefix else self.metric
        return f"{head}[{self.cls}]" if self.cls is not None else head

    @property
    def option(self) -> str:
        return "fail_under" if self.op == ">=" else "fail_over"

    @property
    def explanation(self) -> bool:
        return self.metric in METRICS


@dataclass(frozen=True)
class GateOutcome:
    """A gate and the value it judged."""

    gate: Gate
    value: float | None
    passed: bool

    @property
    def message(self) -> str:
        g = self.gate
        if self.value is None:
            return f"{g.name} was not measured (undefined value), required {g.op} {g.threshold:g}"
        word = "under" if g.op == ">=" else "over"
        if self.passed:
            return f"{g.name} = {self.value:.4f} {g.op} {g.threshold:g}"
        return f"{g.name} = {self.value:.4f} is {word} {g.threshold:g}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.gate.name,
            "op": self.gate.op,
            "threshold": self.gate.threshold,
            "value": self.value,
            "passed": self.passed,
        }


# --------------------------------------------------------------------------------------------------------
# Parsing (no model or data needed)
# --------------------------------------------------------------------------------------------------------


def _items(spec: str | Mapping[str, float] | Sequence[str]) -> list[str]:
    if isinstance(spec, Mapping):
        return [f"{k}={v}" for k, v in spec.items()]
    if not isinstance(spec, str):
        return [item for part in spec for item in _items(part)]
    items, depth, cur = [], 0, ""
    for ch in spec:  # commas inside [class] do not split
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth <= 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    return [s.strip() for s in [*items, cur] if s.strip()]


def _known() -> str:
    return (
        f"classification: {', '.join(CLASSIFICATION)}; per class as metric[class]: {', '.join(PER_CLASS)}; "
        f"explanations (method.metric, default SoftCAM's): {', '.join(METRICS)}"
    )


def _parse_item(item: str, op: str, param: str) -> Gate:
    m = _ITEM.match(item)
    if m is None:
        raise UsageError(
            f"{param}: {item!r} is not NAME=THRESHOLD (e.g. accuracy=0.9, sensitivity[malignant]=0.8, "
            "gradcam.pointing_game=0.5).",
            param=param,
        )
    metric, cls, prefix = m["metric"], m["cls"], m["prefix"]
    if metric not in CLASSIFICATION and metric not in PER_CLASS and metric not in METRICS:
        raise UsageError(f"{param}: unknown metric {metric!r} in {item!r}; known metrics are {_known()}.", param=param)
    try:
        threshold = float(m["value"])
    except ValueError:
        threshold = math.nan
    if not math.isfinite(threshold):
        raise UsageError(f"{param}: the threshold of {item!r} is not a finite number.", param=param)
    if metric in _UNIT and not 0 <= threshold <= 1:
        raise UsageError(
            f"{param}: {metric} lies between 0 and 1, not {m['value'].strip()} (a percentage?).", param=param
        )
    if cls is not None:
        if metric not in PER_CLASS:
            raise UsageError(
                f"{param}: {metric} is not reported per class; per-class metrics are {', '.join(PER_CLASS)}.",
                param=param,
            )
        if not cls.strip():
            raise UsageError(f"{param}: {item!r} names an empty class.", param=param)
    if metric in METRICS:
        better_high = METRICS[metric][1]
        if better_high != (op == ">="):
            other = "fail_under" if better_high else "fail_over"
            word = "higher" if better_high else "lower"
            raise UsageError(f"{param}: {metric} is {word}-is-better; gate it with {other}.", param=(param, other))
    elif op == "<=":
        raise UsageError(
            f"{param}: {metric} is higher-is-better; gate it with fail_under.", param=(param, "fail_under")
        )
    return Gate(metric, op, threshold, cls=cls, prefix=prefix)


def parse_gates(
    fail_under: str | Mapping[str, float] | Sequence[str] | None = None,
    fail_over: str | Mapping[str, float] | Sequence[str] | None = None,
) -> list[Gate]:
    """The gates of two specs (``"accuracy=0.95,sensitivity[malignant]=0.8"`` or ``{"accuracy": 0.95}``):
    ``fail_under`` (value must be ≥ threshold) and ``fail_over`` (value must be ≤ threshold).

    Raises :class:`UsageError` for malformed items, unknown metrics, thresholds that are not finite or out
    of a metric's range, a gate on the wrong side of its metric, or a metric gated twice the same way.
    """
    gates: list[Gate] = []
    for param, spec in (("fail_under", fail_under), ("fail_over", fail_over)):
        if spec is None:
            continue
        for item in _items(spec):
            gate = _parse_item(item, _OPS[param], param)
            if any(g.name == gate.name and g.op == gate.op for g in gates):
                raise UsageError(f"{param}: {gate.name} is gated twice; give it once.", param=param)
            gates.append(gate)
    return gates


# --------------------------------------------------------------------------------------------------------
# Checking against what an evaluation reports
# --------------------------------------------------------------------------------------------------------


def check_gate_targets(
    gates: Sequence[Gate],
    *,
    methods: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    ordinal: bool = True,
    original: bool = True,
) -> None:
    """Raise :class:`UsageError` for a gate on a method, model or class this evaluation does not report
    (the message lists those it does); ``None`` skips that check (not known yet)."""
    for g in gates:
        param = g.option
        if g.explanation:
            key = g.prefix or "softcam"
            if methods is not None and key not in methods:
                raise UsageError(
                    f"{param}: {g.name} names method {key!r}, which this evaluation does not report; "
                    f"its methods are {', '.join(methods)}.",
                    param=(param, "baselines"),
                )
            continue
        if g.prefix not in (None, "softcam", "original"):
            raise UsageError(
                f"{param}: {g.name}: classification metrics are of softcam (the default) or original, "
                f"not {g.prefix!r}.",
                param=param,
            )
        if g.prefix == "original" and not original:
            raise UsageError(
                f"{param}: {g.name} needs the original classifier; give original.", param=(param, "original")
            )
        if g.metric == "quadratic_kappa" and not ordinal:
            raise UsageError(f"{param}: quadratic_kappa is reported with ordinal only.", param=(param, "ordinal"))
        if class_names is None:
            continue
        if g.cls is not None and g.cls not in class_names:
            raise UsageError(
                f"{param}: {g.name} names class {g.cls!r}; the classes are {', '.join(class_names)}.", param=param
            )
        if g.cls is None and g.metric in ("sensitivity", "specificity") and len(class_names) != 2:
            raise UsageError(
                f"{param}: {g.metric} of {len(class_names)} classes is reported per class; name one, e.g. "
                f"{g.metric}[{class_names[0]}].",
                param=param,
            )


def _value(result: Any, g: Gate) -> float | None:
    if g.explanation:
        key = g.prefix or "softcam"
        for s in result.method_summaries():
            if s["key"] == key:
                return s["metrics"][g.metric]["mean"]
        return None
    report = result.original_classification if g.prefix == "original" else result.classification
    if report is None:
        return None
    if g.cls is not None:
        row = next((p for p in report["per_class"] if p["name"] == g.cls), None)
        return None if row is None else row.get(g.metric)
    return report.get(g.metric)


def check_gates(result: Any, gates: Sequence[Gate]) -> list[GateOutcome]:
    """Each gate judged on an :class:`~softcamify.evaluation.EvaluationResult` (an undefined value fails)."""
    check_gate_targets(
        gates,
        methods=[m.key for m in result.methods],
        class_names=result.data["class_names"],
        ordinal="quadratic_kappa" in result.classification,
        original=result.original_classification is not None,
    )
    out = []
    for g in gates:
        v = _value(result, g)
        value = None if v is None or not math.isfinite(float(v)) else float(v)
        passed = value is not None and (value >= g.threshold if g.op == ">=" else value <= g.threshold)
        out.append(GateOutcome(g, value, passed))
    return out


def require_gates(outcomes: Sequence[GateOutcome]) -> None:
    """Raise :class:`~softcamify.errors.GateFailed` naming the failed gates, if any."""
    failed = [o for o in outcomes if not o.passed]
    if failed:
        raise GateFailed(
            f"{len(failed)} of {len(outcomes)} quality gates failed: {'; '.join(o.message for o in failed)}."
        )


# --------------------------------------------------------------------------------------------------------
# JUnit XML
# --------------------------------------------------------------------------------------------------------


def junit_xml(
    outcomes: Sequence[GateOutcome],
    *,
    suite: str = "softcamify evaluate",
    properties: Mapping[str, Any] | None = None,
    seconds: float = 0.0,
) -> bytes:
    """The gates as a JUnit XML report: one ``testsuite``, a ``testcase`` per gate, a ``failure`` per failed
    gate (the layout CI systems render); ``seconds`` is the suite's time (the evaluation's)."""
    failures = sum(not o.passed for o in outcomes)
    counts = {"tests": str(len(outcomes)), "failures": str(failures), "errors": "0", "skipped": "0"}
    root = ET.Element("testsuites", {"name": "softcamify", **counts, "time": f"{seconds:.3f}"})
    stamp = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0, tzinfo=None).isoformat()
    ts = ET.SubElement(root, "testsuite", {"name": suite, **counts, "time": f"{seconds:.3f}", "timestamp": stamp})
    if properties:
        props = ET.SubElement(ts, "properties")
        for k, v in properties.items():
            ET.SubElement(props, "property", {"name": str(k), "value": str(v)})
    for o in outcomes:
        g = o.gate
        name = f"{g.name} {g.op} {g.threshold:g}"
        tc = ET.SubElement(ts, "testcase", {"classname": "softcamify.gates", "name": name, "time": "0"})
        if not o.passed:
            failure = ET.SubElement(tc, "failure", {"message": o.message, "type": g.option})
            failure.text = f"value: {o.value}\nrequired: {g.op} {g.threshold!r} ({g.option})"
        else:
            ET.SubElement(tc, "system-out").text = o.message
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(
    outcomes: Sequence[GateOutcome],
    path: str | os.PathLike,
    force: bool = False,
    *,
    properties: Mapping[str, Any] | None = None,
    seconds: float = 0.0,
    suite: str = "softcamify evaluate",
) -> Path:
    """Write :func:`junit_xml` atomically (never over an existing file without ``force``)."""
    xml = junit_xml(outcomes, suite=suite, properties=properties, seconds=seconds)
    return write_bytes_atomic(path, xml, force=force)
