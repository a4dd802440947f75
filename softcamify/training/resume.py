"""Resuming a fine-tuning run: the data it started on, its stored settings, and its saved state (model,
optimizer, schedule, scaler, RNG, where in the epoch it stopped)."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..errors import InputError, UsageError
from .config import LAST_NAME, RESUME_KEEP_UNLESS_GIVEN, RESUME_OVERRIDABLE, FinetuneConfig
from .loop import Progress, Trainer
from .rundir import set_rng_state

__all__ = ["check_resumed_data", "merge_resumed_config", "restore"]


def check_resumed_data(run_dir: Path, data_dir: Any, state: dict[str, Any]) -> None:
    """A resumed run continues on the data it started on: another data_dir is refused, naming both."""
    if "data_dir_real" in state:
        then = state["data_dir_real"]
    else:  # last.pt of an earlier version: the folder as given, comparable only when absolute
        given = state.get("data_dir")
        if given is not None and not os.path.isabs(given):
            return
        then = os.path.realpath(given) if given is not None else None
    now = os.path.realpath(data_dir) if data_dir is not None else None
    if now == then:
        return
    if then is None:
        raise UsageError(
            f"The run in {run_dir} was started without data_dir, but data_dir {data_dir} "
            "was given; resume it without data_dir.",
            param="data_dir",
        )
    if now is None:
        raise UsageError(
            f"The run in {run_dir} was started on data_dir {then}, but none was given; resume it with that data_dir.",
            param="data_dir",
        )
    raise UsageError(
        f"data_dir {data_dir} is not the folder the run in {run_dir} was started on "
        f"({then}); resume it with that data_dir, or start a new run in another folder.",
        param="data_dir",
    )


def merge_resumed_config(
    current: FinetuneConfig, state: dict[str, Any], model_spec: Any
) -> tuple[FinetuneConfig, list[str]]:
    """The stored config of a resumed run, with the options that may change on resume; notes for the user."""
    notes: list[str] = []
    raw = state.get("config") or {}
    stored = FinetuneConfig.from_dict(raw)
    defaults = FinetuneConfig(optimizer=current.optimizer).resolved()
    changed = [
        f.name
        for f in fields(FinetuneConfig)
        if f.name not in RESUME_OVERRIDABLE
        and getattr(current, f.name) != getattr(stored, f.name)
        and getattr(current, f.name) != getattr(defaults, f.name)
    ]
    for name in RESUME_OVERRIDABLE:
        if name in RESUME_KEEP_UNLESS_GIVEN and getattr(current, name) is None:
            continue  # not given again: the run's own plan
        setattr(stored, name, getattr(current, name))
    if changed:
        notes.append(
            "Resuming with the run's stored settings; ignored the new "
            + ", ".join(f"--{n.replace('_', '-')}" for n in changed)
            + "."
        )
    if raw.get("epochs") is not None and int(raw["epochs"]) != int(stored.epochs):
        how = "stretched" if int(stored.epochs) > int(raw["epochs"]) else "shortened"
        notes.append(
            f"Resuming with --epochs {stored.epochs} (the run was planned for {raw['epochs']}): "
            f"the learning-rate schedule is {how} from here on."
        )
    spec = state.get("model_spec")
    if isinstance(model_spec, (str, os.PathLike)) and spec and str(model_spec) != spec:
        notes.append(
            f"The run was started from MODEL {spec}; the weights come from {LAST_NAME}, so MODEL "
            "must be the same architecture."
        )
    return stored.resolved(), notes


def restore(
    t: Trainer, st: dict[str, Any] | None, c: FinetuneConfig, last_path: Path, run_dir: Path, ctx: Any
) -> tuple[Progress, list[str]]:
    """Load ``last.pt`` (a resumed run) into the model, optimizer, schedule and scaler; returns where
    the run stands."""
    notes: list[str] = []
    if st is None:
        return Progress(), notes
    steps = t.loaders.steps
    saved, own = st.get("model") or {}, t.model.state_dict()
    misfit = [k for k in own if k not in saved or saved[k].shape != own[k].shape]
    misfit += [k for k in saved if k not in own]
    if misfit:
        started = f" ({st['model_spec']})" if st.get("model_spec") else ""
        raise InputError(
            f"{last_path} does not fit model ({len(misfit)} missing or mis-shaped tensors, e.g. "
            f"{misfit[0]}); resume with the model the run started from{started}.",
            param="model",
        )
    t.model.load_state_dict(saved)
    t.optimizer.load_state_dict(st["optimizer"])
    t.scheduler.load_state_dict(st["scheduler"])
    if t.scaler.is_enabled() and st.get("scaler"):
        t.scaler.load_state_dict(st["scaler"])
    p = Progress.from_state(st)
    if p.step and st.get("steps") != steps:
        raise InputError(
            f"{last_path} was saved mid-epoch with {st.get('steps')} steps per epoch "
            f"but the data now gives {steps}; the dataset or batch size changed."
        )
    if p.step:
        p.partial = st.get("partial")
        rngs = st.get("rng") or []
        if len(rngs) == ctx.world:
            set_rng_state(rngs[ctx.rank])
    notes.append(f"Resuming {run_dir} at epoch {p.epoch + 1}" + (f", step {p.step}/{steps}" if p.step else "") + ".")
    if p.epoch >= int(c.epochs):
        notes.append(f"The run already completed {p.epoch} epoch(s); raise --epochs to train further.")
    elif st.get("stopped_early") and c.patience is not None and p.bad_epochs >= int(c.patience):
        notes.append(f"The run stopped early after epoch {p.epoch}; raise --patience to train further.")
        p.already_stopped = True
    return p, notes
