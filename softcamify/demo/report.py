"""``OUT_DIR/report.html``: the demo's one page, one function per section; and ``--update-docs``."""

from __future__ import annotations

import html
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .. import report as R
from ..errors import OutputError
from ..report import format_fixed as _fmt
from .results import DemoResult, grid_text
from .settings import MODEL_FILE, POINTING_TOLERANCE, REPORT_NAME

_CLASSIFICATION_COLUMNS = ["black box", "SoftCAM (converted)", "SoftCAM (fine-tuned)"]
_LOCALIZATION_KEYS = [
    ("share_of_oracle", "share of oracle ↑"),
    ("topk_precision", "top-k patch precision ↑"),
    ("activation_precision", "activation precision ↑"),
    ("pointing_game", f"pointing game ({POINTING_TOLERANCE} px) ↑"),
    ("deletion_auc", "deletion AUC ↓"),
    ("insertion_auc", "insertion AUC ↑"),
]
Methods = list[tuple[str, dict[str, Any]]]


def _link(href: str, text: str) -> str:
    return f'<a href="{html.escape(href, quote=True)}">{html.escape(text)}</a>'


def _classification_rows(cls: dict[str, Any]) -> list[list[Any]]:
    return [
        [label, cls["black_box"].get(k), cls["converted"].get(k), cls["fine_tuned"].get(k)]
        for k, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("roc_auc", "ROC-AUC"))
    ]


def _summary_text(f: dict[str, Any], info: dict[str, Any]) -> str:
    """The summary's opening paragraph: conversion, finer grid, sweep, fine-tuning, export in one story."""
    conv, exp, ft = f["conversion"], f["export"], f["finetune"]
    hist = ft["history"]
    maps_text = ""
    if hist:
        h0, h1 = hist[0], hist[-1]
        maps_text = (
            f" (validation maps: mean Σ|A| per map {_fmt(h0.get('val_map_l1'), 1)} after epoch 1, "
            f"{_fmt(h1.get('val_map_l1'), 1)} after epoch {h1['epoch']}; share of near-zero cells "
            f"{_fmt(h0.get('val_sparsity'), 2)} → {_fmt(h1.get('val_sparsity'), 2)})"
        )
    finer = f.get("conversion_finer")
    finer_text = ""
    if finer:
        finer_text = (
            f"Converted again with output stride {finer['output_stride']} (dilated last stages), "
            f"its evidence grid is {grid_text(finer['evidence_grid'])} instead of "
            f"{grid_text(finer['original_grid'])} (approximate: top-1 agreement with the black box "
            f"{finer['top1_agreement']:.1%} before fine-tuning). "
        )
    recommended = (f.get("sweep") or {}).get("recommended_l1") is not None
    return (
        f"The black box is an ordinary timm {info['architecture']} classifier (global average pooling + "
        f"linear head) shipped with softcamify. Converted to SoftCAM it gives the same logits (max |Δlogit| "
        f"{conv['max_abs_diff']:.2g}) and, from the same forward pass, one signed evidence map per class. "
        + finer_text
        + f"A λ1 sweep picked λ1 = {ft['l1']:g} of the normalized L1 penalty "
        f"({'recommended by softcamify sweep' if recommended else 'none qualified'}); "
        f"fine-tuned for {ft['epochs']} epoch(s){maps_text}, it was exported to ONNX, where logits and "
        f"maps match PyTorch (max |Δ| evidence {exp['max_abs_diff_evidence']:.2g})."
    )


def _section_summary(result: DemoResult, info: dict[str, Any], loc_methods: Methods, panel_rel: str | None) -> str:
    f = result.figures
    cls = f["classification"]
    parts = [
        R.paragraph(_summary_text(f, info)),
        R.table(
            ["test split", *_CLASSIFICATION_COLUMNS],
            _classification_rows(cls),
            caption=f"Classification on {cls['test_images']} generated test images",
        ),
    ]
    if loc_methods:
        loc = f["localization"]
        parts.append(
            R.table(
                ["localization (lesion images)", *[label for label, _ in loc_methods]],
                [[name, *[loc[label].get(key) for label, _ in loc_methods]] for key, name in _LOCALIZATION_KEYS],
                caption="Localization of the true class against the lesion masks (means; section 7 has all metrics)",
            )
        )
    if f.get("comparison"):
        parts.append(R.paragraph(f["comparison"]["text"]))
    if panel_rel:
        img = R.image_tag(panel_rel, "image, SoftCAM evidence and Grad-CAM for lesion images")
        parts.append(
            R.figure(
                img,
                "Lesion test images: the fine-tuned SoftCAM's evidence for the true class "
                "beside Grad-CAM on the black box (green: lesion masks).",
            )
        )
    return R.section("Summary", *parts)


