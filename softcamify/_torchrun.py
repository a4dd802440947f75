"""``python -m softcamify._torchrun TORCHRUN_ARGS``: torchrun as ``finetune --nproc N`` starts it, without its
failure report.

torchrun (``torch.distributed.run``) ends a failed run with its own report on stderr: a log line per process
it stops, a traceback of the launcher and a ``ChildFailedError`` table, some 40 lines below the one
``error: …`` line rank 0 already printed. Here the same launcher runs (``parse_args`` and ``run``, as
``torchrun``'s ``main``; signals and process handling unchanged) with its logging off, and a failure ends it
with the first failed process's exit code, silently when rank 0 reported it (it leaves its exit code in the
file ``SOFTCAMIFY_EXIT_FILE`` names), else with one sentence naming the process; Ctrl-C and SIGTERM end it
without a traceback (the processes report and save their state themselves). With
``SOFTCAMIFY_TORCHRUN_DEBUG=1`` (``finetune --debug``) torchrun reports as usual.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

DEBUG_ENV = "SOFTCAMIFY_TORCHRUN_DEBUG"
EXIT_FILE_ENV = "SOFTCAMIFY_EXIT_FILE"  # as softcamify.cli.finetune.EXIT_FILE_ENV (rank 0 writes its code there)


def _reported() -> bool:
    """True when rank 0 left a nonzero exit code: it printed its one line already."""
    path = os.environ.get(EXIT_FILE_ENV)
    if not path:
        return False
    try:
        text = open(path, encoding="ascii").read().strip()
    except (OSError, UnicodeDecodeError):
        return False
    return text.lstrip("-").isdigit() and int(text) != 0


def _how(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"failed with exit code {exitcode}"


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    debug = os.environ.get(DEBUG_ENV) == "1"
    if not debug:
        logging.disable(logging.CRITICAL)  # this process only (the launcher); the ranks log as they would
    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        if debug:
            raise
        rank, failure = e.get_first_failure()
        if not _reported():
            print(
                f"error: the process of rank {rank} {_how(failure.exitcode)} (rerun with --debug for "
                "torchrun's report).",
                file=sys.stderr,
            )
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException as e:  # Ctrl-C or SIGTERM: the processes got it too, saved and said so
        if debug:
            raise
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
