"""``softcamify explain``: overlays, raw maps and an HTML gallery from one forward pass per batch."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from . import app
from ._common import (
    DEBUG_OPTION,
    DEVICE_OPTION,
    EMA_OPTION,
    FORCE_OPTION,
    INPUT_SIZE_OPTION,
    JSON_OPTION,
    NUM_CLASSES_OPTION,
    TRUST_PICKLE_OPTION,
    WEIGHTS_OPTION,
    console,
    err_console,
    handle_errors,
    parse_input_size,
    print_json,
)


@contextlib.contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator:
    """A rich progress bar on stderr (stdout stays clean for --json); yields ``update(done, total)``."""
    if not enabled or not err_console.is_terminal:
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err_console, transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@app.command()
def explain(
    model: str = typer.Argument(
        ..., help="A softcamify .safetensors, an .onnx export (runs in onnxruntime, no torch), or any convertible "
        "checkpoint or timm name (converted on the fly).", show_default=False,
    ),
    images: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively).", show_default=False),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (new or empty, unless --force)."),
    classes: str = typer.Option(
        "pred", "--classes", "-c", help="Overlays for: pred (the predicted class), all, or comma-separated class "
        "names or indices, e.g. 0,2. Raw maps of all classes are always written.",
    ),
    positive: bool = typer.Option(
        False, "--positive", help="Show positive evidence only (sequential colour map) instead of signed evidence."
    ),
    cmap: str = typer.Option(
        None, "--cmap", help="Colour map: RdBu_r (default), coolwarm, bwr; with --positive: inferno (default), jet, gray."
    ),
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="Overlay opacity."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Images per forward pass."),
    device: str = DEVICE_OPTION,
    weights: Path = WEIGHTS_OPTION,
    num_classes: int = NUM_CLASSES_OPTION,
    input_size: str = INPUT_SIZE_OPTION,
    ema: bool = EMA_OPTION,
    trust_pickle: bool = TRUST_PICKLE_OPTION,
    force: bool = FORCE_OPTION,
    json_: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
) -> None:
    """Evidence maps of every class from one forward pass: overlays, raw .npy maps, index.html, manifest.json."""
    with handle_errors(debug):
        from ..heatmaps import collect_images, load_map_model, parse_classes
        from ..heatmaps import explain as run_explain
        from ..io import check_output_dir, cleanup_on_failure

        check_output_dir(output, force=force)
        sources = collect_images(images)
        mm = load_map_model(
            model, device=device, weights=weights, num_classes=num_classes,
            input_size=parse_input_size(input_size), ema=ema, trust_pickle=trust_pickle,
        )
        parse_classes(classes, mm.class_names)  # fail on unknown names before any work
        # an image that fails to decode, a full disk or Ctrl-C midway leaves no partial gallery
        with cleanup_on_failure(output), progress_bar(f"explaining {len(sources)} image(s)") as update:
            results = run_explain(
                mm, sources, output, classes=classes, positive=positive, batch_size=batch_size, cmap=cmap,
                alpha=alpha, force=force, progress=update,
            )
        manifest = json.loads((output / "manifest.json").read_text(encoding="utf-8"))
        manifest["output"] = str(output)
        if json_:
            print_json(manifest)
            return
        t = Table(title=f"softcamify explain: {len(results)} image(s) ({mm.kind})", title_justify="left")
        t.add_column("image", overflow="fold")
        t.add_column("prediction")
        t.add_column("p", justify="right")
        t.add_column("overlays", overflow="fold")
        shown = results[:50]
        for r in shown:
            t.add_row(escape(r.source), escape(r.predicted_class), f"{r.probability:.3f}",
                      escape(", ".join(r.files["overlays"])))
        console.print(t)
        if len(results) > len(shown):
            console.print(f"[dim]… and {len(results) - len(shown)} more (see manifest.json)[/]")
        grid = "×".join(str(v) for v in results[0].evidence_grid)
        console.print(
            f"wrote {len(results)} map file(s) ({mm.num_classes} classes, {grid} grid) and overlays to "
            f"{escape(str(output))}; open {escape(str(output / 'index.html'))}"
        )
