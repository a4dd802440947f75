"""The run folder: its checks and lock (:mod:`.lock`), ``last.pt`` (state), ``metrics.jsonl``, ``best.safetensors``.

A run folder holds ``last.pt`` (everything needed to continue: model, optimizer, scaler, scheduler,
epoch and step, RNG states, config; written atomically at every epoch end and on Ctrl-C; readable with
``torch.load(weights_only=True)``), ``best.safetensors`` (a softcamify model, chosen by ``monitor``),
``metrics.jsonl`` (one JSON object per epoch) and ``summary.json``.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import distributed
from .._version import __version__
from ..errors import InputError, OutputError, SoftcamifyError, UsageError
from .config import (
    LAST_NAME,
    LOCK_NAME,
    METRICS_NAME,
    RUN_FILES,
    STATE_FORMAT,
    STATE_VERSION,
    SUMMARY_NAME,
    FinetuneConfig,
    finite,
)
from .lock import RunLock as RunLock  # the lock has its own module; it is still importable from here

if TYPE_CHECKING:
    from .loop import Progress, Trainer


def check_run_dir(run_dir: str | os.PathLike, resume: bool = False, force: bool = False) -> Path:
    """Check ``run_dir`` before any work: a new run needs an empty or missing folder (or ``force``);
    ``resume`` needs ``last.pt`` in it."""
    p = Path(run_dir)
    if resume and force:
        raise UsageError("resume and force contradict each other; pass one of them.", param=("resume", "force"))
    if p.exists() and not p.is_dir():
        raise OutputError(f"Run folder {p} is a file; run_dir must be a folder.", param="run_dir")
    if resume:
        if not p.exists():
            raise InputError(
                f"Run folder {p} does not exist, so there is nothing to continue; drop resume.", param="resume"
            )
        if not (p / LAST_NAME).is_file():
            raise InputError(
                f"Run folder {p} has no {LAST_NAME} to continue from; start a new run without resume.",
                param="resume",
            )
    elif p.exists():
        entries = [e.name for e in p.iterdir() if e.name != LOCK_NAME]
        if entries and not force:
            if any(name in RUN_FILES for name in entries):
                raise OutputError(
                    f"Run folder {p} already holds a run; pass resume to continue it or force to start over.",
                    param=("resume", "force"),
                )
            raise OutputError(
                f"Run folder {p} is not empty; pass force to write the run into it anyway.", param="force"
            )
    probe = p if p.exists() else p.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"Folder {probe} is not writable; choose another run_dir.", param="run_dir")
    return p


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and primitive containers (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    cuda_ready = torch.cuda.is_available() and torch.cuda.is_initialized()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if cuda_ready else [],
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_state[0]),
            "state": torch.tensor(py_state[1], dtype=torch.int64),
            "gauss": py_state[2],
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``last.pt`` (``torch.load(weights_only=True)``: no pickled code is ever run)."""
    p = Path(path)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{p} does not exist.") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is one input error
        raise InputError(f"{p} is not a readable finetune state ({type(e).__name__}); it may be truncated.") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise InputError(f"{p} is not a softcamify finetune state (last.pt).")
    if int(state.get("version", 0)) > STATE_VERSION:
        raise InputError(f"{p} was written by a newer softcamify; upgrade to resume it.")
    return state


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``path`` (metrics.jsonl) and flush it to disk."""
    line = json.dumps(finite(record), sort_keys=False) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        raise OutputError(f"Cannot write {path}: {e.strerror or e}.") from e


def on_main(ctx: distributed.DistContext, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only; an error there is raised in every rank (the others stay quiet)."""
    from .. import errors

    outcome: tuple[str, Any] = ("ok", None)
    if ctx.is_main:
        try:
            outcome = ("ok", fn())
        except SoftcamifyError as e:
            if not ctx.enabled:
                raise
            outcome = ("error", (type(e).__name__, str(e), e.params))
    outcome = distributed.broadcast_object(ctx, outcome)
    if outcome[0] == "error":
        name, message, params = outcome[1]
        cls = getattr(errors, name, SoftcamifyError)
        raise cls(message, param=params)  # the same message and parameters (the CLI names its flags)
    return outcome[1]


