"""Top-k predictions for image files, from an ``.onnx`` export (onnxruntime) or a PyTorch SoftCAM model.

Both backends use the same numpy preprocessing (:func:`softcamify.images.preprocess`, timm's eval
transform with the model's data config) and the same softmax, so an ``.onnx`` export and the
``.safetensors`` it came from give the same classes and probabilities (within float32 rounding). A
single-logit (sigmoid) model ranks its two classes ``[negative, positive]`` by ``σ(∓z)``.
Importing this module, and predicting with an ``.onnx`` model, never imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .binary import decision_names, is_binary, probabilities
from .errors import UsageError

DEFAULT_TOP_K = 5
DEFAULT_BATCH_SIZE = 16
VOLUME_BATCH_SIZE = 2


@dataclass
class Prediction:
    """The top-k classes of one image, most probable first."""

    image: str
    top_k: list[dict[str, Any]]  # {"rank", "index", "class", "probability", "logit"}

    @property
    def label(self) -> str:
        return self.top_k[0]["class"]

    @property
    def probability(self) -> float:
        return self.top_k[0]["probability"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PredictionReport:
    """What ``softcamify predict`` prints."""

    model: str
    backend: str  # "onnxruntime" or "torch"
    architecture: str
    num_classes: int
    preprocessing: dict[str, Any]  # input_size [C, H, W], mean, std, interpolation, crop_pct, crop_mode; volume
    predictions: list[Prediction]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["predictions"] = [p.to_dict() for p in self.predictions]
        return d


def rank_classes(logits: np.ndarray, class_names: Sequence[str], k: int = DEFAULT_TOP_K) -> list[list[dict[str, Any]]]:
    """For each row of ``logits`` (N×K): the ``k`` most probable classes (stable order on ties).

    A single logit ``z`` (N×1) ranks the two classes ``[negative, positive]`` (``class_names`` as
    :func:`softcamify.binary.decision_names` reads them); each class's ``logit`` is then its log-odds, ``∓z``.
    """
    z = np.asarray(logits, dtype=np.float64)
    probs = probabilities(z)
    if is_binary(z.shape[1]):
        class_names = decision_names(class_names, 1)
        z = np.concatenate([-z, z], axis=1)
    k = max(1, min(int(k), probs.shape[1]))
    out = []
    for row_p, row_z in zip(probs, z, strict=True):
        order = np.argsort(-row_p, kind="stable")[:k]
        out.append(
            [
                {
                    "rank": r + 1,
                    "index": int(i),
                    "class": str(class_names[i]) if i < len(class_names) else f"class_{i}",
                    "probability": float(row_p[i]),
                    "logit": float(row_z[i]),
                }
                for r, i in enumerate(order)
            ]
        )
    return out


def collect_images(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Image files from files and folders (folders: recursive, sorted, hidden entries skipped)."""
    from .explanations.inputs import collect_images as _collect

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    return [Path(p) for p in _collect([Path(p) for p in inputs])]


def _preprocessing(rt: Any) -> dict[str, Any]:
    """What was applied, defaults filled in; a volume model's is its volume config (with its input size)."""
    if rt.volume is not None:
        return {"input_size": list(rt.input_size), "volume": rt.volume.to_dict()}
    return rt.config.applied()


def predict(
    model: Any,
    images: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int | None = None,
    device: str | None = "cpu",
    **options: Any,
) -> PredictionReport:
    """Top-k classes with probabilities for every image (folders are walked recursively, sorted); for a
    volume model, every volume (``.nii``, ``.nii.gz``, ``.npy``, ``.npz``, preprocessed as the model's metadata
    records: :class:`softcamify.volumes.VolumeConfig`). ``batch_size`` None: 16 images or 2 volumes.

    ``model``: an ``.onnx`` export (onnxruntime; torch is never imported), a softcamify
    ``.safetensors``, a fine-tuning checkpoint or anything else softcamify converts (PyTorch).
    Preprocessing comes from the model's metadata; the keyword ``options`` (``mean``, ``std``,
    ``input_size``, ``interpolation``, ``crop_pct``, ``crop_mode``, ``class_names``, ``trust_pickle``,
    ``weights``, ``num_classes``, ``ema``, ``model_args``) are :func:`softcamify.runtime.load`'s, which opens the model:
    the preprocessing ones override the metadata (and are required for an ONNX file without softcamify
    metadata); ``weights``, ``num_classes``, ``ema`` (the EMA weights of a training checkpoint) and ``model_args`` build
    a PyTorch model as ``convert`` does and do not apply to an ``.onnx`` file.
    """
    from .runtime import load

    if top_k < 1:
        raise UsageError(f"top_k must be at least 1, not {top_k}.", param="top_k")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, not {batch_size}.", param="batch_size")
    rt = load(model, device=device, require_evidence=False, **options)
    if rt.volume is not None:  # a volume model: volume files, preprocessed as its metadata records
        from .explanations.volume import collect_volumes

        paths = collect_volumes(images)
    else:
        paths = collect_images(images)
    if batch_size is None:  # a few volumes at a time (3D activations are large)
        batch_size = DEFAULT_BATCH_SIZE if rt.volume is None else VOLUME_BATCH_SIZE
    predictions: list[Prediction] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        arrays = [rt.preprocess(p) for p in chunk]
        if any(a.shape != arrays[0].shape for a in arrays):  # volumes resampled to a spacing: one by one
            logits = np.concatenate([rt.run(a[None])[0] for a in arrays])
        else:
            logits = rt.run(np.stack(arrays))[0]
        for p, ranked in zip(chunk, rank_classes(logits, rt.class_names, top_k), strict=True):
            predictions.append(Prediction(image=str(p), top_k=ranked))
    return PredictionReport(
        model=os.fspath(model)
        if isinstance(model, (str, os.PathLike))
        else str(getattr(model, "path", type(model).__name__)),
        backend=rt.backend,
        architecture=rt.architecture,
        num_classes=rt.num_classes,
        preprocessing=_preprocessing(rt),
        predictions=predictions,
        notes=rt.notes,
    )
