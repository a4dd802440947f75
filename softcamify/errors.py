"""One error hierarchy for everything a user can get wrong.

Every error carries a one-sentence message (naming the file or option and what to do) and the
exit code the CLI returns for it. The codes are documented in docs/cli.md and never change meaning.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

# Exit codes (docs/cli.md, "Exit codes").
EXIT_OK = 0
EXIT_FAILURE = 1  # unexpected internal error: a bug; rerun with --debug and report it
EXIT_USAGE = 2  # bad or conflicting options (also typer/click's own usage errors)
EXIT_INPUT = 3  # a model, checkpoint, image or dataset that cannot be read or does not fit
EXIT_CONVERSION = 4  # the head cannot be converted (exactly, under --strict)
EXIT_VALIDATION = 5  # an output did not reproduce the original within tolerance (convert, export)
EXIT_OUTPUT = 6  # the output exists (no --force), or cannot be written
EXIT_UNSAFE = 7  # loading would execute pickled code and --trust-pickle was not given
EXIT_GATE = 8  # a quality gate failed (evaluate --fail-under / --fail-over); the reports are still written
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C (SIGINT)


class SoftcamifyError(Exception):
    """Base class: a problem the user can act on. ``str(err)`` is one sentence.

    A message about an argument names it as the Python caller wrote it (``batch_size must be at least 1``)
    and lists it in ``param``; a front end that calls the argument something else renders the message
    in its own words with :meth:`render` (the CLI: ``--batch-size must be at least 1``). Only the listed
    names are replaced, as whole words that are no part of a quoted value or a path (``classifier 'classifier'
    is not a module``, ``weights.pth``, ``masks/a.png`` stay as they are), so the rest of the sentence is
    never touched.
    """

    exit_code = EXIT_FAILURE

    def __init__(self, message: str = "", *, param: str | Sequence[str] | None = None):
        super().__init__(message)
        self.message = message
        self.params: tuple[str, ...] = (param,) if isinstance(param, str) else tuple(param or ())

    def __reduce__(self) -> tuple:  # keep ``params`` across processes (DataLoader workers, torchrun)
        return (_rebuild, (type(self), self.message, self.params))

    @property
    def param(self) -> str | None:
        """The (first) Python parameter the message is about, or ``None``."""
        return self.params[0] if self.params else None

    def render(self, name_of: Mapping[str, str] | Callable[[str], str | None]) -> str:
        """The message with each parameter in ``params`` named as ``name_of`` names it (names it
        does not know stay as they are)."""
        if not self.params:
            return self.message
        lookup = name_of.get if isinstance(name_of, Mapping) else name_of
        words = "|".join(re.escape(p) for p in sorted(self.params, key=len, reverse=True))

        def swap(m: re.Match[str]) -> str:
            return lookup(m.group(0)) or m.group(0)

        # not after a word character, - . / or a quote; not before one of those (a full stop ends the sentence)
        return re.sub(rf"(?<![\w\-./'\"]){'('}{words}{')'}(?![\w\-/'\"]|\.\w)", swap, self.message)


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


class GateFailed(SoftcamifyError):
    """A quality gate failed: a metric is under its ``fail_under`` or over its ``fail_over`` threshold."""

    exit_code = EXIT_GATE


def _rebuild(cls: type[SoftcamifyError], message: str, params: tuple[str, ...]) -> SoftcamifyError:
    err = cls.__new__(cls)
    SoftcamifyError.__init__(err, message, param=params)
    return err
