"""Datasets on disk: discovery of train/val/test splits, a torch Dataset and its transforms.

Three layouts are understood (see :func:`discover`):

* ``DATA_DIR/train/<class>/...``, ``DATA_DIR/val/<class>/...`` and optionally ``DATA_DIR/test/<class>/...``
* ``DATA_DIR/<class>/...``: one folder of class folders, split into train/val (stratified, seeded);
  a ``DATA_DIR/masks/<class>/...`` mask tree beside them is not a class
* a CSV with ``path,label`` columns (and optionally ``split``)

The eval transform is :func:`softcamify.images.preprocess_image`, so a tensor seen during training or
evaluation is bit-identical to the one the ONNX path computes for the same file.
"""

from __future__ import annotations

import csv
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from . import images
from .errors import InputError, UsageError
from .images import IMAGE_EXTENSIONS, is_image_file, load_mask, open_image

__all__ = [
    'Sample',
    'DatasetSplits',
    'discover',
    'verify_samples',
    'ImageDataset',
    'EvalTransform',
    'build_transform',
    'mask_path_for',
    'load_mask',
    'class_counts',
    'AUGMENTATIONS',
    'MEDICAL_ROTATION_DEGREES',
]

SPLIT_NAMES = ('train', 'val', 'test')
_SPLIT_ALIASES = {
    'train': 'train', 'training': 'train',
    'val': 'val', 'valid': 'val', 'validation': 'val', 'dev': 'val',
    'test': 'test', 'testing': 'test',
}
_PATH_COLUMNS = ('path', 'file', 'filename', 'image')
_LABEL_COLUMNS = ('label', 'class', 'target')
DEFAULT_VAL_SPLIT = 0.2
# The mask tree's folder name: ``DATA_DIR/masks`` mirrors DATA_DIR (``softcamify evaluate``'s default --masks).
MASK_DIR_NAME = 'masks'

AUGMENTATIONS = ('none', 'light', 'medical')
# Fundus (and dermoscopy, histology) images have no canonical orientation: the SoftCAM reference code
# (github.com/kdjoumessi/SoftCAM, configs/default.yaml) rotates by up to +-180 degrees with p=0.5, as
# here. Lower it for images with an up direction (chest X-rays: ~15-30 degrees).
MEDICAL_ROTATION_DEGREES = 180.0


@dataclass
class Sample:
    """One labelled image file."""

    path: Path
    label: int


@dataclass
class DatasetSplits:
    """What :func:`discover` found: the class list (index = label) and the samples of each split.

    ``source`` says in words where the splits came from; ``layout`` is 'splits', 'folders' or 'csv';
    ``skipped`` lists files left out (empty files, broken links) with the reason.
    """

    class_names: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    source: str
    layout: str = ''
    root: Path | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)

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
            'source': self.source,
            'layout': self.layout,
            'root': os.fspath(self.root) if self.root is not None else None,
            'class_names': list(self.class_names),
            'counts': {
                s: dict(zip(self.class_names, class_counts(self.split(s), self.num_classes), strict=True))
                for s in SPLIT_NAMES
            },
            'skipped': [[os.fspath(p), r] for p, r in self.skipped],
        }


def class_counts(samples: Iterable[Sample], num_classes: int) -> list[int]:
    """Number of samples per label, ``[n_0, ..., n_{num_classes-1}]``."""
    counts = [0] * num_classes
    for s in samples:
        counts[s.label] += 1
    return counts


# --- discovery ---------------------------------------------------------------------------------------

