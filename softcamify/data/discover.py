"""Datasets on disk: find the images and labels of a dataset and split them into train/val/test.

Three layouts are understood (see :func:`discover`):

* ``DATA_DIR/train/<class>/...``, ``DATA_DIR/val/<class>/...`` and optionally ``DATA_DIR/test/<class>/...``
* ``DATA_DIR/<class>/...``: one folder of class folders, split into train/val (stratified, seeded);
  a ``DATA_DIR/masks/<class>/...`` mask tree beside them is not a class
* a CSV with ``path,label`` columns and optionally ``split`` (:mod:`softcamify.data.labels_csv`)

Images inside a class folder are collected by :func:`softcamify.data.collect.collect_image_files`, the
package's one image collector. Also here: where a sample's mask is (:func:`mask_path_for`,
:func:`default_mask_root`) and decoding every sample once (:func:`verify_samples`). Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, UsageError
from ..images import IMAGE_EXTENSIONS, is_image_file, open_image
from ..volumes.io import VOLUME_EXTENSIONS, is_volume_file, read_volume, volume_stem
from .collect import collect_image_files
from .labels_csv import discover_csv
from .splits import (
    SPLIT_NAMES,
    DatasetSplits,
    Sample,
    check_classes,
    check_val_split,
    class_list,
    hold_out_val,
    split_off_val,
)

__all__ = [
    "discover",
    "verify_samples",
    "mask_path_for",
    "default_mask_root",
    "MASK_DIR_NAME",
    "holds_runs",
    "RUN_FOLDER_MARKERS",
]

# The mask tree's folder name: ``DATA_DIR/masks`` mirrors DATA_DIR (``softcamify evaluate``'s default
# --masks).
MASK_DIR_NAME = "masks"


# A softcamify run folder (``finetune -o``, a sweep's runs) is recognized by the files it holds: those of
# softcamify.training.config (RUN_FILES and LOCK_NAME), repeated here because data sits below training
# (tests/test_data.py checks that they agree).
RUN_FOLDER_MARKERS = frozenset({"last.pt", "best.safetensors", "metrics.jsonl", "summary.json", ".lock"})
# Files an operating system leaves in folders: ignored like hidden files.
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini"})


def _scan(folder: Path) -> list[os.DirEntry]:
    """The visible entries of ``folder`` (not hidden, not system files), sorted by name."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise InputError(f"Folder {folder} cannot be listed: {e.strerror or e}.") from e
    return [e for e in entries if not e.name.startswith(".") and e.name.lower() not in SYSTEM_FILES]


def _visible_subdirs(folder: Path) -> list[Path]:
    return [Path(e.path) for e in _scan(folder) if e.is_dir()]


def _broken_link(entry: os.DirEntry) -> str | None:
    """Where ``entry`` points when it is a symlink to nothing (an unmounted share, a moved folder), else None."""
    if not entry.is_symlink() or os.path.exists(entry.path):
        return None
    try:
        return os.readlink(entry.path)
    except OSError:
        return "?"


def holds_runs(folder: str | os.PathLike) -> bool:
    """True when ``folder`` or a folder below it holds a softcamify run's files (:data:`RUN_FOLDER_MARKERS`):
    a run folder, or a folder of them such as a sweep's. Discovery leaves such folders out when they hold
    no images, so ``finetune -o DATA_DIR/run`` can be resumed."""
    for _, _, filenames in os.walk(os.fspath(folder)):  # links are not followed: a run folder is a real one
        if RUN_FOLDER_MARKERS.intersection(filenames):
            return True
    return False


def _is_mask_tree(folder: Path, class_folders: Iterable[str]) -> bool:
    """True when ``folder`` is a mask tree mirroring its sibling class folders rather than a class.

    The convention of ``softcamify evaluate`` (default ``--masks`` is ``DATA_DIR/masks``) and of
    :func:`mask_path_for` (a mask has its image's path relative to the mask root): in the flat layout
    the masks of ``DATA_DIR/<class>/x.png`` sit at ``DATA_DIR/masks/<class>/x.png``. So a folder is a
    mask tree when it is named ``masks`` (any case), holds no image files directly and has at least one
    visible subfolder, each named like one of the sibling class folders (masks of some classes only are
    fine). A class folder that happens to be called ``masks`` holds images directly (or in subfolders of
    other names) and stays a class.
    """
    if folder.name.lower() != MASK_DIR_NAME:
        return False
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False  # _scan_class_folders reports an unlistable folder
    if any(is_image_file(e.name) for e in entries):
        return False
    subs = {e.name for e in entries if not e.name.startswith(".") and e.is_dir()}
    return bool(subs) and subs <= set(class_folders) - {folder.name}


