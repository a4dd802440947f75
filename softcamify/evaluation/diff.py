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

Compute only; :mod:`.diff_report` writes the HTML page, ``diff.json`` and the JUnit file. Torch-free.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import images as _images
from ..errors import InputError, UsageError
from ..runtime import Runtime, load, softmax
from . import metrics as M
from .gates import Gate, GateOutcome
from .metrics.agreement import region_size

__all__ = ["DIFF_GATES", "DiffReport", "diff", "diff_gates"]

Progress = Callable[[str, int, int], None]

#: the gates of ``diff``: option → (the reported value it reads, op, valid range)
DIFF_GATES: dict[str, tuple[str, str, tuple[float, float]]] = {
    "max_flips": ("flips", "<=", (0.0, math.inf)),
    "min_rank_corr": ("rank_corr", ">=", (-1.0, 1.0)),
    "min_topk_iou": ("topk_iou", ">=", (0.0, 1.0)),
    "max_prob_change": ("max_prob_change", "<=", (0.0, 1.0)),
    "max_peak_shift": ("peak_shift", "<=", (0.0, 1.0)),
    "max_accuracy_drop": ("accuracy_drop", "<=", (-1.0, 1.0)),
}
#: classes whose per-image values are kept in the per-image rows (more: only the means over classes)
PER_IMAGE_CLASSES = 20
_LOCALIZATION = ("activation_precision", "activation_sensitivity", "pointing_game", "energy_pointing_game")
_AGREEMENT = ("rank_corr", "topk_iou", "peak_shift_cells", "peak_shift", "sparsity_change")


@dataclass
class DiffReport:
    """What :func:`diff` returns (JSON: :meth:`to_dict`)."""

    old: dict[str, Any]  # description, backend, evidence grid, input size
    new: dict[str, Any]
    data: dict[str, Any]  # source, images, labelled, masks
    settings: dict[str, Any]
    predictions: dict[str, Any]  # flips, flipped images, |Δp|, accuracies
    agreement: dict[str, Any]  # overall means and per class
    localization: dict[str, Any] | None  # per model, with masks
    shortcuts: list[dict[str, Any]]  # per class: both models' fixed-region share and flags
    per_image: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    gates: list[GateOutcome] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)  # the most-changed images, for the page
    report: str | None = None
    junit: str | None = None

    @property
    def new_shortcuts(self) -> list[str]:
        """Classes flagged for the new model and not for the old one."""
        return [s["class"] for s in self.shortcuts if s["new"]["flagged"] and not s["old"]["flagged"]]

    def to_dict(self) -> dict[str, Any]:
        return M.json_safe(
            {
                "old": self.old,
                "new": self.new,
                "data": self.data,
                "settings": self.settings,
                "predictions": self.predictions,
                "agreement": self.agreement,
                "localization": self.localization,
                "shortcuts": self.shortcuts,
                "new_shortcuts": self.new_shortcuts,
                "gates": [g.to_dict() for g in self.gates],
                "notes": self.notes,
                "report": self.report,
                "junit": self.junit,
            }
        )


# --------------------------------------------------------------------------------------------------------
# Gates
# --------------------------------------------------------------------------------------------------------


def diff_gates(
    max_flips: int | None = None,
    min_rank_corr: float | None = None,
    min_topk_iou: float | None = None,
    max_prob_change: float | None = None,
    max_peak_shift: float | None = None,
    fail_on_new_shortcut: bool = False,
    max_accuracy_drop: float | None = None,
) -> list[Gate]:
    """The gates asked for, checked (a threshold outside its range is a :class:`UsageError`)."""
    given = {
        "max_flips": max_flips,
        "min_rank_corr": min_rank_corr,
        "min_topk_iou": min_topk_iou,
        "max_prob_change": max_prob_change,
        "max_peak_shift": max_peak_shift,
        "max_accuracy_drop": max_accuracy_drop,
    }
    gates = []
    for option, value in given.items():
        if value is None:
            continue
        metric, op, (lo, hi) = DIFF_GATES[option]
        v = float(value)
        if not math.isfinite(v) or not lo <= v <= hi:
            rng = f"at least {lo:g}" if hi == math.inf else f"between {lo:g} and {hi:g}"
            raise UsageError(f"{option} must be {rng}, got {value}.", param=option)
        if option == "max_flips" and v != int(v):
            raise UsageError(f"max_flips is a number of images, got {value}.", param=option)
        gates.append(Gate(metric, op, v))
    if fail_on_new_shortcut:
        gates.append(Gate("new_shortcuts", "<=", 0.0))
    return gates


