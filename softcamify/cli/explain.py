"""``softcamify explain``: overlays, raw maps and an HTML gallery from one forward pass per batch."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from . import app
from ._common import ENDING, MODEL, ORIGINAL, Shared, command, console, emit, handle_errors, model_kwargs, progress_bar


@command(app)
def explain(
    model: str = typer.Argument(
        ...,
        help="A softcamify .safetensors, an .onnx export (runs in onnxruntime, no torch), or any convertible "
        "checkpoint or timm name (converted on the fly).",
        show_default=False,
    ),
    images: list[Path] = typer.Argument(
        ...,
        help="Image files and/or folders (searched recursively); volumes (.nii, .nii.gz, .npy, .npz) for a "
        "volume model.",
        show_default=False,
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (new or empty, unless --force)."),
    classes: str = typer.Option(
        "pred",
        "--classes",
        "-c",
        help="Overlays for: pred (the predicted class), all, or comma-separated class "
        "names or indices, e.g. 0,2. Raw maps of all classes are always written.",
    ),
    positive: bool = typer.Option(
        False, "--positive", help="Show positive evidence only (sequential colour map) instead of signed evidence."
    ),
    cmap: str = typer.Option(
        None,
        "--cmap",
        help="Colour map: RdBu_r (default), coolwarm, bwr; with --positive: inferno (default), jet, gray.",
    ),
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="Overlay opacity."),
    batch_size: int = typer.Option(
        None, "--batch-size", "-b", min=1, help="Images per forward pass (default 16; 2 for volumes)."
    ),
    o: Shared = Shared("device", *MODEL, *ORIGINAL, "class_names", *ENDING),
) -> None:
    """Evidence maps of every class from one forward pass: overlays, raw .npy maps, index.html, manifest.json."""
    with handle_errors(o.debug):
        from ..explanations import collect_images, parse_classes
        from ..explanations import explain as run_explain
        from ..io import check_output_dir, cleanup_on_failure
        from ..runtime import load

        check_output_dir(output, force=o.force)
        mm = load(model, **model_kwargs(o))
        if mm.volume is not None:  # a volume model: NIfTI, tri-planar PNG and slice viewer per volume and class
            _explain_volumes(mm, images, output, classes, batch_size, o)
            return
        sources = collect_images(images)
        parse_classes(classes, mm.class_names)  # fail on unknown names before any work
        # an image that fails to decode, a full disk or Ctrl-C midway leaves no partial gallery
        with cleanup_on_failure(output), progress_bar(f"explaining {len(sources)} image(s)") as update:
            results = run_explain(
                mm,
                sources,
                output,
                classes=classes,
                positive=positive,
                batch_size=batch_size or 16,
                cmap=cmap,
                alpha=alpha,
                force=o.force,
                progress=update,
            )
        manifest = json.loads((output / "manifest.json").read_text(encoding="utf-8"))
        manifest["output"] = str(output)
        emit(o.json_, manifest, lambda: _show(results, mm, output))


def _explain_volumes(mm, images: list[Path], output: Path, classes: str, batch_size: int | None, o) -> None:
    from ..explanations import collect_volumes, explain_volumes, parse_classes
    from ..explanations.volume import DEFAULT_VOLUME_BATCH
    from ..io import cleanup_on_failure

    paths = collect_volumes(images)
    parse_classes(classes, mm.class_names)
    # a bad volume, a full disk or Ctrl-C midway leaves nothing behind
    with cleanup_on_failure(output), progress_bar(f"explaining {len(paths)} volume(s)") as update:
        results = explain_volumes(
            mm,
            paths,
            output,
            classes=classes,
            batch_size=batch_size or DEFAULT_VOLUME_BATCH,
            force=o.force,
            progress=update,
        )
    manifest = json.loads((output / "manifest.json").read_text(encoding="utf-8"))
    manifest["output"] = str(output)

    def show() -> None:
        t = Table(title=f"softcamify explain: {len(results)} volume(s) ({mm.kind})", title_justify="left")
        t.add_column("volume", overflow="fold")
        t.add_column("prediction")
        t.add_column("p", justify="right")
        t.add_column("evidence (scan geometry)", overflow="fold")
        for r in results[:50]:
            files = ", ".join(f["evidence"] for f in r.files["classes"].values())
            t.add_row(escape(r.source), escape(r.predicted_class), f"{r.probability:.3f}", escape(files))
        console.print(t)
        grid = "×".join(str(v) for v in results[0].evidence_grid)
        console.print(
            f"wrote evidence volumes ({mm.num_classes} classes, {grid} grid, each in its scan's geometry) with "
            f"tri-planar PNGs and slice viewers to {escape(str(output))}"
        )

    emit(o.json_, manifest, show)


def _show(results, mm, output: Path) -> None:
    t = Table(title=f"softcamify explain: {len(results)} image(s) ({mm.kind})", title_justify="left")
    t.add_column("image", overflow="fold")
    t.add_column("prediction")
    t.add_column("p", justify="right")
    t.add_column("overlays", overflow="fold")
    shown = results[:50]
    for r in shown:
        t.add_row(
            escape(r.source), escape(r.predicted_class), f"{r.probability:.3f}", escape(", ".join(r.files["overlays"]))
        )
    console.print(t)
    if len(results) > len(shown):
        console.print(f"[dim]… and {len(results) - len(shown)} more (see manifest.json)[/]")
    grid = "×".join(str(v) for v in results[0].evidence_grid)
    console.print(
        f"wrote {len(results)} map file(s) ({mm.num_classes} classes, {grid} grid) and overlays to "
        f"{escape(str(output))}; open {escape(str(output / 'index.html'))}"
    )
