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
seed. numpy and Pillow only (no torch).
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
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ._version import __version__
from .errors import UsageError
from .io import check_output_dir, make_output_dir, write_text_atomic

__all__ = ['make_lesions', 'LESION_KINDS', 'ORDINAL_CLASSES', 'DEFAULT_CLASSES', 'GENERATOR_NAME']

GENERATOR_NAME = 'softcamify.datasets.make_lesions'
DEFAULT_CLASSES = ('healthy', 'red_lesion', 'bright_lesion')
LESION_KINDS = {'healthy': None, 'red_lesion': 'red', 'bright_lesion': 'bright'}
ORDINAL_CLASSES = ('grade_0', 'grade_1', 'grade_2', 'grade_3')
ORDINAL_RED_COUNTS = ((0, 0), (1, 2), (3, 5), (6, 9))  # inclusive ranges per grade
SPLITS = ('train', 'val', 'test')
_CORNERS = ('top_left', 'top_right', 'bottom_left', 'bottom_right', 'top', 'bottom', 'left', 'right')

# 3x5 bitmap glyphs for the shortcut tag (rows top to bottom, 3 bits each).
_GLYPHS = {
    'I': (0b111, 0b010, 0b010, 0b010, 0b111),
    'D': (0b110, 0b101, 0b101, 0b101, 0b110),
    'R': (0b110, 0b101, 0b110, 0b101, 0b101),
    'L': (0b100, 0b100, 0b100, 0b100, 0b111),
    '0': (0b111, 0b101, 0b101, 0b101, 0b111),
    '1': (0b010, 0b110, 0b010, 0b010, 0b111),
    '2': (0b111, 0b001, 0b111, 0b100, 0b111),
    '3': (0b111, 0b001, 0b011, 0b001, 0b111),
    '4': (0b101, 0b101, 0b111, 0b001, 0b001),
    '5': (0b111, 0b100, 0b111, 0b001, 0b111),
    '6': (0b111, 0b100, 0b111, 0b101, 0b111),
    '7': (0b111, 0b001, 0b010, 0b010, 0b010),
    '8': (0b111, 0b101, 0b111, 0b101, 0b111),
    '9': (0b111, 0b101, 0b111, 0b001, 0b111),
}


@dataclass
class _Lesion:
    kind: str  # 'red' or 'bright'
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive

    def to_dict(self) -> dict[str, Any]:
        return {'type': self.kind, 'box': list(self.box)}


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) as float32 S x S arrays (read-only, shared)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """Low-frequency noise: a cells x cells normal grid upsampled (bicubic) to size x size."""
    small = rng.standard_normal((cells, cells), dtype=np.float32)
    return np.asarray(Image.fromarray(small, mode='F').resize((size, size), Image.Resampling.BICUBIC))


