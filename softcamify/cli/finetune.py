"""``softcamify finetune``: ElasticNet fine-tuning of a SoftCAM model on an image folder."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import SoftcamifyError
from ..report import format_fixed as _fmt
from . import app
from ._common import (
    CROP_PCT_OPTION,
    DEBUG_OPTION,
    DEVICE_OPTION,
    EMA_OPTION,
    INPUT_SIZE_OPTION,
    INTERPOLATION_OPTION,
    JSON_OPTION,
    MEAN_OPTION,
    MODEL_ARGS_OPTION,
    MODULE_OPTION,
    STD_OPTION,
    TARGET_SHAPE_OPTION,
    TARGET_SPACING_OPTION,
    TRUST_PICKLE_OPTION,
    WEIGHTS_OPTION,
    WINDOW_OPTION,
    ZSCORE_OPTION,
    console,
    err_console,
    handle_errors,
    option_name,
    parse_floats,
    parse_input_size,
    parse_model_args,
    print_json,
)
from ._volumes import volume_config, volume_options_given

EXIT_FILE_ENV = "SOFTCAMIFY_EXIT_FILE"  # where rank 0 leaves its exit code for the --nproc launcher
ARGV_ENV = "SOFTCAMIFY_LAUNCH_ARGV"  # the --nproc command line, for the resume hint printed by rank 0


class ConsoleReporter:
    """Bars per epoch (terminal only), a validation table per epoch and notes, on rich consoles."""

    def __init__(self, bars: bool, tables: bool, notes_to_stderr: bool):
        self.bars = bars
        self.tables = tables
        self.out = err_console if notes_to_stderr else console
        self.progress = None
        self.task = None
        self.epoch = 0
        self.epochs = 0

    # Reporter protocol (softcamify.training.Reporter)
    def start(self, info: dict[str, Any]) -> None:
        if not self.tables:
            return
        d = info["data"]
        amp = info["amp"] or "off"
        procs = f"{info['world_size']} processes" if info["world_size"] > 1 else "1 process"
        cfg = info["config"]
        console.print(
            f"[bold]finetune[/] {escape(info['model'])} ({info['strategy']}) · {len(info['classes'])} classes "
            f"({escape(', '.join(info['classes']))}) · {d['train_images']} train / {d['val_images']} val images"
        )
        console.print(
            f"[dim]{info['device']} · {procs} · AMP {amp} · {cfg['optimizer']} lr {cfg['lr']:g} · "
            f"l1 {cfg['l1']:g} · l2 {cfg['l2']:g} · batch {cfg['batch_size']} · {info['steps_per_epoch']} steps/epoch "
            f"· {escape(str(info['run_dir']))}[/]"
        )

    def note(self, message: str) -> None:
        self.out.print(f"[yellow]note:[/] {escape(message)}", highlight=False)

    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        self.epoch, self.epochs = epoch, epochs
        if not self.bars:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=steps, completed=done, epoch=f"{epoch}/{epochs}", stats="")

    def step(self, step: int, steps: int, images: int, running: dict[str, float] | None) -> None:
        if self.progress is None:
            return
        kw: dict[str, Any] = {"completed": step}
        if running is not None:
            kw["stats"] = (
                f"loss {running['loss']:.4f} · acc {running['accuracy']:.3f} · {running['images_per_s']:.0f} img/s"
            )
        self.progress.update(self.task, **kw)

    def epoch_end(self, record: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if not self.tables:
            return
        from rich import box

        tr, va = record["train"], record["val"]
        best = " [green]★ best[/]" if record.get("best") else ""
        t = Table(
            title=f"epoch {record['epoch']}/{record['epochs']} · {tr['images_per_s']:.0f} img/s · "
            f"lr {record['lr']:.2e} · {record['time_s']:.1f} s{best}",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            padding=(0, 1),
        )
        t.add_column("metric")
        t.add_column("train", justify="right")
        t.add_column("val", justify="right")
        rows = [
            ("loss", _fmt(tr["loss"], 4), _fmt(va["loss"], 4)),
            ("cross-entropy", _fmt(tr["ce"], 4), _fmt(va["ce"], 4)),
            ("L1 = mean Σ|A|", _fmt(tr["l1"]), _fmt(va["l1"])),
            ("L2 = mean ΣA²", _fmt(tr["l2"]), _fmt(va["l2"])),
            ("accuracy", _fmt(tr["accuracy"]), _fmt(va["accuracy"])),
            ("balanced accuracy", "", _fmt(va["balanced_accuracy"])),
            ("ROC-AUC (macro)", "", _fmt(va["auc"])),
        ]
        if "kappa" in va:
            rows.append(("quadratic kappa", "", _fmt(va["kappa"])))
        rows += [("sparsity (|A| small)", "", _fmt(va["sparsity"])), ("L1 per map", "", _fmt(va["map_l1"]))]
        rows += [
            (f"sens / spec {escape(pc['name'])}", "", f"{_fmt(pc['sensitivity'])} / {_fmt(pc['specificity'])}")
            for pc in va["per_class"]
        ]
        for r in rows:
            t.add_row(*r)
        console.print(t)

    def end(self, result) -> None:
        if not self.tables:
            return
        if result.best_epoch is not None:
            console.print(
                f"[bold green]done[/]: best {result.monitor} {_fmt(result.best_value, 4)} at epoch {result.best_epoch} "
                f"of {result.epochs_completed} → {escape(str(result.best_path))}"
            )
        console.print(f"[dim]state {escape(str(result.last_path))} · metrics {escape(str(result.metrics_path))}[/]")


def _flags(*names: str) -> set[str]:
    """The option strings (``--force``, ``-f``) of finetune's parameters ``names``, from its signature."""
    params = inspect.signature(finetune).parameters
    return {flag for name in names for flag in params[name].default.param_decls}


