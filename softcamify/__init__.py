"""softcamify: make trained CNN image classifiers self-explainable (SoftCAM).

Public API (imported lazily, so ``import softcamify`` is cheap and the onnxruntime-only paths never
import torch)::

    import softcamify
    loaded = softcamify.load_model("resnet50", weights="w.safetensors")
    model = softcamify.convert(loaded)            # SoftCAM, verified against the original
    logits, maps = model.forward_maps(x)          # maps: B×K×h×w, maps.mean((2, 3)) == logits
    softcamify.save(model, "resnet50_softcam.safetensors")
    model = softcamify.load("resnet50_softcam.safetensors")
    report = softcamify.convert_onnx("deployed.onnx", "deployed_softcam.onnx")  # a deployed ONNX file, no torch
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .errors import (
    ConversionError,
    InputError,
    OutputError,
    SoftcamifyError,
    UnsafeCheckpointError,
    UsageError,
    ValidationError,
)

_LAZY = {
    "load_model": "softcamify.checkpoints",
    "LoadedModel": "softcamify.checkpoints",
    "load": "softcamify.checkpoints",
    "save": "softcamify.checkpoints",
    "read_metadata": "softcamify.checkpoints",
    "convert": "softcamify.conversion",
    "inspect": "softcamify.conversion",
    "ConversionReport": "softcamify.conversion",
    "InspectReport": "softcamify.conversion",
    "SoftCAM": "softcamify.model",
    "SoftCAMMeta": "softcamify.model",
    "HeadPlan": "softcamify.heads",
    "as_softcam": "softcamify.conversion",
    "convert_onnx": "softcamify.onnx_convert",
    "inspect_onnx": "softcamify.onnx_convert",
    "rewrite_onnx": "softcamify.onnx_convert",
    "OnnxConversionReport": "softcamify.onnx_convert",
    "OnnxInspectReport": "softcamify.onnx_convert",
    "make_lesions": "softcamify.data.synth",
    "discover": "softcamify.data",
    "DatasetSplits": "softcamify.data",
    "Sample": "softcamify.data",
    "open_image": "softcamify.images",
    "preprocess": "softcamify.images",
    "load_mask": "softcamify.images",
    "explain": "softcamify.explanations",
    "Explanation": "softcamify.explanations",
    "evaluate": "softcamify.evaluation",
    "EvaluationResult": "softcamify.evaluation",
    "diff": "softcamify.evaluation",
    "DiffReport": "softcamify.evaluation",
    "export": "softcamify.exporters",
    "export_onnx": "softcamify.exporters",
    "export_safetensors": "softcamify.exporters",
    "validate_onnx": "softcamify.exporters",
    "ExportReport": "softcamify.exporters",
    "predict": "softcamify.prediction",
    "PredictionReport": "softcamify.prediction",
    "Prediction": "softcamify.prediction",
    "OnnxModel": "softcamify.onnx_runtime",
    "read_onnx_metadata": "softcamify.onnx_runtime",
    "finetune": "softcamify.training",
    "FinetuneConfig": "softcamify.training",
    "FinetuneResult": "softcamify.training",
    "FinetuneInterrupted": "softcamify.training",
}

__all__ = [
    "__version__",
    "SoftcamifyError",
    "UsageError",
    "InputError",
    "ConversionError",
    "ValidationError",
    "OutputError",
    "UnsafeCheckpointError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'softcamify' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
