"""Options, results and constants of a fine-tuning run; :func:`check_config` refuses bad options.

The lowest layer of :mod:`softcamify.training`: everything else in the package imports from here, and
this module imports nothing from it.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EXIT_INTERRUPTED, SoftcamifyError, UsageError

LAST_NAME = "last.pt"
BEST_NAME = "best.safetensors"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
LOCK_NAME = ".lock"
RUN_FILES = (LAST_NAME, BEST_NAME, METRICS_NAME, SUMMARY_NAME)
STATE_FORMAT = "softcamify-finetune-state"
STATE_VERSION = 1

MONITORS = {"val_auc": ("auc", "max"), "val_acc": ("accuracy", "max"), "val_loss": ("loss", "min")}
OPTIMIZERS = ("adamw", "sgd")
CLASS_WEIGHTS = ("none", "balanced")
AMP_DTYPES = ("bf16", "fp16")
# λ1 of the normalized penalty (docs/method.md, "Fine-tuning loss"): sparse, localized maps on the demo's
# lesion data within a point of accuracy (benchmarks/localization.py measures the trade-off).
DEFAULT_L1 = 0.05
# Images the starting model's logit scale is measured on (the first ones of the validation split).
SCALE_IMAGES = 64
# Evidence below this magnitude (in logit units, per map cell) counts as "near zero" for map sparsity.
DEFAULT_SPARSITY_THRESHOLD = 0.1
DEFAULT_LR = {"adamw": 1e-4, "sgd": 1e-3}
DEFAULT_WEIGHT_DECAY = {"adamw": 0.01, "sgd": 5e-4}
MIN_LR_RATIO = 0.1  # cosine down to lr/10, as the paper (1e-3 -> 1e-4)
STOP_SYNC_EVERY = 8  # steps between Ctrl-C agreements across ranks
# Fields of a resumed run's stored config that the resuming call may change (everything else that
# shapes the result comes from last.pt, so the run continues as it started).
RESUME_OVERRIDABLE = ("epochs", "patience", "device", "workers", "resume", "force")
# of those, kept from the stored run unless given again (None): the run's plan
RESUME_KEEP_UNLESS_GIVEN = ("epochs", "patience")
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 16
VOLUME_BATCH_SIZE = 2  # a 3D model's activations are large: a few volumes per step


# ----------------------------------------------------------------------------------------------------
# Configuration and result
# ----------------------------------------------------------------------------------------------------


#: The fields of :class:`FinetuneConfig` that say how the starting model is loaded (``convert``'s options).
MODEL_OPTIONS = ("weights", "num_classes", "input_size", "ema", "trust_pickle")


@dataclass
class FinetuneConfig:
    """Every option of a fine-tuning run (the CLI options of ``softcamify finetune``, one to one).

    ``lr``, ``weight_decay`` and ``min_lr`` default (None) by optimizer: AdamW 1e-4 / 0.01, SGD
    (Nesterov, momentum 0.9, the paper's) 1e-3 / 5e-4; ``min_lr`` is ``lr / 10``. ``workers`` None
    picks ``min(4, CPUs - 1)``.
    """

    # data
    labels: str | None = None
    val_split: float | None = None
    augment: str = "light"
    strict_data: bool = False
    # model (used when ``model`` is a name or a file)
    weights: str | None = None
    num_classes: int | None = None
    input_size: tuple[int, int] | None = None
    ema: bool = False
    trust_pickle: bool = False
    model_args: dict[str, Any] | None = None  # the constructor arguments of an architecture given by name
    module: str | None = None  # a class of the user's own, "package.module:Class"; the model is then its weights
    mean: list[float] | None = None  # preprocessing of the original classifier, when it records none
    std: list[float] | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    reset_head: bool = False
    # loss
    l1: float = DEFAULT_L1
    l2: float = 0.0
    class_weights: str = "none"
    # optimization
    epochs: int | None = None  # None: DEFAULT_EPOCHS for a new run, the stored plan when resuming
    batch_size: int | None = None  # None: DEFAULT_BATCH_SIZE for images, VOLUME_BATCH_SIZE for volumes
    optimizer: str = "adamw"
    lr: float | None = None
    min_lr: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    grad_clip: float | None = None
    freeze_backbone: bool = False
    # hardware
    device: str = "auto"
    amp: bool = False
    amp_dtype: str = "bf16"
    channels_last: bool | None = None  # None: on CUDA
    workers: int | None = None
    deterministic: bool = False  # CUDA only (CPU runs are always deterministic)
    seed: int = 0
    # evaluation and checkpoints
    monitor: str = "val_auc"
    patience: int | None = None
    ordinal: bool = False
    sparsity_threshold: float = DEFAULT_SPARSITY_THRESHOLD
    resume: bool = False
    force: bool = False
    # a volume model's preprocessing (softcamify.volumes.VolumeConfig.to_dict()); None: what the model records
    volume: dict[str, Any] | None = None

    def batch(self) -> int:
        """The batch size per process (``batch_size``; unset: :data:`DEFAULT_BATCH_SIZE`; a run sets it from
        its model before training: :data:`VOLUME_BATCH_SIZE` for a volume model)."""
        return int(self.batch_size) if self.batch_size is not None else DEFAULT_BATCH_SIZE

    def model_options(self) -> dict[str, Any]:
        """``model_args``, ``module`` and the preprocessing given, as :func:`softcamify.conversion.as_softcam`
        takes them."""
        given = {k: getattr(self, k) for k in ("module", "mean", "std", "crop_pct", "interpolation")}
        return {"model_args": self.model_args, **{k: v for k, v in given.items() if v is not None}}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["input_size"] is not None:
            d["input_size"] = [int(v) for v in d["input_size"]]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get("input_size") is not None:
            kw["input_size"] = tuple(int(v) for v in kw["input_size"])
        return cls(**kw)

    def starting_model(self, model: Any) -> tuple[Any, Any]:
        """``model`` as :func:`softcamify.conversion.as_softcam` makes it with this config's
        :data:`MODEL_OPTIONS` and :meth:`model_options` (not strict): ``(SoftCAM, LoadedModel)``."""
        from ..conversion import as_softcam

        return as_softcam(model, **{k: getattr(self, k) for k in MODEL_OPTIONS}, **self.model_options(), strict=False)

    def resolved(self) -> FinetuneConfig:
        """A copy with the optimizer-dependent defaults filled in."""
        c = copy.deepcopy(self)
        c.optimizer = str(c.optimizer).lower()
        if c.lr is None:
            c.lr = DEFAULT_LR.get(c.optimizer, 1e-4)
        if c.weight_decay is None:
            c.weight_decay = DEFAULT_WEIGHT_DECAY.get(c.optimizer, 0.0)
        if c.min_lr is None:
            c.min_lr = c.lr * MIN_LR_RATIO
        if c.class_weights is None:
            c.class_weights = "none"
        return c


@dataclass
class FinetuneResult:
    """What a run produced. ``model`` is the best model (the weights of ``best.safetensors``)."""

    run_dir: str
    best_path: str | None
    last_path: str
    metrics_path: str
    monitor: str
    best_epoch: int | None
    best_value: float | None
    epochs_completed: int
    epochs_planned: int
    stopped_early: bool
    resumed_from: int | None
    train_images_per_s: float
    elapsed_s: float
    best: dict[str, Any] | None
    last: dict[str, Any] | None
    data: dict[str, Any]
    config: dict[str, Any]
    world_size: int = 1
    device: str = "cpu"
    amp: str | None = None
    logit_scale: float = 1.0  # s of the penalty (training.logit_scale of the starting model)
    notes: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    model: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return finite({f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"})


class FinetuneInterrupted(SoftcamifyError):
    """Ctrl-C (SIGINT): the state was saved in ``last.pt``; ``resume`` continues exactly there."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, run_dir: str | os.PathLike, epoch: int, step: int, steps: int, saved: bool = True):
        self.run_dir = Path(run_dir)
        self.epoch, self.step, self.steps, self.saved = epoch, step, steps, saved
        where = f"epoch {epoch}, step {step}/{steps}" if step else f"the end of epoch {epoch - 1}"
        if saved:
            msg = (
                f"Interrupted; the state at {where} is saved in {self.run_dir / LAST_NAME}: "
                f"rerun it with resume to continue."
            )
        else:
            msg = "Interrupted before training started; nothing was saved."
        super().__init__(msg, param="resume" if saved else None)


class Reporter:
    """Receives progress from :func:`finetune` (only in the main process). The base class ignores it all.

    ``step`` is called after every optimizer step; ``running`` (loss, accuracy, images_per_s of the
    epoch so far) is filled at most twice a second (reading it needs a device sync), else None.
    """

    def start(self, info: dict[str, Any]) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        pass

    def step(self, step: int, steps: int, images: int, running: dict[str, float] | None) -> None:
        pass

    def epoch_end(self, record: dict[str, Any]) -> None:
        pass

    def end(self, result: FinetuneResult) -> None:
        pass


def check_config(c: FinetuneConfig) -> None:
    """Refuse an option value a run cannot use (a :class:`UsageError` naming the field, in ``param``)."""

    def positive(name: str, value: Any, allow_zero: bool = False) -> None:
        if value is None:
            return
        bad = value < 0 if allow_zero else value <= 0
        if bad or (isinstance(value, float) and not math.isfinite(value)):
            want = "0 or more" if allow_zero else "positive"
            raise UsageError(f"{name} {value} must be {want}.", param=name)

    def one_of(name: str, value: Any, choices: Any) -> None:
        if value not in choices:
            raise UsageError(f"{name} {value!r} is not one of {', '.join(choices)}.", param=name)

    from ..data import AUGMENTATIONS

    one_of("optimizer", c.optimizer, OPTIMIZERS)
    one_of("monitor", c.monitor, MONITORS)
    one_of("class_weights", c.class_weights, CLASS_WEIGHTS)
    one_of("amp_dtype", c.amp_dtype, AMP_DTYPES)
    one_of("augment", c.augment, AUGMENTATIONS)
    if c.epochs is not None and int(c.epochs) < 1:
        raise UsageError(f"epochs {c.epochs} must be at least 1.", param="epochs")
    if c.batch_size is not None and int(c.batch_size) < 1:
        raise UsageError(f"batch_size {c.batch_size} must be at least 1.", param="batch_size")
    positive("lr", c.lr)
    positive("min_lr", c.min_lr, allow_zero=True)
    positive("weight_decay", c.weight_decay, allow_zero=True)
    positive("l1", c.l1, allow_zero=True)
    positive("l2", c.l2, allow_zero=True)
    positive("momentum", c.momentum, allow_zero=True)
    positive("warmup_epochs", c.warmup_epochs, allow_zero=True)
    positive("grad_clip", c.grad_clip)
    positive("sparsity_threshold", c.sparsity_threshold)
    if c.patience is not None and int(c.patience) < 1:
        raise UsageError(f"patience {c.patience} must be at least 1.", param="patience")
    if c.workers is not None and int(c.workers) < 0:
        raise UsageError(f"workers {c.workers} must be 0 or more.", param="workers")
    if c.val_split is not None and not 0.0 <= float(c.val_split) < 1.0:
        raise UsageError(f"val_split {c.val_split} must be at least 0 and below 1.", param="val_split")
    if c.num_classes is not None and int(c.num_classes) < 2:
        raise UsageError(f"num_classes {c.num_classes} must be at least 2.", param="num_classes")
    if c.resume and c.force:
        raise UsageError("resume and force contradict each other; pass one of them.", param=("resume", "force"))


def finite(obj: Any) -> Any:
    """JSON-safe: numpy and torch scalars to Python, NaN/Inf to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj
