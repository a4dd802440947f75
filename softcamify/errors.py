"""One error hierarchy for everything a user can get wrong.

Every error carries a one-sentence message (naming the file or option and what to do) and the
exit code the CLI returns for it. The codes are documented in docs/cli.md and never change meaning.
"""

from __future__ import annotations

# Exit codes (docs/cli.md, "Exit codes").
EXIT_OK = 0
EXIT_FAILURE = 1  # unexpected internal error: a bug; rerun with --debug and report it
EXIT_USAGE = 2  # bad or conflicting options (also typer/click's own usage errors)
EXIT_INPUT = 3  # a model, checkpoint, image or dataset that cannot be read or does not fit
EXIT_CONVERSION = 4  # the head cannot be converted (exactly, under --strict)
EXIT_VALIDATION = 5  # an output did not reproduce the original within tolerance (convert, export)
EXIT_OUTPUT = 6  # the output exists (no --force), or cannot be written
EXIT_UNSAFE = 7  # loading would execute pickled code and --trust-pickle was not given
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C (SIGINT)


class SoftcamifyError(Exception):
    """Base class: a problem the user can act on. ``str(err)`` is one sentence."""

    exit_code = EXIT_FAILURE


class UsageError(SoftcamifyError):
    """Options that are missing, malformed or contradict each other."""

    exit_code = EXIT_USAGE


class InputError(SoftcamifyError):
    """An input (checkpoint, model name, image, dataset) that cannot be read or used."""

    exit_code = EXIT_INPUT


class ConversionError(SoftcamifyError):
    """The model's head has no (exact, when required) SoftCAM conversion."""

    exit_code = EXIT_CONVERSION


class ValidationError(SoftcamifyError):
    """A converted or exported model does not reproduce the original within tolerance."""

    exit_code = EXIT_VALIDATION


class OutputError(SoftcamifyError):
    """An output that may not be overwritten or cannot be written."""

    exit_code = EXIT_OUTPUT


class UnsafeCheckpointError(InputError):
    """The checkpoint needs pickle to load; that would run code from the file."""

    exit_code = EXIT_UNSAFE