def _visible_subdirs(folder: Path) -> list[Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise InputError(f"Folder {folder} cannot be listed: {e.strerror or e}.") from e
    return [Path(e.path) for e in entries if not e.name.startswith('.') and e.is_dir()]


def _is_ancestor(candidate: str, real: str) -> bool:
    """True when the real path ``candidate`` is ``real`` or a folder above it."""
    return real == candidate or real.startswith(candidate.rstrip(os.sep) + os.sep)


def _walk_images(folder: Path, skipped: list[tuple[Path, str]]) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted, hidden entries ignored).

    Symlinked folders are followed once: a folder whose real path was already visited is not entered
    again, and a link to a folder above it (``up -> ..``, a loop) is not entered at all, so symlink
    loops end and never pull a sibling class's images into this class.
    """
    found: list[Path] = []
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith('.') and not _is_ancestor(os.path.realpath(os.path.join(dirpath, d)), real)
        )
        for name in sorted(filenames):
            if not is_image_file(name):
                continue
            p = Path(dirpath) / name
            try:
                st = p.stat()
            except OSError:
                skipped.append((p, 'broken link or unreadable'))
                continue
            if st.st_size == 0:
                skipped.append((p, 'empty file'))
                continue
            found.append(p)
    return found


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
    subs = {e.name for e in entries if not e.name.startswith('.') and e.is_dir()}
    return bool(subs) and subs <= set(class_folders) - {folder.name}


def default_mask_root(root: str | os.PathLike) -> Path | None:
    """``root/masks`` when it is a mask tree mirroring ``root``'s folders (:func:`_is_mask_tree`), else None:
    the default ``--masks`` of ``softcamify evaluate``. A ``masks`` class folder holding images is not one."""
    folder = Path(root) / MASK_DIR_NAME
    if not folder.is_dir():
        return None
    return folder if _is_mask_tree(folder, [d.name for d in _visible_subdirs(Path(root))]) else None


def _scan_class_folders(
        split_dir: Path,
        skipped: list[tuple[Path, str]],
        mask_trees: bool = False,
) -> dict[str, list[Path]]:
    """{class name: image files} for the class folders of one split folder.

    With ``mask_trees`` (the flat layout, where the folder is the dataset root) a ``masks`` folder that
    mirrors the class folders (:func:`_is_mask_tree`) is left out: it holds masks, not a class.
    """
    out: dict[str, list[Path]] = {}
    subdirs = _visible_subdirs(split_dir)
    if mask_trees:
        names = [d.name for d in subdirs]
        subdirs = [d for d in subdirs if not _is_mask_tree(d, names)]
    for sub in subdirs:
        files = _walk_images(sub, skipped)
        if not files:
            raise InputError(
                f"Class folder {sub} contains no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}); "
                "add images or remove the folder."
            )
        out[sub.name] = files
    return out


def _check_strict(skipped: list[tuple[Path, str]], strict: bool) -> None:
    if strict and skipped:
        path, reason = skipped[0]
        raise InputError(f"Image {path} is unusable ({reason}); remove it or run without --strict to skip it.")


def _class_list(found: Iterable[str], class_names: Sequence[str] | None, where: str) -> list[str]:
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


def _stratified_split(
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
        rng = np.random.Generator(np.random.PCG64([int(seed), zlib.crc32(name.encode('utf-8'))]))
        order = rng.permutation(n)
        val_idx = set(order[:n_val].tolist())
        for i, s in enumerate(members):
            (val if i in val_idx else train).append(s)
    return train, val


def _check_val_split(val_split: float | None) -> None:
    if val_split is not None and not (0.0 <= float(val_split) < 1.0):
        raise UsageError(f"--val-split {val_split} must be at least 0 and below 1.")


def _finish(
        class_names: list[str],
        splits: dict[str, list[Sample]],
        where: str,
        need_train: bool = True,
        min_classes: int = 2,
) -> None:
    if not class_names:
        raise InputError(f"{where} contains no class folders; expected {where}/<class>/<image files>.")
    if len(class_names) < min_classes:
        raise InputError(f"{where} has only one class ({class_names[0]}); a classifier needs at least two.")
    if not need_train:
        return
    train_counts = class_counts(splits['train'], len(class_names))
    missing = [n for n, c in zip(class_names, train_counts, strict=True) if c == 0]
    if missing:
        raise InputError(f"Class {missing[0]!r} has no training images in {where}; add some or remove the class.")


def _discover_splits(
        root: Path,
        split_dirs: dict[str, Path],
        val_split: float | None,
        seed: int,
        class_names: Sequence[str] | None,
        skipped: list[tuple[Path, str]],
        min_classes: int = 2,
) -> DatasetSplits:
    per_split = {name: _scan_class_folders(d, skipped) for name, d in split_dirs.items()}
    if 'train' in per_split:
        for name, classes in per_split.items():
            extra = sorted(set(classes) - set(per_split['train']))
            if extra:
                raise InputError(
                    f"Class folder {split_dirs[name] / extra[0]} has no counterpart in {split_dirs['train']}; "
                    "every class needs training images."
                )
        names = _class_list(per_split['train'], class_names, str(split_dirs['train']))
    else:  # an evaluation set (val/ and/or test/ only): the union of their class folders
        found = {c for classes in per_split.values() for c in classes}
        names = _class_list(found, class_names, str(root))
    index = {n: i for i, n in enumerate(names)}
    samples = {
        s: [Sample(p, index[c]) for c in sorted(per_split.get(s, {})) for p in per_split[s][c]] for s in SPLIT_NAMES
    }
    present = '/'.join(s for s in SPLIT_NAMES if s in split_dirs)
    if 'val' in split_dirs or 'train' not in split_dirs:
        if val_split is not None:
            raise UsageError(f"--val-split conflicts with the existing split folders in {root}; drop it.")
        source = f"{present} folders in {root}"
    else:
        vs = DEFAULT_VAL_SPLIT if val_split is None else float(val_split)
        samples['train'], samples['val'] = _stratified_split(samples['train'], names, vs, seed)
        source = f"{split_dirs['train']} split {1 - vs:g}/{vs:g} (seed {seed})"
    _finish(names, samples, str(root), need_train='train' in split_dirs, min_classes=min_classes)
    return DatasetSplits(names, samples['train'], samples['val'], samples['test'], source, 'splits', root, skipped)


def _discover_folders(
        root: Path,
        val_split: float | None,
        seed: int,
        class_names: Sequence[str] | None,
        skipped: list[tuple[Path, str]],
        min_classes: int = 2,
) -> DatasetSplits:
    classes = _scan_class_folders(root, skipped, mask_trees=True)
    if not classes:
        loose = any(is_image_file(e.name) for e in os.scandir(root))
        hint = " (it holds images directly: put them in class folders or pass --labels a CSV)" if loose else ""
        raise InputError(f"{root} contains no class folders{hint}; expected {root}/<class>/<image files>.")
    names = _class_list(classes, class_names, str(root))
    index = {n: i for i, n in enumerate(names)}
    everything = [Sample(p, index[c]) for c in sorted(classes) for p in classes[c]]
    vs = DEFAULT_VAL_SPLIT if val_split is None else float(val_split)
    train, val = _stratified_split(everything, names, vs, seed)
    _finish(names, {'train': train, 'val': val, 'test': []}, str(root), min_classes=min_classes)
    return DatasetSplits(
        names, train, val, [], f"class folders in {root} split {1 - vs:g}/{vs:g} (seed {seed})",
        'folders', root, skipped,
    )


def _pick_column(fieldnames: Sequence[str], choices: Sequence[str]) -> str | None:
    lowered = {f.strip().lower(): f for f in fieldnames if f is not None}
    for c in choices:
        if c in lowered:
            return lowered[c]
    return None


def _discover_csv(
        csv_path: Path,
        data_dir: Path | None,
        val_split: float | None,
        seed: int,
        class_names: Sequence[str] | None,
        skipped: list[tuple[Path, str]],
        min_classes: int = 2,
) -> DatasetSplits:
    if not csv_path.exists():
        raise InputError(f"Labels file {csv_path} does not exist; check --labels.")
    if not csv_path.is_file():
        raise InputError(f"Labels file {csv_path} is not a file; --labels takes a CSV file.")
    try:
        with open(csv_path, newline='', encoding='utf-8-sig') as fh:
            reader = csv.DictReader(fh)
            fieldnames = list(reader.fieldnames or [])
            path_col = _pick_column(fieldnames, _PATH_COLUMNS)
            label_col = _pick_column(fieldnames, _LABEL_COLUMNS)
            split_col = _pick_column(fieldnames, ('split', 'subset', 'fold'))
            if path_col is None or label_col is None:
                raise InputError(
                    f"Labels file {csv_path} has columns [{', '.join(fieldnames)}] but needs a header with "
                    "'path' and 'label' (and optionally 'split')."
                )
            rows = [
                (i + 2, (r.get(path_col) or '').strip(), (r.get(label_col) or '').strip(),
                 (r.get(split_col) or '').strip().lower() if split_col else '')
                for i, r in enumerate(reader)
            ]
    except UnicodeDecodeError as e:
        raise InputError(f"Labels file {csv_path} is not UTF-8 text; save it as UTF-8 CSV.") from e
    except csv.Error as e:
        raise InputError(f"Labels file {csv_path} is not valid CSV ({e}).") from e
    rows = [r for r in rows if r[1] or r[2]]  # blank lines
    if not rows:
        raise InputError(f"Labels file {csv_path} has no rows; add 'path,label' lines.")

    bases: list[Path] = []
    for b in (data_dir, csv_path.parent):  # DATA_DIR is often the CSV's own folder: search and name it once
        if b is not None and not any(os.path.realpath(b) == os.path.realpath(seen) for seen in bases):
            bases.append(b)
    resolved: list[tuple[int, Path, str, str]] = []
    missing: list[str] = []
    for line, rel, label, split in rows:
        if not rel:
            raise InputError(f"Labels file {csv_path} line {line} has no path; fill it in or delete the line.")
        if not label:
            raise InputError(f"Labels file {csv_path} line {line} has no label for {rel}; fill it in.")
        if split and split not in _SPLIT_ALIASES:
            raise InputError(
                f"Labels file {csv_path} line {line} has split {split!r}; use train, val or test."
            )
        candidates = [Path(rel)] if os.path.isabs(rel) else [b / rel for b in bases]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            missing.append(rel)
            continue
        resolved.append((line, hit, label, _SPLIT_ALIASES.get(split, '')))
    if missing:
        where = ' or '.join(str(b) for b in bases)
        raise InputError(
            f"Labels file {csv_path} names {len(missing)} file(s) that do not exist (first: {missing[0]}); "
            f"paths are relative to {where}."
        )
    labels = [r[2] for r in resolved]
    if all(_is_int(lb) for lb in labels):
        ints = [int(lb) for lb in labels]
        if min(ints) < 0:
            raise InputError(f"Labels file {csv_path} has negative label {min(ints)}; labels are 0..K-1 or names.")
        n = max(ints) + 1
        if class_names is not None:
            if n > len(class_names):
                raise InputError(
                    f"Labels file {csv_path} has label {n - 1} but the model has {len(class_names)} classes."
                )
            names = list(class_names)
        else:
            names = [str(i) for i in range(n)]
        label_of = {lb: int(lb) for lb in labels}
    else:
        names = _class_list(labels, class_names, f"Labels file {csv_path}")
        index = {nm: i for i, nm in enumerate(names)}
        label_of = {lb: index[lb] for lb in labels}

    has_split = any(r[3] for r in resolved)
    samples: dict[str, list[Sample]] = {s: [] for s in SPLIT_NAMES}
    for line, p, label, split in resolved:
        if has_split and not split:
            raise InputError(f"Labels file {csv_path} line {line} has no split while others do; fill it in.")
        if p.stat().st_size == 0:
            skipped.append((p, 'empty file'))
            continue
        samples[split or 'train'].append(Sample(p, label_of[label]))
    if has_split:
        if val_split is not None:
            raise UsageError(f"--val-split conflicts with the split column of {csv_path}; drop one of them.")
        source = f"{csv_path} (split column)"
    else:
        vs = DEFAULT_VAL_SPLIT if val_split is None else float(val_split)
        samples['train'], samples['val'] = _stratified_split(samples['train'], names, vs, seed)
        source = f"{csv_path} split {1 - vs:g}/{vs:g} (seed {seed})"
    _finish(names, samples, str(csv_path), need_train=bool(samples['train']) or not has_split,  # eval-only CSV
            min_classes=min_classes)
    return DatasetSplits(
        names, samples['train'], samples['val'], samples['test'], source, 'csv', data_dir or csv_path.parent, skipped
    )


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def discover(
        data_dir: str | os.PathLike | None,
        labels_csv: str | os.PathLike | None = None,
        val_split: float | None = None,
        seed: int = 0,
        strict: bool = False,
        class_names: Sequence[str] | None = None,
        min_classes: int = 2,
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

    A folder with a ``train``, ``val`` (``valid``, ``validation``) or ``test`` subfolder is read as split
    folders (other subfolders, e.g. ``masks``, are ignored); without ``train`` it is an evaluation set
    whose classes are the union of its splits' class folders. In a folder of class folders, a ``masks``
    folder that mirrors them (``masks/<class>/...``, no images directly in it; the mask tree that
    ``softcamify evaluate`` reads by default) is not a class; a ``masks`` folder holding images directly
    is. Class folders are sorted alphabetically as torchvision's ``ImageFolder`` does; every split uses
    the training split's class list. Images may sit in nested folders below a class folder. Hidden
    files and folders and non-image files are ignored; symlinked folders are followed, each real folder
    once (no symlink loops).
    """
    _check_val_split(val_split)
    skipped: list[tuple[Path, str]] = []
    root = Path(data_dir) if data_dir is not None else None
    if root is not None:
        if not root.exists():
            raise InputError(f"Dataset folder {root} does not exist; check DATA_DIR.")
        if not root.is_dir():
            raise InputError(f"Dataset path {root} is a file; DATA_DIR must be a folder (a CSV goes to --labels).")
    if labels_csv is not None:
        result = _discover_csv(Path(labels_csv), root, val_split, seed, class_names, skipped, min_classes=min_classes)
    elif root is None:
        raise UsageError("Give a dataset folder (DATA_DIR) or a labels CSV (--labels).")
    else:
        subdirs = {d.name.lower(): d for d in _visible_subdirs(root)}
        if subdirs.keys() & {'train', 'val', 'valid', 'validation', 'test'}:
            split_dirs = {'train': subdirs['train']} if 'train' in subdirs else {}
            for alias in ('val', 'valid', 'validation'):
                if alias in subdirs:
                    split_dirs['val'] = subdirs[alias]
                    break
            if 'test' in subdirs:
                split_dirs['test'] = subdirs['test']
            result = _discover_splits(root, split_dirs, val_split, seed, class_names, skipped,
                                      min_classes=min_classes)
        else:
            result = _discover_folders(root, val_split, seed, class_names, skipped, min_classes=min_classes)
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
    """
    good: list[Sample] = []
    bad: list[tuple[Sample, str]] = []
    for s in samples:
        try:
            open_image(s.path, channels=channels)
        except InputError as e:
            if strict:
                raise InputError(f"{str(e).rstrip('.')}; run without --strict to skip unreadable images.") from e
            bad.append((s, str(e)))
            continue
        good.append(s)
    return good, bad


# --- torch dataset and transforms ----------------------------------------------------------------------

class ImageDataset(torch.utils.data.Dataset):
    """A list of :class:`Sample` read with :func:`softcamify.images.open_image` and ``transform``.

    ``__getitem__`` returns ``(tensor, label, index)``; the index lets callers map outputs back to files.
    Run :func:`verify_samples` first: an unreadable file raises :class:`InputError` here.
    """

    def __init__(
            self,
            samples: Sequence[Sample],
            transform: Callable[[Image.Image], torch.Tensor] | None = None,
            channels: int = 3,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform if transform is not None else transforms.ToTensor()
        self.channels = channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        s = self.samples[index]
        img = open_image(s.path, channels=self.channels)
        return self.transform(img), s.label, index

    @property
    def targets(self) -> list[int]:
        return [s.label for s in self.samples]


class EvalTransform:
    """The deterministic eval transform: :func:`softcamify.images.preprocess_image` as a tensor.

    Identical (bit for bit) to ``timm.data.create_transform(**data_config, is_training=False)`` and to
    the ONNX path's preprocessing. A plain class so DataLoader workers can pickle it.
    """

    def __init__(self, data_config: dict[str, Any]) -> None:
        cfg = _normalized_config(data_config)
        self.channels = cfg['channels']
        self.kwargs = {k: cfg[k] for k in ('input_size', 'mean', 'std', 'interpolation', 'crop_pct', 'crop_mode')}

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = images.to_channels(img, self.channels)  # a no-op for images from open_image
        arr = images.preprocess_image(img, channels=self.channels, **self.kwargs)
        return torch.from_numpy(arr)

    def __repr__(self) -> str:
        args = ', '.join(f'{k}={v!r}' for k, v in self.kwargs.items())
        return f'{self.__class__.__name__}({args}, channels={self.channels})'


def _normalized_config(data_config: dict[str, Any]) -> dict[str, Any]:
    size = data_config.get('input_size', (3, 224, 224))
    if isinstance(size, int):
        size = (3, size, size)
    size = tuple(int(x) for x in size)
    if len(size) == 2:
        size = (3, *size)
    if len(size) != 3 or size[0] not in (1, 3):
        raise UsageError(f"input_size {size} must be (C, H, W) with C = 1 or 3.")
    channels = size[0]

    def stats(name: str, default: Sequence[float]) -> tuple[float, ...]:
        vals = [float(v) for v in np.atleast_1d(np.asarray(data_config.get(name, default), dtype=np.float64))]
        if len(vals) == channels:
            return tuple(vals)
        if len(vals) == 1:
            return tuple(vals * channels)
        if len(vals) == 3 and channels == 1:
            return (sum(vals) / 3.0,)
        raise UsageError(f"data config {name} has {len(vals)} values for a {channels}-channel model.")

    interpolation = data_config.get('interpolation', 'bicubic') or 'bicubic'
    if interpolation == 'random':
        interpolation = 'bilinear'  # what timm uses at eval time
    return {
        'input_size': size[1:],
        'channels': channels,
        'mean': stats('mean', images.IMAGENET_DEFAULT_MEAN),
        'std': stats('std', images.IMAGENET_DEFAULT_STD),
        'interpolation': interpolation,
        'crop_pct': data_config.get('crop_pct') or images.DEFAULT_CROP_PCT,
        'crop_mode': data_config.get('crop_mode') or 'center',
    }


def build_transform(
        data_config: dict[str, Any],
        train: bool = False,
        augment: str = 'light',
) -> Callable[[Image.Image], torch.Tensor]:
    """Transform from a timm data config (``timm.data.resolve_data_config`` keys) to a C x H x W tensor.

    Eval (``train=False``) and ``augment='none'`` give :class:`EvalTransform`. Training augmentations:

    * ``light``: RandomResizedCrop(scale 0.8-1) + horizontal flip.
    * ``medical`` (after the SoftCAM fundus setup): horizontal and vertical flips, rotation by up to
      :data:`MEDICAL_ROTATION_DEGREES` with p=0.5 (orientation-free images), colour jitter (brightness/contrast/saturation 0.2,
      hue 0.05; applied with p=0.5; brightness/contrast only for grayscale) and scale jitter by
      RandomResizedCrop(scale 0.87-1).

    Both end with ToTensor + Normalize with the data config's mean/std.
    """
    if augment not in AUGMENTATIONS:
        raise UsageError(f"--augment {augment!r} is not one of {', '.join(AUGMENTATIONS)}.")
    if not train or augment == 'none':
        return EvalTransform(data_config)
    cfg = _normalized_config(data_config)
    size = tuple(cfg['input_size'])
    interp = transforms.InterpolationMode(cfg['interpolation'])
    tail = [transforms.ToTensor(), transforms.Normalize(mean=cfg['mean'], std=cfg['std'])]
    if augment == 'light':
        tfl = [
            transforms.RandomResizedCrop(size, scale=(0.8, 1.0), interpolation=interp),
            transforms.RandomHorizontalFlip(),
        ]
    else:
        grey = cfg['channels'] == 1
        jitter = transforms.ColorJitter(0.2, 0.2, 0.0 if grey else 0.2, 0.0 if grey else 0.05)
        tfl = [
            transforms.RandomHorizontalFlip(),
            transforms.RandomVerticalFlip(),
            transforms.RandomApply(
                [transforms.RandomRotation(MEDICAL_ROTATION_DEGREES, interpolation=transforms.InterpolationMode.BILINEAR)],
                p=0.5,
            ),
            transforms.RandomApply([jitter], p=0.5),
            transforms.RandomResizedCrop(size, scale=(0.87, 1.0), interpolation=interp),
        ]
    return transforms.Compose(tfl + tail)


# --- masks ---------------------------------------------------------------------------------------------

def mask_path_for(
        image_path: str | os.PathLike,
        data_root: str | os.PathLike,
        mask_root: str | os.PathLike,
) -> Path | None:
    """The mask of ``image_path``: same path relative to ``mask_root`` as the image to ``data_root``.

    The mask may have another image extension (``a/b.jpg`` -> ``a/b.png``). None when the image is not
    under ``data_root`` or no mask exists.
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
    for ext in IMAGE_EXTENSIONS:
        for e in (ext, ext.upper()):
            cand = base.with_suffix(e)
            if cand.is_file():
                return cand
    return None