def _strip_nproc(argv: list[str]) -> list[str]:
    flags = _flags("nproc")
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in flags:
            skip = True
            continue
        if a.startswith(tuple(f"{f}=" for f in flags)):
            continue
        out.append(a)
    return out


def _launch(nproc: int, output: Path, resume: bool, force: bool, debug: bool = False) -> None:
    """``--nproc N``: check RUN_DIR here (clear messages, right exit codes), then start torchrun."""
    import tempfile

    from .._torchrun import DEBUG_ENV as TORCHRUN_DEBUG_ENV
    from ..distributed import torchrun_command
    from ..training import RunLock, check_run_dir

    run_dir = check_run_dir(output, resume=resume, force=force)
    if run_dir.is_dir():  # refuse now if another run holds the folder
        RunLock(run_dir).acquire().release()
    argv = sys.argv[1:]
    if "finetune" not in argv:
        from ..errors import UsageError

        raise UsageError("--nproc needs the command line `softcamify finetune …` (from Python, run torchrun).")
    argv = _strip_nproc(argv[argv.index("finetune") :])
    cmd = torchrun_command(nproc, argv)
    env = dict(os.environ)
    fd, exit_file = tempfile.mkstemp(prefix="softcamify-exit-", suffix=".txt")
    os.close(fd)
    env[EXIT_FILE_ENV] = exit_file
    env[ARGV_ENV] = json.dumps(sys.argv[1:])
    env[TORCHRUN_DEBUG_ENV] = "1" if debug else "0"  # torchrun's own failure report only with --debug
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the processes get Ctrl-C and save their state
    previous_term = signal.getsignal(signal.SIGTERM)
    try:
        proc = subprocess.Popen(cmd, env=env)
        # SIGTERM goes on to torchrun, which passes it to the processes: they save their state and exit 130
        signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
        proc.wait()
        try:
            text = Path(exit_file).read_text().strip()
        except OSError:
            text = ""
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
        Path(exit_file).unlink(missing_ok=True)
    code = int(text) if text.lstrip("-").isdigit() else (proc.returncode or 0)
    raise typer.Exit(code)


