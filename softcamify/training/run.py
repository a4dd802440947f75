"""The run behind :func:`finetune`: named steps from the run folder to the result.

``finetune`` → :class:`_Run`.run: open the run folder (checks, lock, a resumed run's stored config) →
data and model (classes matched, images verified) → hardware plan (device, AMP, channels-last,
workers) → :class:`~softcamify.training.loop.Trainer` (penalty scale, parameter groups, optimizer,
loaders, schedule) → resume from ``last.pt`` → create and lock the folder → epochs
(:func:`~softcamify.training.loop.train_one_epoch`, :func:`~softcamify.training.loop.validate`, best
checkpoint, metrics line, ``last.pt``, early stopping) → the result and ``summary.json``.
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..errors import InputError, SoftcamifyError
from .config import (
    BEST_NAME,
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    LAST_NAME,
    METRICS_NAME,
    MONITORS,
    VOLUME_BATCH_SIZE,
    FinetuneConfig,
    FinetuneInterrupted,
    FinetuneResult,
    Reporter,
    check_config,
    finite,
)
from .hardware import Hardware, amp_plan, make_optimizer, param_groups
from .loaders import DatasetMaker, SeededDataset, WorkerError, build_loaders, default_workers, plan_volumes, seed_all
from .loop import (
    EpochOutcome,
    Forward,
    Progress,
    StopFlag,
    Trainer,
    penalty_scale,
    train_one_epoch,
    validate,
)
from .loss import balanced_class_weights, cosine_with_warmup
from .resume import check_resumed_data, merge_resumed_config, restore
from .rundir import (
    RunLock,
    append_jsonl,
    check_run_dir,
    load_state,
    on_main,
    open_run_dir,
    save_best,
    save_state,
    write_summary,
)
from .splits import check_splits, discover_splits, match_classes, verify_splits


class _Run:
    """One call of :func:`finetune` in one process; its methods are the run's steps, in order."""

    def __init__(
        self,
        model,
        data_dir,
        run_dir,
        cfg: FinetuneConfig,
        reporter: Reporter,
        ctx: distributed.DistContext,
        device: torch.device,
    ):
        self.model_spec = model
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.ctx = ctx
        self.device = device
        self.reporter = reporter if ctx.is_main else Reporter()
        self.notes: list[str] = []
        self.lock: RunLock | None = None
        self.state: dict[str, Any] | None = None
        self.scale = 1.0  # the penalty's logit scale (penalty_scale), measured before the first step
        self.stop = StopFlag()
        self.volume: Any = None  # a volume model's VolumeConfig (plan_volumes)

    # -- helpers --------------------------------------------------------------------------------------
    def note(self, message: str) -> None:
        self.notes.append(message)
        self.reporter.note(message)

    @property
    def last_path(self) -> Path:
        return self.run_dir / LAST_NAME

    @property
    def best_path(self) -> Path:
        return self.run_dir / BEST_NAME

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_NAME

    # -- preparation ----------------------------------------------------------------------------------
    def prepare_run_dir(self) -> None:
        def check() -> None:
            check_run_dir(self.run_dir, self.cfg.resume, self.cfg.force)
            if self.run_dir.is_dir():  # refuse early when another run holds the folder
                self.lock = RunLock(self.run_dir).acquire()

        on_main(self.ctx, check)
        if self.lock is not None and self.lock.took_over_from is not None:
            self.note(
                f"Took over the lock of {self.run_dir}: its run ({self.lock.took_over_from.describe()}) "
                "no longer exists."
            )
        if self.cfg.resume:
            self.state = load_state(self.last_path)
            self.check_resumed_data(self.state)
            self.merge_resumed_config(self.state)
        if self.cfg.epochs is None:  # not given, and not planned by a resumed run
            self.cfg.epochs = DEFAULT_EPOCHS

    def check_resumed_data(self, state: dict[str, Any]) -> None:
        check_resumed_data(self.run_dir, self.data_dir, state)

    def merge_resumed_config(self, state: dict[str, Any]) -> None:
        self.cfg, notes = merge_resumed_config(self.cfg, state, self.model_spec)
        for n in notes:
            self.note(n)

    def load_model(self):
        from ..model import SoftCAM

        spec = self.model_spec
        if isinstance(spec, SoftCAM):
            spec = copy.deepcopy(spec)
        sc, loaded = self.cfg.starting_model(spec)
        for n in loaded.notes:
            self.note(n)
        if not sc.meta.exact and not sc.meta.conversion.get("head_reset"):
            conv = sc.meta.conversion or {}
            if conv.get("max_abs_diff") is not None:
                self.note(
                    f"{sc.meta.architecture} converts only approximately ({sc.meta.strategy}, max "
                    f"|Δlogit| {conv['max_abs_diff']:.3g}); fine-tuning adapts the evidence maps."
                )
        return sc

    def load_data_and_model(self):
        """The splits and the model, their classes lined up, every image decoded once."""
        sc = self.load_model()
        self.volume = plan_volumes(sc, self.cfg)  # a volume model: its preprocessing, recorded in it
        if self.cfg.batch_size is None:
            self.cfg.batch_size = VOLUME_BATCH_SIZE if self.volume is not None else DEFAULT_BATCH_SIZE
        splits = discover_splits(self.data_dir, self.cfg)
        for n in splits.notes:  # a labels CSV that lists images twice or in two splits
            self.note(n)
        sc, splits = match_classes(sc, splits, self.data_dir, self.cfg, self.note)
        channels = int(sc.meta.data_config["input_size"][0])
        splits, n_skipped = verify_splits(splits, channels, self.cfg, self.ctx, self.note)
        check_splits(splits, self.note)
        return sc, splits, channels, n_skipped

    def hardware(self) -> Hardware:
        c = self.cfg
        amp_dtype, amp_note = amp_plan(self.device, c)
        if amp_note:
            self.note(amp_note)
        channels_last = self.device.type == "cuda" if c.channels_last is None else bool(c.channels_last)
        channels_last = channels_last and self.volume is None  # 5-D inputs have no channels-last layout
        workers = default_workers() if c.workers is None else int(c.workers)
        return Hardware(self.device, amp_dtype, channels_last, workers)

    def build_trainer(self, sc, splits, channels: int, hw: Hardware) -> tuple[Trainer, list[float] | None]:
        """The model on its device, the penalty scale, optimizer, loaders and schedule; and the class
        weights (``--class-weights balanced``) as a list."""
        c, ctx, device = self.cfg, self.ctx, self.device
        sc = sc.to(device)
        if hw.channels_last:
            sc = sc.to(memory_format=torch.channels_last)
        datasets = DatasetMaker(sc.meta.data_config, channels, c.augment, self.volume)
        # λ is relative to the starting model's logit scale (also when resuming: sc is still the start here)
        scale_ds = datasets(splits.val or splits.train, train=False)
        self.scale = penalty_scale(sc, scale_ds, device, c.batch(), hw.channels_last)
        if c.freeze_backbone:
            sc.features.requires_grad_(False)
        trainable, groups = param_groups(sc, c.weight_decay)
        opt = make_optimizer(groups, c)
        net: nn.Module = Forward(sc, c.freeze_backbone)
        if ctx.enabled:
            net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if hw.cuda else None)
        scaler = torch.amp.GradScaler(device.type, enabled=hw.amp_dtype == torch.float16)
        class_weight = weights_list = None
        if c.class_weights == "balanced":
            weights_list = balanced_class_weights([s.label for s in splits.train], len(sc.meta.class_names))
            class_weight = torch.tensor(weights_list, dtype=torch.float32, device=device)
        train_ds = SeededDataset(datasets(splits.train, train=True), c.seed)
        val_ds = datasets(splits.val, train=False)
        loaders = build_loaders(train_ds, val_ds, ctx, c.batch(), c.seed, hw.workers, hw.cuda)
        total_steps = loaders.steps * int(c.epochs)
        warmup = int(round(float(c.warmup_epochs) * loaders.steps))
        factor = cosine_with_warmup(total_steps, warmup, c.min_lr / c.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        t = Trainer(
            c,
            ctx,
            device,
            sc,
            net,
            opt,
            sched,
            scaler,
            trainable,
            hw.autocast(),
            hw.channels_last,
            class_weight,
            self.scale,
            loaders,
            self.reporter,
            self.stop,
        )
        return t, weights_list

    def resume(self, t: Trainer) -> Progress:
        """Load ``last.pt`` (a resumed run) into the model, optimizer, schedule and scaler; returns where
        the run stands."""
        progress, notes = restore(t, self.state, self.cfg, self.last_path, self.run_dir, self.ctx)
        for n in notes:
            self.note(n)
        return progress

    def open_run_dir(self, progress: Progress) -> None:
        """Create and lock the run folder; clear an old run under --force; cut a resumed run's metrics."""
        c = self.cfg

        def work() -> None:
            resumed = progress.epoch if c.resume else None
            self.lock = open_run_dir(self.run_dir, self.lock, c.force and not c.resume, resumed)

        on_main(self.ctx, work)

    def start_info(self, t: Trainer, hw: Hardware, data_info: dict[str, Any], progress: Progress) -> dict:
        sc = t.model
        return {
            "model": sc.meta.architecture,
            "strategy": sc.meta.strategy,
            "classes": list(sc.meta.class_names),
            "device": str(self.device),
            "world_size": self.ctx.world,
            "amp": hw.amp_name,
            "channels_last": hw.channels_last,
            "workers": hw.workers,
            "steps_per_epoch": t.loaders.steps,
            "data": data_info,
            "config": self.cfg.to_dict(),
            "logit_scale": self.scale,
            "run_dir": str(self.run_dir),
            "resumed_from": progress.epoch if self.state is not None else None,
        }

    # -- training -------------------------------------------------------------------------------------
    def save(
        self, t: Trainer, p: Progress, epoch: int, step: int, partial: torch.Tensor | None, stopped_early: bool = False
    ) -> None:
        save_state(
            self.last_path,
            t,
            p,
            epoch=epoch,
            step=step,
            partial=partial,
            stopped_early=stopped_early,
            model_spec=self.model_spec,
            data_dir=self.data_dir,
        )

    def end_epoch(self, t: Trainer, p: Progress, epoch: int, out: EpochOutcome, splits) -> bool:
        """Validate epoch ``epoch`` (0-based), keep the best model, log the epoch, write last.pt.
        True when the run stops early here."""
        c = self.cfg
        val = validate(t, list(t.model.meta.class_names))
        monitor_key, mode = MONITORS[c.monitor]
        value = val.get(monitor_key)
        improved = p.update(epoch + 1, value, mode)
        record = {
            "epoch": epoch + 1,
            "epochs": int(c.epochs),
            "lr": t.scheduler.get_last_lr()[0],
            "train": out.record(),
            "val": val,
            "monitor": c.monitor,
            "value": value,
            "best": improved,
            "best_epoch": p.best_epoch,
            "best_value": p.best_value,
            "time_s": time.perf_counter() - out.started,
        }
        p.history.append(finite(record))
        if improved:
            on_main(
                self.ctx,
                lambda: save_best(
                    self.best_path, t.model, c, record, splits, self.scale, self.ctx.world, self.data_dir
                ),
            )
        on_main(self.ctx, lambda: append_jsonl(self.metrics_path, record))
        stop_now = p.should_stop(c, epoch + 1)
        self.save(t, p, epoch + 1, 0, None, stopped_early=stop_now)
        self.reporter.epoch_end(p.history[-1])
        if stop_now:
            self.note(
                f"Stopped early after epoch {epoch + 1}: {c.monitor} did not improve for "
                f"{c.patience} epoch(s) (best {p.best_value:.4g} at epoch {p.best_epoch})."
            )
        return stop_now

    def fit(self, t: Trainer, p: Progress, splits) -> tuple[bool, float, int]:
        """The epochs; returns (stopped early, training seconds, training images)."""
        c = self.cfg
        train_time, train_images = 0.0, 0
        end = p.epoch if p.already_stopped else int(c.epochs)
        self.stop.install()
        try:
            for epoch in range(p.epoch, end):
                skip = p.step if epoch == p.epoch else 0
                out = train_one_epoch(t, epoch, skip, p.partial)
                if out.interrupted:
                    self.save(t, p, epoch, out.step, out.totals)
                    raise FinetuneInterrupted(self.run_dir, epoch + 1, out.step, t.loaders.steps)
                train_time += out.time_s
                train_images += out.images
                if self.end_epoch(t, p, epoch, out, splits):
                    return True, train_time, train_images
                stop = distributed.all_reduce_max_flag(self.ctx, self.stop.requested, self.device)
                if stop and epoch + 1 < int(c.epochs):
                    raise FinetuneInterrupted(self.run_dir, epoch + 2, 0, t.loaders.steps)
        except InputError as e:  # an image that became unreadable during the run (it was checked before)
            raise self.data_failed(e) from e
        finally:
            self.stop.uninstall()
        return False, train_time, train_images

    def data_failed(self, e: InputError) -> SoftcamifyError:
        """The error to raise for ``e``, raised while training: the worker's original error, and how to
        continue when a state is saved (the run folder stays resumable: last.pt is only ever replaced whole)."""
        err = e.original() if isinstance(e, WorkerError) else e
        if not self.last_path.exists():
            return err
        return type(err)(f"{err.message.rstrip('.')}, then continue the run with --resume.", param=err.params)

    def result(
        self,
        t: Trainer,
        p: Progress,
        hw: Hardware,
        data_info: dict[str, Any],
        stopped_early: bool,
        train_time: float,
        train_images: int,
        t_start: float,
    ) -> FinetuneResult:
        """The result (its model: the best one on rank 0; other ranks keep the last weights)."""
        sc, history, c = t.model, p.history, self.cfg
        completed = len(history)
        best_record = next((h for h in history if h["epoch"] == p.best_epoch), None)
        best_is_older = best_record is not None and p.best_epoch != completed
        if self.ctx.is_main and self.best_path.exists() and best_is_older:
            from safetensors.torch import load_file

            sc.load_state_dict(load_file(str(self.best_path)))
        result_model = sc.eval()
        distributed.barrier(self.ctx)
        tput = train_images / train_time if train_time > 0 else float("nan")
        return FinetuneResult(
            run_dir=str(self.run_dir),
            best_path=str(self.best_path) if self.best_path.exists() else None,
            last_path=str(self.last_path),
            metrics_path=str(self.metrics_path),
            monitor=c.monitor,
            best_epoch=p.best_epoch,
            best_value=p.best_value,
            epochs_completed=completed,
            epochs_planned=int(c.epochs),
            stopped_early=stopped_early or p.already_stopped,
            resumed_from=p.epoch if self.state is not None else None,
            train_images_per_s=tput,
            elapsed_s=time.perf_counter() - t_start,
            best=best_record,
            last=history[-1] if history else None,
            data=data_info,
            config=c.to_dict(),
            world_size=self.ctx.world,
            device=str(self.device),
            amp=hw.amp_name,
            logit_scale=self.scale,
            notes=list(self.notes),
            history=history,
            model=result_model,
        )

    def run(self) -> FinetuneResult:
        t_start = time.perf_counter()
        self.prepare_run_dir()
        seed_all(self.cfg.seed)  # resumed runs take the stored config (and seed)
        sc, splits, channels, n_skipped = self.load_data_and_model()
        hw = self.hardware()
        t, weights_list = self.build_trainer(sc, splits, channels, hw)
        progress = self.resume(t)
        self.open_run_dir(progress)
        data_info = splits.to_dict()
        data_info.update(
            train_images=len(splits.train),
            val_images=len(splits.val),
            skipped_images=n_skipped,
            class_weights=weights_list,
        )
        self.reporter.start(self.start_info(t, hw, data_info, progress))
        stopped_early, train_time, train_images = self.fit(t, progress, splits)
        result = self.result(t, progress, hw, data_info, stopped_early, train_time, train_images, t_start)
        if self.ctx.is_main:
            write_summary(self.run_dir, result.to_dict())
        self.reporter.end(result)
        return result


def finetune(
    model: Any,
    data_dir: str | os.PathLike | None,
    run_dir: str | os.PathLike,
    config: FinetuneConfig | None = None,
    *,
    reporter: Reporter | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` on the images in ``data_dir`` with the ElasticNet map penalty; write ``run_dir``.

    Args:
        model: A :class:`~softcamify.SoftCAM` (copied, not modified), any ``nn.Module`` or
            :class:`~softcamify.LoadedModel` that converts, or a model spec as ``softcamify convert``
            takes it (timm name, checkpoint file, softcamify model); ``config.weights`` etc. apply then.
        data_dir: Image folder (``train/``+``val/`` class folders, or class folders split by
            ``config.val_split``), or the folder ``config.labels`` paths are relative to (may be None).
        run_dir: Output folder (see the module docstring). A new run needs it missing or empty (or
            ``config.force``); ``config.resume`` continues the run saved there.
        config: :class:`FinetuneConfig` (defaults when None).
        reporter: Receives progress (e.g. the CLI's bars and tables); silent when None.

    Raises :class:`UsageError`, :class:`InputError`, :class:`OutputError`, :class:`ConversionError`
    with one-sentence messages before anything is written to ``run_dir``, and :class:`FinetuneInterrupted`
    after Ctrl-C (the state is saved; ``resume=True`` continues exactly).
    Inside torchrun every process calls this; rank 0 writes the files and reports.
    """
    from ..device import resolve_device

    cfg = copy.deepcopy(config) if config is not None else FinetuneConfig()
    check_config(cfg)
    cfg = cfg.resolved()
    check_config(cfg)
    device = resolve_device(cfg.device)
    ctx, device = distributed.setup(device)
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_bench = torch.backends.cudnn.benchmark
    prev_cudnn_det = torch.backends.cudnn.deterministic
    run = _Run(model, data_dir, run_dir, cfg, reporter or Reporter(), ctx, device)
    try:
        if device.type == "cpu" or cfg.deterministic:
            if device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.deterministic = True
                torch.backends.cudnn.benchmark = False
            torch.use_deterministic_algorithms(True, warn_only=True)
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
            warnings.filterwarnings("ignore", message=".*deterministic.*")
            return run.run()
    finally:
        if run.lock is not None:
            run.lock.release()
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.backends.cudnn.benchmark = prev_bench
        torch.backends.cudnn.deterministic = prev_cudnn_det
        distributed.cleanup(ctx)
