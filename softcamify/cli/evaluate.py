"""``softcamify evaluate``: classification metrics, and explanation metrics beside post-hoc baselines."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from . import app
from . import explain as _explain  # noqa: F401  (registered first: --help lists explain before evaluate)
from ._common import (
    ENDING,
    MODEL,
    ORIGINAL,
    Shared,
    cell,
    command,
    console,
    emit,
    handle_errors,
    model_kwargs,
    parse_pair,
    print_gates,
    print_notes,
    report_progress,
)


# Long only by its typer option declarations (each option written once, here); the body is ~25 lines.
@command(app)
def evaluate(
    model: str = typer.Argument(
        ...,
        help="A softcamify .safetensors (or any convertible checkpoint), or an .onnx export (no baselines).",
        show_default=False,
    ),
    data_dir: Path = typer.Argument(
        ...,
        help="A dataset root with train/val/test class folders, or one folder of class folders.",
        show_default=False,
    ),
    split: str = typer.Option(
        "test", "--split", help="Split of a dataset root (a flat class-folder layout is used whole)."
    ),
    masks: Path = typer.Option(
        None, "--masks", help="Mask folder mirroring DATA_DIR's paths; nonzero = foreground (default: DATA_DIR/masks)."
    ),
    baselines: str = typer.Option(
        None,
        "--baselines",
        help="Post-hoc methods on the same model via pytorch-grad-cam, e.g. gradcam,layercam,scorecam "
        "(also gradcam++, xgradcam, hirescam, eigencam, eigengradcam, gradcamelementwise).",
    ),
    original: str = typer.Option(
        None,
        "--original",
        help="The original black-box checkpoint (or timm name): classification and baselines for it too "
        "(built with --module and --model-args when given).",
    ),
    original_weights: Path = typer.Option(
        None,
        "--original-weights",
        help="Weights of the --original architecture (a weights-only file, e.g. a timm state dict).",
    ),
    ordinal: bool = typer.Option(False, "--ordinal", help="Ordered classes (grades): add quadratic kappa."),
    output: Path = typer.Option(
        None,
        "--output",
        "-o",
        help="Report folder: index.html (tables, curves, overlays), metrics.json, per_image.json.",
    ),
    patch_size: int = typer.Option(
        None,
        "--patch-size",
        min=1,
        help="Top-k patch size in input pixels (default: 33/512 of the input side, as the paper).",
    ),
    patch_stride: int = typer.Option(
        None, "--patch-stride", min=1, help="Top-k patch grid stride (default: patch × 8/33)."
    ),
    topk: int = typer.Option(10, "--topk", min=1, help="k of the top-k patch precision (pooled over images)."),
    topk_threshold: float = typer.Option(
        None,
        "--topk-threshold",
        help="Pick only grid values above this (the paper: 1 on raw logit maps; default: none).",
    ),
    steps: int = typer.Option(20, "--steps", min=1, help="Deletion / insertion steps."),
    pointing_tolerance: int = typer.Option(
        0,
        "--pointing-tolerance",
        min=0,
        help="Pointing game: a hit within this many pixels of the mask (Zhang et al.: 15).",
    ),
    oracle_grid: str = typer.Option(
        None,
        "--oracle-grid",
        help="Common reference grid HxW (or N) for share of oracle: each mask average-pooled to it is "
        "the best map on that grid (default: the model's evidence grid).",
    ),
    max_images: int = typer.Option(
        None, "--max-images", min=0, help="Explanation metrics on at most N annotated images (classification uses all)."
    ),
    examples: int = typer.Option(
        6, "--examples", min=0, help="Annotated images shown with overlays in the HTML report."
    ),
    batch_size: int = typer.Option(
        None, "--batch-size", "-b", min=1, help="Images per forward pass (default 16; 2 for volumes)."
    ),
    fail_under: str = typer.Option(
        None,
        "--fail-under",
        help="Quality gates: exit 8 when a metric is under its threshold, e.g. accuracy=0.95,"
        "sensitivity[malignant]=0.8,activation_precision=0.3,gradcam.pointing_game=0.5 (docs/ci.md).",
    ),
    fail_over: str = typer.Option(
        None,
        "--fail-over",
        help="Gates on lower-is-better metrics: exit 8 when a metric is over its threshold, e.g. deletion_auc=0.2.",
    ),
    junit: Path = typer.Option(
        None, "--junit", help="Write the gates as a JUnit XML report (one testcase per gate) for CI systems."
    ),
    o: Shared = Shared("device", *MODEL, *ORIGINAL, "class_names", *ENDING),
) -> None:
    """Classification metrics and, on images with masks, explanation metrics of the true class (vs baselines)."""
    with handle_errors(o.debug):
        from ..evaluation import evaluate as run_evaluate
        from ..evaluation.gates import require_gates

        with report_progress(output, "evaluating") as update:
            result = run_evaluate(
                model,
                data_dir,
                split=split,
                masks=masks,
                baselines=baselines,
                original=original,
                ordinal=ordinal,
                patch_size=patch_size,
                patch_stride=patch_stride,
                topk=topk,
                topk_threshold=topk_threshold,
                steps=steps,
                pointing_tolerance=pointing_tolerance,
                oracle_grid=parse_pair(oracle_grid, "--oracle-grid", "grid cells"),
                max_images=max_images,
                batch_size=batch_size,
                examples=examples,
                out_dir=output,
                force=o.force,
                original_weights=original_weights,
                progress=lambda stage, done, total: update(done, total),
                fail_under=fail_under,
                fail_over=fail_over,
                junit=junit,
                **model_kwargs(o),
            )
        emit(o.json_, result.to_dict(), lambda: _show(result))
        require_gates(result.gates)  # after the output: a failed gate exits 8 with the reports written


def _show(result) -> None:
    from ..evaluation import classification_rows, metric_rows

    c = result.classification
    cnt = result.counts
    console.print(
        f"[bold]softcamify evaluate[/]: {escape(result.data['source'])}: {cnt['images']} images, "
        f"{cnt['annotated']} annotated ({cnt['explained']} explained), {cnt['without_mask']} without a mask"
    )
    headers, rows = classification_rows(c, result.original_classification)
    t = Table(title="classification", title_justify="left")
    for h in headers:
        t.add_column(h, justify="left" if h == "metric" else "right")
    for r in rows:
        t.add_row(*[cell(v) for v in r])
    console.print(t)
    pc = Table(title="per class", title_justify="left")
    for h in ("class", "support", "sensitivity", "specificity", "ROC-AUC"):
        pc.add_column(h, justify="left" if h == "class" else "right")
    for p in c["per_class"]:
        pc.add_row(
            escape(p["name"]), str(p["support"]), cell(p["sensitivity"]), cell(p["specificity"]), cell(p["roc_auc"])
        )
    console.print(pc)
    summaries = result.method_summaries()
    if summaries and summaries[0]["images"]:
        e = Table(title="explanations of the true class (mean ± std)", title_justify="left")
        e.add_column("metric")
        for s in summaries:
            e.add_column(s["label"], justify="right")
        for r in metric_rows(summaries, skip_empty=result.settings.get("spatial_dims") == 3):
            e.add_row(*r)
        console.print(e)
        grid = result.settings.get("oracle_grid") or []
        console.print(
            "[dim]share of oracle: (activation precision − chance) / (oracle precision − "
            f"chance) on the common {'×'.join(str(v) for v in grid)} reference grid; "
            "chance = mask share[/]"
        )
    print_notes(result.notes)
    print_gates(result.gates, "quality gates", result.report, result.junit)
