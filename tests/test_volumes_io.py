"""softcamify.volumes.io: reading NIfTI / npy / npz volumes and masks, and one sentence per bad file."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from softcamify.errors import EXIT_INPUT, InputError
from softcamify.volumes import (
    Volume,
    VolumeGeometry,
    axis_codes,
    is_volume_file,
    read_mask,
    read_volume,
    volume_stem,
)

nib = pytest.importorskip("nibabel")

AFFINE = np.array(
    [
        [-1.5, 0.0, 0.0, 30.0],
        [0.0, 0.0, 2.0, -12.0],
        [0.0, 1.25, 0.0, 7.5],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_names():
    assert is_volume_file("a/b.nii.gz") and is_volume_file("B.NII") and is_volume_file("x.npy")
    assert is_volume_file("x.npz") and not is_volume_file("x.png") and not is_volume_file(".hidden.nii")
    assert not is_volume_file("x.gz") and not is_volume_file(".nii.gz")
    assert volume_stem("dir/case_1.nii.gz") == "case_1" and volume_stem("c.npy") == "c"


def test_nifti_keeps_voxel_order_affine_and_spacing(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    p = _nifti(tmp_path / "scan.nii.gz", data)
    v = read_volume(p)
    assert isinstance(v, Volume) and v.path == p
    assert v.array.dtype == np.float32 and v.array.shape == (1, 4, 5, 6)
    np.testing.assert_array_equal(v.array[0], data.astype(np.float32))  # no reorientation
    np.testing.assert_array_equal(v.affine, AFFINE)
    assert v.spacing == (1.5, 1.25, 2.0)  # the affine's column lengths, as the header's zooms
    assert v.shape == (4, 5, 6) and v.original_shape == (4, 5, 6) and v.channels == 1
    assert v.geometry.axis_codes == tuple(nib.aff2axcodes(AFFINE)) == ("L", "S", "A")


def test_nifti_scaling_is_applied(tmp_path):
    img = nib.Nifti1Image(np.full((3, 3, 3), 10, dtype=np.int16), np.eye(4))
    img.header.set_slope_inter(2.0, -5.0)
    nib.save(img, str(tmp_path / "s.nii"))
    assert float(read_volume(tmp_path / "s.nii").array.max()) == 15.0


def test_channels_first_for_4d_nifti_and_npy(tmp_path):
    data = np.random.default_rng(0).normal(size=(4, 5, 6, 2)).astype(np.float32)
    v = read_volume(_nifti(tmp_path / "two.nii", data))
    assert v.array.shape == (2, 4, 5, 6) and v.original_shape == (4, 5, 6, 2)
    np.testing.assert_array_equal(v.array[1], data[..., 1])
    np.save(tmp_path / "two.npy", np.moveaxis(data, -1, 0))
    w = read_volume(tmp_path / "two.npy")
    np.testing.assert_array_equal(w.array, v.array)
    np.testing.assert_array_equal(w.affine, np.eye(4))
    assert w.spacing == (1.0, 1.0, 1.0)


def test_npz_with_affine(tmp_path):
    data = np.ones((3, 4, 5), dtype=np.uint8)
    np.savez(tmp_path / "v.npz", volume=data, affine=AFFINE)
    v = read_volume(tmp_path / "v.npz")
    assert v.array.shape == (1, 3, 4, 5)
    np.testing.assert_array_equal(v.affine, AFFINE)
    np.savez(tmp_path / "one.npz", whatever=data)
    assert read_volume(tmp_path / "one.npz").shape == (3, 4, 5)


def test_axis_codes_match_nibabel():
    rng = np.random.default_rng(1)
    for _ in range(20):
        perm = rng.permutation(3)
        aff = np.eye(4)
        aff[:3, :3] = np.eye(3)[:, perm] * rng.choice([-1, 1], size=3) * rng.uniform(0.5, 3, size=3)
        aff[:3, :3] += rng.normal(scale=0.05, size=(3, 3))  # slightly oblique
        assert axis_codes(aff) == tuple(nib.aff2axcodes(aff))


def test_geometry_dict_round_trip():
    g = VolumeGeometry((4, 5, 6), AFFINE, (1.5, 1.25, 2.0))
    assert VolumeGeometry.from_dict(g.to_dict()) == g


def test_mask_matches_volume(tmp_path):
    vol = read_volume(_nifti(tmp_path / "v.nii.gz", np.zeros((4, 5, 6), np.float32)))
    m = np.zeros((4, 5, 6), np.uint8)
    m[1, 2, 3] = 1
    mask = read_mask(_nifti(tmp_path / "m.nii.gz", m), vol)
    assert mask.dtype == bool and mask.sum() == 1 and mask[1, 2, 3]
    _nifti(tmp_path / "wrong.nii.gz", np.zeros((4, 5, 7), np.uint8))
    with pytest.raises(InputError) as e:
        read_mask(tmp_path / "wrong.nii.gz", vol)
    msg = str(e.value)
    assert "wrong.nii.gz" in msg and "v.nii.gz" in msg and "(4, 5, 7)" in msg and msg.count(". ") == 0


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a phrase the message must hold)."""
    out: dict[str, tuple[Path, str]] = {}
    np.save(tmp_path / "flat.npy", np.zeros((5, 6), np.float32))
    out["rank"] = (tmp_path / "flat.npy", "2 axes")
    np.save(tmp_path / "empty.npy", np.zeros((0, 4, 4), np.float32))
    out["empty"] = (tmp_path / "empty.npy", "is empty")
    a = np.zeros((4, 4, 4), np.float32)
    a[1, 1, 1] = np.nan
    a[2, 2, 2] = np.inf
    np.save(tmp_path / "nan.npy", a)
    out["nan"] = (tmp_path / "nan.npy", "2 NaN or infinite")
    _nifti(tmp_path / "nan.nii.gz", a)
    out["nan_nifti"] = (tmp_path / "nan.nii.gz", "NaN")
    noise = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    whole = gzip.compress(nib.Nifti1Image(noise, np.eye(4)).to_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])  # the data cut in half
    out["truncated"] = (tmp_path / "cut.nii.gz", "truncated")
    (tmp_path / "head.nii.gz").write_bytes(whole[:200])  # not even the whole header
    out["truncated_header"] = (tmp_path / "head.nii.gz", "truncated")
    (tmp_path / "junk.nii").write_bytes(b"not a nifti file at all" * 30)
    out["junk"] = (tmp_path / "junk.nii", "not a readable NIfTI")
    (tmp_path / "zero.nii.gz").write_bytes(b"")
    out["zero"] = (tmp_path / "zero.nii.gz", "empty file")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    out["junk_npy"] = (tmp_path / "junk.npy", "not a readable numpy")
    np.save(tmp_path / "series.npy", np.zeros((40, 4, 4, 4), np.float32))
    out["channels"] = (tmp_path / "series.npy", "40 channels")
    np.save(tmp_path / "text.npy", np.array([["a"]], dtype="<U1")[None])
    out["dtype"] = (tmp_path / "text.npy", "holds <U1")
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    out["pickle"] = (tmp_path / "pickled.npy", "allow_pickle=False")  # never unpickled
    out["missing"] = (tmp_path / "nope.nii.gz", "does not exist")
    return out


def test_bad_volumes_one_sentence_naming_the_file(tmp_path):
    for name, (path, phrase) in _bad_files(tmp_path).items():
        with pytest.raises(InputError) as e:
            read_volume(path)
        msg = str(e.value)
        assert e.value.exit_code == EXIT_INPUT, name
        assert str(path) in msg and phrase in msg, (name, msg)
        assert msg.endswith(".") and "\n" not in msg, (name, msg)


def test_missing_nibabel_names_the_extra(tmp_path, monkeypatch):
    p = _nifti(tmp_path / "v.nii.gz", np.zeros((3, 3, 3), np.float32))
    import builtins

    real_import = builtins.__import__

    def no_nibabel(name, *args, **kwargs):
        if name == "nibabel" or name.startswith("nibabel."):
            raise ImportError("No module named 'nibabel'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nibabel)
    with pytest.raises(InputError, match=r"softcamify\[volumes\]") as e:
        read_volume(p)
    assert str(p) in str(e.value)
    np.save(tmp_path / "v.npy", np.zeros((3, 3, 3), np.float32))
    assert read_volume(tmp_path / "v.npy").shape == (3, 3, 3)  # numpy volumes need no nibabel