def _judge(report: DiffReport, gates: Sequence[Gate]) -> list[GateOutcome]:
    values = {
        "flips": float(report.predictions["flips"]),
        "rank_corr": report.agreement["overall"]["rank_corr"],
        "topk_iou": report.agreement["overall"]["topk_iou"],
        "max_prob_change": report.predictions["max_prob_change"],
        "peak_shift": report.agreement["overall"]["peak_shift"],
        "new_shortcuts": float(len(report.new_shortcuts)),
        "accuracy_drop": _accuracy_drop(report.predictions),
    }
    out = []
    for g in gates:
        v = values[g.metric]
        value = None if v is None or not math.isfinite(float(v)) else float(v)
        passed = value is not None and (value >= g.threshold if g.op == ">=" else value <= g.threshold)
        out.append(GateOutcome(g, value, passed))
    return out


def _accuracy_drop(predictions: dict[str, Any]) -> float | None:
    """OLD's accuracy minus NEW's (None without labels: its gate then fails, as an unmeasured value)."""
    acc = predictions.get("accuracy")
    return None if acc is None else float(acc["old"]) - float(acc["new"])


# --------------------------------------------------------------------------------------------------------
# The images
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Image:
    path: Path
    label: int | None  # dataset label (None: unlabelled)
    mask_path: Path | None = None


def _samples(
    data: str | os.PathLike, split: str | None, masks: str | os.PathLike | None
) -> tuple[list[_Image], list[str] | None, str, Path | None]:
    """``(images, dataset class names or None, description, mask root)`` of DATA: a labels CSV, a dataset
    folder (a split of a split layout, or class folders: as ``evaluate`` reads them), or a plain folder of
    images (unlabelled)."""
    from ..data import SPLIT_NAMES, default_mask_root, discover, mask_path_for
    from .samples import evaluation_samples

    root = Path(data)
    if split is not None and split not in SPLIT_NAMES:
        raise UsageError(f"split {split!r} is not one of {', '.join(SPLIT_NAMES)}.", param="split")
    if not root.exists():
        raise InputError(f"{root} does not exist; DATA is a folder of images, a dataset folder or a labels CSV.")
    mask_root = Path(masks) if masks is not None else None
    if mask_root is not None and not mask_root.is_dir():
        raise InputError(f"Mask folder {mask_root} does not exist or is not a folder; check masks.", param="masks")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise InputError(f"{root} is a file but not a labels CSV (.csv); DATA is a folder or a CSV.")
        found = discover(None, labels_csv=root, min_classes=1)
        pool = found.split(split) if split is not None else [*found.train, *found.val, *found.test]
        if not pool and split is not None:
            raise InputError(f"{root} has no {split} rows; drop split or fill the split column.", param="split")
        if not pool:
            raise InputError(f"{root} lists no images.")
        items = [_Image(Path(s.path), int(s.label)) for s in sorted(pool, key=lambda s: str(s.path))]
        base = mask_root
        desc = f"{split + ' rows' if split else 'rows'} of {root}"
        names: list[str] | None = list(found.class_names)
    elif _has_class_folders(root):
        mask_root = mask_root or default_mask_root(root)
        pairs, ds_names, desc = evaluation_samples(root, split or "test", mask_root)
        items = [_Image(p, y) for p, y in pairs]
        names = ds_names
        base = mask_root
    else:
        from ..prediction import collect_images

        items = [_Image(p, None) for p in collect_images(root)]
        if not items:
            raise InputError(f"{root} contains no images.")
        names, desc, base = None, f"images under {root}", mask_root
    if base is not None:
        data_root = root.parent if root.is_file() else root
        for it in items:
            it.mask_path = mask_path_for(it.path, data_root, base)
    return items, names, desc, base


