"""Several processes (``torchrun``): process group setup, reductions and rank-0-only side effects.

``softcamify finetune`` runs under ``torchrun --nproc_per_node N -m softcamify finetune …`` (or its
``--nproc N`` shortcut). Each process calls :func:`setup`; every helper here is a no-op (or the
identity) in a single process, so the training loop has one code path. The backend is NCCL on CUDA
and gloo on CPU, so the multi-process path also runs (and is tested) on a laptop.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch

from .errors import UsageError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun with more than one process in the group."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def env_rank() -> int:
    """This process's global rank from the environment (0 outside torchrun)."""
    try:
        return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0
    except ValueError:
        return 0


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # we initialized the process group (and destroy it in cleanup)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "world": self.world, "local_rank": self.local_rank, "backend": self.backend}


def setup(device: torch.device, timeout_s: float = 1800.0) -> tuple[DistContext, torch.device]:
    """Join the torchrun process group when there is one; return the context and this rank's device.

    On CUDA each process takes ``cuda:LOCAL_RANK``; an explicit ``cuda:N`` makes no sense with several
    processes and is refused. Outside torchrun this returns a single-process context and ``device``.
    """
    import torch.distributed as dist

    if not launched_by_torchrun():
        return DistContext(), device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is not None:
            raise UsageError(
                f"device {device} names one GPU, but torchrun started {world} processes; set device to cuda.",
                param="device",
            )
        if local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"torchrun started local rank {local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                "lower --nproc_per_node."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UsageError(f"Several processes need CUDA (NCCL) or the CPU (gloo), not {device.type}.")
    owns = False
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(seconds=timeout_s)}
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
        owns = True
    return DistContext(rank, world, local_rank, backend, owns), device


def cleanup(ctx: DistContext) -> None:
    import torch.distributed as dist

    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    import torch.distributed as dist

    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes (in place, returned); identity in a single process."""
    import torch.distributed as dist

    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max_flag(ctx: DistContext, flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is True in any process (used to stop every rank together on Ctrl-C)."""
    import torch.distributed as dist

    if not ctx.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device, dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    import torch.distributed as dist

    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(ctx: DistContext, obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` in every process."""
    import torch.distributed as dist

    if not ctx.enabled:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The command that runs ``python -m softcamify <argv>`` in ``nproc`` processes on this machine: torchrun
    (``torch.distributed.run``) through :mod:`softcamify._torchrun`, which keeps its failure report for
    ``--debug``."""
    import sys

    return [
        sys.executable,
        "-m",
        "softcamify._torchrun",
        "--standalone",
        f"--nproc_per_node={int(nproc)}",
        "-m",
        "softcamify",
        *argv,
    ]
