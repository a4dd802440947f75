"""What an export did: :class:`ExportReport` (``softcamify export --json`` prints it) and its error."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConversionError
from .messages import strip_ansi


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
    rtol: float = 1e-5  # tolerance: max |Δ| ≤ atol + rtol × max |output|, per output (softcamify.tolerance)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # notes may quote other libraries' messages: no terminal colour codes in JSON (they are cleaned
        # where exceptions are caught; this also covers notes added by the caller)
        d["notes"] = [strip_ansi(n) for n in d["notes"]]
        if d["spatial_note"] is not None:
            d["spatial_note"] = strip_ansi(d["spatial_note"])
        return d
