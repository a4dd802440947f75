"""Exact strategy: average pooling → (flatten / dropout / identity / BatchNorm / several linear
heads averaged) → Linear or 1×1 conv. Any head that is affine in the pooled features.

The affine map is read off the head itself by probing (no assumption on module names), then
folded into one 1×1 (1×1×1 for volumes) convolution: mean(W·F + b) = W·mean(F) + b.
"""

from __future__ import annotations

from .base import Context, NotApplicable, Strategy, check_exact, register
from .evidence import EvidenceHead
from .graph import ACT, CONV, POOL
from .probe import EXACT_RTOL, affine_of_pooled, quick_affine_check


def build(ctx: Context) -> EvidenceHead:
    for s in ctx.steps:
        if s.role == POOL and s.params.get("kind") not in ("avg", "fixed"):
            raise NotApplicable(f"the pooling is {s.detail}, not an average")
        if s.role in (ACT, CONV):
            raise NotApplicable(f"the head applies {s.detail} after pooling")
    try:
        violation = quick_affine_check(ctx.head, ctx.channels, ctx.spatial, ctx.layout)
    except Exception as e:
        raise NotApplicable(f"the head could not be probed ({type(e).__name__}: {e})") from e
    if violation > EXACT_RTOL:
        raise NotApplicable(f"the head is not affine in the average-pooled features (relative error {violation:.1e})")
    try:
        weight, bias = affine_of_pooled(ctx.head, ctx.channels, ctx.spatial, ctx.layout)
    except Exception as e:  # the head does not accept constant maps of this size
        raise NotApplicable(f"the head could not be probed ({type(e).__name__}: {e})") from e
    if weight.shape[0] != ctx.num_classes:
        raise NotApplicable(f"the probe found {weight.shape[0]} outputs, expected {ctx.num_classes}")
    head = EvidenceHead(ctx.channels, ctx.num_classes, spatial_dims=ctx.spatial_dims).double()
    head.set_affine(weight, bias)
    err = check_exact(ctx, head)
    if err > EXACT_RTOL:
        raise NotApplicable(f"the head is not affine in the average-pooled features (relative error {err:.1e})")
    return head


STRATEGY = register(
    Strategy(
        name="linear",
        exact=True,
        build=build,
        description="average pool → affine head (Linear / 1×1 conv, dropout, flatten, BatchNorm) folded into a "
        "1×1 evidence conv",
    )
)
