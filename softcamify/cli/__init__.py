"""The ``softcamify`` command line: a thin face over the Python API.

Each subcommand lives in its own module and registers itself on :data:`app`; commands parse
options, call the library and render (rich tables or ``--json``). Nothing here imports torch at
module level, so ``softcamify predict model.onnx`` runs where only onnxruntime is installed.
"""

from __future__ import annotations

import typer

from .._version import __version__

app = typer.Typer(
    name="softcamify",
    help="Make trained CNN classifiers self-explainable (SoftCAM evidence maps).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"softcamify {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Make trained CNN classifiers self-explainable (SoftCAM evidence maps)."""


# Subcommands register themselves on import: every public module of this package is one command
# family (core: inspect/convert, ...), so adding a command never touches this file.
def _register_commands() -> None:
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_register_commands()


def _terminate(signum, frame) -> None:
    """SIGTERM (``kill``, CI timeouts, ``docker stop``) is handled as Ctrl-C: temporary files are removed,
    a fine-tune saves its state, and the exit code is 130."""
    import signal

    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    elif handler != signal.SIG_IGN:  # ignored (the --nproc launcher): its processes handle the signal
        raise KeyboardInterrupt


def main() -> None:
    import signal

    try:
        signal.signal(signal.SIGTERM, _terminate)
    except (ValueError, OSError, AttributeError):  # not the main thread, or no SIGTERM here
        pass
    app()
