"""CPU threads that share the machine well (no torch import).

On a busy machine (a shared CI runner, a workstation training something else) a softcamify command slowed
down far more than its share of the CPU, because its thread pools wait for each other by *spinning*:
OpenMP's worker threads (torch's intra-op pool) and onnxruntime's keep a core busy while they wait for
the next piece of work, and when another process holds that core, the spinning thread and the thread it
waits for take turns being descheduled. ``benchmarks/contention.py`` measures it: one job alone, then the
same job beside CPU-bound processes, as a ratio.

The defaults set here make waiting threads sleep instead (``OMP_WAIT_POLICY=PASSIVE``, ``KMP_BLOCKTIME=0``
for Intel's OpenMP, onnxruntime's ``allow_spinning=0``); on an idle machine they cost little. Knobs
(docs/cli.md, "Threads"):

- ``SOFTCAMIFY_THREADS=N``: intra-op threads of torch and onnxruntime (default: theirs, one per core);
- ``SOFTCAMIFY_THREAD_DEFAULTS=0``: leave every setting above as torch and onnxruntime have it;
- ``OMP_WAIT_POLICY`` / ``OMP_NUM_THREADS`` set by the user are never overridden.

The environment variables must be in place before torch is imported: the command line calls
:func:`configure_process` first thing; a Python user sets them in the environment (or calls it before
importing torch).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["THREADS_ENV", "DEFAULTS_ENV", "configure_process", "intra_op_threads", "tune_onnxruntime"]

THREADS_ENV = "SOFTCAMIFY_THREADS"
DEFAULTS_ENV = "SOFTCAMIFY_THREAD_DEFAULTS"


def _enabled() -> bool:
    return os.environ.get(DEFAULTS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def intra_op_threads() -> int | None:
    """``SOFTCAMIFY_THREADS`` as a positive int, or ``None`` (the libraries' own default)."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        return None
    return n if n > 0 else None


def configure_process() -> None:
    """Set the OpenMP environment for this process and the processes it starts (DataLoader workers,
    torchrun ranks). Call before torch is imported; values the user set win."""
    if not _enabled():
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # libgomp / LLVM OpenMP: sleep, do not spin, when idle
    os.environ.setdefault("KMP_BLOCKTIME", "0")  # Intel OpenMP's spelling of the same
    n = intra_op_threads()
    if n is not None:
        os.environ.setdefault("OMP_NUM_THREADS", str(n))


def tune_onnxruntime(options: Any, threads: int | None = None) -> Any:
    """``options`` (an ``onnxruntime.SessionOptions``) with non-spinning thread pools and
    ``threads`` (or ``SOFTCAMIFY_THREADS``) intra-op threads."""
    n = threads or intra_op_threads()
    if n:
        options.intra_op_num_threads = int(n)
    if _enabled():
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options
