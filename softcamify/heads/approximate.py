"""Approximate strategies: heads with no exact decomposition, converted by moving the pooling to the end.

Every one builds the same kind of head (:class:`~softcamify.heads.evidence.PerPositionHead`: the
model's own head applied to each position on its own, then the spatial mean); they differ in the
head they recognise, which is what the user is told:

- ``pooled``: max / avg+max / other pooling followed by a linear classifier;
- ``prelogits``: pooling followed by a nonlinear pre-logits stage (conv_head + activation, MLP,
  norm + MLP), applied per position;
- ``grid``: a classifier over a flattened spatial grid (VGG's ``Linear(512·7·7, 4096)`` or timm's
  7×7 ``ConvMlp``): per position the grid weights act as their sum over cells, which keeps the
  result right for spatially constant features;
- ``tokens``: token models whose head reads the class token (ViT, DeiT …): the head per patch token;
- ``per_position``: any other traceable head.

None of them is exact; ``convert`` measures the fidelity (max/mean |Δlogit|, top-1 agreement, KL)
and ``--strict`` refuses them. Fine-tuning recovers the accuracy.
"""

from __future__ import annotations

import torch

from .base import Context, NotApplicable, Strategy, register
from .evidence import PerPositionHead
from .graph import ACT, CONV, NORM, POOL
from .probe import probe_features


def build_per_position(ctx: Context) -> PerPositionHead:
    if ctx.graph is None:
        raise NotApplicable("the head could not be traced, so it cannot be applied per position")
    head = PerPositionHead(ctx.graph, ctx.channels, ctx.num_classes, ctx.layout)
    f = probe_features(ctx.channels, *ctx.spatial)[:2]
    try:
        with torch.no_grad():
            out = head(f)
    except Exception as e:
        raise NotApplicable(f"the head does not accept a single position ({type(e).__name__}: {e})") from e
    if tuple(out.shape) != (2, ctx.num_classes, *ctx.spatial) or not torch.isfinite(out).all():
        raise NotApplicable(f"the head gives {tuple(out.shape)} per position, not {ctx.num_classes} finite logits")
    return head


def _pool_kind(ctx: Context) -> str | None:
    return next((s.params.get("kind") for s in ctx.steps if s.role == POOL), None)


def _build_tokens(ctx: Context) -> PerPositionHead:
    if ctx.tokens is None:
        raise NotApplicable("not a token model")
    return build_per_position(ctx)


def _build_grid(ctx: Context) -> PerPositionHead:
    if not any(s.role == CONV or (s.role == POOL and s.params.get("kind") == "grid") for s in ctx.steps):
        raise NotApplicable("the head does not read a spatial grid")
    return build_per_position(ctx)


def _build_pooled(ctx: Context) -> PerPositionHead:
    kind = _pool_kind(ctx)
    if kind in (None, "avg", "fixed", "grid"):
        raise NotApplicable("the pooling is an average")
    if any(s.role in (ACT, CONV) for s in ctx.steps):
        raise NotApplicable("the head has a nonlinear stage after pooling")
    return build_per_position(ctx)


def _build_prelogits(ctx: Context) -> PerPositionHead:
    if not any(s.role in (ACT, NORM) for s in ctx.steps):
        raise NotApplicable("no nonlinear pre-logits stage was found")
    return build_per_position(ctx)


for _name, _build, _desc in (
    ("tokens", _build_tokens, "token model whose head reads the class token: the head applied per patch token"),
    ("grid", _build_grid, "classifier over a flattened spatial grid (VGG): the grid head applied per position"),
    ("pooled", _build_pooled, "max / avg+max / other pooling: the linear head per position, pooled by the mean"),
    ("prelogits", _build_prelogits, "nonlinear pre-logits after pooling: the whole head per position, then the mean"),
    ("per_position", build_per_position, "any other head, applied per position, then the mean"),
):
    register(Strategy(name=_name, exact=False, build=_build, description=_desc))
