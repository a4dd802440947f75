"""Seeded data loading: every epoch's shuffling and every sample's augmentation come from
``(seed, epoch, index)``, so they depend on neither the worker count nor where a run was interrupted.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import distributed, errors
from ..errors import InputError, SoftcamifyError, UsageError

_MASK64 = (1 << 64) - 1


def mix(*values: int) -> int:
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


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (the run's start; each epoch reseeds with :func:`seed_epoch`)."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)


def worker_init(worker_id: int) -> None:  # noqa: ARG001 - the DataLoader passes it
    """Seed a worker's Python and NumPy RNGs from its torch seed."""
    s = torch.initial_seed()
    random.seed(s)
    np.random.seed(s & 0xFFFFFFFF)


class SeededDataset(torch.utils.data.Dataset):
    """Training samples keyed by ``(epoch, index)``; every sample's augmentation is seeded from
    ``(seed, epoch, index)``, so it does not depend on the worker count or on resuming."""

    def __init__(self, base: torch.utils.data.Dataset, seed: int):
        self.base = base
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        s = mix(self.seed, epoch, index)
        torch.default_generator.manual_seed(s)
        random.seed(s)
        np.random.seed(s & 0xFFFFFFFF)
        x, y, _ = self.base[index]
        return x, y


class EpochSampler(torch.utils.data.Sampler):
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


_CARRIED = re.compile(r"<softcamify-error:([A-Za-z0-9+/=]+)>")


class _WorkerTraceback(Exception):
    """The traceback text of a DataLoader worker (the cause of a :class:`WorkerError`; ``--debug`` shows it)."""


class WorkerError(InputError):
    """A softcamify error raised while a DataLoader worker read a sample (an image that became unreadable
    after the run checked it), carried whole to the main process.

    torch re-raises a worker's exception in the main process as ``type(e)(the worker's traceback text)``,
    which would bury the one sentence in ~40 lines. So the worker raises this class instead, with the
    original error encoded in its message (:meth:`carrying`), and when torch re-creates it from the
    traceback text, it decodes the original again: :meth:`original` is the same error (type, sentence,
    parameters); the worker's traceback is kept as the cause.
    """

    def __init__(self, message: str = ""):
        m = _CARRIED.search(message)
        data = json.loads(base64.b64decode(m.group(1))) if m else {}
        super().__init__(data.get("message", message), param=data.get("params"))
        self.kind = str(data.get("type", "InputError"))
        self.exit_code = int(data.get("exit_code", InputError.exit_code))
        self.encoded = m.group(0) if m else ""
        if m and m.start() > 0:  # torch's re-raise: the worker's traceback comes first
            self.__cause__ = _WorkerTraceback(message[: m.start()].rstrip())

    @classmethod
    def carrying(cls, err: SoftcamifyError) -> WorkerError:
        """The error a worker raises for ``err`` (its text, what torch ships, is the encoded original)."""
        data = {
            "type": type(err).__name__,
            "message": err.message,
            "params": list(err.params),
            "exit_code": err.exit_code,
        }
        e = cls(f"<softcamify-error:{base64.b64encode(json.dumps(data).encode()).decode()}>")
        e.args = (e.encoded,)
        return e

    def original(self) -> SoftcamifyError:
        """The error as the worker raised it (a class of :mod:`softcamify.errors`; else an InputError)."""
        cls = getattr(errors, self.kind, None)
        if not (isinstance(cls, type) and issubclass(cls, SoftcamifyError)):
            cls = InputError
        return cls(self.message, param=self.params)