def _draw_vessels(
        rng: np.random.Generator,
        size: int,
        origin: tuple[float, float],
        centre: tuple[float, float],
        radius: float,
) -> np.ndarray:
    """Branching dark vessels leaving the optic disc: an S x S float32 alpha in [0, 1]."""
    ss = 2  # supersampling for antialiased lines
    layer = Image.new('L', (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(layer)
    step = size * 0.03
    n_main = int(rng.integers(4, 7))
    start = rng.uniform(0, 2 * math.pi)
    stack = []
    for k in range(n_main):
        angle = start + 2 * math.pi * k / n_main + rng.normal(0, 0.25)
        width = size * rng.uniform(0.018, 0.028)
        stack.append((origin[0], origin[1], angle, width, int(rng.integers(16, 26)), 0))
    cx, cy = centre
    while stack:
        x, y, a, w, steps, depth = stack.pop()
        turn = rng.uniform(-0.09, 0.09)
        for k in range(steps):
            a += turn + rng.normal(0, 0.18)
            nx, ny = x + math.cos(a) * step, y + math.sin(a) * step
            if math.hypot(nx - cx, ny - cy) > radius * 0.97:
                break
            wk = max(w * (1.0 - 0.5 * k / steps), size * 0.006) * ss
            draw.line([(x * ss, y * ss), (nx * ss, ny * ss)], fill=255, width=max(1, int(round(wk))))
            r = wk / 2
            draw.ellipse([nx * ss - r, ny * ss - r, nx * ss + r, ny * ss + r], fill=255)
            if depth < 2 and k > 2 and rng.random() < 0.1:
                side = 1.0 if rng.random() < 0.5 else -1.0
                stack.append((nx, ny, a + side * rng.uniform(0.5, 1.0), w * 0.65, steps - k, depth + 1))
            x, y = nx, ny
    small = layer.reduce(ss)
    return np.asarray(small, dtype=np.float32) / 255.0


def _blob_shape(
        rng: np.random.Generator,
        r: float,
        parts: int,
        irregular: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A lesion shape in a local patch: (bool mask, float 'depth' in [0, 1], 1 at the centre).

    A union of ``parts`` rotated ellipses around the centre (``irregular`` scales their offsets).
    """
    half = int(math.ceil(r * (1.0 + 2.0 * irregular) + 2))
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    depth = np.zeros_like(xx)
    for p in range(parts):
        a = r * rng.uniform(0.6, 1.0)
        b = a * rng.uniform(0.45, 1.0)
        th = rng.uniform(0, math.pi)
        ox, oy = (0.0, 0.0) if p == 0 else rng.normal(0, r * irregular, size=2)
        dx, dy = xx - ox, yy - oy
        u = (dx * math.cos(th) + dy * math.sin(th)) / a
        v = (-dx * math.sin(th) + dy * math.cos(th)) / b
        depth = np.maximum(depth, 1.0 - np.sqrt(u * u + v * v))
    shape = depth > 0
    if not shape.any():
        shape[half, half] = True
        depth[half, half] = 1.0
    return shape, np.clip(depth, 0, 1)


def _place(
        rng: np.random.Generator,
        extent: int,
        centre: tuple[float, float],
        radius: float,
        avoid: list[tuple[float, float, float]],
) -> tuple[float, float] | None:
    """A random position inside the fundus, away from ``avoid`` circles (x, y, r)."""
    for _ in range(40):
        rho = radius * 0.8 * math.sqrt(rng.random())
        phi = rng.uniform(0, 2 * math.pi)
        x, y = centre[0] + rho * math.cos(phi), centre[1] + rho * math.sin(phi)
        if all(math.hypot(x - ax, y - ay) > ar + extent + 1 for ax, ay, ar in avoid):
            return x, y
    return None


def _paint_lesion(
        img: np.ndarray,
        mask: np.ndarray,
        rng: np.random.Generator,
        kind: str,
        r: float,
        xy: tuple[float, float],
        contrast: float,
) -> tuple[int, int, int, int] | None:
    """Blend one lesion into ``img`` (3 x S x S, only on its shape's pixels) and mark it in ``mask``."""
    size = img.shape[1]
    if kind == 'red':
        shape, depth = _blob_shape(rng, r, parts=int(rng.choice([1, 1, 2, 3])), irregular=rng.uniform(0.2, 0.6))
        colour = np.array([0.36, 0.05, 0.04], np.float32) * np.float32(rng.uniform(0.7, 1.2))
        strength = rng.uniform(0.6, 0.95)
    else:
        shape, depth = _blob_shape(rng, r, parts=int(rng.integers(2, 5)), irregular=rng.uniform(0.5, 0.9))
        colour = np.array([0.98, 0.86, 0.38], np.float32) * np.float32(rng.uniform(0.9, 1.05))
        colour[2] *= np.float32(rng.uniform(0.7, 1.2))
        strength = rng.uniform(0.5, 0.85)
    half = shape.shape[0] // 2
    cx, cy = int(round(xy[0])), int(round(xy[1]))
    y0, x0 = cy - half, cx - half
    # clip the patch to the image (lesions are placed well inside, this is only a guard)
    py0, px0 = max(0, -y0), max(0, -x0)
    py1 = shape.shape[0] - max(0, y0 + shape.shape[0] - size)
    px1 = shape.shape[1] - max(0, x0 + shape.shape[1] - size)
    shape, depth = shape[py0:py1, px0:px1], depth[py0:py1, px0:px1]
    y0, x0 = y0 + py0, x0 + px0
    if not shape.any():
        return None
    alpha = np.clip(contrast * strength * (0.7 + 0.3 * np.sqrt(depth)), 0.0, 1.0).astype(np.float32)
    alpha = np.where(shape, alpha, np.float32(0))
    region = img[:, y0:y0 + shape.shape[0], x0:x0 + shape.shape[1]]
    region *= 1 - alpha
    region += alpha * colour.reshape(3, 1, 1)
    mask[y0:y0 + shape.shape[0], x0:x0 + shape.shape[1]] |= shape
    ys, xs = np.nonzero(shape)
    return int(x0 + xs.min()), int(y0 + ys.min()), int(x0 + xs.max() + 1), int(y0 + ys.max() + 1)


def _draw_tag(img: np.ndarray, rng: np.random.Generator, corner: str) -> list[int]:
    """A small burned-in, text-like tag ('ID' + two random digits) at ``corner``; returns its box."""
    size = img.shape[1]
    px = max(1, size // 128)
    text = 'ID' + ''.join(str(d) for d in rng.integers(0, 10, size=2))
    tag_w, tag_h = (4 * len(text) - 1) * px, 5 * px
    m = max(2, size // 48)
    x0 = {'left': m, 'right': size - m - tag_w}.get(corner.split('_')[-1], (size - tag_w) // 2)
    y0 = {'top': m, 'bottom': size - m - tag_h}.get(corner.split('_')[0], (size - tag_h) // 2)
    grey = np.float32(rng.uniform(0.8, 0.95))
    for i, ch in enumerate(text):
        for row, bits in enumerate(_GLYPHS[ch]):
            for col in range(3):
                if bits >> (2 - col) & 1:
                    y, x = y0 + row * px, x0 + (4 * i + col) * px
                    img[:, y:y + px, x:x + px] = grey
    return [int(x0), int(y0), int(x0 + tag_w), int(y0 + tag_h)]


def _render(
        seed: int,
        index: int,
        size: int,
        n_red: int,
        n_bright: int,
        contrast: float,
        noise: float,
        tag_corner: str | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One image: (uint8 S x S x 3, bool S x S mask, manifest details)."""
    rng = np.random.Generator(np.random.PCG64([int(seed), int(index)]))
    s = float(size)
    yy, xx = _grid(size)

    # fundus disc with a soft rim and vignetting. Channel planes (3 x S x S) and in-place updates keep
    # every temporary an S x S array: ~3x faster than H x W x 3 broadcasting at 128 px.
    cx, cy = s / 2 + rng.normal(0, 0.015 * s), s / 2 + rng.normal(0, 0.015 * s)
    radius = s * rng.uniform(0.43, 0.47)
    ux, uy = (xx - np.float32(cx)) / np.float32(radius), (yy - np.float32(cy)) / np.float32(radius)
    disc = np.sqrt(ux * ux + uy * uy)
    disc = np.clip((1.0 - disc) * np.float32(radius / 1.5), 0.0, 1.0)
    lx, ly = rng.normal(0, 0.15, size=2)  # illumination centre offset
    lum = (ux - np.float32(lx)) ** 2 + (uy - np.float32(ly)) ** 2
    lum *= -np.float32(rng.uniform(0.3, 0.5))
    lum += 1.0
    lum *= 1.0 + np.float32(0.07 * noise) * _smooth_noise(rng, 5, size) + np.float32(0.035 * noise) * _smooth_noise(
        rng, 13, size
    )
    np.clip(lum, 0.05, 1.3, out=lum)
    base = np.array([rng.uniform(0.72, 0.86), rng.uniform(0.27, 0.38), rng.uniform(0.07, 0.14)], np.float32)

    # fovea: a broad darker spot roughly opposite the optic disc
    od_phi = rng.uniform(0, 2 * math.pi)
    od_rho = radius * rng.uniform(0.3, 0.6)
    odx, ody = cx + od_rho * math.cos(od_phi), cy + od_rho * math.sin(od_phi)
    fx = cx - 0.35 * od_rho * math.cos(od_phi) + rng.normal(0, 0.03 * s)
    fy = cy - 0.35 * od_rho * math.sin(od_phi) + rng.normal(0, 0.03 * s)
    fr = s * rng.uniform(0.08, 0.12)
    fovea = np.exp(-((xx - np.float32(fx)) ** 2 + (yy - np.float32(fy)) ** 2) / np.float32(2 * fr * fr))
    lum *= 1.0 - np.float32(rng.uniform(0.15, 0.3)) * fovea

    # vessels from the optic disc
    vessels = _draw_vessels(rng, size, (odx, ody), (cx, cy), radius)
    vessels *= np.float32(rng.uniform(0.4, 0.6))

    # optic disc: bright, yellowish, flat-topped, with a brighter cup
    od_r = s * rng.uniform(0.065, 0.09)
    r2 = ((xx - np.float32(odx)) ** 2 + (yy - np.float32(ody)) ** 2) / np.float32(od_r * od_r)
    od_a = np.exp(-(r2 * r2)) * np.float32(rng.uniform(0.75, 0.95)) + np.exp(-r2 / np.float32(0.12)) * np.float32(0.4)
    np.clip(od_a, 0, 1, out=od_a)
    od_col = np.array([1.0, rng.uniform(0.85, 0.95), rng.uniform(0.55, 0.7)], np.float32)
    vessel_col = (0.55, 0.75, 0.7)
    img = np.empty((3, size, size), np.float32)
    keep = 1.0 - od_a
    for c in range(3):
        plane = img[c]
        np.multiply(vessels, np.float32(-vessel_col[c]), out=plane)
        plane += 1.0
        plane *= lum
        plane *= keep * base[c]
        plane += od_a * od_col[c]

    # lesions, away from the optic disc and from each other
    mask = np.zeros((size, size), dtype=bool)
    lesions: list[_Lesion] = []
    avoid = [(odx, ody, od_r * 1.4)]
    kinds = ['red'] * n_red + ['bright'] * n_bright
    for kind in kinds:
        r = s * (rng.uniform(0.016, 0.034) if kind == 'red' else rng.uniform(0.016, 0.034))
        extent = int(math.ceil(r * 2.2 + 2))
        xy = _place(rng, extent, (cx, cy), radius, avoid)
        if xy is None:  # crowded: put it anywhere inside (it may touch another lesion)
            xy = _place(rng, extent, (cx, cy), radius, [(odx, ody, od_r * 1.4)]) or (cx, cy)
        box = _paint_lesion(img, mask, rng, kind, r, xy, contrast)
        if box is not None:
            lesions.append(_Lesion(kind, box))
            avoid.append((xy[0], xy[1], float(extent)))

    # sensor noise, black outside the disc
    sigma = np.float32(0.012 * noise)
    for c in range(3):
        plane = img[c]
        plane += rng.standard_normal((size, size), dtype=np.float32) * sigma
        plane *= disc
    details: dict[str, Any] = {
        'lesions': [les.to_dict() for les in lesions],
        'optic_disc': {'center': [round(odx, 2), round(ody, 2)], 'radius': round(od_r, 2)},
    }
    if tag_corner is not None:
        details['shortcut_box'] = _draw_tag(img, rng, tag_corner)
    out = np.empty((size, size, 3), np.uint8)
    for c in range(3):
        out[..., c] = np.clip(img[c] * 255.0 + 0.5, 0, 255)
    return out, mask, details


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
            raise UsageError("--classes cannot be combined with --ordinal (its classes are grade_0..grade_3).")
        names = list(ORDINAL_CLASSES)
    else:
        names = [c.strip() for c in classes if c.strip()]
        unknown = [c for c in names if c not in LESION_KINDS]
        if unknown:
            raise UsageError(f"--classes {unknown[0]!r} is not one of {', '.join(LESION_KINDS)}.")
        if len(set(names)) != len(names) or len(names) < 2:
            raise UsageError(f"--classes needs at least two different classes, got {', '.join(names) or 'none'}.")
    if size < 32:
        raise UsageError(f"--size {size} is too small; use at least 32 pixels.")
    if n < len(names):
        raise UsageError(f"--n {n} is below the number of classes ({len(names)}); ask for more images.")
    if not contrast > 0:
        raise UsageError(f"--contrast {contrast} must be positive (1.0 is the default lesion contrast).")
    if not noise >= 0:
        raise UsageError(f"--noise {noise} must be zero or positive (1.0 is the default).")
    if len(splits) != 3 or min(splits) < 0 or splits[0] <= 0 or abs(sum(splits) - 1.0) > 1e-6:
        raise UsageError(f"splits {tuple(splits)} must be three non-negative fractions (train > 0) summing to 1.")
    return names


def _split_of(j: int, n_class: int, splits: Sequence[float]) -> str:
    """Split of the j-th image of a class with ``n_class`` images (train first, then val, then test)."""
    n_train = max(1, int(round(n_class * splits[0])))
    n_val = int(round(n_class * splits[1]))
    if j < n_train:
        return 'train'
    return 'val' if j < n_train + n_val else 'test'


def _remove_previous(out: Path) -> None:
    """With --force: delete the files a previous run listed in its manifest (nothing else)."""
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
        img, mask, details = _render(seed, jb.index, size, jb.n_red, jb.n_bright, contrast, noise, jb.tag)
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
    k = len(names)
    width = max(5, len(str(n - 1)))
    corners = {name: _CORNERS[i % len(_CORNERS)] for i, name in enumerate(names)}
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
        tag = corners[name] if shortcut and split == 'train' else None
        rel = f'{split}/{name}/{i:0{width}d}.png'
        jobs.append(_Job(i, rel, split, name, label, n_red, n_bright, tag))
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
