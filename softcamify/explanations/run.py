"""``explain``: evidence maps for images, computed by :mod:`.compute` and, given a folder, written by
:mod:`.write` image by image (so a large folder never sits in memory as overlays)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import UsageError
from ..runtime import load
from .compute import DEFAULT_BATCH_SIZE, DIVERGING_CMAP, POSITIVE_CMAP, Explanation, iter_explanations
from .inputs import ImageSource, check_headers, collect_images, parse_classes
from .write import ExplanationWriter

__all__ = ["explain"]


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
        model: see :func:`softcamify.runtime.load` (SoftCAM module, softcamify ``.safetensors``, any convertible
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

    Returns one :class:`Explanation` per image, in input order. A volume model explains volume files
    instead (:func:`softcamify.explanations.volume.explain_volumes`: one
    :class:`~softcamify.explanations.volume.VolumeExplanation` per scan).
    """
    from ..render import is_diverging

    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}.", param="batch_size")
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"alpha must be between 0 and 1, got {alpha}.", param="alpha")
    cmap = cmap or (POSITIVE_CMAP if positive else DIVERGING_CMAP)
    if positive and is_diverging(cmap):
        raise UsageError(
            f"positive needs a sequential colour map, not the diverging {cmap!r} (try inferno).",
            param=("positive", "cmap"),
        )
    if not positive and not is_diverging(cmap):
        raise UsageError(
            f"Signed maps need a diverging colour map, not {cmap!r}; set positive or use RdBu_r.",
            param=("cmap", "positive"),
        )
    rt = load(model, device=device)
    if rt.volume is not None:  # a volume model: evidence volumes in each scan's geometry
        from .volume import explain_volumes

        return explain_volumes(rt, images, out_dir, classes, batch_size, force=force, progress=progress)  # type: ignore[return-value]
    sources = collect_images(images)
    writer = None
    if out_dir is not None:
        writer = ExplanationWriter(out_dir, force=force, alpha=alpha, cmap=cmap, html=html, title=title)
    selection = parse_classes(classes, rt.class_names)
    check_headers(sources)
    results: list[Explanation] = []
    for ex, image in iter_explanations(rt, sources, selection, positive, batch_size, progress):
        if writer is not None:
            writer.add(ex, image, rt)
        results.append(ex)
    if writer is not None:
        writer.finish(results, rt, selection, positive)
    return results
