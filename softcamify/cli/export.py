"""``softcamify export``: a validated ONNX file (logits + evidence) or the softcamify .safetensors format."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from . import app
from ._common import ENDING, MODEL, ORIGINAL, Shared, check_logit_scale, command, emit, handle_errors, model_kwargs


def _dims(dims) -> str:
    return " × ".join(str(d) for d in dims)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


@command(app)
def export(
    model: str = typer.Argument(
        ...,
        help="A softcamify .safetensors, a fine-tuning checkpoint (last.pt) or run folder, or any model convert "
        "accepts (converted on the fly).",
        show_default=False,
    ),
    output: Path = typer.Option(..., "--output", "-o", help="OUT.onnx (validated in onnxruntime) or OUT.safetensors."),
    opset: int = typer.Option(
        None, "--opset", help="ONNX opset (default: torch's; below 18 uses the TorchScript exporter)."
    ),
    atol: float = typer.Option(
        1e-4,
        "--atol",
        min=0.0,
        help="Absolute part of the tolerance: each output (logits, evidence) must be within "
        "atol + rtol × its largest magnitude of PyTorch's.",
    ),
    rtol: float = typer.Option(1e-5, "--rtol", min=0.0, help="Relative part of the tolerance (float32 round-off)."),
    exporter: str = typer.Option(
        "auto",
        "--exporter",
        help="auto (TorchScript, then dynamo when it fails or does not validate), torchscript, dynamo.",
    ),
    spatial: str = typer.Option(
        "auto", "--spatial", help="Height and width: auto (dynamic when the backbone allows), dynamic, static."
    ),
    m: Shared = Shared(*MODEL, *ORIGINAL, "class_names"),
    strict: bool = typer.Option(False, "--strict", help="Refuse a model that converts only approximately."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random validation inputs."),
    o: Shared = Shared(*ENDING),
) -> None:
    """Export a SoftCAM model to ONNX (outputs logits and evidence, checked against PyTorch) or .safetensors."""
    with handle_errors(o.debug):
        from ..errors import UsageError
        from ..io import check_output_path

        suffix = output.suffix.lower()
        if suffix not in (".onnx", ".safetensors"):
            raise UsageError(f"--output {output} must end in .onnx or .safetensors.")
        if suffix == ".safetensors" and (opset is not None or exporter != "auto" or spatial != "auto"):
            raise UsageError("--opset, --exporter and --spatial only apply to an .onnx output.")
        check_output_path(output, force=o.force)
        load_kwargs = model_kwargs(m, strict=strict, atol=atol)

        import torch

        from ..exporters import export as run_export  # imports torch: only after the options are checked
        from ..runtime import load_softcam

        torch.manual_seed(seed)  # an architecture without --weights gets the same random weights every run
        sc, notes = load_softcam(model, **load_kwargs)
        check_logit_scale(sc.meta.conversion)
        kwargs = dict(force=o.force, atol=atol, rtol=rtol, seed=seed, trust_pickle=m.trust_pickle)
        if suffix == ".onnx":
            kwargs.update(opset=opset, exporter=exporter, spatial=spatial)
        report = run_export(sc, output, **kwargs)
        report.notes = notes + report.notes
        emit(o.json_, report.to_dict(), lambda: _table(report), report.notes)


def _table(report) -> Table:
    t = Table(title=f"softcamify export: {report.architecture}", show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    t.add_row("format", report.format)
    if report.format == "onnx":
        t.add_row("exporter", f"{report.exporter}, opset {report.opset}")
        for name, dims in report.shapes.items():
            t.add_row(name, _dims(dims))
        axes = "depth/height/width" if len(report.input_size) == 4 else "height/width"
        t.add_row(
            "dynamic",
            f"batch {'yes' if report.dynamic_batch else 'no'}, {axes} {'yes' if report.dynamic_spatial else 'no'}",
        )
        if report.spatial_note and not report.dynamic_spatial:
            t.add_row("static size", escape(report.spatial_note))
        for ck in report.checks:
            t.add_row(
                f"check batch {ck['batch']}, {'×'.join(str(v) for v in ck['size'])}",
                f"max |Δlogits| {ck['max_abs_diff_logits']:.2g}, max |Δevidence| {ck['max_abs_diff_evidence']:.2g}",
            )
    else:
        t.add_row(
            "reload check",
            f"max |Δlogits| {report.max_abs_diff_logits:.2g}, max |Δevidence| {report.max_abs_diff_evidence:.2g}",
        )
    t.add_row("atol", f"{report.atol:g} [green](passed)[/]")
    t.add_row("strategy", f"{report.strategy} ({'exact' if report.exact else 'approximate'})")
    t.add_row("classes, input", f"{report.num_classes}, {_dims(report.input_size)}")
    t.add_row("output", f"{escape(report.output)} ({_size(report.file_size)})")
    return t
