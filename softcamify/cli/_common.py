"""What every subcommand shares: error handling, JSON output, consoles, common options.

Nothing here imports torch: commands that can run without it (``predict`` on an ``.onnx``) stay light.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OUTPUT, SoftcamifyError

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

# Options shared by every command that builds a model (typer reads these defaults).
DEBUG_OPTION = typer.Option(False, "--debug", help="Show full tracebacks for errors.")
JSON_OPTION = typer.Option(False, "--json", help="Print one machine-readable JSON object on stdout.")
FORCE_OPTION = typer.Option(False, "--force", "-f", help="Overwrite existing outputs.")
NUM_CLASSES_OPTION = typer.Option(
    None, "--num-classes", min=1, help="Number of classes (default: inferred from the classifier weights)."
)
INPUT_SIZE_OPTION = typer.Option(
    None,
    "--input-size",
    help="Input size 'H' or 'H W' (or HxW), overriding the model's data config, e.g. 128 for a model trained "
    "at 128 px; 'D H W' (or D,H,W) for a volume model, e.g. 16,112,112.",
)
WEIGHTS_OPTION = typer.Option(None, "--weights", "-w", help="Weights file for an architecture given by name.")
EMA_OPTION = typer.Option(False, "--ema", help="Use the EMA weights (state_dict_ema) of a timm training checkpoint.")
TRUST_PICKLE_OPTION = typer.Option(
    False,
    "--trust-pickle",
    help="Allow loading pickled checkpoints (this runs code stored in the file; only for files you trust).",
)
MODEL_ARGS_OPTION = typer.Option(
    None,
    "--model-args",
    help="Constructor arguments for an architecture given by name, as key=value pairs separated by commas "
    "(e.g. in_chans=1,global_pool=max) or a JSON object.",
)
MODULE_OPTION = typer.Option(
    None,
    "--module",
    help="A network class of your own, as package.module:Class (imported, never unpickled), built with "
    "--model-args; the original classifier is then its weights file (a state dict or checkpoint).",
)
CLASS_NAMES_OPTION = typer.Option(
    None,
    "--class-names",
    help="Class names in classifier order: comma-separated, or a text file with one name per line (override the "
    "model's, and are recorded in a model written; as many as the model has classes).",
)
FEATURES_LAYER_OPTION = typer.Option(
    None, "--features-layer", help="Module whose output is the last feature map (when the head cannot be found)."
)
CLASSIFIER_OPTION = typer.Option(None, "--classifier", help="The classifier module (when the head cannot be found).")
DEVICE_OPTION = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (auto: a GPU when there is one).")

MEAN_OPTION = typer.Option(
    None,
    "--mean",
    help="Normalization mean per channel, e.g. 0.485,0.456,0.406 (overrides the model's; recorded in the output).",
)
STD_OPTION = typer.Option(
    None,
    "--std",
    help="Normalization std per channel, e.g. 0.229,0.224,0.225 (overrides the model's; recorded in the output).",
)
CROP_PCT_OPTION = typer.Option(
    None, "--crop-pct", min=0.01, max=1.0, help="Center-crop fraction (timm's crop_pct; overrides the model's)."
)
INTERPOLATION_OPTION = typer.Option(
    None, "--interpolation", help="Resize filter: bilinear, bicubic, nearest, ... (overrides the model's)."
)

# How volumes (3D scans) are preprocessed: softcamify.volumes.VolumeConfig, parsed by cli/_volumes.volume_config.
WINDOW_OPTION = typer.Option(
    None,
    "--window",
    help="Volumes: intensity window LOW,HIGH, clipped and scaled to 0..1 (CT in HU: --window=-1000,400).",
)
ZSCORE_OPTION = typer.Option(False, "--zscore", help="Volumes: z-score each volume's intensities (MRI).")
TARGET_SHAPE_OPTION = typer.Option(
    None, "--target-shape", help="Volumes: resample to D,H,W voxels (e.g. 64,64,64; one number for a cube)."
)
TARGET_SPACING_OPTION = typer.Option(
    None,
    "--target-spacing",
    help="Volumes: resample to this voxel size in mm along the file's axes (e.g. 1.5,1.5,2); not with --target-shape.",
)

# Every option several commands share, declared once: parameter name -> (type, typer option).
SHARED_OPTIONS: dict[str, tuple[type, Any]] = {
    "device": (str, DEVICE_OPTION),
    "weights": (Path, WEIGHTS_OPTION),
    "num_classes": (int, NUM_CLASSES_OPTION),
    "input_size": (str, INPUT_SIZE_OPTION),
    "ema": (bool, EMA_OPTION),
    "trust_pickle": (bool, TRUST_PICKLE_OPTION),
    "force": (bool, FORCE_OPTION),
    "json_": (bool, JSON_OPTION),
    "debug": (bool, DEBUG_OPTION),
    "model_args": (str, MODEL_ARGS_OPTION),
    "module": (str, MODULE_OPTION),
    "class_names": (str, CLASS_NAMES_OPTION),
    "mean": (str, MEAN_OPTION),
    "std": (str, STD_OPTION),
    "crop_pct": (float, CROP_PCT_OPTION),
    "interpolation": (str, INTERPOLATION_OPTION),
    "window": (str, WINDOW_OPTION),
    "zscore": (bool, ZSCORE_OPTION),
    "target_shape": (str, TARGET_SHAPE_OPTION),
    "target_spacing": (str, TARGET_SPACING_OPTION),
}
MODEL = ("weights", "num_classes", "input_size", "ema", "trust_pickle")  # how a model file or name is loaded
ENDING = ("force", "json_", "debug")  # the usual last options of a command that writes
# what a user says of an original classifier: its class and constructor arguments, how its images were preprocessed
ORIGINAL = ("module", "model_args", "mean", "std", "crop_pct", "interpolation")
# how volumes are preprocessed (cli/_volumes.volume_config turns them into a VolumeConfig)
VOLUME = ("window", "zscore", "target_shape", "target_spacing")


class Shared:
    """A bundle of :data:`SHARED_OPTIONS` in a command's signature: ``o: Shared = Shared(*MODEL, "json_")``.

    :func:`command` puts the bundle's options in its place (same order, so ``--help`` lists them there) and
    hands the command their parsed values as one namespace: ``o.weights``, ``o.json_`` ...
    """

    def __init__(self, *names: str):
        unknown = [n for n in names if n not in SHARED_OPTIONS]
        if unknown:
            raise ValueError(f"not shared options: {unknown}")
        self.names = names


def command(app: typer.Typer, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """``@app.command(...)`` for a function whose signature holds :class:`Shared` bundles."""

    def register(func: Callable[..., Any]) -> Any:
        params, bundles = [], {}
        for p in inspect.signature(func, eval_str=True).parameters.values():
            if not isinstance(p.default, Shared):
                params.append(p)
                continue
            bundles[p.name] = p.default.names
            params += [
                p.replace(name=n, annotation=SHARED_OPTIONS[n][0], default=SHARED_OPTIONS[n][1])
                for n in p.default.names
            ]

        @functools.wraps(func)
        def run(**values: Any) -> Any:
            for name, names in bundles.items():
                values[name] = SimpleNamespace(**{n: values.pop(n) for n in names})
            return func(**values)

        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]  # what typer reads
        run.__annotations__ = {p.name: p.annotation for p in params}
        return app.command(*args, **kwargs)(run)

    return register


def model_kwargs(o: SimpleNamespace, **extra: Any) -> dict[str, Any]:
    """The model options of a :class:`Shared` bundle (``--device`` and ``--class-names`` included) as the
    library's keyword arguments, ``--input-size``, ``--model-args``, ``--mean``/``--std`` and ``--class-names``
    parsed; ``extra`` joins them."""
    kw = {k: getattr(o, k) for k in ("device", *MODEL, *ORIGINAL, "class_names") if hasattr(o, k)}
    if "input_size" in kw:
        kw["input_size"] = parse_input_size(kw["input_size"])
    if "model_args" in kw:
        kw["model_args"] = parse_model_args(kw["model_args"])
    for key in ("mean", "std"):
        if key in kw:
            kw[key] = parse_floats(kw[key], f"--{key}")
    if "class_names" in kw:
        kw["class_names"] = parse_class_names(kw["class_names"], distinct=True)
    for key in ("mean", "std", "crop_pct", "interpolation"):  # only what was given: a library default stays
        if key in kw and kw[key] is None:
            del kw[key]
    return {**kw, **extra}


def print_notes(notes: Iterable[str]) -> None:
    for note in notes:
        console.print(f"[dim]note:[/] {escape(note)}")


def emit(as_json: bool, data: Any, show: Callable[[], Any], notes: Iterable[str] = ()) -> None:
    """The common ending of a command: with ``--json`` one JSON object (``data``) on stdout; otherwise
    ``show()`` (a rich table it returns is printed) and then the notes."""
    if as_json:
        print_json(data)
        return
    shown = show()
    if shown is not None:
        console.print(shown)
    print_notes(notes)


def cell(v: Any) -> str:
    """A table cell: a float with 4 decimals, ``—`` for a missing value."""
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def print_gates(gates: Iterable[Any], title: str, report: Any = None, junit: Any = None) -> None:
    """The judged gates (:class:`~softcamify.evaluation.gates.GateOutcome` s) as a table, when there are any,
    then the report folder and JUnit file written (when given)."""
    from rich.table import Table

    gates = list(gates)
    if gates:
        g = Table(title=title, title_justify="left")
        for h in ("gate", "value", "required", "result"):
            g.add_column(h, justify="left" if h in ("gate", "result") else "right")
        for out in gates:
            verdict = "[green]pass[/]" if out.passed else "[bold red]FAIL[/]"
            g.add_row(escape(out.gate.name), cell(out.value), f"{out.gate.op} {out.gate.threshold:g}", verdict)
        console.print(g)
    if report:
        console.print(f"report: {escape(str(report))}")
    if junit:
        console.print(f"JUnit report: {escape(str(junit))}")


@contextlib.contextmanager
def report_progress(output: Path | None, description: str) -> Iterator[Callable[[int, int], None]]:
    """:func:`progress_bar` for a command that writes a report folder ``output``: a full disk, an error or Ctrl-C
    while it runs leaves no partial folder (:func:`softcamify.io.cleanup_on_failure`)."""
    from ..io import cleanup_on_failure

    with (
        cleanup_on_failure(output) if output is not None else contextlib.nullcontext(),
        progress_bar(description) as update,
    ):
        yield update


@contextlib.contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr (stdout stays clean for --json); yields ``update(done, total)``."""
    if not enabled or not err_console.is_terminal:
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


