"""A synthetic, fundus-like lesion screening dataset with exact lesion masks.

Each image is a textured orange-red disc on black (vignetting, low-frequency texture, noise) with
branching vessels, an optic-disc-like bright blob and a fovea-like darker spot in every class. The
classes differ only by their lesions:

* ``healthy``: none (an all-zero mask);
* ``red_lesion``: a few small dark-red dots and blots (microaneurysm/haemorrhage-like), varied in size,
  shape (round, elliptic, irregular), colour and contrast;
* ``bright_lesion``: small yellowish, irregular exudate-like patches.

With ``ordinal=True`` the classes are ``grade_0..grade_3`` by the number of red lesions (0, 1-2, 3-5, 6+).
With ``shortcut=True`` the *training* images carry a small text-like tag in a corner that depends on
the class: a model that learns it fails on val/test, and its evidence maps point at the corner.

Masks mark exactly the lesion pixels (they are drawn from the same shapes), so evidence maps can be
scored against ground truth (pointing game, AUC of evidence inside masks). Every image is generated from
its own ``numpy.random.Generator(PCG64)`` seeded with ``(seed, index)``: the PNGs are byte-identical for a
seed. numpy and Pillow only (no torch). The pixels are drawn by :mod:`softcamify.data.synth_draw`; this
module plans the images, writes them and their manifest.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .._version import __version__
from ..errors import UsageError
from ..io import check_output_dir, make_output_dir, write_text_atomic
from .synth_draw import render

__all__ = ['make_lesions', 'LESION_KINDS', 'ORDINAL_CLASSES', 'DEFAULT_CLASSES', 'GENERATOR_NAME']

# The generator's name in manifest.json (and in assets/demo_model.json). It names the module this lived in
# before softcamify.data; kept as is so manifests stay byte-identical and `--force` still recognizes (and
# cleans up) datasets written by earlier versions.
GENERATOR_NAME = 'softcamify.datasets.make_lesions'
DEFAULT_CLASSES = ('healthy', 'red_lesion', 'bright_lesion')
LESION_KINDS = {'healthy': None, 'red_lesion': 'red', 'bright_lesion': 'bright'}
ORDINAL_CLASSES = ('grade_0', 'grade_1', 'grade_2', 'grade_3')
ORDINAL_RED_COUNTS = ((0, 0), (1, 2), (3, 5), (6, 9))  # inclusive ranges per grade
SPLITS = ('train', 'val', 'test')
CORNERS = ('top_left', 'top_right', 'bottom_left', 'bottom_right', 'top', 'bottom', 'left', 'right')


def _check_options(
        n: int,
        size: int,
        classes: Sequence[str],
        ordinal: bool,
        contrast: float,
        noise: float,
        splits: Sequence[float],
) -> list[str]:
    if ordinal:
        if tuple(classes) not in (tuple(DEFAULT_CLASSES), tuple(ORDINAL_CLASSES)):
            raise UsageError(
                "classes cannot be combined with ordinal (which names the grades grade_0..grade_3).",
                param=("classes", "ordinal"),
            )
        names = list(ORDINAL_CLASSES)
    else:
        names = [c.strip() for c in classes if c.strip()]
        unknown = [c for c in names if c not in LESION_KINDS]
        if unknown:
            raise UsageError(f"classes {unknown[0]!r} is not one of {', '.join(LESION_KINDS)}.",
                             param="classes")
        if len(set(names)) != len(names) or len(names) < 2:
            got = ', '.join(names) or 'none'
            raise UsageError(f"classes must list at least two different names, got {got}.", param="classes")
    if size < 32:
        raise UsageError(f"size {size} is too small; use at least 32 pixels.", param="size")
    if n < len(names):
        raise UsageError(f"n {n} is below the number of classes ({len(names)}); ask for more images.",
                         param="n")
    if not contrast > 0:
        raise UsageError(f"contrast {contrast} must be positive (1.0 is the default).", param="contrast")
    if not noise >= 0:
        raise UsageError(f"noise {noise} must be zero or positive (1.0 is the default).", param="noise")
    if len(splits) != 3 or min(splits) < 0 or splits[0] <= 0 or abs(sum(splits) - 1.0) > 1e-6:
        raise UsageError(
            f"splits {tuple(splits)} must be three non-negative fractions (train > 0) summing to 1.",
            param="splits",
        )
    return names


def _split_of(j: int, n_class: int, splits: Sequence[float]) -> str:
    """Split of the j-th image of a class with ``n_class`` images (train first, then val, then test)."""
    n_train = max(1, int(round(n_class * splits[0])))
    n_val = int(round(n_class * splits[1]))
    if j < n_train:
        return 'train'
    return 'val' if j < n_train + n_val else 'test'


def _remove_previous(out: Path) -> None:
    """With ``force``: delete the files a previous run listed in its manifest (nothing else)."""
    manifest = out / 'manifest.json'
    try:
        old = json.loads(manifest.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return
    if not isinstance(old, dict) or old.get('generator') != GENERATOR_NAME:
        return
    root = out.resolve()
    folders = set()
    for item in old.get('images', []):
        for key in ('path', 'mask'):
            rel = item.get(key) if isinstance(item, dict) else None
            if not isinstance(rel, str):
                continue
            p = (out / rel).resolve()
            if root not in p.parents:
                continue
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            folders.add(p.parent)
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        while folder != root and root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent


@dataclass
class _Job:
    index: int
    rel: str  # image path relative to the output folder
    split: str
    name: str
    label: int
    n_red: int
    n_bright: int
    tag: str | None


def _run_jobs(
        out: str,
        seed: int,
        size: int,
        contrast: float,
        noise: float,
        jobs: Sequence[_Job],
) -> list[dict[str, Any]]:
    """Render and write the images (and masks) of ``jobs``; their manifest entries, in order."""
    items = []
    for jb in jobs:
        img, mask, details = render(seed, jb.index, size, jb.n_red, jb.n_bright, contrast, noise, jb.tag)
        rel_mask = f'masks/{jb.rel}'
        Image.fromarray(img, mode='RGB').save(os.path.join(out, jb.rel), format='PNG')
        Image.fromarray(mask.astype(np.uint8) * 255, mode='L').save(os.path.join(out, rel_mask), format='PNG')
        items.append({
            'id': Path(jb.rel).stem,
            'path': jb.rel,
            'mask': rel_mask,
            'split': jb.split,
            'class': jb.name,
            'label': jb.label,
            'num_red': jb.n_red,
            'num_bright': jb.n_bright,
            **details,
        })
    return items


def _resolve_workers(workers: int | None, n: int) -> int:
    if workers is None:  # processes pay off from a few hundred images on
        workers = min(os.cpu_count() or 1, 8) if n >= 300 else 1
    return max(1, min(int(workers), n))


def _map_chunks(task: Any, jobs: list[_Job], workers: int) -> list[dict[str, Any]]:
    """``task`` over chunks of ``jobs`` in ``workers`` processes (in order; serial when 1 or unavailable).

    Every image has its own generator, so the output does not depend on the number of workers.
    """
    if workers > 1:
        chunk = max(1, math.ceil(len(jobs) / (workers * 4)))
        chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
        try:
            with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
                return [item for part in pool.map(task, chunks) for item in part]
        except (OSError, concurrent.futures.process.BrokenProcessPool, NotImplementedError):
            pass  # no process support here (sandbox, missing /dev/shm): do it in this process
    return task(jobs)


def _plan_jobs(
        n: int,
        names: Sequence[str],
        seed: int,
        ordinal: bool,
        corners: dict[str, str] | None,
        splits: Sequence[float],
) -> list[_Job]:
    """What to draw for each of the ``n`` images: class (image i has class i mod K), split, lesion
    counts (from their own generator, seeded with ``(seed, i, 1)``) and the shortcut tag's corner
    (``corners``, training images only; None: no shortcut)."""
    k = len(names)
    width = max(5, len(str(n - 1)))
    jobs: list[_Job] = []
    for i in range(n):
        label, j = i % k, i // k
        name = names[label]
        n_class = n // k + (1 if label < n % k else 0)
        split = _split_of(j, n_class, splits)
        count_rng = np.random.Generator(np.random.PCG64([int(seed), int(i), 1]))
        if ordinal:
            lo, hi = ORDINAL_RED_COUNTS[label]
            n_red, n_bright = int(count_rng.integers(lo, hi + 1)), 0
        else:
            kind = LESION_KINDS[name]
            n_red = int(count_rng.integers(2, 7)) if kind == 'red' else 0
            n_bright = int(count_rng.integers(1, 5)) if kind == 'bright' else 0
        tag = corners[name] if corners is not None and split == 'train' else None
        rel = f'{split}/{name}/{i:0{width}d}.png'
        jobs.append(_Job(i, rel, split, name, label, n_red, n_bright, tag))
    return jobs


def make_lesions(
        out_dir: str | os.PathLike,
        n: int = 600,
        size: int = 128,
        classes: Sequence[str] = DEFAULT_CLASSES,
        seed: int = 0,
        ordinal: bool = False,
        shortcut: bool = False,
        contrast: float = 1.0,
        noise: float = 1.0,
        splits: Sequence[float] = (0.6, 0.2, 0.2),
        force: bool = False,
        workers: int | None = None,
) -> dict[str, Any]:
    """Write the synthetic lesion dataset to ``out_dir`` and return its manifest.

    Layout: ``out_dir/{train,val,test}/<class>/<id>.png`` (RGB), masks at
    ``out_dir/masks/{split}/<class>/<id>.png`` (255 on lesion pixels, all zero for lesion-free images)
    and ``out_dir/manifest.json`` (written last, atomically). Lesion boxes are ``[x0, y0, x1, y1]``
    pixel bounds with x1/y1 exclusive.

    Args:
        out_dir: Output folder; must be empty or absent unless ``force``.
        n: Number of images (classes balanced: image i has class i mod K).
        size: Image side in pixels.
        classes: Subset of healthy, red_lesion, bright_lesion (ignored with ``ordinal``).
        seed: Generation seed (byte-identical output for a seed).
        ordinal: Classes grade_0..grade_3 by the number of red lesions (0, 1-2, 3-5, 6-9).
        shortcut: Class-dependent corner tag in training images only.
        contrast: Lesion contrast factor (below 1: fainter lesions, a harder task).
        noise: Texture and sensor-noise factor.
        splits: Train/val/test fractions (per class).
        force: Write into a non-empty folder (files listed by a previous manifest are removed first).
        workers: Processes (None: up to the CPU count for 300+ images); the output does not depend on it.
    """
    names = _check_options(n, size, classes, ordinal, contrast, noise, splits)
    out = check_output_dir(out_dir, force=force)
    make_output_dir(out)
    if force:
        _remove_previous(out)
    t0 = time.perf_counter()
    corners = {name: CORNERS[i % len(CORNERS)] for i, name in enumerate(names)}
    jobs = _plan_jobs(n, names, seed, ordinal, corners if shortcut else None, splits)
    for folder in sorted({str(Path(jb.rel).parent) for jb in jobs}):
        (out / folder).mkdir(parents=True, exist_ok=True)
        (out / 'masks' / folder).mkdir(parents=True, exist_ok=True)
    task = functools.partial(_run_jobs, str(out), int(seed), int(size), float(contrast), float(noise))
    items = _map_chunks(task, jobs, _resolve_workers(workers, n))
    counts = {s: dict.fromkeys(names, 0) for s in SPLITS}
    for jb in jobs:
        counts[jb.split][jb.name] += 1
    seconds = time.perf_counter() - t0
    manifest: dict[str, Any] = {
        'generator': GENERATOR_NAME,
        'softcamify_version': __version__,
        'seed': int(seed),
        'size': int(size),
        'n': int(n),
        'classes': names,
        'options': {
            'ordinal': bool(ordinal),
            'shortcut': bool(shortcut),
            'contrast': float(contrast),
            'noise': float(noise),
            'splits': [float(x) for x in splits],
        },
        'shortcut': {'split': 'train', 'corners': corners} if shortcut else None,
        'counts': counts,
        'seconds': round(seconds, 3),
        'images': items,
    }
    # 'seconds' varies between runs; keep it out of the file so manifests are reproducible too
    on_disk = {key: v for key, v in manifest.items() if key != 'seconds'}
    write_text_atomic(out / 'manifest.json', json.dumps(on_disk, indent=1) + '\n', force=True)
    return manifest
