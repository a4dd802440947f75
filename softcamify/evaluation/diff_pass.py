"""The images of :func:`~softcamify.evaluation.diff.diff` and its one batched pass over them: DATA read as
``evaluate`` reads it (a labels CSV, a dataset folder, a plain folder of images), the dataset's labels matched
to the models' classes, then both models run batch by batch: their probabilities, their maps area-averaged onto
the common grid, the shown class's raw maps and, with masks, each model's localization. Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import images as _images
from ..errors import InputError, UsageError
from ..runtime import Runtime, softmax
from . import metrics as M

__all__ = ["DiffImage", "DiffPass", "Progress", "diff_samples", "match_classes", "run_pass"]

Progress = Callable[[str, int, int], None]


# The images
# --------------------------------------------------------------------------------------------------------


@dataclass
class DiffImage:
    path: Path
    label: int | None  # dataset label (None: unlabelled)
    mask_path: Path | None = None


def diff_samples(
    data: str | os.PathLike, split: str | None, masks: str | os.PathLike | None
) -> tuple[list[DiffImage], list[str] | None, str, Path | None]:
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
        items = [DiffImage(Path(s.path), int(s.label)) for s in sorted(pool, key=lambda s: str(s.path))]
        base = mask_root
        desc = f"{split + ' rows' if split else 'rows'} of {root}"
        names: list[str] | None = list(found.class_names)
    elif _has_class_folders(root):
        mask_root = mask_root or default_mask_root(root)
        pairs, ds_names, desc = evaluation_samples(root, split or "test", mask_root)
        items = [DiffImage(p, y) for p, y in pairs]
        names = ds_names
        base = mask_root
    else:
        from ..prediction import collect_images

        items = [DiffImage(p, None) for p in collect_images(root)]
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


def match_classes(
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
class DiffPass:
    """What the pass gathers, image by image."""

    probs: list[np.ndarray] = field(default_factory=list)  # [old N×K, new N×K] chunks
    grid_maps: list[list[np.ndarray]] = field(default_factory=lambda: [[], []])  # per model, N×K×h×w chunks
    shown: list[list[np.ndarray]] = field(default_factory=lambda: [[], []])  # per model, the shown class's map
    loc: list[list[dict[str, float]]] = field(default_factory=lambda: [[], []])
    loc_index: list[int] = field(default_factory=list)


def run_pass(
    old: Runtime,
    new: Runtime,
    items: Sequence[DiffImage],
    labels: np.ndarray | None,
    batch_size: int,
    mask_root: Path | None,
    progress: Progress | None,
) -> DiffPass:
    """One batched pass over the images: both models' probabilities, their maps on the common grid, the shown
    class's raw maps and, with masks, the localization of the true class."""
    acc = DiffPass()
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
    acc: DiffPass,
    old: Runtime,
    new: Runtime,
    outs: Sequence[tuple[np.ndarray, np.ndarray]],
    chunk: Sequence[DiffImage],
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
