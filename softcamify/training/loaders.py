"""Seeded data loading: every epoch's shuffling and every sample's augmentation come from
``(seed, epoch, index)``, so they depend on neither the worker count nor where a run was interrupted.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import distributed

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
    loader_kw: dict[str, Any] = {"num_workers": workers, "pin_memory": pin_memory,
                                 "persistent_workers": workers > 0,
                                 "worker_init_fn": worker_init if workers > 0 else None}
    train = torch.utils.data.DataLoader(train_ds, batch_size=bs, sampler=sampler, drop_last=drop_last,
                                        generator=gen, **loader_kw)
    val_index = list(range(ctx.rank, len(val_ds), ctx.world))
    val = torch.utils.data.DataLoader(val_ds, batch_size=bs, sampler=val_index,
                                      generator=torch.Generator().manual_seed(seed), **loader_kw)
    return Loaders(train, val, sampler, gen, bs, steps)
