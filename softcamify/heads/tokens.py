"""Token models (ViT, DeiT, BEiT, EVA, Mixer …): their patch tokens seen as a feature grid.

``TokenGrid`` turns ``forward_features``' B×N×D tokens into a B×h×w×D grid (prefix tokens such as
the class token dropped); ``TokenHead`` feeds a grid back to the model's own head as a token
sequence. With these two adapters a token model looks like any NHWC CNN to the strategies: heads
that average patch tokens are affine (or normed) in the grid's mean and convert exactly; heads that
read the class token do not, and are approximated per patch.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def prefix_tokens(model: nn.Module, num_tokens: int | None = None) -> int:
    """Tokens before the patch tokens (class, distillation, register tokens)."""
    n = getattr(model, "num_prefix_tokens", None)
    if isinstance(n, int):
        return n
    n = int(getattr(model, "cls_token", None) is not None) + int(getattr(model, "dist_token", None) is not None)
    if num_tokens is not None and math.isqrt(num_tokens - n) ** 2 != num_tokens - n:
        # undeclared prefix tokens: the smallest count that leaves a square patch grid
        n = next((k for k in range(0, 9) if num_tokens > k and math.isqrt(num_tokens - k) ** 2 == num_tokens - k), n)
    return n


def patch_size(model: nn.Module) -> tuple[int, int] | None:
    pe = getattr(model, "patch_embed", None) or getattr(model, "stem", None)
    ps = getattr(pe, "patch_size", None)
    if isinstance(ps, int):
        return ps, ps
    if isinstance(ps, (tuple, list)) and len(ps) == 2:
        return int(ps[0]), int(ps[1])
    return None


class TokenGrid(nn.Module):
    """forward_features tokens (B×N×D) → patch-token grid B×h×w×D."""

    def __init__(self, features: nn.Module, prefix: int, patch: tuple[int, int] | None):
        super().__init__()
        self.features = features
        self.prefix = int(prefix)
        self.patch = tuple(patch) if patch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.features(x)[:, self.prefix :]
        b, n, d = t.shape
        if self.patch is not None:
            h, w = x.shape[-2] // self.patch[0], x.shape[-1] // self.patch[1]
        else:
            h = w = math.isqrt(n)
        return t.reshape(b, h, w, d)


class TokenHead(nn.Module):
    """A grid B×h×w×D back to the model's head as tokens; prefix tokens are filled with the patch mean."""

    def __init__(self, head: nn.Module, prefix: int):
        super().__init__()
        self.head = head
        self.prefix = int(prefix)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        b, h, w, d = grid.shape
        t = grid.reshape(b, h * w, d)
        if self.prefix:
            fill = t.mean(dim=1, keepdim=True).expand(b, self.prefix, d)
            t = torch.cat([fill, t], dim=1)
        return self.head(t)


@torch.no_grad()
def head_reads_prefix(head: nn.Module, tokens: torch.Tensor, prefix: int) -> bool:
    """True when the head's output depends on the prefix (class) tokens, e.g. class-token pooling."""
    if prefix == 0:
        return False
    g = torch.Generator().manual_seed(0)
    other = tokens.clone()
    other[:, :prefix] = torch.randn(other[:, :prefix].shape, generator=g, dtype=tokens.dtype) * 3 + 1
    a, b = head(tokens), head(other)
    return not torch.allclose(a, b, rtol=1e-6, atol=1e-6)
