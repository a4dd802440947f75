"""Explain images with a SoftCAM model: every class's evidence map from one forward pass, no file written.

:func:`explain` runs the model on the images in batches and returns, per image, an :class:`Explanation`:
the raw evidence maps (K×h×w, signed, bias included: ``maps.mean((1, 2)) == logits``), the prediction
and the colour scale its overlays share. With ``out_dir`` the results are handed, image by image, to
:mod:`softcamify.explanations.write`, which writes::

    out_dir/maps/<name>.npy                 raw maps, K×h×w float32
    out_dir/images/<name>.png               the image region the model sees (resize + crop undone)
    out_dir/overlays/<name>/<k>_<class>.png one overlay per selected class (k: class index)
    out_dir/overlays/<name>/scale.png       the image's colour scale (shared by all its classes)
    out_dir/index.html                      gallery: image, prediction, probability, overlays
    out_dir/manifest.json                   everything above, machine-readable

Signed evidence is shown with a diverging colour map (red = for the class, blue = against, white = 0);
``positive=True`` keeps only positive evidence with a sequential map. Maps are upsampled bilinearly and
one colour scale is shared by all classes of an image, so classes can be compared.

The model is anything :func:`softcamify.runtime.load` takes; an ``.onnx`` export runs in onnxruntime
and never imports torch (nor does importing this module).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .. import images as _images
from ..errors import InputError
from ..evaluation.metrics import json_safe, upsample
from ..runtime import Runtime, softmax
from .inputs import (
    ImageSource,
    PredictionFields,
    describe,
    open_source,
    parse_classes,
    unique_names,
)
from .view import input_view

__all__ = ["DEFAULT_BATCH_SIZE", "DIVERGING_CMAP", "POSITIVE_CMAP", "Explanation", "iter_explanations"]

DEFAULT_BATCH_SIZE = 16
DIVERGING_CMAP = "RdBu_r"
POSITIVE_CMAP = "inferno"


@dataclass
class Explanation(PredictionFields):
    """One image's prediction and evidence maps (and the files written for it, if any).

    ``maps`` is K×h×w float32, signed, bias included (``maps.mean((1, 2))`` equals ``logits``);
    ``classes`` are the class indices rendered; ``vmin``/``vmax`` the colour scale shared by them;
    ``files`` holds paths relative to the output folder (``maps``, ``image``, ``colorbar`` and
    ``overlays``: class name -> path).
    """

    positive: bool = False
    vmin: float = 0.0
    vmax: float = 0.0
    files: dict[str, Any] = field(default_factory=dict)
    data_config: dict[str, Any] = field(default_factory=dict, repr=False)
    _image: Any = field(default=None, repr=False)

    @property
    def evidence_grid(self) -> tuple[int, int]:
        return int(self.maps.shape[-2]), int(self.maps.shape[-1])

    def upsampled(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """The K maps resized bilinearly to ``size`` (default: the model's input size), float32."""
        if size is None:
            size = (int(self.data_config["input_size"][1]), int(self.data_config["input_size"][2]))
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
        from ..render import overlay, scale_maps

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
                **self._prediction_dict(),
                "evidence_grid": list(self.evidence_grid),
                "classes": [self.class_names[i] for i in self.classes],
                "scale": {"vmin": self.vmin, "vmax": self.vmax, "positive": self.positive},
                "files": self.files,
            }
        )


def iter_explanations(
    rt: Runtime,
    sources: Sequence[ImageSource],
    selection: str | list[int],
    positive: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[Explanation, Image.Image]]:
    """(explanation, opened image) for each source in order, one forward pass per batch; nothing is
    written. ``selection`` is what :func:`parse_classes` returns."""
    names = unique_names(sources)
    total = len(sources)
    for start in range(0, total, batch_size):
        yield from _explain_batch(rt, sources[start : start + batch_size], start, names, selection, positive)
        if progress is not None:
            progress(min(start + batch_size, total), total)


def _explain_batch(
    rt: Runtime, chunk: Sequence[Any], start: int, names: Sequence[str], selection: Any, positive: bool
) -> list[tuple[Explanation, Image.Image]]:
    """One forward pass over ``chunk`` (the images from index ``start`` on): their explanations; no I/O
    beyond reading the images."""
    from ..render import scale_maps

    opened = [open_source(src, rt.input_size[0]) for src in chunk]
    x = np.stack([rt.preprocess(img) for img in opened]).astype(np.float32)
    logits, maps = rt(x)
    if maps.ndim != 4 or maps.shape[:2] != logits.shape:
        raise InputError(f"The model returned maps of shape {maps.shape} for logits {logits.shape}.")
    probs = softmax(logits)
    batch = []
    for j, src in enumerate(chunk):
        i = start + j
        p = probs[j]
        pred = int(np.argmax(p))
        sel = [pred] if selection == "pred" else list(range(rt.num_classes)) if selection == "all" else selection
        _, vmin, vmax = scale_maps(maps[j], positive=positive)
        ex = Explanation(
            source=describe(src, i),
            name=names[i],
            class_names=rt.class_names,
            logits=logits[j].astype(np.float32),
            probs=p,
            maps=maps[j].astype(np.float32),
            classes=sel,
            positive=positive,
            vmin=vmin,
            vmax=vmax,
            data_config=rt.data_config,
            _image=None if isinstance(src, (str, os.PathLike)) else src,
        )
        batch.append((ex, opened[j]))
    return batch
