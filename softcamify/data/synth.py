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

import collections
import concurrent.futures
import contextlib
import functools
import io
import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .._version import __version__
from ..errors import OutputError, UsageError
from ..io import atomic_output, check_output_dir, make_output_dir
from .synth_draw import render

__all__ = ["make_lesions", "LESION_KINDS", "ORDINAL_CLASSES", "DEFAULT_CLASSES", "GENERATOR_NAME"]

# The generator's name in manifest.json (and in assets/demo_model.json). It names the module this lived in
# before softcamify.data; kept as is so manifests stay byte-identical and `--force` still recognizes (and
# cleans up) datasets written by earlier versions.
GENERATOR_NAME = "softcamify.datasets.make_lesions"
DEFAULT_CLASSES = ("healthy", "red_lesion", "bright_lesion")
LESION_KINDS = {"healthy": None, "red_lesion": "red", "bright_lesion": "bright"}
ORDINAL_CLASSES = ("grade_0", "grade_1", "grade_2", "grade_3")
ORDINAL_RED_COUNTS = ((0, 0), (1, 2), (3, 5), (6, 9))  # inclusive ranges per grade
SPLITS = ("train", "val", "test")
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right", "top", "bottom", "left", "right")

# Memory and disk. Images are drawn, written and forgotten one by one (a worker process holds one chunk of
# them at a time, a few in flight per worker; the manifest is streamed to its file), so memory does not grow
# with the number of images. It grows with the image side: drawing one S x S image peaks at about
# PEAK_BYTES_PER_PIXEL x S^2 (float32 planes, the 2x supersampled vessel layer, PNG encoding; ~66 measured at
# 2000 px), so the number of processes is capped by the memory available, and a size no image of which fits
# in this machine's memory, or above what softcamify reads back, is refused.
MAX_PIXELS = 89_478_485  # Pillow's decompression-bomb limit: no softcamify command decodes a larger image
MAX_SIZE = math.isqrt(MAX_PIXELS)  # 9459
PEAK_BYTES_PER_PIXEL = 72
CHUNK_PIXELS = 1 << 20  # about this many pixels per chunk of work handed to a process (1 to 16 images)


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
            raise UsageError(f"classes {unknown[0]!r} is not one of {', '.join(LESION_KINDS)}.", param="classes")
        if len(set(names)) != len(names) or len(names) < 2:
            got = ", ".join(names) or "none"
            raise UsageError(f"classes must list at least two different names, got {got}.", param="classes")
    if size < 32:
        raise UsageError(f"size {size} is too small; use at least 32 pixels.", param="size")
    if size > MAX_SIZE:
        raise UsageError(
            f"size {size} makes images of {size * size:,} pixels, more than the {MAX_PIXELS:,} softcamify reads "
            f"(Pillow's decompression-bomb limit); use at most {MAX_SIZE}.",
            param="size",
        )
    if n < len(names):
        raise UsageError(f"n {n} is below the number of classes ({len(names)}); ask for more images.", param="n")
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
        return "train"
    return "val" if j < n_train + n_val else "test"


def _remove_previous(out: Path) -> None:
    """With ``force``: delete the files a previous run listed in its manifest (nothing else)."""
    manifest = out / "manifest.json"
    try:
        old = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(old, dict) or old.get("generator") != GENERATOR_NAME:
        return
    root = out.resolve()
    folders = set()
    for item in old.get("images", []):
        for key in ("path", "mask"):
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


def _bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _memory() -> tuple[int | None, int | None]:
    """(total, available) bytes of memory for this process: the machine's, or its cgroup's limit when lower
    (a container); None when unknown (not Linux)."""
    info: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                key, value = line.split(":", 1)
                info[key] = int(value.split()[0]) * 1024
    total, available = info.get("MemTotal"), info.get("MemAvailable")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            with open(limit_file, encoding="ascii") as fh:
                text = fh.read().strip()
            if text.isdigit() and int(text) < 1 << 60:
                total = int(text) if total is None else min(total, int(text))
                available = None if available is None else min(available, int(text))
            break
    return total, available