# Long only by its typer option declarations, the single place finetune's options are written (sweep reuses
# them); the body, docstring included, is about 30 lines.
@app.command()
def finetune(
    model: str = typer.Argument(
        ...,
        help="What `convert` accepts (timm name, checkpoint, HF folder) or a softcamify model; converted first.",
        show_default=False,
    ),
    data_dir: Path = typer.Argument(
        ...,
        help="Images: DATA_DIR/train/<class>/…, DATA_DIR/val/<class>/… (optional test/), or DATA_DIR/<class>/… "
        "split by --val-split; with --labels the folder CSV paths are relative to.",
        show_default=False,
    ),
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        help="Run folder: last.pt, best.safetensors, metrics.jsonl, summary.json.",
        show_default=False,
    ),
    labels: Path = typer.Option(None, "--labels", help="CSV with columns path,label (optionally split)."),
    val_split: float = typer.Option(
        None, "--val-split", help="Share held out (stratified, seeded) when there is no val split (default 0.2)."
    ),
    augment: str = typer.Option(
        "light",
        "--augment",
        help="none, light (crop+flip) or medical (flips, rotation, colour and scale jitter, as the paper).",
    ),
    strict_data: bool = typer.Option(
        False, "--strict-data", help="Fail on an unreadable image instead of skipping it."
    ),
    weights: Path = WEIGHTS_OPTION,
    num_classes: int = typer.Option(
        None, "--num-classes", min=2, help="Classes of an architecture given by name (must match the data)."
    ),
    input_size: str = INPUT_SIZE_OPTION,
    ema: bool = EMA_OPTION,
    trust_pickle: bool = TRUST_PICKLE_OPTION,
    model_args: str = MODEL_ARGS_OPTION,
    module: str = MODULE_OPTION,
    mean: str = MEAN_OPTION,
    std: str = STD_OPTION,
    crop_pct: float = CROP_PCT_OPTION,
    interpolation: str = INTERPOLATION_OPTION,
    reset_head: bool = typer.Option(
        False,
        "--reset-head",
        help="Re-initialize the evidence conv for the data's classes (needed when they differ from the model's).",
    ),
    window: str = WINDOW_OPTION,
    zscore: bool = ZSCORE_OPTION,
    target_shape: str = TARGET_SHAPE_OPTION,
    target_spacing: str = TARGET_SPACING_OPTION,
    # the default is softcamify.training.DEFAULT_L1 (written out: this module does not import torch)
    l1: float = typer.Option(
        0.05,
        "--l1",
        min=0.0,
        help="λ1 on mean|A| / s, s the starting logit scale (sparse "
        "maps); the same λ means the same on any grid, class count and logit scale. "
        "The paper's λ is λ / (K·h·w·s): see docs/method.md, or try several with `sweep`.",
    ),
    l2: float = typer.Option(0.0, "--l2", min=0.0, help="λ2 on mean A² / s² (dense maps); see docs/method.md."),
    class_weights: str = typer.Option("none", "--class-weights", help="none or balanced (n / (K·n_c) per class)."),
    epochs: int = typer.Option(
        None,
        "--epochs",
        min=1,
        help="Epochs (default 10; the paper: 70). With --resume: the run's own plan unless given.",
    ),
    batch_size: int = typer.Option(
        None, "--batch-size", "-b", min=1, help="Images per step and process (default 16; 2 for volumes)."
    ),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw or sgd (Nesterov, as the paper)."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate (default 1e-4 adamw, 1e-3 sgd)."),
    min_lr: float = typer.Option(None, "--min-lr", help="Learning rate at the end of the cosine (default lr/10)."),
    weight_decay: float = typer.Option(
        None, "--weight-decay", help="(default 0.01 adamw, 5e-4 sgd); not on biases and norms."
    ),
    momentum: float = typer.Option(0.9, "--momentum", help="SGD momentum."),
    warmup_epochs: float = typer.Option(1.0, "--warmup-epochs", min=0.0, help="Linear warmup (at most half the run)."),
    grad_clip: float = typer.Option(None, "--grad-clip", help="Clip the gradient norm to this value."),
    freeze_backbone: bool = typer.Option(False, "--freeze-backbone", help="Train only the evidence conv."),
    device: str = DEVICE_OPTION,
    amp: bool = typer.Option(
        False, "--amp", help="Mixed precision on CUDA (bf16, or fp16 with loss scaling); ignored with a note on CPU."
    ),
    amp_dtype: str = typer.Option("bf16", "--amp-dtype", help="bf16 or fp16."),
    workers: int = typer.Option(
        None, "--workers", "-j", min=0, help="Data loading processes (default min(4, CPUs-1))."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed of the split, shuffling, augmentation and init (same seed: bit-identical CPU runs)."
    ),
    deterministic: bool = typer.Option(
        False, "--deterministic", help="Deterministic CUDA kernels (slower); CPU runs are always deterministic."
    ),
    monitor: str = typer.Option(
        "val_auc", "--monitor", help="What picks best.safetensors: val_auc, val_acc or val_loss."
    ),
    patience: int = typer.Option(None, "--patience", min=1, help="Stop after this many epochs without improvement."),
    ordinal: bool = typer.Option(False, "--ordinal", help="Classes are ordered grades: report quadratic kappa."),
    sparsity_threshold: float = typer.Option(
        0.1,
        "--sparsity-threshold",
        help="|A| below this (logit units) counts as near-zero evidence in the sparsity metric.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in RUN_DIR from last.pt."),
    force: bool = typer.Option(
        False, "--force", "-f", help="Start over in an existing RUN_DIR (its run files are replaced)."
    ),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes (GPUs) on this machine: launches torchrun."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No bars or tables (notes still go to stderr)."),
    json_: bool = JSON_OPTION,
    debug: bool = DEBUG_OPTION,
) -> None:
    """Fine-tune a SoftCAM model with CE + λ1·Σ|A| + λ2·ΣA² on its evidence maps (AMP, resume, several GPUs).

    Exit codes: 0 done (also after early stopping), 2 bad options, 3 unusable data, model or last.pt,
    4 the model does not convert, 6 RUN_DIR exists (pass --resume or --force), is in use or cannot be
    written, 130 interrupted (state saved: rerun with --resume).
    """
    options = dict(locals())  # every option by name: the signature above is their one declaration
    from ..distributed import env_rank, launched_by_torchrun

    rank = env_rank()
    code = 0
    try:
        if nproc > 1 and not launched_by_torchrun():
            with handle_errors(debug):
                _launch(nproc, output, resume, force, debug)
            return
        if rank != 0:  # other ranks: silent; rank 0 reports errors once
            try:
                _run(options, reporter_on=False)
            except typer.Exit:
                raise
            except BaseException as e:  # noqa: BLE001
                raise typer.Exit(e.exit_code if isinstance(e, SoftcamifyError) else 1) from None
            return
        _run(options, reporter_on=True)
    except typer.Exit as e:
        code = e.exit_code
        raise
    finally:
        exit_file = os.environ.get(EXIT_FILE_ENV)
        if exit_file and rank == 0 and launched_by_torchrun():
            Path(exit_file).write_text(str(code))