def _has_class_folders(root: Path) -> bool:
    return any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())


def _match(
    ds_names: list[str] | None, old: Runtime, new: Runtime, notes: list[str]
) -> tuple[list[int] | None, list[str]]:
    """Dataset label → model class, and the class names to report; both models must have the same classes."""
    from .samples import match_labels

    if old.num_classes != new.num_classes:
        raise InputError(
            f"OLD has {old.num_classes} classes and NEW {new.num_classes}; diff compares versions of one classifier."
        )
    if list(old.class_names) != list(new.class_names):
        notes.append(
            "The models name their classes differently; they are compared by position ("
            + ", ".join(f"{a}={b}" for a, b in zip(old.class_names, new.class_names, strict=True) if a != b)
            + ")."
        )
    if ds_names is None:
        return None, list(old.class_names)
    mapping, names = match_labels(ds_names, old.class_names, notes, binary=old.num_logits == 1)
    return mapping, names


# --------------------------------------------------------------------------------------------------------
# The pass
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Acc:
    """What the pass gathers, image by image."""

    probs: list[np.ndarray] = field(default_factory=list)  # [old N×K, new N×K] chunks
    grid_maps: list[list[np.ndarray]] = field(default_factory=lambda: [[], []])  # per model, N×K×h×w chunks
    shown: list[list[np.ndarray]] = field(default_factory=lambda: [[], []])  # per model, the shown class's map
    loc: list[list[dict[str, float]]] = field(default_factory=lambda: [[], []])
    loc_index: list[int] = field(default_factory=list)


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
    items, ds_names, desc, mask_root = _samples(data, split, masks)
    notes: list[str] = []
    if max_images is not None and len(items) > max_images:
        notes.append(f"{len(items)} images found; the first {max_images} compared (max_images).")
        items = items[:max_images]
    rt_old = load(old, device=device, trust_pickle=trust_pickle)
    rt_new = load(new, device=device, trust_pickle=trust_pickle)
    mapping, names = _match(ds_names, rt_old, rt_new, notes)
    labels = None if mapping is None else np.array([mapping[it.label] for it in items if it.label is not None])
    acc = _run(rt_old, rt_new, items, labels, batch_size, mask_root, progress)
    report = _summarize(
        rt_old, rt_new, items, labels, names, acc, notes,
        topk=topk, region=shortcut_region, threshold=shortcut_threshold, min_images=shortcut_min_images,
        sparsity_threshold=sparsity_threshold,
    )  # fmt: skip
    report.data.update({"source": desc, "data": str(data), "masks": str(mask_root) if mask_root else None})
    report.settings.update({"batch_size": batch_size, "examples": examples, "seconds": time.perf_counter() - t0})
    report.gates = _judge(report, gates)
    report.examples = _examples(report, items, acc, examples, labels)
    if out is not None or junit_path is not None:
        write_diff(report, rt_old, rt_new, out, junit_path, force=force)
    return report