def open_run_dir(run_dir: Path, lock: RunLock | None, clear: bool, resumed_epochs: int | None) -> RunLock:
    """Create and lock ``run_dir`` (``lock``: already held); ``clear`` removes an old run's files
    (--force); ``resumed_epochs`` drops metrics of epochs after the saved state (written before an
    interruption). Returns the held lock."""
    from ..io import make_output_dir

    make_output_dir(run_dir)
    if lock is None:
        lock = RunLock(run_dir).acquire()
    if clear:
        for name in RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                (run_dir / name).unlink()
    if resumed_epochs is not None:
        truncate_metrics(run_dir / METRICS_NAME, resumed_epochs)
    return lock


def truncate_metrics(path: Path, epochs_done: int) -> None:
    """Keep the lines of ``metrics.jsonl`` up to epoch ``epochs_done`` (and drop a line cut short)."""
    from ..io import write_text_atomic

    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(rec, dict) and int(rec.get("epoch", 0)) <= epochs_done:
            keep.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in keep), force=True)


def save_state(
    path: Path,
    t: Trainer,
    p: Progress,
    *,
    epoch: int,
    step: int,
    partial: torch.Tensor | None,
    stopped_early: bool,
    model_spec: Any,
    data_dir: Path | None,
) -> None:
    """Write last.pt: the trainer's model, optimizer, schedule, scaler and config, the progress's history
    and early-stopping state, at ``epoch`` / ``step`` (every rank's RNG state is gathered; rank 0 writes
    atomically). :meth:`Progress.from_state` reads it back."""
    ctx, model, scaler = t.ctx, t.model, t.scaler
    rngs = distributed.all_gather_objects(ctx, rng_state())
    if not ctx.is_main:
        distributed.barrier(ctx)
        return
    from ..io import atomic_output

    state = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "softcamify": __version__,
        "epoch": int(epoch),  # completed epochs
        "step": int(step),  # optimizer steps done in epoch ``epoch`` (0: at an epoch boundary)
        "steps": int(t.loaders.steps),
        "model": model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "rng": rngs,
        "partial": partial.cpu() if partial is not None else None,
        "config": t.cfg.to_dict(),
        "model_spec": str(model_spec) if isinstance(model_spec, (str, os.PathLike)) else None,
        "data_dir": str(data_dir) if data_dir is not None else None,
        "data_dir_real": os.path.realpath(data_dir) if data_dir is not None else None,  # what --resume checks
        "class_names": list(model.meta.class_names),
        "meta": json.dumps(model.meta.to_dict(), sort_keys=True),
        "history": p.history,
        "best_value": p.best_value,
        "best_epoch": p.best_epoch,
        "bad_epochs": int(p.bad_epochs),
        "stopped_early": bool(stopped_early),
        "world_size": ctx.world,
    }
    with atomic_output(path, force=True) as tmp:
        torch.save(state, tmp)
    distributed.barrier(ctx)


def save_best(
    path: Path, sc, c: FinetuneConfig, record: dict[str, Any], splits, scale: float, world: int, data_dir: Path | None
) -> None:
    """Write best.safetensors: the model, with the run's settings and scores added to its history."""
    from ..checkpoints import save
    from ..model import SoftCAM

    val = record.get("val") or {}
    entry = {
        "kind": "finetune",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "softcamify": __version__,
        "dataset": str(data_dir if data_dir is not None else c.labels),
        "data_source": splits.source,
        "train_images": len(splits.train),
        "val_images": len(splits.val),
        "epoch": record["epoch"],
        "epochs_planned": int(c.epochs),
        "l1": c.l1,
        "l2": c.l2,
        "loss": "ce + l1*mean|A|/s + l2*mean(A^2)/s^2",
        "logit_scale": scale,
        "optimizer": c.optimizer,
        "lr": c.lr,
        "weight_decay": c.weight_decay,
        "batch_size": c.batch() * world,
        "augment": c.augment,
        "class_weights": c.class_weights,
        "freeze_backbone": c.freeze_backbone,
        "seed": c.seed,
        "monitor": c.monitor,
        "best_value": record.get("value"),
        "val_accuracy": val.get("accuracy"),
        "val_auc": val.get("auc"),
        "val_balanced_accuracy": val.get("balanced_accuracy"),
        "val_sparsity": val.get("sparsity"),
        "val_map_l1": val.get("map_l1"),
    }
    meta = copy.deepcopy(sc.meta)
    meta.history = [*meta.history, finite(entry)]
    save(SoftCAM(sc.features, sc.head, meta), path, force=True)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write summary.json (atomically)."""
    from ..io import write_text_atomic

    write_text_atomic(run_dir / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n", force=True)
