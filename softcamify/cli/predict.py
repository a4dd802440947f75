"""``softcamify predict``: top-k classes per image from an .onnx export (onnxruntime only) or a PyTorch model.

Nothing here imports torch: with an ``.onnx`` MODEL the command runs where only onnxruntime, numpy
and Pillow are installed.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from . import app
from ._common import (
    ORIGINAL,
    Shared,
    command,
    emit,
    handle_errors,
    model_kwargs,
    parse_input_size,
)


@command(app)
def predict(
    model: str = typer.Argument(
        ...,
        help="An .onnx export (runs in onnxruntime, no torch) or a softcamify .safetensors / checkpoint.",
        show_default=False,
    ),
    images: list[Path] = typer.Argument(
        ...,
        help="Image files or folders (searched recursively; hidden files skipped); volumes (.nii, .nii.gz, .npy, "
        ".npz) for a volume model.",
        show_default=False,
    ),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Classes listed per image."),
    batch_size: int = typer.Option(
        None, "--batch-size", "-b", min=1, help="Images per forward pass (default 16; 2 for volumes)."
    ),
    input_size: str = typer.Option(None, "--input-size", help="Input size 'H' or 'H W' (overrides the metadata)."),
    o: Shared = Shared(
        "device", "weights", "num_classes", "ema", "trust_pickle", *ORIGINAL, "class_names", "json_", "debug"
    ),
) -> None:
    """Top-k classes with probabilities for each image (preprocessing from the model's metadata)."""
    with handle_errors(o.debug):
        from ..prediction import predict as run_predict

        size = parse_input_size(input_size)
        report = run_predict(
            model,
            images,
            top_k=top_k,
            batch_size=batch_size,
            input_size=size,
            **model_kwargs(o),
        )
        emit(o.json_, report.to_dict(), lambda: _table(report), report.notes)


def _table(report) -> Table:
    t = Table(title=f"softcamify predict: {report.architecture} ({report.backend})", title_justify="left")
    t.add_column("image", overflow="fold")
    t.add_column("#", justify="right")
    t.add_column("class")
    t.add_column("probability", justify="right")
    for pred in report.predictions:
        for entry in pred.top_k:
            last = entry is pred.top_k[-1] and len(pred.top_k) > 1
            t.add_row(
                escape(pred.image) if entry["rank"] == 1 else "",
                str(entry["rank"]),
                escape(entry["class"]),
                f"{entry['probability']:.2%}",
                end_section=last,
            )
    return t
