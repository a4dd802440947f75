"""Top-k predictions for image files, from an ``.onnx`` export (onnxruntime) or a PyTorch SoftCAM model.

Both backends use the same numpy preprocessing (:func:`softcamify.images.preprocess`, timm's eval
transform with the model's data config) and the same softmax, so an ``.onnx`` export and the
``.safetensors`` it came from give the same classes and probabilities (within float32 rounding). A
single-logit (sigmoid) model ranks its two classes ``[negative, positive]`` by ``σ(∓z)``.
Importing this module, and predicting with an ``.onnx`` model, never imports torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .binary import classes_phrase, decision_names, is_binary, names_fit, probabilities
from .errors import UsageError

DEFAULT_TOP_K = 5
DEFAULT_BATCH_SIZE = 16


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
    preprocessing: dict[str, Any]  # input_size [C, H, W], mean, std, interpolation, crop_pct, crop_mode
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
        out.append([
            {"rank": r + 1, "index": int(i), "class": str(class_names[i]) if i < len(class_names) else f"class_{i}",
             "probability": float(row_p[i]), "logit": float(row_z[i])}
            for r, i in enumerate(order)
        ])
    return out


def collect_images(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Image files from files and folders (folders: recursive, sorted, hidden entries skipped)."""
    from .heatmaps import collect_images as _collect

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    return [Path(p) for p in _collect([Path(p) for p in inputs])]


class _TorchBackend:
    """A PyTorch SoftCAM model behind the numpy interface predict uses."""

    name = "torch"

    def __init__(self, module: Any, device: str | None):
        import torch

        from .device import resolve_device

        self._torch = torch
        self.device = resolve_device(device or "auto")
        self.module = module.to(self.device).eval()
        self.class_names = list(module.meta.class_names)
        self.num_logits = int(module.meta.num_classes)
        self.architecture = module.meta.architecture

    def run(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            logits = self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device))
        return logits.float().cpu().numpy()


class _OnnxBackend:
    name = "onnxruntime"

    def __init__(self, model: Any):
        self.model = model
        self.class_names = list(model.class_names)
        self.num_logits = int(model.num_logits)
        self.architecture = model.architecture

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.model.run(x)[0]


def _is_onnx(model: Any) -> bool:
    return isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(".onnx")


def load_predictor(
    model: Any,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_size: Sequence[int] | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    class_names: Sequence[str] | None = None,
    device: str | None = "cpu",
    trust_pickle: bool = False,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    ema: bool = False,
) -> tuple[Any, dict[str, Any], list[str]]:
    """(backend, data config, notes) for ``model``: an ``.onnx`` path or :class:`OnnxModel`
    (onnxruntime, no torch), or anything :func:`softcamify.onnx_export.load_softcam` loads (torch;
    ``weights``, ``num_classes`` and ``ema`` are passed to it)."""
    from .onnx_runtime import OnnxModel

    notes: list[str] = []
    if isinstance(model, OnnxModel) or _is_onnx(model):
        if weights is not None or num_classes is not None or ema:
            raise UsageError("--weights, --num-classes and --ema do not apply to an .onnx model; they build a "
                             "PyTorch model from a checkpoint.")
        if isinstance(model, OnnxModel):
            if any(v is not None for v in (mean, std, input_size, interpolation, crop_pct, crop_mode, class_names)):
                raise UsageError("Preprocessing overrides need an .onnx path, not an already opened OnnxModel.")
            om = model
        else:
            om = OnnxModel(model, mean=mean, std=std, input_size=input_size, interpolation=interpolation,
                           crop_pct=crop_pct, crop_mode=crop_mode, class_names=class_names, device=device)
        if om.metadata is None:
            notes.append(f"{om.path.name} has no softcamify metadata; the preprocessing given on the command line is used.")
        if om.fixed_batch is not None and om.fixed_batch > 1:
            notes.append(f"{om.path.name} takes exactly {om.fixed_batch} images per run (a fixed batch axis); "
                         "images are run in groups of that size.")
        return _OnnxBackend(om), dict(om.data_config), notes

    from .onnx_export import load_softcam

    size = tuple(int(v) for v in input_size)[-2:] if input_size is not None else None
    sc, notes = load_softcam(model, weights=weights, num_classes=num_classes, input_size=size, ema=ema,
                             trust_pickle=trust_pickle)
    cfg = dict(sc.meta.data_config)
    for key, value in (("mean", mean), ("std", std), ("interpolation", interpolation), ("crop_pct", crop_pct),
                       ("crop_mode", crop_mode)):
        if value is not None:
            cfg[key] = list(value) if key in ("mean", "std") else value
    backend = _TorchBackend(sc, device)
    if class_names is not None:
        if not names_fit(sc.meta.num_classes, len(class_names)):
            raise UsageError(f"{len(class_names)} class names were given but the model has "
                             f"{classes_phrase(sc.meta.num_classes)}.")
        backend.class_names = [str(c) for c in class_names]
    return backend, cfg, notes