def _optional_str(value: Any) -> str | None:
    return str(value) if value is not None else None


# How a parsed option becomes the FinetuneConfig field of the same name (the others are taken as they are).
_TO_CONFIG: dict[str, Callable[[Any], Any]] = {
    "labels": _optional_str,
    "weights": _optional_str,
    "input_size": parse_input_size,
    "augment": str.lower,
    "class_weights": str.lower,
    "optimizer": str.lower,
    "amp_dtype": str.lower,
    "monitor": str.lower,
    "model_args": parse_model_args,
    "mean": lambda v: parse_floats(v, "--mean"),
    "std": lambda v: parse_floats(v, "--std"),
}


def finetune_config(options: Mapping[str, Any], skip: Collection[str] = (), **overrides: Any):
    """The ``FinetuneConfig`` of a command's parsed options, matched by name: every option that is a field
    (but those in ``skip``) sets it; ``overrides`` set fields directly."""
    from ..training import FinetuneConfig

    kwargs = {
        f.name: _TO_CONFIG.get(f.name, lambda v: v)(options[f.name])
        for f in dataclasses.fields(FinetuneConfig)
        if f.name in options and f.name not in skip
    }
    return FinetuneConfig(**{**kwargs, **overrides})


def _run(options: dict[str, Any], reporter_on: bool) -> None:
    from ..errors import EXIT_INTERRUPTED

    o = SimpleNamespace(**options)
    # Other ranks raise to the caller, which exits with the code silently; rank 0 prints the one line.
    with handle_errors(o.debug) if reporter_on else contextlib.nullcontext():
        from ..training import FinetuneInterrupted, Reporter
        from ..training import finetune as run_finetune

        config = finetune_config(options)
        if volume_options_given(o):  # recorded in the model; a run without them takes the model's
            config.volume = volume_config(o).to_dict()
        reporter: Any = Reporter()
        if reporter_on:
            show = not o.quiet and not o.json_
            reporter = ConsoleReporter(
                bars=show and console.is_terminal, tables=show, notes_to_stderr=o.quiet or o.json_
            )
        try:
            result = run_finetune(o.model, o.data_dir, o.output, config, reporter=reporter)
        except FinetuneInterrupted as e:
            if reporter_on:
                if getattr(reporter, "progress", None) is not None:
                    reporter.progress.stop()
                _print_resume_hint(e)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        if reporter_on and o.json_:
            print_json(result.to_dict())


def _print_resume_hint(e: BaseException) -> None:
    argv = json.loads(os.environ[ARGV_ENV]) if ARGV_ENV in os.environ else sys.argv[1:]
    argv = argv[argv.index("finetune") :] if "finetune" in argv else ["finetune", "…"]
    argv = [a for a in argv if a not in _flags("force", "resume")]
    command = shlex.join(["softcamify", *argv, "--resume"])
    message = e.render(option_name) if isinstance(e, SoftcamifyError) else str(e)  # --resume, not resume
    err_console.print(f"[yellow]interrupted:[/] {escape(message)}\n  {escape(command)}", highlight=False, markup=True)
