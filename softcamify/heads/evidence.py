"""The class-evidence head: a 1×1 convolution on the last feature map, optionally after a per-sample
normalization whose statistics come from the spatially pooled features (the exact decomposition of
"average pool → LayerNorm/RmsNorm → Linear" heads; see docs/method.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

NORM_KINDS = ("layernorm", "rmsnorm", "simplenorm")


def pooled_stats(p: torch.Tensor, kind: str, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample centre and scale of pooled features ``p`` (B×C), as the named norm computes them."""
    if kind == "layernorm":
        var, mu = torch.var_mean(p, dim=1, unbiased=False)
        return mu, torch.sqrt(var + eps)
    if kind == "rmsnorm":
        return torch.zeros_like(p[:, 0]), torch.sqrt(p.pow(2).mean(dim=1) + eps)
    if kind == "simplenorm":  # timm SimpleNorm: no centring, unbiased variance
        return torch.zeros_like(p[:, 0]), torch.sqrt(torch.var(p, dim=1, unbiased=True) + eps)
    raise ValueError(f"unknown norm kind {kind!r}")


SPATIAL_DIMS = (2, 3)  # images (N×C×H×W) and volumes (N×C×D×H×W)


def check_spatial_dims(spatial_dims: int) -> int:
    if int(spatial_dims) not in SPATIAL_DIMS:
        raise ValueError(f"spatial_dims {spatial_dims!r} is not 2 (images) or 3 (volumes)")
    return int(spatial_dims)


class EvidenceHead(nn.Module):
    """Maps features B×C×H×W (B×C×D×H×W with ``spatial_dims=3``) to class evidence B×K×H×W (B×K×D×H×W);
    their mean over the spatial axes is the logits.

    ``norm`` (optional) normalizes every position with the per-sample statistics of the pooled
    feature vector, which keeps the maps linear in the local features while reproducing a
    pooled-then-normalized head exactly.
    """

    def __init__(
        self, in_channels: int, num_classes: int, norm: str | None = None, eps: float = 1e-6, spatial_dims: int = 2
    ):
        super().__init__()
        if norm is not None and norm not in NORM_KINDS:
            raise ValueError(f"unknown norm kind {norm!r}")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.norm = norm
        self.eps = float(eps)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        conv = nn.Conv3d if self.spatial_dims == 3 else nn.Conv2d
        self.conv = conv(self.in_channels, self.num_classes, kernel_size=1, bias=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            axes = tuple(range(2, 2 + self.spatial_dims))
            p = features.mean(dim=axes)
            mu, sigma = pooled_stats(p, self.norm, self.eps)
            expand = (slice(None),) + (None,) * (1 + self.spatial_dims)  # [:, None, None, None] for images
            features = (features - mu[expand]) / sigma[expand]
        return self.conv(features)

    @torch.no_grad()
    def set_affine(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Initialize from a classifier's K×C weight and K bias."""
        shape = (self.num_classes, self.in_channels) + (1,) * self.spatial_dims
        self.conv.weight.copy_(weight.reshape(shape).to(self.conv.weight))
        self.conv.bias.copy_(bias.reshape(self.num_classes).to(self.conv.bias))

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "kind": "evidence",
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "norm": self.norm,
            "eps": self.eps,
        }
        if self.spatial_dims != 2:  # image files keep the spec they always had; absent means 2
            spec["spatial_dims"] = self.spatial_dims
        return spec

    def extra_repr(self) -> str:
        parts = [f"norm={self.norm}"] if self.norm else []
        if self.spatial_dims != 2:
            parts.append(f"spatial_dims={self.spatial_dims}")
        return ", ".join(parts)


class PerPositionHead(nn.Module):
    """An approximate evidence head: the model's own head applied to every position on its own.

    Each position's feature vector goes through the original head as a 1×1 map (or a one-patch token
    sequence), so pooling moves to the very end: ``logits = mean_hw(head(F(x, y)))``. Exact when the
    head is affine in the pooled features; otherwise an approximation whose fidelity is measured.
    """

    def __init__(self, head: nn.Module, in_channels: int, num_classes: int, layout: str = "NCHW"):
        super().__init__()
        self.head = head
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.layout = layout

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim == 5:  # volumes: every voxel through the head as a 1×1×1 map
            b, c, d, h, w = features.shape
            v = features.permute(0, 2, 3, 4, 1).reshape(b * d * h * w, c, 1, 1, 1)
            return self.head(v).reshape(b, d, h, w, -1).permute(0, 4, 1, 2, 3)
        b, c, h, w = features.shape
        x = features.permute(0, 2, 3, 1).reshape(b * h * w, c)
        x = x.reshape(b * h * w, 1, 1, c) if self.layout == "NHWC" else x.reshape(b * h * w, c, 1, 1)
        out = self.head(x).reshape(b, h, w, -1)
        return out.permute(0, 3, 1, 2)

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "per_position",
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "layout": self.layout,
        }


def build_head(spec: dict[str, Any], source_head: nn.Module | None = None) -> nn.Module:
    """Rebuild a head from the spec stored in a softcamify checkpoint.

    ``per_position`` heads reuse the original model's head (``source_head``, rebuilt from the source
    architecture exactly as at conversion time); their weights then come from the checkpoint.
    """
    kind = spec.get("kind", "evidence")
    if kind == "evidence":
        return EvidenceHead(
            spec["in_channels"],
            spec["num_classes"],
            spec.get("norm"),
            spec.get("eps", 1e-6),
            spatial_dims=int(spec.get("spatial_dims", 2)),
        )
    if kind == "per_position":
        if source_head is None:
            raise ValueError("a per_position head needs the source model's head")
        return PerPositionHead(source_head, spec["in_channels"], spec["num_classes"], spec.get("layout", "NCHW"))
    raise ValueError(f"unknown evidence head kind {kind!r}")
