"""softcamify.volumes.synth3d and ``softcamify datasets synth3d``; volume datasets in softcamify.data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from softcamify.data import discover, mask_path_for, verify_samples
from softcamify.errors import InputError, OutputError, UsageError
from softcamify.volumes import VolumeConfig, read_mask, read_volume
from softcamify.volumes.synth3d import make_volumes

nib = pytest.importorskip("nibabel")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth3d") / "data"
    return out, make_volumes(out, n=10, shape=(16, 20, 24), seed=3)


def test_cli_writes_the_layout_reproducibly(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    r = run_cli("datasets", "synth3d", a, "--n", "6", "--shape", "16,16,20", "--seed", "5", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["format"] == "nii" and summary["shape"] == [16, 16, 20] and summary["n"] == 6
    assert summary["counts"] == {"train": {"healthy": 2, "lesion": 2}, "val": {"healthy": 1, "lesion": 1},
                                 "test": {"healthy": 0, "lesion": 0}}  # fmt: skip
    r = run_cli("datasets", "synth3d", b, "--n", "6", "--shape", "16,16,20", "--seed", "5")
    assert r.returncode == 0, r.stderr
    fa, fb = _files(a), _files(b)
    assert fa == fb  # byte-identical for a seed
    assert sorted(fa) == sorted(
        ["manifest.json"]
        + [f"{s}/{c}/{c}_{i:05d}.nii.gz" for c, s, i in _plan()]
        + [f"masks/{s}/{c}/{c}_{i:05d}.nii.gz" for c, s, i in _plan()]
    )
    c = tmp_path / "c"
    assert run_cli("datasets", "synth3d", c, "--n", "6", "--shape", "16,16,20", "--seed", "6").returncode == 0
    assert _files(c)["train/lesion/lesion_00003.nii.gz"] != fa["train/lesion/lesion_00003.nii.gz"]


def _plan():
    return [
        ("healthy", "train", 0),
        ("healthy", "train", 1),
        ("healthy", "val", 2),
        ("lesion", "train", 3),
        ("lesion", "train", 4),
        ("lesion", "val", 5),
    ]


def test_cli_errors_leave_nothing_behind(tmp_path):
    out = tmp_path / "x"
    r = run_cli("datasets", "synth3d", out, "--shape", "8,16,16")
    assert r.returncode == 2 and "--shape" in r.stderr and not out.exists()
    r = run_cli("datasets", "synth3d", out, "--format", "png")
    assert r.returncode == 2 and "--format 'png' is not one of nii, npy" in r.stderr and not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run_cli("datasets", "synth3d", out, "--n", "4", "--shape", "16")
    assert r.returncode == 6 and "--force" in r.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_volumes_geometry_masks_and_classes(synth):
    out, manifest = synth
    assert manifest["classes"] == ["healthy", "lesion"] and manifest["spacing"] == [1.5, 1.5, 1.5]
    for item in manifest["volumes"]:
        vol = read_volume(out / item["path"])
        assert vol.shape == (16, 20, 24) and vol.spacing == (1.5, 1.5, 1.5)
        np.testing.assert_array_equal(vol.affine, np.array(manifest["affine"]))
        assert vol.affine[0, 3] == pytest.approx(-(16 - 1) * 1.5 / 2)  # centred on the world origin
        mask = read_mask(out / item["mask"], vol)
        lesions = item["lesions"]
        if item["class"] == "healthy":
            assert not mask.any() and lesions == []
        else:
            assert 1 <= len(lesions) <= 3 and mask.sum() == sum(les["voxels"] for les in lesions)
            # lesions are brighter than the tissue around them (window -1000,400: tissue ~0.74)
            assert vol.array[0][mask].mean() > vol.array[0][~mask & (vol.array[0] > -500)].mean() + 100


def test_npy_format(tmp_path):
    m = make_volumes(tmp_path / "n", n=4, shape=(16, 16, 16), seed=1, fmt="npy")
    first = m["volumes"][-1]
    assert first["path"].endswith(".npy")
    vol = read_volume(tmp_path / "n" / first["path"])
    assert vol.array.shape == (1, 16, 16, 16)
    np.testing.assert_array_equal(vol.affine, np.eye(4))
    with pytest.raises(OutputError):
        make_volumes(tmp_path / "n", n=4, shape=(16, 16, 16), seed=1, fmt="npy")
    m2 = make_volumes(tmp_path / "n", n=2, shape=(16, 16, 16), seed=1, fmt="nii", force=True)
    files = sorted(str(p.relative_to(tmp_path / "n")) for p in (tmp_path / "n").rglob("*.*"))
    assert files == sorted(["manifest.json"] + [v["path"] for v in m2["volumes"]] + [v["mask"] for v in m2["volumes"]])
    with pytest.raises(UsageError, match="fmt"):
        make_volumes(tmp_path / "z", fmt="dcm")


def test_discovery_reads_the_synth3d_layout(synth):
    out, manifest = synth
    splits = discover(out, volumes=True)
    assert splits.class_names == ["healthy", "lesion"] and splits.layout == "splits"
    by_split = {s: sorted(str(x.path.relative_to(out)) for x in getattr(splits, s)) for s in ("train", "val", "test")}
    for s in ("train", "val", "test"):
        assert by_split[s] == sorted(v["path"] for v in manifest["volumes"] if v["split"] == s)
    for sample in splits.train:
        mask = mask_path_for(sample.path, out, out / "masks")
        assert mask is not None and mask.name == sample.path.name and "masks" in mask.parts
    good, bad = verify_samples(splits.train + splits.val)
    assert len(good) == len(splits.train) + len(splits.val) and bad == []
    with pytest.raises(InputError, match="contains no images"):  # an image dataset it is not
        discover(out)


def test_flat_folders_csv_and_masks_of_another_ending(tmp_path):
    root = tmp_path / "flat"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            np.save(root / c / f"{c}{i}.npy", np.full((4, 4, 4), i, np.float32))
    (root / "a" / "notes.png").write_bytes(b"")  # not a volume: ignored by a volume dataset
    (root / "masks" / "a").mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)), str(root / "masks" / "a" / "a0.nii.gz"))
    splits = discover(root, volumes=True, val_split=0.34)
    assert splits.layout == "folders" and splits.class_names == ["a", "b"]
    assert len(splits.train) + len(splits.val) == 6
    assert mask_path_for(root / "a" / "a0.npy", root, root / "masks") == root / "masks" / "a" / "a0.nii.gz"
    assert mask_path_for(root / "a" / "a1.npy", root, root / "masks") is None
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label,split\nflat/a/a0.npy,a,train\nflat/b/b0.npy,b,train\nflat/a/a1.npy,a,val\n")
    c = discover(None, labels_csv=csv)
    assert [s.path.name for s in c.train] == ["a0.npy", "b0.npy"] and c.val[0].path.name == "a1.npy"
    np.save(root / "b" / "bad.npy", np.zeros((4, 4), np.float32))
    good, bad = verify_samples(discover(root, volumes=True, val_split=0.34).train + splits.val)
    assert len(bad) == 1 and "bad.npy" in bad[0][1] and "2 axes" in bad[0][1]
    with pytest.raises(InputError, match="bad.npy"):
        verify_samples([s for s, _ in bad], strict=True)
    np.save(root / "stray.npy", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(InputError, match=r"Volume .*stray.npy lies directly in"):
        discover(root, volumes=True)
    (root / "c").mkdir()
    (root / "c" / "x.png").write_bytes(b"png")
    (root / "stray.npy").unlink()
    with pytest.raises(InputError, match=r"c contains no volumes \(nii.gz, nii, npy, npz\)"):
        discover(root, volumes=True)


def test_image_datasets_unchanged_by_volume_files(tmp_path):
    from PIL import Image

    for c in ("x", "y"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / c / "i.png")
        np.save(tmp_path / c / "v.npy", np.zeros((4, 4, 4)))
    splits = discover(tmp_path, val_split=0.5)
    assert {s.path.name for s in splits.train + splits.val} == {"i.png"}
    vols = discover(tmp_path, volumes=True, val_split=0.5)
    assert {s.path.name for s in vols.train + vols.val} == {"v.npy"}


def test_volume_dataset_preprocesses_and_flips(synth):
    torch = pytest.importorskip("torch")
    from softcamify.data import VolumeDataset

    out, _ = synth
    splits = discover(out, volumes=True)
    cfg = VolumeConfig(target_shape=(8, 8, 8), window=(-1000, 400))
    ds = VolumeDataset(splits.train, cfg)
    x, label, index = ds[len(ds) - 1]
    assert x.shape == (1, 8, 8, 8) and x.dtype == torch.float32 and index == len(ds) - 1
    assert label == splits.train[-1].label == 1 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    torch.manual_seed(0)
    flipped = VolumeDataset(splits.train, cfg, train=True, flip_p=1.0, flip_axes=(0, 2))[len(ds) - 1][0]
    torch.testing.assert_close(flipped, torch.flip(x, dims=(1, 3)))
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    batch, labels, _ = next(iter(loader))
    assert batch.shape == (2, 1, 8, 8, 8) and labels.tolist() == [s.label for s in splits.train[:2]]
    with pytest.raises(UsageError):
        VolumeDataset(splits.train, cfg, flip_p=2.0)
