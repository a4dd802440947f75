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
    """SIGTERM (``kill``, CI timeouts, ``docker stop``, a scheduler) is handled as Ctrl-C: temporary files are
    removed, a fine-tune saves its state, and the exit code is 130.

    It does not depend on SIGINT being handled: a command started as a background job of a script (``cmd &``)
    inherits an ignored SIGINT, and SIGTERM must still stop it. A command's own Ctrl-C handler (finetune's
    stop-after-this-step, the ``--nproc`` launcher's forwarding) gets it; otherwise it raises
    :class:`~softcamify.cli._common.Terminated` once, and further SIGTERMs are ignored while the command
    cleans up.
    """
    import signal

    from ._common import Terminated

    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)
        return
    if _swallows(frame) and hasattr(signal, "setitimer"):
        # an exception raised here would be printed and ignored (a fork hook, a finalizer) and the command
        # would run to its end: deliver the stop a moment later, where it propagates
        signal.signal(signal.SIGALRM, _terminate)
        signal.setitimer(signal.ITIMER_REAL, 0.02)
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one clean stop: a second SIGTERM must not cut the cleanup
    raise Terminated


# Functions Python calls where an exception cannot propagate ("Exception ignored in ..."): os.fork's hooks
# (logging's lock release, threading's and random's reinit) and finalizers.
_SWALLOWING = ("_acquireLock", "_releaseLock", "_after_at_fork_child_reinit_locks", "_after_fork", "__del__")


def _swallows(frame) -> bool:
    return frame is not None and (
        frame.f_code.co_name in _SWALLOWING or frame.f_globals.get("__name__") in ("logging", "weakref")
    )


def install_sigterm_handler() -> None:
    """Handle SIGTERM as Ctrl-C for every command (:func:`_terminate`); :func:`main` calls it once."""
    import signal

    try:
        signal.signal(signal.SIGTERM, _terminate)
    except (ValueError, OSError, AttributeError):  # not the main thread, or no SIGTERM here
        pass


def main() -> None:
    from ..threads import configure_process

    configure_process()  # before torch or onnxruntime start their thread pools (softcamify.threads)
    install_sigterm_handler()
    app()
