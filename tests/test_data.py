"""softcamify.data: dataset discovery (three layouts), errors, verification, transforms, masks."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from softcamify.data import (
    DatasetSplits,
    EvalTransform,
    ImageDataset,
    Sample,
    build_transform,
    class_counts,
    discover,
    mask_path_for,
    verify_samples,
)
from softcamify.errors import InputError, UsageError
from softcamify.images import preprocess


def _img(path: Path, seed: int = 0, size: tuple[int, int] = (24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _tree(root: Path, spec: dict[str, int], seed: int = 0) -> None:
    """spec: {'cat': 3, 'dog': 2} -> root/cat/0.png ... (relative folders allowed in keys)."""
    for name, count in spec.items():
        for i in range(count):
            _img(root / name / f"{i}.png", seed=seed + i)


def _names(samples: list[Sample], root: Path) -> list[str]:
    return sorted(s.path.relative_to(root).as_posix() for s in samples)


# --- layouts ---------------------------------------------------------------------------------------------


def test_layout_split_folders(tmp_path):
    _tree(tmp_path / "train", {"b_dog": 3, "a_cat": 4})
    _tree(tmp_path / "val", {"b_dog": 1, "a_cat": 2})
    _tree(tmp_path / "test", {"a_cat": 1})
    (tmp_path / "train" / "a_cat" / "notes.txt").write_text("ignored")
    (tmp_path / "train" / "a_cat" / ".hidden.png").write_bytes(b"junk")
    (tmp_path / "masks").mkdir()  # extra folders next to the splits are ignored
    ds = discover(tmp_path)
    assert isinstance(ds, DatasetSplits) and ds.layout == "splits"
    assert ds.class_names == ["a_cat", "b_dog"]
    assert class_counts(ds.train, 2) == [4, 3]
    assert class_counts(ds.val, 2) == [2, 1]
    assert class_counts(ds.test, 2) == [1, 0]
    assert all(s.label == 0 for s in ds.train if s.path.parent.name == "a_cat")
    assert ds.to_dict()["counts"]["val"] == {"a_cat": 2, "b_dog": 1}


def test_layout_train_only_is_split(tmp_path):
    _tree(tmp_path / "train", {"x": 10, "y": 5})
    ds = discover(tmp_path, val_split=0.2)
    assert class_counts(ds.val, 2) == [2, 1] and class_counts(ds.train, 2) == [8, 4]
    _tree(tmp_path / "val", {"x": 1, "y": 1})
    with pytest.raises(UsageError, match="^val_split conflicts with the existing split folders in") as e:
        discover(tmp_path, val_split=0.3)
    assert e.value.param == "val_split"


def test_layout_evaluation_set_without_train(tmp_path):
    _tree(tmp_path / "test", {"b": 2, "a": 3})
    _tree(tmp_path / "val", {"c": 1, "a": 1})
    ds = discover(tmp_path)
    assert ds.layout == "splits" and ds.class_names == ["a", "b", "c"] and ds.train == []
    assert class_counts(ds.test, 3) == [3, 2, 0] and class_counts(ds.val, 3) == [1, 0, 1]
    fixed = discover(tmp_path, class_names=["c", "b", "a", "d"])  # the model's class order
    assert class_counts(fixed.test, 4) == [0, 2, 3, 0]


def test_layout_class_folders_stratified_and_seeded(tmp_path):
    _tree(tmp_path, {"healthy": 20, "sick": 10, "zz_rare": 5})
    a = discover(tmp_path)
    assert a.layout == "folders" and a.class_names == ["healthy", "sick", "zz_rare"]
    assert class_counts(a.val, 3) == [4, 2, 1]  # 20 % per class, at least one
    assert class_counts(a.train, 3) == [16, 8, 4]
    assert a.test == []
    b = discover(tmp_path)
    assert _names(a.val, tmp_path) == _names(b.val, tmp_path)
    c = discover(tmp_path, seed=1)
    assert _names(a.val, tmp_path) != _names(c.val, tmp_path)
    assert not set(_names(a.val, tmp_path)) & set(_names(a.train, tmp_path))
    d = discover(tmp_path, val_split=0.5)
    assert class_counts(d.val, 3) == [10, 5, 2]
    assert len(discover(tmp_path, val_split=0.0).val) == 0
    with pytest.raises(UsageError, match=r"^val_split 1\.0 must be at least 0 and below 1\.$") as e:
        discover(tmp_path, val_split=1.0)
    assert e.value.param == "val_split"


def test_split_of_one_class_is_stable_when_another_is_added(tmp_path):
    _tree(tmp_path, {"a": 12, "b": 12})
    before = [s for s in discover(tmp_path).val if s.path.parent.name == "a"]
    _tree(tmp_path, {"c": 7})
    after = [s for s in discover(tmp_path).val if s.path.parent.name == "a"]
    assert _names(before, tmp_path) == _names(after, tmp_path)


def test_nested_images_unicode_and_spaces(tmp_path):
    _img(tmp_path / "klasse ä" / "sub dir" / "bild 1.png")
    _img(tmp_path / "klasse ä" / "bild 2.JPG", seed=2)
    _img(tmp_path / "その他" / "x y.png", seed=3)
    _img(tmp_path / "その他" / "z.png", seed=4)
    ds = discover(tmp_path, val_split=0.0)
    assert ds.class_names == sorted(["klasse ä", "その他"])
    assert len(ds.train) == 4
    assert any(s.path.name == "bild 1.png" for s in ds.train)


def test_symlink_loop_does_not_hang(tmp_path):
    _tree(tmp_path, {"a": 2, "b": 2})
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")
    os.symlink(tmp_path, tmp_path / "b" / "up")
    result: dict = {}
    t = threading.Thread(target=lambda: result.setdefault("ds", discover(tmp_path, val_split=0.0)), daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "discover hung on a symlink loop"
    ds = result["ds"]
    # a/loop and b/up point at folders above them (loops): not entered, so a's images never count as b's
    assert ds.class_names == ["a", "b"] and class_counts(ds.train, 2) == [2, 2]


def test_csv_layout(tmp_path):
    root = tmp_path / "imgs"
    for i in range(6):
        _img(root / f"p{i}.png", seed=i)
    csv_path = tmp_path / "labels.csv"
    rows = ["path,label"] + [f"imgs/p{i}.png,{'sick' if i % 2 else 'ok'}" for i in range(6)]
    csv_path.write_text("\n".join(rows) + "\n")
    ds = discover(None, labels_csv=csv_path, val_split=0.34)
    assert ds.layout == "csv" and ds.class_names == ["ok", "sick"]
    assert len(ds.train) + len(ds.val) == 6 and class_counts(ds.val, 2) == [1, 1]
    # relative to DATA_DIR instead of the CSV's folder, integer labels, a split column, BOM + spaces
    csv2 = tmp_path / "other" / "l2.csv"
    csv2.parent.mkdir()
    csv2.write_text(
        "\ufeff Path , Label ,split\n"
        + "".join(f"p{i}.png,{i % 3},{'train' if i < 3 else ('val' if i < 5 else 'test')}\n" for i in range(6))
    )
    ds2 = discover(root, labels_csv=csv2)
    assert ds2.class_names == ["0", "1", "2"]
    assert [s.label for s in ds2.train] == [0, 1, 2]
    assert len(ds2.val) == 2 and len(ds2.test) == 1
    with pytest.raises(UsageError, match="^val_split conflicts with the split column of") as e:
        discover(root, labels_csv=csv2, val_split=0.2)
    assert e.value.param == "val_split"


def test_csv_errors(tmp_path):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png", seed=1)
    bad_cols = tmp_path / "cols.csv"
    bad_cols.write_text("file_name,y\na.png,x\n")
    with pytest.raises(InputError, match="'path' and 'label'") as e:
        discover(tmp_path, labels_csv=bad_cols)
    assert "cols.csv" in str(e.value)
    missing = tmp_path / "missing.csv"
    missing.write_text("path,label\na.png,x\nnope1.png,y\nnope2.png,y\nb.png,y\n")
    with pytest.raises(InputError, match=r"names 2 file\(s\) that do not exist \(first: nope1.png\)"):
        discover(tmp_path, labels_csv=missing)
    with pytest.raises(InputError, match="does not exist"):
        discover(tmp_path, labels_csv=tmp_path / "absent.csv")
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("path,label\na.png,cat\nb.png,dog\n")
    with pytest.raises(InputError, match="label 'dog' that is not one of the model's classes"):
        discover(tmp_path, labels_csv=unknown, class_names=["cat", "bird"])
    one = tmp_path / "one.csv"
    one.write_text("path,label\na.png,cat\nb.png,cat\n")
    with pytest.raises(InputError, match="only one class"):
        discover(tmp_path, labels_csv=one)
    bad_split = tmp_path / "split.csv"
    bad_split.write_text("path,label,split\na.png,cat,train\nb.png,dog,holdout\n")
    with pytest.raises(InputError, match="split 'holdout'"):
        discover(tmp_path, labels_csv=bad_split)
    val_only = tmp_path / "valonly.csv"
    val_only.write_text("path,label,split\na.png,cat,train\nb.png,dog,val\n")
    with pytest.raises(InputError, match="Class 'dog' has no training images"):
        discover(tmp_path, labels_csv=val_only)


def test_csv_missing_file_names_each_folder_once(tmp_path, monkeypatch):
    csvd = tmp_path / "csvd"
    _img(csvd / "a.png")
    labels = csvd / "labels.csv"
    labels.write_text("path,label\na.png,cat\ngone.png,dog\n")
    monkeypatch.chdir(tmp_path)
    # DATA_DIR is the CSV's folder, spelled the same (relative) or differently (absolute vs relative)
    for data_dir, csv_arg in (("csvd", "csvd/labels.csv"), (csvd, "csvd/labels.csv"), ("csvd/.", labels)):
        with pytest.raises(InputError) as e:
            discover(data_dir, labels_csv=csv_arg)
        msg = str(e.value)
        assert "(first: gone.png)" in msg and " or " not in msg, msg
        assert msg.endswith(f"paths are relative to {Path(data_dir)}."), msg
    # two different folders are both named, DATA_DIR first
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(InputError) as e:
        discover(other, labels_csv=labels)
    assert str(e.value).endswith(f"paths are relative to {other} or {csvd}.")


def test_folder_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist; check data_dir") as e:
        discover(tmp_path / "nope")
    assert "nope" in str(e.value) and e.value.param == "data_dir"
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(InputError, match=r"is a file; data_dir must be a folder \(a CSV goes to labels_csv\)") as e:
        discover(f)
    assert e.value.params == ("data_dir", "labels_csv")  # finetune's CLI: DATA_DIR, --labels
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no class folders"):
        discover(empty)
    loose = tmp_path / "loose"
    _img(loose / "a.png")
    with pytest.raises(
        InputError, match="holds images directly: put them in class folders or pass a CSV as labels_csv"
    ) as e:
        discover(loose)
    assert e.value.param == "labels_csv"
    one = tmp_path / "one"
    _tree(one, {"only": 3})
    with pytest.raises(InputError, match=r"only one class \(only\)"):
        discover(one)
    hollow = tmp_path / "hollow"
    _tree(hollow, {"a": 2})
    (hollow / "b").mkdir()
    (hollow / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match="contains no images") as e:
        discover(hollow)
    assert str(hollow / "b") in str(e.value)
    split_extra = tmp_path / "split_extra"
    _tree(split_extra / "train", {"a": 2, "b": 2})
    _tree(split_extra / "val", {"a": 1, "c": 1})
    with pytest.raises(InputError, match="no counterpart") as e:
        discover(split_extra)
    assert "c" in str(e.value)
    fixed = tmp_path / "fixed"
    _tree(fixed, {"a": 2, "b": 2, "x": 2})
    with pytest.raises(InputError, match="label 'x'"):
        discover(fixed, class_names=["a", "b"])
    assert discover(fixed, class_names=["x", "b", "a"]).class_names == ["x", "b", "a"]


def test_empty_files_skipped_or_strict(tmp_path):
    _tree(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "a" / "zero.png").write_bytes(b"")
    ds = discover(tmp_path)
    assert len(ds.train) + len(ds.val) == 6
    assert [p.name for p, _ in ds.skipped] == ["zero.png"]
    with pytest.raises(InputError, match="zero.png"):
        discover(tmp_path, strict=True)


def test_verify_samples(tmp_path):
    good = _img(tmp_path / "good.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:100])
    text = tmp_path / "text.jpg"
    text.write_text("hello")
    samples = [Sample(good, 0), Sample(cut, 1), Sample(text, 0)]
    ok, bad = verify_samples(samples)
    assert ok == [samples[0]]
    assert [s.path.name for s, _ in bad] == ["cut.png", "text.jpg"]
    assert "truncated" in bad[0][1]
    with pytest.raises(InputError, match="cut.png"):
        verify_samples(samples, strict=True)


# --- dataset and transforms ------------------------------------------------------------------------------

CONFIGS = [
    {
        "input_size": (3, 32, 32),
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "interpolation": "bicubic",
        "crop_pct": 0.875,
        "crop_mode": "center",
    },
    {
        "input_size": (1, 28, 20),
        "mean": (0.5,),
        "std": (0.25,),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
    },
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["rgb", "gray"])
@pytest.mark.parametrize("train,augment", [(False, "light"), (True, "none"), (True, "light"), (True, "medical")])
def test_transforms_shapes(tmp_path, cfg, train, augment):
    c, h, w = cfg["input_size"]
    path = _img(tmp_path / "a.png", size=(45, 37))
    ds = ImageDataset([Sample(path, 1)], build_transform(cfg, train=train, augment=augment), channels=c)
    torch.manual_seed(0)
    x, label, index = ds[0]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (c, h, w)
    assert label == 1 and index == 0 and len(ds) == 1 and ds.targets == [1]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["rgb", "gray"])
def test_eval_transform_equals_preprocess_and_timm(tmp_path, cfg):
    c = cfg["input_size"][0]
    path = _img(tmp_path / "a.png", size=(61, 43))
    tf = build_transform(cfg, train=False)
    assert isinstance(tf, EvalTransform)
    x = ImageDataset([Sample(path, 0)], tf, channels=c)[0][0]
    ref = preprocess(path, channels=c, **{k: v for k, v in cfg.items()})
    assert np.array_equal(x.numpy(), ref)
    from timm.data import create_transform

    from softcamify.images import open_image

    timm_x = create_transform(**cfg, is_training=False)(open_image(path, channels=c))
    assert torch.allclose(x, timm_x, atol=1e-6, rtol=0)


def test_transform_errors_and_grayscale_stats():
    with pytest.raises(UsageError, match="^augment 'heavy' is not one of none, light, medical") as e:
        build_transform(CONFIGS[0], train=True, augment="heavy")
    assert e.value.param == "augment"
    # an RGB mean/std on a 1-channel model is averaged; a single value is broadcast
    tf = build_transform({"input_size": (1, 8, 8), "mean": (0.4, 0.5, 0.6), "std": (0.2,)}, train=False)
    x = tf(Image.new("L", (8, 8), 128))
    assert x.shape == (1, 8, 8)
    assert torch.allclose(x, torch.full((1, 8, 8), (128 / 255 - 0.5) / 0.2), atol=1e-5)


def test_dataloader_with_workers(tmp_path):
    _tree(tmp_path, {"a": 3, "b": 3})
    ds = discover(tmp_path, val_split=0.0)
    dataset = ImageDataset(ds.train, build_transform(CONFIGS[0], train=True, augment="medical"))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=1)
    xs, ys, idx = next(iter(loader))
    assert xs.shape == (4, 3, 32, 32) and ys.tolist() == [s.label for s in ds.train[:4]]
    assert idx.tolist() == [0, 1, 2, 3]


# --- masks -----------------------------------------------------------------------------------------------


def test_mask_path_for(tmp_path):
    data, masks = tmp_path / "data", tmp_path / "masks"
    img = _img(data / "train" / "a" / "x 1.jpg")
    assert mask_path_for(img, data, masks) is None
    m = masks / "train" / "a" / "x 1.png"
    m.parent.mkdir(parents=True)
    Image.new("L", (4, 4)).save(m)
    assert mask_path_for(img, data, masks) == m
    same = masks / "train" / "a" / "x 1.jpg"
    Image.new("L", (4, 4)).save(same)
    assert mask_path_for(img, data, masks) == same  # exact name first
    assert mask_path_for(tmp_path / "elsewhere.png", data, masks) is None
    from softcamify.data import load_mask

    assert load_mask(m).shape == (4, 4)


def _mask(path: Path, size: tuple[int, int] = (24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size).save(path)
    return path


def test_flat_layout_mirrored_masks_tree_is_not_a_class(tmp_path):
    _tree(tmp_path, {"healthy": 5, "lesion": 5})
    for i in range(5):
        _mask(tmp_path / "masks" / "lesion" / f"{i}.png")  # masks of one class only are fine
    _mask(tmp_path / "masks" / "healthy" / "nested" / "0.png")  # a folder nested below a mirrored one
    (tmp_path / "masks" / "README.txt").write_text("masks of the lesion images")
    ds = discover(tmp_path)
    assert ds.layout == "folders" and ds.class_names == ["healthy", "lesion"]
    everything = ds.train + ds.val
    assert len(everything) == 10 and class_counts(everything, 2) == [5, 5]
    assert not any("masks" in s.path.relative_to(tmp_path).parts for s in everything)
    # the tree that is skipped is the one evaluate/mask_path_for read: every lesion image finds its mask there
    lesion = [s for s in everything if s.label == 1]
    assert all(mask_path_for(s.path, tmp_path, tmp_path / "masks") is not None for s in lesion)
    # mask folders without any mask file (a mask tree being filled) are no class either, and no error
    _tree(tmp_path, {"other": 2})
    (tmp_path / "masks" / "other").mkdir()
    assert discover(tmp_path).class_names == ["healthy", "lesion", "other"]
    # with the model's class order as well
    assert discover(tmp_path, class_names=["other", "lesion", "healthy"]).class_names == ["other", "lesion", "healthy"]


def test_flat_layout_masks_tree_case_and_symlink(tmp_path):
    _tree(tmp_path / "data", {"a": 2, "b": 2})
    _mask(tmp_path / "elsewhere" / "a" / "0.png")
    os.symlink(tmp_path / "elsewhere", tmp_path / "data" / "Masks")
    assert discover(tmp_path / "data").class_names == ["a", "b"]


def test_flat_layout_masks_class_with_images_is_a_class(tmp_path):
    _tree(tmp_path, {"gloves": 3, "masks": 3})  # a real class called masks: images directly inside
    ds = discover(tmp_path, val_split=0.0)
    assert ds.class_names == ["gloves", "masks"] and class_counts(ds.train, 2) == [3, 3]
    # images directly in it win even when it also has a folder named like a class
    _img(tmp_path / "masks" / "gloves" / "x.png", seed=9)
    ds = discover(tmp_path, val_split=0.0)
    assert ds.class_names == ["gloves", "masks"] and class_counts(ds.train, 2) == [3, 4]


def test_flat_layout_masks_folder_with_other_subfolders_is_a_class(tmp_path):
    _tree(tmp_path, {"gloves": 2})
    _tree(tmp_path / "masks", {"batch1": 2, "batch2": 1})  # no subfolder named like a class
    ds = discover(tmp_path, val_split=0.0)
    assert ds.class_names == ["gloves", "masks"] and class_counts(ds.train, 2) == [2, 3]
    _tree(tmp_path / "masks", {"gloves": 1})  # partly mirrored, partly not: it does not mirror the classes
    assert discover(tmp_path, val_split=0.0).class_names == ["gloves", "masks"]


def test_split_layout_with_masks_tree_unaffected(tmp_path):
    # the layout `softcamify datasets synth` writes: masks/{split}/<class>/... beside the split folders
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        _tree(tmp_path / split, {"healthy": n, "lesion": n})
        for i in range(n):
            _mask(tmp_path / "masks" / split / "lesion" / f"{i}.png")
    ds = discover(tmp_path)
    assert ds.layout == "splits" and ds.class_names == ["healthy", "lesion"]
    assert [len(ds.train), len(ds.val), len(ds.test)] == [8, 4, 4]
    # inside a split folder, the class folders are taken as they are: a folder called masks is a class
    _tree(tmp_path / "train", {"masks": 2})
    _tree(tmp_path / "train" / "masks", {"healthy": 1})
    ds = discover(tmp_path)
    assert ds.class_names == ["healthy", "lesion", "masks"] and class_counts(ds.train, 3) == [4, 4, 3]


# --------------------------------------------------------------------------------------------------
# Issue 16: a run folder inside the data is not a class; no class folder vanishes silently
# --------------------------------------------------------------------------------------------------


def test_run_folder_markers_are_the_run_files():
    from softcamify.data.discover import RUN_FOLDER_MARKERS
    from softcamify.training.config import LOCK_NAME, RUN_FILES

    assert RUN_FOLDER_MARKERS == {*RUN_FILES, LOCK_NAME}


@pytest.mark.parametrize("where", ["run", "runs/exp1", "train/run"])
@pytest.mark.parametrize("marker", ["last.pt", ".lock", "metrics.jsonl"])
def test_softcamify_run_folder_inside_the_data_is_not_a_class(tmp_path, where, marker):
    split = where.startswith("train/")
    if split:
        _tree(tmp_path / "train", {"a": 3, "b": 3})
        _tree(tmp_path / "val", {"a": 1, "b": 1})
    else:
        _tree(tmp_path, {"a": 3, "b": 3})
    before = discover(tmp_path)
    run = tmp_path / where
    run.mkdir(parents=True)
    (run / marker).write_bytes(b"x")  # recognized by what it holds, whatever its name
    (run / "best.safetensors").write_bytes(b"x")
    after = discover(tmp_path)
    assert after.class_names == before.class_names == ["a", "b"]
    assert after.train == before.train and after.val == before.val
    # the same folder without a run's files (only a note) is still a class without images
    for p in run.iterdir():
        p.unlink()
    (run / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="contains no images"):
        discover(tmp_path)


def test_a_folder_with_images_and_run_files_stays_a_class(tmp_path):
    _tree(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "b" / "last.pt").write_bytes(b"x")
    assert discover(tmp_path).class_names == ["a", "b"]


@pytest.mark.parametrize("layout", ["flat", "split"])
def test_broken_link_or_file_among_class_folders_is_named(tmp_path, layout):
    classes = tmp_path / "train" if layout == "split" else tmp_path
    _tree(classes, {"a": 3, "b": 3})
    if layout == "split":
        _tree(tmp_path / "val", {"a": 1, "b": 1})
    (classes / ".DS_Store").write_bytes(b"\0")  # hidden and system files stay ignored
    (classes / "Thumbs.db").write_bytes(b"\0")
    assert discover(tmp_path).class_names == ["a", "b"]
    link = classes / "c"
    os.symlink(tmp_path / "unmounted" / "share", link)  # an unmounted share
    with pytest.raises(InputError, match="broken link") as e:
        discover(tmp_path)
    assert str(link) in str(e.value) and str(tmp_path / "unmounted" / "share") in str(e.value)
    link.unlink()
    (classes / "c").write_text("a class folder that became a file")
    with pytest.raises(InputError, match="is a file among the class folders") as e:
        discover(tmp_path)
    assert str(classes / "c") in str(e.value)
    (classes / "c").unlink()
    os.symlink(classes / "a" / "0.png", classes / "c")  # a link to a file is a file
    with pytest.raises(InputError, match="lies directly in|is a file") as e:
        discover(tmp_path)
    assert str(classes / "c") in str(e.value)
    (classes / "c").unlink()
    _img(classes / "stray.png")
    with pytest.raises(InputError, match="outside its class folders") as e:
        discover(tmp_path)
    assert str(classes / "stray.png") in str(e.value)


def test_broken_split_folder_link_is_named(tmp_path):
    _tree(tmp_path / "train", {"a": 3, "b": 3})
    os.symlink(tmp_path / "gone", tmp_path / "val")  # would silently become a split of train
    with pytest.raises(InputError, match="Split folder .* broken link") as e:
        discover(tmp_path)
    assert str(tmp_path / "val") in str(e.value)
    (tmp_path / "val").unlink()
    (tmp_path / "Val").write_text("x")
    with pytest.raises(InputError, match="where a split folder is expected"):
        discover(tmp_path)
    (tmp_path / "Val").unlink()
    (tmp_path / "manifest.json").write_text("{}")  # other files beside split folders are fine
    assert discover(tmp_path).layout == "splits"
