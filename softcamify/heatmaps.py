"""Explain images with a SoftCAM model: every class's evidence map from one forward pass, as files.

``explain(model, images, out_dir)`` runs the model on the images in batches and, per image, keeps the
raw evidence maps (K×h×w, signed, bias included: ``maps.mean((1, 2)) == logits``) and renders overlays
for the selected classes. With ``out_dir`` it writes::

    out_dir/maps/<name>.npy                 raw maps, K×h×w float32
    out_dir/images/<name>.png               the image region the model sees (resize + crop undone)
    out_dir/overlays/<name>/<k>_<class>.png one overlay per selected class (k: class index)
    out_dir/overlays/<name>/scale.png       the image's colour scale (shared by all its classes)
    out_dir/index.html                      gallery: image, prediction, probability, overlays
    out_dir/manifest.json                   everything above, machine-readable

Signed evidence is shown with a diverging colour map (red = for the class, blue = against, white = 0);
``positive=True`` keeps only positive evidence with a sequential map. Maps are upsampled bilinearly and
one colour scale is shared by all classes of an image, so classes can be compared.

The model can be a SoftCAM ``nn.Module``, anything :func:`softcamify.conversion.as_softcam` accepts (a
softcamify ``.safetensors``, a checkpoint, a timm name), or an ``.onnx`` export, which runs in
onnxruntime: that path never imports torch (nor does importing this module).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import images as _images
from .binary import decision_names, probabilities, two_class
from .data.collect import collect_image_files
from .errors import InputError, UsageError
from .evaluation.metrics import json_safe, upsample

__all__ = [
    "Explanation",
    "MapModel",
    "collect_images",
    "explain",
    "input_view",
    "load_map_model",
    "parse_classes",
    "softmax",
]

DEFAULT_BATCH_SIZE = 16
DIVERGING_CMAP = "RdBu_r"
POSITIVE_CMAP = "inferno"
ImageSource = str | os.PathLike | Image.Image | np.ndarray


# --------------------------------------------------------------------------------------------------------
# Models: one small interface over torch and onnxruntime
# --------------------------------------------------------------------------------------------------------


def softmax(logits: Any) -> np.ndarray:
    """Class probabilities from logits N×K (float64); a single logit column is read as a sigmoid
    (:func:`softcamify.binary.probabilities`)."""
    return probabilities(logits)


class MapModel:
    """A SoftCAM model behind numpy: ``model(x) -> (logits N×K, maps N×K×h×w)`` for x N×C×H×W float32.

    ``kind`` is ``"torch"`` or ``"onnx"``; ``class_names`` and ``data_config`` (input_size [C, H, W], mean,
    std, interpolation, crop_pct, crop_mode) come from the model's metadata. ``module`` is the torch
    SoftCAM module (``None`` for ONNX). A single-logit (sigmoid) model is seen as its exact two-class
    equivalent (:mod:`softcamify.binary`): two class names, logits ``(−z/2, z/2)``, maps ``(−A/2, A/2)``.
    """

    kind = "abstract"
    module: Any = None

    def __init__(self, class_names: Sequence[str], data_config: dict[str, Any], description: str = "",
                 num_logits: int | None = None):
        self.num_logits = len(class_names) if num_logits is None else int(num_logits)
        self.class_names = decision_names(class_names, self.num_logits)
        self.data_config = dict(data_config)
        self.description = description

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_size(self) -> tuple[int, int, int]:
        c, h, w = (int(v) for v in self.data_config["input_size"])
        return c, h, w

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Softmax probabilities N×K (what deletion / insertion curves read)."""
        return softmax(self(x)[0])

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """The model's eval transform (timm-compatible) for an image already opened with its channels."""
        cfg = self.data_config
        return _images.preprocess_image(
            img,
            input_size=self.input_size,
            mean=cfg.get("mean", _images.IMAGENET_DEFAULT_MEAN),
            std=cfg.get("std", _images.IMAGENET_DEFAULT_STD),
            interpolation=cfg.get("interpolation") or "bicubic",
            crop_pct=cfg.get("crop_pct"),
            crop_mode=cfg.get("crop_mode"),
            channels=self.input_size[0],
        )


