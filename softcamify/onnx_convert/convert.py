"""``convert`` and ``inspect`` of a deployed ONNX classifier, by a graph rewrite (no torch).

:func:`rewrite_onnx` finds the tail (:mod:`.tail`), rewrites it (:mod:`.rewrite`), stamps softcamify's
metadata and verifies the result against the original in onnxruntime (:mod:`.verify`), returning the new
graph and its :class:`OnnxConversionReport`; :func:`convert_onnx` then writes it atomically (nothing is
written when any step fails). :func:`inspect_onnx` says what tail was found and whether the rewrite is exact.

The rewritten file is read by :class:`softcamify.onnx_runtime.OnnxModel` like a softcamify export:
``metadata_props`` carries the softcamify metadata (``softcamify`` JSON, class names, preprocessing) and
``logits_output`` / ``evidence_output``, the names of the outputs holding the pre-activation logits and
the evidence maps (the original outputs keep their names).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..binary import classes_phrase, names_fit
from ..config import DATA_KEYS, resolve_data_config
from ..errors import ConversionError, InputError, UsageError, ValidationError
from ..io import META_KEY, atomic_output, check_output_path
from ..onnx_runtime import EVIDENCE_NAME
from ..tolerance import DEFAULT_ATOL, DEFAULT_RTOL, allowed
from . import verify
from .rewrite import rewrite
from .tail import GraphIndex, OnnxTail, find_tail

__all__ = ["OnnxConversionReport", "OnnxInspectReport", "convert_onnx", "inspect_onnx", "rewrite_onnx"]

FORMAT_VERSION = 1
LOGITS_OUTPUT_KEY = "logits_output"
EVIDENCE_OUTPUT_KEY = "evidence_output"


@dataclass
class OnnxConversionReport:
    """The figures of ``convert model.onnx``: the keys of :class:`softcamify.ConversionReport`, and the tail."""

    exact: bool
    strategy: str
    architecture: str
    num_classes: int
    evidence_grid: list[Any]
    input_size: list[int]
    max_abs_diff: float
    max_rel_diff: float
    mean_abs_diff: float
    top1_agreement: float
    kl_divergence: float
    maps_mean_diff: float
    samples: int
    calibration_images: int
    atol: float
    passed: bool
    rtol: float = DEFAULT_RTOL
    logit_scale: float = 0.0
    logit_spread: float = 0.0
    output: str | None = None
    notes: list[str] = field(default_factory=list)
    output_stride: int | None = None
    original_grid: list[int] | None = None
    dilated_max_abs_diff: float | None = None
    compared_with: str = "the original ONNX graph in onnxruntime"
    tail: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # logits / evidence / the original outputs
    original_outputs: dict[str, Any] = field(default_factory=dict)  # agreement of each original output

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OnnxInspectReport:
    """What ``inspect model.onnx`` prints: the keys of :class:`softcamify.InspectReport`'s ``to_dict``."""

    architecture: str
    parameters: int
    data_config: dict[str, Any]
    is_softcam: bool
    num_classes: int
    class_names: list[str] | None
    tail: OnnxTail | None
    reason: str | None
    opset: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        t = self.tail
        return {
            "architecture": self.architecture,
            "source": {"kind": "onnx", "name": self.architecture, "opset": self.opset},
            "parameters": self.parameters,
            **{k: self.data_config.get(k) for k in ("input_size", "mean", "std", "interpolation", "crop_pct")},
            "is_softcam": self.is_softcam,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "notes": self.notes,
            "grids": {},
            "feature_shape": t.feature_shape if t else None,
            "layout": t.layout if t else None,
            "head": (f"{t.pool} → {' → '.join(t.between) + ' → ' if t.between else ''}{t.classifier}" if t else None),
            "pooling": t.pool if t else None,
            "between": list(t.between) if t else [],
            "classifier": t.classifier if t else None,
            "activation": t.activation if t else None,
            "strategy": t.strategy if t else None,
            "exact": bool(t) or self.is_softcam,
            "convertible": bool(t),
            "reason": self.reason,
            "tried": {},
            "evidence_grid": t.evidence_grid if t else None,
            "steps": [],
        }