def _section_steps(result: DemoResult) -> str:
    return R.section(
        "Steps",
        R.table(["step", "result", "seconds"], [[s.title, s.summary, round(s.seconds, 1)] for s in result.steps]),
    )


def _section_data(result: DemoResult, steps: dict[str, Any]) -> str:
    ds = result.settings["dataset"]
    return R.section(
        "1. Data",
        R.paragraph(
            f"{steps['data'].summary}. Generated by softcamify.data.synth.make_lesions (softcamify "
            f"datasets synth) with the settings the black box was trained with (size {ds['size']}, "
            f"contrast {ds['contrast']:g}, noise {ds['noise']:g}) and another seed "
            f"({result.settings['seed']}): fundus-like images whose classes differ only by small "
            "lesions (healthy, red_lesion: dark-red dots, bright_lesion: yellowish patches); every "
            "image has an exact lesion mask."
        ),
    )


def _sections_inspect_convert(steps: dict[str, Any]) -> list[str]:
    return [
        R.section("2. Inspect", R.table(["field", "value"], steps["inspect"].details)),
        R.section(
            "3. Convert",
            R.paragraph(
                "Global average pooling + linear classifier become a 1×1 evidence convolution "
                "initialized from the classifier's weights; the converted model is checked against "
                "the black box before it is saved (models/converted.safetensors)."
            ),
            R.table(["check", "value"], steps["convert"].details, caption="Exactness report"),
        ),
    ]


def _epoch_chart(series: dict[str, list[Any]], ylabel: str, title: str) -> str:
    """A figure of per-epoch values (one line per ``series`` entry) with the report's chart size."""
    return R.figure(R.line_chart_svg(series, "epoch", ylabel, width=420, height=240), title)


def _finetune_charts(hist: list[dict[str, Any]]) -> list[str]:
    if not hist:
        return []
    charts = [
        _epoch_chart(
            {
                "train loss": [h["train_loss"] for h in hist],
                "train CE": [h["train_ce"] for h in hist],
                "val loss": [h["val_loss"] for h in hist],
            },
            "loss",
            "Loss",
        ),
        _epoch_chart(
            {
                "train accuracy": [h["train_accuracy"] for h in hist],
                "val accuracy": [h["val_accuracy"] for h in hist],
            },
            "accuracy",
            "Accuracy",
        ),
    ]
    if any(h.get("val_sparsity") is not None for h in hist):
        charts.append(
            _epoch_chart(
                {"val map sparsity": [h.get("val_sparsity") for h in hist]},
                "share of |A| < 0.1",
                "Map sparsity (validation)",
            )
        )
    return charts