class TorchMapModel(MapModel):
    """A SoftCAM ``nn.Module`` on a torch device (inference mode, float32 numpy in and out)."""

    kind = "torch"

    def __init__(self, module: Any, device: Any = "auto", description: str = ""):
        from .device import resolve_device

        self.device = resolve_device(device)
        self.module = module.to(self.device).eval()
        meta = module.meta
        super().__init__(meta.class_names, meta.data_config, description or meta.architecture, meta.num_classes)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            logits, maps = self.module.forward_maps(t)
            return two_class(logits.float().cpu().numpy()), two_class(maps.float().cpu().numpy())


class OnnxMapModel(MapModel):
    """An ``.onnx`` export run by softcamify's onnxruntime wrapper (no torch involved)."""

    kind = "onnx"

    def __init__(self, path: str | os.PathLike, session: Any = None, device: Any = "auto"):
        from . import onnx_runtime

        dev = device if isinstance(device, str) else "auto"
        self.session = session if session is not None else onnx_runtime.OnnxModel(path, device=dev)
        self.session.require_evidence()
        s = self.session
        super().__init__(s.class_names, s.data_config, str(path), s.num_logits)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, maps = self.session.run(np.ascontiguousarray(x, dtype=np.float32))
        return two_class(np.asarray(logits, dtype=np.float32)), two_class(np.asarray(maps, dtype=np.float32))


