"""softcamify.data.synth: the synthetic lesion dataset (determinism, exact masks, splits, CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from softcamify._version import __version__
from softcamify.data.synth import ORDINAL_CLASSES, ORDINAL_RED_COUNTS, make_lesions
from softcamify.errors import OutputError, UsageError

SIZE = 64


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root: Path, item: dict) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(Image.open(root / item["path"]))
    mask = np.asarray(Image.open(root / item["mask"]))
    return img, mask


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "lesions"
    manifest = make_lesions(out, n=30, size=SIZE, seed=3, workers=1)
    return out, manifest


def test_layout_and_manifest(synth):
    out, manifest = synth
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["softcamify_version"] == __version__
    assert on_disk["seed"] == 3 and on_disk["size"] == SIZE and on_disk["n"] == 30
    assert on_disk["classes"] == ["healthy", "red_lesion", "bright_lesion"]
    assert on_disk["options"] == {
        "ordinal": False,
        "shortcut": False,
        "contrast": 1.0,
        "noise": 1.0,
        "splits": [0.6, 0.2, 0.2],
    }
    assert on_disk["images"] == manifest["images"]
    assert len(on_disk["images"]) == 30
    for item in on_disk["images"]:
        assert item["path"] == f"{item['split']}/{item['class']}/{item['id']}.png"
        assert item["mask"] == "masks/" + item["path"]
        img, mask = _load(out, item)
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
        assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 255}
    pngs = [p for p in out.rglob("*.png") if "masks" not in p.parts]
    assert len(pngs) == 30


def test_balanced_classes_and_splits(synth):
    _, manifest = synth
    counts = manifest["counts"]
    assert counts == {s: dict.fromkeys(manifest["classes"], n) for s, n in (("train", 6), ("val", 2), ("test", 2))}
    per_class = [sum(1 for it in manifest["images"] if it["class"] == c) for c in manifest["classes"]]
    assert per_class == [10, 10, 10]


def test_masks_cover_exactly_the_lesions(synth):
    out, manifest = synth
    for item in manifest["images"]:
        _, mask = _load(out, item)
        fg = mask > 0
        if item["class"] == "healthy":
            assert item["lesions"] == [] and not fg.any()
            continue
        kind = "red" if item["class"] == "red_lesion" else "bright"
        assert item["lesions"] and all(les["type"] == kind for les in item["lesions"])
        in_boxes = np.zeros_like(fg)
        for les in item["lesions"]:
            x0, y0, x1, y1 = les["box"]
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
            box = fg[y0:y1, x0:x1]
            # tight box: foreground on each of its four edges
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
            in_boxes[y0:y1, x0:x1] = True
        assert not (fg & ~in_boxes).any(), "mask pixels outside every lesion box"
        ys, xs = np.nonzero(fg)
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == [
            min(les["box"][0] for les in item["lesions"]),
            min(les["box"][1] for les in item["lesions"]),
            max(les["box"][2] for les in item["lesions"]),
            max(les["box"][3] for les in item["lesions"]),
        ]


def test_lesion_pixels_are_exactly_the_mask(tmp_path):
    """Only lesion painting depends on contrast: two contrasts differ exactly on mask pixels."""
    a = make_lesions(tmp_path / "a", n=6, size=SIZE, seed=5, contrast=1.0)
    make_lesions(tmp_path / "b", n=6, size=SIZE, seed=5, contrast=0.4)
    for item in a["images"]:
        img_a, mask = _load(tmp_path / "a", item)
        img_b, _ = _load(tmp_path / "b", item)
        changed = np.any(img_a != img_b, axis=-1)
        fg = mask > 0
        assert not (changed & ~fg).any(), f"{item['path']}: pixels changed outside the mask"
        if fg.any():
            assert changed[fg].mean() > 0.9  # (nearly) every mask pixel carries lesion colour


def test_lesions_look_like_lesions(synth):
    out, manifest = synth
    for item in manifest["images"]:
        img, mask = _load(out, item)
        fg = mask > 0
        cx, cy = (int(round(v)) for v in item["optic_disc"]["center"])
        assert img[cy, cx, :2].min() > 180, "bright optic disc in every class"
        if not fg.any():
            continue
        inside = np.linalg.norm(np.mgrid[0:SIZE, 0:SIZE] - SIZE / 2, axis=0) < SIZE * 0.3
        background = img[inside & ~fg].astype(float).mean(0)
        lesion = img[fg].astype(float).mean(0)
        if item["class"] == "red_lesion":
            assert lesion.sum() < background.sum()  # darker
        else:
            assert lesion[1] > background[1] + 40  # yellowish: much more green than the red fundus


def test_deterministic_bytes(tmp_path):
    make_lesions(tmp_path / "a", n=9, size=SIZE, seed=11, shortcut=True, workers=1)
    make_lesions(tmp_path / "b", n=9, size=SIZE, seed=11, shortcut=True, workers=2)
    make_lesions(tmp_path / "c", n=9, size=SIZE, seed=12, shortcut=True, workers=1)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b  # same seed: byte-identical, whatever the number of workers
    assert a.keys() == c.keys()
    differing = [k for k in a if k.endswith(".png") and "/healthy/" in k and a[k] != c[k]]
    assert len(differing) == sum(1 for k in a if k.endswith(".png") and "/healthy/" in k and "masks" not in k)


def test_ordinal(tmp_path):
    m = make_lesions(tmp_path / "o", n=24, size=SIZE, seed=1, ordinal=True)
    assert m["classes"] == list(ORDINAL_CLASSES)
    for item in m["images"]:
        lo, hi = ORDINAL_RED_COUNTS[item["label"]]
        assert item["class"] == ORDINAL_CLASSES[item["label"]]
        assert lo <= item["num_red"] <= hi and item["num_bright"] == 0
        assert len(item["lesions"]) == item["num_red"]
        assert all(les["type"] == "red" for les in item["lesions"])
        _, mask = _load(tmp_path / "o", item)
        assert mask.any() == (item["num_red"] > 0)
    with pytest.raises(UsageError, match=r"^classes cannot be combined with ordinal \(") as e:
        make_lesions(tmp_path / "x", n=8, ordinal=True, classes=("healthy", "red_lesion"))
    assert e.value.params == ("classes", "ordinal")


def test_shortcut_only_in_train(tmp_path):
    m = make_lesions(tmp_path / "s", n=12, size=SIZE, seed=2, shortcut=True)
    corners = m["shortcut"]["corners"]
    assert m["shortcut"]["split"] == "train" and len(set(corners.values())) == len(m["classes"])
    for item in m["images"]:
        img, mask = _load(tmp_path / "s", item)
        if item["split"] == "train":
            x0, y0, x1, y1 = item["shortcut_box"]
            assert img[y0:y1, x0:x1].max() > 180  # the tag is drawn
            assert not mask[y0:y1, x0:x1].any()  # and is no lesion
            left = x0 < SIZE // 2
            top = y0 < SIZE // 2
            assert corners[item["class"]] == f"{'top' if top else 'bottom'}_{'left' if left else 'right'}"
        else:
            assert "shortcut_box" not in item
            assert img[:8, :8].max() < 40 and img[-8:, -8:].max() < 40  # dark corners, no tag


def test_refuses_non_empty_and_force_replaces(tmp_path):
    out = tmp_path / "d"
    make_lesions(out, n=12, size=SIZE)
    with pytest.raises(OutputError, match="not empty") as e:
        make_lesions(out, n=6, size=SIZE)
    assert e.value.exit_code == 6
    (out / "mine.txt").write_text("keep me")
    m = make_lesions(out, n=6, size=SIZE, force=True)
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs == sorted([it["path"] for it in m["images"]] + [it["mask"] for it in m["images"]])
    assert (out / "mine.txt").read_text() == "keep me"  # only files of the previous manifest are removed


def test_bad_options(tmp_path):
    with pytest.raises(UsageError, match="^classes 'cats' is not one of"):
        make_lesions(tmp_path / "x", n=6, classes=("healthy", "cats"))
    with pytest.raises(UsageError, match="^classes must list at least two different names, got healthy"):
        make_lesions(tmp_path / "x", n=6, classes=("healthy",))
    with pytest.raises(UsageError, match="^size 8 is too small") as e:
        make_lesions(tmp_path / "x", n=6, size=8)
    assert e.value.param == "size"
    with pytest.raises(UsageError, match=r"^contrast 0 must be positive \(1\.0 is the default\)\.$") as e:
        make_lesions(tmp_path / "x", n=6, contrast=0)
    assert e.value.param == "contrast"
    assert not (tmp_path / "x").exists()


def test_two_classes_and_discover(tmp_path):
    from softcamify.data import discover, mask_path_for

    out = tmp_path / "two"
    make_lesions(out, n=20, size=SIZE, classes=("red_lesion", "healthy"))
    ds = discover(out)
    assert ds.class_names == ["healthy", "red_lesion"] and ds.layout == "splits"
    assert len(ds.train) == 12 and len(ds.val) == 4 and len(ds.test) == 4
    for s in ds.train + ds.val + ds.test:
        m = mask_path_for(s.path, out, out / "masks")
        assert m is not None and m.is_file()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="120")
    return subprocess.run(
        [sys.executable, "-m", "softcamify", "datasets", "synth", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_cli_synth(tmp_path):
    out = tmp_path / "cli set"
    r = _cli(str(out), "--n", "12", "--size", "48", "--seed", "4", "--shortcut", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["n"] == 12 and summary["size"] == 48 and summary["seed"] == 4
    assert summary["options"]["shortcut"] is True
    assert sum(sum(v.values()) for v in summary["counts"].values()) == 12
    assert json.loads((out / "manifest.json").read_text())["seed"] == 4
    r2 = _cli(str(out), "--n", "12", "--size", "48")
    assert r2.returncode == 6
    assert "not empty" in r2.stderr and "--force" in r2.stderr
    r3 = _cli(str(out), "--n", "8", "--size", "48", "--classes", "healthy,bright_lesion", "--force")
    assert r3.returncode == 0, r3.stderr
    assert "bright_lesion" in r3.stdout and "train" in r3.stdout
    r4 = _cli(str(tmp_path / "o"), "--ordinal", "--classes", "healthy,red_lesion")
    assert r4.returncode == 2 and "--classes cannot be combined with --ordinal" in " ".join(r4.stderr.split())


# --------------------------------------------------------------------------------------------------
# Bounded memory and disk (issue 16): `datasets synth --size 10000` allocated 21 GB before the OOM killer
# --------------------------------------------------------------------------------------------------


def test_manifest_file_is_the_json_of_the_manifest(synth):
    """The manifest is streamed to its file as images are written: the same text as one json.dumps."""
    out, manifest = synth
    on_disk = {k: v for k, v in manifest.items() if k != "seconds"}
    assert (out / "manifest.json").read_text(encoding="utf-8") == json.dumps(on_disk, indent=1) + "\n"


def _peak(out: Path, n: int) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        make_lesions(out, n=n, size=32, seed=1, workers=1, keep_images=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """Images are drawn, written and forgotten one by one, and the manifest streamed to its file: 4× the
    images need far less than 4× the memory (numpy arrays are traced by tracemalloc)."""
    _peak(tmp_path / "warm", 6)  # imports, caches
    small, large = _peak(tmp_path / "a", 60), _peak(tmp_path / "b", 240)
    assert large < 1.3 * small, (small, large)
    assert len(json.loads((tmp_path / "b" / "manifest.json").read_text())["images"]) == 240


def test_processes_are_capped_by_the_memory_available(monkeypatch):
    from softcamify.data import synth as s

    monkeypatch.setattr(s, "_memory", lambda: (16 * 10**9, 10**9))
    need = s._check_memory(2000)  # ~0.3 GB per image while it is drawn
    assert 0.25e9 < need < 0.4e9
    assert s._resolve_workers(8, 1000, need) == 10**9 // need == 3
    assert s._resolve_workers(8, 1000, 10**10) == 1  # never fewer than one
    assert s._resolve_workers(None, 10) == 1


def test_sizes_that_cannot_fit_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    from softcamify.data import synth as s

    with pytest.raises(UsageError, match=r"size 10000 makes images of 100,000,000 pixels.*at most 9459") as e:
        make_lesions(tmp_path / "big", n=6, size=10000)
    assert e.value.param == "size"
    monkeypatch.setattr(s, "_memory", lambda: (10**9, 5 * 10**8))  # a 1 GB machine
    with pytest.raises(UsageError, match=r"size 5000 needs about 1\.8 GB of memory .* than the 1\.0 GB here"):
        make_lesions(tmp_path / "mem", n=6, size=5000)
    monkeypatch.setattr(s.shutil, "disk_usage", lambda p: shutil_usage(free=10**6))
    with pytest.raises(
        OutputError, match=r"Cannot write 600 images of 128 px .*the disk is full .*1\.0 MB are free"
    ) as e:
        make_lesions(tmp_path / "disk", n=600, size=128)
    assert e.value.params == ("n", "size")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing created


def shutil_usage(free: int):
    import shutil

    return shutil._ntuple_diskusage(10**12, 10**12 - free, free)
