"""``softcamify diff OLD NEW DATA``: did a new model version change its decisions, and its reasons?

Nothing here imports torch: two ``.onnx`` files are compared with onnxruntime alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from . import app
from ._common import (
    ENDING,
    Shared,
    cell,
    command,
    console,
    emit,
    handle_errors,
    print_gates,
    print_notes,
    report_progress,
)


# Long only by its typer option declarations (each option written once, here); the body is ~30 lines.
@command(app)
def diff(
    old: str = typer.Argument(..., help="The old model: a softcamify .safetensors or .onnx.", show_default=False),
    new: str = typer.Argument(..., help="The new model: a softcamify .safetensors or .onnx.", show_default=False),
    data: Path = typer.Argument(
        ...,
        help="The images: a folder of images, a dataset folder (its --split, or its class folders) or a labels CSV.",
        show_default=False,
    ),
    split: str = typer.Option(
        None, "--split", help="Split of a dataset folder (default test) or of a CSV's split column (default: all rows)."
    ),
    masks: Path = typer.Option(
        None, "--masks", help="Mask folder mirroring DATA: localization of both models (default: DATA/masks)."
    ),
    topk: int = typer.Option(
        None, "--topk", min=1, help="Cells of the top-k IoU (default: 10% of the common grid, at least 1)."
    ),
    shortcut_region: float = typer.Option(
        0.05, "--shortcut-region", help="Size of a class's fixed region, as a share of the grid's cells."
    ),
    shortcut_threshold: float = typer.Option(
        0.5,
        "--shortcut-threshold",
        help="Flag a model and class when this share of its evidence falls in the fixed region (docs/ci.md).",
    ),
    shortcut_min_images: int = typer.Option(
        5, "--shortcut-min-images", min=1, help="Images of a class needed before it can be flagged."
    ),
    max_images: int = typer.Option(None, "--max-images", min=1, help="Compare at most N images."),
    examples: int = typer.Option(8, "--examples", min=0, help="Most-changed images shown on the HTML page."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Images per forward pass."),
    max_flips: int = typer.Option(None, "--max-flips", min=0, help="Gate: exit 8 when more top-1 predictions flip."),
    min_rank_corr: float = typer.Option(
        None, "--min-rank-corr", help="Gate: exit 8 when the mean rank correlation of the maps is lower."
    ),
    min_topk_iou: float = typer.Option(
        None, "--min-topk-iou", help="Gate: exit 8 when the mean top-k IoU of the maps is lower."
    ),
    max_prob_change: float = typer.Option(
        None, "--max-prob-change", help="Gate: exit 8 when a probability changes by more than this."
    ),
    max_peak_shift: float = typer.Option(
        None, "--max-peak-shift", help="Gate: exit 8 when the mean peak shift (share of the grid) is larger."
    ),
    max_accuracy_drop: float = typer.Option(
        None, "--max-accuracy-drop", help="Gate: exit 8 when NEW's accuracy is lower than OLD's by more than this."
    ),
    fail_on_new_shortcut: bool = typer.Option(
        False, "--fail-on-new-shortcut", help="Gate: exit 8 when NEW is flagged for a class OLD is not."
    ),
    output: Path = typer.Option(
        None, "--output", "-o", help="Report folder: index.html (self-contained), diff.json, per_image.json."
    ),
    junit: Path = typer.Option(None, "--junit", help="Write the gates as a JUnit XML report for CI systems."),
    o: Any = Shared("device", "trust_pickle", *ENDING),  # a namespace of their values once parsed
) -> None:
    """Compare two model versions on the same images: prediction flips, evidence agreement, shortcut flags."""
    with handle_errors(o.debug):
        from ..evaluation.diff import diff as run_diff
        from ..evaluation.gates import require_gates

        with report_progress(output, "comparing") as update:
            report = run_diff(
                old,
                new,
                data,
                split=split,
                masks=masks,
                topk=topk,
                shortcut_region=shortcut_region,
                shortcut_threshold=shortcut_threshold,
                shortcut_min_images=shortcut_min_images,
                max_images=max_images,
                examples=examples,
                batch_size=batch_size,
                max_flips=max_flips,
                min_rank_corr=min_rank_corr,
                min_topk_iou=min_topk_iou,
                max_prob_change=max_prob_change,
                max_peak_shift=max_peak_shift,
                fail_on_new_shortcut=fail_on_new_shortcut,
                max_accuracy_drop=max_accuracy_drop,
                out_dir=output,
                junit=junit,
                force=o.force,
                device=o.device,
                trust_pickle=o.trust_pickle,
                progress=lambda stage, done, total: update(done, total),
            )
        emit(o.json_, report.to_dict(), lambda: _show(report))
        require_gates(report.gates)  # after the output: a failed gate exits 8 with the reports written


def _show(report) -> None:
    p, a = report.predictions, report.agreement
    grid = "×".join(str(v) for v in a["grid"])
    console.print(
        f"[bold]softcamify diff[/]: {escape(report.data['source'])}: {report.data['images']} images; "
        f"OLD {escape(report.old['model'])} ({report.old['backend']}), NEW {escape(report.new['model'])} "
        f"({report.new['backend']}); maps compared on a {grid} grid"
    )
    t = Table(title="predictions", title_justify="left")
    t.add_column("")
    t.add_column("OLD", justify="right")
    t.add_column("NEW", justify="right")
    t.add_row("top-1 flips", "", str(p["flips"]))
    t.add_row("max |Δ probability|", "", cell(p["max_prob_change"]))
    for key in ("accuracy", "balanced_accuracy"):
        if key in p:
            t.add_row(key.replace("_", " "), cell(p[key]["old"]), cell(p[key]["new"]))
    console.print(t)
    if p["flipped"]:
        shown = ", ".join(f"{Path(f['path']).name} ({f['old']}→{f['new']})" for f in p["flipped"][:10])
        more = f" and {len(p['flipped']) - 10} more" if len(p["flipped"]) > 10 else ""
        console.print(f"flipped: {escape(shown)}{more}")
    e = Table(title=f"evidence agreement (mean over images; top-k: {a['topk']} cells)", title_justify="left")
    keys = ("rank_corr", "topk_iou", "peak_shift_cells", "peak_shift", "sparsity_change")
    for h in ("class", "rank corr", "top-k IoU", "peak shift (cells)", "peak shift (grid)", "Δ sparsity"):
        e.add_column(h, justify="left" if h == "class" else "right")
    e.add_row("all", *[cell(a["overall"][k]) for k in keys], end_section=True)
    for c in a["per_class"]:
        e.add_row(escape(c["class"]), *[cell(c[k]) for k in keys])
    console.print(e)
    if report.localization:
        loc = Table(title=f"localization ({report.localization['images']} annotated images)", title_justify="left")
        for h in ("metric", "OLD", "NEW"):
            loc.add_column(h, justify="left" if h == "metric" else "right")
        for k, v in report.localization["metrics"].items():
            loc.add_row(k.replace("_", " "), cell(v["old"]), cell(v["new"]))
        console.print(loc)
    s = Table(
        title=f"shortcut flags (share of evidence in {report.settings['shortcut_region_cells']} fixed cells; "
        f"flag ≥ {report.settings['shortcut_threshold']:g})",
        title_justify="left",
    )
    for h in ("class", "OLD share", "OLD", "NEW share", "NEW"):
        s.add_column(h, justify="left" if h == "class" else "right")
    for row in report.shortcuts:
        flags = ["[bold red]FLAG[/]" if row[side]["flagged"] else "" for side in ("old", "new")]
        s.add_row(escape(row["class"]), cell(row["old"]["share"]), flags[0], cell(row["new"]["share"]), flags[1])
    console.print(s)
    print_notes(report.notes)
    print_gates(report.gates, "gates", report.report, report.junit)