def _is_torch_module(obj: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def load_map_model(
    model: Any,
    *,
    device: Any = "auto",
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    input_size: tuple[int, int] | None = None,
    trust_pickle: bool = False,
    ema: bool = False,
) -> MapModel:
    """A :class:`MapModel` for ``model``.

    ``model``: a :class:`MapModel` (returned as is); a path ending in ``.onnx`` (onnxruntime, no torch);
    softcamify's onnxruntime session object; a SoftCAM ``nn.Module`` or :class:`LoadedModel`; or anything
    :func:`softcamify.conversion.as_softcam` loads (softcamify ``.safetensors``, a checkpoint, a timm name,
    converted on the fly; ``weights``, ``num_classes``, ``input_size`` and ``ema`` — the EMA weights of a
    training checkpoint — are passed to it).
    """
    if isinstance(model, MapModel):
        return model
    if isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(".onnx"):
        path = Path(model)
        if path.is_dir():
            raise InputError(f"Model path {path} is a folder, not an .onnx file.")
        if not path.is_file():
            raise InputError(f"Model file {path} does not exist.")
        if input_size is not None or weights is not None or num_classes is not None or ema:
            raise UsageError("--input-size, --weights, --num-classes and --ema do not apply to an .onnx model.")
        return OnnxMapModel(path, device=device)
    onnx_mod = __import__("sys").modules.get(f"{__package__}.onnx_runtime")
    if onnx_mod is not None and isinstance(model, getattr(onnx_mod, "OnnxModel", ())):
        return OnnxMapModel(getattr(model, "path", "model.onnx"), session=model)
    from .conversion import as_softcam

    desc = os.fspath(model) if isinstance(model, (str, os.PathLike)) else ""
    softcam, _ = as_softcam(
        model, weights=weights, num_classes=num_classes, input_size=input_size, ema=ema, trust_pickle=trust_pickle
    )
    return TorchMapModel(softcam, device=device, description=desc)


# --------------------------------------------------------------------------------------------------------
# Inputs and options
# --------------------------------------------------------------------------------------------------------


def collect_images(inputs: ImageSource | Iterable[ImageSource]) -> list[ImageSource]:
    """Expand files and folders into a list: a folder's images as
    :func:`softcamify.data.collect.collect_image_files` finds them (recursive, sorted, hidden entries and
    non-images skipped, symlinked folders followed once, never up into a folder above).

    PIL images and uint8 arrays pass through. A missing path, a file that is not an image, or nothing
    found at all is an :class:`InputError`.
    """
    if isinstance(inputs, (str, os.PathLike, Image.Image, np.ndarray)):
        inputs = [inputs]
    out: list[ImageSource] = []
    for item in inputs:
        if isinstance(item, (Image.Image, np.ndarray)):
            out.append(item)
            continue
        p = Path(item)
        if p.is_dir():
            found = collect_image_files(p)
            if not found:
                exts = ", ".join(e[1:] for e in _images.IMAGE_EXTENSIONS)
                raise InputError(f"Folder {p} contains no images ({exts}).")
            out.extend(found)
        elif p.is_file():
            if not _images.is_image_file(p):
                raise InputError(f"{p} is not an image file (expected one of {', '.join(_images.IMAGE_EXTENSIONS)}).")
            out.append(p)
        else:
            raise InputError(f"Image {p} does not exist; check the path.")
    if not out:
        raise InputError("No images were given.")
    unique: list[ImageSource] = []
    seen: set[str] = set()
    for item in out:  # the same file named twice (or inside a folder also given) is explained once
        if isinstance(item, Path):
            key = os.path.realpath(item)
            if key in seen:
                continue
            seen.add(key)
        unique.append(item)
    return unique


def parse_classes(spec: str | int | Sequence[str | int] | None, class_names: Sequence[str]) -> str | list[int]:
    """``"pred"``, ``"all"``, or the class indices of a list of names/indices (``"0,2"``, ``"cat,dog"``).

    Unknown names and out-of-range indices are a :class:`UsageError` naming the model's classes.
    """
    if spec is None:
        return "pred"
    if isinstance(spec, str):
        key = spec.strip()
        if key.lower() in ("pred", "predicted", "top", "top1"):
            return "pred"
        if key.lower() == "all":
            return "all"
        items: list[str | int] = [s.strip() for s in key.split(",")]
    elif isinstance(spec, int):
        items = [spec]
    else:
        items = list(spec)
    names = [str(c) for c in class_names]
    k = len(names)
    out: list[int] = []
    for item in items:
        if isinstance(item, str) and item in names:
            idx = names.index(item)
        elif isinstance(item, (int, np.integer)) or (isinstance(item, str) and re.fullmatch(r"-?\d+", item)):
            idx = int(item)
            if not 0 <= idx < k:
                raise UsageError(f"--classes: class index {idx} is out of range; the model has {k} classes (0–{k - 1}).")
        else:
            shown = ", ".join(names[:12]) + (", …" if k > 12 else "")
            if item == "":
                raise UsageError("--classes has an empty entry; give pred, all, or comma-separated names or indices.")
            raise UsageError(f"--classes: unknown class {item!r}; the model's classes are {shown} (or indices 0–{k - 1}).")
        if idx not in out:
            out.append(idx)
    return out


def _safe_name(text: str, limit: int = 60) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "image"
    return s[:limit]


# --------------------------------------------------------------------------------------------------------
# The image region the model sees
# --------------------------------------------------------------------------------------------------------


def input_view(
    img: Image.Image, data_config: dict[str, Any], min_side: int = 224, max_side: int = 1024
) -> Image.Image:
    """The part of ``img`` the model's eval transform keeps, as RGB, at (about) the original resolution.

    The resize + center crop of the eval transform is undone: the crop box is mapped back to the
    original image (in float pixel coordinates, not rounded) and that exact region is resampled, so
    overlays are sharp and aligned with the maps. The view has the model input's aspect ratio (a square
    input gives a square view, whatever the rounding of the resize), except with ``crop_mode='squash'``,
    where the squash is undone and the region keeps its own aspect ratio. The longer side is then scaled
    into ``[min_side, max_side]``. When the transform pads (``crop_mode='border'`` or a crop larger than
    the resized image) the model's own input (resized, padded) is returned instead.
    """
    c, in_h, in_w = (int(v) for v in data_config["input_size"])
    crop_pct = data_config.get("crop_pct") or _images.DEFAULT_CROP_PCT
    crop_mode = data_config.get("crop_mode") or "center"
    interpolation = data_config.get("interpolation") or "bicubic"
    rgb = img.convert("RGB")
    new_h, new_w = _images._resize_shape((rgb.height, rgb.width), (in_h, in_w), crop_pct, crop_mode)
    if crop_mode == "border" or new_h < in_h or new_w < in_w:
        arr = _images.resize_crop(rgb, (in_h, in_w), interpolation, crop_pct, crop_mode)
        source = Image.fromarray(arr if arr.shape[-1] == 3 else np.repeat(arr, 3, axis=-1))
        box: tuple[float, float, float, float] | None = None
        region_w, region_h = float(in_w), float(in_h)
    else:
        # the crop of the resized image (as _images._center_crop_or_pad cuts it), in original pixels
        top = int(round((new_h - in_h) / 2.0))
        left = int(round((new_w - in_w) / 2.0))
        sy, sx = rgb.height / new_h, rgb.width / new_w
        box = (left * sx, top * sy, (left + in_w) * sx, (top + in_h) * sy)
        source = rgb
        region_w, region_h = box[2] - box[0], box[3] - box[1]
    # aspect ratio of the view: the model input's. The aspect-preserving resize truncates one side to an
    # integer, so the region is a fraction of a percent off square; cutting it as is (or rounding its
    # edges one by one) stretched the square maps. 'squash' undoes its deliberate stretch instead.
    aspect_w, aspect_h = (region_w, region_h) if crop_mode == "squash" and box is not None else (in_w, in_h)
    long_side = max(region_w, region_h)
    target = min(max(long_side, min_side), max_side)
    f = target / max(aspect_w, aspect_h)
    size = (max(1, round(aspect_w * f)), max(1, round(aspect_h * f)))
    if box is None:
        return source if size == source.size else source.resize(size, Image.Resampling.BICUBIC)
    # cut the pixels the region touches first, so that resampling never blends in what lies beyond them
    outer = (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3]))
    cut = source.crop(outer)
    inner = (box[0] - outer[0], box[1] - outer[1], box[2] - outer[0], box[3] - outer[1])
    if size == cut.size and inner == (0, 0, *cut.size):
        return cut  # the exact pixels, no resampling
    return cut.resize(size, Image.Resampling.BICUBIC, box=inner)