def _section_finetune(f: dict[str, Any]) -> str:
    ftf = f["finetune"]
    hist = ftf["history"]
    ft_rows = [
        [
            h["epoch"],
            h["train_loss"],
            h["train_ce"],
            h["train_l1"],
            h["train_accuracy"],
            h["val_loss"],
            h["val_accuracy"],
            h.get("val_map_l1"),
            h.get("val_sparsity"),
        ]
        for h in hist
    ]
    sw = f.get("sweep") or {}
    sweep_rows = [
        [
            f"{r['l1']:g}",
            r.get("accuracy"),
            r.get("share_of_oracle"),
            r.get("activation_precision"),
            r.get("pointing_game"),
            r.get("sparsity"),
            "recommended" if r.get("recommended") else "" if r.get("qualified") else "below the floor",
        ]
        for r in sw.get("runs", [])
    ]
    ref = sw.get("reference") or {}
    return R.section(
        "4. Sweep λ1 and fine-tune",
        R.paragraph(
            f"softcamify sweep fine-tuned the converted model once per λ1 and scored each run on the "
            f"validation split (sweep/index.html, sweep/pareto.png). Rule: "
            f"{(sw.get('rule') or {}).get('text', '')} "
            f"The converted model's validation accuracy is {_fmt(ref.get('accuracy'))}, so the floor "
            f"is {_fmt((ref.get('accuracy') or 0.0) - sw.get('tolerance', 0.0))}."
        ),
        R.table(
            ["λ1", "val accuracy", "share of oracle", "activation precision", "pointing game", "sparsity", ""],
            sweep_rows,
            caption="The sweep's runs (validation split)",
        ),
        R.paragraph(
            f"CE + λ1·mean|A|/s on the evidence maps (λ1 = {ftf['l1']:g}, λ2 = {ftf['l2']:g}, s = "
            f"{_fmt(ftf.get('logit_scale'))} the converted model's logit scale; docs/method.md), "
            f"AdamW lr {ftf['lr']:g}, batch {ftf['batch_size']}, {ftf['epochs']} epoch(s) on "
            f"{ftf['device']} ({_fmt(ftf['train_images_per_s'], 0)} images/s); the best epoch by "
            f"validation loss (CE + penalty) (epoch {ftf['best_epoch']}) is kept in "
            "finetune/best.safetensors."
        ),
        *_finetune_charts(hist),
        R.table(
            [
                "epoch",
                "train loss",
                "train CE",
                "train mean|A|/s",
                "train acc",
                "val loss",
                "val acc",
                "val Σ|A| per map",
                "val sparsity",
            ],
            ft_rows,
            caption="Per epoch (finetune/metrics.jsonl); sparsity: share of map cells with |A| < 0.1",
        ),
    )


def _section_export(steps: dict[str, Any]) -> str:
    return R.section(
        "5. Export to ONNX",
        R.paragraph(
            f"{steps['export'].summary}. Outputs logits (N×K) and evidence (N×K×h×w); class names "
            "and preprocessing travel in the file's metadata, so onnxruntime, numpy and Pillow are "
            "all a deployment needs."
        ),
        R.table(["validation input", "result"], steps["export"].details, caption="onnxruntime vs PyTorch"),
    )


def _section_explain(exps: list[Any]) -> str:
    items = []
    for e in exps:
        ovs = [{"src": f"explain/{rel}", "caption": name} for name, rel in e.files.get("overlays", {}).items()]
        items.append(
            {
                "title": Path(e.source).name,
                "image": f"explain/{e.files['image']}",
                "prediction": e.predicted_class,
                "probability": e.probability,
                "label": Path(e.source).parent.name,
                "overlays": ovs,
            }
        )
    return R.section(
        "6. Explain",
        R.paragraph(
            "Evidence maps of every class from one forward pass of model.onnx in onnxruntime (no "
            "torch): red is evidence for the class, blue against, one colour scale per image. Full "
            "gallery: "
        ),
        f"<p>{_link('explain/index.html', 'explain/index.html')}</p>",
        R.gallery(items, thumb_width=200, overlay_width=120),
    )


def _section_evaluate(f: dict[str, Any], loc_methods: Methods) -> str:
    from ..evaluation import metric_rows

    cls = f["classification"]
    parts = [
        R.table(
            ["metric", *_CLASSIFICATION_COLUMNS],
            _classification_rows(cls),
            caption=f"Classification ({cls['test_images']} test images)",
        )
    ]
    if loc_methods:
        parts.append(
            R.table(
                ["metric", *[label for label, _ in loc_methods]],
                metric_rows([m for _, m in loc_methods]),
                caption="Localization of the true class against the lesion masks (mean ± std; "
                "top-k precision pooled over images)",
            )
        )
        es = f["evaluation_settings"]
        parts.append(
            R.paragraph(
                f"Maps compared at the {es['input_size'][1]}×{es['input_size'][2]} input (evidence grid "
                f"{'×'.join(str(v) for v in es['evidence_grid'] or [])}; share of oracle for every method on the "
                f"{grid_text(es.get('oracle_grid'))} grid); top-k: k = {es['topk']}, {es['patch_size']} px "
                f"patches; deletion/insertion in {es['steps']} steps. Grad-CAM (black box) is Grad-CAM on the "
                "original classifier's last feature map; SoftCAM (converted) is the converted model before "
                "fine-tuning (on a GAP + linear head its maps are the classic CAM). Definitions: "
                "docs/metrics.md.",
                note=True,
            )
        )
        curves = {label: m["topk_curve"] for label, m in loc_methods if m.get("topk_curve")}
        if curves:
            parts.append(
                R.figure(
                    R.line_chart_svg(curves, "k", "precision@k", width=480, height=240),
                    "Top-k patch precision, pooled over images",
                )
            )
    parts.append(
        f"<p>Full evaluation report (per-class metrics, confusion matrix, deletion/insertion "
        f"curves, examples): {_link('evaluate/index.html', 'evaluate/index.html')}</p>"
    )
    return R.section("7. Evaluate", *parts)


