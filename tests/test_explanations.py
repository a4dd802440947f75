"""explain: maps from one forward pass, written as .npy, overlays, index.html and manifest.json.

Real models (timm test_resnet, random weights), a real ONNX export run by onnxruntime, real image files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from softcamify.errors import EXIT_INPUT, EXIT_OUTPUT, EXIT_USAGE, InputError, UsageError
from softcamify.explanations import collect_images, explain, input_view, parse_classes

CLASSES = ["benign", "malignant", "other"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A converted test_resnet (3 named classes, 64 px) as .safetensors and as its validated .onnx export."""
    import timm
    import torch

    import softcamify
    from softcamify.exporters import export_onnx

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    original = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    sc = softcamify.convert(original, input_size=(64, 64), class_names=CLASSES, samples=2)
    st = softcamify.save(sc, root / "m.safetensors")
    onnx = root / "m.onnx"
    export_onnx(st, onnx, spatial="static")
    return {"safetensors": st, "onnx": onnx, "module": sc}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Images of different sizes and modes (RGB, grayscale, RGBA) in nested folders, plus a non-image file."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (d / "sub").mkdir()
    Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(d / "a.png")
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), "L").save(d / "b.jpg")
    Image.fromarray(rng.integers(0, 255, (120, 90, 4), dtype=np.uint8), "RGBA").save(d / "sub" / "a.png")
    (d / "notes.txt").write_text("not an image")
    return d


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def test_safetensors_and_onnx_write_the_same_maps_and_files(models, image_dir, tmp_path):
    out_t, out_o = tmp_path / "torch", tmp_path / "onnx"
    res_t = explain(models["safetensors"], image_dir, out_t, classes="all", device="cpu")
    res_o = explain(models["onnx"], image_dir, out_o, classes="all", device="cpu")
    assert [r.name for r in res_t] == [r.name for r in res_o] == ["a", "b", "a_2"]  # unique names
    for rt, ro in zip(res_t, res_o, strict=True):
        a = np.load(out_t / rt.files["maps"])
        b = np.load(out_o / ro.files["maps"])
        assert a.dtype == np.float32 and a.shape == (3, 2, 2)  # K×h×w at 64 px (stride 32)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
        # signed, bias included: the spatial mean of the maps is the logits
        np.testing.assert_allclose(a.mean(axis=(1, 2)), rt.logits, rtol=0, atol=1e-5)
        np.testing.assert_allclose(rt.probs, ro.probs, rtol=0, atol=1e-4)
        assert rt.prediction == ro.prediction
        # the colour scale is shared by the classes of one image: symmetric, max |A|
        assert rt.vmax == pytest.approx(float(np.abs(a).max()), rel=1e-6) and rt.vmin == -rt.vmax
    for out in (out_t, out_o):
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["count"] == 3 and manifest["class_names"] == CLASSES
        assert manifest["evidence_grid"] == [2, 2] and manifest["classes"] == "all"
        for entry in manifest["images"]:
            files = [entry["files"]["maps"], entry["files"]["image"], entry["files"]["colorbar"]]
            files += list(entry["files"]["overlays"].values())
            assert set(entry["files"]["overlays"]) == set(CLASSES)
            for rel in files:
                assert (out / rel).is_file(), rel
            assert sum(entry["probabilities"].values()) == pytest.approx(1.0)
        parser = _Links()
        parser.feed((out / "index.html").read_text(encoding="utf-8"))
        assert len(parser.srcs) == 3 * (1 + 3 + 1)  # image, one overlay per class, colour scale
        for src in parser.srcs:
            assert not src.startswith(("/", "http")) and (out / src).is_file(), src
    assert json.loads((out_o / "manifest.json").read_text())["backend"] == "onnx"
    # the overlay is an image of the region the model sees, at least 224 px on its longer side
    over = Image.open(out_t / res_t[0].files["overlays"]["benign"])
    assert over.mode == "RGB" and max(over.size) >= 224


def test_onnx_explain_does_not_import_torch(models, image_dir, tmp_path):
    code = (
        "import sys\n"
        "from softcamify.explanations import explain\n"
        f"r = explain({str(models['onnx'])!r}, {str(image_dir / 'a.png')!r}, {str(tmp_path / 'o')!r})\n"
        "assert len(r) == 1 and r[0].maps.shape == (3, 2, 2)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'torchvision'))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "index.html").is_file()


def test_parse_classes_variants_and_errors():
    assert parse_classes("pred", CLASSES) == "pred"
    assert parse_classes(None, CLASSES) == "pred"
    assert parse_classes("ALL", CLASSES) == "all"
    assert parse_classes("0,2", CLASSES) == [0, 2]
    assert parse_classes("malignant, benign", CLASSES) == [1, 0]
    assert parse_classes("other,2,1", CLASSES) == [2, 1]  # names and indices, duplicates dropped
    assert parse_classes([1, "benign"], CLASSES) == [1, 0]
    with pytest.raises(UsageError, match=r"unknown class 'cancer'.*benign, malignant, other"):
        parse_classes("benign,cancer", CLASSES)
    with pytest.raises(UsageError, match="out of range"):
        parse_classes("3", CLASSES)
    with pytest.raises(UsageError, match="empty entry"):
        parse_classes("0,,1", CLASSES)


def test_in_memory_classes_positive_and_inputs(models):
    sc = models["module"]
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 255, (70, 70, 3), dtype=np.uint8)
    pil = Image.fromarray(rng.integers(0, 255, (50, 90, 3), dtype=np.uint8))
    res = explain(sc, [arr, pil], classes="malignant,0", positive=True, device="cpu")
    assert [r.classes for r in res] == [[1, 0], [1, 0]] and all(r.files == {} for r in res)
    for r in res:
        assert r.vmin == 0.0 and r.vmax == pytest.approx(max(float(r.maps.max()), 0.0))
        assert r.upsampled().shape == (3, 64, 64)
        img = r.overlay("malignant")
        assert img.mode == "RGB" and img.size == r.image().size
    pred = explain(sc, [arr], device="cpu")[0]
    assert pred.classes == [pred.prediction] and pred.predicted_class in CLASSES
    with pytest.raises(UsageError, match="sequential"):
        explain(sc, [arr], positive=True, cmap="RdBu_r")


def test_input_view_undoes_the_center_crop():
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    img.paste((255, 0, 0), (50, 0, 150, 100))  # the central 100×100 square is red
    cfg = {"input_size": [3, 64, 64], "crop_pct": 1.0, "crop_mode": "center", "interpolation": "bilinear"}
    view = input_view(img, cfg)
    assert view.size == (224, 224)  # the 100×100 crop, upscaled to the minimum side
    arr = np.asarray(view)
    assert arr[..., 0].min() > 200 and arr[..., 1].max() < 40  # only the red square is kept


def _bright_centroid(arr: np.ndarray) -> tuple[float, float]:
    """Centre (x, y) of the bright pixels, in pixel-edge coordinates (a pixel i spans [i, i + 1])."""
    ys, xs = np.nonzero(np.asarray(arr)[..., 0] > 127)
    return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5


@pytest.mark.parametrize(
    ("input_size", "crop_pct"),
    [((64, 64), 0.875), ((64, 64), 0.95), ((160, 160), 0.875), ((224, 224), 0.875), ((48, 64), 0.9)],
)
def test_input_view_of_a_non_square_image_has_the_inputs_aspect_and_stays_aligned(input_size, crop_pct):
    from softcamify.images import resize_crop

    img = np.zeros((600, 900, 3), np.uint8)  # 900×600: the aspect-preserving resize truncates its width
    img[150:240, 520:610] = 255  # a bright 90×90 square above and right of the centre
    cfg = {"input_size": [3, *input_size], "crop_pct": crop_pct, "crop_mode": "center", "interpolation": "bicubic"}
    view = input_view(Image.fromarray(img), cfg)
    h, w = input_size
    if h == w:
        assert view.width == view.height, view.size  # was e.g. 528×526 at 64 px: square maps stretched
    assert view.width / view.height == pytest.approx(w / h, abs=1 / min(view.size))
    assert 224 <= max(view.size) <= 1024
    # the square sits where the model sees it: same place as a fraction of the view and of the model input
    seen = resize_crop(Image.fromarray(img), input_size, "bicubic", crop_pct, "center")
    (mx, my), (vx, vy) = _bright_centroid(seen), _bright_centroid(view)
    assert vx / view.width == pytest.approx(mx / w, abs=0.5 / w) and vy / view.height == pytest.approx(
        my / h, abs=0.5 / h
    )


