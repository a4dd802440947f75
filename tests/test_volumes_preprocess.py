"""softcamify.volumes.preprocess: VolumeConfig, trilinear resampling, intensity, evidence back to the scan."""

from __future__ import annotations

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from softcamify.cli._common import VOLUME, Shared, command, handle_errors
from softcamify.cli._volumes import volume_config, volume_options_given
from softcamify.errors import InputError, UsageError
from softcamify.volumes import (
    Volume,
    VolumeConfig,
    VolumeGeometry,
    evidence_to_scan,
    preprocess_volume,
    preprocessed_shape,
    resample,
)
from softcamify.volumes.preprocess import apply_intensity, preprocessed_geometry


def _volume(a: np.ndarray, spacing=(1.0, 1.0, 1.0), affine=None) -> Volume:
    a = np.asarray(a, dtype=np.float32)
    arr = a if a.ndim == 4 else a[None]
    aff = np.diag([*spacing, 1.0]) if affine is None else affine
    return Volume(arr, VolumeGeometry(tuple(arr.shape[1:]), aff, tuple(spacing)))


def test_resample_exact_values_on_a_line():
    a = np.array([0.0, 10.0], dtype=np.float32).reshape(1, 1, 2)
    # 2 -> 4 on voxel centres: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to the last)
    np.testing.assert_allclose(resample(a, (1, 1, 4))[0, 0], [0.0, 2.5, 7.5, 10.0])
    b = np.array([0.0, 3.0, 6.0, 9.0], dtype=np.float32).reshape(4, 1, 1)
    # 4 -> 2: sources 0.5 and 2.5
    np.testing.assert_allclose(resample(b, (2, 1, 1))[:, 0, 0], [1.5, 7.5])
    # 4 -> 3 (non-integer ratio): sources 1/6, 3/2, 17/6
    np.testing.assert_allclose(resample(b, (3, 1, 1))[:, 0, 0], [0.5, 4.5, 8.5], rtol=1e-6)


def test_resample_is_separable_trilinear():
    a = np.zeros((2, 2, 2), dtype=np.float32)
    a[1, 1, 1] = 8.0
    out = resample(a, (4, 4, 4))
    # the centre voxels (1..2) sit 0.25 and 0.75 of the way: weights multiply along the axes
    assert out[2, 2, 2] == pytest.approx(8.0 * 0.75**3)
    assert out[1, 2, 2] == pytest.approx(8.0 * 0.25 * 0.75**2)
    assert out[3, 3, 3] == 8.0 and out[0, 0, 0] == 0.0


def test_resample_matches_torch_trilinear():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 7)).astype(np.float32)
    for shape in [(6, 10, 3), (1, 1, 1), (7, 2, 14), (3, 5, 7)]:
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(x)[None], size=shape, mode="trilinear", align_corners=False
        )[0].numpy()
        np.testing.assert_allclose(resample(x, shape), ref, atol=2e-6)


def test_resample_keeps_constants_and_refuses_bad_shapes():
    np.testing.assert_array_equal(resample(np.full((3, 4, 5), 7.0), (9, 2, 6)), np.full((9, 2, 6), 7.0, np.float32))
    with pytest.raises(UsageError):
        resample(np.zeros((2, 2, 2)), (2, 0, 2))
    with pytest.raises(InputError):
        resample(np.zeros((2, 2)), (2, 2, 2))


def test_window_and_zscore_exact():
    v = _volume(np.array([-2000.0, -1000.0, -300.0, 400.0, 3000.0]).reshape(1, 1, 5))
    out = apply_intensity(v.array, VolumeConfig(window=(-1000, 400)))
    np.testing.assert_allclose(out[0, 0, 0], [0.0, 0.0, 0.5, 1.0, 1.0])
    z = apply_intensity(np.array([1.0, 3.0]).reshape(1, 1, 1, 2), VolumeConfig(zscore=True))
    np.testing.assert_allclose(z.ravel(), [-1.0, 1.0])
    flat = apply_intensity(np.full((1, 2, 2, 2), 5.0), VolumeConfig(zscore=True))
    np.testing.assert_array_equal(flat, 0.0)  # a constant volume: zeros, not NaN


def test_preprocess_order_channels_intensity_resampling():
    a = np.array([0.0, 400.0]).reshape(1, 1, 2)
    cfg = VolumeConfig(target_shape=(1, 1, 4), window=(0, 400), channels=3)
    out = preprocess_volume(_volume(a), cfg)
    assert out.shape == (3, 1, 1, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out[2, 0, 0], [0.0, 0.25, 0.75, 1.0])
    with pytest.raises(InputError, match="2 channels but the model takes 3"):
        preprocess_volume(_volume(np.zeros((2, 2, 2, 2))), cfg)