def default_mask_root(root: str | os.PathLike) -> Path | None:
    """``root/masks`` when it is a mask tree mirroring ``root``'s folders (:func:`_is_mask_tree`), else
    None: the default ``--masks`` of ``softcamify evaluate``. A ``masks`` class folder holding images is
    not one."""
    folder = Path(root) / MASK_DIR_NAME
    if not folder.is_dir():
        return None
    return folder if _is_mask_tree(folder, [d.name for d in _visible_subdirs(Path(root))]) else None


def _scan_class_folders(
    split_dir: Path,
    skipped: list[tuple[Path, str]],
    mask_trees: bool = False,
    volumes: bool = False,
) -> dict[str, list[Path]]:
    """{class name: image files} for the class folders of one split folder.

    With ``mask_trees`` (the flat layout, where the folder is the dataset root) a ``masks`` folder that
    mirrors the class folders (:func:`_is_mask_tree`) is left out: it holds masks, not a class.
    """
    out: dict[str, list[Path]] = {}
    entries = _scan(split_dir)
    for e in entries:  # a class must never vanish silently: a link to nothing is reported by name
        target = _broken_link(e)
        if target is not None:
            raise InputError(
                f"{e.path} is a broken link (to {target}) where class folders are expected; mount or restore "
                "its target, or remove the link."
            )
    subdirs = [Path(e.path) for e in entries if e.is_dir()]
    if mask_trees:
        names = [d.name for d in subdirs]
        subdirs = [d for d in subdirs if not _is_mask_tree(d, names)]
    for sub in subdirs:
        files = collect_image_files(sub, skipped, volumes=volumes)
        if not files:
            if holds_runs(sub):
                continue  # a softcamify run folder (e.g. finetune -o DATA_DIR/run), not a class
            what, exts = ("volumes", VOLUME_EXTENSIONS) if volumes else ("images", IMAGE_EXTENSIONS)
            raise InputError(
                f"Class folder {sub} contains no {what} ({', '.join(e[1:] for e in exts)}); "
                f"add {what} or remove the folder."
            )
        out[sub.name] = files
    strays = [Path(e.path) for e in entries if not e.is_dir()]
    if out and strays:  # without any class folder, the caller says what it expected
        stray = strays[0]
        if is_volume_file(stray.name) if volumes else is_image_file(stray.name):
            raise InputError(
                f"{'Volume' if volumes else 'Image'} {stray} lies directly in {split_dir}, outside its class "
                "folders; move it into the folder of its class."
            )
        raise InputError(
            f"{stray} is a file among the class folders of {split_dir}; make it a class folder of images "
            "or move it out."
        )
    return out


def _check_strict(skipped: list[tuple[Path, str]], strict: bool) -> None:
    if strict and skipped:
        path, reason = skipped[0]
        raise InputError(
            f"Image {path} is unusable ({reason}); remove it or run without strict to skip it.",
            param="strict",
        )


@dataclass
class _Asked:
    """What :func:`discover` asks of a folder layout; ``skipped`` collects the files it passes over."""

    val_split: float | None
    seed: int
    class_names: Sequence[str] | None
    min_classes: int
    volumes: bool = False
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _discover_splits(root: Path, split_dirs: dict[str, Path], ask: _Asked) -> DatasetSplits:
    per_split = {name: _scan_class_folders(d, ask.skipped, volumes=ask.volumes) for name, d in split_dirs.items()}
    if "train" in per_split:
        for name, classes in per_split.items():
            extra = sorted(set(classes) - set(per_split["train"]))
            if extra:
                raise InputError(
                    f"Class folder {split_dirs[name] / extra[0]} has no counterpart in "
                    f"{split_dirs['train']}; every class needs training images."
                )
        names = class_list(per_split["train"], ask.class_names, str(split_dirs["train"]))
    else:  # an evaluation set (val/ and/or test/ only): the union of their class folders
        found = {c for classes in per_split.values() for c in classes}
        names = class_list(found, ask.class_names, str(root))
    index = {n: i for i, n in enumerate(names)}
    samples = {
        s: [Sample(p, index[c]) for c in sorted(per_split.get(s, {})) for p in per_split[s][c]] for s in SPLIT_NAMES
    }
    present = "/".join(s for s in SPLIT_NAMES if s in split_dirs)
    source = hold_out_val(
        samples,
        names,
        ask.val_split,
        ask.seed,
        fixed=f"{present} folders in {root}" if "val" in split_dirs or "train" not in split_dirs else None,
        conflict=f"val_split conflicts with the existing split folders in {root}; drop it.",
        split_from=str(split_dirs.get("train")),
    )
    check_classes(names, samples, str(root), need_train="train" in split_dirs, min_classes=ask.min_classes)
    return DatasetSplits(names, samples["train"], samples["val"], samples["test"], source, "splits", root, ask.skipped)


def _discover_folders(root: Path, ask: _Asked) -> DatasetSplits:
    classes = _scan_class_folders(root, ask.skipped, mask_trees=True, volumes=ask.volumes)
    if not classes:
        loose = any(is_volume_file(e.name) if ask.volumes else is_image_file(e.name) for e in os.scandir(root))
        hint = ""
        if loose:
            hint = " (it holds images directly: put them in class folders or pass a CSV as labels_csv)"
        raise InputError(
            f"{root} contains no class folders{hint}; expected {root}/<class>/<image files>.",
            param="labels_csv" if loose else None,
        )
    names = class_list(classes, ask.class_names, str(root))
    index = {n: i for i, n in enumerate(names)}
    everything = [Sample(p, index[c]) for c in sorted(classes) for p in classes[c]]
    train, val, how = split_off_val(everything, names, ask.val_split, ask.seed)
    check_classes(names, {"train": train, "val": val, "test": []}, str(root), min_classes=ask.min_classes)
    return DatasetSplits(names, train, val, [], f"class folders in {root} {how}", "folders", root, ask.skipped)


def _split_dirs(root: Path) -> dict[str, Path]:
    """{'train'|'val'|'test': folder} for the split folders of ``root`` (val also as valid, validation)."""
    entries = _scan(root)
    for e in entries:  # a split folder must never vanish silently (the data would be read otherwise)
        if e.name.lower() not in ("train", "val", "valid", "validation", "test") or e.is_dir():
            continue
        target = _broken_link(e)
        if target is not None:
            raise InputError(
                f"Split folder {e.path} is a broken link (to {target}); mount or restore its target, or "
                "remove the link."
            )
        raise InputError(f"{e.path} is a file where a split folder is expected; make it a folder or move it out.")
    subdirs = {e.name.lower(): Path(e.path) for e in entries if e.is_dir()}
    split_dirs = {"train": subdirs["train"]} if "train" in subdirs else {}
    for alias in ("val", "valid", "validation"):
        if alias in subdirs:
            split_dirs["val"] = subdirs[alias]
            break
    if "test" in subdirs:
        split_dirs["test"] = subdirs["test"]
    return split_dirs