def _check_memory(size: int) -> int:
    """Bytes one image of ``size`` px needs while it is drawn; refuses a size no image of which fits."""
    need = PEAK_BYTES_PER_PIXEL * size * size + (32 << 20)
    total, _ = _memory()
    if total is not None and need > total:
        raise UsageError(
            f"size {size} needs about {_bytes(need)} of memory to draw one image, more than the {_bytes(total)} "
            "here; use a smaller size.",
            param="size",
        )
    return need


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


def _draw(seed: int, size: int, contrast: float, noise: float, jb: _Job) -> tuple[bytes, bytes, dict[str, Any]]:
    """One image of ``jb``: (PNG bytes, mask PNG bytes, manifest entry)."""
    img, mask, details = render(seed, jb.index, size, jb.n_red, jb.n_bright, contrast, noise, jb.tag)
    png, mask_png = io.BytesIO(), io.BytesIO()
    Image.fromarray(img, mode="RGB").save(png, format="PNG")
    del img
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(mask_png, format="PNG")
    rel_mask = f"masks/{jb.rel}"
    item = {
        "id": Path(jb.rel).stem,
        "path": jb.rel,
        "mask": rel_mask,
        "split": jb.split,
        "class": jb.name,
        "label": jb.label,
        "num_red": jb.n_red,
        "num_bright": jb.n_bright,
        **details,
    }
    return png.getvalue(), mask_png.getvalue(), item


def _write(out: str, item: dict[str, Any], png: bytes, mask_png: bytes) -> None:
    with open(os.path.join(out, item["path"]), "wb") as fh:
        fh.write(png)
    with open(os.path.join(out, item["mask"]), "wb") as fh:
        fh.write(mask_png)


def _run_jobs(
    out: str,
    seed: int,
    size: int,
    contrast: float,
    noise: float,
    jobs: Sequence[_Job],
) -> list[dict[str, Any]]:
    """Draw and write the images (and masks) of ``jobs``, one at a time; their manifest entries, in order."""
    items = []
    for jb in jobs:
        png, mask_png, item = _draw(seed, size, contrast, noise, jb)
        _write(out, item, png, mask_png)
        items.append(item)
    return items


