"""The evaluation report: metric and classification table rows (shared by the CLI's rich tables and the
HTML page), mask outlines on example images, and :func:`write_report`, which writes ``index.html``,
``metrics.json`` and ``per_image.json`` from an :class:`~softcamify.evaluation.EvaluationResult`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .. import report as R
from ..explanations.view import input_view
from ..io import make_output_dir, write_text_atomic
from ..render import overlay, save_png, scale_maps
from ..runtime import Runtime
from .gates import GateOutcome
from .results import METRICS, REFERENCES, EvaluationResult

__all__ = ["classification_rows", "gates_section", "metric_rows", "with_outline", "write_report"]


def _outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean mask (4-neighbourhood)."""
    m = mask.astype(bool)
    inner = m.copy()
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def with_outline(img: Image.Image, mask: np.ndarray, colour: tuple[int, int, int] = (0, 200, 0)) -> Image.Image:
    """``img`` with the outline of ``mask`` (resized to it, nearest) drawn in ``colour``."""
    big = Image.fromarray(mask.astype(np.uint8) * 255).resize(img.size, Image.Resampling.NEAREST)
    edge = _outline(np.asarray(big) > 0)
    arr = np.asarray(img.convert("RGB")).copy()
    arr[edge] = colour
    return Image.fromarray(arr)


def _fmt_metric(m: dict[str, Any] | None) -> str:
    if not m or m.get("mean") is None:
        return "—"
    mean = m["mean"]
    std = m.get("std")
    return f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"


def metric_rows(summaries: Sequence[dict[str, Any]], skip_empty: bool = False) -> list[list[str]]:
    """Rows ``[metric (↑/↓), value per method…]`` for the tables (rich and HTML); ``skip_empty`` leaves out
    metrics no method has (a volume model's 2-D-only metrics)."""
    rows = []
    for key, (label, up) in METRICS.items():
        if skip_empty and not any((s["metrics"].get(key) or {}).get("mean") is not None for s in summaries):
            continue
        values = [_fmt_metric(s["metrics"].get(key)) for s in summaries]
        rows.append([f"{label} {'↑' if up else '↓'}", *values])
    for key, label in REFERENCES.items():  # reference values (per image, the same for every method)
        if any(s["metrics"].get(key) for s in summaries):
            rows.append([label, *[_fmt_metric(s["metrics"].get(key)) for s in summaries]])
    rows.append(["images", *[str(s["images"]) for s in summaries]])
    return rows


def classification_rows(c: dict[str, Any], o: dict[str, Any] | None) -> tuple[list[str], list[list[Any]]]:
    keys = ["n", "accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity", "quadratic_kappa"]
    headers = ["metric", "SoftCAM"] + (["original"] if o is not None else [])
    rows = []
    for k in keys:
        if k not in c:
            continue
        rows.append([k.replace("_", " "), c.get(k)] + ([o.get(k)] if o is not None else []))
    return headers, rows


def write_report(
    result: EvaluationResult,
    out: Path,
    example_data: Sequence[dict[str, Any]],
    mm: Runtime,
    force: bool = False,
) -> Path:
    """``index.html`` (metric tables, curves, example overlays), ``metrics.json`` and ``per_image.json``."""
    make_output_dir(out)
    result.report = str(out / "index.html")
    summaries = result.method_summaries()
    parts = [_data_section(result)]
    if result.gates:
        parts.append(gates_section(result.gates))
    parts.append(_classification_section(result))
    if summaries and summaries[0]["images"]:
        parts.append(_explanation_section(summaries, result.settings))
    if example_data:
        parts.append(_examples_section(result, out, example_data, mm, force))
    page = R.html_page(
        "softcamify evaluate",
        parts,
        subtitle=f"model {result.model} ({result.backend}); {result.data['source']}",
        footer=f"evaluated in {result.settings.get('seconds', 0):.1f} s",
    )
    R.write_report(out / "index.html", page, force=force)
    data = result.to_dict()
    write_text_atomic(out / "metrics.json", json.dumps(data, indent=2) + "\n", force=force)
    write_text_atomic(out / "per_image.json", json.dumps(result.per_image, indent=2) + "\n", force=force)
    return out / "index.html"


def _data_section(result: EvaluationResult) -> str:
    cnt = result.counts
    return R.section(
        "Data",
        R.paragraph(
            f"{result.data['source']}: {cnt['images']} images; {cnt['with_mask']} with a mask file, "
            f"{cnt['annotated']} with foreground (explanation metrics on {cnt['explained']}), "
            f"{cnt['without_mask']} without a mask (classification only)."
        ),
        *[R.paragraph(note, note=True) for note in result.notes],
    )


def gates_section(outcomes: Sequence[GateOutcome], title: str = "Quality gates") -> str:
    """The judged gates as a table section (``evaluate``'s report and ``diff``'s page)."""
    rows = [
        [o.gate.name, o.value, f"{o.gate.op} {o.gate.threshold:g}", "pass" if o.passed else "FAIL"] for o in outcomes
    ]
    failed = sum(not o.passed for o in outcomes)
    verdict = f"{failed} of {len(rows)} failed" if failed else f"all {len(rows)} passed"
    return R.section(title, R.table(["gate", "value", "required", "result"], rows, caption=verdict))


