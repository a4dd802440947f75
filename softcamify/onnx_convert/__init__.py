"""Convert a deployed ONNX classifier into a SoftCAM ONNX model by a graph rewrite — no PyTorch needed.

``tail`` finds the classifier tail by structure, ``rewrite`` edits the graph (evidence convolution + mean),
``verify`` runs both graphs in onnxruntime, ``convert`` ties them together (:func:`convert_onnx`,
:func:`rewrite_onnx`, :func:`inspect_onnx`) and writes the softcamify metadata. Torch-free.
"""

from __future__ import annotations

from .convert import OnnxConversionReport, OnnxInspectReport, convert_onnx, inspect_onnx, rewrite_onnx
from .tail import OnnxTail, find_tail

__all__ = [
    "OnnxConversionReport",
    "OnnxInspectReport",
    "OnnxTail",
    "convert_onnx",
    "find_tail",
    "inspect_onnx",
    "rewrite_onnx",
]
