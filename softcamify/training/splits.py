"""The data of a run: discovery, lining the data's classes up with the model's, decoding every image once.

:func:`discover_splits` and :func:`class_order` are also what the λ sweep reads its validation split with
(:func:`softcamify.training.sweep_scoring.val_samples`), so a sweep scores runs on the very images
``finetune`` validates on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import distributed
from ..binary import decision_names, is_binary
from ..errors import InputError, UsageError
from .config import FinetuneConfig

Note = Callable[[str], None]


def discover_splits(
    data_dir: str | os.PathLike | Path | None, cfg: FinetuneConfig, class_names: Sequence[str] | None = None
):
    """The run's train/val splits (:func:`softcamify.data.discover` with the run's labels, split and seed)."""
    from ..data import discover

    # Empty files and broken links come back in ``skipped``; verify_splits() skips or refuses them.
    volumes = cfg.volume is not None  # a volume model's run: the class folders hold volumes
    return discover(data_dir, cfg.labels, cfg.val_split, cfg.seed, False, class_names=class_names, volumes=volumes)


def generic_names(names: Sequence[str]) -> bool:
    """Class names a model gets when nobody named its classes (``class_0``, ``class_1``, …)."""
    return all(n == f"class_{i}" for i, n in enumerate(names))


def model_class_names(stored: Sequence[str], num_classes: int, found: Sequence[str]) -> list[str]:
    """The model's class names for the data's classes ``found``: a single-logit model named by its positive
    class, whose data has that class and one other, gets the other as its negative class."""
    stored = list(stored)
    if is_binary(num_classes) and len(stored) == 1 and stored[0] in found and len(found) == 2:
        return [next(n for n in found if n != stored[0]), stored[0]]
    return stored


def class_order(names: Sequence[str], found: Sequence[str], labels: Any, generic: bool) -> list[str] | None:
    """The class order to rediscover the data in so that labels index the model's maps, or None when the
    data's own order stands (or the classes do not match: :func:`match_classes` says why).

    ``names``: the model's decision classes; ``found``: the data's classes; ``labels``: the CSV, if any;
    ``generic``: the model's classes are unnamed.
    """
    names, found = list(names), list(found)
    if labels is not None and all(n.isdigit() for n in found) and len(names) >= len(found) and not generic:
        return names  # integer CSV labels index the model's classes
    if len(names) != len(found) or generic:
        return None
    if set(names) == set(found) and names != found:
        return names  # keep the model's class order
    return None


def match_classes(sc, splits, data_dir, cfg: FinetuneConfig, note: Note):
    """Line up the dataset's classes with the model's evidence maps (or re-initialize the head)."""
    c = cfg
    found = list(splits.class_names)
    stored = model_class_names(sc.meta.class_names, sc.meta.num_classes, found)
    if stored != list(sc.meta.class_names):  # a single-logit model: its negative class is named now
        sc.meta.class_names = stored
    generic = generic_names(stored)
    names = decision_names(stored, sc.meta.num_classes)  # a single-logit model decides between two classes
    k = len(names)
    if c.num_classes is not None and int(c.num_classes) != len(found):
        raise UsageError(
            f"num_classes {c.num_classes} does not match the {len(found)} classes in the data ({', '.join(found)}).",
            param="num_classes",
        )
    if c.reset_head:
        sc.reset_head(len(found), found)
        note(f"The evidence conv was re-initialized for {len(found)} classes ({', '.join(found)}).")
        return sc, splits
    order = class_order(names, found, c.labels, generic)
    if order is not None:
        return sc, discover_splits(data_dir, c, class_names=order)
    if k != len(found):
        raise InputError(
            f"The model has {k} classes{' (one logit: binary)' if is_binary(sc.meta.num_classes) else ''} "
            f"but the data has {len(found)} ({', '.join(found)}); pass reset_head "
            "to re-initialize the evidence conv for them.",
            param="reset_head",
        )
    if generic:
        sc.meta.class_names = found
        return sc, splits
    if set(names) == set(found):
        return sc, splits
    raise InputError(
        f"The model's classes ({', '.join(names)}) differ from the data's ({', '.join(found)}); pass "
        "reset_head to re-initialize the evidence conv for the data's classes.",
        param="reset_head",
    )


def _bad_images(splits, channels: int, ctx: distributed.DistContext) -> list[tuple[str, int, str, str]]:
    """``(split, index, path, reason)`` of every train/val image that does not decode, from all ranks."""
    from ..data import Sample, verify_samples

    everything: list[tuple[str, int, Sample]] = [
        (split, i, s) for split in ("train", "val") for i, s in enumerate(getattr(splits, split))
    ]
    mine = everything[ctx.rank :: ctx.world]
    threads = max(1, min(8, os.cpu_count() or 1))
    chunks = [mine[i::threads] for i in range(threads)] if len(mine) > 64 else [mine]

    def work(chunk):
        _, bad = verify_samples([s for _, _, s in chunk], channels=channels, strict=False)
        bad_paths = {id(s): reason for s, reason in bad}
        return [(split, i, str(s.path), bad_paths[id(s)]) for split, i, s in chunk if id(s) in bad_paths]

    if len(chunks) > 1:
        with ThreadPoolExecutor(threads) as pool:
            bad = [b for part in pool.map(work, chunks) for b in part]
    else:
        bad = work(chunks[0])
    return sorted(b for part in distributed.all_gather_objects(ctx, bad) for b in part)


def verify_splits(splits, channels: int, cfg: FinetuneConfig, ctx: distributed.DistContext, note: Note):
    """Decode every train/val image once (spread over ranks and threads); skip or refuse bad ones.

    Returns the splits without the bad images and how many were left out."""
    bad = _bad_images(splits, channels, ctx)
    skipped = list(splits.skipped)
    if cfg.strict_data and skipped:
        raise InputError(
            f"Image {skipped[0][0]} is unusable ({skipped[0][1]}); strict_data refuses it.", param="strict_data"
        )
    if cfg.strict_data and bad:
        raise InputError(f"{bad[0][3].rstrip('.')} (strict_data refuses unreadable images).", param="strict_data")
    drop = {(split, i) for split, i, _, _ in bad}
    splits.train = [s for i, s in enumerate(splits.train) if ("train", i) not in drop]
    splits.val = [s for i, s in enumerate(splits.val) if ("val", i) not in drop]
    n_bad = len(bad) + len(skipped)
    if n_bad:
        first = bad[0][3] if bad else f"{skipped[0][0]}: {skipped[0][1]}"
        note(f"Skipped {n_bad} unreadable image(s) (first: {first}); --strict-data makes this an error.")
    return splits, n_bad


def check_splits(splits, note: Note) -> None:
    """Refuse splits a run cannot train or validate on; note classes without validation images."""
    from ..data import class_counts

    k = len(splits.class_names)
    train_counts = class_counts(splits.train, k)
    empty = [n for n, cnt in zip(splits.class_names, train_counts, strict=True) if cnt == 0]
    if empty:
        raise InputError(f"Class {empty[0]!r} has no readable training images; add some or remove the class.")
    if not splits.val:
        raise InputError(
            "There are no validation images (val folder or val_split); best.safetensors is chosen on them.",
            param="val_split",
        )
    val_classes = sorted({s.label for s in splits.val})
    missing = [n for i, n in enumerate(splits.class_names) if i not in val_classes]
    if missing and len(val_classes) >= 2:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        note(
            f"Class {missing[0]!r}{more} has no validation images (too few images to split off one): its "
            "validation sensitivity is undefined; add images or a val folder."
        )
    if len(val_classes) < 2:
        raise InputError(
            f"The validation split has only one class ({splits.class_names[val_classes[0]]}); add validation "
            "images of the other classes or raise val_split.",
            param="val_split",
        )
