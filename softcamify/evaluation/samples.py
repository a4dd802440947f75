"""Which images to evaluate and how their labels and masks line up with the model: the split's samples,
dataset classes matched to the model's classes, masks aligned to the model's input geometry."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .. import images as _images
from ..errors import InputError, UsageError

__all__ = ["Item", "align_mask", "evaluation_samples", "match_labels"]


@dataclass
class Item:
    """One image to evaluate: its file, its model label, and its mask once found (pass 1)."""

    path: Path
    label: int  # model class index
    mask_path: Path | None = None
    mask: np.ndarray | None = None  # bool, input resolution, only when it has foreground


def evaluation_samples(
    data_dir: str | os.PathLike, split: str = "test", mask_root: Path | None = None, volumes: bool = False
) -> tuple[list[tuple[Path, int]], list[str], str]:
    """``([(path, dataset label)], dataset class names, description)`` of the images to evaluate.

    A dataset root with ``train/``/``val/``/``test/`` gives the requested split; a folder of class
    folders is used whole (``split`` ignored). A ``masks`` folder inside a flat layout is not a class.
    ``volumes``: the class folders hold volumes (a volume model's data).
    """
    from ..data import SPLIT_NAMES, discover

    if split not in SPLIT_NAMES:
        raise UsageError(f"split {split!r} is not one of {', '.join(SPLIT_NAMES)}.", param="split")
    root = Path(data_dir)
    splits = discover(
        root, min_classes=1, volumes=volumes
    )  # one class: its images still score (accuracy, explanations)
    if splits.layout == "splits":
        samples = splits.split(split)
        if not samples:
            have = [s for s in SPLIT_NAMES if splits.split(s)]
            if not have:
                raise InputError(f"{root} has no images in its split folders.")
            raise InputError(f"{root} has no {split} images; set split to {' or '.join(have)}.", param="split")
        desc = f"{split} split of {root}"
    else:
        samples = sorted(splits.train + splits.val + splits.test, key=lambda s: str(s.path))
        desc = f"all class folders of {root}"
    names = list(splits.class_names)
    pairs = [(Path(s.path), int(s.label)) for s in samples]
    if splits.layout != "splits" and mask_root is not None:
        mr = os.path.realpath(mask_root)
        pairs = [(p, y) for p, y in pairs if not os.path.realpath(p).startswith(mr + os.sep)]
        used = sorted({y for _, y in pairs})
        if len(used) != len(names):
            remap = {old: new for new, old in enumerate(i for i in range(len(names)) if i in used)}
            names = [n for i, n in enumerate(names) if i in used]
            pairs = [(p, remap[y]) for p, y in pairs]
    if not pairs:
        raise InputError(f"{root} contains no images to evaluate.")
    return pairs, names, desc


def match_labels(
    ds_names: Sequence[str], model_names: Sequence[str], notes: list[str], binary: bool = False
) -> tuple[list[int], list[str]]:
    """Dataset label -> model class index, and the class names to report.

    Classes are matched by name (exactly, else ignoring case and surrounding spaces). Only when no name is
    shared (e.g. a model with generic ``class_0…`` names) are they matched by order, with a note; a partial
    overlap is refused, since matching the rest by order would swap classes silently.
    """
    model = list(model_names)
    if set(ds_names) <= set(model):
        return [model.index(n) for n in ds_names], model
    if binary and len(ds_names) == 2 and model[1] in ds_names and model[0] in ("negative", f"not_{model[1]}"):
        # a single-logit model named by its positive class (softcamify.binary): the other folder is the
        # negative
        other = next(d for d in ds_names if d != model[1])
        notes.append(f"The model names only its positive class ({model[1]}); {other} is read as its negative class.")
        return [0 if d == other else 1 for d in ds_names], [other, model[1]]

    def norm(name: str) -> str:
        return name.strip().casefold()

    folded = [norm(m) for m in model]
    if len(set(folded)) == len(folded) and all(norm(d) in folded for d in ds_names):
        notes.append(
            "The dataset's class folders match the model's classes only when case is ignored ("
            + ", ".join(f"{d}→{model[folded.index(norm(d))]}" for d in ds_names if d not in model)
            + ")."
        )
        return [folded.index(norm(d)) for d in ds_names], model
    unknown = [d for d in ds_names if norm(d) not in folded]
    if len(unknown) < len(ds_names):
        raise InputError(
            f"The dataset's class {unknown[0]!r} is not one of the model's classes ({', '.join(model)}), "
            "while other class folders are; rename the folders to the model's class names."
        )
    if len(ds_names) == len(model):
        notes.append(
            "The dataset's class names differ from the model's; classes were matched by their order "
            f"({', '.join(f'{d}→{m}' for d, m in zip(ds_names, model, strict=True))})."
        )
        return list(range(len(ds_names))), list(ds_names)
    raise InputError(
        f"The dataset has {len(ds_names)} classes ({', '.join(ds_names)}) but the model has {len(model)} "
        f"({', '.join(model)}); evaluate on data with the model's classes."
    )


def align_mask(mask_path: Path, img: Image.Image, cfg: dict[str, Any]) -> np.ndarray:
    """The mask with the image's eval geometry: resized to the image (nearest) if needed, then resize +
    crop."""
    m = _images.load_mask(mask_path, size=(img.height, img.width))
    return _images.mask_to_input(m, cfg["input_size"], cfg.get("crop_pct"), cfg.get("crop_mode"))
