"""Write explanations: raw maps, the input view, overlays, colour scales, a gallery and a manifest."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..evaluation.metrics import json_safe
from ..runtime import Runtime
from .compute import Explanation
from .inputs import safe_name
from .view import input_view


class ExplanationWriter:
    """Writes explanations into ``out_dir`` as they come (:meth:`add`), then the gallery and manifest
    (:meth:`finish`). The folder is checked (empty or new unless ``force``) when the writer is made,
    before any model is loaded."""

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        force: bool = False,
        alpha: float = 0.5,
        cmap: str = "RdBu_r",
        html: bool = True,
        title: str | None = None,
    ):
        from ..io import check_output_dir

        self.out = check_output_dir(out_dir, force=force)
        self.force, self.alpha, self.cmap, self.html, self.title = force, alpha, cmap, html, title
        self._ready = False

    def add(self, ex: Explanation, image: Image.Image, rt: Runtime) -> None:
        """Write one explanation's maps, input view, overlays and colour scale; sets ``ex.files``."""
        from ..io import make_output_dir

        if not self._ready:
            for sub in ("maps", "images", "overlays"):
                make_output_dir(self.out / sub)
            self._ready = True
        _write_explanation(self.out, ex, image, rt, self.alpha, self.cmap, self.force)

    def finish(self, results: Sequence[Explanation], rt: Runtime, selection: Any, positive: bool) -> None:
        """``index.html`` (unless ``html=False``) and ``manifest.json``."""
        _write_index(self.out, results, rt, selection, positive, self.cmap, self.force, self.html, self.title)


def _write_explanation(
    out: Path, ex: Explanation, image: Image.Image, rt: Runtime, alpha: float, cmap: str, force: bool
) -> None:
    from ..io import atomic_output, make_output_dir
    from ..render import colorbar, overlay, save_png, scale_maps

    name = ex.name
    files: dict[str, Any] = {"maps": f"maps/{name}.npy", "image": f"images/{name}.png"}
    with atomic_output(out / files["maps"], force=force) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, ex.maps)
    view = input_view(image, rt.data_config)
    make_output_dir(out / "overlays" / name)
    save_png(view, out / files["image"], force=force)
    scaled, _, _ = scale_maps(ex.maps, positive=ex.positive)
    overlays = {}
    for c in ex.classes:
        rel = f"overlays/{name}/{c}_{safe_name(rt.class_names[c], 40)}.png"
        save_png(overlay(view, scaled[c], alpha=alpha, cmap=cmap), out / rel, force=force)
        overlays[rt.class_names[c]] = rel
    files["overlays"] = overlays
    files["colorbar"] = f"overlays/{name}/scale.png"
    save_png(colorbar(ex.vmin, ex.vmax, cmap), out / files["colorbar"], force=force)
    ex.files = files


def _manifest(results: Sequence[Explanation], rt: Runtime, selection: Any, positive: bool, cmap: str) -> dict:
    from .._version import __version__

    grid = list(results[0].evidence_grid) if results else None
    return json_safe(
        {
            "softcamify_version": __version__,
            "model": rt.description,
            "backend": rt.kind,
            "class_names": rt.class_names,
            "data_config": rt.data_config,
            "evidence_grid": grid,
            "classes": selection if isinstance(selection, str) else [rt.class_names[c] for c in selection],
            "positive": positive,
            "cmap": cmap,
            "maps_format": "npy float32 K×h×w, signed, bias included; mean over h, w = logits",
            "count": len(results),
            "images": [r.to_dict() for r in results],
        }
    )


def _write_index(
    out: Path,
    results: Sequence[Explanation],
    rt: Runtime,
    selection: Any,
    positive: bool,
    cmap: str,
    force: bool,
    html: bool,
    title: str | None,
) -> None:
    import json

    from .. import report
    from ..io import write_text_atomic

    manifest = _manifest(results, rt, selection, positive, cmap)
    if html:
        items = []
        for r in results:
            ovs = [
                {"src": rel, "caption": f"{cls} (logit {float(r.logits[rt.class_names.index(cls)]):.3g})"}
                for cls, rel in r.files.get("overlays", {}).items()
            ]
            ovs.append({"src": r.files["colorbar"], "caption": "colour scale"})
            sign = "positive evidence, 0 … " if positive else "evidence, −"
            items.append(
                {
                    "title": r.source if not r.source.startswith("<") else r.name,
                    "image": r.files["image"],
                    "prediction": r.predicted_class,
                    "probability": r.probability,
                    "overlays": ovs,
                    "note": f"shared colour scale ({sign}{r.vmax:.3g} … +{r.vmax:.3g}) for all classes",
                }
            )
        legend = (
            "Red: evidence for the class; blue: evidence against it; white: none. "
            if not positive
            else "Brighter: more positive evidence for the class (negative evidence hidden). "
        )
        page = report.html_page(
            title or "softcamify explain",
            [
                report.paragraph(
                    f"{len(results)} image(s), model {rt.description or rt.kind} ({rt.kind}), "
                    f"{rt.num_classes} classes, evidence grid "
                    f"{'×'.join(str(v) for v in (manifest['evidence_grid'] or []))}."
                ),
                report.paragraph(
                    legend + "Maps are upsampled bilinearly; each image's classes share one colour scale.",
                    note=True,
                ),
                report.gallery(items),
            ],
            footer=f"softcamify {manifest['softcamify_version']}",
        )
        report.write_report(out / "index.html", page, force=force)
        manifest["html"] = "index.html"
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n", force=force)