MAX_INPUT_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS: no image above it is ever decoded either


def parse_pair(value: str | None, flag: str, unit: str) -> tuple[int, int] | None:
    """'224' -> (224, 224); '224 192', '224x192', '224×192', '224,192' -> (224, 192); None or '' -> None."""
    from ..errors import UsageError

    if value is None or str(value).strip() == "":
        return None
    text = str(value).lower().replace("x", " ").replace("×", " ").replace(",", " ")
    parts = [p for p in text.split() if p]
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"{flag} {value!r} is not 'N' or 'H W' in {unit}.") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 1:
        raise UsageError(f"{flag} {value!r} is not 'N' or 'H W' with positive integers.")
    return nums[0], nums[1]


def parse_input_size(value: str | None) -> tuple[int, ...] | None:
    """'224' -> (224, 224); '224 192', '224x192', '224,192' -> (224, 192); three numbers are a volume model's
    depth, height and width: '16,112,112' -> (16, 112, 112)."""
    from ..errors import UsageError

    text = "" if value is None else str(value).lower().replace("x", " ").replace("×", " ").replace(",", " ")
    parts = text.split()
    if len(parts) == 3:
        try:
            volume = tuple(int(p) for p in parts)
        except ValueError:
            raise UsageError(f"--input-size {value!r} is not 'D H W' in voxels.") from None
        if min(volume) < 1:
            raise UsageError(f"--input-size {value!r} is not 'D H W' with positive integers.")
        if volume[0] * volume[1] * volume[2] > MAX_INPUT_PIXELS:
            raise UsageError(f"--input-size {value!r} has more than {MAX_INPUT_PIXELS:,} voxels; give a smaller size.")
        return volume
    size = parse_pair(value, "--input-size", "pixels")
    if size is not None and size[0] * size[1] > MAX_INPUT_PIXELS:  # larger inputs only exhaust memory (OOM)
        raise UsageError(
            f"--input-size {value!r} has {size[0] * size[1]:,} pixels, more than the {MAX_INPUT_PIXELS:,} "
            "allowed (Pillow's decompression-bomb limit); give a smaller size."
        )
    return size