def _run(
    old: Runtime,
    new: Runtime,
    items: Sequence[_Image],
    labels: np.ndarray | None,
    batch_size: int,
    mask_root: Path | None,
    progress: Progress | None,
) -> _Acc:
    """One batched pass over the images: both models' probabilities, their maps on the common grid, the shown
    class's raw maps and, with masks, the localization of the true class."""
    acc = _Acc()
    same_input = old.data_config == new.data_config
    n = len(items)
    grid: tuple[int, int] | None = None
    for start in range(0, n, batch_size):
        chunk = items[start : start + batch_size]
        opened = [_images.open_image(it.path, channels=old.input_size[0]) for it in chunk]
        if old.input_size[0] != new.input_size[0]:
            raise InputError(f"OLD takes {old.input_size[0]}-channel images and NEW {new.input_size[0]}.")
        x_old = np.stack([old.preprocess(img) for img in opened]).astype(np.float32)
        x_new = x_old if same_input else np.stack([new.preprocess(img) for img in opened]).astype(np.float32)
        outs = [old(x_old), new(x_new)]
        if grid is None:
            grid = M.common_grid(outs[0][1].shape[-2:], outs[1][1].shape[-2:])
        probs_chunk = []
        for side, (logits, maps) in enumerate(outs):
            probs_chunk.append(softmax(logits))
            acc.grid_maps[side].append(M.area_pool(maps, grid).astype(np.float32))
        acc.probs.append(np.stack(probs_chunk))
        show = _shown_classes(start, len(chunk), labels, probs_chunk[0])
        for side, (_, maps) in enumerate(outs):
            acc.shown[side].extend(maps[j, c] for j, c in enumerate(show))
        if mask_root is not None and labels is not None:
            _localize(acc, old, new, outs, chunk, opened, labels, start)
        if progress is not None:
            progress("comparing", min(start + batch_size, n), n)
    return acc


def _shown_classes(start: int, count: int, labels: np.ndarray | None, probs_old: np.ndarray) -> list[int]:
    """The class whose maps an image's examples show: its label, else the old model's prediction."""
    if labels is not None:
        return [int(c) for c in labels[start : start + count]]
    return [int(c) for c in np.argmax(probs_old, axis=1)]


def _localize(
    acc: _Acc,
    old: Runtime,
    new: Runtime,
    outs: Sequence[tuple[np.ndarray, np.ndarray]],
    chunk: Sequence[_Image],
    opened: Sequence[Any],
    labels: np.ndarray,
    start: int,
) -> None:
    """Each model's true-class map against the image's mask (aligned to that model's input)."""
    from .samples import align_mask

    for j, it in enumerate(chunk):
        if it.mask_path is None:
            continue
        label = int(labels[start + j])
        recs = []
        for rt, (_, maps) in zip((old, new), outs, strict=True):
            mask = align_mask(it.mask_path, opened[j], rt.data_config)
            if not mask.any():
                break
            sal = M.upsample(maps[j, label], mask.shape)
            recs.append(
                {
                    "activation_precision": M.activation_precision(sal, mask),
                    "activation_sensitivity": M.activation_sensitivity(sal, mask),
                    "pointing_game": M.pointing_game(maps[j, label], mask),
                    "energy_pointing_game": M.energy_pointing_game(sal, mask),
                }
            )
        if len(recs) == 2:
            acc.loc[0].append(recs[0])
            acc.loc[1].append(recs[1])
            acc.loc_index.append(start + j)


# --------------------------------------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------------------------------------


def _model_info(rt: Runtime, grid: Sequence[int]) -> dict[str, Any]:
    return {
        "model": rt.description,
        "backend": rt.backend,
        "architecture": rt.architecture,
        "input_size": list(rt.input_size),
        "evidence_grid": [int(v) for v in grid],
    }


def _mean(values: Any) -> float | None:
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