def test_target_spacing_shape_and_geometry():
    g = VolumeGeometry((10, 20, 30), np.diag([2.0, 1.0, 0.5, 1.0]), (2.0, 1.0, 0.5))
    cfg = VolumeConfig(target_spacing=(1.0, 1.0, 1.5))
    assert preprocessed_shape(g, cfg) == (20, 20, 10)
    pg = preprocessed_geometry(g, cfg)
    assert pg.shape == (20, 20, 10) and pg.spacing == (1.0, 1.0, 1.5)
    # the field of view is kept: the outer faces of the first and last voxels stay in place
    first_face = g.affine @ np.array([-0.5, -0.5, -0.5, 1.0])
    last_face = g.affine @ np.array([9.5, 19.5, 29.5, 1.0])
    np.testing.assert_allclose(pg.affine @ np.array([-0.5, -0.5, -0.5, 1.0]), first_face)
    np.testing.assert_allclose(pg.affine @ np.array([19.5, 19.5, 9.5, 1.0]), last_face)


def test_evidence_to_scan_puts_a_coarse_peak_where_it_belongs():
    g = VolumeGeometry((12, 8, 16), np.eye(4), (1.0, 1.0, 1.0))
    cfg = VolumeConfig(target_shape=(8, 8, 8))
    coarse = np.zeros((2, 2, 2), np.float32)
    coarse[1, 0, 1] = 1.0  # the far-D, near-H, far-W octant of the field of view
    back = evidence_to_scan(coarse, g, cfg)
    assert back.shape == (12, 8, 16) and back.dtype == np.float32
    i, j, k = np.unravel_index(np.argmax(back), back.shape)
    assert i >= 6 and j < 4 and k >= 8
    np.testing.assert_array_equal(back[9:, :2, 12:], 1.0)  # beyond the last centre: clamped, exact
    # the same as upsampling to the preprocessed shape and undoing the resampling, up to interpolation
    two_step = resample(resample(coarse, (8, 8, 8)), (12, 8, 16))
    assert np.abs(two_step - back).max() < 0.15
    k_maps = evidence_to_scan(np.stack([coarse, -coarse]), g, cfg)
    assert k_maps.shape == (2, 12, 8, 16)
    np.testing.assert_array_equal(k_maps[1], -back)


def test_evidence_to_scan_round_trip_of_a_smooth_volume():
    g = VolumeGeometry((16, 16, 16), np.eye(4), (1.0, 1.0, 1.0))
    z, y, x = np.meshgrid(*[np.arange(16.0)] * 3, indexing="ij")
    smooth = (z + 2 * y - x).astype(np.float32)  # linear: resampling keeps it inside the clamped border
    pre = preprocess_volume(_volume(smooth), VolumeConfig(target_shape=(8, 8, 8)))[0]
    back = evidence_to_scan(pre, g, VolumeConfig(target_shape=(8, 8, 8)))
    np.testing.assert_allclose(back[2:-2, 2:-2, 2:-2], smooth[2:-2, 2:-2, 2:-2], atol=1e-4)


def test_config_checks_and_dict_round_trip():
    cfg = VolumeConfig.from_options(window="-1000,400", target_shape="64x64x32", channels=1)
    assert cfg.window == (-1000.0, 400.0) and cfg.target_shape == (64, 64, 32)
    assert VolumeConfig.from_dict(cfg.to_dict()) == cfg
    d = cfg.to_dict()
    assert d == {
        "spatial_dims": 3,
        "target_shape": [64, 64, 32],
        "target_spacing": None,
        "window": [-1000.0, 400.0],
        "zscore": False,
        "channels": 1,
    }
    assert VolumeConfig.from_options(target_spacing="1.5").target_spacing == (1.5, 1.5, 1.5)
    bad = [
        ({"window": "400,-1000"}, "window"),
        ({"window": "1,2,3"}, "window"),
        ({"window": "-1000,400", "zscore": True}, "zscore"),
        ({"target_shape": "64,64,64", "target_spacing": "1"}, "target_spacing"),
        ({"target_shape": "64,0,64"}, "target_shape"),
        ({"target_shape": "64.5"}, "target_shape"),
        ({"target_spacing": "a,b,c"}, "target_spacing"),
        ({"target_shape": "1,2"}, "target_shape"),
    ]
    for kwargs, param in bad:
        with pytest.raises(UsageError) as e:
            VolumeConfig.from_options(**kwargs)
        assert param in e.value.params, (kwargs, e.value.params)
        assert str(e.value).endswith(".") and "\n" not in str(e.value)


def test_cli_option_bundle():
    """The volume options a command takes with Shared(*VOLUME): parsed into a VolumeConfig, errors name flags."""
    app = typer.Typer()
    seen = {}

    @command(app, "run")
    def run(o: Shared = Shared(*VOLUME)) -> None:
        with handle_errors():
            seen["given"] = volume_options_given(o)
            seen["config"] = volume_config(o, channels=2)

    @app.command("other")
    def other() -> None:  # a second command, so that typer keeps "run" as a subcommand
        pass

    runner = CliRunner()
    r = runner.invoke(app, ["run", "--window", "-1000,400", "--target-shape", "32"])
    assert r.exit_code == 0, r.output
    assert seen["given"] and seen["config"] == VolumeConfig(window=(-1000, 400), target_shape=(32, 32, 32), channels=2)
    r = runner.invoke(app, ["run"])
    assert r.exit_code == 0 and not seen["given"] and seen["config"] == VolumeConfig(channels=2)
    r = runner.invoke(app, ["run", "--zscore", "--window=0,1"])
    assert r.exit_code == 2 and "--window and --zscore both scale the intensities" in r.output
