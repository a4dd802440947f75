"""One epoch of training and one validation pass (like timm's ``train_one_epoch``/``validate``), the
record of the best epoch and early stopping, and Ctrl-C between optimizer steps.

:class:`Trainer` bundles what an epoch needs; :mod:`softcamify.training.run` builds it and drives the
epochs.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..binary import two_class
from .config import SCALE_IMAGES, STOP_SYNC_EVERY, FinetuneConfig, Reporter
from .loaders import Loaders, seed_epoch
from .loss import elasticnet_loss, logit_scale, map_statistics


class StopFlag:
    """SIGINT sets a flag checked between optimizer steps; a second Ctrl-C (a second later) aborts."""

    def __init__(self) -> None:
        self.requested = False
        self.when = 0.0
        self._prev: Any = None
        self._installed = False

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        now = time.monotonic()
        if self.requested and now - self.when > 1.0:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested, self.when = True, now

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGINT, self._handler)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._prev if self._prev is not None else signal.default_int_handler)
            self._installed = False


class Forward(nn.Module):
    """``(logits, maps)`` as ``forward`` (what DDP wraps); with a frozen backbone the features run
    without autograd, so backward only touches the evidence head."""

    def __init__(self, model: nn.Module, freeze_backbone: bool):
        super().__init__()
        self.model = model
        self.freeze_backbone = freeze_backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.freeze_backbone:
            return self.model.forward_maps(x)
        with torch.no_grad():
            f = self.model.forward_features(x)
        maps = self.model.head(f)
        return maps.mean(dim=tuple(range(2, maps.ndim))), maps


@dataclass
class Trainer:
    """Everything an epoch needs: the model (``model``; ``net`` is what runs it, DDP-wrapped in torchrun),
    the optimizer and its schedule and scaler, the loaders and the hardware settings."""

    cfg: FinetuneConfig
    ctx: distributed.DistContext
    device: torch.device
    model: Any  # the SoftCAM model
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    trainable: list[torch.Tensor]
    autocast: Callable[[], Any]
    channels_last: bool
    class_weight: torch.Tensor | None
    scale: float  # the penalty's logit scale
    loaders: Loaders
    reporter: Reporter
    stop: StopFlag

    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)


@dataclass
class EpochOutcome:
    """What :func:`train_one_epoch` did: ``totals`` sums ``[loss, ce, l1, l2 (×n), correct, count]`` over
    every rank (on an interruption: what ``last.pt`` keeps as ``partial``)."""

    step: int
    interrupted: bool
    totals: torch.Tensor
    images: int  # over all ranks, this session
    started: float  # time.perf_counter() at the epoch's start
    time_s: float

    def record(self) -> dict[str, Any]:
        """The epoch's ``train`` entry of metrics.jsonl."""
        v = self.totals.tolist()
        cnt = max(v[5], 1.0)
        return {
            "loss": v[0] / cnt,
            "ce": v[1] / cnt,
            "l1": v[2] / cnt,
            "l2": v[3] / cnt,
            "accuracy": v[4] / cnt,
            "images": int(v[5]),
            "time_s": self.time_s,
            "images_per_s": self.images / max(self.time_s, 1e-9),
        }


