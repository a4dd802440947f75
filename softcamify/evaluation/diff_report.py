"""Writing a :class:`~softcamify.evaluation.diff.DiffReport`: ``index.html`` (one self-contained page: tables,
the most-changed images side by side as inline PNGs, no network), ``diff.json``, ``per_image.json`` and the
gates as JUnit XML. Torch-free."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .. import images as _images
from .. import report as R
from ..explanations.view import input_view
from ..io import check_output_dir, check_output_path, make_output_dir, write_text_atomic
from ..render import overlay, scale_maps
from ..runtime import Runtime
from . import metrics as M
from .gates import write_junit
from .report import gates_section

__all__ = ["check_outputs", "write_diff"]

_AGREEMENT_LABELS = {
    "rank_corr": "rank correlation ↑",
    "topk_iou": "top-k IoU ↑",
    "peak_shift_cells": "peak shift (cells)",
    "peak_shift": "peak shift (share of grid)",
    "sparsity_change": "Δ sparsity (new − old)",
}


def check_outputs(
    out_dir: str | os.PathLike | None, junit: str | os.PathLike | None, force: bool
) -> tuple[Path | None, Path | None]:
    """The report folder and the JUnit file, checked before any work (nothing overwritten without force)."""
    out = check_output_dir(out_dir, force=force) if out_dir is not None else None
    if junit is None:
        return out, None
    path = Path(junit)
    if out is not None and path.parent.resolve() == out.resolve():
        return out, path  # inside the report folder, checked with it
    return out, check_output_path(path, force=force)


def write_diff(
    report: Any, old: Runtime, new: Runtime, out: Path | None, junit: Path | None, force: bool = False
) -> None:
    """Write the page and JSON files into ``out`` and the JUnit file to ``junit`` (either may be None)."""
    if out is not None:
        make_output_dir(out)
        report.report = str(out / "index.html")
    if junit is not None:
        report.junit = str(junit)
    if out is not None:
        R.write_report(out / "index.html", page(report, old, new), force=force)
        write_text_atomic(out / "diff.json", json.dumps(report.to_dict(), indent=2) + "\n", force=force)
        write_text_atomic(out / "per_image.json", json.dumps(report.per_image, indent=2) + "\n", force=force)
    if junit is not None:
        props = {"old": report.old["model"], "new": report.new["model"], "data": report.data["source"]}
        seconds = float(report.settings.get("seconds", 0.0))
        write_junit(report.gates, junit, force=force, properties=props, seconds=seconds, suite="softcamify diff")


def page(report: Any, old: Runtime, new: Runtime) -> str:
    """The HTML page of a diff."""
    parts = [_models_section(report)]
    if report.gates:
        parts.append(gates_section(report.gates, "Gates"))
    parts += [_predictions_section(report), _agreement_section(report), _shortcut_section(report)]
    if report.localization:
        parts.append(_localization_section(report))
    if report.examples:
        parts.append(_examples_section(report, old, new))
    return R.html_page(
        "softcamify diff",
        parts,
        subtitle=f"OLD {report.old['model']} → NEW {report.new['model']}; {report.data['source']}",
        footer=f"compared in {report.settings.get('seconds', 0):.1f} s",
    )


def _models_section(report: Any) -> str:
    rows = [
        [key.replace("_", " "), _show(report.old[key]), _show(report.new[key])]
        for key in ("model", "backend", "architecture", "input_size", "evidence_grid")
    ]
    grid = report.settings["common_grid"]
    return R.section(
        "Models and data",
        R.table(["", "OLD", "NEW"], rows),
        R.paragraph(
            f"{report.data['images']} images ({'labelled' if report.data['labelled'] else 'no labels'}); "
            f"maps compared on a common {grid[0]}×{grid[1]} grid ({report.settings['resampling']})."
        ),
        *[R.paragraph(n, note=True) for n in report.notes],
    )


def _show(v: Any) -> str:
    if isinstance(v, list):
        return "×".join(str(x) for x in v)
    return str(v)


def _predictions_section(report: Any) -> str:
    p = report.predictions
    rows: list[list[Any]] = [
        ["top-1 flips", p["flips"]],
        ["flip rate", p["flip_rate"]],
        ["max |Δ probability|", p["max_prob_change"]],
        ["mean over images of max |Δ probability|", p["mean_prob_change"]],
    ]
    parts = [R.table(["", "value"], rows)]
    if "accuracy" in p:
        acc = [[k.replace("_", " "), p[k]["old"], p[k]["new"]] for k in ("accuracy", "balanced_accuracy")]
        parts.append(R.table(["", "OLD", "NEW"], acc, caption="Accuracy on the labels"))
    if p["flipped"]:
        flips = [
            [Path(f["path"]).name, f.get("label", "—"), f["old"], f["old_probability"], f["new"], f["new_probability"]]
            for f in p["flipped"][:100]
        ]
        more = f" (first 100 of {len(p['flipped'])})" if len(p["flipped"]) > 100 else ""
        parts.append(R.table(["image", "label", "OLD", "p", "NEW", "p"], flips, caption="Flipped images" + more))
    return R.section("Predictions", *parts)


def _agreement_section(report: Any) -> str:
    a = report.agreement
    keys = list(_AGREEMENT_LABELS)
    rows = [["all classes", *[a["overall"][k] for k in keys]]]
    rows += [[c["class"], *[c[k] for k in keys]] for c in a["per_class"]]
    return R.section(
        "Evidence agreement",
        R.table(["class", *_AGREEMENT_LABELS.values()], rows, caption="Mean over images"),
        R.paragraph(
            f"Per image and class, on the common {a['grid'][0]}×{a['grid'][1]} grid: Spearman rank correlation "
            f"of the two maps; IoU of their top {a['topk']} cells; distance between their maxima in cells and "
            "divided by the grid's diagonal; change of the sparsity of the positive evidence (share of cells "
            "under 1 % of the peak).",
            note=True,
        ),
    )


def _shortcut_section(report: Any) -> str:
    s = report.settings
    rows = []
    for row in report.shortcuts:
        cells = []
        for side in ("old", "new"):
            r = row[side]
            cells += [r["share"], r["lift"], r["images"], "FLAG" if r["flagged"] else ""]
        rows.append([row["class"], *cells])
    headers = ["class", "OLD share", "× uniform", "images", "", "NEW share", "× uniform", "images", ""]
    return R.section(
        "Shortcut flags (fixed-region evidence)",
        R.table(headers, rows),
        R.paragraph(
            f"Share of an image's positive evidence for its class that falls in the class's fixed region: the "
            f"{s['shortcut_region_cells']} cells ({s['shortcut_region']:.0%} of the grid) where that evidence "
            f"gathers on average over the class's images. Evidence spread evenly would give "
            f"{s['shortcut_region_cells'] / (s['common_grid'][0] * s['common_grid'][1]):.3f}; flagged at "
            f"{s['shortcut_threshold']:g} or more over at least {s['shortcut_min_images']} images: the model "
            "looks at the same place in every image (a marker, text, a ruler), whatever the image shows.",
            note=True,
        ),
    )


def _localization_section(report: Any) -> str:
    loc = report.localization
    rows = [[k.replace("_", " "), v["old"], v["new"]] for k, v in loc["metrics"].items()]
    return R.section(
        "Localization against the masks (true class)",
        R.table(["metric", "OLD", "NEW"], rows, caption=f"Mean over {loc['images']} annotated images"),
    )


def _png_uri(img: Image.Image, width: int) -> str:
    im = img.convert("RGB")
    if im.width > width:
        im = im.resize((width, max(1, round(im.height * width / im.width))), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(img: Image.Image, caption: str, width: int = 200) -> str:
    alt = html.escape(caption, quote=True)
    return R.figure(f'<img src="{_png_uri(img, width)}" alt="{alt}" width="{width}">', caption)


def _examples_section(report: Any, old: Runtime, new: Runtime) -> str:
    cards = ['<div class="gallery">']
    for ex in report.examples:
        row = ex["row"]
        image = _images.open_image(ex["path"], channels=old.input_size[0])
        view_old = input_view(image, old.data_config)
        view_new = view_old if old.data_config == new.data_config else input_view(image, new.data_config)
        # one colour scale for both maps, so a weaker map reads weaker
        scaled, _, _ = scale_maps(_stack(ex["old_map"], ex["new_map"]))
        figs = [
            _img(view_old, "image"),
            _img(overlay(view_old, scaled[0]), f"OLD: {ex['class']}"),
            _img(overlay(view_new, scaled[1]), f"NEW: {ex['class']}"),
        ]
        rho = row.get("rank_corr")
        text = (
            f"OLD predicts <b>{html.escape(row['old'])}</b>, NEW <b>{html.escape(row['new'])}</b>"
            + (f", true <b>{html.escape(row['label'])}</b>" if "label" in row else "")
            + f"; rank corr {R.format_value(rho)}, top-k IoU {R.format_value(row.get('topk_iou'))}, "
            f"max |Δp| {R.format_value(row['max_prob_change'])}"
        )
        cls = "card bad" if row["flipped"] else "card"
        cards.append(
            f'<div class="{cls}"><div class="title">{html.escape(Path(ex["path"]).name)}</div>'
            f'<div class="overlays">{"".join(figs)}</div><div class="pred">{text}</div></div>'
        )
    cards.append("</div>")
    return R.section(
        "Most-changed images",
        R.paragraph(
            "Flipped images first, then by the lowest rank correlation (mean over classes). Maps of the true "
            "class (else OLD's prediction), both on one signed colour scale: red for, blue against.",
            note=True,
        ),
        "\n".join(cards),
    )


def _stack(a: Any, b: Any) -> np.ndarray:
    """The two maps as one 2×h×w stack (at the finer grid's size when they differ)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        size = (max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1]))
        a, b = M.upsample(a, size), M.upsample(b, size)
    return np.stack([a, b])