def _resolve_workers(workers: int | None, n: int, need: int | None = None) -> int:
    """Processes to draw in: ``workers`` (None: up to the CPU count for 300+ images), at most one per image
    and no more than the available memory holds while each draws an image needing ``need`` bytes."""
    if workers is None:  # processes pay off from a few hundred images on
        workers = min(os.cpu_count() or 1, 8) if n >= 300 else 1
    workers = max(1, min(int(workers), n))
    available = _memory()[1]
    if need and available is not None:
        workers = max(1, min(workers, available // need))
    return workers


def _map_chunks(
    task: Callable[[list[_Job]], list[dict[str, Any]]],
    chunks: Iterable[list[_Job]],
    workers: int,
) -> Generator[dict[str, Any], None, None]:
    """The manifest entries of ``task`` over ``chunks``, in order, as they are done: in ``workers`` processes
    with at most two chunks per process in flight (serial when 1 or when processes are unavailable).

    Every image has its own generator, so the output does not depend on the number of workers.
    """
    chunks = iter(chunks)
    pool: concurrent.futures.ProcessPoolExecutor | None = None
    if workers > 1:
        with contextlib.suppress(OSError, NotImplementedError):
            pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers)
    pending: collections.deque[tuple[list[_Job], concurrent.futures.Future]] = collections.deque()
    if pool is not None:
        try:
            while True:
                done: list[dict[str, Any]] | None = None
                try:
                    for chunk in itertools.islice(chunks, 2 * workers - len(pending)):
                        pending.append((chunk, pool.submit(task, chunk)))
                    if not pending:
                        break
                    done = pending[0][1].result()
                except (OSError, concurrent.futures.process.BrokenProcessPool, NotImplementedError):
                    break  # no process support here (sandbox, missing /dev/shm): the rest in this process
                pending.popleft()
                yield from done
        except BaseException:  # Ctrl-C, SIGTERM or an error: the workers are stopped, never waited for
            _stop_workers(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    for chunk, _ in pending:
        yield from task(chunk)
    for chunk in chunks:
        yield from task(chunk)


def _stop_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Terminate ``pool``'s worker processes and reap them (a second or so at most): a stopped run must not wait
    for chunks whose images are about to be deleted, nor hang on a worker that never started."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        with contextlib.suppress(Exception):
            proc.terminate()
    for proc in processes:
        with contextlib.suppress(Exception):
            proc.join(timeout=1.0)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=1.0)


def _plan_jobs(
    n: int,
    names: Sequence[str],
    seed: int,
    ordinal: bool,
    corners: dict[str, str] | None,
    splits: Sequence[float],
) -> Iterator[_Job]:
    """What to draw for each of the ``n`` images, one at a time: class (image i has class i mod K), split,
    lesion counts (from their own generator, seeded with ``(seed, i, 1)``) and the shortcut tag's corner
    (``corners``, training images only; None: no shortcut)."""
    k = len(names)
    width = max(5, len(str(n - 1)))
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
            n_red = int(count_rng.integers(2, 7)) if kind == "red" else 0
            n_bright = int(count_rng.integers(1, 5)) if kind == "bright" else 0
        tag = corners[name] if corners is not None and split == "train" else None
        rel = f"{split}/{name}/{i:0{width}d}.png"
        yield _Job(i, rel, split, name, label, n_red, n_bright, tag)


def _counts(n: int, names: Sequence[str], splits: Sequence[float]) -> dict[str, dict[str, int]]:
    """Images per split and class (what :func:`_plan_jobs` plans, without planning it)."""
    counts = {s: dict.fromkeys(names, 0) for s in SPLITS}
    k = len(names)
    for label, name in enumerate(names):
        n_class = n // k + (1 if label < n % k else 0)
        n_train = max(1, int(round(n_class * splits[0])))
        train = min(n_class, n_train)
        val = min(n_class, n_train + int(round(n_class * splits[1]))) - train
        counts["train"][name], counts["val"][name], counts["test"][name] = train, val, n_class - train - val
    return counts


def _previous_bytes(out: Path) -> int:
    """Bytes of the files a previous run listed in ``out``'s manifest (what ``--force`` removes)."""
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        old = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        if old.get("generator") == GENERATOR_NAME:
            total = 0
            for item in old.get("images", []):
                for key in ("path", "mask"):
                    with contextlib.suppress(OSError, TypeError):
                        total += (out / item[key]).stat().st_size
            return total
    return 0


def _check_disk(out: Path, n: int, size: int, first_bytes: int, force: bool) -> None:
    """Refuse a dataset that cannot fit on the disk, estimated from its first image (they all compress
    alike), before anything is written."""
    folder = out
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if force and out.is_dir():
        free += _previous_bytes(out)
    need = n * (first_bytes + 400)  # + its manifest entry
    if 0.9 * need > free:
        raise OutputError(
            f"Cannot write {n:,} images of {size} px into {out}: the disk is full (they need about "
            f"{_bytes(need)}, {_bytes(free)} are free); lower n or size.",
            param=("n", "size"),
        )


def _manifest_head(manifest: dict[str, Any]) -> str:
    """The manifest's JSON text up to its image entries (``json.dumps(manifest, indent=1)`` exactly, once
    :func:`_manifest_entry` texts and the closing brackets follow)."""
    text = json.dumps(manifest, indent=1)  # ends with "\n}"
    return text[:-2] + ',\n "images": ['


def _manifest_entry(item: dict[str, Any], first: bool) -> str:
    """One image entry as ``json.dumps`` with ``indent=1`` writes it at depth 2."""
    body = json.dumps(item, indent=1).replace("\n", "\n  ")
    return ("\n  " if first else ",\n  ") + body


# Long by its signature and its docstring (the dataset's layout and every option); the body, about 45
# lines, checks options and streams images to disk through the helpers above.
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
    keep_images: bool = True,
) -> dict[str, Any]:
    """Write the synthetic lesion dataset to ``out_dir`` and return its manifest.

    Layout: ``out_dir/{train,val,test}/<class>/<id>.png`` (RGB), masks at
    ``out_dir/masks/{split}/<class>/<id>.png`` (255 on lesion pixels, all zero for lesion-free images)
    and ``out_dir/manifest.json`` (written as the images are, renamed into place at the end). Lesion boxes are
    ``[x0, y0, x1, y1]`` pixel bounds with x1/y1 exclusive.

    Memory does not grow with ``n``: images are drawn and written one by one (the returned ``images`` list,
    when ``keep_images``, is the only thing that does). It grows with ``size`` (about 72 bytes per pixel
    while an image is drawn): processes are limited to what the available memory holds, and a ``size`` above
    9459 (images softcamify would not read back) or whose images do not fit in this machine's memory is
    refused (:class:`UsageError`), as is a dataset that does not fit on the disk (:class:`OutputError`,
    estimated from the first image before anything is written).

    Args:
        out_dir: Output folder; must be empty or absent unless ``force``.
        n: Number of images (classes balanced: image i has class i mod K).
        size: Image side in pixels (32 to 9459).
        classes: Subset of healthy, red_lesion, bright_lesion (ignored with ``ordinal``).
        seed: Generation seed (byte-identical output for a seed).
        ordinal: Classes grade_0..grade_3 by the number of red lesions (0, 1-2, 3-5, 6-9).
        shortcut: Class-dependent corner tag in training images only.
        contrast: Lesion contrast factor (below 1: fainter lesions, a harder task).
        noise: Texture and sensor-noise factor.
        splits: Train/val/test fractions (per class).
        force: Write into a non-empty folder (files listed by a previous manifest are removed first).
        workers: Processes (None: up to the CPU count for 300+ images; at most what the memory holds); the
            output does not depend on it.
        keep_images: Return the manifest's ``images`` entries too (False: the manifest without them, in memory
            that does not grow with ``n``; they are in ``manifest.json``).
    """
    names = _check_options(n, size, classes, ordinal, contrast, noise, splits)
    need = _check_memory(size)
    out = check_output_dir(out_dir, force=force)
    t0 = time.perf_counter()
    corners = {name: CORNERS[i % len(CORNERS)] for i, name in enumerate(names)}
    jobs = _plan_jobs(n, names, seed, ordinal, corners if shortcut else None, splits)
    first = _draw(int(seed), int(size), float(contrast), float(noise), next(jobs))
    _check_disk(out, n, size, len(first[0]) + len(first[1]), force)
    make_output_dir(out)
    if force:
        _remove_previous(out)
    counts = _counts(n, names, splits)
    for split, per_class in counts.items():
        for name, count in per_class.items():
            if count:
                (out / split / name).mkdir(parents=True, exist_ok=True)
                (out / "masks" / split / name).mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "generator": GENERATOR_NAME,
        "softcamify_version": __version__,
        "seed": int(seed),
        "size": int(size),
        "n": int(n),
        "classes": names,
        "options": {
            "ordinal": bool(ordinal),
            "shortcut": bool(shortcut),
            "contrast": float(contrast),
            "noise": float(noise),
            "splits": [float(x) for x in splits],
        },
        "shortcut": {"split": "train", "corners": corners} if shortcut else None,
        "counts": counts,
    }
    images: list[dict[str, Any]] = []
    task = functools.partial(_run_jobs, str(out), int(seed), int(size), float(contrast), float(noise))
    per_chunk = max(1, min(16, CHUNK_PIXELS // (size * size)))
    chunks = iter(lambda: list(itertools.islice(jobs, per_chunk)), [])
    # the manifest is streamed to its temporary file as the images are written; 'seconds' varies between
    # runs, so it stays out of the file (manifests are reproducible too)
    # (closing: on an error or Ctrl-C the processes stop before the caller removes what was written)
    with (
        atomic_output(out / "manifest.json", force=True) as tmp,
        open(tmp, "w", encoding="utf-8") as fh,
        contextlib.closing(_map_chunks(task, chunks, _resolve_workers(workers, n, need))) as rest,
    ):
        fh.write(_manifest_head(manifest))
        _write(str(out), first[2], first[0], first[1])
        entries = itertools.chain([first[2]], rest)
        del first
        for i, item in enumerate(entries):
            fh.write(_manifest_entry(item, i == 0))
            if keep_images:
                images.append(item)
        fh.write("\n ]\n}\n")
    manifest["seconds"] = round(time.perf_counter() - t0, 3)
    if keep_images:
        manifest["images"] = images
    return manifest