def _load(model: Any) -> tuple[Any, str]:
    """(onnx.ModelProto, a name for messages) of a path or a proto; one input (initializers aside)."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        proto, name = model, model.graph.name or "the ONNX model"
    else:
        path = Path(model)
        if not path.is_file():
            raise InputError(f"Model file {path} does not exist." if not path.exists() else f"{path} is not a file.")
        try:
            proto = onnx.load(str(path))
        except Exception as e:
            raise InputError(
                f"{path} is not an ONNX model onnx can read ({type(e).__name__}: {str(e)[:160]})."
            ) from None
        name = path.stem
    weights = {t.name for t in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise InputError(
            f"{name} has {len(inputs)} inputs ({', '.join(inputs)}); softcamify converts image classifiers with one."
        )
    return proto, name


def _props(proto: Any) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def _json(text: str | None) -> Any:
    try:
        return None if text is None else json.loads(text)
    except ValueError:
        return text


def _data_config(proto: Any, overrides: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The preprocessing (given options, then the file's metadata_props, then a static channels-first input
    shape): complete and checked when mean, std and input_size are known (True), else what is known."""
    props = _props(proto)
    meta = _json(props.get(META_KEY))
    cfg: dict[str, Any] = dict((meta or {}).get("data_config") or {}) if isinstance(meta, dict) else {}
    for key in DATA_KEYS:
        if cfg.get(key) is None and props.get(key) is not None:
            cfg[key] = _json(props[key])
    dims = verify.data_input(proto).type.tensor_type.shape.dim
    static = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    size = overrides.get("input_size")
    if size is not None and len(size) == 2:
        channels = static[1] if len(static) == 4 and static[1] else (cfg.get("input_size") or [3])[0]
        overrides = {**overrides, "input_size": [int(channels), *size]}
    if cfg.get("input_size") is None and len(static) == 4 and all(static[1:]):
        cfg["input_size"] = list(static[1:])
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if all(cfg.get(k) is not None for k in ("mean", "std", "input_size")):
        return resolve_data_config(cfg).to_dict(), True
    return {k: v for k, v in cfg.items() if k in DATA_KEYS and v is not None}, False


def _class_names(proto: Any, given: Sequence[str] | None, k: int) -> list[str]:
    if given is not None:
        names = [str(c) for c in given]
        if not names_fit(k, len(names)):
            raise UsageError(
                f"{len(names)} class names were given but the model has {classes_phrase(k)}.", param="class_names"
            )
        return names
    parsed = _json(_props(proto).get("class_names"))
    if isinstance(parsed, list) and names_fit(k, len(parsed)):
        return [str(c) for c in parsed]
    return [f"class_{i}" for i in range(k)] if k > 1 else ["class_0", "class_1"]


def _parameters(proto: Any) -> int:
    import math

    return int(sum(math.prod(t.dims) for t in proto.graph.initializer))


def inspect_onnx(model: str | os.PathLike | Any) -> OnnxInspectReport:
    """What tail ``model`` (an ``.onnx`` path or an ``onnx.ModelProto``) has and whether the rewrite is exact."""
    proto, name = _load(model)
    index = GraphIndex(proto)
    is_softcam = any(o.name == EVIDENCE_NAME for o in proto.graph.output)
    tail, reason = None, None
    if not is_softcam:
        try:
            tail = find_tail(proto, index)
        except ConversionError as e:
            reason = str(e)
    cfg, complete = _data_config(proto, {})
    k = tail.num_classes if tail else 0
    names = _class_names(proto, None, k) if tail else None
    notes = []
    if tail and not complete:
        notes.append("the file does not record its preprocessing: give mean and std (and input_size) to convert.")
    if is_softcam:
        notes.append("the graph already has an 'evidence' output: it is a SoftCAM model.")
    return OnnxInspectReport(
        architecture=_props(proto).get("architecture") or name,
        parameters=_parameters(proto),
        data_config=cfg,
        is_softcam=is_softcam,
        num_classes=len(names or []) if tail else 0,
        class_names=names,
        tail=tail,
        reason=reason,
        opset=index.opset,
        notes=notes,
    )


