"""The ElasticNet loss on evidence maps, its logit scale, the λ conversion, the LR schedule, map statistics.

Loss (docs/method.md, "Fine-tuning loss")::

    loss = CE(logits, y) + l1 · mean_{b,k,h,w} |A| / s + l2 · mean_{b,k,h,w} A² / s²
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..binary import two_class
from ..errors import UsageError
from .config import DEFAULT_SPARSITY_THRESHOLD


def elasticnet_loss(
    logits: torch.Tensor,
    maps: torch.Tensor,
    target: torch.Tensor,
    l1: float = 0.0,
    l2: float = 0.0,
    class_weight: torch.Tensor | None = None,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, ce, l1_term, l2_term)`` with ``loss = ce + l1·l1_term + l2·l2_term``.

    ``l1_term = mean_{b,k,h,w} |A| / scale`` and ``l2_term = mean_{b,k,h,w} A² / scale²``: means over
    every sample, class map and cell (any number of spatial axes), relative to ``scale`` (the starting
    model's :func:`logit_scale`), so that λ does not depend on the grid size, the class count or the
    logit scale. With ``l1 = l2 = 0`` the loss is exactly the (optionally class-weighted)
    cross-entropy. The returned terms are detached (for logging); computed in float32.
    """
    if not (math.isfinite(scale) and scale > 0):
        raise UsageError(f"scale must be a positive number, got {scale}.")
    ce = F.cross_entropy(two_class(logits.float()), target, weight=class_weight)  # one logit: BCE, exactly
    m = maps.float()
    with torch.set_grad_enabled(bool(l1) and torch.is_grad_enabled()):
        l1_term = m.abs().mean() / scale
    with torch.set_grad_enabled(bool(l2) and torch.is_grad_enabled()):
        l2_term = m.square().mean() / (scale * scale)
    loss = ce
    if l1:
        loss = loss + l1 * l1_term
    if l2:
        loss = loss + l2 * l2_term
    return loss, ce.detach(), l1_term.detach(), l2_term.detach()


@torch.no_grad()
def logit_scale(logits: torch.Tensor) -> float:
    """The scale λ is relative to: the RMS of the logits around each sample's mean over classes.

    Softmax ignores a shift shared by all classes, so the shift is removed; a single-logit binary model
    is read as its two-class view ``(−z/2, z/2)`` (:mod:`softcamify.binary`). Returns 1.0 when the
    logits do not vary (a zero-initialized head), so that λ keeps its plain meaning.
    """
    z = two_class(logits.detach().double())
    s = float((z - z.mean(1, keepdim=True)).square().mean().sqrt())
    return s if math.isfinite(s) and s > 1e-6 else 1.0


def lambda_from_paper(lam: float, num_classes: int, cells: int, scale: float, term: str = "l1") -> float:
    """softcamify's λ for a λ of the paper (whose penalty is a per-sample sum over the K×h×w maps).

    The paper penalizes ``λ_paper · Σ_{k,h,w} |A|``, softcamify ``λ · mean_{k,h,w} |A| / s``: the two agree
    when ``λ1 = λ_paper · K · h·w · s`` (``term="l1"``) and, for the squared term,
    ``λ2 = λ_paper · K · h·w · s²`` (``term="l2"``). ``cells`` is h·w (d·h·w for volumes), ``scale`` the
    :func:`logit_scale`.
    """
    if term not in ("l1", "l2"):
        raise UsageError(f"term must be 'l1' or 'l2', got {term!r}.")
    return float(lam) * int(num_classes) * int(cells) * float(scale) ** (1 if term == "l1" else 2)


def cosine_with_warmup(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR factor per optimizer step: linear warmup to 1, then cosine down to ``min_ratio``."""
    total = max(1, int(total_steps))
    warm = max(0, min(int(warmup_steps), total // 2))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        span = max(1, total - warm)
        t = min(1.0, (step - warm) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


@torch.no_grad()
def map_statistics(maps: torch.Tensor, threshold: float = DEFAULT_SPARSITY_THRESHOLD) -> torch.Tensor:
    """Sums for map sparsity, one float64 tensor ``[near_zero, cells, map_l1_sum, maps]``.

    ``near_zero / cells`` is the share of evidence cells with ``|A| < threshold`` (absolute, in logit
    units: :func:`softcamify.evaluation.metrics.sparsity` with ``relative=False``); ``map_l1_sum / maps`` is
    the mean L1 norm ``Σ_{h,w} |A_k|`` of one class map. Sums, so they add up over batches and ranks.
    """
    a = maps.detach().float().abs()
    return torch.stack(
        [
            (a < threshold).sum().double(),
            torch.tensor(float(a.numel()), dtype=torch.float64, device=a.device),
            a.sum(dtype=torch.float64),
            torch.tensor(float(a.shape[0] * a.shape[1]), dtype=torch.float64, device=a.device),
        ]
    )


def balanced_class_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """``n / (K · n_c)`` per class (scikit-learn's "balanced")."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    n = counts.sum()
    return [float(n / (num_classes * c)) if c > 0 else 0.0 for c in counts]
