"""Metrics pinned on hand-built maps, masks and predictions with known answers."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from softcamify.errors import InputError, UsageError
from softcamify.evaluation import metrics as M
from softcamify.evaluation.metrics import mapops

# ----------------------------------------------------------------------------------------------- upsample


def test_module_does_not_import_torch():
    code = (
        "import sys, softcamify.evaluation.metrics, softcamify.render, softcamify.report; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_upsample_bilinear_hand_computed():
    # align_corners=False: src = (dst + 0.5) * 2/4 - 0.5, clamped at 0 -> weights (1,0), (.75,.25), (.25,.75), (0,1)
    a = np.array([[0.0, 1.0], [2.0, 3.0]])
    expected = np.array(
        [
            [0.0, 0.25, 0.75, 1.0],
            [0.5, 0.75, 1.25, 1.5],
            [1.5, 1.75, 2.25, 2.5],
            [2.0, 2.25, 2.75, 3.0],
        ]
    )
    np.testing.assert_allclose(M.upsample(a, (4, 4)), expected, atol=1e-12)


def test_upsample_bilinear_non_integer_ratio_hand_computed():
    # 1×3 -> 1×5: scale 0.6; src = 0.6*dst - 0.2 -> [-.2->0, .4, 1.0, 1.6, 2.2->clamped to index 2]
    a = np.array([[0.0, 10.0, 20.0]])
    np.testing.assert_allclose(M.upsample(a, (1, 5)), [[0.0, 4.0, 10.0, 16.0, 20.0]], atol=1e-12)


def test_upsample_keeps_leading_axes_and_identity():
    a = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    assert M.upsample(a, (6, 8)).shape == (2, 6, 8)
    np.testing.assert_array_equal(M.upsample(a, (3, 4)), a)


def test_upsample_nearest_and_bad_mode():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(M.upsample(a, (4, 4), mode="nearest"), np.kron(a, np.ones((2, 2))))
    with pytest.raises(UsageError):
        M.upsample(a, (4, 4), mode="area")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("shapes", [((7, 7), (224, 224)), ((3, 5), (8, 11)), ((60, 60), (17, 23)), ((1, 1), (5, 5))])
def test_upsample_matches_torch(mode, shapes):
    torch = pytest.importorskip("torch")
    (h, w), size = shapes
    a = np.random.default_rng(0).standard_normal((2, h, w))
    kw = {} if mode == "nearest" else {"align_corners": False}
    ref = torch.nn.functional.interpolate(torch.tensor(a)[None], size=size, mode=mode, **kw)[0].numpy()
    np.testing.assert_allclose(M.upsample(a, size, mode=mode), ref, atol=1e-5)


def test_normalize_saliency_special_cases():
    np.testing.assert_array_equal(M.normalize_saliency(np.zeros((3, 3))), np.zeros((3, 3)))
    np.testing.assert_array_equal(M.normalize_saliency(-np.ones((3, 3))), np.zeros((3, 3)))
    np.testing.assert_array_equal(M.normalize_saliency(np.full((2, 2), 7.0)), np.ones((2, 2)))
    np.testing.assert_allclose(M.normalize_saliency(np.array([[-2.0, 0.0], [1.0, 4.0]])), [[0, 0], [0.25, 1.0]])


# ------------------------------------------------------------------------------------------- localisation


def _mask(shape=(8, 8), box=(2, 6, 2, 6)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = True
    return m


def test_map_equal_to_mask_is_perfect():
    m = _mask()
    s = m.astype(float) * 3.0
    assert M.activation_precision(s, m) == pytest.approx(1.0)
    assert M.activation_sensitivity(s, m) == pytest.approx(1.0)
    assert M.pointing_game(s, m) == 1.0
    assert M.energy_pointing_game(s, m) == pytest.approx(1.0)


def test_uniform_map_scores_area_share():
    m = _mask()  # 16 of 64 pixels
    s = np.full((8, 8), 0.3)
    assert M.activation_precision(s, m) == pytest.approx(16 / 64)
    assert M.energy_pointing_game(s, m) == pytest.approx(16 / 64)
    assert M.activation_sensitivity(s, m) == pytest.approx(1.0)  # constant positive map -> all ones
    assert M.pointing_game(s, m) == 0.0  # points nowhere
    assert M.pointing_game(np.full((3, 3), 0.3), m) == 0.0  # also after upsampling (no float-noise peak)
    assert M.activation_precision(np.full((3, 3), 0.3), m) == pytest.approx(16 / 64)


def test_map_peaked_outside_mask_misses():
    m = _mask()
    s = np.zeros((8, 8))
    s[0, 0] = 5.0
    s[3, 3] = 1.0
    assert M.pointing_game(s, m) == 0.0
    assert M.activation_precision(s, m) == pytest.approx(1.0 / 6.0)
    assert M.energy_pointing_game(s, m) == pytest.approx(1.0 / 6.0)
    assert M.activation_sensitivity(s, m) == pytest.approx((1.0 / 5.0) / 16)


def test_pointing_game_tolerance_is_a_euclidean_disk():
    m = np.zeros((10, 10), dtype=bool)
    m[3, 4] = True  # distance 5 from the peak at (0, 0); Chebyshev distance 4
    s = np.zeros((10, 10))
    s[0, 0] = 1.0
    assert M.pointing_game(s, m, tolerance_px=4) == 0.0
    assert M.pointing_game(s, m, tolerance_px=5) == 1.0
    with pytest.raises(UsageError):
        M.pointing_game(s, m, tolerance_px=-1)


def test_pointing_game_ties_any_maximum_inside():
    m = _mask()
    s = np.zeros((8, 8))
    s[0, 0] = s[4, 4] = 2.0
    assert M.pointing_game(s, m) == 1.0


def test_low_resolution_map_is_upsampled_hand_computed():
    # 2×2 map [[1, 0], [0, 0]] -> 4×4 bilinear = outer(a, a) with a = [1, .75, .25, 0]
    s = np.array([[1.0, 0.0], [0.0, 0.0]])
    m = np.zeros((4, 4), dtype=bool)
    m[:2, :2] = True
    inside = (1 + 0.75) ** 2
    total = 2.0**2
    assert M.activation_precision(s, m) == pytest.approx(inside / total)
    assert M.activation_sensitivity(s, m) == pytest.approx(inside / 4)
    assert M.pointing_game(s, m) == 1.0


def test_zero_and_negative_maps_score_zero():
    m = _mask()
    for s in (np.zeros((8, 8)), -np.ones((8, 8))):
        assert M.activation_precision(s, m) == 0.0
        assert M.activation_sensitivity(s, m) == 0.0
        assert M.energy_pointing_game(s, m) == 0.0


def test_empty_mask_gives_nan():
    m = np.zeros((8, 8), dtype=bool)
    s = np.random.default_rng(0).random((4, 4))
    for fn in (M.activation_precision, M.activation_sensitivity, M.pointing_game, M.energy_pointing_game):
        assert math.isnan(fn(s, m))
    res = M.topk_patch_precision(s, np.zeros((64, 64)), k=3, patch=16, stride=8)
    assert math.isnan(res.precision) and res.picks == 0
    agg = M.aggregate([{"ap": M.activation_precision(s, m)}, {"ap": 0.5}, {"ap": 0.7}])
    assert agg["ap"]["n"] == 2 and agg["ap"]["mean"] == pytest.approx(0.6)


def test_bad_inputs_raise():
    with pytest.raises(InputError):
        M.activation_precision(np.full((2, 2), np.nan), _mask())
    with pytest.raises(InputError):
        M.activation_precision(np.ones(4), _mask())


# -------------------------------------------------------------------------------------------- top-k patches


def _topk_case():
    grid = np.zeros((7, 7))  # mask 64×64, patch 16, stride 8 -> grid (64-16)//8+1 = 7
    grid[0, 0] = 5.0  # box rows/cols 0..15: hit
    grid[6, 6] = 4.0  # box 48..63: miss
    grid[0, 1] = 3.0  # suppressed by the pick at (0, 0)
    grid[3, 3] = 2.0  # box 24..39: miss
    mask = np.zeros((64, 64), dtype=bool)
    mask[0:4, 0:4] = True
    return grid, mask


def test_topk_patch_precision_known_hits():
    grid, mask = _topk_case()
    res = M.topk_patch_precision(grid, mask, k=10, patch=16, stride=8, threshold=1.0)
    assert res.picks == 3 and res.hits == 1
    assert res.precision == pytest.approx(1 / 3)
    assert res.hit_flags == [True, False, False]
    assert res.boxes == [(0, 0, 16, 16), (48, 48, 16, 16), (24, 24, 16, 16)]
    assert res.precision_at(1) == 1.0 and res.precision_at(2) == 0.5
    assert res.curve() == pytest.approx([1.0, 0.5, 1 / 3])
    json.dumps(res.as_dict(), allow_nan=False)


def test_topk_patch_precision_k_and_threshold():
    grid, mask = _topk_case()
    assert M.topk_patch_precision(grid, mask, k=2, patch=16, stride=8).picks == 2
    assert M.topk_patch_precision(grid, mask, k=10, patch=16, stride=8, threshold=2.5).picks == 2
    assert M.topk_patch_precision(grid, mask, k=10, patch=16, stride=8, threshold=None).picks == 10
    assert math.isnan(M.topk_patch_precision(grid, mask, patch=16, stride=8, threshold=9.0).precision)


def test_topk_patch_edges_of_box():
    grid = np.zeros((7, 7))
    grid[0, 0] = 5.0
    mask = np.zeros((64, 64), dtype=bool)
    mask[15, 15] = True  # last pixel of box (0, 0)
    assert M.topk_patch_precision(grid, mask, k=1, patch=16, stride=8).hits == 1
    mask[:] = False
    mask[16, 16] = True  # first pixel outside it
    assert M.topk_patch_precision(grid, mask, k=1, patch=16, stride=8).hits == 0


def test_pooled_topk_precision():
    grid, mask = _topk_case()
    a = M.topk_patch_precision(grid, mask, patch=16, stride=8)  # flags T, F, F
    b = M.TopKResult(precision=1.0, hits=1, picks=1, hit_flags=[True])
    assert M.pooled_topk_precision([a, b], 3) == pytest.approx([2 / 2, 2 / 3, 2 / 4])


def test_topk_default_grid_is_60_for_512():
    s = np.zeros((16, 16))
    s[2, 2] = 10.0
    mask = np.zeros((512, 512), dtype=bool)
    mask[60:100, 60:100] = True
    res = M.topk_patch_precision(s, mask, k=1)
    assert res.picks == 1
    y, x, h, w = res.boxes[0]
    assert (h, w) == (33, 33) and y % 8 == 0 and x % 8 == 0 and res.hits == 1


# ------------------------------------------------------------------------------------- sparsity and Gini


def test_gini_uniform_spike_zero():
    assert M.gini(np.ones(100)) == pytest.approx(0.0)
    spike = np.zeros(100)
    spike[7] = 3.0
    assert M.gini(spike) == pytest.approx(1 - 1 / 100)
    assert M.gini(np.zeros(5)) == 0.0
    v = np.random.default_rng(0).standard_normal(50)
    assert M.gini(v) == pytest.approx(M.gini(-4.0 * v))  # magnitudes, scale-free


def test_gini_hand_computed():
    # a = [0, 1, 2, 3] sorted, n = 4: Σ(2i-n-1)a_i = (-3)(0) + (-1)(1) + (1)(2) + (3)(3) = 10; /(4·6)
    assert M.gini(np.array([3.0, 0.0, -2.0, 1.0])) == pytest.approx(10 / 24)


def test_sparsity_constructed():
    a = np.full((10, 10), 0.005)
    a.flat[:20] = -1.0  # 20 strong values (either sign), 80 below 1 % of the peak
    assert M.sparsity(a) == pytest.approx(0.8)
    assert M.sparsity(a, threshold=0.001, relative=False) == pytest.approx(0.0)
    assert M.sparsity(a, threshold=0.5, relative=False) == pytest.approx(0.8)
    assert M.sparsity(np.zeros((4, 4))) == 1.0
    per_map = M.sparsity(np.stack([a, np.ones((10, 10))]))
    np.testing.assert_allclose(per_map, [0.8, 0.0])


# ------------------------------------------------------------------------------------------ faithfulness


def _linear_model(image_hw=8, patch=4):
    """Softmax of a 2-class linear model whose evidence lives in the top-left patch only."""

    def predict(batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.ndim == 4
        z1 = 4.0 * batch[:, 0, :patch, :patch].mean(axis=(1, 2)) - 2.0
        logits = np.stack([np.zeros_like(z1), z1], axis=1)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return predict


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_deletion_true_order_falls_faster():
    predict = _linear_model()
    img = np.ones((1, 8, 8), dtype=np.float32)
    true_sal = np.array([[1.0, 0.0], [0.0, 0.0]])  # evidence patch first
    hi, lo = _sig(2.0), _sig(-2.0)
    auc_true, curve = M.deletion_insertion(predict, img, true_sal, target=1, steps=4, patch=4)
    auc_rev, _ = M.deletion_insertion(predict, img, -true_sal, target=1, steps=4, patch=4)
    rand = np.array([[0.2, 0.9], [0.5, 0.1]])  # evidence patch ranked 3rd of 4
    auc_rand, _ = M.deletion_insertion(predict, img, rand, target=1, steps=4, patch=4)
    np.testing.assert_allclose(curve[:, 0], [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve[:, 1], [hi, lo, lo, lo, lo])
    assert auc_true == pytest.approx(0.25 * ((hi + lo) / 2 + 3 * lo))
    assert auc_rev == pytest.approx(0.25 * (3 * hi + (hi + lo) / 2))
    assert auc_true < auc_rand < auc_rev


def test_insertion_true_order_rises_faster_and_batches():
    calls = []
    base = _linear_model()

    def predict(batch):
        calls.append(len(batch))
        return base(batch)

    img = np.ones((1, 8, 8), dtype=np.float32)
    sal = np.array([[1.0, 0.0], [0.0, 0.0]])
    auc_true, curve = M.deletion_insertion(predict, img, sal, 1, steps=4, patch=4, mode="insertion", batch_size=2)
    assert calls == [2, 2, 1]
    auc_rev, _ = M.deletion_insertion(predict, img, -sal, 1, steps=4, patch=4, mode="insertion")
    assert curve[0, 1] == pytest.approx(_sig(-2.0)) and curve[-1, 1] == pytest.approx(_sig(2.0))
    assert auc_true > auc_rev


def test_deletion_options():
    predict = _linear_model()
    img = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    sal = np.random.default_rng(1).random((3, 3))
    auc, curve = M.deletion_insertion(predict, img, sal, 1, steps=100, patch=4)  # capped at 4 tiles
    assert curve.shape == (5, 2) and 0.0 <= auc <= 1.0
    _, curve = M.deletion_insertion(predict, img, sal, 1, steps=8, patch=1, baseline="blur", mode="insertion")
    assert curve.shape == (9, 2) and curve[0, 0] == 0.0 and curve[-1, 0] == 1.0
    _, curve = M.deletion_insertion(predict, img, sal, 1, steps=2, patch=3, patch_score="mean")  # ragged tiles
    assert curve[-1, 0] == 1.0
    with pytest.raises(UsageError):
        M.deletion_insertion(predict, img, sal, 1, mode="erase")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        M.deletion_insertion(predict, img, sal, 5)
    with pytest.raises(UsageError):
        M.deletion_insertion(predict, img, sal, 1, baseline="noise")


def test_gaussian_blur_keeps_constant_images():
    img = np.full((2, 9, 9), 3.0, dtype=np.float32)
    np.testing.assert_allclose(M.gaussian_blur(img, sigma=2.0), img, rtol=1e-6)


# ---------------------------------------------------------------------------------------- classification


def test_roc_auc_perfect_worst_ties_random():
    y = np.array([0, 0, 1, 1])
    assert M.roc_auc_ovr(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert M.roc_auc_ovr(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert M.roc_auc_ovr(y, np.full(4, 0.5)) == 0.5
    # one tied positive/negative pair counts one half: (1 + 0.5 + 1 + 1) / 4
    assert M.roc_auc_ovr(y, np.array([0.1, 0.5, 0.5, 0.9])) == pytest.approx(0.875)
    rng = np.random.default_rng(0)
    yr = rng.integers(0, 2, 4000)
    assert M.roc_auc_ovr(yr, rng.random(4000)) == pytest.approx(0.5, abs=0.03)


def test_roc_auc_binary_uses_class_one_column():
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    assert M.roc_auc_ovr(y, probs) == 1.0


def test_roc_auc_multiclass_skips_absent_classes():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    auc0 = M.roc_auc_ovr((y == 0).astype(int), probs[:, 0])
    auc1 = M.roc_auc_ovr((y == 1).astype(int), probs[:, 1])
    assert M.roc_auc_ovr(y, probs) == pytest.approx((auc0 + auc1) / 2)
    assert math.isnan(M.roc_auc_ovr(np.zeros(3, dtype=int), np.full((3, 3), 1 / 3)))
    assert math.isnan(M.roc_auc_ovr(np.ones(3, dtype=int), np.array([0.2, 0.5, 0.9])))


def test_roc_auc_matches_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 300)
    p = np.round(rng.random((300, 4)), 1) + 0.01
    p /= p.sum(axis=1, keepdims=True)
    assert M.roc_auc_ovr(y, p) == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))


def test_confusion_accuracy_balanced_accuracy_imbalanced():
    y = np.array([0] * 8 + [1] * 2)
    all_zero = np.zeros(10, dtype=int)
    assert M.accuracy(y, all_zero) == pytest.approx(0.8)
    assert M.balanced_accuracy(y, all_zero) == pytest.approx(0.5)
    pred = np.array([0] * 7 + [1] + [1, 0])  # recall 7/8 and 1/2
    assert M.balanced_accuracy(y, pred) == pytest.approx((7 / 8 + 1 / 2) / 2)
    np.testing.assert_array_equal(M.confusion_matrix(y, pred, 2), [[7, 1], [1, 1]])
    with pytest.raises(InputError):
        M.confusion_matrix(y, pred, 1)


def test_sensitivity_specificity_binary():
    sens, spec = M.sensitivity_specificity(np.array([[50, 10], [5, 35]]))
    assert sens[1] == pytest.approx(35 / 40) and spec[1] == pytest.approx(50 / 60)
    assert sens[0] == pytest.approx(50 / 60) and spec[0] == pytest.approx(35 / 40)
    sens, _ = M.sensitivity_specificity(np.array([[3, 0], [0, 0]]))
    assert math.isnan(sens[1])


def _kappa_by_formula(y_true, y_pred, k):
    n = len(y_true)
    num = den = 0.0
    for i in range(k):
        for j in range(k):
            w = (i - j) ** 2 / (k - 1) ** 2
            o = sum(1 for a, b in zip(y_true, y_pred, strict=True) if a == i and b == j)
            e = sum(1 for a in y_true if a == i) * sum(1 for b in y_pred if b == j) / n
            num += w * o
            den += w * e
    return 1 - num / den


def test_quadratic_kappa_known_values():
    y = [0, 1, 2, 3, 4, 2]
    assert M.quadratic_kappa(y, y, 5) == pytest.approx(1.0)
    # O has cells (0,0) (1,2) (2,2) (2,1); Σ w·O = 0.5 and Σ w·E = 1.375 (worked out by hand) -> 7/11
    yt, yp = [0, 1, 2, 2], [0, 2, 2, 1]
    assert M.quadratic_kappa(yt, yp, 3) == pytest.approx(7 / 11)
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 5, 60), rng.integers(0, 5, 60)
    assert M.quadratic_kappa(a, b, 5) == pytest.approx(_kappa_by_formula(a.tolist(), b.tolist(), 5))
    assert math.isnan(M.quadratic_kappa([1, 1], [1, 1], 3))
    skm = pytest.importorskip("sklearn.metrics")
    assert M.quadratic_kappa(a, b, 5) == pytest.approx(skm.cohen_kappa_score(a, b, weights="quadratic"))


def test_classification_report_json_safe():
    y = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
    rep = M.classification_report(y, probs, ["healthy", "disease"])
    text = json.dumps(rep, allow_nan=False)
    assert json.loads(text) == rep
    assert rep["accuracy"] == pytest.approx(3 / 5)
    assert rep["sensitivity"] == pytest.approx(2 / 3) and rep["specificity"] == pytest.approx(1 / 2)
    assert rep["confusion_matrix"] == [[1, 1], [1, 2]]
    assert [c["name"] for c in rep["per_class"]] == ["healthy", "disease"]
    assert "quadratic_kappa" not in rep
    rep3 = M.classification_report([0, 1, 2], np.eye(3), ["a", "b", "c"], ordinal=True)
    assert rep3["quadratic_kappa"] == pytest.approx(1.0)
    nan_rep = M.classification_report([0, 0], np.array([[0.9, 0.1], [0.8, 0.2]]), ["a", "b"])
    assert nan_rep["roc_auc"] is None and nan_rep["sensitivity"] is None
    with pytest.raises(UsageError):
        M.classification_report(y, probs, ["only one"])


def test_aggregate_and_json_safe():
    recs = [{"a": 1.0, "hit": True, "name": "x"}, {"a": 3.0, "hit": False}, {"a": float("nan"), "b": None}]
    agg = M.aggregate(recs)
    assert agg["a"] == {"mean": 2.0, "std": 1.0, "n": 2}
    assert agg["hit"]["mean"] == 0.5
    assert agg["b"] == {"mean": None, "std": None, "n": 0}
    assert "name" not in agg
    assert M.json_safe({"x": np.float32(np.inf), "y": np.arange(2), "z": (np.int64(3),)}) == {
        "x": None,
        "y": [0, 1],
        "z": [3],
    }


# ------------------------------------------------------------------------------- grid oracle, share of oracle


def test_grid_oracle_divisible_sizes_is_the_cell_mean():
    m = np.zeros((4, 6), bool)
    m[0:2, 0:2] = True  # fills cell (0, 0)
    m[2, 4] = True  # a quarter of cell (1, 2)
    np.testing.assert_array_equal(M.grid_oracle(m, (2, 3)), [[1.0, 0.0, 0.0], [0.0, 0.0, 0.25]])
    np.testing.assert_array_equal(M.grid_oracle(m, (4, 6)), m.astype(float))  # the mask's own grid
    np.testing.assert_array_equal(M.grid_oracle(m, (1, 1)), [[m.mean()]])


def test_grid_oracle_non_divisible_sizes_uses_exact_area_weights():
    # 1×5 row [1 1 1 0 0] on 2 cells: cell 0 spans pixels [0, 2.5), cell 1 [2.5, 5); pixel 2 split in half
    row = np.array([[1, 1, 1, 0, 0]], bool)
    np.testing.assert_allclose(M.grid_oracle(row, (1, 2)), [[2.5 / 2.5, 0.5 / 2.5]], atol=1e-15)
    # the centre pixel of 3×3 on 2×2: half of it in each cell row and column -> (1/2 · 1/1.5)² = 1/9 per cell
    m = np.zeros((3, 3), bool)
    m[1, 1] = True
    np.testing.assert_allclose(M.grid_oracle(m, (2, 2)), np.full((2, 2), 1 / 9), atol=1e-15)
    # a grid finer than the mask repeats pixels (each cell lies inside one pixel)
    small = np.array([[1, 0], [0, 1]], bool)
    np.testing.assert_array_equal(M.grid_oracle(small, (4, 4)), np.kron(small, np.ones((2, 2))))


def test_area_weights_rows_average_and_columns_cover_each_pixel_once():
    for n_in, n_out in ((7, 3), (160, 5), (10, 4), (3, 7), (224, 7)):
        w = mapops._area_weights(n_in, n_out)
        assert w.shape == (n_out, n_in) and w.min() >= 0
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)  # each cell: a mean of what it covers
        np.testing.assert_allclose(w.sum(axis=0), n_out / n_in, atol=1e-12)  # each pixel: its full area once
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = rng.random(tuple(rng.integers(5, 40, 2))) < 0.3
        grid = tuple(int(v) for v in rng.integers(1, 9, 2))
        o = M.grid_oracle(m, grid)
        assert o.shape == grid and 0 <= o.min() and o.max() <= 1
        assert o.mean() == pytest.approx(m.mean(), abs=1e-12)  # area weights keep the mask's share


def test_grid_oracle_rejects_bad_grids():
    m = _mask()
    for bad in ((0, 3), (2,), (2, 2, 2), "2x2", "22", (2.5, 2), None):
        with pytest.raises(UsageError, match="grid must be two positive integers"):
            M.grid_oracle(m, bad)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        M.grid_oracle(np.zeros(5), (2, 2))


def test_constant_map_scores_exactly_the_area_share_after_any_upsampling():
    """A constant map stays constant through bilinear upsampling (no rounding noise for min–max)."""
    rng = np.random.default_rng(1)
    cases = [((8, 9), (291, 219), 5.436249914654229)]  # gave noise of 2e-15 before the clip
    cases += [(tuple(rng.integers(1, 15, 2)), tuple(rng.integers(2, 120, 2)), rng.random() * 10) for _ in range(200)]
    for grid, size, v in cases:
        up = M.upsample(np.full(grid, v), size)
        assert up.min() == up.max() == pytest.approx(v)
        m = np.zeros(size, bool)
        m[: size[0] // 2, : max(1, size[1] // 3)] = True
        assert M.activation_precision(np.full(grid, v), m) == pytest.approx(m.mean(), abs=1e-12)


def test_oracle_precision_is_activation_precision_of_the_upsampled_pooled_mask():
    m = _mask(box=(2, 6, 3, 7))  # 4×4 lesion in an 8×8 mask
    grid = (3, 3)
    expected = M.activation_precision(M.upsample(M.grid_oracle(m, grid), m.shape), m)
    assert M.oracle_precision(m, grid) == expected
    assert M.oracle_precision(m, m.shape) == 1.0  # the mask's own grid: a perfect map
    assert m.mean() < M.oracle_precision(m, (2, 2)) < 1.0  # a coarse grid blurs the border
    assert math.isnan(M.oracle_precision(np.zeros((8, 8), bool), grid))


def test_share_of_oracle_pooled_mask_is_one_constant_is_zero_shifted_between():
    m = np.zeros((40, 40), bool)
    m[8:20, 12:26] = True
    grid = (5, 5)
    chance = float(m.mean())
    oracle = M.oracle_precision(m, grid)
    pooled = M.grid_oracle(m, grid)

    def share(s):
        return M.share_of_oracle(M.activation_precision(s, m), chance, oracle)

    assert share(pooled) == pytest.approx(1.0, abs=1e-9)
    assert share(3.0 * pooled) == pytest.approx(1.0, abs=1e-9)  # scale-free, as activation precision
    assert share(np.full(grid, 0.7)) == pytest.approx(0.0, abs=1e-12)
    shifted = np.roll(pooled, 1, axis=1)  # one cell to the right: overlaps the lesion in part
    assert 0.0 < share(shifted) < 1.0
    far = np.zeros(grid)
    far[4, 0] = 1.0  # all evidence in a corner away from the lesion: worse than chance
    assert share(far) < 0.0
    sharp = np.zeros((40, 40))
    sharp[10:18, 14:24] = 1.0  # finer than the grid, inside the lesion: beats the grid oracle
    assert share(sharp) > 1.0


def test_share_of_oracle_undefined_cases():
    assert M.share_of_oracle(0.5, 0.2, 0.6) == pytest.approx(0.75)
    assert M.share_of_oracle(0.1, 0.2, 0.6) == pytest.approx(-0.25)  # not clipped
    assert math.isnan(M.share_of_oracle(1.0, 1.0, 1.0))  # the mask fills the image
    assert math.isnan(M.share_of_oracle(0.5, 0.3, 0.3 + 1e-12))  # oracle no better than chance
    assert math.isnan(M.share_of_oracle(float("nan"), 0.2, 0.6))
    assert math.isnan(M.share_of_oracle(0.5, 0.2, float("nan")))


# --------------------------------------------------------------------------- batched deletion / insertion


def test_deletion_insertion_batch_equals_per_image_exactly_and_streams_chunks():
    predict = _linear_model()
    calls = []

    def counting(batch):
        calls.append(len(batch))
        return predict(batch)

    rng = np.random.default_rng(3)
    imgs = rng.random((3, 2, 8, 8)).astype(np.float32)
    sals = [rng.random((2, 2)) for _ in range(3)]
    modes = ["deletion", "insertion", "insertion"]
    bases = [0.0, "blur", 0.5]
    got = M.deletion_insertion_batch(
        counting, imgs, sals, [1, 1, 0], steps=4, patch=4, baseline=bases, mode=modes, batch_size=4
    )
    assert calls == [4, 4, 4, 3]  # 3 curves × 5 inputs, chunks shared between images
    for i in range(3):
        auc, curve = M.deletion_insertion(
            predict, imgs[i], sals[i], [1, 1, 0][i], steps=4, patch=4, baseline=bases[i], mode=modes[i]
        )  # type: ignore[arg-type]
        assert got[i][0] == auc
        np.testing.assert_array_equal(got[i][1], curve)
    with pytest.raises(UsageError, match="one entry per image"):
        M.deletion_insertion_batch(predict, imgs, sals[:2], [1, 1, 0])
    with pytest.raises(UsageError, match="one value or one per image"):
        M.deletion_insertion_batch(predict, imgs, sals, [1, 1, 0], mode=["deletion"])
    with pytest.raises(InputError, match="share one shape"):
        M.deletion_insertion_batch(predict, [imgs[0], imgs[1][:, :4]], sals[:2], [1, 1])
    with pytest.raises(UsageError, match="target class 5"):
        M.deletion_insertion_batch(predict, imgs, sals, [1, 5, 0])
    assert M.deletion_insertion_batch(predict, imgs[:0], [], []) == []


def test_deletion_insertion_batch_matches_per_image_on_a_real_model():
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(model(torch.from_numpy(batch)), dim=1).double().numpy()

    rng = np.random.default_rng(0)
    imgs = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    sals = [rng.standard_normal((4, 4)) for _ in range(3)]
    targets = [0, 2, 1]
    n = len(imgs)
    got = M.deletion_insertion_batch(
        predict,
        [*imgs, *imgs],
        sals * 2,
        targets * 2,
        steps=6,
        patch=8,
        baseline=[0.0] * n + ["blur"] * n,
        mode=["deletion"] * n + ["insertion"] * n,
        batch_size=11,
    )
    for j in range(2 * n):
        mode, base = ("deletion", 0.0) if j < n else ("insertion", "blur")
        auc, curve = M.deletion_insertion(
            predict, imgs[j % n], sals[j % n], targets[j % n], steps=6, patch=8, baseline=base, mode=mode, batch_size=4
        )  # type: ignore[arg-type]
        np.testing.assert_array_equal(got[j][1][:, 0], curve[:, 0])
        np.testing.assert_allclose(got[j][1][:, 1], curve[:, 1], rtol=0, atol=1e-6)  # batch rounding only
        assert got[j][0] == pytest.approx(auc, abs=1e-6)
        assert curve[0, 1] != curve[-1, 1]  # the perturbation changes the prediction


# ------------------------------------------------------------------------------------------------ properties

_maps = hnp.arrays(np.float64, (6, 6), elements=st.floats(-10, 10, allow_nan=False, width=32))
_masks = hnp.arrays(np.bool_, (12, 12))


@settings(max_examples=60, deadline=None)
@given(_maps, _masks)
def test_localisation_scores_in_unit_interval(s, m):
    for fn in (M.activation_precision, M.activation_sensitivity, M.energy_pointing_game, M.pointing_game):
        v = fn(s, m)
        if not m.any():
            assert math.isnan(v)
        else:
            assert 0.0 <= v <= 1.0 + 1e-12


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 1), min_size=2, max_size=40),
    st.data(),
)
def test_auc_invariant_to_monotone_transforms(labels, data):
    y = np.array(labels)
    scores = np.array(data.draw(st.lists(st.integers(-5, 5), min_size=len(y), max_size=len(y))), dtype=float)
    auc = M.roc_auc_ovr(y, scores)
    if math.isnan(auc):
        assert y.min() == y.max()
        return
    assert 0.0 <= auc <= 1.0
    assert M.roc_auc_ovr(y, np.exp(scores / 3.0)) == pytest.approx(auc)
    assert M.roc_auc_ovr(y, 7.0 * scores**3 + 2.0) == pytest.approx(auc)
    assert M.roc_auc_ovr(y, -scores) == pytest.approx(1.0 - auc)


def test_volume_maps_and_masks_score_as_images_do():
    """The localisation metrics take 3-D maps and masks: trilinear upsampling as torch's, the grid oracle
    pooled exactly over a 3-D grid, the pointing game's tolerance as a ball."""
    import torch

    rng = np.random.default_rng(0)
    grid = rng.random((2, 3, 4, 5))
    ref = torch.nn.functional.interpolate(torch.tensor(grid)[None], size=(6, 8, 10), mode="trilinear")[0]
    np.testing.assert_allclose(M.upsample(grid, (6, 8, 10)), ref.numpy(), atol=1e-12)
    mask = np.zeros((12, 12, 12), dtype=bool)
    mask[2:5, 3:6, 4:8] = True
    oracle = M.grid_oracle(mask, (3, 3, 3))
    assert oracle.shape == (3, 3, 3) and oracle.mean() == pytest.approx(mask.mean())
    assert oracle[0, 0, 1] == pytest.approx(2 * 1 * 4 / 64) and oracle[2, 2, 2] == 0.0
    # a map on the mask's own voxels: all of its mass inside -> precision 1, a hit
    assert M.activation_precision(mask.astype(float), mask) == pytest.approx(1.0)
    assert M.pointing_game(mask.astype(float), mask) == 1.0
    # a peak two voxels off the lesion misses, and hits within a 2-voxel ball
    peak = np.zeros((12, 12, 12))
    peak[2, 3, 2] = 1.0  # (2, 3, 4) is the nearest lesion voxel, two voxels away along the last axis
    assert M.pointing_game(peak, mask) == 0.0
    assert M.pointing_game(peak, mask, tolerance_px=1) == 0.0 and M.pointing_game(peak, mask, tolerance_px=2) == 1.0
    assert M.oracle_precision(mask, (12, 12, 12)) == pytest.approx(1.0)
    with pytest.raises(InputError, match="3-D map cannot be compared with a 2-D mask"):
        M.activation_precision(np.ones((2, 2, 2)), np.ones((4, 4), dtype=bool))
