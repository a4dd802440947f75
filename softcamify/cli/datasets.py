"""``softcamify datasets``: datasets to try softcamify on (``datasets synth``: synthetic lesions; ``datasets
synth3d``: synthetic lesion volumes)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from . import app
from ._common import ENDING, Shared, command, console, emit, handle_errors

datasets_app = typer.Typer(
    help="Make datasets to try softcamify on (synthetic lesion images or volumes with exact masks).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@command(datasets_app, "synth")
def synth(
    out_dir: Path = typer.Argument(..., help="Output folder (created; must be empty unless --force)."),
    n: int = typer.Option(600, "--n", min=1, help="Number of images (classes balanced)."),
    size: int = typer.Option(128, "--size", min=32, help="Image side in pixels."),
    classes: str = typer.Option(
        "healthy,red_lesion,bright_lesion",
        "--classes",
        help="Comma-separated subset of healthy, red_lesion, bright_lesion.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives byte-identical images."),
    ordinal: bool = typer.Option(
        False, "--ordinal", help="Classes grade_0..grade_3 by the number of red lesions (0, 1-2, 3-5, 6+)."
    ),
    shortcut: bool = typer.Option(
        False, "--shortcut", help="Add a class-dependent corner tag to training images only (a planted shortcut)."
    ),
    contrast: float = typer.Option(1.0, "--contrast", help="Lesion contrast factor (below 1: a harder task)."),
    noise: float = typer.Option(1.0, "--noise", help="Texture and noise factor (0: clean images)."),
    o: Shared = Shared(*ENDING),
) -> None:
    """Write a synthetic fundus-like lesion dataset with exact lesion masks.

    Layout: OUT_DIR/{train,val,test}/<class>/<id>.png, masks in OUT_DIR/masks/... (same relative paths)
    and OUT_DIR/manifest.json (lesion boxes, options, seed). Use OUT_DIR as DATA_DIR and OUT_DIR/masks
    as the mask folder.
    """
    with handle_errors(o.debug):
        from ..data.synth import DEFAULT_CLASSES, make_lesions

        names = tuple(c.strip() for c in classes.split(",") if c.strip())
        if ordinal and names == tuple(DEFAULT_CLASSES):
            names = ()
        from ..io import cleanup_on_failure

        t0 = time.perf_counter()
        with cleanup_on_failure(out_dir):  # a full disk or Ctrl-C leaves no partial dataset
            manifest = make_lesions(
                out_dir,
                n=n,
                size=size,
                classes=names or DEFAULT_CLASSES,
                seed=seed,
                ordinal=ordinal,
                shortcut=shortcut,
                contrast=contrast,
                noise=noise,
                force=o.force,
                keep_images=False,  # in manifest.json; memory does not grow with --n
            )
        keys = ("n", "size", "seed", "classes", "options", "shortcut", "counts")
        summary = _summary(out_dir, manifest, keys, time.perf_counter() - t0)
        emit(o.json_, summary, lambda: _print_summary(summary))


@command(datasets_app, "synth3d")
def synth3d(
    out_dir: Path = typer.Argument(..., help="Output folder (created; must be empty unless --force)."),
    n: int = typer.Option(60, "--n", min=1, help="Number of volumes (classes balanced)."),
    shape: str = typer.Option("32,32,32", "--shape", help="Volume shape D,H,W in voxels (16 to 256 each)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives byte-identical files."),
    fmt: str = typer.Option(
        None, "--format", help="nii (.nii.gz, needs nibabel) or npy (default: nii when nibabel is installed)."
    ),
    contrast: float = typer.Option(1.0, "--contrast", help="Lesion contrast factor (below 1: a harder task)."),
    o: Any = Shared(*ENDING),  # a namespace of the options when the command runs
) -> None:
    """Write a synthetic CT-like volume dataset (healthy / lesion) with exact lesion masks.

    Layout: OUT_DIR/{train,val,test}/<class>/<id>.nii.gz (int16 HU, 1.5 mm voxels), masks in
    OUT_DIR/masks/... (same relative paths) and OUT_DIR/manifest.json (lesions, geometry, seed). Use
    OUT_DIR as DATA_DIR (with the volume options, e.g. --window=-1000,400) and OUT_DIR/masks as the mask folder.
    """
    with handle_errors(o.debug):
        from ..errors import UsageError
        from ..io import cleanup_on_failure
        from ..volumes.synth3d import make_volumes

        try:
            sides = [int(v) for v in shape.replace("x", ",").split(",") if v.strip()]
        except ValueError as e:
            raise UsageError(f"shape {shape!r} must be three whole numbers D,H,W.", param="shape") from e
        if len(sides) == 1:
            sides = sides * 3
        t0 = time.perf_counter()
        with cleanup_on_failure(out_dir):  # a full disk or Ctrl-C leaves no partial dataset
            manifest = make_volumes(out_dir, n=n, shape=sides, seed=seed, fmt=fmt, contrast=contrast, force=o.force)
        keys = ("n", "shape", "spacing", "format", "seed", "classes", "counts")
        summary = _summary(out_dir, manifest, keys, time.perf_counter() - t0)
        emit(o.json_, summary, lambda: _print_summary3d(summary))


def _print_summary3d(summary: dict) -> None:
    from rich.markup import escape

    shape = "×".join(str(v) for v in summary["shape"])
    table = _counts_table(f"{summary['n']} volumes, {shape} voxels, seed {summary['seed']}", summary)
    console.print(table)
    console.print(
        f"Wrote {escape(summary['out_dir'])} ({summary['format']}) in {summary['seconds']:.1f} s; masks in "
        f"{escape(summary['masks'])}, manifest {escape(summary['manifest'])}."
    )


def _print_summary(summary: dict) -> None:
    from rich.markup import escape

    table = _counts_table(f"{summary['n']} images, {summary['size']} px, seed {summary['seed']}", summary)
    splits = list(summary["counts"])
    table.add_row("[bold]total[/]", *(f"[bold]{sum(summary['counts'][s].values())}[/]" for s in splits))
    console.print(table)
    opts = summary["options"]
    extras = [k for k in ("ordinal", "shortcut") if opts[k]]
    extras += [f"{k} {opts[k]:g}" for k in ("contrast", "noise") if opts[k] != 1.0]
    console.print(
        f"Wrote {escape(summary['out_dir'])} in {summary['seconds']:.1f} s"
        + (f" ({', '.join(extras)})" if extras else "")
        + f"; masks in {escape(summary['masks'])}, manifest {escape(summary['manifest'])}."
    )


app.add_typer(datasets_app, name="datasets")


def _summary(out_dir: Path, manifest: dict, keys: tuple[str, ...], seconds: float) -> dict:
    """What a synth command reports: where the dataset, its manifest and masks are, the manifest's ``keys``
    and the seconds it took."""
    return {
        "out_dir": str(out_dir),
        "manifest": str(Path(out_dir) / "manifest.json"),
        "masks": str(Path(out_dir) / "masks"),
        **{k: manifest[k] for k in keys},
        "seconds": round(seconds, 3),
    }


def _counts_table(title: str, summary: dict) -> Any:
    """Images (or volumes) per class (rows) and split (columns) of a synth summary."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("class")
    splits = list(summary["counts"])
    for s in splits:
        table.add_column(s, justify="right")
    for name in summary["classes"]:
        table.add_row(name, *(str(summary["counts"][s][name]) for s in splits))
    return table