# --------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------


@dataclass
class Explanation:
    """One image's prediction and evidence maps (and the files written for it, if any).

    ``maps`` is K×h×w float32, signed, bias included (``maps.mean((1, 2))`` equals ``logits``);
    ``classes`` are the class indices rendered; ``vmin``/``vmax`` the colour scale shared by them;
    ``files`` holds paths relative to the output folder (``maps``, ``image``, ``colorbar`` and
    ``overlays``: class name -> path).
    """

    source: str
    name: str
    class_names: list[str]
    logits: np.ndarray
    probs: np.ndarray
    maps: np.ndarray
    classes: list[int]
    positive: bool = False
    vmin: float = 0.0
    vmax: float = 0.0
    files: dict[str, Any] = field(default_factory=dict)
    data_config: dict[str, Any] = field(default_factory=dict, repr=False)
    _image: Any = field(default=None, repr=False)

    @property
    def prediction(self) -> int:
        return int(np.argmax(self.probs))

    @property
    def predicted_class(self) -> str:
        return self.class_names[self.prediction]

    @property
    def probability(self) -> float:
        return float(self.probs[self.prediction])

    @property
    def evidence_grid(self) -> tuple[int, int]:
        return int(self.maps.shape[-2]), int(self.maps.shape[-1])

    def upsampled(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """The K maps resized bilinearly to ``size`` (default: the model's input size), float32."""
        if size is None:
            size = tuple(int(v) for v in self.data_config["input_size"][1:])  # type: ignore[assignment]
        return upsample(self.maps, size).astype(np.float32)

    def image(self) -> Image.Image:
        """The image region the model sees (see :func:`input_view`)."""
        src = self._image if self._image is not None else self.source
        if isinstance(src, np.ndarray):
            src = Image.fromarray(src)
        img = src if isinstance(src, Image.Image) else _images.open_image(src, channels=3)
        return input_view(img, self.data_config)

    def overlay(
        self, cls: int | str | None = None, alpha: float = 0.5, cmap: str | None = None, weighted: bool = False
    ) -> Image.Image:
        """The overlay of class ``cls`` (index or name; default: the prediction) on :meth:`image`."""
        from .render import overlay, scale_maps

        if cls is None:
            idx = self.prediction
        else:
            sel = parse_classes([cls], self.class_names)
            idx = sel[0] if isinstance(sel, list) else self.prediction
        scaled, _, _ = scale_maps(self.maps, positive=self.positive)
        cmap = cmap or (POSITIVE_CMAP if self.positive else DIVERGING_CMAP)
        return overlay(self.image(), scaled[idx], alpha=alpha, cmap=cmap, weighted=weighted)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "source": self.source,
                "name": self.name,
                "prediction": self.prediction,
                "predicted_class": self.predicted_class,
                "probability": self.probability,
                "probabilities": {n: float(p) for n, p in zip(self.class_names, self.probs, strict=True)},
                "logits": [float(v) for v in self.logits],
                "evidence_grid": list(self.evidence_grid),
                "classes": [self.class_names[i] for i in self.classes],
                "scale": {"vmin": self.vmin, "vmax": self.vmax, "positive": self.positive},
                "files": self.files,
            }
        )