class CarryErrors(torch.utils.data.Dataset):
    """``base`` whose softcamify errors leave a DataLoader worker as a :class:`WorkerError` (in the main
    process they are raised as they are)."""

    def __init__(self, base: torch.utils.data.Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.base[key]
        except WorkerError:
            raise
        except SoftcamifyError as e:
            if torch.utils.data.get_worker_info() is None:
                raise
            raise WorkerError.carrying(e) from e


def default_workers() -> int:
    """DataLoader workers when ``workers`` is None: ``min(4, CPUs - 1)``."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def seed_epoch(seed: int, epoch: int) -> None:
    """Reseed Python, NumPy and torch at the start of ``epoch`` (not when resuming mid-epoch: the saved
    RNG states continue)."""
    s = mix(seed, epoch, 0x5EED)
    random.seed(s)
    np.random.seed(s & 0xFFFFFFFF)
    torch.manual_seed(s)


def plan_volumes(sc: Any, cfg: Any) -> Any:
    """The :class:`~softcamify.volumes.VolumeConfig` a volume model trains with (None for an image model),
    recorded in the model's ``data_config`` and in ``cfg.volume`` (so ``last.pt``, ``best.safetensors`` and a
    resumed run carry it): ``cfg.volume`` when given (its ``channels`` set to the model's), else what the model
    records, else its input size as it is. Volume options for an image model are a :class:`UsageError`."""
    from ..volumes import VolumeConfig, model_volume_config, with_volume_config

    if int(getattr(sc.meta, "spatial_dims", 2)) != 3:
        if cfg.volume is not None:
            raise UsageError(
                f"The volume options (window, zscore, target_shape, target_spacing) apply to volume models; "
                f"{sc.meta.architecture} reads 2-D images.",
                param=("window", "zscore", "target_shape", "target_spacing"),
            )
        return None
    channels = int(sc.meta.data_config["input_size"][0])
    if cfg.volume is not None:
        vc = VolumeConfig.from_dict({**cfg.volume, "channels": channels})
    else:
        vc = model_volume_config(sc.meta.data_config)
    sc.meta.data_config = with_volume_config(sc.meta.data_config, vc)
    cfg.volume = vc.to_dict()
    return vc


class DatasetMaker:
    """The datasets of a run's samples: images through the model's transforms (``augment`` when training),
    or, for a volume model, volumes through its :class:`~softcamify.volumes.VolumeConfig` (random flips when
    training, unless ``augment`` is ``none``)."""

    def __init__(self, data_config: dict[str, Any], channels: int, augment: str, volume: Any = None):
        self.data_config, self.channels, self.augment, self.volume = data_config, channels, augment, volume

    def __call__(self, samples: Any, train: bool) -> torch.utils.data.Dataset:
        from ..data import ImageDataset, VolumeDataset, build_transform

        if self.volume is not None:
            return VolumeDataset(samples, self.volume, train=train and self.augment != "none")
        tf = build_transform(self.data_config, train=True, augment=self.augment) if train else None
        return ImageDataset(samples, tf or build_transform(self.data_config, train=False), self.channels)


@dataclass
class Loaders:
    """The train and validation loaders of one rank, and what the epoch loop needs to drive them."""

    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    sampler: EpochSampler
    generator: torch.Generator
    batch_size: int
    steps: int  # optimizer steps per epoch

    def start_epoch(self, seed: int, epoch: int, skip_steps: int = 0) -> None:
        """Point the loaders at ``epoch``, skipping the first ``skip_steps`` batches (mid-epoch resume)."""
        self.generator.manual_seed(mix(seed, epoch, 0x10AD))
        self.sampler.set_epoch(epoch, skip_steps * self.batch_size)


def build_loaders(
    train_ds: torch.utils.data.Dataset,
    val_ds: torch.utils.data.Dataset,
    ctx: distributed.DistContext,
    batch_size: int,
    seed: int,
    workers: int,
    pin_memory: bool,
) -> Loaders:
    """Loaders over ``train_ds`` (a :class:`SeededDataset`, this rank's share, shuffled per epoch) and
    ``val_ds`` (this rank's share, in order)."""
    sampler = EpochSampler(len(train_ds), ctx.rank, ctx.world, seed)
    per_rank = len(sampler.inner)
    bs = int(batch_size)
    drop_last = per_rank > bs and per_rank % bs == 1  # a last batch of one breaks BatchNorm
    steps = per_rank // bs if drop_last else math.ceil(per_rank / bs)
    gen = torch.Generator()
    loader_kw: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": pin_memory,
        "persistent_workers": workers > 0,
        "worker_init_fn": worker_init if workers > 0 else None,
    }
    if workers > 0:  # an image that fails in a worker: one sentence, not the worker's traceback
        train_ds, val_ds = CarryErrors(train_ds), CarryErrors(val_ds)
    train = torch.utils.data.DataLoader(
        train_ds, batch_size=bs, sampler=sampler, drop_last=drop_last, generator=gen, **loader_kw
    )
    val_index = list(range(ctx.rank, len(val_ds), ctx.world))
    val = torch.utils.data.DataLoader(
        val_ds, batch_size=bs, sampler=val_index, generator=torch.Generator().manual_seed(seed), **loader_kw
    )
    return Loaders(train, val, sampler, gen, bs, steps)
