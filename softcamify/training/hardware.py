"""How a fine-tuning run uses its hardware: the AMP plan, channels-last and workers, the optimizer and its
parameter groups."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from .config import FinetuneConfig

__all__ = ["Hardware", "amp_plan", "make_optimizer", "param_groups"]


def amp_plan(device: torch.device, c: FinetuneConfig) -> tuple[torch.dtype | None, str | None]:
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


@dataclass
class Hardware:
    """How the run uses its device: autocast dtype (None: float32), channels-last, loader workers."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    workers: int

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def amp_name(self) -> str | None:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype) if self.amp_dtype else None

    def autocast(self):
        """A factory of autocast contexts (a no-op one in float32)."""
        if self.amp_dtype:
            return lambda: torch.autocast(self.device.type, dtype=self.amp_dtype)
        return contextlib.nullcontext


def param_groups(sc, weight_decay: float) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """The trainable parameters, and their optimizer groups: no weight decay on biases and norms."""
    trainable = [p for p in sc.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return trainable, [g for g in groups if g["params"]]


def make_optimizer(groups: list[dict[str, Any]], c: FinetuneConfig) -> torch.optim.Optimizer:
    if c.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.momentum > 0)
    return torch.optim.AdamW(groups, lr=c.lr)