# --------------------------------------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------------------------------------


def _describe(src: ImageSource, i: int) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return f"<image {i}>"


def _unique_names(sources: Sequence[ImageSource]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for i, src in enumerate(sources):
        base = _safe_name(Path(src).stem) if isinstance(src, (str, os.PathLike)) else f"image_{i:04d}"
        n = seen.get(base, 0)
        seen[base] = n + 1
        names.append(base if n == 0 else f"{base}_{n + 1}")
    # a generated suffix may collide with a real name: make all unique
    taken: set[str] = set()
    out = []
    for nm in names:
        cand, j = nm, 2
        while cand in taken:
            cand, j = f"{nm}_{j}", j + 1
        taken.add(cand)
        out.append(cand)
    return out


def _open(src: ImageSource, channels: int) -> Image.Image:
    if isinstance(src, Image.Image):
        return _images.to_channels(src, channels)
    if isinstance(src, np.ndarray):
        arr = src[:, :, 0] if src.ndim == 3 and src.shape[2] == 1 else src
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
            raise InputError(f"Image arrays must be uint8 H×W or H×W×C, got {arr.dtype} {arr.shape}.")
        return _images.to_channels(Image.fromarray(arr), channels)
    return _images.open_image(src, channels=channels)


def _check_headers(sources: Sequence[ImageSource]) -> None:
    """Fail before writing anything when a file is not an image at all (header check, cheap)."""
    for src in sources:
        if isinstance(src, (str, os.PathLike)):
            _images.original_size(src)


def explain(
    model: Any,
    images: ImageSource | Iterable[ImageSource],
    out_dir: str | os.PathLike | None = None,
    classes: str | int | Sequence[str | int] | None = "pred",
    positive: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    cmap: str | None = None,
    alpha: float = 0.5,
    device: Any = "auto",
    force: bool = False,
    html: bool = True,
    title: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Explanation]:
    """Evidence maps of every class for each image, from one forward pass per batch.

    Args:
        model: see :func:`load_map_model` (SoftCAM module, softcamify ``.safetensors``, any convertible
            checkpoint or timm name, or an ``.onnx`` export run by onnxruntime).
        images: image files, folders (searched recursively), PIL images or uint8 arrays.
        out_dir: when given, write maps, overlays, ``index.html`` and ``manifest.json`` there (the folder
            must be empty or new unless ``force``).
        classes: ``"pred"`` (the predicted class), ``"all"``, or class names / indices
            (``"0,2"``, ``["benign", "malignant"]``): which overlays are rendered. Maps of all classes are
            always kept.
        positive: show positive evidence only (sequential colour map) instead of signed evidence.
        batch_size: images per forward pass.
        cmap: colour map (default ``RdBu_r`` signed, ``inferno`` with ``positive``); see
            :mod:`softcamify.render`.
        alpha: overlay opacity.
        device: torch device (``auto``, ``cpu``, ``cuda``…); ignored for ONNX.
        progress: called as ``progress(done, total)`` after each batch.

    Returns one :class:`Explanation` per image, in input order.
    """
    from .render import is_diverging

    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}.")
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"--alpha must be between 0 and 1, got {alpha}.")
    cmap = cmap or (POSITIVE_CMAP if positive else DIVERGING_CMAP)
    if positive and is_diverging(cmap):
        raise UsageError(f"--positive needs a sequential colour map, not the diverging {cmap!r} (try inferno).")
    if not positive and not is_diverging(cmap):
        raise UsageError(f"Signed maps need a diverging colour map, not {cmap!r}; add --positive or use RdBu_r.")
    sources = collect_images(images)
    out = None
    if out_dir is not None:
        from .io import check_output_dir

        out = check_output_dir(out_dir, force=force)
    mm = load_map_model(model, device=device)
    selection = parse_classes(classes, mm.class_names)
    _check_headers(sources)
    names = _unique_names(sources)
    from .io import make_output_dir

    if out is not None:
        for sub in ("maps", "images", "overlays"):
            make_output_dir(out / sub)

    results: list[Explanation] = []
    total = len(sources)
    for start in range(0, total, batch_size):
        batch = _explain_batch(mm, sources[start : start + batch_size], start, names, selection, positive)
        for item in batch:
            if out is not None:
                _write_explanation(out, item, mm, alpha, cmap, force)
            results.append(item.explanation)
        if progress is not None:
            progress(min(start + batch_size, total), total)

    if out is not None:
        _write_index(out, results, mm, selection, positive, cmap, force, html, title)
    return results


