"""What every subcommand shares: error handling, JSON output, consoles, common options.

Nothing here imports torch: commands that can run without it (``predict`` on an ``.onnx``) stay light.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import sys
import traceback
from collections.abc import Iterator
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
    help="Input size 'H' or 'H W' (or HxW), overriding the model's data config, e.g. 128 for a model trained at 128 px.",
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
FEATURES_LAYER_OPTION = typer.Option(
    None, "--features-layer", help="Module whose output is the last feature map (when the head cannot be found)."
)
CLASSIFIER_OPTION = typer.Option(None, "--classifier", help="The classifier module (when the head cannot be found).")
DEVICE_OPTION = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (auto: a GPU when there is one).")


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


def parse_input_size(value: str | None) -> tuple[int, int] | None:
    """'224' -> (224, 224); '224 192', '224x192', '224,192' -> (224, 192)."""
    from ..errors import UsageError

    size = parse_pair(value, "--input-size", "pixels")
    if size is not None and size[0] * size[1] > MAX_INPUT_PIXELS:  # larger inputs only exhaust memory (OOM)
        raise UsageError(
            f"--input-size {value!r} has {size[0] * size[1]:,} pixels, more than the {MAX_INPUT_PIXELS:,} "
            "allowed (Pillow's decompression-bomb limit); give a smaller size."
        )
    return size


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
        fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
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
