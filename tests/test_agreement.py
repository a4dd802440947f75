"""The agreement metrics of two maps and the fixed-region share, on arrays whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from softcamify.errors import UsageError
from softcamify.evaluation.metrics import (
    area_pool,
    common_grid,
    fixed_region_share,
    peak_shift,
    positive_sparsity,
    rank_correlation,
    topk_iou,
)


def test_rank_correlation_of_known_orderings():
    a = np.arange(12.0).reshape(3, 4)
    assert rank_correlation(a, a * 3 + 1) == pytest.approx(1.0)  # monotone: the same ranking
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, np.exp(a)) == pytest.approx(1.0)
    assert math.isnan(rank_correlation(a, np.ones((3, 4))))  # a constant map ranks nothing
    # ties take their average rank: x ranks 1.5 1.5 3 4, y ranks 1 2 3 4 -> Pearson of those ranks
    x, y = np.array([[0.0, 0.0], [1.0, 2.0]]), np.array([[0.0, 1.0], [2.0, 3.0]])
    rx, ry = np.array([1.5, 1.5, 3, 4]), np.array([1.0, 2, 3, 4])
    assert rank_correlation(x, y) == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    stack = rank_correlation(np.stack([a, a]), np.stack([a, -a]))  # one value per pair
    assert stack.shape == (2,) and stack.tolist() == pytest.approx([1.0, -1.0])


def test_topk_iou_and_peak_shift():
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    a[0, 0], a[0, 1] = 2, 1
    b[0, 0], b[3, 3] = 1, 2
    assert topk_iou(a, b, 1) == 0.0  # (0,0) vs (3,3)
    assert topk_iou(a, b, 2) == pytest.approx(1 / 3)  # {(0,0),(0,1)} vs {(3,3),(0,0)}
    assert topk_iou(a, a, 3) == 1.0
    cells, share = peak_shift(a, b)
    assert cells == pytest.approx(math.hypot(3, 3)) and share == pytest.approx(1.0)  # opposite corners
    with pytest.raises(UsageError, match="between 1 and the 16 cells"):
        topk_iou(a, b, 17)


def test_area_pool_keeps_the_mean_and_the_common_grid_is_the_coarser():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(2, 7, 5))
    pooled = area_pool(m, (3, 2))
    assert pooled.shape == (2, 3, 2)
    assert pooled.mean(axis=(1, 2)) == pytest.approx(m.mean(axis=(1, 2)))  # a SoftCAM logit is kept
    assert area_pool(np.arange(16.0).reshape(4, 4), (2, 2)).tolist() == [[2.5, 4.5], [10.5, 12.5]]
    assert common_grid((7, 7), (14, 5)) == (7, 5)


def test_positive_sparsity_is_evaluates_sparsity():
    m = np.array([[-5.0, 0.0], [0.001, 1.0]])  # ReLU -> 0, 0, 0.001, 1: three cells under 1 % of the peak
    assert positive_sparsity(m) == pytest.approx(0.75)
    assert positive_sparsity(-np.ones((2, 2))) == 1.0  # no positive evidence


def test_fixed_region_share_uniform_scattered_and_fixed():
    n, h, w = 20, 10, 10
    flat = np.ones((n, h, w))
    r = fixed_region_share(flat, region=0.05)
    assert r.uniform == 0.05 and r.share == pytest.approx(0.05) and r.lift == pytest.approx(1.0) and r.images == n
    fixed = np.zeros((n, h, w))
    fixed[:, 0, 0] = 1.0  # every image's evidence in the same cell
    r = fixed_region_share(fixed, region=0.05)
    assert r.share == pytest.approx(1.0) and (0, 0) in r.cells and len(r.cells) == 5
    rng = np.random.default_rng(1)
    scattered = np.zeros((n, h, w))
    for i in range(n):  # one bright cell per image, somewhere else each time
        scattered[i, rng.integers(h), rng.integers(w)] = 1.0
    r = fixed_region_share(scattered, region=0.05)
    assert r.share < 0.5  # at most the 5 most visited of the images' cells
    none = fixed_region_share(-np.ones((3, 4, 4)))
    assert math.isnan(none.share) and none.images == 0
    with pytest.raises(UsageError, match="shortcut_region"):
        fixed_region_share(flat, region=0)