@dataclass
class _Explained:
    """One image's :class:`Explanation` and what writing it needs: the opened image and the scaled maps."""

    explanation: Explanation
    image: Any
    scaled: np.ndarray


def _explain_batch(
    mm: MapModel, chunk: Sequence[Any], start: int, names: Sequence[str], selection: Any, positive: bool
) -> list[_Explained]:
    """One forward pass over ``chunk`` (the images from index ``start`` on): their explanations; no I/O
    beyond reading the images."""
    from .render import scale_maps

    opened = [_open(src, mm.input_size[0]) for src in chunk]
    x = np.stack([mm.preprocess(img) for img in opened]).astype(np.float32)
    logits, maps = mm(x)
    if maps.ndim != 4 or maps.shape[:2] != logits.shape:
        raise InputError(f"The model returned maps of shape {maps.shape} for logits {logits.shape}.")
    probs = softmax(logits)
    batch = []
    for j, src in enumerate(chunk):
        i = start + j
        p = probs[j]
        pred = int(np.argmax(p))
        sel = ([pred] if selection == "pred" else list(range(mm.num_classes)) if selection == "all"
               else selection)
        scaled, vmin, vmax = scale_maps(maps[j], positive=positive)
        ex = Explanation(
            source=_describe(src, i),
            name=names[i],
            class_names=mm.class_names,
            logits=logits[j].astype(np.float32),
            probs=p,
            maps=maps[j].astype(np.float32),
            classes=sel,
            positive=positive,
            vmin=vmin,
            vmax=vmax,
            data_config=mm.data_config,
            _image=None if isinstance(src, (str, os.PathLike)) else src,
        )
        batch.append(_Explained(ex, opened[j], scaled))
    return batch


