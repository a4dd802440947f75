"""Export a SoftCAM model: ONNX (:mod:`.onnx`, validated by :mod:`.validate` in onnxruntime against
PyTorch) or softcamify ``.safetensors`` (:mod:`.safetensors`); :func:`export` picks by the file suffix.

(The package is ``exporters``, not ``export``: ``softcamify.export`` is the function.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..tolerance import DEFAULT_ATOL, DEFAULT_RTOL
from .messages import clean_error_text, strip_ansi
from .onnx import EXPORTERS, SPATIAL_MODES, export_onnx, onnx_metadata
from .report import ExportError, ExportReport
from .safetensors import export_safetensors
from .validate import second_spatial_size, validate_onnx

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "EXPORTERS",
    "SPATIAL_MODES",
    "ExportError",
    "ExportReport",
    "clean_error_text",
    "export",
    "export_onnx",
    "export_safetensors",
    "onnx_metadata",
    "second_spatial_size",
    "strip_ansi",
    "validate_onnx",
]


def export(model: Any, output: str | os.PathLike, **kwargs: Any) -> ExportReport:
    """Export to ``.onnx`` (:func:`export_onnx`) or ``.safetensors`` (:func:`export_safetensors`) by suffix."""
    suffix = Path(output).suffix.lower()
    if suffix == ".onnx":
        return export_onnx(model, output, **kwargs)
    if suffix == ".safetensors":
        onnx_only = sorted(k for k in ("opset", "exporter", "spatial") if kwargs.get(k) not in (None, "auto"))
        if onnx_only:
            raise UsageError(f"{', '.join(onnx_only)} only apply to an .onnx output.", param=tuple(onnx_only))
        kwargs = {k: v for k, v in kwargs.items() if k not in ("opset", "exporter", "spatial")}
        return export_safetensors(model, output, **kwargs)
    raise UsageError(f"output {output} must end in .onnx or .safetensors.", param="output")
