"""What an export did: :class:`ExportReport` (``softcamify export --json`` prints it) and its error."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConversionError
from .messages import strip_ansi

if TYPE_CHECKING:
    from ..model import SoftCAM


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

    @classmethod
    def passed_for(
        cls,
        format: str,
        output: Path,
        sc: SoftCAM,
        *,
        atol: float,
        rtol: float,
        checks: list[dict[str, Any]],
        started: float,
        notes: list[str],
        **details: Any,
    ) -> ExportReport:
        """The report of ``sc`` exported to ``output`` (written) that passed every one of ``checks``: the
        model's facts, the largest differences over the checks, the file's size and the seconds since
        ``started`` (a :func:`time.perf_counter` value); ``details`` are the format's own fields."""
        meta = sc.meta
        return cls(
            format=format,
            output=str(output),
            architecture=meta.architecture,
            strategy=meta.strategy,
            exact=bool(meta.exact),
            num_classes=int(meta.num_classes),
            input_size=[int(v) for v in meta.data_config["input_size"]],
            atol=atol,
            rtol=rtol,
            passed=True,
            max_abs_diff_logits=max(ck["max_abs_diff_logits"] for ck in checks),
            max_abs_diff_evidence=max(ck["max_abs_diff_evidence"] for ck in checks),
            checks=checks,
            file_size=output.stat().st_size,
            seconds=round(time.perf_counter() - started, 2),
            notes=notes,
            **details,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # notes may quote other libraries' messages: no terminal colour codes in JSON (they are cleaned
        # where exceptions are caught; this also covers notes added by the caller)
        d["notes"] = [strip_ansi(n) for n in d["notes"]]
        if d["spatial_note"] is not None:
            d["spatial_note"] = strip_ansi(d["spatial_note"])
        return d
