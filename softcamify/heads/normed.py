"""Exact strategy: average pooling → per-sample norm (LayerNorm, RmsNorm, SimpleNorm) → affine head.

With p = mean_hw(F) and (μ, σ) the norm's statistics of p, LN(p) = γ⊙(p − μ)/σ + β, so
A(x, y) = W·(γ⊙(F(x, y) − μ)/σ) + W·β + b has mean_hw(A) = W·LN(p) + b exactly. The maps stay
linear in the local features; only the two per-sample scalars μ, σ come from the whole image.
"""

from __future__ import annotations

import torch
from torch.fx.passes.shape_prop import ShapeProp

from .base import Context, NotApplicable, Strategy, check_exact, register
from .evidence import EvidenceHead
from .graph import COMBINE, NORM, OTHER, PASS, POOL, classify, compute_nodes, extract
from .probe import EXACT_RTOL, affine_of_vector, probe_features, relative_error, spatial_mean, to_layout


def build(ctx: Context) -> EvidenceHead:
    gm = ctx.graph
    if gm is None:
        raise NotApplicable("the head could not be traced, so its norm cannot be located")
    modules = dict(gm.named_modules())
    nodes = compute_nodes(gm)
    roles = [(n, classify(n, modules)) for n in nodes]
    norms = [(n, s) for n, s in roles if s.role == NORM]
    if len(norms) != 1:
        raise NotApplicable("the head has no single per-sample norm after pooling")
    norm_node, norm_step = norms[0]
    if norm_node.op != "call_module":
        raise NotApplicable("the norm is a function call, not a module with known parameters")
    # what precedes the norm must be a plain spatial average: checked numerically below, whatever
    # the ops look like (timm pools, torch.mean, token slicing and averaging ...)
    before = [s for n, s in roles if n in _ancestors_before(norm_node)]
    bad = [s for s in before if s.role not in (POOL, PASS, OTHER, COMBINE)]
    if bad:
        raise NotApplicable(f"the head applies {bad[0].detail} before the norm")

    norm = modules[norm_node.target]
    kind = norm_step.params["kind"]
    channels = ctx.channels
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    gamma = weight.detach().reshape(-1) if weight is not None else torch.ones(channels, dtype=torch.float64)
    beta = bias.detach().reshape(-1) if bias is not None else torch.zeros(channels, dtype=torch.float64)
    if gamma.numel() != channels or beta.numel() != channels:
        raise NotApplicable(f"the norm covers {gamma.numel()} values, not the {channels} channels")
    eps = float(getattr(norm, "eps", 1e-6))

    f = probe_features(channels, *ctx.spatial)
    sample = to_layout(f[:1], ctx.layout)
    ShapeProp(gm).propagate(sample)
    tail = tuple(norm_node.meta["tensor_meta"].shape[1:])

    pre = extract(gm, None, norm_node.all_input_nodes[0])
    with torch.no_grad():
        pooled = pre(to_layout(f, ctx.layout)).reshape(f.shape[0], -1)
    if pooled.shape[1] != channels or relative_error(pooled, spatial_mean(f)) > EXACT_RTOL:
        raise NotApplicable("the part before the norm is not a plain spatial average")

    post = extract(gm, norm_node, next(n for n in gm.graph.nodes if n.op == "output").args[0])
    w_post, b_post = affine_of_vector(post, tail)
    if w_post.shape[0] != ctx.num_classes:
        raise NotApplicable(f"the part after the norm gives {w_post.shape[0]} outputs, not {ctx.num_classes}")

    head = EvidenceHead(channels, ctx.num_classes, norm=kind, eps=eps, spatial_dims=ctx.spatial_dims).double()
    head.set_affine(w_post * gamma.to(w_post)[None, :], w_post @ beta.to(w_post) + b_post)
    err = check_exact(ctx, head)
    if err > EXACT_RTOL:
        raise NotApplicable(
            f"average pool → {norm_step.detail} → linear does not decompose exactly (relative error {err:.1e})"
        )
    return head


def _ancestors_before(node):
    seen, stack = set(), list(node.all_input_nodes)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return seen


STRATEGY = register(
    Strategy(
        name="normed",
        exact=True,
        build=build,
        description="average pool → per-sample norm → affine head, decomposed with the pooled statistics",
    )
)