def _write_explanation(
    out: Path, item: _Explained, mm: MapModel, alpha: float, cmap: str, force: bool
) -> None:
    """Write one explanation's maps, input view, overlays and colour scale under ``out``; sets ``files``."""
    from .io import atomic_output, make_output_dir
    from .render import colorbar, overlay, save_png

    ex = item.explanation
    name = ex.name
    files: dict[str, Any] = {"maps": f"maps/{name}.npy", "image": f"images/{name}.png"}
    with atomic_output(out / files["maps"], force=force) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, ex.maps)
    view = input_view(item.image, mm.data_config)
    make_output_dir(out / "overlays" / name)
    save_png(view, out / files["image"], force=force)
    overlays = {}
    for c in ex.classes:
        rel = f"overlays/{name}/{c}_{_safe_name(mm.class_names[c], 40)}.png"
        save_png(overlay(view, item.scaled[c], alpha=alpha, cmap=cmap), out / rel, force=force)
        overlays[mm.class_names[c]] = rel
    files["overlays"] = overlays
    files["colorbar"] = f"overlays/{name}/scale.png"
    save_png(colorbar(ex.vmin, ex.vmax, cmap), out / files["colorbar"], force=force)
    ex.files = files


def _manifest(results: Sequence[Explanation], mm: MapModel, selection: Any, positive: bool, cmap: str) -> dict:
    from ._version import __version__

    grid = list(results[0].evidence_grid) if results else None
    return json_safe(
        {
            "softcamify_version": __version__,
            "model": mm.description,
            "backend": mm.kind,
            "class_names": mm.class_names,
            "data_config": mm.data_config,
            "evidence_grid": grid,
            "classes": selection if isinstance(selection, str) else [mm.class_names[c] for c in selection],
            "positive": positive,
            "cmap": cmap,
            "maps_format": "npy float32 K×h×w, signed, bias included; mean over h, w = logits",
            "count": len(results),
            "images": [r.to_dict() for r in results],
        }
    )


def _write_index(
    out: Path, results: Sequence[Explanation], mm: MapModel, selection: Any, positive: bool, cmap: str,
    force: bool, html: bool, title: str | None,
) -> None:
    import json

    from . import report
    from .io import write_text_atomic

    manifest = _manifest(results, mm, selection, positive, cmap)
    if html:
        items = []
        for r in results:
            ovs = [
                {"src": rel, "caption": f"{cls} (logit {float(r.logits[mm.class_names.index(cls)]):.3g})"}
                for cls, rel in r.files.get("overlays", {}).items()
            ]
            ovs.append({"src": r.files["colorbar"], "caption": "colour scale"})
            sign = "positive evidence, 0 … " if positive else "evidence, −"
            items.append(
                {
                    "title": r.source if not r.source.startswith("<") else r.name,
                    "image": r.files["image"],
                    "prediction": r.predicted_class,
                    "probability": r.probability,
                    "overlays": ovs,
                    "note": f"shared colour scale ({sign}{r.vmax:.3g} … +{r.vmax:.3g}) for all classes",
                }
            )
        legend = (
            "Red: evidence for the class; blue: evidence against it; white: none. "
            if not positive
            else "Brighter: more positive evidence for the class (negative evidence hidden). "
        )
        page = report.html_page(
            title or "softcamify explain",
            [
                report.paragraph(
                    f"{len(results)} image(s), model {mm.description or mm.kind} ({mm.kind}), "
                    f"{mm.num_classes} classes, evidence grid "
                    f"{'×'.join(str(v) for v in (manifest['evidence_grid'] or []))}."
                ),
                report.paragraph(
                    legend + "Maps are upsampled bilinearly; each image's classes share one colour scale.",
                    note=True,
                ),
                report.gallery(items),
            ],
            footer=f"softcamify {manifest['softcamify_version']}",
        )
        report.write_report(out / "index.html", page, force=force)
        manifest["html"] = "index.html"
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n", force=force)
