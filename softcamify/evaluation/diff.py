"""Compare two versions of a model on the same images: did its decisions change, did its *reasons* change?

``diff(old, new, data)`` runs both models (softcamify ``.safetensors`` or ``.onnx``, one of each allowed; the
ONNX path never imports torch) over the same images in batches, one pass, and reports:

* **predictions**: top-1 flips (the images listed), the largest and mean |Δ probability|, and both models'
  accuracy and balanced accuracy when the data has labels;
* **evidence agreement** per image and class, on a common grid (the coarser of the two along each axis; a
  finer map is area-averaged onto it, :func:`~softcamify.evaluation.metrics.area_pool`, and the report says
  so): Spearman rank correlation, IoU of the top-k cells, shift of the peak (cells and fraction of the
  grid's diagonal), change of the sparsity of the positive evidence; aggregated per class and overall;
* **localization** with masks: each model's true-class map against the mask, side by side (activation
  precision and sensitivity, pointing game, energy pointing game), each at its own input geometry;
* **shortcut flags**: per model and class, the share of the class's positive evidence that falls in the same
  cells across the images (:func:`~softcamify.evaluation.metrics.fixed_region_share`), flagged at
  ``shortcut_threshold``;
* **gates** (``max_flips``, ``min_rank_corr``, ``min_topk_iou``, ``max_prob_change``, ``max_peak_shift``,
  ``max_accuracy_drop``, ``fail_on_new_shortcut``), judged into :class:`~softcamify.evaluation.gates.GateOutcome` s.

Compute only, in steps: :mod:`.diff_pass` reads the images and runs the batched pass, :mod:`.diff_summary`
summarizes it, :mod:`.diff_results` holds :class:`DiffReport` and judges its gates; :mod:`.diff_report` writes
the HTML page, ``diff.json`` and the JUnit file. Torch-free.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ..errors import UsageError
from ..runtime import load
from .diff_pass import Progress, diff_samples, match_classes, run_pass
from .diff_results import DIFF_GATES, DiffReport, diff_gates, judge
from .diff_summary import examples as _examples
from .diff_summary import summarize
from .metrics.agreement import region_size

__all__ = ["DIFF_GATES", "DiffReport", "diff", "diff_gates"]


# Long by its keyword API (one parameter per CLI option) and its docstring; the work is in the steps below.
def diff(
    old: Any,
    new: Any,
    data: str | os.PathLike,
    *,
    split: str | None = None,
    masks: str | os.PathLike | None = None,
    topk: int | None = None,
    shortcut_region: float = 0.05,
    shortcut_threshold: float = 0.5,
    shortcut_min_images: int = 5,
    sparsity_threshold: float = 0.01,
    max_images: int | None = None,
    batch_size: int = 16,
    device: Any = "auto",
    examples: int = 8,
    max_flips: int | None = None,
    min_rank_corr: float | None = None,
    min_topk_iou: float | None = None,
    max_prob_change: float | None = None,
    max_peak_shift: float | None = None,
    fail_on_new_shortcut: bool = False,
    max_accuracy_drop: float | None = None,
    out_dir: str | os.PathLike | None = None,
    junit: str | os.PathLike | None = None,
    force: bool = False,
    trust_pickle: bool = False,
    progress: Progress | None = None,
) -> DiffReport:
    """Compare ``old`` and ``new`` (softcamify ``.safetensors`` / ``.onnx``, or anything
    :func:`softcamify.runtime.load` opens) on the images of ``data``.

    Args:
        data: a folder of images (unlabelled), a dataset folder (its ``split``, default ``test``, or its class
            folders, as ``evaluate`` reads them) or a labels CSV (``path,label[,split]``; all rows unless
            ``split``).
        masks: mask root mirroring ``data`` (default ``data/masks`` when it exists): localization of both.
        topk: cells of the top-k IoU (default: 10 % of the common grid's cells, at least 1).
        shortcut_region: the fixed region's size as a share of the common grid's cells (default 5 %).
        shortcut_threshold: a model and class are flagged when the mean share of an image's positive
            evidence in the class's fixed region reaches it (default 0.5), over at least
            ``shortcut_min_images`` images of the class (images labelled with it; unlabelled data: images
            the model predicts as it).
        sparsity_threshold: as ``evaluate``'s (share of cells under this fraction of the peak).
        max_images: at most this many images (the first in sorted order).
        examples: the most-changed images shown side by side on the HTML page.
        max_flips, min_rank_corr, min_topk_iou, max_prob_change, max_peak_shift, fail_on_new_shortcut: gates
            on the number of flips, the mean rank correlation and top-k IoU over images and classes, the
            largest |Δ probability|, the mean peak shift (fraction of the grid), and a class flagged for
            ``new`` but not for ``old``; ``max_accuracy_drop``: OLD's accuracy minus NEW's (needs labels; without
            them the gate fails). Judged in ``report.gates``; nothing is raised here
            (:func:`~softcamify.evaluation.gates.require_gates` does).
        out_dir: write ``index.html``, ``diff.json`` and ``per_image.json`` there; ``junit``: the gates as
            JUnit XML (atomically; ``force`` to overwrite).
    """
    t0 = time.perf_counter()
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}.", param="batch_size")
    if max_images is not None and max_images < 1:
        raise UsageError(f"max_images must be at least 1, got {max_images}.", param="max_images")
    if examples < 0:
        raise UsageError(f"examples must be 0 or more, got {examples}.", param="examples")
    if not 0 < shortcut_threshold <= 1:
        raise UsageError(
            f"shortcut_threshold is a share between 0 and 1, got {shortcut_threshold}.", param="shortcut_threshold"
        )
    if shortcut_min_images < 1:
        raise UsageError("shortcut_min_images must be at least 1.", param="shortcut_min_images")
    region_size((1, 1), shortcut_region)  # checks its range
    gates = diff_gates(
        max_flips,
        min_rank_corr,
        min_topk_iou,
        max_prob_change,
        max_peak_shift,
        fail_on_new_shortcut,
        max_accuracy_drop,
    )
    from .diff_report import check_outputs, write_diff

    out, junit_path = check_outputs(out_dir, junit, force)
    rt_old = load(old, device=device, trust_pickle=trust_pickle)
    rt_new = load(new, device=device, trust_pickle=trust_pickle)
    for rt, param in ((rt_old, "old"), (rt_new, "new")):
        if rt.spatial_dims != 2:
            raise UsageError(
                f"{rt.description or param} is a volume model: diff compares image models "
                "(compare volume models with evaluate, one at a time).",
                param=param,
            )
    items, ds_names, desc, mask_root = diff_samples(data, split, masks)
    notes: list[str] = []
    if max_images is not None and len(items) > max_images:
        notes.append(f"{len(items)} images found; the first {max_images} compared (max_images).")
        items = items[:max_images]
    mapping, names = match_classes(ds_names, rt_old, rt_new, notes)
    labels = None if mapping is None else np.array([mapping[it.label] for it in items if it.label is not None])
    acc = run_pass(rt_old, rt_new, items, labels, batch_size, mask_root, progress)
    report = summarize(
        rt_old, rt_new, items, labels, names, acc, notes,
        topk=topk, region=shortcut_region, threshold=shortcut_threshold, min_images=shortcut_min_images,
        sparsity_threshold=sparsity_threshold,
    )  # fmt: skip
    report.data.update({"source": desc, "data": str(data), "masks": str(mask_root) if mask_root else None})
    report.settings.update({"batch_size": batch_size, "examples": examples, "seconds": time.perf_counter() - t0})
    report.gates = judge(report, gates)
    report.examples = _examples(report, items, acc, examples, labels)
    if out is not None or junit_path is not None:
        write_diff(report, rt_old, rt_new, out, junit_path, force=force)
    return report
