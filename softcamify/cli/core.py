"""``softcamify inspect`` and ``softcamify convert``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from . import app
from ._common import (
    CLASSIFIER_OPTION,
    ENDING,
    FEATURES_LAYER_OPTION,
    MODEL,
    ORIGINAL,
    VOLUME,
    Shared,
    check_logit_scale,
    command,
    emit,
    handle_errors,
    model_kwargs,
)
from ._volumes import record_volume_config

MODEL_ARG = typer.Argument(
    ...,
    help="A timm name (resnet50), torchvision:NAME, monai:NAME, a .safetensors/.pth checkpoint, a Hugging Face "
    "style folder, a MONAI bundle folder, or a softcamify model (with --module: the weights of your own class); "
    "or a deployed .onnx classifier (rewritten as a graph, without PyTorch).",
    show_default=False,
)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (list, tuple)):
        return "×".join(str(x) for x in v) if all(isinstance(x, int) for x in v) else ", ".join(_fmt(x) for x in v)
    return "—" if v is None else str(v)


def load_for_cli(model: str, m):
    """The model of MODEL and the shared model options ``m`` (a :class:`Shared` bundle; ``--class-names`` are
    not the loader's)."""
    from ..checkpoints import load_model

    kw = model_kwargs(m)
    kw.pop("class_names", None)
    return load_model(model, **kw)


def _class_names(m: Any) -> list[str] | None:
    """The names of ``--class-names`` in the shared options ``m``, parsed (a list or a file)."""
    return model_kwargs(m).get("class_names")


@command(app)
def inspect(
    model: str = MODEL_ARG,
    m: Shared = Shared(*MODEL, *ORIGINAL),
    features_layer: str = FEATURES_LAYER_OPTION,
    classifier: str = CLASSIFIER_OPTION,
    o: Shared = Shared("json_", "debug"),
) -> None:
    """Show a model's backbone, pooling and head, and whether an exact SoftCAM conversion exists."""
    with handle_errors(o.debug):
        if _is_onnx(model):  # read as a graph, without torch
            _refuse_torch_options(m, features_layer=features_layer, classifier=classifier)
            from ..onnx_convert import inspect_onnx

            onnx_report = inspect_onnx(model)
            data, notes = onnx_report.to_dict(), onnx_report.notes
            show = lambda: _inspect_onnx_table(data)  # noqa: E731
        else:
            from ..conversion import inspect as inspect_model

            loaded = load_for_cli(model, m)
            report = inspect_model(loaded, features_layer=features_layer, classifier=classifier)
            data, notes = report.to_dict(), report.notes
            show = lambda: _inspect_table(report, data)  # noqa: E731
        emit(o.json_, data, show, notes)


def _inspect_table(report, data: dict) -> Table:
    t = Table(title=f"softcamify inspect: {report.architecture}", show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    t.add_row("architecture", f"{report.architecture} ({report.source.get('kind')})")
    t.add_row("parameters", f"{report.parameters:,}")
    t.add_row("input size", _fmt(data["input_size"]))
    t.add_row("mean / std", f"{_fmt(data['mean'])} / {_fmt(data['std'])}")
    t.add_row("interpolation, crop", f"{data['interpolation']}, crop_pct {data['crop_pct']}")
    t.add_row("classes", _classes_text(report.num_classes, report.class_names))
    if report.is_softcam:
        sc = report.softcam or {}
        conv = sc.get("conversion") or {}
        t.add_row("softcamify model", f"strategy {sc.get('strategy')}, exact {sc.get('exact')}")
        t.add_row("evidence grid", _fmt(sc.get("evidence_grid")))
        if conv:
            t.add_row(
                "conversion",
                f"max |Δlogit| {_fmt(conv.get('max_abs_diff'))}, top-1 agreement {_fmt(conv.get('top1_agreement'))}",
            )
        for h in sc.get("history") or []:
            fields = (f"{k}={_fmt(v)}" for k, v in h.items() if not isinstance(v, (dict, list)))
            t.add_row("history", ", ".join(fields))
    else:
        t.add_row("feature map", f"{_fmt(data['feature_shape'])} ({data['layout']})")
        t.add_row("head", data["head"])
        t.add_row("pooling", _fmt(data["pooling"]))
        t.add_row("between", ", ".join(data["between"]) or "nothing")
        t.add_row("classifier", _fmt(data["classifier"]))
        if data["strategy"]:
            kind = "[green]exact[/]" if data["exact"] else "[yellow]approximate[/]"
            t.add_row("strategy", f"{data['strategy']} ({kind})")
        else:
            t.add_row("strategy", f"[red]none[/]: {data['reason']}")
        t.add_row("evidence grid", f"{_fmt(data['evidence_grid'])} at {_fmt(data['input_size'][1:])} input")
        t.add_row("grids offered", _grids_text(data["grids"]))
    return t


@command(app)
def convert(
    model: str = MODEL_ARG,
    output: Path = typer.Option(
        ..., "--output", "-o", help="Output .safetensors file (softcamify format); .onnx for an .onnx MODEL."
    ),
    m: Shared = Shared(*MODEL, *ORIGINAL, "class_names"),
    features_layer: str = FEATURES_LAYER_OPTION,
    classifier: str = CLASSIFIER_OPTION,
    samples: int = typer.Option(8, "--samples", min=1, help="Random inputs used to verify the conversion."),
    calibration: Path = typer.Option(None, "--calibration", help="Folder of real images to verify on as well."),
    atol: float = typer.Option(
        1e-4, "--atol", min=0.0, help="Accepted max |Δlogit| against the original (absolute part)."
    ),
    rtol: float = typer.Option(
        1e-5, "--rtol", min=0.0, help="Relative part of the tolerance: atol + rtol × max |logit| (float32 round-off)."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Refuse approximate conversions (only exact ones are written)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random verification inputs."),
    output_stride: int = typer.Option(
        None,
        "--output-stride",
        show_default=False,
        help="Evidence grid: 32 (the model as it is), 16 or 8 for a 2× or 4× finer grid (the same "
        "weights in a dilated backbone: approximate, fine-tune before use; `inspect` lists the grids a "
        "model offers).",
    ),
    v: Shared = Shared(*VOLUME),
    o: Shared = Shared(*ENDING),
) -> None:
    """Replace pooling + classifier by an evidence conv initialized from the classifier; verify; save."""
    with handle_errors(o.debug):
        if _is_onnx(model):
            _refuse_torch_options(m, features_layer=features_layer, classifier=classifier, output_stride=output_stride)
            _convert_onnx(model, output, m, samples, calibration, atol, rtol, strict, seed, o)
            return
        from ..checkpoints import save
        from ..conversion import convert as convert_model
        from ..errors import UsageError
        from ..io import check_output_path

        if output.suffix != ".safetensors":
            raise UsageError(f"--output {output} must end in .safetensors (the softcamify format).")
        check_output_path(output, force=o.force)
        names = _class_names(m)
        import torch

        torch.manual_seed(seed)  # an architecture without --weights gets the same random weights every run
        loaded = load_for_cli(model, m)
        softcam = convert_model(
            loaded,
            class_names=names,
            atol=atol,
            rtol=rtol,
            samples=samples,
            calibration=calibration,
            strict=strict,
            seed=seed,
            features_layer=features_layer,
            classifier=classifier,
            output_stride=output_stride,
        )
        check_logit_scale(softcam.meta.conversion)
        record_volume_config(softcam, v)
        save(softcam, output, force=o.force)
        report = dict(softcam.meta.conversion)
        report["output"] = str(output)
        report["notes"] = list(dict.fromkeys([*loaded.notes, *(report.get("notes") or [])]))
        if softcam.meta.source.get("kind") == "module":
            report["notes"].append(
                f"{output.name} records only the class {softcam.meta.source.get('class')}: commands cannot rebuild "
                f"it; load it in Python with softcamify.load(path, module=<that classifier>), or convert the "
                "state dict with --module package.module:Class --model-args … for a file every command reads."
            )
        emit(o.json_, report, lambda: _convert_table(report, softcam, output), report["notes"])


def _convert_table(report: dict, softcam, output: Path) -> Table:
    t = Table(title=f"softcamify convert: {report['architecture']}", show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value")
    exact = "[green]exact[/]" if report["exact"] else "[yellow]approximate: fine-tune before use[/]"
    t.add_row("strategy", f"{report['strategy']} ({exact})")
    t.add_row("classes", _classes_text(report["num_classes"], softcam.meta.class_names))
    grid = f"{_fmt(report['evidence_grid'])} at {_fmt(report['input_size'][1:])} input"
    if report.get("original_grid"):
        grid += f" (--output-stride {report['output_stride']}; the original's: {_fmt(report['original_grid'])})"
    t.add_row("evidence grid", grid)
    _agreement_rows(t, report, "max relative error", f"{report['max_rel_diff']:.3g}")
    t.add_row("output", escape(str(output)))
    return t


def _agreement_rows(t: Table, report: dict, label: str, value: str) -> None:
    """The verification rows both convert tables show: max |Δlogit| against its tolerance, (label, value),
    top-1 agreement and what it was verified on."""
    t.add_row(
        "max |Δlogit|",
        f"{report['max_abs_diff']:.3g} (tolerance {report['atol']:g} + "
        f"{report['rtol']:g} × logit scale {report['logit_scale']:.3g})",
    )
    t.add_row(label, value)
    t.add_row("top-1 agreement", f"{report['top1_agreement']:.1%}")
    n = report["samples"] + report["calibration_images"]
    t.add_row("verified on", f"{report['samples']} random + {report['calibration_images']} real images ({n})")


def _grids_text(grids: dict[str, list[int]]) -> str:
    """'5×5 (--output-stride 32), 10×10 (16), 20×20 (8)': the evidence grids a classifier converts to."""
    if not grids:
        return "—"
    parts = [f"{_fmt(g)} ({'--output-stride ' if i == 0 else ''}{s})" for i, (s, g) in enumerate(grids.items())]
    return ", ".join(parts) + ("" if len(grids) > 1 else ": no finer grid")


def _classes_text(num_classes: int, class_names: list[str] | None = None) -> str:
    """The class count, with the class names when known; one logit reads as a binary classifier."""
    from ..binary import decision_names, is_binary

    text = str(num_classes)
    if is_binary(num_classes):
        names = decision_names(class_names or [], 1)
        return f"1 logit: binary, p({names[1]}) = σ(logit) (classes {', '.join(names)})"
    if class_names and any(n != f"class_{i}" for i, n in enumerate(class_names)):
        shown = ", ".join(class_names[:8]) + (", …" if len(class_names) > 8 else "")
        text += f" ({escape(shown)})"
    return text


def _is_onnx(model: str) -> bool:
    return model.lower().endswith(".onnx")


def _refuse_torch_options(m, **given) -> None:
    """Options that build or cut a PyTorch model have no meaning for an .onnx file: say so."""
    from ..errors import UsageError

    values = {
        **{k: getattr(m, k, None) for k in ("weights", "num_classes", "ema", "trust_pickle", "model_args", "module")},
        **given,
    }
    used = [k for k, v in values.items() if v not in (None, False)]
    if used:
        flags = ", ".join("--" + k.replace("_", "-") for k in used)
        raise UsageError(f"{flags}: only for a PyTorch model; an .onnx model is rewritten as a graph, not rebuilt.")


def _convert_onnx(model, output: Path, m, samples, calibration, atol, rtol, strict, seed, o) -> None:
    """``convert model.onnx -o out.onnx``: the graph rewrite (torch is never imported)."""
    from ..onnx_convert import convert_onnx
    from ._common import parse_floats, parse_input_size

    report = convert_onnx(
        model,
        output,
        force=o.force,
        class_names=_class_names(m),
        mean=parse_floats(m.mean, "--mean"),
        std=parse_floats(m.std, "--std"),
        input_size=parse_input_size(m.input_size),
        interpolation=m.interpolation,
        crop_pct=m.crop_pct,
        samples=samples,
        calibration=calibration,
        atol=atol,
        rtol=rtol,
        seed=seed,
        strict=strict,
    )
    data = report.to_dict()
    check_logit_scale(data)
    emit(o.json_, data, lambda: _convert_onnx_table(data), report.notes)


def _convert_onnx_table(report: dict) -> Table:
    t = Table(title=f"softcamify convert: {report['architecture']} (ONNX rewrite)", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    tail = report["tail"]
    t.add_row("tail", escape(" → ".join([tail["pooling"], *tail["between"], tail["classifier"]])))
    if tail.get("activation"):
        t.add_row("activation", f"{tail['activation']} (kept on '{escape(tail['output'])}')")
    t.add_row("strategy", f"{report['strategy']} ([green]exact[/])")
    t.add_row("classes", _classes_text(report["num_classes"]))
    t.add_row("evidence grid", f"{_fmt(report['evidence_grid'])} at {_fmt(report['input_size'][1:])} input")
    t.add_row("outputs", escape(f"logits '{report['outputs']['logits']}', evidence '{report['outputs']['evidence']}'"))
    _agreement_rows(t, report, "max |mean(evidence) − logits|", f"{report['maps_mean_diff']:.3g}")
    t.add_row("output", escape(str(report["output"])))
    return t


def _inspect_onnx_table(data: dict) -> Table:
    t = Table(title=f"softcamify inspect: {data['architecture']} (ONNX)", show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    t.add_row("architecture", f"{escape(data['architecture'])} (onnx, opset {data['source']['opset']})")
    t.add_row("parameters", f"{data['parameters']:,}")
    t.add_row("input size", _fmt(data["input_size"]))
    t.add_row("mean / std", f"{_fmt(data['mean'])} / {_fmt(data['std'])}")
    if data["is_softcam"]:
        t.add_row("softcamify model", "the graph has an evidence output already")
        return t
    t.add_row("classes", _classes_text(data["num_classes"], data["class_names"]) if data["num_classes"] else "—")
    if data["convertible"]:
        t.add_row("feature map", f"{_fmt(data['feature_shape'])} ({data['layout']})")
        t.add_row("tail", escape(data["head"]))
        if data["activation"]:
            t.add_row("activation", data["activation"])
        t.add_row("strategy", f"{data['strategy']} ([green]exact[/])")
        t.add_row("evidence grid", _fmt(data["evidence_grid"]))
    else:
        t.add_row("strategy", f"[red]none[/]: {escape(str(data['reason']))}")
    return t
