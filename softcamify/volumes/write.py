"""Writing evidence volumes: NIfTI in the scan's geometry, tri-planar PNG overlays, an HTML slice viewer.

Compute apart from writing: :func:`evidence_file_bytes`, :func:`triplanar` and :func:`slice_viewer_html` build
the bytes, the picture and the page; :func:`write_evidence`, :func:`write_triplanar` and
:func:`write_slice_viewer` write them atomically (:mod:`softcamify.io`), never over an existing file without
``force``.

The evidence given here is already in the scan's geometry (:func:`softcamify.volumes.evidence_to_scan`):
an array of the scan's shape, in the file's voxel order, written with the scan's affine, so it opens as an
overlay on the scan in 3D Slicer, ITK-SNAP or FSLeyes. Pictures are shown in the usual radiological views
whatever the file's voxel order (read from the affine): axial (anterior up), coronal and sagittal
(superior up), the patient's right on the left of axial and coronal views, anterior on the left of sagittal
ones, each voxel drawn with its physical aspect ratio. Only the pictures are reoriented, never the files.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .. import render, report
from ..errors import InputError, UsageError
from ..io import check_output_path, write_bytes_atomic
from .io import Volume, VolumeGeometry, axis_codes, is_nifti_file, require_nibabel

__all__ = [
    "VIEWS",
    "strongest_voxel",
    "evidence_file_bytes",
    "write_evidence",
    "triplanar",
    "write_triplanar",
    "slice_viewer_html",
    "write_slice_viewer",
    "VolumeOutputs",
    "write_volume_explanation",
]

VIEWS = ("axial", "coronal", "sagittal")
_VIEW_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # the RAS axis each view is a slice of


def _check_pair(scan: Any, evidence: Any, geometry: VolumeGeometry) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scan, dtype=np.float32)
    if s.ndim == 4:
        s = s[0]  # the first channel is shown
    e = np.asarray(evidence, dtype=np.float32)
    if s.shape != tuple(geometry.shape) or e.shape != tuple(geometry.shape):
        raise InputError(
            f"The scan {s.shape} and its evidence {e.shape} must both have the scan's shape {tuple(geometry.shape)}; "
            "map the evidence with evidence_to_scan first."
        )
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(s))):
        raise InputError("The scan or its evidence contains NaN or infinite values.")
    return s, e


def strongest_voxel(evidence: Any) -> tuple[int, int, int]:
    """The voxel (file order) of the largest evidence (the first one on ties)."""
    e = np.asarray(evidence)
    if e.ndim != 3 or e.size == 0:
        raise InputError(f"An evidence volume must be D×H×W, got shape {e.shape}.")
    i, j, k = np.unravel_index(int(np.argmax(e)), e.shape)
    return int(i), int(j), int(k)


# --- files ---------------------------------------------------------------------------------------------------


def evidence_file_bytes(evidence: Any, geometry: VolumeGeometry, fmt: str = "nii.gz") -> bytes:
    """The evidence (``D×H×W``, or ``K×D×H×W`` stored as a 4-D NIfTI with classes on the last axis) as a file
    of format ``nii.gz`` (gzipped, no time stamp), ``nii`` or ``npy``, float32, with the scan's affine."""
    e = np.asarray(evidence, dtype=np.float32)
    if e.shape[-3:] != tuple(geometry.shape) or e.ndim not in (3, 4):
        raise InputError(
            f"Evidence of shape {e.shape} does not have the scan's shape {tuple(geometry.shape)}; map it with "
            "evidence_to_scan first."
        )
    if not np.all(np.isfinite(e)):
        raise InputError("The evidence volume contains NaN or infinite values.")
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(e), allow_pickle=False)
        return buf.getvalue()
    if fmt not in ("nii", "nii.gz"):
        raise UsageError(f"Evidence format {fmt!r} is not one of nii.gz, nii, npy.")
    nib = require_nibabel()
    data = np.moveaxis(e, 0, -1) if e.ndim == 4 else e
    img = nib.Nifti1Image(np.ascontiguousarray(data), np.asarray(geometry.affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"softcamify evidence"
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if fmt == "nii.gz" else raw


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return "nii.gz"
    if name.endswith(".nii"):
        return "nii"
    if name.endswith(".npy"):
        return "npy"
    raise UsageError(f"Evidence file {path} must end with .nii.gz, .nii or .npy.")


def write_evidence(path: str | os.PathLike, evidence: Any, geometry: VolumeGeometry, force: bool = False) -> Path:
    """Write the evidence in the scan's geometry; the format follows the ending (``.nii.gz``, ``.nii``,
    ``.npy``). Atomic; an existing file is replaced only with ``force``."""
    p = Path(path)
    fmt = _format_of(p)
    return write_bytes_atomic(p, evidence_file_bytes(evidence, geometry, fmt), force=force)


# --- pictures ------------------------------------------------------------------------------------------------


def _to_ras(geometry: VolumeGeometry) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """(file axis for R, A, S; whether it runs the other way) from the affine's axis codes."""
    codes = axis_codes(geometry.affine)
    order: list[int] = []
    flips: list[bool] = []
    for pos, neg in (("R", "L"), ("A", "P"), ("S", "I")):
        axis = next(i for i, c in enumerate(codes) if c in (pos, neg))
        order.append(axis)
        flips.append(codes[axis] == neg)
    return (order[0], order[1], order[2]), (flips[0], flips[1], flips[2])


def _ras_view(a: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    order, flips = _to_ras(geometry)
    out = np.transpose(a, order)
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=axis)
    return out


def _ras_index(voxel: Sequence[int], geometry: VolumeGeometry) -> tuple[int, int, int]:
    order, flips = _to_ras(geometry)
    idx = []
    for axis, flip in zip(order, flips, strict=True):
        n = geometry.shape[axis]
        idx.append(n - 1 - int(voxel[axis]) if flip else int(voxel[axis]))
    return idx[0], idx[1], idx[2]


def _slice(ras: np.ndarray, view: str, index: int) -> np.ndarray:
    """The 2-D picture of a RAS-ordered volume for ``view`` at ``index``: rows from superior (anterior for
    axial) down, columns from the patient's right (anterior for sagittal) on."""
    s = np.take(ras, index, axis=_VIEW_AXIS[view])
    return np.ascontiguousarray(s.T[::-1, ::-1])


def _pixel_size(geometry: VolumeGeometry, view: str) -> tuple[float, float]:
    """(row, column) voxel sizes in mm of a view's picture."""
    order, _ = _to_ras(geometry)
    sp = [geometry.spacing[a] for a in order]  # along R, A, S
    rows_cols = {"axial": (sp[1], sp[0]), "coronal": (sp[2], sp[0]), "sagittal": (sp[2], sp[1])}
    return rows_cols[view]


def _grey_range(scan: np.ndarray, window: Sequence[float] | None) -> tuple[float, float]:
    if window is not None:
        return float(window[0]), float(window[1])
    step = max(1, round((scan.size / 2_000_000) ** (1 / 3)))  # about 2 M voxels are plenty for percentiles
    lo, hi = np.percentile(scan[::step, ::step, ::step], [0.5, 99.5])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def _panel(
    scan2d: np.ndarray,
    ev2d: np.ndarray | None,
    grey: tuple[float, float],
    vmax: float,
    pixel: tuple[float, float],
    height: int,
    cmap: str,
    alpha: float,
) -> Image.Image:
    g = np.clip((scan2d - grey[0]) / (grey[1] - grey[0]), 0.0, 1.0)
    g8 = np.round(g * 255.0).astype(np.uint8)
    if ev2d is None or alpha == 0.0:
        pic = Image.fromarray(np.stack([g8] * 3, axis=-1))
    else:
        scaled = ev2d / vmax if vmax > 0 else np.zeros_like(ev2d)
        pic = render.overlay(g8, scaled, alpha=alpha, cmap=cmap, weighted=True)
    rows, cols = scan2d.shape
    aspect = (cols * pixel[1]) / (rows * pixel[0])
    return pic.resize((max(1, int(round(height * aspect))), height), Image.Resampling.BILINEAR)


def triplanar(
    scan: Any,
    evidence: Any,
    geometry: VolumeGeometry,
    voxel: Sequence[int] | None = None,
    window: Sequence[float] | None = None,
    cmap: str = "RdBu_r",
    alpha: float = 0.6,
    height: int = 192,
    title: str | None = None,
) -> Image.Image:
    """Axial, coronal and sagittal slices through ``voxel`` (default: :func:`strongest_voxel`) side by side,
    the evidence over the scan, with a colour bar; a PIL RGB image.

    ``scan``: ``D×H×W`` (or ``C×D×H×W``: the first channel) in the scan's geometry, grey from ``window``
    (e.g. ``(-1000, 400)``) or the 0.5–99.5 percentiles. ``evidence``: ``D×H×W`` of the same shape, one
    colour scale over the whole volume (``max |evidence|``, 0 in the middle of the diverging ``cmap``); the
    overlay's opacity grows with ``|evidence|`` (``alpha`` at the maximum), so voxels without evidence show
    the scan.
    """
    s, e = _check_pair(scan, evidence, geometry)
    if height < 16:
        raise UsageError(f"height must be at least 16 pixels, got {height}.", param="height")
    vox = strongest_voxel(e) if voxel is None else tuple(int(v) for v in voxel)
    if len(vox) != 3 or any(not 0 <= v < n for v, n in zip(vox, geometry.shape, strict=True)):
        raise UsageError(f"voxel {tuple(vox)} is outside the volume {tuple(geometry.shape)}.", param="voxel")
    grey = _grey_range(s, window)
    vmax = float(np.abs(e).max())
    ras_s, ras_e = _ras_view(s, geometry), _ras_view(e, geometry)
    ras_idx = _ras_index(vox, geometry)
    panels = []
    for view in VIEWS:
        i = ras_idx[_VIEW_AXIS[view]]
        panels.append(
            _panel(
                _slice(ras_s, view, i),
                _slice(ras_e, view, i),
                grey,
                vmax,
                _pixel_size(geometry, view),
                height,
                cmap,
                alpha,
            )
        )
    fnt = render.font(13)
    gap, top, bar_h = 8, 36, 40
    head = f"through voxel {vox[0]},{vox[1]},{vox[2]}" + (" (strongest evidence)" if voxel is None else "")
    head = f"{title}: {head}" if title else head
    text_w = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(head, font=fnt))
    width = max(sum(p.width for p in panels) + gap * (len(panels) + 1), text_w + 2 * gap)
    out = Image.new("RGB", (width, top + height + bar_h + 8), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    draw.text((gap, 2), head, fill=(0, 0, 0), font=fnt)
    x = gap
    for view, p in zip(VIEWS, panels, strict=True):
        draw.text((x, top - 16), view, fill=(0, 0, 0), font=fnt)
        out.paste(p, (x, top))
        x += p.width + gap
    bar = render.colorbar(-vmax, vmax, cmap, width=min(256, width - 2 * gap), height=bar_h)
    out.paste(bar, (gap, top + height + 4))
    return out


def write_triplanar(path: str | os.PathLike, picture: Image.Image, force: bool = False) -> Path:
    """Write a :func:`triplanar` picture as PNG, atomically (``force`` to replace a file)."""
    return render.save_png(picture, path, force=force)


# --- the HTML slice viewer -----------------------------------------------------------------------------------

_VIEWER_JS = """
(function () {
  const data = JSON.parse(document.getElementById("softcamify-slices").textContent);
  const overlay = document.getElementById("softcamify-overlay");
  function show(view) {
    const d = data[view];
    const i = Number(document.getElementById("slider-" + view).value);
    document.getElementById("img-" + view).src = overlay.checked ? d.overlay[i] : d.plain[i];
    document.getElementById("label-" + view).textContent = "slice " + d.index[i] + " of " + d.count;
  }
  for (const view of Object.keys(data)) {
    document.getElementById("slider-" + view).addEventListener("input", function () { show(view); });
    show(view);
  }
  overlay.addEventListener("change", function () { for (const view of Object.keys(data)) show(view); });
})();
"""


def _data_uri(picture: Image.Image) -> str:
    buf = io.BytesIO()
    picture.save(buf, format="PNG", compress_level=1)  # a page of ~400 slices: fast, a little larger
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _slice_indices(n: int, start: int, max_slices: int) -> list[int]:
    if n <= max_slices:
        return list(range(n))
    picked = {int(round(v)) for v in np.linspace(0, n - 1, max_slices - 1)} | {start}
    return sorted(picked)


def slice_viewer_html(
    scan: Any,
    evidence: Any,
    geometry: VolumeGeometry,
    title: str = "Evidence volume",
    subtitle: str | None = None,
    window: Sequence[float] | None = None,
    cmap: str = "RdBu_r",
    alpha: float = 0.6,
    height: int = 256,
    max_slices: int = 64,
) -> str:
    """A self-contained HTML page (no network: pictures as data URIs, a few lines of script) with a slider
    per view (axial, coronal, sagittal) to scroll through the slices, the evidence over the scan, and a
    switch to hide the overlay. Each slider starts at the strongest evidence. Views with more than
    ``max_slices`` slices show that many, evenly spaced (the page stays small for a full CT).
    """
    s, e = _check_pair(scan, evidence, geometry)
    if max_slices < 2:
        raise UsageError(f"max_slices must be at least 2, got {max_slices}.", param="max_slices")
    grey = _grey_range(s, window)
    vmax = float(np.abs(e).max())
    vox = strongest_voxel(e)
    ras_s, ras_e = _ras_view(s, geometry), _ras_view(e, geometry)
    ras_idx = _ras_index(vox, geometry)
    data: dict[str, Any] = {}
    blocks = []
    for view in VIEWS:
        axis = _VIEW_AXIS[view]
        n = ras_s.shape[axis]
        indices = _slice_indices(n, ras_idx[axis], max_slices)
        pix = _pixel_size(geometry, view)
        # slices are stored at about twice their rows (the page shows them ``height`` px high, the browser
        # scales): a small scan's page stays small and quick to write
        stored = min(height, max(64, 2 * _slice(ras_s, view, indices[0]).shape[0]))
        plain, over = [], []
        for i in indices:
            s2, e2 = _slice(ras_s, view, i), _slice(ras_e, view, i)
            plain.append(_data_uri(_panel(s2, None, grey, vmax, pix, stored, cmap, 0.0)))
            over.append(_data_uri(_panel(s2, e2, grey, vmax, pix, stored, cmap, alpha)))
        data[view] = {"index": indices, "count": n, "plain": plain, "overlay": over}
        start = indices.index(ras_idx[axis])
        blocks.append(
            f'<figure style="display:inline-block;margin:0 12px 12px 0;vertical-align:top">'
            f'<img id="img-{view}" src="{over[start]}" alt="{view} slice" height="{height}">'
            f'<figcaption><b>{view}</b><br><input type="range" id="slider-{view}" min="0" '
            f'max="{len(indices) - 1}" value="{start}" style="width:100%"><br>'
            f'<span id="label-{view}">slice {ras_idx[axis]} of {n}</span></figcaption></figure>'
        )
    bar = _data_uri(render.colorbar(-vmax, vmax, cmap, width=256, height=40))
    payload = json.dumps(data).replace("</", "<\\/")
    codes = "".join(axis_codes(geometry.affine))
    rows = [
        ["shape (file voxel order)", " × ".join(str(v) for v in geometry.shape)],
        ["voxel size (mm)", " × ".join(f"{v:g}" for v in geometry.spacing)],
        ["orientation (axis codes)", codes],
        ["strongest evidence at voxel", ", ".join(str(v) for v in vox)],
        ["evidence range", f"{float(e.min()):.4g} to {float(e.max()):.4g}"],
    ]
    sections = [
        report.section(
            "Slices",
            '<p><label><input type="checkbox" id="softcamify-overlay" checked> evidence overlay</label></p>',
            "".join(blocks),
            f'<p><img src="{bar}" alt="colour scale" width="256"></p>',
            report.paragraph(
                "Radiological views: the patient's right on the left of axial and coronal slices. Red: evidence "
                "for the class, blue: against it; one colour scale for the whole volume.",
                note=True,
            ),
        ),
        report.section("Geometry", report.table(["", ""], rows)),
        f'<script type="application/json" id="softcamify-slices">{payload}</script>',
        f"<script>{_VIEWER_JS}</script>",
    ]
    return report.html_page(title, sections, subtitle=subtitle)


def write_slice_viewer(path: str | os.PathLike, html_text: str, force: bool = False) -> Path:
    """Write a :func:`slice_viewer_html` page atomically (``force`` to replace a file)."""
    return report.write_report(path, html_text, force=force)


def is_evidence_path(path: str | os.PathLike) -> bool:
    """True for the endings :func:`write_evidence` writes."""
    return is_nifti_file(path) or os.fspath(path).lower().endswith(".npy")


@dataclass(frozen=True)
class VolumeOutputs:
    """The files :func:`write_volume_explanation` wrote for one volume and class."""

    evidence: Path
    triplanar: Path
    viewer: Path | None


def write_volume_explanation(
    prefix: str | os.PathLike,
    volume: Volume,
    evidence: Any,
    title: str | None = None,
    window: Sequence[float] | None = None,
    viewer: bool = True,
    force: bool = False,
) -> VolumeOutputs:
    """The three files of one volume's evidence for one class, beside each other: ``PREFIX.nii.gz`` (the
    evidence in the scan's geometry), ``PREFIX.png`` (:func:`triplanar`) and, with ``viewer``,
    ``PREFIX.html`` (:func:`slice_viewer_html`).

    ``evidence``: ``D×H×W`` in the scan's geometry (:func:`softcamify.volumes.evidence_to_scan`). Every
    destination is checked before the first is written (none is replaced without ``force``); the pictures
    and the page are computed before anything is written.
    """
    base = os.fspath(prefix)
    paths = [Path(base + ".nii.gz"), Path(base + ".png")] + ([Path(base + ".html")] if viewer else [])
    for p in paths:
        check_output_path(p, force=force)
    data = evidence_file_bytes(evidence, volume.geometry)
    picture = triplanar(volume.array, evidence, volume.geometry, window=window, title=title)
    page = (
        slice_viewer_html(volume.array, evidence, volume.geometry, title=title or "Evidence volume", window=window)
        if viewer
        else ""
    )
    write_bytes_atomic(paths[0], data, force=force)
    write_triplanar(paths[1], picture, force=force)
    if viewer:
        write_slice_viewer(paths[2], page, force=force)
    return VolumeOutputs(paths[0], paths[1], paths[2] if viewer else None)