# Long by the report's many parts, each a few lines, assembled in one place.
def _summarize(
    old: Runtime,
    new: Runtime,
    items: Sequence[_Image],
    labels: np.ndarray | None,
    names: list[str],
    acc: _Acc,
    notes: list[str],
    *,
    topk: int | None,
    region: float,
    threshold: float,
    min_images: int,
    sparsity_threshold: float,
) -> DiffReport:
    probs = np.concatenate(acc.probs, axis=1)  # 2×N×K
    maps_old = np.concatenate(acc.grid_maps[0])
    maps_new = np.concatenate(acc.grid_maps[1])
    grid = maps_old.shape[-2:]
    grid_old, grid_new = acc.shown[0][0].shape, acc.shown[1][0].shape
    if grid_old != grid_new:
        notes.append(
            f"The evidence grids differ (OLD {grid_old[0]}×{grid_old[1]}, NEW {grid_new[0]}×{grid_new[1]}): the "
            f"maps were compared on the common {grid[0]}×{grid[1]} grid, the finer one area-averaged onto it."
        )
    if old.data_config != new.data_config:
        notes.append("The models preprocess images differently; each map covers its own model's view of the image.")
    cells = int(grid[0] * grid[1])
    k = topk if topk is not None else max(1, round(0.1 * cells))
    if not 1 <= k <= cells:
        raise UsageError(f"topk must be between 1 and the {cells} cells of the common grid, got {k}.", param="topk")
    rho = M.rank_correlation(maps_old, maps_new)  # N×K
    iou = M.topk_iou(maps_old, maps_new, k)
    shift_cells, shift = M.peak_shift(maps_old, maps_new)
    d_sparsity = M.positive_sparsity(maps_new, sparsity_threshold) - M.positive_sparsity(maps_old, sparsity_threshold)
    per_metric: dict[str, np.ndarray] = {
        "rank_corr": np.asarray(rho),
        "topk_iou": np.asarray(iou),
        "peak_shift_cells": np.asarray(shift_cells),
        "peak_shift": np.asarray(shift),
        "sparsity_change": np.asarray(d_sparsity),
    }
    constant = int(np.isnan(np.asarray(rho)).sum())
    if constant:
        notes.append(f"{constant} map pair(s) have a constant map (no ranking): left out of the rank correlation.")
    agreement = {
        "grid": [int(v) for v in grid],
        "topk": k,
        "overall": {key: _mean(v) for key, v in per_metric.items()},
        "per_class": [
            {"class": name, **{key: _mean(v[:, c]) for key, v in per_metric.items()}} for c, name in enumerate(names)
        ],
    }
    predictions = _predictions(probs, items, labels, names)
    report = DiffReport(
        old=_model_info(old, grid_old),
        new=_model_info(new, grid_new),
        data={"images": len(items), "labelled": labels is not None, "class_names": names},
        settings={
            "common_grid": [int(v) for v in grid],
            "resampling": "exact area averaging onto the coarser grid (per axis)",
            "topk": k,
            "shortcut_region": region,
            "shortcut_region_cells": region_size(grid, region),
            "shortcut_threshold": threshold,
            "shortcut_min_images": min_images,
            "sparsity_threshold": sparsity_threshold,
        },
        predictions=predictions,
        agreement=agreement,
        localization=_localization(acc),
        shortcuts=_shortcuts(maps_old, maps_new, probs, labels, names, region, threshold, min_images),
        per_image=_per_image(items, probs, names, labels, per_metric),
        notes=notes,
    )
    return report


def _predictions(
    probs: np.ndarray, items: Sequence[_Image], labels: np.ndarray | None, names: Sequence[str]
) -> dict[str, Any]:
    top_old, top_new = probs[0].argmax(1), probs[1].argmax(1)
    flipped = np.flatnonzero(top_old != top_new)
    delta = np.abs(probs[1] - probs[0])
    out: dict[str, Any] = {
        "flips": int(flipped.size),
        "flip_rate": float(flipped.size / len(items)),
        "flipped": [
            {
                "path": str(items[i].path),
                "old": names[top_old[i]],
                "new": names[top_new[i]],
                "old_probability": float(probs[0][i, top_old[i]]),
                "new_probability": float(probs[1][i, top_new[i]]),
                **({"label": names[int(labels[i])]} if labels is not None else {}),
            }
            for i in flipped.tolist()
        ],
        "max_prob_change": float(delta.max()),
        "mean_prob_change": float(delta.max(axis=1).mean()),
    }
    if labels is not None:
        k = len(names)
        out["accuracy"] = {"old": M.accuracy(labels, top_old), "new": M.accuracy(labels, top_new)}
        out["balanced_accuracy"] = {
            "old": M.balanced_accuracy(labels, top_old, k),
            "new": M.balanced_accuracy(labels, top_new, k),
        }
    return out