def _classification_section(result: EvaluationResult) -> str:
    c = result.classification
    names = c["class_names"]
    headers, rows = classification_rows(c, result.original_classification)
    per_class = [
        [pc["name"], pc["support"], pc["sensitivity"], pc["specificity"], pc["precision"], pc["roc_auc"]]
        for pc in c["per_class"]
    ]
    cm = [[names[i], *row] for i, row in enumerate(c["confusion_matrix"])]
    return R.section(
        "Classification",
        R.table(headers, rows, caption="Overall"),
        R.table(
            ["class", "support", "sensitivity", "specificity", "precision", "ROC-AUC"],
            per_class,
            caption="Per class (one vs rest)",
        ),
        R.table(["true \\ predicted", *names], cm, caption="Confusion matrix"),
    )


def _volume_explanation_section(summaries: Sequence[dict[str, Any]], s: dict[str, Any]) -> str:
    """The explanation table of a volume model (no top-k or deletion/insertion: 2-D metrics)."""
    grid = "×".join(str(v) for v in s.get("oracle_grid") or [])
    return R.section(
        "Explanations of the true class (volumes)",
        R.table(
            ["metric", *[m["label"] for m in summaries]],
            metric_rows(summaries, skip_empty=True),
            caption="Mean ± std over annotated volumes",
        ),
        R.paragraph(
            f"Evidence volumes compared on the model's {'×'.join(str(v) for v in s['input_size'][1:])} voxels "
            "(each scan preprocessed as the model records; its mask resampled to them); pointing game: a hit "
            f"within {s.get('pointing_tolerance', 0)} voxels of the mask; sparsity and Gini on ReLU + min–max "
            "scaled volumes; share of oracle = (activation precision − chance) / (oracle precision − chance), "
            f"oracle = the mask average-pooled to the common {grid} grid.",
            note=True,
        ),
    )


def _explanation_section(summaries: Sequence[dict[str, Any]], s: dict[str, Any]) -> str:
    if s.get("spatial_dims") == 3:
        return _volume_explanation_section(summaries, s)
    return R.section(
        "Explanations of the true class",
        R.table(
            ["metric", *[m["label"] for m in summaries]],
            metric_rows(summaries),
            caption="Mean ± std over annotated images (top-k precision pooled over images)",
        ),
        R.paragraph(
            f"Maps compared at the {s['input_size'][1]}×{s['input_size'][2]} input; top-k: k={s['topk']}, "
            f"{s['patch_size']} px patches, stride {s['patch_stride']}, threshold {s['topk_threshold']}; "
            f"deletion/insertion: {s['steps']} steps of {s['deletion_patch']} px tiles (deletion to the mean "
            f"colour, insertion from a blurred image); pointing game: a hit within "
            f"{s.get('pointing_tolerance', 0)} px of the mask; sparsity and Gini on ReLU + min–max "
            "scaled maps; share of oracle = (activation precision − chance) / (oracle precision − "
            "chance), chance = the mask's area share, oracle = the mask average-pooled to the common "
            f"{'×'.join(str(v) for v in s.get('oracle_grid') or [])} grid.",
            note=True,
        ),
        R.figure(
            R.line_chart_svg({m["label"]: m["topk_curve"] for m in summaries}, "k", "precision@k"),
            "Top-k patch precision, pooled",
        ),
        *[
            R.figure(
                R.line_chart_svg(
                    {m["label"]: [p[1] for p in m[f"{kind}_curve"]] for m in summaries if m[f"{kind}_curve"]},
                    "fraction of pixels " + ("removed" if kind == "deletion" else "restored"),
                    "p(true class)",
                    x_values=[p[0] for p in summaries[0][f"{kind}_curve"]],
                ),
                f"{kind.capitalize()} curve (mean)",
            )
            for kind in ("deletion", "insertion")
            if summaries[0][f"{kind}_curve"]
        ],
    )


def _examples_section(
    result: EvaluationResult, out: Path, example_data: Sequence[dict[str, Any]], mm: Runtime, force: bool
) -> str:
    """The example overlays (written under ``out/examples``) and the gallery that shows them."""
    make_output_dir(out / "examples")
    items = []
    for e_i, ex in enumerate(example_data):
        stem = f"{e_i:03d}_{Path(ex['path']).stem}"[:60]
        view = input_view(ex["image"], mm.data_config)
        mask = ex["mask"]
        files = []
        rel = f"examples/{stem}_input.png"
        save_png(with_outline(view, mask), out / rel, force=force)
        scaled, _, vmax = scale_maps(ex["maps"])
        rel_sc = f"examples/{stem}_softcam.png"
        softcam = overlay(view, scaled[ex["label"]], cmap="RdBu_r")
        save_png(with_outline(softcam, mask), out / rel_sc, force=force)
        row = ex["row"]
        files.append({"src": rel_sc, "caption": f"SoftCAM (AP {row['softcam']['activation_precision']:.2f})"})
        for key, sal in ex["post"].items():
            rel_b = f"examples/{stem}_{key.replace(':', '_').replace('+', 'p')}.png"
            save_png(with_outline(overlay(view, sal, cmap="inferno"), mask), out / rel_b, force=force)
            label = next(m.label for m in result.methods if m.key == key)
            ap = row[key]["activation_precision"]
            files.append({"src": rel_b, "caption": f"{label} (AP {ap:.2f})" if ap is not None else label})
        items.append(
            {
                "title": Path(ex["path"]).name,
                "image": rel,
                "prediction": row["prediction"],
                "probability": row["probability"],
                "label": row["label"],
                "overlays": files,
                "note": "green: annotation outline; SoftCAM signed (red for, blue against), baselines in [0, 1].",
            }
        )
    return R.section("Examples (true-class maps)", R.gallery(items, thumb_width=200, overlay_width=150))
