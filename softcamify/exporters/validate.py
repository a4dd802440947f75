"""Validate an ONNX export against PyTorch: the checker, then onnxruntime at several batches and sizes.

Every output is compared by the one tolerance rule (:mod:`softcamify.tolerance`): logits and evidence
each within ``atol + rtol × max |PyTorch output|``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, ValidationError
from ..model import SoftCAM
from ..onnx_runtime import EVIDENCE_NAME, INPUT_NAME, LOGITS_NAME
from ..threads import tune_onnxruntime
from ..tolerance import DEFAULT_ATOL, DEFAULT_RTOL, agreement
from .messages import clean_error_text

__all__ = ["AttemptFailed", "second_spatial_size", "validate_onnx", "check_onnx"]


class AttemptFailed(Exception):
    def __init__(self, stage: str, message: str, figures: dict[str, Any] | None = None):
        super().__init__(message)
        self.stage = stage  # export | graph | check | runtime | mismatch | size
        self.figures = figures or {}


def second_spatial_size(*size: int) -> tuple[int, ...]:
    """The other input size a spatially dynamic export is validated at (larger, non-square): (H, W) → (H + 32,
    W + 64); a volume's (D, H, W) → (D + 16, H + 32, W + 64)."""
    if len(size) == 3:
        d, h, w = size
        return d + 16, h + 32, w + 64
    h, w = size
    return h + 32, w + 64


def validate_onnx(
    path: str | os.PathLike,
    model: SoftCAM,
    *,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    dynamic_spatial: bool | None = None,
    seed: int = 0,
    intra_op_threads: int | None = None,
) -> list[dict[str, Any]]:
    """Check an ONNX export against PyTorch: the checker, then onnxruntime at batch 1 and 3 (and batch
    2 at a second size when the export is spatially dynamic); returns one dict of figures per input.

    Raises :class:`ValidationError` when an output differs by more than ``atol + rtol × scale`` (its
    own largest magnitude in PyTorch, :mod:`softcamify.tolerance`) and
    :class:`InputError` when the file does not pass the checker or does not run.
    """
    try:
        return check_onnx(Path(path), model, atol, rtol, dynamic_spatial, seed, intra_op_threads)
    except AttemptFailed as e:
        cls = ValidationError if e.stage in ("mismatch", "size") else InputError
        raise cls(f"{path}: {e}.") from None


def check_onnx(
    path: Path,
    model: SoftCAM,
    atol: float,
    rtol: float,
    dynamic_spatial: bool | None,
    seed: int,
    intra_op_threads: int | None,
) -> list[dict[str, Any]]:
    """:func:`validate_onnx`, raising :class:`AttemptFailed` (an export attempt's failure) instead."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise AttemptFailed("check", f"onnx.checker rejected the graph: {clean_error_text(e)}") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    tune_onnxruntime(opts, intra_op_threads)
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise AttemptFailed("runtime", f"onnxruntime cannot load it: {clean_error_text(e)}") from None
    names = [o.name for o in session.get_outputs()]
    if [i.name for i in session.get_inputs()] != [INPUT_NAME] or names[:2] != [LOGITS_NAME, EVIDENCE_NAME]:
        raise AttemptFailed(
            "graph", f"unexpected input/output names {[i.name for i in session.get_inputs()]} -> {names}"
        )
    if dynamic_spatial is None:
        dynamic_spatial = not all(isinstance(d, int) for d in session.get_inputs()[0].shape[2:])
    c, *own = (int(v) for v in model.meta.data_config["input_size"])  # C, H, W (C, D, H, W for volumes)
    size = tuple(own)
    cases = [(1, size), (3, size)]
    if dynamic_spatial:
        cases.append((2, second_spatial_size(*size)))
    gen = torch.Generator().manual_seed(seed)
    checks: list[dict[str, Any]] = []
    model = model.eval()
    for batch, at in cases:
        x = torch.randn(batch, c, *at, generator=gen)
        shown = "×".join(map(str, at))
        stage = "size" if at != size else "runtime"
        try:
            with torch.no_grad():
                ref_logits, ref_maps = model.forward_maps(x)
        except Exception as e:
            raise AttemptFailed(stage, f"PyTorch itself fails at {shown}: {clean_error_text(e)}") from None
        try:
            logits, maps = session.run([LOGITS_NAME, EVIDENCE_NAME], {INPUT_NAME: x.numpy()})
        except Exception as e:
            raise AttemptFailed(stage, f"onnxruntime fails at batch {batch}, {shown}: {clean_error_text(e)}") from None
        if logits.shape != tuple(ref_logits.shape) or maps.shape != tuple(ref_maps.shape):
            raise AttemptFailed(
                stage,
                f"output shapes {list(logits.shape)}, {list(maps.shape)} at batch {batch}, {shown} differ "
                f"from PyTorch's {list(ref_logits.shape)}, {list(ref_maps.shape)}",
            )
        on_logits = agreement(logits, ref_logits, atol, rtol)
        on_evidence = agreement(maps, ref_maps, atol, rtol)
        check = {
            "batch": batch,
            "size": list(at),
            "max_abs_diff_logits": on_logits.max_abs_diff,
            "max_abs_diff_evidence": on_evidence.max_abs_diff,
            "scale_logits": on_logits.scale,
            "scale_evidence": on_evidence.scale,
            "allowed_logits": on_logits.allowed,
            "allowed_evidence": on_evidence.allowed,
            "evidence_mean_vs_logits": float(
                np.abs(np.asarray(maps, np.float64).mean(axis=tuple(range(2, maps.ndim))) - logits).max()
            ),
        }
        checks.append(check)
        if not (on_logits.passed and on_evidence.passed):
            raise AttemptFailed(
                "size" if stage == "size" else "mismatch",
                f"{on_logits.phrase('logits')}, {on_evidence.phrase('evidence')} at batch {batch}, {shown} "
                f"(atol {atol:g}, rtol {rtol:g})",
                {"checks": checks},
            )
    return checks
