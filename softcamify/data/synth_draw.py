"""Drawing one synthetic fundus-like image with lesions, its exact lesion mask and its details.

The pixels behind :func:`softcamify.data.synth.make_lesions` (which plans, writes and describes the
dataset): a textured disc with vignetting, vessels, an optic disc and a fovea, lesions blended onto it
and marked in the mask from the same shapes, and the optional shortcut tag. Every image comes from its
own ``numpy.random.Generator(PCG64)`` seeded with ``(seed, index)``. numpy and Pillow only (no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["render"]

# 3x5 bitmap glyphs for the shortcut tag (rows top to bottom, 3 bits each).
_GLYPHS = {
    "I": (0b111, 0b010, 0b010, 0b010, 0b111),
    "D": (0b110, 0b101, 0b101, 0b101, 0b110),
    "R": (0b110, 0b101, 0b110, 0b101, 0b101),
    "L": (0b100, 0b100, 0b100, 0b100, 0b111),
    "0": (0b111, 0b101, 0b101, 0b101, 0b111),
    "1": (0b010, 0b110, 0b010, 0b010, 0b111),
    "2": (0b111, 0b001, 0b111, 0b100, 0b111),
    "3": (0b111, 0b001, 0b011, 0b001, 0b111),
    "4": (0b101, 0b101, 0b111, 0b001, 0b001),
    "5": (0b111, 0b100, 0b111, 0b001, 0b111),
    "6": (0b111, 0b100, 0b111, 0b101, 0b111),
    "7": (0b111, 0b001, 0b010, 0b010, 0b010),
    "8": (0b111, 0b101, 0b111, 0b101, 0b111),
    "9": (0b111, 0b101, 0b111, 0b001, 0b111),
}


@dataclass
class _Lesion:
    kind: str  # 'red' or 'bright'
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "box": list(self.box)}


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
    return np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.Resampling.BICUBIC))


def _draw_vessels(
    rng: np.random.Generator,
    size: int,
    origin: tuple[float, float],
    centre: tuple[float, float],
    radius: float,
) -> np.ndarray:
    """Branching dark vessels leaving the optic disc: an S x S float32 alpha in [0, 1]."""
    ss = 2  # supersampling for antialiased lines
    layer = Image.new("L", (size * ss, size * ss), 0)
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
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
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
    if kind == "red":
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
    region = img[:, y0 : y0 + shape.shape[0], x0 : x0 + shape.shape[1]]
    region *= 1 - alpha
    region += alpha * colour.reshape(3, 1, 1)
    mask[y0 : y0 + shape.shape[0], x0 : x0 + shape.shape[1]] |= shape
    ys, xs = np.nonzero(shape)
    return int(x0 + xs.min()), int(y0 + ys.min()), int(x0 + xs.max() + 1), int(y0 + ys.max() + 1)


def _draw_tag(img: np.ndarray, rng: np.random.Generator, corner: str) -> list[int]:
    """A small burned-in, text-like tag ('ID' + two random digits) at ``corner``; returns its box."""
    size = img.shape[1]
    px = max(1, size // 128)
    text = "ID" + "".join(str(d) for d in rng.integers(0, 10, size=2))
    tag_w, tag_h = (4 * len(text) - 1) * px, 5 * px
    m = max(2, size // 48)
    x0 = {"left": m, "right": size - m - tag_w}.get(corner.split("_")[-1], (size - tag_w) // 2)
    y0 = {"top": m, "bottom": size - m - tag_h}.get(corner.split("_")[0], (size - tag_h) // 2)
    grey = np.float32(rng.uniform(0.8, 0.95))
    for i, ch in enumerate(text):
        for row, bits in enumerate(_GLYPHS[ch]):
            for col in range(3):
                if bits >> (2 - col) & 1:
                    y, x = y0 + row * px, x0 + (4 * i + col) * px
                    img[:, y : y + px, x : x + px] = grey
    return [int(x0), int(y0), int(x0 + tag_w), int(y0 + tag_h)]


def _paint_fundus(
    rng: np.random.Generator,
    size: int,
    noise: float,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], tuple[float, float, float]]:
    """The lesion-free image: (3 x S x S float32, S x S disc alpha, (cx, cy, radius) of the fundus,
    (x, y, radius) of the optic disc)."""
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
    lum *= (
        1.0
        + np.float32(0.07 * noise) * _smooth_noise(rng, 5, size)
        + np.float32(0.035 * noise) * _smooth_noise(rng, 13, size)
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
    return img, disc, (cx, cy, radius), (odx, ody, od_r)


def _paint_lesions(
    img: np.ndarray,
    rng: np.random.Generator,
    n_red: int,
    n_bright: int,
    contrast: float,
    fundus: tuple[float, float, float],
    optic_disc: tuple[float, float, float],
) -> tuple[np.ndarray, list[_Lesion]]:
    """Blend the lesions into ``img``: (bool S x S mask, the lesions drawn)."""
    size = img.shape[1]
    s = float(size)
    cx, cy, radius = fundus
    odx, ody, od_r = optic_disc
    # away from the optic disc and from each other
    mask = np.zeros((size, size), dtype=bool)
    lesions: list[_Lesion] = []
    avoid = [(odx, ody, od_r * 1.4)]
    kinds = ["red"] * n_red + ["bright"] * n_bright
    for kind in kinds:
        r = s * (rng.uniform(0.016, 0.034) if kind == "red" else rng.uniform(0.016, 0.034))
        extent = int(math.ceil(r * 2.2 + 2))
        xy = _place(rng, extent, (cx, cy), radius, avoid)
        if xy is None:  # crowded: put it anywhere inside (it may touch another lesion)
            xy = _place(rng, extent, (cx, cy), radius, [(odx, ody, od_r * 1.4)]) or (cx, cy)
        box = _paint_lesion(img, mask, rng, kind, r, xy, contrast)
        if box is not None:
            lesions.append(_Lesion(kind, box))
            avoid.append((xy[0], xy[1], float(extent)))
    return mask, lesions


def render(
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
    img, disc, fundus, (odx, ody, od_r) = _paint_fundus(rng, size, noise)
    mask, lesions = _paint_lesions(img, rng, n_red, n_bright, contrast, fundus, (odx, ody, od_r))
    # sensor noise, black outside the disc
    sigma = np.float32(0.012 * noise)
    for c in range(3):
        plane = img[c]
        plane += rng.standard_normal((size, size), dtype=np.float32) * sigma
        plane *= disc
    details: dict[str, Any] = {
        "lesions": [les.to_dict() for les in lesions],
        "optic_disc": {"center": [round(odx, 2), round(ody, 2)], "radius": round(od_r, 2)},
    }
    if tag_corner is not None:
        details["shortcut_box"] = _draw_tag(img, rng, tag_corner)
    out = np.empty((size, size, 3), np.uint8)
    for c in range(3):
        out[..., c] = np.clip(img[c] * 255.0 + 0.5, 0, 255)
    return out, mask, details
