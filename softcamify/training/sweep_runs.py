"""Running the fine-tunes of a λ sweep: the run folder names, the devices, one worker thread per device, and
one finetune (then scoring) per λ pair.

Part of :mod:`softcamify.training.sweep` (which re-exports :func:`run_tag`, :func:`resolve_devices` and
:func:`map_on_devices`). With several devices, one worker thread per device pulls the next item from a
queue; CUDA kernels run without the GIL, so one λ per GPU runs in parallel.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..evaluation.metrics import json_safe
from .sweep_results import SweepInterrupted, SweepReporter, SweepRun
from .sweep_scoring import SCORE_KEYS, rule_keys, score_model

__all__ = ["RUNS_DIR", "run_tag", "resolve_devices", "map_on_devices", "Runner"]

RUNS_DIR = "runs"


# ----------------------------------------------------------------------------------------------------
# Run folders and devices
# ----------------------------------------------------------------------------------------------------


def _lam(v: float) -> str:
    """Shortest text that reads back as ``v``: 0, 0.003, 3e-05, 1."""
    if v == 0:
        return "0"
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text


def run_tag(l1: float, l2: float) -> str:
    """The run folder name of a λ pair, e.g. ``l1=0.003,l2=0`` (distinct values give distinct tags)."""
    return f"l1={_lam(l1)},l2={_lam(l2)}"


def resolve_devices(devices: str | Sequence[str] | None, config_device: str = "auto") -> list[str]:
    """The devices runs go to: one entry per concurrent run.

    ``None`` uses ``config_device``: with ``auto`` or ``cuda`` and several visible CUDA GPUs, one entry
    per GPU (``cuda:0``, ``cuda:1``, …), else that one device. A list (or comma-separated text) is used
    as given after checking each device; repeats run several λ at a time on one device.
    """
    from ..device import resolve_device

    if devices is None:
        spec = str(config_device or "auto").strip().lower()
        if spec in ("auto", "cuda"):
            import torch

            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if n > 1:
                return [f"cuda:{i}" for i in range(n)]
        dev = resolve_device(spec)
        return [str(dev)]
    items = [d.strip() for d in devices.split(",")] if isinstance(devices, str) else [str(d).strip() for d in devices]
    items = [d for d in items if d]
    if not items:
        raise UsageError("devices must name at least one device (cpu, cuda, cuda:N).", param="devices")
    return [str(resolve_device(d)) for d in items]


def map_on_devices(
    fn: Callable[[Any, str], Any],
    items: Sequence[Any],
    devices: Sequence[str],
    cancel: threading.Event | None = None,
) -> list[Any]:
    """``[fn(item, device) for item in items]``, each item on one of ``devices``, results in item order.

    One device: in this thread, one after another (Ctrl-C reaches ``fn`` directly). Several: one worker
    thread per entry of ``devices``, each taking the next item from a shared queue, so a device never runs
    two items at once (unless it is listed twice) and a fast device takes more items. The first error stops
    the hand-out of new items (``cancel`` is set, so ``fn`` may stop early) and is raised once all workers
    have returned; Ctrl-C in this thread does the same and raises ``KeyboardInterrupt``.
    """
    devices = list(devices)
    if not devices:
        raise UsageError("devices must name at least one device.", param="devices")
    cancel = cancel if cancel is not None else threading.Event()
    if len(devices) == 1 or len(items) <= 1:
        out = []
        for item in items:
            if cancel.is_set():
                break
            out.append(fn(item, devices[0]))
        return out
    todo: queue.Queue[tuple[int, Any]] = queue.Queue()
    for i, item in enumerate(items):
        todo.put((i, item))
    results: dict[int, Any] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(device: str) -> None:
        while not cancel.is_set():
            try:
                i, item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                value = fn(item, device)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                with lock:
                    errors.append(e)
                cancel.set()
                return
            with lock:
                results[i] = value

    threads = [
        threading.Thread(target=worker, args=(d,), name=f"sweep-{d}", daemon=True) for d in devices[: len(items)]
    ]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:
        cancel.set()
        for t in threads:
            t.join()
        raise
    if errors:
        raise errors[0]
    return [results[i] for i in sorted(results)]


# ----------------------------------------------------------------------------------------------------
# One finetune per λ pair
# ----------------------------------------------------------------------------------------------------

_SCORE_FIELDS = (*SCORE_KEYS, "map_l1")  # the scores a SweepRun takes as score_model gives them


class _RunReporter:
    """Bridges one finetune run to the sweep reporter; stops the run at its next step once cancelled."""

    def __init__(self, tag: str, reporter: SweepReporter, cancel: threading.Event, notes: list[str]):
        self.tag, self.reporter, self.cancel, self.notes = tag, reporter, cancel, notes

    def start(self, info: dict[str, Any]) -> None:
        pass

    def note(self, message: str) -> None:
        self.notes.append(message)

    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        pass

    def step(self, step: int, steps: int, images: int, running: Any) -> None:
        if self.cancel.is_set():
            raise KeyboardInterrupt  # another run failed, or Ctrl-C: stop (the last epoch's last.pt stays)

    def epoch_end(self, record: dict[str, Any]) -> None:
        self.reporter.epoch_end(self.tag, record)

    def end(self, result: Any) -> None:
        pass


@dataclass
class Runner:
    """What the runs of one sweep share (the starting model, the validation view, the settings); scores a
    model and fine-tunes one λ pair."""

    model: Any  # the converted starting model, on the CPU; each run fine-tunes a copy
    data_dir: Any
    out: Path
    cfg: Any  # the sweep's FinetuneConfig (scoring reads batch_size and sparsity_threshold)
    run_cfg: Any  # what every run gets, before its λ and device
    view: Path
    view_masks: Path | None
    val: list[Any]
    max_images: int | None
    grid: list[tuple[float, float]]
    reporter: SweepReporter
    with_masks: bool = False  # set by the reference: which score the rule ranks by
    cancel: threading.Event = field(default_factory=threading.Event)

    def score(self, model: Any, device: str) -> dict[str, Any]:
        return score_model(model, self.view, self.view_masks, self.val, device, self.cfg, self.max_images)

    def run_one(self, pair: tuple[float, float], device: str) -> SweepRun:
        from .run import finetune

        a, b = pair
        tag = run_tag(a, b)
        notes: list[str] = []
        self.reporter.run_start(tag, device, self.grid.index(pair) + 1, len(self.grid))
        t0 = time.perf_counter()
        res = finetune(
            self.model,
            self.data_dir,
            self.out / RUNS_DIR / tag,
            replace(self.run_cfg, l1=a, l2=b, device=device),
            reporter=_RunReporter(tag, self.reporter, self.cancel, notes),
        )
        scores = self.score(res.model, device)
        res.model.cpu()
        score, tie = rule_keys(scores, self.with_masks)
        run = SweepRun(
            tag=tag,
            l1=a,
            l2=b,
            run_dir=str(res.run_dir),
            best_path=res.best_path,
            device=device,
            **{k: scores[k] for k in _SCORE_FIELDS},
            score=score,
            tiebreak=tie,
            best_epoch=res.best_epoch,
            epochs_completed=res.epochs_completed,
            finetune_val=json_safe({k: v for k, v in ((res.best or {}).get("val") or {}).items() if k != "per_class"}),
            elapsed_s=time.perf_counter() - t0,
            notes=notes,
        )
        self.reporter.run_end(run)
        return run

    def run_all(self, devices: list[str]) -> list[SweepRun]:
        """Every λ pair, on ``devices``; Ctrl-C (or finetune's own interruption) becomes
        :class:`SweepInterrupted`."""
        from .config import FinetuneInterrupted

        try:
            return map_on_devices(self.run_one, self.grid, devices, self.cancel)
        except FinetuneInterrupted as e:
            raise SweepInterrupted(interrupted_message(self.out, e.run_dir)) from None
        except KeyboardInterrupt:
            raise SweepInterrupted(interrupted_message(self.out, None)) from None


def interrupted_message(out: Path, run_dir: Any) -> str:
    """The one sentence of :class:`SweepInterrupted`: what was kept, what was not written."""
    where = f" during {run_dir} (its last.pt can be resumed with finetune --resume)" if run_dir else ""
    return (
        f"Sweep interrupted{where}; completed runs are kept in {out / RUNS_DIR}, and sweep.json, pareto.png, "
        "index.html and best.safetensors were not written."
    )
