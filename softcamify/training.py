"""Fine-tuning a SoftCAM model with an ElasticNet penalty on its evidence maps.

The library behind ``softcamify finetune``; notebooks call it directly::

    from softcamify.training import FinetuneConfig, finetune
    result = finetune("resnet50_softcam.safetensors", "data/", "runs/l1", FinetuneConfig(epochs=20, l1=5e-5))
    result.model            # the best SoftCAM model (also RUN_DIR/best.safetensors)
    result.history          # one dict per epoch (also RUN_DIR/metrics.jsonl)

Loss (docs/method.md, "Fine-tuning loss")::

    loss = CE(logits, y) + l1 · mean_{b,k,h,w} |A| / s + l2 · mean_{b,k,h,w} A² / s²

The penalties are means over every sample, class map and evidence cell, relative to ``s``, the logit
scale of the starting model (:func:`logit_scale`, measured once before the first step), so a λ means
the same on any grid, class count and logit scale; ``l1 = l2 = 0`` is plain cross-entropy.

A run folder holds ``last.pt`` (everything needed to continue: model, optimizer, scaler, scheduler,
epoch and step, RNG states, config; written atomically at every epoch end and on Ctrl-C; readable with
``torch.load(weights_only=True)``), ``best.safetensors`` (a softcamify model, chosen by ``monitor``),
``metrics.jsonl`` (one JSON object per epoch) and ``summary.json``. With the same seed, CPU runs are
bit-identical, and a resumed run ends with the same weights as an uninterrupted one: every epoch's
shuffling and every sample's augmentation are seeded from ``(seed, epoch, index)``, so they depend on
neither the worker count nor where a run was interrupted.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import errno
import json
import math
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from ._version import __version__
from .binary import decision_names, is_binary, two_class
from .errors import (
    EXIT_INTERRUPTED,
    InputError,
    OutputError,
    SoftcamifyError,
    UsageError,
)

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "FinetuneInterrupted",
    "Reporter",
    "finetune",
    "elasticnet_loss",
    "logit_scale",
    "lambda_from_paper",
    "cosine_with_warmup",
    "map_statistics",
    "load_state",
    "check_run_dir",
    "RunLock",
    "MONITORS",
    "OPTIMIZERS",
    "DEFAULT_L1",
    "DEFAULT_SPARSITY_THRESHOLD",
]

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


# ----------------------------------------------------------------------------------------------------
# Configuration and result
# ----------------------------------------------------------------------------------------------------


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
    reset_head: bool = False
    # loss
    l1: float = DEFAULT_L1
    l2: float = 0.0
    class_weights: str = "none"
    # optimization
    epochs: int | None = None  # None: DEFAULT_EPOCHS for a new run, the stored plan when resuming
    batch_size: int = 16
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
        return _finite({f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"})


class FinetuneInterrupted(SoftcamifyError):
    """Ctrl-C (SIGINT): the state was saved in ``last.pt``; ``--resume`` continues exactly there."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, run_dir: str | os.PathLike, epoch: int, step: int, steps: int, saved: bool = True):
        self.run_dir = Path(run_dir)
        self.epoch, self.step, self.steps, self.saved = epoch, step, steps, saved
        where = f"epoch {epoch}, step {step}/{steps}" if step else f"the end of epoch {epoch - 1}"
        if saved:
            msg = (f"Interrupted; the state at {where} is saved in {self.run_dir / LAST_NAME}: "
                   f"rerun the same command with --resume to continue.")
        else:
            msg = "Interrupted before training started; nothing was saved."
        super().__init__(msg)


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


# ----------------------------------------------------------------------------------------------------
# Loss, schedule, statistics
# ----------------------------------------------------------------------------------------------------


