"""Export a SoftCAM model: ONNX (always validated in onnxruntime against PyTorch) and softcamify .safetensors.

The ONNX graph has one input ``input`` (float32 N×C×H×W, normalized pixels) and two outputs,
``logits`` (N×K) and ``evidence`` (N×K×h×w, whose spatial mean is the logits). The batch axis is
dynamic; height and width are dynamic when the backbone allows it, which is detected: the dynamic
export is validated at a second input size and, when that fails, the model is exported with a static
size instead (the report says which and why).

Exporters: torch's current exporter (``torch.onnx.export(..., dynamo=True)``) first, then the
TorchScript exporter (``dynamo=False``) when it fails to export or to validate — the dynamo exporter
has had wrong-numerics bugs on plain ResNets (pytorch #169178, #166797), so validation is never
skipped: ``onnx.checker.check_model(full_check=True)``, then onnxruntime on random inputs at batch
1 and 3 (and batch 2 at a second size when spatially dynamic), max |Δ| of logits and evidence vs
PyTorch. Above ``atol`` nothing is written and :class:`~softcamify.errors.ValidationError` is raised.
The file is written to a temporary file, validated there, and renamed into place.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._version import __version__
from .errors import ConversionError, InputError, UsageError, ValidationError
from .io import META_KEY, atomic_output, check_output_path
from .model import SoftCAM
from .onnx_runtime import EVIDENCE_NAME, INPUT_NAME, LOGITS_NAME

DEFAULT_ATOL = 1e-4
EXPORTERS = ("auto", "dynamo", "torchscript")
SPATIAL_MODES = ("auto", "dynamic", "static")
DYNAMO_MIN_OPSET = 18  # torch's exporter writes opset 18+; older opsets go through TorchScript
ONNX_FORMAT_VERSION = 1
_MAX_PROTO_BYTES = 2_000_000_000  # protobuf's 2 GB limit (larger models need external data)


class ExportError(ConversionError):
    """No exporter could turn the model into an ONNX graph (exit code 4)."""


@dataclass
class ExportReport:
    """What ``softcamify export`` did, with the validation figures (``--json`` prints this)."""

    format: str  # "onnx" or "safetensors"
    output: str
    architecture: str
    strategy: str
    exact: bool
    num_classes: int
    input_size: list[int]
    atol: float
    passed: bool
    max_abs_diff_logits: float
    max_abs_diff_evidence: float
    checks: list[dict[str, Any]]  # one per validation input: batch, size, max |Δ| logits / evidence
    file_size: int = 0
    exporter: str | None = None  # "dynamo" or "torchscript" (ONNX only)
    opset: int | None = None
    dynamic_batch: bool = False
    dynamic_spatial: bool = False
    spatial_note: str | None = None  # why the spatial size is static, when it is
    shapes: dict[str, list[Any]] = field(default_factory=dict)  # input/logits/evidence dims (str = dynamic)
    attempts: list[dict[str, Any]] = field(default_factory=list)  # every (exporter, spatial) tried
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # notes may quote other libraries' messages: no terminal colour codes in JSON (they are cleaned
        # where exceptions are caught; this also covers notes added by the caller)
        d["notes"] = [strip_ansi(n) for n in d["notes"]]
        if d["spatial_note"] is not None:
            d["spatial_note"] = strip_ansi(d["spatial_note"])
        return d


# --- getting the SoftCAM model ------------------------------------------------------------------------
def load_softcam(
    model: Any,
    *,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    input_size: tuple[int, int] | None = None,
    ema: bool = False,
    trust_pickle: bool = False,
    strict: bool = False,
    atol: float = DEFAULT_ATOL,
) -> tuple[SoftCAM, list[str]]:
    """A SoftCAM model (and notes) from a SoftCAM module, a fine-tuning checkpoint (``last.pt``:
    ``{"model": state dict, "softcamify"/"meta": metadata}``), a softcamify ``.safetensors``, a run
    folder, or any classifier :func:`~softcamify.conversion.as_softcam` converts (on the fly)."""
    from .conversion import as_softcam

    if isinstance(model, SoftCAM):
        sc = model
        if input_size is not None:
            sc = copy.copy(sc)
            sc.meta = copy.deepcopy(sc.meta)
            sc.meta.data_config = {**sc.meta.data_config, "input_size": [sc.meta.data_config["input_size"][0], *input_size]}
        return sc.eval(), []
    sc, loaded = as_softcam(model, weights=weights, num_classes=num_classes, input_size=input_size, ema=ema,
                            trust_pickle=trust_pickle, strict=strict, atol=atol)
    notes = list(loaded.notes)
    if not loaded.is_softcam:
        notes.append(f"{loaded.architecture} was converted to SoftCAM on the fly ({sc.meta.strategy}, "
                     f"max |Δlogit| {sc.meta.conversion.get('max_abs_diff', float('nan')):.2g}).")
    return sc.eval(), notes


def _cpu_fp32(sc: SoftCAM) -> SoftCAM:
    """The model on the CPU in float32 eval mode (a copy when the caller's model is elsewhere)."""
    tensors = [*sc.parameters(), *sc.buffers()]
    if any(t.device.type != "cpu" or (t.is_floating_point() and t.dtype != torch.float32) for t in tensors):
        sc = copy.deepcopy(sc).to("cpu").float()
    return sc.eval()


# --- ONNX ---------------------------------------------------------------------------------------------
class _MapsModule(nn.Module):
    """What is exported: ``input`` -> ``(logits, evidence)``."""

    def __init__(self, model: SoftCAM):
        super().__init__()
        self.model = model

    def forward(self, input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: A002 (ONNX input name)
        return self.model.forward_maps(input)


def second_spatial_size(h: int, w: int) -> tuple[int, int]:
    """The other input size a spatially dynamic export is validated at (larger, non-square)."""
    return h + 32, w + 64


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
    return {
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
        "layout": "NCHW",
        "dynamic_spatial": "true" if dynamic_spatial else "false",
        "outputs": "logits: N×K; evidence: N×K×h×w signed class-evidence maps whose mean over h, w is logits",
    }


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


def _export_dynamo(module: nn.Module, x: torch.Tensor, opset: int | None, dynamic_spatial: bool):
    import onnx

    dim = torch.export.Dim
    axes: dict[int, Any] = {0: dim("batch", min=1)}
    if dynamic_spatial:
        axes.update({2: dim.DYNAMIC, 3: dim.DYNAMIC})
    program = torch.onnx.export(
        module, (x,), None, dynamo=True, input_names=[INPUT_NAME], output_names=[LOGITS_NAME, EVIDENCE_NAME],
        opset_version=opset, dynamic_shapes={"input": axes}, optimize=True, verbose=False,
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
        axes[INPUT_NAME].update({2: "height", 3: "width"})
        axes[EVIDENCE_NAME].update({2: "grid_height", 3: "grid_width"})
    buf = io.BytesIO()
    torch.onnx.export(
        module, (x,), buf, dynamo=False, input_names=[INPUT_NAME], output_names=[LOGITS_NAME, EVIDENCE_NAME],
        opset_version=opset, dynamic_axes=axes, do_constant_folding=True,
    )
    return onnx.load_from_string(buf.getvalue())


def _rename_dynamic_dims(proto) -> None:
    """Name the dynamo exporter's symbols (``s16``, ``s82``) ``height``/``width`` everywhere they appear."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    names = {}
    for axis, label in ((2, "height"), (3, "width")):
        if len(dims) > axis and dims[axis].dim_param and re.fullmatch(r"s\d+", dims[axis].dim_param):
            names[dims[axis].dim_param] = label
    if not names or len(set(names)) != len(names):
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    for vi in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = pattern.sub(lambda m: names[m.group(1)], d.dim_param)


def _shapes(proto) -> dict[str, list[Any]]:
    out = {}
    for vi in [*proto.graph.input, *proto.graph.output]:
        out[vi.name] = [d.dim_param if d.dim_param else int(d.dim_value) for d in vi.type.tensor_type.shape.dim]
    return out


def _opset(proto) -> int:
    return int(next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0))


class _AttemptFailed(Exception):
    def __init__(self, stage: str, message: str, figures: dict[str, Any] | None = None):
        super().__init__(message)
        self.stage = stage  # export | graph | check | runtime | mismatch | size
        self.figures = figures or {}


# Terminal escape sequences: CSI (colours such as torch's "\x1b[96m…\x1b[0m", cursor moves; 7- and 8-bit),
# OSC (titles, hyperlinks) and other escapes (ESC ( B …); then any other control character but tab and newline.
_ANSI = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]*[0-~]?")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_EXC_CLASS = re.compile(r"^<class '(?:[\w.]*\.)?(\w+)'>:\s*")
_SUMMARY = "## Exception summary"  # torch.onnx's dynamo exporter: headline, advice, then this and the causes


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences (colours, cursor moves) and other control characters."""
    return _CONTROL.sub("", _ANSI.sub("", str(text)))


def clean_error_text(error: BaseException | str, limit: int = 240) -> str:
    """One short, plain line for a note or message from an exception (or its text).

    Escape sequences are removed and only the first non-empty line is kept (whitespace collapsed, at
    most ``limit`` characters). For torch.onnx's multi-paragraph errors ("Failed to export the model
    with torch.export. This is step 1/3 … Next steps: … ## Exception summary …") that line is the
    headline followed by the root cause from the summary.
    """
    fallback = type(error).__name__ if isinstance(error, BaseException) else ""
    lines = [ln.strip() for ln in strip_ansi(str(error)).splitlines() if ln.strip()]
    if not lines:
        return fallback
    line = lines[0]
    if _SUMMARY in lines and lines.index(_SUMMARY) + 1 < len(lines):
        i = lines.index(_SUMMARY) + 1
        m = _EXC_CLASS.match(lines[i])
        kind, cause = (f"{m.group(1)}: ", lines[i][m.end():]) if m else ("", lines[i])
        if cause.endswith(":") and i + 1 < len(lines) and lines[i + 1].startswith("- "):
            cause = lines[i + 1][2:]  # "Found the following conflicts …:" — the first of them says more
        cause = kind + cause
        headline = re.split(r"(?<=\.)\s", line, maxsplit=1)[0].rstrip(".")
        line = f"{headline}: {cause}"
    line = " ".join(line.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def _first_line(e: BaseException, limit: int = 240) -> str:
    return clean_error_text(e, limit)


def _max_abs(a, b) -> float:
    import numpy as np

    d = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return float(d.max()) if d.size else 0.0


def validate_onnx(
    path: str | os.PathLike,
    model: SoftCAM,
    *,
    atol: float = DEFAULT_ATOL,
    dynamic_spatial: bool | None = None,
    seed: int = 0,
    intra_op_threads: int | None = None,
) -> list[dict[str, Any]]:
    """Check an ONNX export against PyTorch: the checker, then onnxruntime at batch 1 and 3 (and batch
    2 at a second size when the export is spatially dynamic); returns one dict of figures per input.

    Raises :class:`ValidationError` when an output differs by more than ``atol`` and
    :class:`InputError` when the file does not pass the checker or does not run.
    """
    try:
        return _validate(Path(path), model, atol, dynamic_spatial, seed, intra_op_threads)
    except _AttemptFailed as e:
        cls = ValidationError if e.stage in ("mismatch", "size") else InputError
        raise cls(f"{path}: {e}.") from None


def _validate(path: Path, model: SoftCAM, atol: float, dynamic_spatial: bool | None, seed: int,
              intra_op_threads: int | None) -> list[dict[str, Any]]:
    import numpy as np
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise _AttemptFailed("check", f"onnx.checker rejected the graph: {_first_line(e)}") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise _AttemptFailed("runtime", f"onnxruntime cannot load it: {_first_line(e)}") from None
    names = [o.name for o in session.get_outputs()]
    if [i.name for i in session.get_inputs()] != [INPUT_NAME] or names[:2] != [LOGITS_NAME, EVIDENCE_NAME]:
        raise _AttemptFailed("graph", f"unexpected input/output names {[i.name for i in session.get_inputs()]} -> {names}")
    if dynamic_spatial is None:
        dynamic_spatial = not all(isinstance(d, int) for d in session.get_inputs()[0].shape[2:])
    c, h, w = (int(v) for v in model.meta.data_config["input_size"])
    cases = [(1, (h, w)), (3, (h, w))]
    if dynamic_spatial:
        cases.append((2, second_spatial_size(h, w)))
    gen = torch.Generator().manual_seed(seed)
    checks: list[dict[str, Any]] = []
    model = model.eval()
    for batch, (hh, ww) in cases:
        x = torch.randn(batch, c, hh, ww, generator=gen)
        stage = "size" if (hh, ww) != (h, w) else "runtime"
        try:
            with torch.no_grad():
                ref_logits, ref_maps = model.forward_maps(x)
        except Exception as e:
            raise _AttemptFailed(stage, f"PyTorch itself fails at {hh}×{ww}: {_first_line(e)}") from None
        try:
            logits, maps = session.run([LOGITS_NAME, EVIDENCE_NAME], {INPUT_NAME: x.numpy()})
        except Exception as e:
            raise _AttemptFailed(stage, f"onnxruntime fails at batch {batch}, {hh}×{ww}: {_first_line(e)}") from None
        if logits.shape != tuple(ref_logits.shape) or maps.shape != tuple(ref_maps.shape):
            raise _AttemptFailed(
                stage, f"output shapes {list(logits.shape)}, {list(maps.shape)} at batch {batch}, {hh}×{ww} differ "
                f"from PyTorch's {list(ref_logits.shape)}, {list(ref_maps.shape)}"
            )
        check = {
            "batch": batch,
            "size": [hh, ww],
            "max_abs_diff_logits": _max_abs(logits, ref_logits.numpy()),
            "max_abs_diff_evidence": _max_abs(maps, ref_maps.numpy()),
            "evidence_mean_vs_logits": _max_abs(np.asarray(maps, np.float64).mean(axis=(2, 3)), logits),
        }
        checks.append(check)
        worst = max(check["max_abs_diff_logits"], check["max_abs_diff_evidence"])
        if not math.isfinite(worst) or worst > atol:
            raise _AttemptFailed(
                "size" if stage == "size" else "mismatch",
                f"max |Δlogits| = {check['max_abs_diff_logits']:.3g}, max |Δevidence| = "
                f"{check['max_abs_diff_evidence']:.3g} at batch {batch}, {hh}×{ww} (atol {atol:g})",
                {"checks": checks},
            )
    return checks


def _plan(exporter: str, spatial: str, opset: int | None) -> tuple[list[tuple[str, bool]], list[str]]:
    if exporter not in EXPORTERS:
        raise UsageError(f"--exporter {exporter!r} is not one of {', '.join(EXPORTERS)}.")
    if spatial not in SPATIAL_MODES:
        raise UsageError(f"--spatial {spatial!r} is not one of {', '.join(SPATIAL_MODES)}.")
    notes = []
    if opset is not None:
        import onnx

        highest = onnx.defs.onnx_opset_version()
        if not 7 <= opset <= highest:
            raise UsageError(f"--opset {opset} is not between 7 and {highest} (the newest this onnx knows).")
    exporters = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    if opset is not None and opset < DYNAMO_MIN_OPSET and "dynamo" in exporters:
        if exporter == "dynamo":
            raise UsageError(f"--exporter dynamo writes opset {DYNAMO_MIN_OPSET} or newer; drop --opset {opset} "
                             "or use --exporter torchscript.")
        exporters.remove("dynamo")
        notes.append(f"opset {opset} < {DYNAMO_MIN_OPSET}: torch's dynamo exporter cannot write it, so the "
                     "TorchScript exporter was used.")
    spatials = {"auto": [True, False], "dynamic": [True], "static": [False]}[spatial]
    return [(e, s) for e in exporters for s in spatials], notes


def export_onnx(
    model: Any,
    output: str | os.PathLike,
    *,
    opset: int | None = None,
    atol: float = DEFAULT_ATOL,
    exporter: str = "auto",
    spatial: str = "auto",
    input_size: tuple[int, int] | None = None,
    force: bool = False,
    seed: int = 0,
    trust_pickle: bool = False,
    strict: bool = False,
) -> ExportReport:
    """Export ``model`` (a SoftCAM model or anything :func:`load_softcam` takes) to a validated ONNX file.

    ``exporter``: ``auto`` (dynamo, then TorchScript), ``dynamo`` or ``torchscript``. ``spatial``:
    ``auto`` (dynamic height/width when the export validates at a second size, else static),
    ``dynamic`` or ``static``. ``opset``: None for torch's default. Raises :class:`ValidationError`
    (nothing written) when no export matches PyTorch within ``atol`` and :class:`ExportError` when no
    exporter produces a graph at all.
    """
    t0 = time.perf_counter()
    out = Path(output)
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"--output {out} must end in .onnx for an ONNX export.")
    check_output_path(out, force=force)
    plan, notes = _plan(exporter, spatial, opset)
    sc, load_notes = load_softcam(model, input_size=input_size, trust_pickle=trust_pickle, strict=strict, atol=atol)
    notes = load_notes + notes
    sc = _cpu_fp32(sc)
    _check_weight_size(sc)
    c, h, w = (int(v) for v in sc.meta.data_config["input_size"])
    module = _MapsModule(sc).eval()
    example = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(seed))  # batch 2: never specialized
    attempts: list[dict[str, Any]] = []

    with atomic_output(out, force=force) as tmp:
        name, dynamic_spatial, proto, checks = _first_valid_export(
            tmp, plan, module, example, sc, opset, atol, seed, attempts
        )
        spatial_note = _spatial_note(attempts, dynamic_spatial)
        shapes = _shapes(proto)
        final_opset = _opset(proto)

    return ExportReport(
        format="onnx",
        output=str(out),
        architecture=sc.meta.architecture,
        strategy=sc.meta.strategy,
        exact=bool(sc.meta.exact),
        num_classes=int(sc.meta.num_classes),
        input_size=[c, h, w],
        atol=atol,
        passed=True,
        max_abs_diff_logits=max(ck["max_abs_diff_logits"] for ck in checks),
        max_abs_diff_evidence=max(ck["max_abs_diff_evidence"] for ck in checks),
        checks=checks,
        file_size=out.stat().st_size,
        exporter=name,
        opset=final_opset,
        dynamic_batch=isinstance(shapes[INPUT_NAME][0], str),
        dynamic_spatial=dynamic_spatial,
        spatial_note=spatial_note,
        shapes=shapes,
        attempts=attempts,
        seconds=round(time.perf_counter() - t0, 2),
        notes=notes,
    )


def _first_valid_export(
    tmp: Path, plan: list[tuple[str, bool]], module: nn.Module, example: torch.Tensor, sc: SoftCAM,
    opset: int | None, atol: float, seed: int, attempts: list[dict[str, Any]],
) -> tuple[str, bool, Any, list[dict[str, Any]]]:
    """Try ``plan``'s (exporter, dynamic spatial) pairs in order until one exports and validates.

    Records each try in ``attempts``; returns the exporter, whether spatial sizes are dynamic, the proto and
    the validation checks of the one written to ``tmp``. Raises :func:`_final_error`'s error when none does.
    """
    failures: list[_AttemptFailed] = []
    for name, dynamic_spatial in plan:
        attempt: dict[str, Any] = {"exporter": name, "spatial": "dynamic" if dynamic_spatial else "static"}
        attempts.append(attempt)
        ta = time.perf_counter()
        try:
            proto = _export_attempt(tmp, module, example, sc, name, dynamic_spatial, opset)
            checks = _validate(tmp, sc, atol, dynamic_spatial, seed, None)
        except _AttemptFailed as e:
            attempt.update(outcome=e.stage, error=str(e), seconds=round(time.perf_counter() - ta, 2))
            if e.figures.get("checks"):
                attempt["checks"] = e.figures["checks"]
            failures.append(e)
            continue
        attempt.update(outcome="ok", seconds=round(time.perf_counter() - ta, 2))
        return name, dynamic_spatial, proto, checks
    raise _final_error(sc.meta.architecture, attempts, failures, atol)


def _check_weight_size(sc: SoftCAM) -> None:
    """Refuse models whose weights alone would exceed protobuf's 2 GB limit (no external-data export yet)."""
    n_bytes = sum(p.numel() * p.element_size() for p in sc.parameters()) + sum(
        b.numel() * b.element_size() for b in sc.buffers())
    if n_bytes > _MAX_PROTO_BYTES * 0.95:
        raise ExportError(f"{sc.meta.architecture} has {n_bytes / 1e9:.1f} GB of weights; ONNX files above "
                          "2 GB need external data, which softcamify export does not write yet.")


def _export_attempt(
    tmp: Path, module: nn.Module, example: torch.Tensor, sc: SoftCAM, name: str, dynamic_spatial: bool,
    opset: int | None,
) -> Any:
    """Export with one exporter, stamp softcamify's metadata, write the graph to ``tmp``; return the proto.

    Raises :class:`_AttemptFailed` (stage ``export``) when the exporter fails, writes another opset than the
    requested one, or the graph exceeds protobuf's 2 GB limit.
    """
    log = io.StringIO()
    try:
        with _quiet(log), torch.no_grad():
            fn = _export_dynamo if name == "dynamo" else _export_torchscript
            proto = fn(module, example, opset, dynamic_spatial)
    except Exception as e:
        raise _AttemptFailed("export", f"the {name} exporter failed: {_first_line(e)}") from None
    got = _opset(proto)
    if opset is not None and got != opset:
        raise _AttemptFailed("export", f"the {name} exporter wrote opset {got}, not the requested {opset}")
    del proto.metadata_props[:]
    for key, value in onnx_metadata(sc, exporter=name, opset=got, dynamic_spatial=dynamic_spatial).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (f"SoftCAM {sc.meta.architecture} exported by softcamify {__version__}: "
                        "input -> logits, evidence (mean over h, w of evidence = logits).")
    data = proto.SerializeToString()
    if len(data) > _MAX_PROTO_BYTES:
        raise _AttemptFailed("export", "the graph is larger than protobuf's 2 GB limit")
    tmp.write_bytes(data)
    return proto


def _spatial_note(attempts: list[dict[str, Any]], dynamic_spatial: bool) -> str | None:
    """Why the exported graph has static height and width, if it does."""
    if dynamic_spatial:
        return None
    dyn = [a for a in attempts if a["spatial"] == "dynamic"]
    return ("height and width are static (--spatial static)." if not dyn else
            f"height and width are static: the dynamic-size export failed ({dyn[-1]['error'].rstrip('.')}).")


def _final_error(arch: str, attempts: list[dict[str, Any]], failures: list[_AttemptFailed], atol: float) -> Exception:
    tried = "; ".join(f"{a['exporter']}/{a['spatial']}: {a['error']}" for a in attempts)
    mismatches = [f for f in failures if f.stage in ("mismatch", "size") and f.figures.get("checks")]
    if mismatches:
        return ValidationError(
            f"The ONNX export of {arch} does not match PyTorch within --atol {atol:g} ({tried}); nothing was written."
        )
    return ExportError(f"No exporter could export {arch} to a working ONNX graph ({tried}); nothing was written.")


# --- safetensors --------------------------------------------------------------------------------------
def export_safetensors(
    model: Any,
    output: str | os.PathLike,
    *,
    input_size: tuple[int, int] | None = None,
    force: bool = False,
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
    trust_pickle: bool = False,
    strict: bool = False,
) -> ExportReport:
    """Write the softcamify ``.safetensors`` format (as ``convert`` does), reloaded and checked before
    it is renamed into place: the reloaded model must reproduce logits and evidence within ``atol``."""
    from .checkpoints import load, serialize

    t0 = time.perf_counter()
    out = Path(output)
    if out.suffix.lower() != ".safetensors":
        raise UsageError(f"--output {out} must end in .safetensors for the softcamify format.")
    check_output_path(out, force=force)
    sc, notes = load_softcam(model, input_size=input_size, trust_pickle=trust_pickle, strict=strict, atol=atol)
    sc = _cpu_fp32(sc)
    c, h, w = (int(v) for v in sc.meta.data_config["input_size"])
    x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(seed))
    with atomic_output(out, force=force) as tmp:
        tmp.write_bytes(serialize(sc))  # not save(): its own temporary file would be named in errors
        reloaded = load(tmp, trust_pickle=trust_pickle)
        with torch.no_grad():
            ref_l, ref_m = sc.forward_maps(x)
            got_l, got_m = reloaded.forward_maps(x)
        dl = float((ref_l - got_l).abs().max())
        dm = float((ref_m - got_m).abs().max())
        if not (dl <= atol and dm <= atol):
            raise ValidationError(f"The reloaded {out.name} differs from the model by max |Δlogits| {dl:.3g}, "
                                  f"max |Δevidence| {dm:.3g} > --atol {atol:g}; nothing was written.")
    return ExportReport(
        format="safetensors", output=str(out), architecture=sc.meta.architecture, strategy=sc.meta.strategy,
        exact=bool(sc.meta.exact), num_classes=int(sc.meta.num_classes), input_size=[c, h, w], atol=atol,
        passed=True, max_abs_diff_logits=dl, max_abs_diff_evidence=dm,
        checks=[{"batch": 2, "size": [h, w], "max_abs_diff_logits": dl, "max_abs_diff_evidence": dm}],
        file_size=out.stat().st_size, seconds=round(time.perf_counter() - t0, 2), notes=notes,
    )


def export(model: Any, output: str | os.PathLike, **kwargs: Any) -> ExportReport:
    """Export to ``.onnx`` (:func:`export_onnx`) or ``.safetensors`` (:func:`export_safetensors`) by suffix."""
    suffix = Path(output).suffix.lower()
    if suffix == ".onnx":
        return export_onnx(model, output, **kwargs)
    if suffix == ".safetensors":
        onnx_only = sorted(k for k in ("opset", "exporter", "spatial") if kwargs.get(k) not in (None, "auto"))
        if onnx_only:
            raise UsageError(f"{', '.join('--' + k for k in onnx_only)} only apply to an .onnx output.")
        kwargs = {k: v for k, v in kwargs.items() if k not in ("opset", "exporter", "spatial")}
        return export_safetensors(model, output, **kwargs)
    raise UsageError(f"--output {output} must end in .onnx or .safetensors.")
