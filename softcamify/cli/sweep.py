"""``softcamify sweep``: short fine-tunes over a λ grid, an accuracy/localization plot and a recommended λ.

The fine-tuning options are ``softcamify finetune``'s own option objects (read from its signature), so both
commands always take them with the same names, defaults and help.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from ..report import format_fixed as _fmt
from . import app
from ._common import Shared, command, console, emit, err_console, handle_errors
from .finetune import finetune as _finetune_command
from .finetune import finetune_config

_FT: dict[str, Any] = {name: p.default for name, p in inspect.signature(_finetune_command).parameters.items()}


def parse_values(option: str, text: str | None) -> list[float]:
    """'0,1e-3,3e-3' -> [0.0, 0.001, 0.003] (range and repeat checks are the library's)."""
    from ..errors import UsageError

    parts = [p.strip() for p in str(text or "").split(",")]
    if not any(parts):
        raise UsageError(f"{option} needs at least one value, e.g. {option} 0,0.5,2.")
    try:
        return [float(p) for p in parts if p]
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a comma-separated list of numbers.") from None


class _ConsoleReporter:
    """One line per finished run (stderr with --json or --quiet: stdout carries only the JSON)."""

    def __init__(self, show: bool, to_stderr: bool):
        self.show = show
        self.out = err_console if to_stderr else console

    def start(self, info: dict[str, Any]) -> None:
        if self.show:
            masks = f", {info['with_mask']} with a mask" if info["with_mask"] else ", no masks"
            self.out.print(
                f"[bold]sweep[/] {len(info['grid'])} runs × {info['epochs']} epoch(s) on "
                f"{', '.join(info['devices'])} · "
                f"{info['val_images']} validation images{masks} · {escape(info['source'])}"
            )

    def note(self, message: str) -> None:
        self.out.print(f"[yellow]note:[/] {escape(message)}", highlight=False)

    def reference(self, entry: dict[str, Any]) -> None:
        if self.show:
            self.out.print(
                f"[dim]reference (starting model): accuracy {_fmt(entry['accuracy'])} · localization "
                f"{_fmt(entry['score'])}[/]"
            )

    def run_start(self, tag: str, device: str, index: int, total: int) -> None:
        if self.show:
            self.out.print(f"[dim]run {index}/{total} {escape(tag)} on {device} …[/]")

    def epoch_end(self, tag: str, record: dict[str, Any]) -> None:
        pass

    def run_end(self, run) -> None:
        if self.show:
            self.out.print(
                f"  {escape(run.tag)}: accuracy {_fmt(run.accuracy)} · localization {_fmt(run.score)} · "
                f"{run.elapsed_s:.1f} s"
            )

    def end(self, result) -> None:
        pass


def _print_table(result) -> None:
    from ..training.sweep_scoring import SCORE_KEYS

    d = result.to_dict()
    metric = d["localization"]
    t = Table(title=f"sweep · validation split · localization = {metric}", title_justify="left")
    for col in (
        "run",
        "accuracy",
        "bal. acc.",
        "share of oracle",
        "act. precision",
        "pointing",
        "sparsity",
        "stability",
        "qualifies",
        "",
    ):
        t.add_column(col, justify="left" if col in ("run", "") else "right")

    def cells(r: dict[str, Any]) -> list[str]:
        return [_fmt(r.get(k)) for k in SCORE_KEYS]

    t.add_row("[dim]reference[/]", *cells(d["reference"]), "", "")
    for r in d["runs"]:
        mark = "[bold green]★ recommended[/]" if r["recommended"] else ("Pareto" if r["pareto"] else "")
        t.add_row(escape(r["tag"]), *cells(r), "yes" if r["qualified"] else "no", mark)
    console.print(t)
    rule = d["rule"]
    console.print(
        f"[dim]rule: accuracy ≥ {_fmt(rule['accuracy_floor'])} (reference − {rule['tolerance']:g}), then "
        f"the best {metric}{', ties by stability' if rule['tiebreak'] else ''}, then the smaller λ[/]"
    )
    rec = d["recommended"]
    if rec is not None:
        console.print(
            f"[bold green]recommended[/]: --l1 {rec['l1']:g} --l2 {rec['l2']:g} → {escape(str(d['paths']['best']))}"
        )
    else:
        console.print("[bold yellow]no recommendation[/]: no run kept the accuracy within the tolerance")
    for note in d["notes"]:
        console.print(f"[dim]note:[/] {escape(note)}")
    console.print(
        f"[dim]{escape(d['paths']['index_html'])} · {escape(d['paths']['pareto_png'])} · "
        f"{escape(d['paths']['sweep_json'])}[/]"
    )


# Long only by its typer option declarations (finetune's options, reused); the body is ~60 lines.
@command(app)
def sweep(
    model: str = _FT["model"],
    data_dir: Path = _FT["data_dir"],
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        help="Sweep folder: runs/<tag>/, sweep.json, pareto.png, "
        "index.html, best.safetensors (the recommended run's model).",
        show_default=False,
    ),
    l1: str = typer.Option(
        ...,
        "--l1",
        help="λ1 values, comma-separated, e.g. 0.05,0.5,2,5 (finetune's --l1).",
        show_default=False,
    ),
    l2: str = typer.Option("0", "--l2", help="λ2 values, comma-separated; the grid is every l1 × l2 pair."),
    tolerance: float = typer.Option(
        0.01,
        "--tolerance",
        help="Validation accuracy a run may lose against the starting model and still be recommended.",
    ),
    epochs: int = typer.Option(
        3, "--epochs", min=1, help="Epochs per run (short: the sweep compares λ, it does not converge)."
    ),
    masks: Path = typer.Option(
        None,
        "--masks",
        help="Mask folder mirroring DATA_DIR (default: DATA_DIR/masks); "
        "without masks runs are ranked by map sparsity and flip stability.",
    ),
    max_images: int = typer.Option(
        None,
        "--max-images",
        min=1,
        help="Localization metrics on at most N annotated validation images per run.",
    ),
    device: str = typer.Option(
        "auto",
        "--device",
        help="auto, cpu, cuda, cuda:N, or a comma-separated list to run "
        "that many λ at a time (auto/cuda with several GPUs: one run per GPU).",
    ),
    labels: Path = _FT["labels"],
    val_split: float = _FT["val_split"],
    augment: str = _FT["augment"],
    strict_data: bool = _FT["strict_data"],
    weights: Path = _FT["weights"],
    num_classes: int = _FT["num_classes"],
    input_size: str = _FT["input_size"],
    ema: bool = _FT["ema"],
    trust_pickle: bool = _FT["trust_pickle"],
    model_args: str = _FT["model_args"],
    module: str = _FT["module"],
    mean: str = _FT["mean"],
    std: str = _FT["std"],
    crop_pct: float = _FT["crop_pct"],
    interpolation: str = _FT["interpolation"],
    class_weights: str = _FT["class_weights"],
    batch_size: int = _FT["batch_size"],
    optimizer: str = _FT["optimizer"],
    lr: float = _FT["lr"],
    min_lr: float = _FT["min_lr"],
    weight_decay: float = _FT["weight_decay"],
    momentum: float = _FT["momentum"],
    warmup_epochs: float = _FT["warmup_epochs"],
    grad_clip: float = _FT["grad_clip"],
    freeze_backbone: bool = _FT["freeze_backbone"],
    amp: bool = _FT["amp"],
    amp_dtype: str = _FT["amp_dtype"],
    workers: int = _FT["workers"],
    seed: int = _FT["seed"],
    deterministic: bool = _FT["deterministic"],
    monitor: str = _FT["monitor"],
    sparsity_threshold: float = _FT["sparsity_threshold"],
    force: bool = typer.Option(
        False,
        "--force",
        "-f",
        help="Write into a non-empty OUT_DIR (run folders and files of the same names are replaced).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines or table."),
    o: Shared = Shared("json_", "debug"),
) -> None:
    """Fine-tune once per λ pair (short runs), score each on the validation split, plot accuracy against
    localization and recommend the λ that localizes best without losing accuracy.

    Rule: among runs with validation accuracy ≥ the starting model's − tolerance, the best share of oracle
    (with masks; without: sparsity, ties by flip stability); ties → the smaller λ. Exit codes: 0 done (also
    when nothing is recommended: `recommended` is null), 2 bad options or grid values, 3 unusable data or
    model, 4 the model does not convert, 6 OUT_DIR not empty (no --force) or not writable, 130 interrupted
    (completed runs are kept).
    """
    options = dict(locals())
    with handle_errors(o.debug):
        from ..training.sweep import check_grid, check_tolerance
        from ..training.sweep import sweep as run_sweep

        # bad grid values fail here, before torch is imported or anything is written
        l1s, l2s = check_grid("l1", parse_values("--l1", l1)), check_grid("l2", parse_values("--l2", l2))
        check_tolerance(tolerance)
        devices = device if "," in device else None
        # the grids (l1, l2) and --force (of OUT_DIR) are the sweep's own, not the runs' options
        config = finetune_config(options, skip=("l1", "l2", "force"), device="auto" if devices else device)
        reporter = _ConsoleReporter(show=not quiet, to_stderr=o.json_ or quiet)
        result = run_sweep(
            model,
            data_dir,
            output,
            l1s,
            l2s,
            config,
            tolerance=tolerance,
            masks=masks,
            devices=devices,
            force=force,
            max_images=max_images,
            reporter=reporter,
        )
        emit(o.json_, result.to_dict(), lambda: None if quiet else _print_table(result))