def elasticnet_loss(
    logits: torch.Tensor,
    maps: torch.Tensor,
    target: torch.Tensor,
    l1: float = 0.0,
    l2: float = 0.0,
    class_weight: torch.Tensor | None = None,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, ce, l1_term, l2_term)`` with ``loss = ce + l1·l1_term + l2·l2_term``.

    ``l1_term = mean_{b,k,h,w} |A| / scale`` and ``l2_term = mean_{b,k,h,w} A² / scale²``: means over
    every sample, class map and cell (any number of spatial axes), relative to ``scale`` (the starting
    model's :func:`logit_scale`), so that λ does not depend on the grid size, the class count or the
    logit scale. With ``l1 = l2 = 0`` the loss is exactly the (optionally class-weighted)
    cross-entropy. The returned terms are detached (for logging); computed in float32.
    """
    if not (math.isfinite(scale) and scale > 0):
        raise UsageError(f"scale must be a positive number, got {scale}.")
    ce = F.cross_entropy(two_class(logits.float()), target, weight=class_weight)  # one logit: BCE, exactly
    m = maps.float()
    with torch.set_grad_enabled(bool(l1) and torch.is_grad_enabled()):
        l1_term = m.abs().mean() / scale
    with torch.set_grad_enabled(bool(l2) and torch.is_grad_enabled()):
        l2_term = m.square().mean() / (scale * scale)
    loss = ce
    if l1:
        loss = loss + l1 * l1_term
    if l2:
        loss = loss + l2 * l2_term
    return loss, ce.detach(), l1_term.detach(), l2_term.detach()


@torch.no_grad()
def logit_scale(logits: torch.Tensor) -> float:
    """The scale λ is relative to: the RMS of the logits around each sample's mean over classes.

    Softmax ignores a shift shared by all classes, so the shift is removed; a single-logit binary model
    is read as its two-class view ``(−z/2, z/2)`` (:mod:`softcamify.binary`). Returns 1.0 when the
    logits do not vary (a zero-initialized head), so that λ keeps its plain meaning.
    """
    z = two_class(logits.detach().double())
    s = float((z - z.mean(1, keepdim=True)).square().mean().sqrt())
    return s if math.isfinite(s) and s > 1e-6 else 1.0


def lambda_from_paper(lam: float, num_classes: int, cells: int, scale: float, term: str = "l1") -> float:
    """softcamify's λ for a λ of the paper (whose penalty is a per-sample sum over the K×h×w maps).

    The paper penalizes ``λ_paper · Σ_{k,h,w} |A|``, softcamify ``λ · mean_{k,h,w} |A| / s``: the two agree
    when ``λ1 = λ_paper · K · h·w · s`` (``term="l1"``) and, for the squared term, ``λ2 = λ_paper · K · h·w · s²``
    (``term="l2"``). ``cells`` is h·w (d·h·w for volumes), ``scale`` the :func:`logit_scale`.
    """
    if term not in ("l1", "l2"):
        raise UsageError(f"term must be 'l1' or 'l2', got {term!r}.")
    return float(lam) * int(num_classes) * int(cells) * float(scale) ** (1 if term == "l1" else 2)


def cosine_with_warmup(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR factor per optimizer step: linear warmup to 1, then cosine down to ``min_ratio``."""
    total = max(1, int(total_steps))
    warm = max(0, min(int(warmup_steps), total // 2))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        span = max(1, total - warm)
        t = min(1.0, (step - warm) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


@torch.no_grad()
def map_statistics(maps: torch.Tensor, threshold: float = DEFAULT_SPARSITY_THRESHOLD) -> torch.Tensor:
    """Sums for map sparsity, one float64 tensor ``[near_zero, cells, map_l1_sum, maps]``.

    ``near_zero / cells`` is the share of evidence cells with ``|A| < threshold`` (absolute, in logit
    units: :func:`softcamify.metrics.sparsity` with ``relative=False``); ``map_l1_sum / maps`` is the
    mean L1 norm ``Σ_{h,w} |A_k|`` of one class map. Sums, so they add up over batches and ranks.
    """
    a = maps.detach().float().abs()
    return torch.stack([
        (a < threshold).sum().double(),
        torch.tensor(float(a.numel()), dtype=torch.float64, device=a.device),
        a.sum(dtype=torch.float64),
        torch.tensor(float(a.shape[0] * a.shape[1]), dtype=torch.float64, device=a.device),
    ])


def balanced_class_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """``n / (K · n_c)`` per class (scikit-learn's "balanced")."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    n = counts.sum()
    return [float(n / (num_classes * c)) if c > 0 else 0.0 for c in counts]


# ----------------------------------------------------------------------------------------------------
# Seeding and data loading
# ----------------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps): distinct inputs give unrelated seeds."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h & ((1 << 63) - 1)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed()
    random.seed(s)
    np.random.seed(s & 0xFFFFFFFF)


class _SeededDataset(torch.utils.data.Dataset):
    """Training samples keyed by ``(epoch, index)``; every sample's augmentation is seeded from
    ``(seed, epoch, index)``, so it does not depend on the worker count or on resuming."""

    def __init__(self, base: torch.utils.data.Dataset, seed: int):
        self.base = base
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        s = _mix(self.seed, epoch, index)
        torch.default_generator.manual_seed(s)
        random.seed(s)
        np.random.seed(s & 0xFFFFFFFF)
        x, y, _ = self.base[index]
        return x, y


class _EpochSampler(torch.utils.data.Sampler):
    """A DistributedSampler (shuffled with ``seed + epoch``, padded to equal shares) yielding
    ``(epoch, index)`` keys, that can skip the first samples of an epoch (mid-epoch resume)."""

    def __init__(self, n: int, rank: int, world: int, seed: int):
        from torch.utils.data.distributed import DistributedSampler

        self.inner = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.epoch, self.skip = int(epoch), int(skip)

    def __iter__(self):
        for i, index in enumerate(self.inner):
            if i >= self.skip:
                yield (self.epoch, index)

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)


class _Forward(nn.Module):
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
        return maps.mean(dim=(2, 3)), maps


def default_workers() -> int:
    return max(0, min(4, (os.cpu_count() or 1) - 1))


# ----------------------------------------------------------------------------------------------------
# Run folder: checks, lock, state files
# ----------------------------------------------------------------------------------------------------


class RunLock:
    """An exclusive ``flock`` on ``RUN_DIR/.lock`` (released automatically if the process dies)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): no protection against concurrent runs
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise OutputError(f"Cannot create the lock file {self.path}: {e.strerror or e}.") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                try:
                    owner = os.read(fd, 64).decode("ascii", "replace").strip() or "?"
                finally:
                    os.close(fd)
                raise OutputError(
                    f"Run folder {self.path.parent} is in use by another finetune run (pid {owner}); "
                    "wait for it to finish or choose another -o."
                ) from None
            try:  # the file we locked may have been removed by its previous owner: lock the current one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError as e:  # a full disk: say so (exit 6), and leave no lock file behind
            self.release()
            why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            raise OutputError(f"Cannot write the lock file {self.path}: {why}.") from e
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None


def check_run_dir(run_dir: str | os.PathLike, resume: bool = False, force: bool = False) -> Path:
    """Check RUN_DIR before any work: a new run needs an empty or missing folder (or ``force``);
    ``resume`` needs ``last.pt`` in it."""
    p = Path(run_dir)
    if resume and force:
        raise UsageError("--resume and --force contradict each other; pass one of them.")
    if p.exists() and not p.is_dir():
        raise OutputError(f"Run folder {p} is a file; give a folder for -o.")
    if resume:
        if not p.exists():
            raise InputError(f"Run folder {p} does not exist, so there is nothing to resume; drop --resume.")
        if not (p / LAST_NAME).is_file():
            raise InputError(f"Run folder {p} has no {LAST_NAME} to resume from; start a new run without --resume.")
    elif p.exists():
        entries = [e.name for e in p.iterdir() if e.name != LOCK_NAME]
        if entries and not force:
            if any(name in RUN_FILES for name in entries):
                raise OutputError(
                    f"Run folder {p} already holds a run; pass --resume to continue it or --force to start over."
                )
            raise OutputError(f"Run folder {p} is not empty; pass --force to write the run into it anyway.")
    probe = p if p.exists() else p.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"Folder {probe} is not writable; choose another -o.")
    return p


def _rng_state() -> dict[str, Any]:
    """RNG states as tensors and primitive containers (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
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


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
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


def _finite(obj: Any) -> Any:
    """JSON-safe: numpy and torch scalars to Python, NaN/Inf to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    line = json.dumps(_finite(record), sort_keys=False) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        raise OutputError(f"Cannot write {path}: {e.strerror or e}.") from e


# ----------------------------------------------------------------------------------------------------
# Ctrl-C
# ----------------------------------------------------------------------------------------------------


class _StopFlag:
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


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------


def _check_config(c: FinetuneConfig) -> None:
    def positive(name: str, value: Any, allow_zero: bool = False) -> None:
        if value is None:
            return
        bad = value < 0 if allow_zero else value <= 0
        if bad or (isinstance(value, float) and not math.isfinite(value)):
            raise UsageError(f"--{name.replace('_', '-')} {value} must be {'0 or more' if allow_zero else 'positive'}.")

    if c.optimizer not in OPTIMIZERS:
        raise UsageError(f"--optimizer {c.optimizer!r} is not one of {', '.join(OPTIMIZERS)}.")
    if c.monitor not in MONITORS:
        raise UsageError(f"--monitor {c.monitor!r} is not one of {', '.join(MONITORS)}.")
    if c.class_weights not in CLASS_WEIGHTS:
        raise UsageError(f"--class-weights {c.class_weights!r} is not one of {', '.join(CLASS_WEIGHTS)}.")
    if c.amp_dtype not in AMP_DTYPES:
        raise UsageError(f"--amp-dtype {c.amp_dtype!r} is not one of {', '.join(AMP_DTYPES)}.")
    from .data import AUGMENTATIONS

    if c.augment not in AUGMENTATIONS:
        raise UsageError(f"--augment {c.augment!r} is not one of {', '.join(AUGMENTATIONS)}.")
    if c.epochs is not None and int(c.epochs) < 1:
        raise UsageError(f"--epochs {c.epochs} must be at least 1.")
    if int(c.batch_size) < 1:
        raise UsageError(f"--batch-size {c.batch_size} must be at least 1.")
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
        raise UsageError(f"--patience {c.patience} must be at least 1.")
    if c.workers is not None and int(c.workers) < 0:
        raise UsageError(f"--workers {c.workers} must be 0 or more.")
    if c.val_split is not None and not 0.0 <= float(c.val_split) < 1.0:
        raise UsageError(f"--val-split {c.val_split} must be at least 0 and below 1.")
    if c.num_classes is not None and int(c.num_classes) < 2:
        raise UsageError(f"--num-classes {c.num_classes} must be at least 2.")
    if c.resume and c.force:
        raise UsageError("--resume and --force contradict each other; pass one of them.")


def _amp_plan(device: torch.device, c: FinetuneConfig) -> tuple[torch.dtype | None, str | None]:
    """The autocast dtype for ``--amp`` (None: float32) and a note for the user, if any.

    CUDA only: bf16 (no loss scaling) where the GPU has it, else fp16 with a GradScaler; elsewhere a no-op.
    """
    if not c.amp:
        return None, None
    if device.type != "cuda":
        return None, f"--amp only applies on CUDA; training in float32 on {device.type}."
    if c.amp_dtype == "bf16" and not torch.cuda.is_bf16_supported():
        return torch.float16, "This GPU has no bfloat16: --amp uses float16 with gradient scaling."
    return (torch.bfloat16 if c.amp_dtype == "bf16" else torch.float16), None


def _generic_names(names: Sequence[str]) -> bool:
    return all(n == f"class_{i}" for i, n in enumerate(names))


def _on_main(ctx: distributed.DistContext, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only; an error there is raised in every rank (the others stay quiet)."""
    from . import errors

    outcome: tuple[str, Any] = ("ok", None)
    if ctx.is_main:
        try:
            outcome = ("ok", fn())
        except SoftcamifyError as e:
            if not ctx.enabled:
                raise
            outcome = ("error", (type(e).__name__, str(e)))
    outcome = distributed.broadcast_object(ctx, outcome)
    if outcome[0] == "error":
        cls = getattr(errors, outcome[1][0], SoftcamifyError)
        raise cls(outcome[1][1])
    return outcome[1]


class _Run:
    def __init__(self, model, data_dir, run_dir, cfg: FinetuneConfig, reporter: Reporter,
                 ctx: distributed.DistContext, device: torch.device):
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
        self.stop = _StopFlag()

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

        _on_main(self.ctx, check)
        if self.cfg.resume:
            self.state = load_state(self.last_path)
            self.merge_resumed_config(self.state)
        if self.cfg.epochs is None:  # not given, and not planned by a resumed run
            self.cfg.epochs = DEFAULT_EPOCHS

    def merge_resumed_config(self, state: dict[str, Any]) -> None:
        raw = state.get("config") or {}
        stored = FinetuneConfig.from_dict(raw)
        current = self.cfg
        defaults = FinetuneConfig(optimizer=current.optimizer).resolved()
        changed = [
            f.name for f in fields(FinetuneConfig)
            if f.name not in RESUME_OVERRIDABLE and getattr(current, f.name) != getattr(stored, f.name)
            and getattr(current, f.name) != getattr(defaults, f.name)
        ]
        for name in RESUME_OVERRIDABLE:
            if name in RESUME_KEEP_UNLESS_GIVEN and getattr(current, name) is None:
                continue  # not given again: the run's own plan
            setattr(stored, name, getattr(current, name))
        if changed:
            self.note("Resuming with the run's stored settings; ignored the new "
                      + ", ".join(f"--{n.replace('_', '-')}" for n in changed) + ".")
        if raw.get("epochs") is not None and int(raw["epochs"]) != int(stored.epochs):
            how = "stretched" if int(stored.epochs) > int(raw["epochs"]) else "shortened"
            self.note(f"Resuming with --epochs {stored.epochs} (the run was planned for {raw['epochs']}): "
                      f"the learning-rate schedule is {how} from here on.")
        self.cfg = stored.resolved()
        spec = state.get("model_spec")
        if isinstance(self.model_spec, (str, os.PathLike)) and spec and str(self.model_spec) != spec:
            self.note(f"The run was started from MODEL {spec}; the weights come from {LAST_NAME}, so MODEL must "
                      "be the same architecture.")

    def load_data(self, class_names: Sequence[str] | None = None):
        from .data import discover

        # Empty files and broken links come back in ``skipped``; verify() skips or refuses them.
        return discover(self.data_dir, self.cfg.labels, self.cfg.val_split, self.cfg.seed, False,
                        class_names=class_names)

    def load_model(self):
        from .conversion import as_softcam
        from .model import SoftCAM

        c = self.cfg
        spec = self.model_spec
        if isinstance(spec, SoftCAM):
            spec = copy.deepcopy(spec)
        sc, loaded = as_softcam(
            spec, weights=c.weights, num_classes=c.num_classes, input_size=c.input_size, ema=c.ema,
            trust_pickle=c.trust_pickle, strict=False,
        )
        for n in loaded.notes:
            self.note(n)
        if not sc.meta.exact and not sc.meta.conversion.get("head_reset"):
            conv = sc.meta.conversion or {}
            if conv.get("max_abs_diff") is not None:
                self.note(f"{sc.meta.architecture} converts only approximately ({sc.meta.strategy}, max |Δlogit| "
                          f"{conv['max_abs_diff']:.3g}); fine-tuning adapts the evidence maps.")
        return sc

    def match_classes(self, sc, splits):
        """Line up the dataset's classes with the model's evidence maps (or re-initialize the head)."""
        c = self.cfg
        found = list(splits.class_names)
        stored = list(sc.meta.class_names)
        generic = _generic_names(stored)
        if is_binary(sc.meta.num_classes) and len(stored) == 1 and stored[0] in found and len(found) == 2:
            # a single-logit model named by its positive class: the data's other class is the negative one
            stored = [next(n for n in found if n != stored[0]), stored[0]]
            sc.meta.class_names = stored
        names = decision_names(stored, sc.meta.num_classes)  # a single-logit model decides between two classes
        k = len(names)
        if c.num_classes is not None and int(c.num_classes) != len(found):
            raise UsageError(
                f"--num-classes {c.num_classes} does not match the {len(found)} classes in the data ({', '.join(found)})."
            )
        if c.reset_head:
            sc.reset_head(len(found), found)
            self.note(f"The evidence conv was re-initialized for {len(found)} classes ({', '.join(found)}).")
            return sc, splits
        if c.labels is not None and all(n.isdigit() for n in found) and k >= len(found) and not generic:
            splits = self.load_data(class_names=names)  # integer CSV labels index the model's classes
            return sc, splits
        if k != len(found):
            raise InputError(
                f"The model has {k} classes{' (one logit: binary)' if is_binary(sc.meta.num_classes) else ''} but the "
                f"data has {len(found)} ({', '.join(found)}); pass --reset-head "
                "to re-initialize the evidence conv for them."
            )
        if generic:
            sc.meta.class_names = found
            return sc, splits
        if set(names) == set(found):
            if names != found:
                splits = self.load_data(class_names=names)  # keep the model's class order
            return sc, splits
        raise InputError(
            f"The model's classes ({', '.join(names)}) differ from the data's ({', '.join(found)}); pass "
            "--reset-head to re-initialize the evidence conv for the data's classes."
        )

    def verify(self, splits, channels: int):
        """Decode every train/val image once (spread over ranks and threads); skip or refuse bad ones."""
        from .data import Sample, verify_samples

        everything: list[tuple[str, int, Sample]] = [
            (split, i, s) for split in ("train", "val") for i, s in enumerate(getattr(splits, split))
        ]
        mine = everything[self.ctx.rank :: self.ctx.world]
        threads = max(1, min(8, os.cpu_count() or 1))
        chunks = [mine[i :: threads] for i in range(threads)] if len(mine) > 64 else [mine]

        def work(chunk):
            _, bad = verify_samples([s for _, _, s in chunk], channels=channels, strict=False)
            bad_paths = {id(s): reason for s, reason in bad}
            return [(split, i, str(s.path), bad_paths[id(s)]) for split, i, s in chunk if id(s) in bad_paths]

        if len(chunks) > 1:
            with ThreadPoolExecutor(threads) as pool:
                bad = [b for part in pool.map(work, chunks) for b in part]
        else:
            bad = work(chunks[0])
        bad = sorted(b for part in distributed.all_gather_objects(self.ctx, bad) for b in part)
        skipped = list(splits.skipped)
        if self.cfg.strict_data and skipped:
            raise InputError(f"Image {skipped[0][0]} is unusable ({skipped[0][1]}); --strict-data refuses it.")
        if self.cfg.strict_data and bad:
            raise InputError(f"{bad[0][3].rstrip('.')} (--strict-data refuses unreadable images).")
        drop = {(split, i) for split, i, _, _ in bad}
        splits.train = [s for i, s in enumerate(splits.train) if ("train", i) not in drop]
        splits.val = [s for i, s in enumerate(splits.val) if ("val", i) not in drop]
        n_bad = len(bad) + len(skipped)
        if n_bad:
            first = bad[0][3] if bad else f"{skipped[0][0]}: {skipped[0][1]}"
            self.note(f"Skipped {n_bad} unreadable image(s) (first: {first}); --strict-data makes this an error.")
        return splits, n_bad

    def check_splits(self, splits) -> None:
        from .data import class_counts

        k = len(splits.class_names)
        train_counts = class_counts(splits.train, k)
        empty = [n for n, cnt in zip(splits.class_names, train_counts, strict=True) if cnt == 0]
        if empty:
            raise InputError(f"Class {empty[0]!r} has no readable training images; add some or remove the class.")
        if not splits.val:
            raise InputError(
                "There are no validation images (val folder or --val-split); best.safetensors is chosen on them."
            )
        val_classes = sorted({s.label for s in splits.val})
        missing = [n for i, n in enumerate(splits.class_names) if i not in val_classes]
        if missing and len(val_classes) >= 2:
            self.note(f"Class {missing[0]!r}{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''} has no "
                      "validation images (too few images to split off one): its validation sensitivity is undefined; "
                      "add images or a val folder.")
        if len(val_classes) < 2:
            raise InputError(
                f"The validation split has only one class ({splits.class_names[val_classes[0]]}); add validation "
                "images of the other classes or raise --val-split."
            )

    # -- training -------------------------------------------------------------------------------------
    def run(self) -> FinetuneResult:
        t_start = time.perf_counter()
        c = self.cfg
        ctx = self.ctx
        self.prepare_run_dir()
        c = self.cfg  # resumed runs take the stored config
        _seed_all(c.seed)

        from .data import ImageDataset, build_transform

        splits = self.load_data()
        sc = self.load_model()
        sc, splits = self.match_classes(sc, splits)
        channels = int(sc.meta.data_config["input_size"][0])
        splits, n_skipped = self.verify(splits, channels)
        self.check_splits(splits)
        class_names = list(sc.meta.class_names)
        k = len(class_names)

        # hardware settings
        device = self.device
        cuda = device.type == "cuda"
        amp_dtype, amp_note = _amp_plan(device, c)
        if amp_note:
            self.note(amp_note)
        channels_last = cuda if c.channels_last is None else bool(c.channels_last)
        workers = default_workers() if c.workers is None else int(c.workers)

        # model, optimizer, schedule
        sc = sc.to(device)
        if channels_last:
            sc = sc.to(memory_format=torch.channels_last)
        dc = sc.meta.data_config
        # λ is relative to the starting model's logit scale (also when resuming: sc is still the start here)
        scale = self.penalty_scale(sc, ImageDataset(splits.val or splits.train, build_transform(dc, train=False),
                                                    channels), channels_last)
        if c.freeze_backbone:
            sc.features.requires_grad_(False)
        trainable = [p for p in sc.parameters() if p.requires_grad]
        decay = [p for p in trainable if p.ndim > 1]
        no_decay = [p for p in trainable if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        if c.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.momentum > 0)
        else:
            opt = torch.optim.AdamW(groups, lr=c.lr)
        net: nn.Module = _Forward(sc, c.freeze_backbone)
        if ctx.enabled:
            net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
        class_weight = None
        weights_list = None
        if c.class_weights == "balanced":
            weights_list = balanced_class_weights([s.label for s in splits.train], k)
            class_weight = torch.tensor(weights_list, dtype=torch.float32, device=device)

        # data
        train_ds = _SeededDataset(ImageDataset(splits.train, build_transform(dc, train=True, augment=c.augment), channels),
                                  c.seed)
        val_ds = ImageDataset(splits.val, build_transform(dc, train=False), channels)
        sampler = _EpochSampler(len(train_ds), ctx.rank, ctx.world, c.seed)
        per_rank = len(sampler.inner)
        bs = int(c.batch_size)
        drop_last = per_rank > bs and per_rank % bs == 1  # a last batch of one breaks BatchNorm
        steps = per_rank // bs if drop_last else math.ceil(per_rank / bs)
        gen = torch.Generator()
        loader_kw = {"num_workers": workers, "pin_memory": cuda, "persistent_workers": workers > 0,
                     "worker_init_fn": _worker_init if workers > 0 else None}
        train_loader = torch.utils.data.DataLoader(train_ds, batch_size=bs, sampler=sampler, drop_last=drop_last,
                                                   generator=gen, **loader_kw)
        val_index = list(range(ctx.rank, len(val_ds), ctx.world))
        val_loader = torch.utils.data.DataLoader(val_ds, batch_size=bs, sampler=val_index,
                                                 generator=torch.Generator().manual_seed(c.seed), **loader_kw)

        total_steps = steps * int(c.epochs)
        warmup = int(round(float(c.warmup_epochs) * steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(total_steps, warmup, c.min_lr / c.lr))

        # resume
        start_epoch, start_step = 0, 0
        history: list[dict[str, Any]] = []
        best_value: float | None = None
        best_epoch: int | None = None
        bad_epochs = 0
        partial = None
        already_stopped = False
        st = self.state
        if st is not None:
            saved, own = st.get("model") or {}, sc.state_dict()
            misfit = [k for k in own if k not in saved or saved[k].shape != own[k].shape]
            misfit += [k for k in saved if k not in own]
            if misfit:
                started = f" ({st['model_spec']})" if st.get("model_spec") else ""
                raise InputError(
                    f"{self.last_path} does not fit MODEL ({len(misfit)} missing or mis-shaped tensors, e.g. "
                    f"{misfit[0]}); resume with the MODEL the run started from{started}."
                )
            sc.load_state_dict(saved)
            opt.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
            if scaler.is_enabled() and st.get("scaler"):
                scaler.load_state_dict(st["scaler"])
            start_epoch, start_step = int(st["epoch"]), int(st.get("step", 0))
            history = list(st.get("history") or [])
            best_value, best_epoch = st.get("best_value"), st.get("best_epoch")
            bad_epochs = int(st.get("bad_epochs", 0))
            if start_step and st.get("steps") != steps:
                raise InputError(f"{self.last_path} was saved mid-epoch with {st.get('steps')} steps per epoch but the "
                                 f"data now gives {steps}; the dataset or batch size changed.")
            if start_step:
                partial = st.get("partial")
                rngs = st.get("rng") or []
                if len(rngs) == ctx.world:
                    _set_rng_state(rngs[ctx.rank])
            self.note(f"Resuming {self.run_dir} at epoch {start_epoch + 1}"
                      + (f", step {start_step}/{steps}" if start_step else "") + ".")
            if start_epoch >= int(c.epochs):
                self.note(f"The run already completed {start_epoch} epoch(s); raise --epochs to train further.")
            elif st.get("stopped_early") and c.patience is not None and bad_epochs >= int(c.patience):
                self.note(f"The run stopped early after epoch {start_epoch}; raise --patience to train further.")
                already_stopped = True

        # the run folder: create, lock, clear an old run under --force
        def open_run_dir() -> None:
            from .io import make_output_dir

            make_output_dir(self.run_dir)
            if self.lock is None:
                self.lock = RunLock(self.run_dir).acquire()
            if c.force and not c.resume:
                for name in RUN_FILES:
                    with contextlib.suppress(FileNotFoundError):
                        (self.run_dir / name).unlink()
            if c.resume:  # drop metrics of epochs after the saved state (written before an interruption)
                self._truncate_metrics(start_epoch)

        _on_main(ctx, open_run_dir)

        data_info = splits.to_dict()
        data_info.update(train_images=len(splits.train), val_images=len(splits.val), skipped_images=n_skipped,
                         class_weights=weights_list)
        amp_name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype) if amp_dtype else None
        info = {
            "model": sc.meta.architecture, "strategy": sc.meta.strategy, "classes": class_names,
            "device": str(device), "world_size": ctx.world, "amp": amp_name, "channels_last": channels_last,
            "workers": workers, "steps_per_epoch": steps, "data": data_info, "config": c.to_dict(),
            "logit_scale": scale,
            "run_dir": str(self.run_dir), "resumed_from": start_epoch if st is not None else None,
        }
        self.reporter.start(info)

        monitor_key, mode = MONITORS[c.monitor]
        self.stop.install()
        train_time = 0.0
        train_images = 0
        stopped_early = False
        epoch = start_epoch
        try:
            for epoch in range(start_epoch, start_epoch if already_stopped else int(c.epochs)):
                skip = start_step if epoch == start_epoch else 0
                if not skip:
                    s = _mix(c.seed, epoch, 0x5EED)
                    random.seed(s)
                    np.random.seed(s & 0xFFFFFFFF)
                    torch.manual_seed(s)
                gen.manual_seed(_mix(c.seed, epoch, 0x10AD))
                sampler.set_epoch(epoch, skip * bs)
                acc = torch.zeros(5, dtype=torch.float64, device=device)  # loss, ce, l1, l2 (×n), correct
                count = 0
                if skip and partial is not None and ctx.is_main:
                    acc += partial[:5].to(device)
                    count = int(partial[5])
                net.train()
                if c.freeze_backbone:
                    sc.features.eval()
                self.reporter.epoch_start(epoch + 1, int(c.epochs), steps, skip)
                t0 = time.perf_counter()
                last_show = t0
                images = 0
                step = skip
                interrupted = False
                for x, y in train_loader:
                    x = x.to(device, non_blocking=True)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    y = y.to(device, non_blocking=True)
                    with autocast():
                        logits, maps = net(x)
                    loss, ce, l1t, l2t = elasticnet_loss(logits, maps, y, c.l1, c.l2, class_weight, scale)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if c.grad_clip:
                        scaler.unscale_(opt)
                        nn.utils.clip_grad_norm_(trainable, c.grad_clip)
                    scaler.step(opt)
                    scaler.update()
                    sched.step()
                    n = y.shape[0]
                    with torch.no_grad():
                        correct = (two_class(logits.detach()).argmax(1) == y).sum().float()
                        acc += torch.stack([loss.detach() * n, ce * n, l1t * n, l2t * n, correct]).double()
                    count += n
                    step += 1
                    images += n * ctx.world
                    now = time.perf_counter()
                    running = None
                    if now - last_show > 0.5 or step == steps:
                        last_show = now
                        v = acc.tolist()
                        running = {"loss": v[0] / max(count, 1), "accuracy": v[4] / max(count, 1),
                                   "images_per_s": images / max(now - t0, 1e-9), "lr": sched.get_last_lr()[0]}
                    self.reporter.step(step, steps, images, running)
                    if step < steps and (not ctx.enabled or step % STOP_SYNC_EVERY == 0):
                        if distributed.all_reduce_max_flag(ctx, self.stop.requested, device):
                            interrupted = True
                            break
                epoch_time = time.perf_counter() - t0
                if interrupted:
                    glob = distributed.all_reduce_sum(ctx, torch.cat([acc, acc.new_tensor([count])]))
                    self.save_state(sc, opt, sched, scaler, c, epoch, step, steps, history, best_value, best_epoch,
                                    bad_epochs, glob)
                    raise FinetuneInterrupted(self.run_dir, epoch + 1, step, steps)
                train_time += epoch_time
                train_images += images
                v = distributed.all_reduce_sum(ctx, torch.cat([acc, acc.new_tensor([count])])).tolist()
                cnt = max(v[5], 1.0)
                train = {"loss": v[0] / cnt, "ce": v[1] / cnt, "l1": v[2] / cnt, "l2": v[3] / cnt,
                         "accuracy": v[4] / cnt, "images": int(v[5]), "time_s": epoch_time,
                         "images_per_s": images / max(epoch_time, 1e-9)}
                val = self.evaluate(sc, val_loader, autocast, channels_last, class_weight, class_names)
                value = val.get(monitor_key)
                improved = value is not None and math.isfinite(value) and (
                    best_value is None or (value > best_value if mode == "max" else value < best_value))
                if best_value is None and (value is None or not math.isfinite(value)) and best_epoch is None:
                    improved = True  # the monitored metric is undefined: keep the first epoch
                if improved:
                    best_value, best_epoch, bad_epochs = value, epoch + 1, 0
                else:
                    bad_epochs += 1
                record = {
                    "epoch": epoch + 1, "epochs": int(c.epochs), "lr": sched.get_last_lr()[0], "train": train,
                    "val": val, "monitor": c.monitor, "value": value, "best": improved, "best_epoch": best_epoch,
                    "best_value": best_value, "time_s": time.perf_counter() - t0,
                }
                history.append(_finite(record))
                if improved:
                    _on_main(ctx, lambda rec=record: self.save_best(sc, c, rec, splits))
                _on_main(ctx, lambda rec=record: _append_jsonl(self.metrics_path, rec))
                stop_now = c.patience is not None and bad_epochs >= int(c.patience) and epoch + 1 < int(c.epochs)
                self.save_state(sc, opt, sched, scaler, c, epoch + 1, 0, steps, history, best_value, best_epoch,
                                bad_epochs, None, stopped_early=stop_now)
                self.reporter.epoch_end(history[-1])
                if stop_now:
                    stopped_early = True
                    self.note(f"Stopped early after epoch {epoch + 1}: {c.monitor} did not improve for "
                              f"{c.patience} epoch(s) (best {best_value:.4g} at epoch {best_epoch}).")
                    break
                if distributed.all_reduce_max_flag(ctx, self.stop.requested, device) and epoch + 1 < int(c.epochs):
                    raise FinetuneInterrupted(self.run_dir, epoch + 2, 0, steps)
        finally:
            self.stop.uninstall()

        # the result's model is the best one (rank 0; other ranks keep the last weights)
        completed = len(history)
        best_record = next((h for h in history if h["epoch"] == best_epoch), None)
        if ctx.is_main and self.best_path.exists() and best_record is not None and best_epoch != completed:
            from safetensors.torch import load_file

            sc.load_state_dict(load_file(str(self.best_path)))
        result_model = sc.eval()
        distributed.barrier(ctx)
        tput = train_images / train_time if train_time > 0 else float("nan")
        result = FinetuneResult(
            run_dir=str(self.run_dir), best_path=str(self.best_path) if self.best_path.exists() else None,
            last_path=str(self.last_path), metrics_path=str(self.metrics_path), monitor=c.monitor,
            best_epoch=best_epoch, best_value=best_value, epochs_completed=completed, epochs_planned=int(c.epochs),
            stopped_early=stopped_early or already_stopped, resumed_from=start_epoch if st is not None else None,
            train_images_per_s=tput, elapsed_s=time.perf_counter() - t_start, best=best_record,
            last=history[-1] if history else None, data=data_info, config=c.to_dict(), world_size=ctx.world,
            device=str(device), amp=amp_name, logit_scale=self.scale, notes=list(self.notes), history=history,
            model=result_model,
        )
        if ctx.is_main:
            from .io import write_text_atomic

            write_text_atomic(self.run_dir / SUMMARY_NAME, json.dumps(result.to_dict(), indent=2) + "\n", force=True)
        self.reporter.end(result)
        return result

    @torch.no_grad()
    def penalty_scale(self, sc, dataset, channels_last: bool) -> float:
        """The starting model's :func:`logit_scale` on the first :data:`SCALE_IMAGES` validation images.

        Deterministic (eval mode, eval transform, no random numbers drawn) and the same on every rank, so a
        resumed run and every DDP process use the same scale.
        """
        was_training = sc.training
        sc.eval()
        n = min(SCALE_IMAGES, len(dataset))
        bs = max(1, int(self.cfg.batch_size))
        logits = []
        for start in range(0, n, bs):
            x = torch.stack([dataset[i][0] for i in range(start, min(n, start + bs))]).to(self.device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits.append(sc(x).float())
        sc.train(was_training)
        self.scale = logit_scale(torch.cat(logits)) if logits else 1.0
        return self.scale

    @torch.no_grad()
    def evaluate(self, sc, loader, autocast, channels_last, class_weight, class_names) -> dict[str, Any]:
        """Validation metrics over every rank's share (gathered, so every rank computes the same)."""
        from .metrics import classification_report

        c = self.cfg
        sc.eval()
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)  # w·ce, w, l1, l2, n
        stats = torch.zeros(4, dtype=torch.float64, device=self.device)
        probs, labels = [], []
        for x, y, _ in loader:
            x = x.to(self.device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(self.device, non_blocking=True)
            with autocast():
                logits, maps = sc.forward_maps(x)
            logits, maps = two_class(logits.float()), maps.float()  # one logit: its two classes
            ce = F.cross_entropy(logits, y, reduction="none")
            w = class_weight[y] if class_weight is not None else torch.ones_like(ce)
            flat = maps.flatten(1)  # the penalty's terms, as in elasticnet_loss
            sums += torch.stack([(w * ce).sum(), w.sum(), flat.abs().mean(1).sum() / self.scale,
                                 flat.square().mean(1).sum() / self.scale**2,
                                 torch.tensor(float(y.shape[0]), device=self.device)]).double()
            stats += map_statistics(maps, c.sparsity_threshold)
            probs.append(torch.softmax(logits, 1).cpu())
            labels.append(y.cpu())
        p = torch.cat(probs).numpy().astype(np.float64) if probs else np.zeros((0, len(class_names)))
        t = torch.cat(labels).numpy() if labels else np.zeros(0, dtype=np.int64)
        sums = distributed.all_reduce_sum(self.ctx, sums).tolist()
        stats = distributed.all_reduce_sum(self.ctx, stats).tolist()
        parts = distributed.all_gather_objects(self.ctx, (p, t))
        p = np.concatenate([a for a, _ in parts])
        t = np.concatenate([b for _, b in parts])
        rep = classification_report(t, p, class_names, ordinal=c.ordinal)
        n = max(sums[4], 1.0)
        ce = sums[0] / max(sums[1], 1e-12)
        out = {
            "loss": ce + c.l1 * sums[2] / n + c.l2 * sums[3] / n, "ce": ce, "l1": sums[2] / n, "l2": sums[3] / n,
            "accuracy": rep["accuracy"], "balanced_accuracy": rep["balanced_accuracy"], "auc": rep["roc_auc"],
            "sparsity": stats[0] / max(stats[1], 1.0), "map_l1": stats[2] / max(stats[3], 1.0), "n": int(rep["n"]),
            "per_class": [{"name": pc["name"], "support": pc["support"], "sensitivity": pc["sensitivity"],
                           "specificity": pc["specificity"]} for pc in rep["per_class"]],
        }
        if c.ordinal:
            out["kappa"] = rep.get("quadratic_kappa")
        return out

    def _truncate_metrics(self, epochs_done: int) -> None:
        from .io import write_text_atomic

        path = self.metrics_path
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

    def save_state(self, sc, opt, sched, scaler, c, epoch, step, steps, history, best_value, best_epoch, bad_epochs,
                   partial, stopped_early: bool = False) -> None:
        """Write last.pt (every rank's RNG state is gathered; rank 0 writes atomically)."""
        rngs = distributed.all_gather_objects(self.ctx, _rng_state())
        if not self.ctx.is_main:
            distributed.barrier(self.ctx)
            return
        from .io import atomic_output

        state = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "softcamify": __version__,
            "epoch": int(epoch),  # completed epochs
            "step": int(step),  # optimizer steps done in epoch ``epoch`` (0: at an epoch boundary)
            "steps": int(steps),
            "model": sc.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "rng": rngs,
            "partial": partial.cpu() if partial is not None else None,
            "config": c.to_dict(),
            "model_spec": str(self.model_spec) if isinstance(self.model_spec, (str, os.PathLike)) else None,
            "data_dir": str(self.data_dir) if self.data_dir is not None else None,
            "class_names": list(sc.meta.class_names),
            "meta": json.dumps(sc.meta.to_dict(), sort_keys=True),
            "history": history,
            "best_value": best_value,
            "best_epoch": best_epoch,
            "bad_epochs": int(bad_epochs),
            "stopped_early": bool(stopped_early),
            "world_size": self.ctx.world,
        }
        with atomic_output(self.last_path, force=True) as tmp:
            torch.save(state, tmp)
        distributed.barrier(self.ctx)

    def save_best(self, sc, c, record, splits) -> None:
        from .checkpoints import save
        from .model import SoftCAM

        val = record.get("val") or {}
        entry = {
            "kind": "finetune",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "softcamify": __version__,
            "dataset": str(self.data_dir if self.data_dir is not None else c.labels),
            "data_source": splits.source,
            "train_images": len(splits.train),
            "val_images": len(splits.val),
            "epoch": record["epoch"],
            "epochs_planned": int(c.epochs),
            "l1": c.l1,
            "l2": c.l2,
            "loss": "ce + l1*mean|A|/s + l2*mean(A^2)/s^2",
            "logit_scale": self.scale,
            "optimizer": c.optimizer,
            "lr": c.lr,
            "weight_decay": c.weight_decay,
            "batch_size": int(c.batch_size) * self.ctx.world,
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
        meta.history = [*meta.history, _finite(entry)]
        save(SoftCAM(sc.features, sc.head, meta), self.best_path, force=True)


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
    from .device import resolve_device

    cfg = copy.deepcopy(config) if config is not None else FinetuneConfig()
    _check_config(cfg)
    cfg = cfg.resolved()
    _check_config(cfg)
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
