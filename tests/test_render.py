"""Colour maps, shared scaling, overlays, legends and PNG writing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from softcamify import render as R
from softcamify.errors import InputError, OutputError, UsageError


@pytest.mark.parametrize("name", list(R.COLORMAPS))
def test_luts_are_256x3_uint8(name):
    lut = R.colormap(name)
    assert lut.shape == (256, 3) and lut.dtype == np.uint8


def test_diverging_lut_endpoints_and_white_middle():
    lut = R.colormap("RdBu_r").astype(int)
    lo, mid, hi = lut[0], lut[128], lut[255]
    assert lo[2] > lo[0] and lo[2] > lo[1]  # blue end
    assert hi[0] > hi[1] and hi[0] > hi[2]  # red end
    assert mid.min() >= 240  # near white at 0
    assert np.abs(lut[127] - lut[128]).max() <= 3  # continuous through the middle
    assert R.colormap("diverging").tolist() == R.colormap("RdBu_r").tolist()
    assert R.is_diverging("coolwarm") and not R.is_diverging("inferno")
    bwr = R.colormap("bwr")
    assert bwr[0].tolist() == [0, 0, 255] and bwr[255].tolist() == [255, 0, 0]


def test_sequential_lut_is_dark_to_bright():
    lut = R.colormap("inferno").astype(int)
    brightness = lut.sum(axis=1)
    assert brightness[0] < 20 and brightness[255] > 600
    assert np.all(np.diff(brightness[::32]) > 0)
    jet = R.colormap("jet")
    assert jet[0].tolist() == [0, 0, 128] and jet[255].tolist() == [128, 0, 0]


def test_unknown_colormap():
    with pytest.raises(UsageError):
        R.colormap("viridis-ish")


def test_lut_is_not_shared_mutable_state():
    lut = R.colormap("RdBu_r")
    lut[:] = 0
    assert R.colormap("RdBu_r")[255].sum() > 0


def test_scale_maps_shared_signed_scale():
    maps = np.zeros((3, 4, 4))
    maps[0, 0, 0] = 2.0
    maps[1, 1, 1] = -4.0
    maps[2, 2, 2] = 1.0
    scaled, vmin, vmax = R.scale_maps(maps)
    assert (vmin, vmax) == (-4.0, 4.0)
    assert scaled.shape == maps.shape and scaled.dtype == np.float32
    assert scaled[0, 0, 0] == pytest.approx(0.5)  # not stretched to 1 per class
    assert scaled[1, 1, 1] == pytest.approx(-1.0)
    assert scaled[2, 2, 2] == pytest.approx(0.25)
    assert scaled[0, 1, 1] == 0.0


def test_scale_maps_positive_clips_negatives():
    maps = np.array([[[-3.0, 1.0], [2.0, 0.0]], [[4.0, -1.0], [0.5, 0.0]]])
    scaled, vmin, vmax = R.scale_maps(maps, positive=True)
    assert (vmin, vmax) == (0.0, 4.0)
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    assert scaled[0, 0, 0] == 0.0 and scaled[1, 0, 1] == 0.0
    assert scaled[0, 1, 0] == pytest.approx(0.5)


def test_scale_maps_zero_and_bad_input():
    scaled, vmin, vmax = R.scale_maps(np.zeros((2, 3, 3)))
    assert vmax == 0.0 and not scaled.any()
    scaled, _, _ = R.scale_maps(np.array([[1.0, -2.0]]))  # single h×w map keeps its shape
    assert scaled.shape == (1, 2)
    with pytest.raises(InputError):
        R.scale_maps(np.full((1, 2, 2), np.nan))


def test_apply_colormap_ranges():
    m = np.array([[-1.0, 0.0, 1.0, 5.0]])
    rgb = R.apply_colormap(m, "RdBu_r")
    lut = R.colormap("RdBu_r")
    assert rgb[0, 0].tolist() == lut[0].tolist()
    assert rgb[0, 1].tolist() == lut[128].tolist()  # 0 -> middle (near white)
    assert rgb[0, 2].tolist() == lut[255].tolist() == rgb[0, 3].tolist()  # clipped
    seq = R.apply_colormap(np.array([[-1.0, 0.0, 1.0]]), "inferno")
    assert seq[0, 0].tolist() == seq[0, 1].tolist() == R.colormap("inferno")[0].tolist()


def test_overlay_size_alpha_zero_and_inputs():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    m = rng.uniform(-1, 1, (7, 7))
    out = R.overlay(img, m, alpha=0.5)
    assert isinstance(out, Image.Image) and out.size == (50, 30) and out.mode == "RGB"
    same = R.overlay(Image.fromarray(img), m, alpha=0.0)
    assert np.array_equal(np.asarray(same), img)
    full = np.asarray(R.overlay(img, np.zeros((7, 7)), alpha=1.0))
    assert np.all(full == R.colormap("RdBu_r")[128])  # zero evidence, fully opaque -> middle colour
    weighted = np.asarray(R.overlay(img, np.zeros((7, 7)), alpha=1.0, weighted=True))
    assert np.array_equal(weighted, img)  # no evidence, weighted alpha -> image unchanged
    grey = R.overlay(np.zeros((10, 12)), np.ones((2, 2)), alpha=0.5, cmap="inferno")
    assert grey.size == (12, 10)
    floats = R.overlay(np.ones((4, 4, 3)), np.zeros((2, 2)), alpha=0.0)
    assert np.asarray(floats).max() == 255
    with pytest.raises(UsageError):
        R.overlay(img, m, alpha=1.5)
    with pytest.raises(InputError):
        R.overlay(np.zeros((4, 4, 2)), m)


def test_overlay_positive_mode_ignores_negative_evidence():
    img = np.full((8, 8, 3), 100, dtype=np.uint8)
    neg = np.full((2, 2), -1.0)
    out = np.asarray(R.overlay(img, neg, alpha=1.0, cmap="inferno"))
    assert np.all(out == R.colormap("inferno")[0])  # negatives clip to the bottom of a sequential map


def test_heatmap_and_colorbar():
    hm = R.heatmap(np.array([[-1.0, 1.0]]), "RdBu_r", size=(4, 8))
    assert hm.size == (8, 4)
    bar = R.colorbar(-2.0, 2.0, "RdBu_r", width=200, height=40)
    assert bar.size == (200, 40)
    px = np.asarray(bar)
    lut = R.colormap("RdBu_r")
    assert px[0, 0].tolist() == lut[0].tolist() and px[0, -1].tolist() == lut[255].tolist()
    assert R.colorbar(0, 1, "inferno", width=64, height=10).size == (64, 10)  # too small for labels


def test_save_png_atomic_and_no_clobber(tmp_path):
    img = R.overlay(np.zeros((6, 6, 3), dtype=np.uint8), np.ones((2, 2)))
    out = R.save_png(img, tmp_path / "a.png")
    assert Image.open(out).size == (6, 6)
    with pytest.raises(OutputError):
        R.save_png(img, tmp_path / "a.png")
    R.save_png(np.zeros((3, 3, 3), dtype=np.uint8), tmp_path / "a.png", force=True)
    assert Image.open(out).size == (3, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