def parse_floats(value: str | None, option: str) -> list[float] | None:
    """'0.485,0.456,0.406' (or spaces) -> [0.485, 0.456, 0.406]; None or '' -> None."""
    from ..errors import UsageError

    if value is None or not str(value).strip():
        return None
    try:
        return [float(v) for v in str(value).replace(",", " ").split()]
    except ValueError:
        raise UsageError(f"{option} {value!r} is not a list of numbers like '0.485,0.456,0.406'.") from None


def parse_class_names(value: str | None, distinct: bool = False) -> list[str] | None:
    """The one reader of ``--class-names``: a text file with one name per line (ImageNet-size lists), or
    comma-separated names."""
    from ..errors import InputError, UsageError

    if value is None:
        return None
    p = Path(value)
    if p.is_file():
        try:
            names = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"--class-names file {p} cannot be read ({e}).") from None
    else:
        names = [c.strip() for c in str(value).split(",")]
    if not names or any(not n for n in names):
        raise UsageError("--class-names must be comma-separated non-empty names, or a text file with one per line.")
    if distinct and len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UsageError(f"--class-names must be distinct names; {dup!r} appears more than once.")
    return names


MAX_LOGIT = 1e6  # no classifier's logits come near it; float32 still resolves 0.1 there


def check_logit_scale(conversion: dict[str, Any] | None) -> None:
    """Refuse a conversion verified against logits that are not finite or absurdly large: the tolerance
    scales with the logits (``--rtol``), so at 1e19 any difference passes and "exact" would mean nothing.
    Such logits come from broken weights, or weights loaded wrongly (quantized integers read as floats)."""
    from ..errors import InputError

    scale = (conversion or {}).get("logit_scale")
    if not isinstance(scale, (int, float)) or (math.isfinite(scale) and abs(scale) <= MAX_LOGIT):
        return
    what = f"reach {scale:.3g}" if math.isfinite(scale) else "are not finite"
    raise InputError(
        f"The original {(conversion or {}).get('architecture') or 'model'}'s logits {what} on the verification "
        f"inputs (a classifier's stay far below {MAX_LOGIT:.0e}): its weights are broken or were loaded "
        "wrongly (quantized integers read as floats?), so the conversion cannot be verified; nothing was written."
    )