def rewrite_onnx(
    model: str | os.PathLike | Any,
    *,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_size: Sequence[int] | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    samples: int = 8,
    calibration: str | os.PathLike | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    seed: int = 0,
    strict: bool = False,
) -> tuple[Any, OnnxConversionReport]:
    """The SoftCAM rewrite of an ONNX classifier and its report, verified in onnxruntime (nothing written).

    ``input_size``: (H, W) or (C, H, W), needed when the graph's input size is not fixed. ``strict`` is
    accepted for parity with :func:`softcamify.convert`: every ONNX rewrite is exact (or refused).
    Raises :class:`~softcamify.errors.ConversionError` (no exact tail; the message names the node),
    :class:`~softcamify.errors.ValidationError` (the rewrite does not match the original within
    ``atol + rtol × scale``, or fails the ONNX checker).
    """
    del strict  # nothing approximate is ever produced
    if samples < 1:
        raise UsageError("samples must be at least 1.", param="samples")
    proto, name = _load(model)
    if any(o.name == EVIDENCE_NAME for o in proto.graph.output):
        raise ConversionError(
            f"{name} already has an '{EVIDENCE_NAME}' output: it is a SoftCAM model; there is nothing to convert."
        )
    index = GraphIndex(proto)
    tail = find_tail(proto, index)
    new = rewrite(proto, tail, index.opset)
    overrides = {
        "mean": mean,
        "std": std,
        "input_size": input_size,
        "interpolation": interpolation,
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
    }
    cfg, complete = _data_config(proto, overrides)
    names = _class_names(proto, class_names, tail.num_classes)
    shape = verify.input_shape(proto, cfg.get("input_size"), samples)
    elem = verify.data_input(proto).type.tensor_type.elem_type
    x = verify.random_inputs(shape, samples, seed, {10: "float16", 11: "float64"}.get(elem, "float32"))
    n_cal = 0
    if calibration is not None:
        if not complete:
            raise UsageError(
                "calibration images need the preprocessing: give mean, std and input_size.",
                param=("mean", "std", "input_size"),
            )
        from ..data.collect import calibration_images

        cal = calibration_images(calibration, cfg)
        if list(cal.shape[1:]) != list(shape[1:]):
            raise UsageError(
                f"calibration images preprocess to {list(cal.shape[1:])}, but the graph takes {shape[1:]} "
                "(a channels-last input?); verify on random inputs only.",
                param="calibration",
            )
        n_cal = len(cal)
        x = verify.np.concatenate([x, cal.astype(x.dtype)])
    original_outputs = [o.name for o in proto.graph.output]
    verify.check_graph(new.model)
    stats = verify.compare(
        proto,
        new.model,
        logits=new.logits,
        original_logits=tail.logits,
        evidence=new.evidence,
        original_outputs=original_outputs,
        inputs=x,
        atol=atol,
        rtol=rtol,
    )
    others_ok = all(v["passed"] for v in stats["outputs"].values())
    passed = bool(stats["logits_passed"] and stats["maps_passed"] and others_ok)
    grid = stats["evidence_shape"][1:]
    report = OnnxConversionReport(
        exact=True,
        strategy=tail.strategy,
        architecture=_props(proto).get("architecture") or name,
        num_classes=tail.num_classes,
        evidence_grid=grid,
        input_size=[int(v) for v in shape[1:]],
        samples=samples,
        calibration_images=n_cal,
        atol=atol,
        rtol=rtol,
        passed=passed,
        **{
            k: stats[k]
            for k in (
                "max_abs_diff",
                "max_rel_diff",
                "mean_abs_diff",
                "top1_agreement",
                "kl_divergence",
                "maps_mean_diff",
                "logit_scale",
                "logit_spread",
            )
        },
        tail=tail.to_dict(),
        outputs={"logits": new.logits, "evidence": new.evidence, "original": ", ".join(original_outputs)},
        original_outputs=stats["outputs"],
    )
    report.notes.append(f"verified against {report.compared_with} on {len(x)} inputs.")
    if tail.activation:
        report.notes.append(
            f"the output '{tail.output}' keeps its {tail.activation}; the logits before it are the output "
            f"'{new.logits}'."
        )
    if not complete:
        report.notes.append(
            "the preprocessing is not recorded (no mean/std given): predict, explain and evaluate will ask for it."
        )
    if not passed:
        what = [] if stats["logits_passed"] else [f"logits: max |Δ| {report.max_abs_diff:.3g}"]
        if not stats["maps_passed"]:
            what.append(f"mean of evidence vs logits: max |Δ| {report.maps_mean_diff:.3g}")
        what += [
            f"output '{k}': max |Δ| {v['max_abs_diff']:.3g}" for k, v in stats["outputs"].items() if not v["passed"]
        ]
        raise ValidationError(
            f"The rewritten {report.architecture} differs from the original beyond atol {atol:g} + rtol {rtol:g} × "
            f"scale (allowed {allowed(report.logit_scale, atol, rtol):.3g}; {'; '.join(what)}); nothing was written.",
            param=("atol", "rtol"),
        )
    _stamp(new.model, report, names, cfg, complete, index.opset, name, new.outputs)
    return new.model, report


def _stamp(
    proto: Any,
    report: OnnxConversionReport,
    names: list[str],
    cfg: dict[str, Any],
    complete: bool,
    opset: int,
    name: str,
    outputs: list[str],
) -> None:
    """softcamify's metadata in ``metadata_props`` (other keys are kept)."""
    logits, evidence = report.outputs["logits"], report.outputs["evidence"]
    meta = {
        "format": "softcamify",
        "format_version": FORMAT_VERSION,
        "source": {"kind": "onnx", "name": report.architecture, "file": name},
        "strategy": report.strategy,
        "exact": True,
        "num_classes": report.num_classes,
        "class_names": names,
        "data_config": cfg,
        "head": {"kind": "onnx_rewrite", "tail": report.tail},
        "layout": "NCHW",
        "conversion": report.to_dict(),
        "history": [],
        "versions": {"softcamify": __version__},
        "export": {
            "format": "onnx",
            "format_version": FORMAT_VERSION,
            "exporter": "onnx_rewrite",
            "opset": opset,
            "outputs": outputs,
            "logits": logits,
            "evidence": evidence,
            "softcamify": __version__,
        },
    }
    props: dict[str, str] = {
        META_KEY: json.dumps(meta, sort_keys=True, default=str),
        "softcamify_version": __version__,
        "format_version": str(FORMAT_VERSION),
        "architecture": report.architecture,
        "source_kind": "onnx",
        "strategy": report.strategy,
        "exact": "true",
        "num_classes": str(report.num_classes),
        "class_names": json.dumps(names),
        LOGITS_OUTPUT_KEY: logits,
        EVIDENCE_OUTPUT_KEY: evidence,
        "outputs": f"{logits}: N×K logits; {evidence}: N×K×h×w signed class-evidence maps whose mean over the "
        f"positions is {logits}",
    }
    if complete:
        crop = cfg.get("crop_pct")
        props.update(
            input_size=json.dumps([int(v) for v in cfg["input_size"]]),
            mean=json.dumps([float(v) for v in cfg["mean"]]),
            std=json.dumps([float(v) for v in cfg["std"]]),
            interpolation=str(cfg.get("interpolation") or "bicubic"),
            crop_pct="null" if crop is None else repr(float(crop)),
            crop_mode=str(cfg.get("crop_mode") or "center"),
        )
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def convert_onnx(
    model: str | os.PathLike | Any,
    output: str | os.PathLike,
    *,
    force: bool = False,
    **options: Any,
) -> OnnxConversionReport:
    """Rewrite an ONNX classifier into a SoftCAM ONNX model and write it to ``output`` (atomically; nothing
    is written when the rewrite is refused or does not verify). ``options``: those of :func:`rewrite_onnx`."""
    out = Path(output)
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"output {out} must end in .onnx (the rewritten ONNX model).", param="output")
    check_output_path(out, force=force)
    proto, report = rewrite_onnx(model, **options)
    data = proto.SerializeToString()
    with atomic_output(out, force=force) as tmp:
        tmp.write_bytes(data)
    report.output = str(out)
    return report