def discover(
    data_dir: str | os.PathLike | None,
    labels_csv: str | os.PathLike | None = None,
    val_split: float | None = None,
    seed: int = 0,
    strict: bool = False,
    class_names: Sequence[str] | None = None,
    min_classes: int = 2,
    volumes: bool = False,
) -> DatasetSplits:
    """Find the images and labels of a dataset and split them into train/val(/test).

    Args:
        data_dir: Dataset folder (may be None with ``labels_csv``: paths are then relative to the CSV).
        labels_csv: CSV with header ``path,label`` and optionally ``split`` (train/val/test). Paths are
            relative to ``data_dir`` or, failing that, to the CSV's folder. Labels are class names
            (sorted alphabetically into indices) or integers 0..K-1.
        val_split: Fraction held out for validation when no val split exists (0.2 when None). Given
            together with an existing val folder or split column it is a :class:`UsageError`.
        seed: Seed of the stratified split (deterministic for a seed).
        strict: Empty files and broken links are an error instead of being skipped (listed in
            ``skipped``). Decoding every image is :func:`verify_samples`' job.
        class_names: A fixed class order (e.g. the model's); folders or labels outside it are an error.
        min_classes: Fewer classes are an error (2 for training; 1 to evaluate on one class's images).
        volumes: Class folders hold volumes (``.nii``, ``.nii.gz``, ``.npy``, ``.npz``;
            :mod:`softcamify.volumes`) instead of images, in the same layouts; masks are volumes too. A labels
            CSV may list either.

    A folder with a ``train``, ``val`` (``valid``, ``validation``) or ``test`` subfolder is read as split
    folders (other subfolders, e.g. ``masks``, are ignored); without ``train`` it is an evaluation set
    whose classes are the union of its splits' class folders. In a folder of class folders, a ``masks``
    folder that mirrors them (``masks/<class>/...``, no images directly in it; the mask tree that
    ``softcamify evaluate`` reads by default) is not a class; a ``masks`` folder holding images directly
    is. A folder without images that holds a softcamify run (``last.pt``, ``.lock``, …; a run folder or a
    folder of them, e.g. ``finetune -o DATA_DIR/run``) is not a class either (:func:`holds_runs`). No class
    is ever dropped silently: a broken link (an unmounted share) or a file where class (or split) folders
    are expected is an :class:`InputError` naming it; hidden entries (``.DS_Store``) and ``Thumbs.db`` /
    ``desktop.ini`` are ignored. Class folders are sorted alphabetically as torchvision's ``ImageFolder``
    does; every split uses the training split's class list. Images may sit in nested folders below a class
    folder; they are collected by :func:`~softcamify.data.collect.collect_image_files` (hidden files and folders and
    non-image files are ignored; symlinked folders are followed, each real folder once, never a link up
    to a folder above, so no symlink loops).
    """
    check_val_split(val_split)
    ask = _Asked(val_split, seed, class_names, min_classes, volumes)
    root = Path(data_dir) if data_dir is not None else None
    if root is not None:
        if not root.exists():
            raise InputError(f"Dataset folder {root} does not exist; check data_dir.", param="data_dir")
        if not root.is_dir():
            raise InputError(
                f"Dataset path {root} is a file; data_dir must be a folder (a CSV goes to labels_csv).",
                param=("data_dir", "labels_csv"),
            )
    if labels_csv is not None:
        result = discover_csv(
            Path(labels_csv), root, val_split, seed, class_names, ask.skipped, min_classes=min_classes
        )
    elif root is None:
        raise UsageError(
            "Give a dataset folder (data_dir) or a labels CSV (labels_csv).", param=("data_dir", "labels_csv")
        )
    else:
        split_dirs = _split_dirs(root)
        if split_dirs:
            result = _discover_splits(root, split_dirs, ask)
        else:
            result = _discover_folders(root, ask)
    _check_strict(result.skipped, strict)
    return result


def verify_samples(
    samples: Sequence[Sample],
    channels: int = 3,
    strict: bool = False,
) -> tuple[list[Sample], list[tuple[Sample, str]]]:
    """Decode every image once; return ``(good, bad)`` with the reason for each bad one.

    Run it before building a DataLoader (a worker cannot skip a sample gracefully). The caller warns
    with ``len(bad)``. With ``strict=True`` the first bad file raises :class:`InputError` instead.
    Volume files (:func:`softcamify.volumes.is_volume_file`) are read with
    :func:`softcamify.volumes.read_volume` (its checks: rank, empty, NaN, truncated gzip), whatever
    ``channels``.
    """
    good: list[Sample] = []
    bad: list[tuple[Sample, str]] = []
    for s in samples:
        try:
            if is_volume_file(s.path):
                read_volume(s.path)
            else:
                open_image(s.path, channels=channels)
        except InputError as e:
            if strict:
                raise InputError(
                    f"{str(e).rstrip('.')}; run without strict to skip unreadable images.", param="strict"
                ) from e
            bad.append((s, str(e)))
            continue
        good.append(s)
    return good, bad


def mask_path_for(
    image_path: str | os.PathLike,
    data_root: str | os.PathLike,
    mask_root: str | os.PathLike,
) -> Path | None:
    """The mask of ``image_path``: same path relative to ``mask_root`` as the image to ``data_root``.

    The mask may have another image extension (``a/b.jpg`` -> ``a/b.png``); a volume's mask another volume
    ending (``a/b.nii.gz`` -> ``a/b.npy``). None when the image is not under ``data_root`` or no mask exists.
    """
    img = Path(os.path.abspath(image_path))
    root = Path(os.path.abspath(data_root))
    try:
        rel = img.relative_to(root)
    except ValueError:
        try:
            rel = Path(os.path.realpath(img)).relative_to(os.path.realpath(root))
        except ValueError:
            return None
    base = Path(mask_root) / rel
    if base.is_file():
        return base
    if is_volume_file(base):
        for ext in VOLUME_EXTENSIONS:
            cand = base.with_name(volume_stem(base) + ext)
            if cand.is_file():
                return cand
        return None
    for ext in IMAGE_EXTENSIONS:
        for e in (ext, ext.upper()):
            cand = base.with_suffix(e)
            if cand.is_file():
                return cand
    return None