def _train_step(t: Trainer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimizer step; returns ``[loss, ce, l1, l2 (×n), correct]`` of the batch."""
    c = t.cfg
    with t.autocast():
        logits, maps = t.net(x)
    loss, ce, l1t, l2t = elasticnet_loss(logits, maps, y, c.l1, c.l2, t.class_weight, t.scale)
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(loss).backward()
    if c.grad_clip:
        t.scaler.unscale_(t.optimizer)
        nn.utils.clip_grad_norm_(t.trainable, c.grad_clip)
    t.scaler.step(t.optimizer)
    t.scaler.update()
    t.scheduler.step()
    n = y.shape[0]
    with torch.no_grad():
        correct = (two_class(logits.detach()).argmax(1) == y).sum().float()
        return torch.stack([loss.detach() * n, ce * n, l1t * n, l2t * n, correct]).double()


def train_one_epoch(t: Trainer, epoch: int, skip: int, partial: torch.Tensor | None) -> EpochOutcome:
    """Train epoch ``epoch`` (0-based) from step ``skip`` (a resumed epoch: ``partial`` holds the sums of
    its first steps); stops early between steps after Ctrl-C (agreed across ranks)."""
    c, ctx, steps = t.cfg, t.ctx, t.loaders.steps
    if not skip:
        seed_epoch(c.seed, epoch)
    t.loaders.start_epoch(c.seed, epoch, skip)
    acc = torch.zeros(5, dtype=torch.float64, device=t.device)  # loss, ce, l1, l2 (×n), correct
    count = 0
    if skip and partial is not None and ctx.is_main:
        acc += partial[:5].to(t.device)
        count = int(partial[5])
    t.net.train()
    if c.freeze_backbone:
        t.model.features.eval()
    t.reporter.epoch_start(epoch + 1, int(c.epochs), steps, skip)
    t0 = time.perf_counter()
    last_show = t0
    images = 0
    step = skip
    interrupted = False
    for x, y in t.loaders.train:
        x, y = t.to_device(x, y)
        acc += _train_step(t, x, y)
        n = y.shape[0]
        count += n
        step += 1
        images += n * ctx.world
        now = time.perf_counter()
        running = None
        if now - last_show > 0.5 or step == steps:
            last_show = now
            v = acc.tolist()
            running = {
                "loss": v[0] / max(count, 1),
                "accuracy": v[4] / max(count, 1),
                "images_per_s": images / max(now - t0, 1e-9),
                "lr": t.scheduler.get_last_lr()[0],
            }
        t.reporter.step(step, steps, images, running)
        if step < steps and (not ctx.enabled or step % STOP_SYNC_EVERY == 0):
            if distributed.all_reduce_max_flag(ctx, t.stop.requested, t.device):
                interrupted = True
                break
    epoch_time = time.perf_counter() - t0
    totals = distributed.all_reduce_sum(ctx, torch.cat([acc, acc.new_tensor([count])]))
    return EpochOutcome(step, interrupted, totals, images, t0, epoch_time)


@torch.no_grad()
def validate(t: Trainer, class_names: list[str]) -> dict[str, Any]:
    """Validation metrics over every rank's share (gathered, so every rank computes the same)."""
    from ..evaluation.metrics import classification_report

    c, sc, device = t.cfg, t.model, t.device
    sc.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # w·ce, w, l1, l2, n
    stats = torch.zeros(4, dtype=torch.float64, device=device)
    probs, labels = [], []
    for x, y, _ in t.loaders.val:
        x, y = t.to_device(x, y)
        with t.autocast():
            logits, maps = sc.forward_maps(x)
        logits, maps = two_class(logits.float()), maps.float()  # one logit: its two classes
        ce = F.cross_entropy(logits, y, reduction="none")
        w = t.class_weight[y] if t.class_weight is not None else torch.ones_like(ce)
        flat = maps.flatten(1)  # the penalty's terms, as in elasticnet_loss
        sums += torch.stack(
            [
                (w * ce).sum(),
                w.sum(),
                flat.abs().mean(1).sum() / t.scale,
                flat.square().mean(1).sum() / t.scale**2,
                torch.tensor(float(y.shape[0]), device=device),
            ]
        ).double()
        stats += map_statistics(maps, c.sparsity_threshold)
        probs.append(torch.softmax(logits, 1).cpu())
        labels.append(y.cpu())
    p = torch.cat(probs).numpy().astype(np.float64) if probs else np.zeros((0, len(class_names)))
    lab = torch.cat(labels).numpy() if labels else np.zeros(0, dtype=np.int64)
    totals: list[float] = distributed.all_reduce_sum(t.ctx, sums).tolist()
    counts: list[float] = distributed.all_reduce_sum(t.ctx, stats).tolist()
    parts = distributed.all_gather_objects(t.ctx, (p, lab))
    p = np.concatenate([a for a, _ in parts])
    lab = np.concatenate([b for _, b in parts])
    rep = classification_report(lab, p, class_names, ordinal=c.ordinal)
    n = max(totals[4], 1.0)
    ce = totals[0] / max(totals[1], 1e-12)
    out = {
        "loss": ce + c.l1 * totals[2] / n + c.l2 * totals[3] / n,
        "ce": ce,
        "l1": totals[2] / n,
        "l2": totals[3] / n,
        "accuracy": rep["accuracy"],
        "balanced_accuracy": rep["balanced_accuracy"],
        "auc": rep["roc_auc"],
        "sparsity": counts[0] / max(counts[1], 1.0),
        "map_l1": counts[2] / max(counts[3], 1.0),
        "n": int(rep["n"]),
        "per_class": [
            {
                "name": pc["name"],
                "support": pc["support"],
                "sensitivity": pc["sensitivity"],
                "specificity": pc["specificity"],
            }
            for pc in rep["per_class"]
        ],
    }
    if c.ordinal:
        out["kappa"] = rep.get("quadratic_kappa")
    return out


@torch.no_grad()
def penalty_scale(sc, dataset, device: torch.device, batch_size: int, channels_last: bool) -> float:
    """The starting model's :func:`logit_scale` on the first :data:`SCALE_IMAGES` images of ``dataset``.

    Deterministic (eval mode, eval transform, no random numbers drawn) and the same on every rank, so a
    resumed run and every DDP process use the same scale.
    """
    was_training = sc.training
    sc.eval()
    n = min(SCALE_IMAGES, len(dataset))
    bs = max(1, int(batch_size))
    logits = []
    for start in range(0, n, bs):
        x = torch.stack([dataset[i][0] for i in range(start, min(n, start + bs))]).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits.append(sc(x).float())
    sc.train(was_training)
    return logit_scale(torch.cat(logits)) if logits else 1.0


@dataclass
class Progress:
    """Where a run stands: epochs done, the best epoch by the monitored metric, epochs without improvement
    (early stopping), and, for a run saved mid-epoch, its step and partial sums (all kept in last.pt)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps done in the next epoch (a run saved mid-epoch)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    partial: torch.Tensor | None = None
    already_stopped: bool = False  # a resumed run that had stopped early and may not train further

    @classmethod
    def from_state(cls, st: dict[str, Any]) -> Progress:
        return cls(
            epoch=int(st["epoch"]),
            step=int(st.get("step", 0)),
            history=list(st.get("history") or []),
            best_value=st.get("best_value"),
            best_epoch=st.get("best_epoch"),
            bad_epochs=int(st.get("bad_epochs", 0)),
        )

    def update(self, epoch: int, value: float | None, mode: str) -> bool:
        """Count epoch ``epoch`` (1-based) with monitored ``value``; True when it is the new best."""
        best = self.best_value
        improved = (
            value is not None
            and math.isfinite(value)
            and (best is None or (value > best if mode == "max" else value < best))
        )
        undefined = value is None or not math.isfinite(value)
        if self.best_value is None and undefined and self.best_epoch is None:
            improved = True  # the monitored metric is undefined: keep the first epoch
        if improved:
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    def should_stop(self, cfg: FinetuneConfig, epoch: int) -> bool:
        """Early stopping after epoch ``epoch`` (1-based): ``patience`` epochs without improvement."""
        return cfg.patience is not None and self.bad_epochs >= int(cfg.patience) and epoch < int(cfg.epochs)
