"""What discovery returns (:class:`Sample`, :class:`DatasetSplits`) and the rules shared by every layout:
class lists, the seeded stratified train/val split and the checks a usable dataset passes. Torch-free."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, UsageError

__all__ = ["Sample", "DatasetSplits", "class_counts", "SPLIT_NAMES", "DEFAULT_VAL_SPLIT"]

SPLIT_NAMES = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
DEFAULT_VAL_SPLIT = 0.2


@dataclass
class Sample:
    """One labelled image file."""

    path: Path
    label: int


@dataclass
class DatasetSplits:
    """What :func:`discover` found: the class list (index = label) and the samples of each split.

    ``source`` says in words where the splits came from; ``layout`` is 'splits', 'folders' or 'csv';
    ``skipped`` lists files left out (empty files, broken links) with the reason; ``notes`` are warnings
    about the data for the user (one sentence each: a labels CSV that lists an image twice, or in two
    splits), which commands show as notes and put in their ``--json`` output.
    """

    class_names: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    source: str
    layout: str = ""
    root: Path | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> list[Sample]:
        if name not in SPLIT_NAMES:
            raise UsageError(f"split {name!r} is not one of train, val, test.")
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (counts per split and class; no file lists)."""
        return {
            "source": self.source,
            "layout": self.layout,
            "root": os.fspath(self.root) if self.root is not None else None,
            "class_names": list(self.class_names),
            "counts": {
                s: dict(zip(self.class_names, class_counts(self.split(s), self.num_classes), strict=True))
                for s in SPLIT_NAMES
            },
            "skipped": [[os.fspath(p), r] for p, r in self.skipped],
        }


def class_counts(samples: Iterable[Sample], num_classes: int) -> list[int]:
    """Number of samples per label, ``[n_0, ..., n_{num_classes-1}]``."""
    counts = [0] * num_classes
    for s in samples:
        counts[s.label] += 1
    return counts


def class_list(found: Iterable[str], class_names: Sequence[str] | None, where: str) -> list[str]:
    """The sorted class names ``found``, or the model's ``class_names`` when every found name is in them."""
    names = sorted(set(found))
    if class_names is None:
        return names
    known = list(class_names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(
            f"{where} has label {unknown[0]!r} that is not one of the model's classes ({', '.join(known)})."
        )
    return known


def split_off_val(
    samples: list[Sample],
    class_names: Sequence[str],
    val_split: float | None,
    seed: int,
) -> tuple[list[Sample], list[Sample], str]:
    """``(train, val, "split 0.8/0.2 (seed 0)")``: :func:`stratified_split` with the default share when
    ``val_split`` is None, and the words every dataset description uses for it."""
    vs = DEFAULT_VAL_SPLIT if val_split is None else float(val_split)
    train, val = stratified_split(samples, class_names, vs, seed)
    return train, val, f"split {1 - vs:g}/{vs:g} (seed {seed})"


def hold_out_val(
    samples: dict[str, list[Sample]],
    class_names: Sequence[str],
    val_split: float | None,
    seed: int,
    *,
    fixed: str | None,
    conflict: str,
    split_from: str,
) -> str:
    """Where a dataset's validation split comes from, in the words its description uses.

    ``fixed``: the description of the splits the dataset fixes itself (split folders, a split column),
    or None; a ``val_split`` beside them is a :class:`UsageError` saying ``conflict``. Otherwise
    ``samples["train"]`` is split (:func:`split_off_val`) into ``samples["train"]`` and ``samples["val"]``
    and the description is ``split_from`` followed by how.
    """
    if fixed is not None:
        if val_split is not None:
            raise UsageError(conflict, param="val_split")
        return fixed
    samples["train"], samples["val"], how = split_off_val(samples["train"], class_names, val_split, seed)
    return f"{split_from} {how}"


def stratified_split(
    samples: list[Sample],
    class_names: Sequence[str],
    val_split: float,
    seed: int,
) -> tuple[list[Sample], list[Sample]]:
    """Split per class: ``round(n * val_split)`` samples (at least 1, leaving at least 1) go to val.

    Each class is shuffled by its own generator, seeded from ``seed`` and a hash of the class name, so
    the split of one class does not change when other classes are added or removed.
    """
    train: list[Sample] = []
    val: list[Sample] = []
    for label, name in enumerate(class_names):
        members = sorted((s for s in samples if s.label == label), key=lambda s: s.path.as_posix())
        n = len(members)
        n_val = 0
        if val_split > 0 and n >= 2:
            n_val = min(max(1, int(round(n * val_split))), n - 1)
        rng = np.random.Generator(np.random.PCG64([int(seed), zlib.crc32(name.encode("utf-8"))]))
        order = rng.permutation(n)
        val_idx = set(order[:n_val].tolist())
        for i, s in enumerate(members):
            (val if i in val_idx else train).append(s)
    return train, val


def check_val_split(val_split: float | None) -> None:
    if val_split is not None and not (0.0 <= float(val_split) < 1.0):
        raise UsageError(f"val_split {val_split} must be at least 0 and below 1.", param="val_split")


def check_classes(
    class_names: list[str],
    splits: dict[str, list[Sample]],
    where: str,
    need_train: bool = True,
    min_classes: int = 2,
) -> None:
    """A usable dataset: classes, at least ``min_classes`` of them, and (``need_train``) training images
    in every class."""
    if not class_names:
        raise InputError(f"{where} contains no class folders; expected {where}/<class>/<image files>.")
    if len(class_names) < min_classes:
        raise InputError(f"{where} has only one class ({class_names[0]}); a classifier needs at least two.")
    if not need_train:
        return
    train_counts = class_counts(splits["train"], len(class_names))
    missing = [n for n, c in zip(class_names, train_counts, strict=True) if c == 0]
    if missing:
        raise InputError(f"Class {missing[0]!r} has no training images in {where}; add some or remove the class.")
