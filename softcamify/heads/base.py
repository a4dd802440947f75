"""What strategies share: the model's parts, the context a strategy reads, and the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from .graph import Step


@dataclass
class ModelParts:
    """A classifier split at its last feature map."""

    features: nn.Module  # input -> last feature map
    head: nn.Module  # last feature map -> logits
    graph: fx.GraphModule | None  # the head traced with fx (None when it cannot be traced)
    split: str  # "timm" (forward_features / forward_head) or "fx" (graph cut at the global pool)
    layout: str = "NCHW"  # of the features as ``features`` returns them
    tokens: dict | None = None  # token models: {"prefix": n, "patch": [ph, pw], "reads_prefix": bool}
    described: list[Step] = field(default_factory=list)  # the model's own head, for reports


@dataclass
class Context:
    """Everything a strategy needs; the head and graph are float64 copies in eval mode."""

    head: nn.Module
    graph: fx.GraphModule | None
    steps: list[Step]
    channels: int
    height: int
    width: int
    num_classes: int
    layout: str = "NCHW"
    tokens: dict | None = None
    notes: list[str] = field(default_factory=list)
    depth: int | None = None  # volumes: the features are N×C×D×H×W

    @property
    def spatial(self) -> tuple[int, ...]:
        """(H, W), or (D, H, W) for a volume model."""
        return (self.height, self.width) if self.depth is None else (self.depth, self.height, self.width)

    @property
    def spatial_dims(self) -> int:
        return len(self.spatial)


class NotApplicable(Exception):
    """A strategy does not fit this head; the message says why (shown by inspect)."""


@dataclass(frozen=True)
class Strategy:
    name: str
    exact: bool
    build: Callable[[Context], nn.Module]  # returns an evidence head (float64) or raises NotApplicable
    description: str


STRATEGIES: list[Strategy] = []


def register(strategy: Strategy) -> Strategy:
    """Add a strategy; exact ones are tried before approximate ones, in registration order."""
    STRATEGIES.append(strategy)
    STRATEGIES.sort(key=lambda s: not s.exact)
    return strategy


def get_strategy(name: str) -> Strategy:
    for s in STRATEGIES:
        if s.name == name:
            return s
    raise KeyError(name)


def check_exact(ctx: Context, evidence: nn.Module) -> float:
    """Float64 relative error of the spatial mean of evidence(F) against head(F) on varied feature maps."""
    from .probe import probe_features, relative_error, spatial_mean, to_layout

    f = probe_features(ctx.channels, *ctx.spatial)
    with torch.no_grad():
        ref = ctx.head(to_layout(f, ctx.layout)).reshape(f.shape[0], -1)
        got = spatial_mean(evidence(f))
    return relative_error(got, ref)