def test_input_view_puts_a_known_feature_at_its_known_place():
    img = np.zeros((600, 900, 3), np.uint8)
    img[150:240, 520:610] = 255
    # 224 px, crop_pct 0.875: resize to 384×256 (×1/2.34375), crop 224×224 at (80, 16): the model sees the
    # original's box (187.5, 37.5)–(712.5, 562.5), a 525×525 square, so the view is 525×525 at scale 1
    cfg = {"input_size": [3, 224, 224], "crop_pct": 0.875, "crop_mode": "center", "interpolation": "bicubic"}
    view = input_view(Image.fromarray(img), cfg)
    assert view.size == (525, 525)
    cx, cy = _bright_centroid(view)
    assert cx == pytest.approx(565 - 187.5, abs=0.1) and cy == pytest.approx(195 - 37.5, abs=0.1)
    arr = np.asarray(view)[..., 0]
    assert arr[158, 378] == 255 and arr[158, 300] == 0 and arr[100, 378] == 0  # inside / left of / above it
    # 'squash' is undone: the view keeps the region's own aspect ratio
    squash = input_view(Image.fromarray(img), {**cfg, "crop_pct": 1.0, "crop_mode": "squash"})
    assert squash.size == (900, 600)
    assert _bright_centroid(squash) == pytest.approx((565, 195), abs=0.1)


def test_collect_images_errors(tmp_path, image_dir):
    found = collect_images([image_dir, image_dir / "a.png"])  # a file named twice is explained once
    assert [p.name for p in found] == ["a.png", "b.jpg", "a.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="contains no images"):
        collect_images(tmp_path / "empty")
    with pytest.raises(InputError, match="is not an image file"):
        collect_images(image_dir / "notes.txt")
    with pytest.raises(InputError, match="does not exist"):
        collect_images(tmp_path / "missing.png")


def _one_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def test_cli_explain_json_and_errors(models, image_dir, tmp_path):
    out = tmp_path / "out"
    r = run_cli(
        "explain", models["onnx"], image_dir / "a.png", image_dir / "sub", "-o", out, "--classes", "1,benign", "--json"
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["count"] == 2 and data["classes"] == ["malignant", "benign"] and data["backend"] == "onnx"
    assert json.loads((out / "manifest.json").read_text())["images"] == data["images"]
    assert all(set(e["files"]["overlays"]) == {"malignant", "benign"} for e in data["images"])

    r = run_cli("explain", models["onnx"], image_dir, "-o", tmp_path / "x", "--classes", "cancer")
    assert r.returncode == EXIT_USAGE and "unknown class 'cancer'" in _one_line_error(r.stderr)
    assert not (tmp_path / "x").exists()
    (tmp_path / "empty").mkdir()
    r = run_cli("explain", models["onnx"], tmp_path / "empty", "-o", tmp_path / "y")
    assert r.returncode == EXIT_INPUT and "contains no images" in _one_line_error(r.stderr)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    r = run_cli("explain", models["onnx"], bad, "-o", tmp_path / "z")
    assert r.returncode == EXIT_INPUT and "bad.png" in _one_line_error(r.stderr)
    r = run_cli("explain", models["onnx"], image_dir, "-o", out)  # not empty, no --force
    assert r.returncode == EXIT_OUTPUT and "--force" in _one_line_error(r.stderr)


def test_cli_explain_safetensors_table(models, image_dir, tmp_path):
    r = run_cli(
        "explain", models["safetensors"], image_dir / "b.jpg", "-o", tmp_path / "o", "--positive", "--device", "cpu"
    )
    assert r.returncode == 0, r.stderr
    assert "b.jpg" in r.stdout and "index.html" in r.stdout
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["positive"] is True and manifest["cmap"] == "inferno" and manifest["backend"] == "torch"
    assert Path(tmp_path / "o" / manifest["images"][0]["files"]["maps"]).is_file()


def test_cli_explain_ema_weights_of_a_training_checkpoint(models, image_dir, tmp_path):
    import timm
    import torch

    import softcamify

    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    ema = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    ckpt = tmp_path / "checkpoint.pth.tar"
    torch.save({"arch": "test_resnet", "state_dict": m.state_dict(), "state_dict_ema": ema.state_dict()}, ckpt)
    image = image_dir / "a.png"
    maps = {}
    for flag, weights in (([], m), (["--ema"], ema)):
        out = tmp_path / f"out{len(flag)}"
        r = run_cli("explain", ckpt, image, "-o", out, "--input-size", "64", "--device", "cpu", *flag)
        assert r.returncode == 0, r.stderr
        maps[len(flag)] = np.load(out / "maps" / "a.npy")
        want = explain(softcamify.convert(weights, input_size=(64, 64), samples=2), image, device="cpu")[0]
        np.testing.assert_allclose(maps[len(flag)], want.maps, atol=1e-5, rtol=0)
    assert np.abs(maps[1] - maps[0]).max() > 1e-3  # the EMA weights really were used
    r = run_cli("explain", models["onnx"], image, "-o", tmp_path / "x", "--ema")
    assert r.returncode == EXIT_USAGE and "--ema do not apply to an .onnx model" in _one_line_error(r.stderr)
