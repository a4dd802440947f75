"""The labels-CSV layout of :func:`softcamify.data.discover`: a ``path,label[,split]`` file. Torch-free."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from .splits import (
    SPLIT_ALIASES,
    SPLIT_NAMES,
    DatasetSplits,
    Sample,
    check_classes,
    class_list,
    hold_out_val,
)

__all__ = ["discover_csv"]

_PATH_COLUMNS = ("path", "file", "filename", "image")
_LABEL_COLUMNS = ("label", "class", "target")
_SPLIT_COLUMNS = ("split", "subset", "fold")

#: (CSV line number, path as written, label as written, split as written in lower case or '')
_Row = tuple[int, str, str, str]


def _pick_column(fieldnames: Sequence[str], choices: Sequence[str]) -> str | None:
    lowered = {f.strip().lower(): f for f in fieldnames if f is not None}
    for c in choices:
        if c in lowered:
            return lowered[c]
    return None


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def _read_rows(csv_path: Path) -> list[_Row]:
    """The non-blank rows of the CSV, with the columns picked from its header."""
    if not csv_path.exists():
        raise InputError(f"Labels file {csv_path} does not exist; check labels_csv.", param="labels_csv")
    if not csv_path.is_file():
        raise InputError(f"Labels file {csv_path} is not a file; labels_csv takes a CSV file.", param="labels_csv")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fieldnames = list(reader.fieldnames or [])
            path_col = _pick_column(fieldnames, _PATH_COLUMNS)
            label_col = _pick_column(fieldnames, _LABEL_COLUMNS)
            split_col = _pick_column(fieldnames, _SPLIT_COLUMNS)
            if path_col is None or label_col is None:
                raise InputError(
                    f"Labels file {csv_path} has columns [{', '.join(fieldnames)}] but needs a header with "
                    "'path' and 'label' (and optionally 'split')."
                )
            rows = [
                (
                    i + 2,
                    (r.get(path_col) or "").strip(),
                    (r.get(label_col) or "").strip(),
                    (r.get(split_col) or "").strip().lower() if split_col else "",
                )
                for i, r in enumerate(reader)
            ]
    except UnicodeDecodeError as e:
        raise InputError(f"Labels file {csv_path} is not UTF-8 text; save it as UTF-8 CSV.") from e
    except csv.Error as e:
        raise InputError(f"Labels file {csv_path} is not valid CSV ({e}).") from e
    rows = [r for r in rows if r[1] or r[2]]  # blank lines
    if not rows:
        raise InputError(f"Labels file {csv_path} has no rows; add 'path,label' lines.")
    return rows


def _resolve_rows(
    csv_path: Path,
    data_dir: Path | None,
    rows: list[_Row],
) -> list[tuple[int, Path, str, str]]:
    """Each row's file (relative to ``data_dir`` or else the CSV's folder) and canonical split name."""
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
        if split and split not in SPLIT_ALIASES:
            raise InputError(f"Labels file {csv_path} line {line} has split {split!r}; use train, val or test.")
        candidates = [Path(rel)] if os.path.isabs(rel) else [b / rel for b in bases]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            missing.append(rel)
            continue
        resolved.append((line, hit, label, SPLIT_ALIASES.get(split, "")))
    if missing:
        where = " or ".join(str(b) for b in bases)
        raise InputError(
            f"Labels file {csv_path} names {len(missing)} file(s) that do not exist (first: {missing[0]}); "
            f"paths are relative to {where}."
        )
    return resolved


def _label_map(
    csv_path: Path,
    labels: list[str],
    class_names: Sequence[str] | None,
) -> tuple[list[str], dict[str, int]]:
    """(class names, {label as written: index}): integer labels 0..K-1, or names sorted into indices."""
    if not all(_is_int(lb) for lb in labels):
        names = class_list(labels, class_names, f"Labels file {csv_path}")
        index = {nm: i for i, nm in enumerate(names)}
        return names, {lb: index[lb] for lb in labels}
    ints = [int(lb) for lb in labels]
    if min(ints) < 0:
        raise InputError(f"Labels file {csv_path} has negative label {min(ints)}; labels are 0..K-1 or names.")
    n = max(ints) + 1
    if class_names is not None:
        if n > len(class_names):
            raise InputError(f"Labels file {csv_path} has label {n - 1} but the model has {len(class_names)} classes.")
        names = list(class_names)
    else:
        names = [str(i) for i in range(n)]
    return names, {lb: int(lb) for lb in labels}


def _one_row_per_image(
    csv_path: Path,
    rows: list[tuple[int, Path, str, str]],
    label_of: dict[str, int],
) -> tuple[list[tuple[int, Path, str, str]], list[str]]:
    """The rows with each image (its real path: ``a.png`` and ``./a.png`` are one image) once per split,
    and the notes about what was dropped or is suspicious.

    An image listed with two labels is refused (:class:`InputError`): no label can be chosen for it. The
    same image, label and split listed again is used once (a note with the count). The same image in two
    splits (train and val, say) is kept as written, with a note: its validation and test scores include
    images the model trained on.
    """
    first: dict[str, tuple[int, Path, str, str]] = {}  # real path -> its first row
    in_splits: dict[str, dict[str, tuple[int, Path, str, str]]] = {}  # real path -> split -> its row
    conflicts: dict[str, tuple[tuple[int, Path, str, str], tuple[int, Path, str, str]]] = {}
    duplicates: list[tuple[tuple[int, Path, str, str], tuple[int, Path, str, str]]] = []
    kept: list[tuple[int, Path, str, str]] = []
    for row in rows:
        key = os.path.realpath(row[1])
        seen = first.setdefault(key, row)
        if label_of[seen[2]] != label_of[row[2]]:
            conflicts.setdefault(key, (seen, row))
            continue
        splits = in_splits.setdefault(key, {})
        if row[3] in splits:
            duplicates.append((splits[row[3]], row))
            continue
        splits[row[3]] = row
        kept.append(row)
    if conflicts:
        (line_a, path, label_a, _), (line_b, _, label_b, _) = next(iter(conflicts.values()))
        raise InputError(
            f"Labels file {csv_path} gives {len(conflicts)} image(s) more than one label (first: {path} is "
            f"{label_a!r} on line {line_a} and {label_b!r} on line {line_b}); keep one label per image."
        )
    notes: list[str] = []
    if duplicates:
        (line_a, path, _, _), (line_b, _, _, _) = duplicates[0]
        notes.append(
            f"Labels file {csv_path} lists {len(duplicates)} row(s) again with the same image, label and split "
            f"(first: {path} on lines {line_a} and {line_b}); each image is used once."
        )
    leaked = [s for s in in_splits.values() if len(s) > 1]
    if leaked:
        path, where = next(iter(leaked[0].values()))[1], " and ".join(sorted(leaked[0]))
        notes.append(
            f"Labels file {csv_path} puts {len(leaked)} image(s) in more than one split (first: {path} in "
            f"{where}): the model is validated or tested on images it trains on, so those scores are too "
            "good; give each image one split."
        )
    return kept, notes


def discover_csv(
    csv_path: Path,
    data_dir: Path | None,
    val_split: float | None,
    seed: int,
    class_names: Sequence[str] | None,
    skipped: list[tuple[Path, str]],
    min_classes: int = 2,
) -> DatasetSplits:
    """The splits of a labels CSV (see :func:`softcamify.data.discover`); empty files go to ``skipped``."""
    resolved = _resolve_rows(csv_path, data_dir, _read_rows(csv_path))
    names, label_of = _label_map(csv_path, [r[2] for r in resolved], class_names)
    resolved, notes = _one_row_per_image(csv_path, resolved, label_of)
    has_split = any(r[3] for r in resolved)
    samples: dict[str, list[Sample]] = {s: [] for s in SPLIT_NAMES}
    for line, p, label, split in resolved:
        if has_split and not split:
            raise InputError(f"Labels file {csv_path} line {line} has no split while others do; fill it in.")
        if p.stat().st_size == 0:
            skipped.append((p, "empty file"))
            continue
        samples[split or "train"].append(Sample(p, label_of[label]))
    source = hold_out_val(
        samples,
        names,
        val_split,
        seed,
        fixed=f"{csv_path} (split column)" if has_split else None,
        conflict=f"val_split conflicts with the split column of {csv_path}; drop one of them.",
        split_from=str(csv_path),
    )
    need_train = bool(samples["train"]) or not has_split  # a CSV with val/test rows only is an evaluation set
    check_classes(names, samples, str(csv_path), need_train=need_train, min_classes=min_classes)
    return DatasetSplits(
        names,
        samples["train"],
        samples["val"],
        samples["test"],
        source,
        "csv",
        data_dir or csv_path.parent,
        skipped,
        notes,
    )
