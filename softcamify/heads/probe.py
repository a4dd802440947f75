"""Numerical probes of a head: extract its affine map, and measure how exactly a decomposition holds.

Feature maps are N×C×H×W (images) or N×C×D×H×W (volumes): ``spatial`` is (H, W) or (D, H, W).

All probes run in float64 on a copy of the head, so "exact" means exact up to float64 round-off
(~1e-15 relative); an approximation shows up at 1e-4 and above.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

# A decomposition counts as exact when its float64 relative error is below this. Exact heads land
# near 1e-15 (1e-7 for norms that force float32); every approximation measured is above 3e-4.
EXACT_RTOL = 1e-5

_PROBE_ELEMENTS = 1 << 24  # doubles per probe batch (~128 MB)


def to_layout(f: torch.Tensor, layout: str) -> torch.Tensor:
    """NCHW features -> the head's own layout (NHWC exists for images only)."""
    return f.permute(0, 2, 3, 1) if layout == "NHWC" else f


def spatial_axes(f: torch.Tensor) -> tuple[int, ...]:
    """The spatial axes of N×C×… features: (2, 3) for images, (2, 3, 4) for volumes."""
    return tuple(range(2, f.ndim))


def spatial_mean(f_nchw: torch.Tensor) -> torch.Tensor:
    return f_nchw.mean(dim=spatial_axes(f_nchw))


@torch.no_grad()
def affine_of_pooled(head: nn.Module, channels: int, spatial: Sequence[int], layout: str = "NCHW"):
    """(W, b) such that ``head(F) == W @ mean(F) + b`` (mean over the spatial axes) if the head is affine
    in the pooled features.

    Probes with spatially constant maps of the real feature size (so fixed-size pools work too).
    """
    spatial = tuple(int(s) for s in spatial)
    dtype = next((p.dtype for p in head.parameters()), torch.float64)
    zero = torch.zeros(1, channels, *spatial, dtype=dtype)
    b = head(to_layout(zero, layout)).reshape(-1)
    chunk = max(1, _PROBE_ELEMENTS // max(1, channels * math.prod(spatial)))
    cols = []
    for start in range(0, channels, chunk):
        idx = torch.arange(start, min(channels, start + chunk))
        x = torch.zeros(len(idx), channels, *spatial, dtype=dtype)
        x[torch.arange(len(idx)), idx] = 1.0
        cols.append(head(to_layout(x, layout)).reshape(len(idx), -1) - b)
    weight = torch.cat(cols, 0).T.contiguous()  # K×C
    return weight, b


@torch.no_grad()
def affine_of_vector(fn: nn.Module, tail: tuple[int, ...]):
    """(W, b) of an affine map from a vector with singleton dims (C, C×1×1, 1×1×C) to logits."""
    channels = 1
    for s in tail:
        channels *= s
    dtype = next((p.dtype for p in fn.parameters()), torch.float64)
    b = fn(torch.zeros(1, *tail, dtype=dtype)).reshape(-1)
    eye = torch.eye(channels, dtype=dtype).reshape(channels, *tail)
    weight = (fn(eye).reshape(channels, -1) - b).T.contiguous()
    return weight, b


@torch.no_grad()
def quick_affine_check(head: nn.Module, channels: int, spatial: Sequence[int], layout: str = "NCHW") -> float:
    """A cheap necessary test before probing every channel: an affine head of the pooled features is
    additive (h(a + b) − h(0) = h(a) − h(0) + h(b) − h(0)) and ignores where features are (h(F) =
    h(shuffled F)). Returns the relative violation (0 for such heads)."""
    f = probe_features(channels, *spatial)
    a, b = f[0:1], f[3:4]
    zero = torch.zeros_like(a)
    perm = torch.randperm(math.prod(spatial), generator=torch.Generator().manual_seed(1))
    shuffled = a.flatten(2)[:, :, perm].reshape(a.shape)
    h0, ha, hb, hab, hs = (head(to_layout(t, layout)) for t in (zero, a, b, a + b, shuffled))
    additive = relative_error(hab - h0, (ha - h0) + (hb - h0))
    invariant = relative_error(hs, ha)
    return max(additive, invariant)


def probe_features(channels: int, *spatial: int, seed: int = 0) -> torch.Tensor:
    """Varied float64 feature maps (N×C×H×W, or N×C×D×H×W for three spatial sizes): signed Gaussian and
    positive (post-ReLU-like) samples."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(2, channels, *spatial, generator=g, dtype=torch.float64)
    b = torch.rand(2, channels, *spatial, generator=g, dtype=torch.float64) * 3.0
    ones = (1,) * len(spatial)
    c = torch.randn(1, channels, *ones, generator=g, dtype=torch.float64) + 0.3 * torch.randn(
        1, channels, *spatial, generator=g, dtype=torch.float64
    )
    return torch.cat([a, b, c], 0)


def relative_error(approx: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.abs().max().item()
    return (approx - ref).abs().max().item() / max(scale, 1e-12)
