"""``softcamify demo``: the whole pipeline on the shipped black box and a generated lesion dataset."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from . import app
from ._common import ENDING, Shared, command, console, emit, err_console, handle_errors


class ConsoleDemoReporter:
    """One line per step (and its key figures) on the console; a live bar per step on terminals."""

    def __init__(self, out, bars: bool, verbose: bool):
        self.out = out
        self.bars = bars and out.is_terminal
        self.verbose = verbose
        self.progress = None
        self.task = None
        self.label = ""

    def step_start(self, step, index: int, count: int) -> None:
        self.label = f"[{index}/{count}] {step.title}"
        if not self.bars:
            if self.verbose:
                self.out.print(f"[bold cyan]{self.label}[/] …")
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold cyan]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[text]}"),
            console=self.out,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task(self.label, total=None, text="")

    def progress_update(self, done: int, total: int | None, text: str = "") -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=done, total=total, text=text)

    def step_end(self, step) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if not self.verbose:
            return
        self.out.print(f"[green]✔[/] [bold]{self.label}[/] [dim]({step.seconds:.1f} s)[/]: {step.summary}")
        if step.key in ("inspect", "convert") and step.details:
            t = Table(show_header=False, box=None, padding=(0, 2), pad_edge=False)
            t.add_column("field", style="dim")
            t.add_column("value")
            for k, v in step.details:
                t.add_row(f"    {k}", v)
            self.out.print(t)

    def note(self, message: str) -> None:
        self.out.print(f"[yellow]note:[/] {message}", highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _adapter(rep: ConsoleDemoReporter):
    from ..demo import DemoReporter

    class _Rep(DemoReporter):
        def step_start(self, step, index, count):
            rep.step_start(step, index, count)

        def progress(self, done, total, text=""):
            rep.progress_update(done, total, text)

        def step_end(self, step):
            rep.step_end(step)

        def note(self, message):
            rep.note(message)

    return _Rep()


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return "—" if v != v else f"{v:.3f}"
    return str(v)


_LOC_3D = (
    ("share of oracle ↑", "share_of_oracle"),
    ("activation precision ↑", "activation_precision"),
    ("pointing game ↑", "pointing_game"),
)


def _localization_table(title: str, loc: dict, metrics: Sequence[tuple[str, str]], count: str) -> Table:
    """One row per method: its localization ``metrics`` (column, key) and how many images or volumes."""
    e = Table(title=title, title_justify="left")
    e.add_column("method", style="bold")
    for col in (*(c for c, _ in metrics), count):
        e.add_column(col, justify="right")
    for label, m in loc.items():
        e.add_row(label, *(_cell(m.get(k)) for _, k in metrics), str(m.get("images")))
    return e


def _print_steps(result, notes: Sequence[str]) -> None:
    """The steps table, the notes and where the report is."""
    s = Table(title="steps", title_justify="left")
    s.add_column("step", style="bold")
    s.add_column("result", overflow="fold")
    s.add_column("time", justify="right")
    for st in result.steps:
        s.add_row(st.title, st.summary, f"{st.seconds:.1f} s")
    s.add_row("total", "", f"{result.seconds:.1f} s", style="bold")
    console.print(s)
    for n in notes:
        console.print(f"[dim]note:[/] {n}")
    report = Path(result.report).resolve()
    console.print(f"\n[bold green]Report:[/] {report}\n[dim]open it in a browser: {report.as_uri()}[/]")


def _summary(result) -> None:
    f = result.figures
    cls = f["classification"]
    t = Table(title="softcamify demo: summary", title_justify="left")
    t.add_column("", style="bold")
    t.add_column("black box", justify="right")
    t.add_column("SoftCAM (converted)", justify="right")
    t.add_column("SoftCAM (fine-tuned)", justify="right")
    for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("roc_auc", "ROC-AUC")):
        t.add_row(
            f"{label} ({cls['test_images']} test images)",
            _cell(cls["black_box"].get(key)),
            _cell(cls["converted"].get(key)),
            _cell(cls["fine_tuned"].get(key)),
        )
    conv, exp = f["conversion"], f["export"]
    t.add_row("max |Δlogit| vs black box", "", f"{conv['max_abs_diff']:.2g}", "")
    t.add_row(
        "ONNX max |Δ| logits / evidence",
        "",
        "",
        f"{exp['max_abs_diff_logits']:.2g} / {exp['max_abs_diff_evidence']:.2g}",
    )
    console.print(t)
    loc = f.get("localization") or {}
    if loc:
        metrics = (*_LOC_3D, ("top-k precision ↑", "topk_precision"), ("deletion AUC ↓", "deletion_auc"))
        title = "localization of the true class vs lesion masks (mean over test images)"
        console.print(_localization_table(title, loc, metrics, "images"))
        if f.get("comparison"):
            console.print(f["comparison"]["text"])
    _print_steps(result, result.notes)


def _summary_3d(result) -> None:
    loc = result.figures.get("localization") or {}
    title = "localization of the true class vs 3-D lesion masks (test volumes)"
    console.print(_localization_table(title, loc, _LOC_3D, "volumes"))
    _print_steps(result, [])


@command(app)
def demo(
    output: Path = typer.Option(
        Path("softcamify-demo"), "--output", "-o", help="Output folder (new or empty unless --force)."
    ),
    fast: bool = typer.Option(False, "--fast", help="Tiny sizes (a few dozen images, one epoch): seconds, for tests."),
    three_d: bool = typer.Option(
        False,
        "--3d",
        help="The volume demo instead: a 3D MONAI DenseNet converted, fine-tuned and explained on synth3d CT "
        "volumes (needs monai; under a minute on a CPU).",
    ),
    update_docs: bool = typer.Option(
        False,
        "--update-docs",
        hidden=True,
        help="Copy the report's figure to docs/images/demo_overlay.png (developers).",
    ),
    o: Shared = Shared("device", *ENDING),
) -> None:
    """Run the whole pipeline on a shipped black-box classifier and a generated lesion dataset; write a report.

    Generates a synthetic lesion dataset, inspects and converts the shipped checkpoint (showing the exactness
    report), fine-tunes it briefly with the ElasticNet penalty, exports it to ONNX and validates it, explains a
    few test images, evaluates SoftCAM against Grad-CAM (on the black box and on SoftCAM) and writes one HTML
    report: OUTPUT/report.html. Nothing is downloaded; a GPU is used when there is one.
    """
    with handle_errors(o.debug):
        from ..demo import run_demo, update_docs_figure

        out = err_console if o.json_ else console
        rep = ConsoleDemoReporter(out, bars=True, verbose=not o.json_ or out.is_terminal)
        if not o.json_:
            console.print(
                f"[bold]softcamify demo{' --3d' if three_d else ''}[/]: "
                + ("a 3D model explains CT volumes in their own geometry " if three_d else "")
                + ("an ordinary black-box classifier becomes self-explainable " if not three_d else "")
                + f"→ {output}/{'  (fast settings)' if fast else ''}"
            )
        run: Any = run_demo
        if three_d:
            from ..demo.volume import run_volume_demo as run
        try:
            result = run(output, fast=fast, device=o.device, force=o.force, reporter=_adapter(rep))
        finally:
            rep.close()
        if update_docs and not three_d:  # the 3D figure: python scripts/volume_figure.py --demo
            path = update_docs_figure(result)
            out.print(f"[dim]docs figure updated: {path}[/]")
        emit(o.json_, result.to_dict(), lambda: (_summary_3d if three_d else _summary)(result))