def _localization(acc: _Acc) -> dict[str, Any] | None:
    if not acc.loc_index:
        return None
    return {
        "images": len(acc.loc_index),
        "metrics": {
            key: {"old": _mean([r[key] for r in acc.loc[0]]), "new": _mean([r[key] for r in acc.loc[1]])}
            for key in _LOCALIZATION
        },
    }


def _shortcuts(
    maps_old: np.ndarray,
    maps_new: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray | None,
    names: Sequence[str],
    region: float,
    threshold: float,
    min_images: int,
) -> list[dict[str, Any]]:
    """Per class, both models' fixed-region share (images labelled with the class, else predicted as it)."""
    out = []
    for c, name in enumerate(names):
        row: dict[str, Any] = {"class": name}
        for side, maps in (("old", maps_old), ("new", maps_new)):
            who = labels if labels is not None else probs[0 if side == "old" else 1].argmax(1)
            sel = np.flatnonzero(who == c)
            rs = M.fixed_region_share(maps[sel, c], region) if sel.size else None
            if rs is None:
                row[side] = {"share": None, "uniform": None, "lift": None, "images": 0, "cells": [], "flagged": False}
                continue
            flagged = rs.images >= min_images and rs.share >= threshold
            row[side] = {**rs.to_dict(), "flagged": bool(flagged)}
        out.append(row)
    return out


def _per_image(
    items: Sequence[_Image],
    probs: np.ndarray,
    names: Sequence[str],
    labels: np.ndarray | None,
    per_metric: dict[str, np.ndarray],
) -> list[dict[str, Any]]:
    rows = []
    keep_classes = len(names) <= PER_IMAGE_CLASSES
    for i, it in enumerate(items):
        po, pn = probs[0][i], probs[1][i]
        row: dict[str, Any] = {
            "path": str(it.path),
            "old": names[int(po.argmax())],
            "new": names[int(pn.argmax())],
            "flipped": bool(po.argmax() != pn.argmax()),
            "max_prob_change": float(np.abs(pn - po).max()),
            **{key: _mean(v[i]) for key, v in per_metric.items()},
        }
        if labels is not None:
            row["label"] = names[int(labels[i])]
        if keep_classes:
            row["classes"] = {
                name: {key: float(v[i, c]) for key, v in per_metric.items()} for c, name in enumerate(names)
            }
        rows.append(M.json_safe(row))
    return rows


def _examples(
    report: DiffReport, items: Sequence[_Image], acc: _Acc, n: int, labels: np.ndarray | None
) -> list[dict[str, Any]]:
    """The ``n`` most-changed images (lowest mean rank correlation over classes; flips first), with the
    shown class's raw maps of both models."""
    if n == 0:
        return []
    order = sorted(
        range(len(items)),
        key=lambda i: (
            not report.per_image[i]["flipped"],
            report.per_image[i]["rank_corr"] if report.per_image[i]["rank_corr"] is not None else 2.0,
        ),
    )
    names = report.data["class_names"]
    out = []
    for i in order[:n]:
        cls = int(labels[i]) if labels is not None else names.index(report.per_image[i]["old"])
        out.append(
            {
                "index": i,
                "path": items[i].path,
                "class": names[cls],
                "old_map": acc.shown[0][i],
                "new_map": acc.shown[1][i],
                "row": report.per_image[i],
            }
        )
    return out