def predict(
    model: Any,
    images: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int = DEFAULT_BATCH_SIZE,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_size: Sequence[int] | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    class_names: Sequence[str] | None = None,
    device: str | None = "cpu",
    trust_pickle: bool = False,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    ema: bool = False,
) -> PredictionReport:
    """Top-k classes with probabilities for every image (folders are walked recursively, sorted).

    ``model``: an ``.onnx`` export (onnxruntime; torch is never imported), a softcamify
    ``.safetensors``, a fine-tuning checkpoint or anything else softcamify converts (PyTorch).
    Preprocessing comes from the model's metadata; the keyword arguments override it (and are
    required for an ONNX file without softcamify metadata). ``weights``, ``num_classes`` and ``ema``
    (the EMA weights of a training checkpoint) build a PyTorch model as ``convert`` does; they do not
    apply to an ``.onnx`` file.
    """
    from .images import preprocess

    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, not {top_k}.")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {batch_size}.")
    for name, values in (("--mean", mean), ("--std", std)):  # std 0 would divide by zero: NaN probabilities
        if values is not None and not all(math.isfinite(float(v)) and (name == "--mean" or v > 0) for v in values):
            raise UsageError(f"{name} {list(values)} must be finite numbers{' above 0' if name == '--std' else ''}.")
    paths = collect_images(images)
    backend, cfg, notes = load_predictor(
        model, mean=mean, std=std, input_size=input_size, interpolation=interpolation, crop_pct=crop_pct,
        crop_mode=crop_mode, class_names=class_names, device=device, trust_pickle=trust_pickle,
        weights=weights, num_classes=num_classes, ema=ema,
    )
    from .images import DEFAULT_CROP_PCT

    # the preprocessing actually applied (defaults filled in), as reported
    cfg = {**cfg, "interpolation": cfg.get("interpolation") or "bicubic",
           "crop_pct": cfg.get("crop_pct") or DEFAULT_CROP_PCT, "crop_mode": cfg.get("crop_mode") or "center"}
    c, h, w = (int(v) for v in cfg["input_size"])
    predictions: list[Prediction] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        x = np.stack([
            preprocess(p, input_size=(h, w), mean=cfg["mean"], std=cfg["std"],
                       interpolation=cfg["interpolation"], crop_pct=cfg["crop_pct"], crop_mode=cfg["crop_mode"],
                       channels=c)
            for p in chunk
        ])
        logits = backend.run(x)
        for p, ranked in zip(chunk, rank_classes(logits, backend.class_names, top_k), strict=True):
            predictions.append(Prediction(image=str(p), top_k=ranked))
    return PredictionReport(
        model=os.fspath(model) if isinstance(model, (str, os.PathLike)) else str(getattr(model, "path", type(model).__name__)),
        backend=backend.name,
        architecture=backend.architecture,
        num_classes=len(decision_names(backend.class_names, backend.num_logits)),
        preprocessing=cfg,
        predictions=predictions,
        notes=notes,
    )