def parse_model_args(value: str | None) -> dict[str, Any] | None:
    """'in_chans=1,global_pool=max' or '{"in_chans": 1}' -> {"in_chans": 1, "global_pool": "max"}."""
    from ..errors import UsageError

    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise UsageError(f"--model-args {value!r} is not valid JSON.") from None
        if not isinstance(data, dict):
            raise UsageError("--model-args must be a JSON object or key=value pairs.")
        return data
    out: dict[str, Any] = {}
    for item in text.split(","):
        if "=" not in item:
            raise UsageError(f"--model-args item {item.strip()!r} is not key=value.")
        key, raw = (p.strip() for p in item.split("=", 1))
        if not key.isidentifier():
            raise UsageError(f"--model-args key {key!r} is not a valid argument name.")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def _finite(obj: Any) -> Any:
    """JSON has no NaN/Infinity: write them as null so every parser accepts the output."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def print_json(data: Any) -> None:
    text = json.dumps(_finite(json.loads(json.dumps(data, default=_json_default))), indent=2)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# Library parameters that a command's option carries under another name: library name -> the command
# function's parameter (click's name for the option). Consulted only when the running command has no
# parameter of the library's own name (``datasets synth`` has its own OUT_DIR argument, for example).
PARAM_ALIASES: dict[str, str] = {
    "run_dir": "output",  # training.finetune(model, data_dir, run_dir): finetune -o/--output
    "out_dir": "output",  # sweep(...), evaluate(...), run_demo(out_dir): -o/--output
    "labels_csv": "labels",  # data.discover(labels_csv=...): finetune/sweep --labels
    "devices": "device",  # sweep(devices=...): sweep --device cuda:0,cuda:1
}


def option_name(param: str) -> str | None:
    """The running command's own name for a library parameter: ``batch_size`` -> ``--batch-size``, an
    argument -> its metavar (``MODEL``), a name of :data:`PARAM_ALIASES` -> its option
    (``run_dir`` -> ``--output``); ``None`` when the command has no such option (or there is no command), so
    a message never names an option the command lacks."""
    try:
        ctx = _current_context()
        if ctx is None:
            return None
        by_name = {p.name: p for p in ctx.command.params}
        p = by_name.get(param) or by_name.get(f"{param}_") or by_name.get(PARAM_ALIASES.get(param, ""))
        if p is None:
            return None
        if p.param_type_name == "argument":  # click's name for it, as --help and docs/cli.md write it: DATA_DIR
            return str(getattr(p, "human_readable_name", None) or p.metavar or p.name.upper())
        return str(max(p.opts, key=len))
    except Exception:  # noqa: BLE001 - a click/typer without these internals: the message keeps the Python name
        return None


def _current_context() -> Any:
    """The click context of the running command, or None. Recent typer runs its commands on its own copy of
    click (``typer._click``), older typer and plain click commands on click itself: both are asked."""
    import importlib

    for name in ("typer._click.globals", "click.globals"):
        try:
            current = importlib.import_module(name).get_current_context
        except (ImportError, AttributeError):
            continue
        ctx = current(silent=True)
        if ctx is not None:
            return ctx
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would raise :class:`KeyboardInterrupt` (so every ``except
    KeyboardInterrupt`` cleanup runs for it too); the CLI exits with 130 for both."""


def fail(message: str, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)  # paths may hold [/]
    raise typer.Exit(code)


@contextlib.contextmanager
def handle_errors(debug: bool = False) -> Iterator[None]:
    """Turn library errors into one red line and a documented exit code (traceback with --debug)."""
    try:
        yield
    except typer.Exit:
        raise
    except SoftcamifyError as e:
        if debug:
            traceback.print_exc()
        fail(e.render(option_name), e.exit_code)
    except KeyboardInterrupt as e:
        err_console.print("[yellow]interrupted[/]" + (" by SIGTERM" if isinstance(e, Terminated) else ""))
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            _unexpected(e, debug)
        if debug:
            traceback.print_exc()
        where = f" {e.filename}" if e.filename else ""
        why = "the file system is read-only" if e.errno == errno.EROFS else "the disk is full"
        fail(f"Cannot write{where}: {why}.", EXIT_OUTPUT)
    except Exception as e:  # a bug: say so, keep the traceback for --debug
        _unexpected(e, debug)


def _unexpected(e: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    fail(
        f"unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback and report it).",
        EXIT_FAILURE,
    )