def _section_own_data(arch: str) -> str:
    commands = (
        f"softcamify inspect {arch} --weights my_model.safetensors\n"
        f"softcamify convert {arch} --weights my_model.safetensors -o softcam.safetensors "
        "--calibration data/val --output-stride 8\n"
        "softcamify sweep softcam.safetensors data/ -o sweep/ --l1 0.05,0.5,2   # recommends a λ1\n"
        "softcamify finetune softcam.safetensors data/ -o runs/l1 --l1 2 --epochs 10\n"
        "softcamify export runs/l1/best.safetensors -o model.onnx\n"
        "softcamify explain model.onnx scans/ -o heatmaps/ --classes all\n"
        f"softcamify evaluate runs/l1/best.safetensors data/ --masks data/masks --baselines gradcam "
        f"--original {arch} -o report/   # --original needs the black box: see docs/demo.md"
    )
    return R.section(
        "The same steps on your own data",
        "<pre>" + html.escape(commands) + "</pre>",
        R.paragraph("docs/demo.md explains each step; docs/cli.md lists every option.", note=True),
    )


def report_page(
    out: Path, result: DemoResult, info: dict[str, Any], exps: list[Any], loc_methods: Methods, panel_rel: str | None
) -> str:
    """The report's HTML: a summary, the steps table, one section per step, the same steps on your data."""
    f = result.figures
    steps = {s.key: s for s in result.steps}
    arch = info["architecture"]
    parts = [
        _section_summary(result, info, loc_methods, panel_rel),
        _section_steps(result),
        _section_data(result, steps),
        *_sections_inspect_convert(steps),
        _section_finetune(f),
        _section_export(steps),
        _section_explain(exps),
        _section_evaluate(f, loc_methods),
        _section_own_data(arch),
    ]
    parts += [R.paragraph(f"note: {n}", note=True) for n in result.notes]
    return R.html_page(
        "softcamify demo",
        parts,
        subtitle=(
            f"black box: {arch} (softcamify/assets/{MODEL_FILE.name}) · device {result.device} · "
            f"{'fast settings · ' if result.settings.get('fast') else ''}output {out}"
        ),
        footer=f"softcamify demo, {time.strftime('%Y-%m-%d %H:%M')}, {result.seconds:.0f} s",
    )


def write_report(
    out: Path, result: DemoResult, info: dict[str, Any], exps: list[Any], loc_methods: Methods, panel_rel: str | None
) -> Path:
    """``OUT_DIR/report.html``: one page with every step's result (written atomically)."""
    page = report_page(out, result, info, exps, loc_methods, panel_rel)
    return R.write_report(out / REPORT_NAME, page, force=True)


def update_docs_figure(result: DemoResult, dest: str | os.PathLike | None = None) -> Path:
    """Copy the report's figure to ``docs/images/demo_overlay.png`` of a source checkout
    (``--update-docs``)."""
    from ..errors import UsageError

    src = Path(result.files.get("figure") or "")
    if not src.is_file():
        raise OutputError("The demo wrote no figure to copy (no lesion image in the test split).")
    if dest is None:
        docs = Path(__file__).resolve().parents[2] / "docs"  # softcamify/demo/report.py -> the checkout
        if not docs.is_dir():
            raise UsageError(
                "Updating the docs figure needs a source checkout of softcamify (docs/ next to "
                "the package) or a dest to copy it to.",
                param="dest",
            )
        dest = docs / "images" / "demo_overlay.png"
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest
