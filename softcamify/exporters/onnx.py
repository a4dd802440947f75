"""Export a SoftCAM model to ONNX, validated in onnxruntime against PyTorch before it is written.

The ONNX graph has one input ``input`` (float32 N×C×H×W, normalized pixels) and two outputs,
``logits`` (N×K) and ``evidence`` (N×K×h×w, whose spatial mean is the logits); a volume model takes
N×C×D×H×W and returns evidence N×K×d×h×w (dims ``depth``/``evidence_depth`` besides height and width).
The batch axis is dynamic; the spatial axes are dynamic when the backbone allows it, which is detected: the dynamic
export is validated at a second input size and, when that fails, the model is exported with a static
size instead (the report says which and why).

Exporters are tried in order until one exports and validates (``onnx.checker`` with ``full_check``,
then onnxruntime at batch 1 and 3, and batch 2 at a second size when spatially dynamic; logits and
evidence within the tolerance of :mod:`softcamify.tolerance`). Above it nothing is written and
:class:`~softcamify.errors.ValidationError` is raised. The file is written to a temporary file,
validated there, and renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from typing_extensions import Unpack

from .._version import __version__
from ..errors import UsageError, ValidationError
from ..io import META_KEY, atomic_output, check_output_path
from ..model import SoftCAM
from ..onnx_runtime import EVIDENCE_NAME, INPUT_NAME, LOGITS_NAME
from ..options import LoadOptions
from ..runtime import load_softcam
from ..sources import cpu_float32
from ..tolerance import DEFAULT_ATOL, DEFAULT_RTOL
from .messages import clean_error_text
from .report import ExportError, ExportReport
from .validate import AttemptFailed, check_onnx

__all__ = ["EXPORTERS", "SPATIAL_MODES", "export_onnx", "onnx_metadata"]

EXPORTERS = ("auto", "dynamo", "torchscript")
SPATIAL_MODES = ("auto", "dynamic", "static")
DYNAMO_MIN_OPSET = 18  # torch's exporter writes opset 18+; older opsets go through TorchScript
ONNX_FORMAT_VERSION = 1
_MAX_PROTO_BYTES = 2_000_000_000  # protobuf's 2 GB limit (larger models need external data)


class _MapsModule(nn.Module):
    """What is exported: ``input`` -> ``(logits, evidence)``."""

    def __init__(self, model: SoftCAM):
        super().__init__()
        self.model = model

    def forward(self, input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: A002 (ONNX input name)
        return self.model.forward_maps(input)


def onnx_metadata(model: SoftCAM, *, exporter: str, opset: int, dynamic_spatial: bool) -> dict[str, str]:
    """The ``metadata_props`` of a softcamify export: everything a consumer needs, as strings."""
    meta = model.meta.to_dict()
    meta["export"] = {
        "format": "onnx",
        "format_version": ONNX_FORMAT_VERSION,
        "exporter": exporter,
        "opset": opset,
        "dynamic_spatial": dynamic_spatial,
        "input": INPUT_NAME,
        "outputs": [LOGITS_NAME, EVIDENCE_NAME],
        "softcamify": __version__,
        "torch": torch.__version__.split("+")[0],
    }
    cfg = dict(model.meta.data_config)
    crop_pct = cfg.get("crop_pct")
    volume = model.meta.spatial_dims == 3
    props = {
        META_KEY: json.dumps(meta, sort_keys=True),
        "softcamify_version": __version__,
        "format_version": str(ONNX_FORMAT_VERSION),
        "architecture": model.meta.architecture,
        "source_kind": str(model.meta.source.get("kind", "?")),
        "strategy": str(model.meta.strategy),
        "exact": "true" if model.meta.exact else "false",
        "num_classes": str(model.meta.num_classes),
        "class_names": json.dumps(list(model.meta.class_names)),
        "input_size": json.dumps([int(v) for v in cfg["input_size"]]),
        "mean": json.dumps([float(v) for v in cfg["mean"]]),
        "std": json.dumps([float(v) for v in cfg["std"]]),
        "interpolation": str(cfg.get("interpolation") or "bicubic"),
        "crop_pct": "null" if crop_pct is None else repr(float(crop_pct)),
        "crop_mode": str(cfg.get("crop_mode") or "center"),
        "layout": "NCDHW" if volume else "NCHW",
        "dynamic_spatial": "true" if dynamic_spatial else "false",
        "outputs": "logits: N×K; evidence: N×K×d×h×w signed class-evidence volumes whose mean over d, h, w is logits"
        if volume
        else "logits: N×K; evidence: N×K×h×w signed class-evidence maps whose mean over h, w is logits",
    }
    if volume:  # image exports keep exactly the properties they always had (absent: 2)
        props["spatial_dims"] = "3"
        if cfg.get("volume"):  # the volume preprocessing (softcamify.volumes.VolumeConfig), for predict
            props["volume"] = json.dumps(cfg["volume"], sort_keys=True)
    return props


@contextlib.contextmanager
def _quiet(log: io.StringIO):
    """Keep the exporters' progress lines, warnings and logs off the console (they go to ``log``)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


def _torch_export(module: nn.Module, x: torch.Tensor, f: Any, opset: int | None, **exporter_options: Any) -> Any:
    """``torch.onnx.export`` of ``module`` on ``x`` to ``f`` with the graph's input and output names (what
    :mod:`softcamify.onnx_runtime` looks for); ``exporter_options`` pick and set up the exporter."""
    return torch.onnx.export(
        module,
        (x,),
        f,
        input_names=[INPUT_NAME],
        output_names=[LOGITS_NAME, EVIDENCE_NAME],
        opset_version=opset,
        **exporter_options,
    )


def _export_dynamo(module: nn.Module, x: torch.Tensor, opset: int | None, dynamic_spatial: bool):
    import onnx

    dim = torch.export.Dim
    axes: dict[int, Any] = {0: dim("batch", min=1)}
    if dynamic_spatial:
        axes.update({a: dim.DYNAMIC for a in range(2, x.ndim)})
    program = _torch_export(
        module, x, None, opset, dynamo=True, dynamic_shapes={"input": axes}, optimize=True, verbose=False
    )
    proto = program.model_proto
    if not isinstance(proto, onnx.ModelProto):  # onnx_ir based versions return their own proto type
        proto = onnx.load_from_string(proto.SerializeToString())
    _rename_dynamic_dims(proto)
    return proto


def _export_torchscript(module: nn.Module, x: torch.Tensor, opset: int | None, dynamic_spatial: bool):
    import onnx

    axes: dict[str, dict[int, str]] = {INPUT_NAME: {0: "batch"}, LOGITS_NAME: {0: "batch"}, EVIDENCE_NAME: {0: "batch"}}
    if dynamic_spatial:
        labels = _SPATIAL_LABELS[x.ndim]
        axes[INPUT_NAME].update({2 + i: label for i, label in enumerate(labels)})
        axes[EVIDENCE_NAME].update({2 + i: f"evidence_{label}" for i, label in enumerate(labels)})
    buf = io.BytesIO()
    _torch_export(module, x, buf, opset, dynamo=False, dynamic_axes=axes, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


_SPATIAL_LABELS = {4: ("height", "width"), 5: ("depth", "height", "width")}  # by input rank


def _rename_dynamic_dims(proto) -> None:
    """Readable input dimension names in the dynamo exporter's graph: its symbols (``s16``, ``s82``) become
    ``height``/``width`` (and ``depth``) everywhere they appear (outputs: :func:`_name_output_dims`)."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    names = {}
    for axis, label in enumerate(_SPATIAL_LABELS.get(len(dims), ()), start=2):
        if len(dims) > axis and dims[axis].dim_param and re.fullmatch(r"s\d+", dims[axis].dim_param):
            names[dims[axis].dim_param] = label
    if names and len(set(names)) == len(names):
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
        for vi in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
            for d in vi.type.tensor_type.shape.dim:
                if d.dim_param:
                    d.dim_param = pattern.sub(lambda m: names[m.group(1)], d.dim_param)


def _name_output_dims(proto, num_classes: int) -> None:
    """The outputs' dims as a reader expects them, whichever exporter wrote them: ``logits`` [batch, K],
    ``evidence`` [batch, K, evidence_height, evidence_width]. The class axis is the model's K (the
    TorchScript exporter may leave it symbolic, ``ReduceMeanlogits_dim_1``); a symbolic spatial axis of
    the evidence (the dynamo exporter writes ``((height - 1)//32) + 1``, thousands of characters for
    TF-"same" padding) is named ``evidence_height`` / ``evidence_width`` (``evidence_depth`` first for volumes)."""
    for out in proto.graph.output:
        dims = out.type.tensor_type.shape.dim
        labels = {0: "batch"}
        if out.name == EVIDENCE_NAME:
            spatial = _SPATIAL_LABELS.get(len(dims), ("height", "width"))
            labels.update({2 + i: f"evidence_{label}" for i, label in enumerate(spatial)})
        if out.name not in (LOGITS_NAME, EVIDENCE_NAME):
            continue
        if len(dims) > 1 and dims[1].dim_param:
            dims[1].dim_value = int(num_classes)  # clears dim_param (a oneof)
        for axis, label in labels.items():
            if len(dims) > axis and dims[axis].dim_param:
                dims[axis].dim_param = label


def _shapes(proto) -> dict[str, list[Any]]:
    out = {}
    for vi in [*proto.graph.input, *proto.graph.output]:
        out[vi.name] = [d.dim_param if d.dim_param else int(d.dim_value) for d in vi.type.tensor_type.shape.dim]
    return out


def _opset(proto) -> int:
    return int(next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0))


def _plan(exporter: str, spatial: str, opset: int | None) -> tuple[list[tuple[str, bool]], list[str]]:
    if exporter not in EXPORTERS:
        raise UsageError(f"exporter {exporter!r} is not one of {', '.join(EXPORTERS)}.", param="exporter")
    if spatial not in SPATIAL_MODES:
        raise UsageError(f"spatial {spatial!r} is not one of {', '.join(SPATIAL_MODES)}.", param="spatial")
    notes = []
    if opset is not None:
        import onnx

        highest = onnx.defs.onnx_opset_version()
        if not 7 <= opset <= highest:
            raise UsageError(
                f"opset {opset} is not between 7 and {highest} (the newest this onnx knows).", param="opset"
            )
    # TorchScript first: it exports in seconds where the dynamo exporter takes minutes on TF-"same" padding
    # (benchmarks/export_time.py); dynamo is the fallback when TorchScript fails or does not validate
    exporters = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    if opset is not None and opset < DYNAMO_MIN_OPSET and "dynamo" in exporters:
        if exporter == "dynamo":
            raise UsageError(
                f"exporter dynamo writes opset {DYNAMO_MIN_OPSET} or newer; drop opset {opset} "
                "or use exporter torchscript.",
                param=("exporter", "opset"),
            )
        exporters.remove("dynamo")
        notes.append(
            f"opset {opset} < {DYNAMO_MIN_OPSET}: torch's dynamo exporter cannot write it, so the "
            "TorchScript exporter was used."
        )
    spatials = {"auto": [True, False], "dynamic": [True], "static": [False]}[spatial]
    return [(e, s) for e in exporters for s in spatials], notes


def export_onnx(
    model: Any,
    output: str | os.PathLike,
    *,
    opset: int | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    exporter: str = "auto",
    spatial: str = "auto",
    force: bool = False,
    seed: int = 0,
    strict: bool = False,
    class_names: Sequence[str] | None = None,
    **options: Unpack[LoadOptions],
) -> ExportReport:
    """Export ``model`` (a SoftCAM model or anything :func:`load_softcam` takes) to a validated ONNX file.

    ``exporter``: ``auto`` (TorchScript, then dynamo), ``torchscript`` or ``dynamo``. ``spatial``:
    ``auto`` (dynamic height/width when the export validates at a second size, else static),
    ``dynamic`` or ``static``. ``opset``: None for torch's default. Raises :class:`ValidationError`
    (nothing written) when no export matches PyTorch within ``atol`` and :class:`ExportError` when no
    exporter produces a graph at all. ``class_names`` rename the classes in the file's metadata (their count
    must be the model's); the ``options`` (:class:`softcamify.options.LoadOptions`: ``input_size``,
    ``trust_pickle``, ``module``, ``model_args``, ...) load a model given as a path, as :func:`load_softcam`.
    """
    t0 = time.perf_counter()
    out = Path(output)
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"output {out} must end in .onnx for an ONNX export.", param="output")
    check_output_path(out, force=force)
    plan, notes = _plan(exporter, spatial, opset)
    sc, load_notes = load_softcam(model, strict=strict, atol=atol, class_names=class_names, **options)
    notes = load_notes + notes
    sc = cast(SoftCAM, cpu_float32(sc)[0]).eval()
    _check_weight_size(sc)
    size = [int(v) for v in sc.meta.data_config["input_size"]]  # C, H, W (C, D, H, W for a volume model)
    module = _MapsModule(sc).eval()
    example = torch.randn(2, *size, generator=torch.Generator().manual_seed(seed))  # batch 2: never specialized
    attempts: list[dict[str, Any]] = []

    with atomic_output(out, force=force) as tmp:
        name, dynamic_spatial, proto, checks = _first_valid_export(
            tmp, plan, module, example, sc, opset, atol, rtol, seed, attempts
        )
        spatial_note = _spatial_note(attempts, dynamic_spatial)
        shapes = _shapes(proto)
        final_opset = _opset(proto)

    return ExportReport.passed_for(
        "onnx",
        out,
        sc,
        atol=atol,
        rtol=rtol,
        checks=checks,
        started=t0,
        notes=notes,
        exporter=name,
        opset=final_opset,
        dynamic_batch=isinstance(shapes[INPUT_NAME][0], str),
        dynamic_spatial=dynamic_spatial,
        spatial_note=spatial_note,
        shapes=shapes,
        attempts=attempts,
    )


def _first_valid_export(
    tmp: Path,
    plan: list[tuple[str, bool]],
    module: nn.Module,
    example: torch.Tensor,
    sc: SoftCAM,
    opset: int | None,
    atol: float,
    rtol: float,
    seed: int,
    attempts: list[dict[str, Any]],
) -> tuple[str, bool, Any, list[dict[str, Any]]]:
    """Try ``plan``'s (exporter, dynamic spatial) pairs in order until one exports and validates.

    Records each try in ``attempts``; returns the exporter, whether spatial sizes are dynamic, the proto and
    the validation checks of the one written to ``tmp``. Raises :func:`_final_error`'s error when none does.
    """
    failures: list[AttemptFailed] = []
    for name, dynamic_spatial in plan:
        attempt: dict[str, Any] = {"exporter": name, "spatial": "dynamic" if dynamic_spatial else "static"}
        attempts.append(attempt)
        ta = time.perf_counter()
        try:
            proto = _export_attempt(tmp, module, example, sc, name, dynamic_spatial, opset)
            checks = check_onnx(tmp, sc, atol, rtol, dynamic_spatial, seed, None)
        except AttemptFailed as e:
            attempt.update(outcome=e.stage, error=str(e), seconds=round(time.perf_counter() - ta, 2))
            if e.figures.get("checks"):
                attempt["checks"] = e.figures["checks"]
            failures.append(e)
            continue
        attempt.update(outcome="ok", seconds=round(time.perf_counter() - ta, 2))
        return name, dynamic_spatial, proto, checks
    raise _final_error(sc.meta.architecture, attempts, failures, atol, rtol)


def _check_weight_size(sc: SoftCAM) -> None:
    """Refuse models whose weights alone would exceed protobuf's 2 GB limit (no external-data export yet)."""
    n_bytes = sum(p.numel() * p.element_size() for p in sc.parameters()) + sum(
        b.numel() * b.element_size() for b in sc.buffers()
    )
    if n_bytes > _MAX_PROTO_BYTES * 0.95:
        raise ExportError(
            f"{sc.meta.architecture} has {n_bytes / 1e9:.1f} GB of weights; ONNX files above "
            "2 GB need external data, which softcamify export does not write yet."
        )


def _export_attempt(
    tmp: Path,
    module: nn.Module,
    example: torch.Tensor,
    sc: SoftCAM,
    name: str,
    dynamic_spatial: bool,
    opset: int | None,
) -> Any:
    """Export with one exporter, stamp softcamify's metadata, write the graph to ``tmp``; return the proto.

    Raises :class:`AttemptFailed` (stage ``export``) when the exporter fails, writes another opset than the
    requested one, or the graph exceeds protobuf's 2 GB limit.
    """
    log = io.StringIO()
    try:
        with _quiet(log), torch.no_grad():
            fn = _export_dynamo if name == "dynamo" else _export_torchscript
            proto = fn(module, example, opset, dynamic_spatial)
        _name_output_dims(proto, sc.meta.num_classes)
    except Exception as e:
        raise AttemptFailed("export", f"the {name} exporter failed: {clean_error_text(e)}") from None
    got = _opset(proto)
    if opset is not None and got != opset:
        raise AttemptFailed("export", f"the {name} exporter wrote opset {got}, not the requested {opset}")
    del proto.metadata_props[:]
    for key, value in onnx_metadata(sc, exporter=name, opset=got, dynamic_spatial=dynamic_spatial).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    axes = "d, h, w" if sc.meta.spatial_dims == 3 else "h, w"
    proto.doc_string = (
        f"SoftCAM {sc.meta.architecture} exported by softcamify {__version__}: "
        f"input -> logits, evidence (mean over {axes} of evidence = logits)."
    )
    data = proto.SerializeToString()
    if len(data) > _MAX_PROTO_BYTES:
        raise AttemptFailed("export", "the graph is larger than protobuf's 2 GB limit")
    tmp.write_bytes(data)
    return proto


def _spatial_note(attempts: list[dict[str, Any]], dynamic_spatial: bool) -> str | None:
    """Why the exported graph has static height and width, if it does."""
    if dynamic_spatial:
        return None
    dyn = [a for a in attempts if a["spatial"] == "dynamic"]
    return (
        "height and width are static (spatial static)."
        if not dyn
        else f"height and width are static: the dynamic-size export failed ({dyn[-1]['error'].rstrip('.')})."
    )


def _final_error(
    arch: str, attempts: list[dict[str, Any]], failures: list[AttemptFailed], atol: float, rtol: float
) -> Exception:
    tried = "; ".join(f"{a['exporter']}/{a['spatial']}: {a['error']}" for a in attempts)
    mismatches = [f for f in failures if f.stage in ("mismatch", "size") and f.figures.get("checks")]
    if mismatches:
        return ValidationError(
            f"The ONNX export of {arch} does not match PyTorch within atol {atol:g} + rtol {rtol:g} × scale "
            f"({tried}); nothing was written.",
            param=("atol", "rtol"),
        )
    return ExportError(f"No exporter could export {arch} to a working ONNX graph ({tried}); nothing was written.")
