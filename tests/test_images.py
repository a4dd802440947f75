"""softcamify.images: robust reading of odd files and timm-exact eval preprocessing."""

from __future__ import annotations

import io
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from softcamify.errors import InputError, UsageError
from softcamify.images import (
    IMAGE_EXTENSIONS,
    load_mask,
    mask_to_input,
    open_image,
    original_size,
    preprocess,
    preprocess_batch,
    resize_crop,
)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


# --- reading -------------------------------------------------------------------------------------------


def test_extensions_cover_common_formats():
    for ext in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".ppm", ".pgm"):
        assert ext in IMAGE_EXTENSIONS


def test_missing_folder_and_empty(tmp_path):
    with pytest.raises(InputError, match="does not exist") as e:
        open_image(tmp_path / "nope.png")
    assert "nope.png" in str(e.value)
    with pytest.raises(InputError, match="is a folder"):
        open_image(tmp_path)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty") as e:
        open_image(empty)
    assert str(empty) in str(e.value)
    assert e.value.exit_code == 3


def test_text_file_named_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not an image\n")
    with pytest.raises(InputError, match="not an image") as e:
        open_image(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_files(tmp_path, fmt, ext):
    full = tmp_path / f"full.{ext}"
    _save(Image.fromarray(_rgb(64, 80)), full, format=fmt)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt") as e:
        open_image(cut)
    assert str(cut) in str(e.value)
    assert open_image(full).size == (80, 64)


def test_one_pixel(tmp_path):
    p = _save(Image.new("RGB", (1, 1), (10, 20, 30)), tmp_path / "one.png")
    img = open_image(p)
    assert img.mode == "RGB" and img.size == (1, 1) and img.getpixel((0, 0)) == (10, 20, 30)
    x = preprocess(p, input_size=(7, 5), mean=(0, 0, 0), std=(1, 1, 1))
    assert x.shape == (3, 7, 5)
    np.testing.assert_allclose(x[:, 3, 2], np.array([10, 20, 30]) / 255, atol=1e-6)


def test_16bit_png_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    p = _save(Image.fromarray(ramp), tmp_path / "deep.png")
    with Image.open(p) as im:
        assert im.mode.startswith("I")
    img = open_image(p, channels=1)
    assert img.mode == "L"
    arr = np.asarray(img)
    assert arr.min() == 0 and arr.max() == 255  # full range kept (clipping would saturate at 255 early)
    np.testing.assert_array_equal(arr.ravel(), np.rint(ramp.ravel() / 257.0).astype(np.uint8))
    rgb = np.asarray(open_image(p, channels=3))
    assert rgb.shape == (16, 16, 3) and (rgb[..., 0] == rgb[..., 2]).all()


def test_int32_and_float_modes():
    from softcamify.images import to_channels

    i32 = Image.fromarray(np.arange(64, dtype=np.int32).reshape(8, 8) * 1000)
    assert i32.mode == "I"
    out = np.asarray(to_channels(i32, 1))
    assert out[0, 0] == 0 and out[-1, -1] == round(63000 / 257)
    f = Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8))
    assert f.mode == "F"
    out = np.asarray(to_channels(f, 1))
    assert out.min() == 0 and out.max() == 255


def test_cmyk_jpeg(tmp_path):
    p = _save(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", format="JPEG", quality=95)
    img = open_image(p)
    assert img.mode == "RGB" and img.size == (20, 10)
    r, g, b = np.asarray(img).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60  # 0 cyan, full magenta+yellow = red


def test_palette_and_transparency(tmp_path):
    pal = Image.fromarray(_rgb(12, 12)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    p = _save(pal, tmp_path / "pal.png")
    img = open_image(p)
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), np.asarray(pal.convert("RGB")))
    # palette with a transparent index -> composited onto black
    pal_t = Image.new("P", (4, 4), 1)
    pal_t.putpalette([255, 255, 255, 200, 100, 50] + [0] * 762)
    pal_t.info["transparency"] = 1
    pt = _save(pal_t, tmp_path / "pal_t.png", transparency=1)
    assert np.asarray(open_image(pt)).max() == 0


def test_rgba_and_la_composited_on_black(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128  # half transparent red
    rgba[0, 0, 3] = 0
    p = _save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png")
    arr = np.asarray(open_image(p))
    assert arr.shape == (4, 4, 3)
    assert arr[0, 0].tolist() == [0, 0, 0]
    assert abs(int(arr[1, 1, 0]) - 100) <= 1 and arr[1, 1, 1] == 0
    la = Image.fromarray(np.stack([np.full((3, 3), 255, np.uint8), np.full((3, 3), 0, np.uint8)], -1), "LA")
    pl = _save(la, tmp_path / "la.png")
    assert np.asarray(open_image(pl, channels=1)).max() == 0


def test_mode_1_and_channels(tmp_path):
    bw = Image.fromarray(np.eye(5, dtype=bool))
    p = _save(bw, tmp_path / "bw.png")
    g = open_image(p, channels=1)
    assert g.mode == "L" and np.asarray(g)[2, 2] == 255 and np.asarray(g)[0, 1] == 0
    assert open_image(p, channels=3).mode == "RGB"
    with pytest.raises(UsageError):
        open_image(p, channels=4)


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 6), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(p) as im:
        assert im.n_frames == 3
    arr = np.asarray(open_image(p))
    assert arr.shape == (6, 8, 3)
    assert arr[..., 0].min() > 200 and arr[..., 2].max() < 50


def test_exif_rotation(tmp_path):
    base = Image.fromarray(_rgb(30, 50))  # W=50, H=30
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = _save(base, tmp_path / "rot.jpg", format="JPEG", exif=exif.tobytes())
    img = open_image(p)
    assert img.size == (30, 50)  # swapped
    assert original_size(p) == (50, 30)  # (H, W) after rotation
    plain = _save(base, tmp_path / "plain.png")
    assert original_size(plain) == (30, 50)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + tag + data + zlib.crc32(tag + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )
    return path


def test_decompression_bomb(tmp_path, monkeypatch):
    bomb = _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)  # 1e10 pixels claimed
    with pytest.raises(InputError, match="safety limit") as e:
        open_image(bomb)
    assert str(bomb) in str(e.value)
    # between the limit and twice the limit Pillow only warns: refused as well
    p = _save(Image.fromarray(_rgb(20, 20)), tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    with pytest.raises(InputError, match="safety limit"):
        open_image(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InputError, match="safety limit"):
        open_image(p)


def test_images_module_does_not_import_torch():
    code = 'import sys, softcamify.images, softcamify.data.synth; print("torch" in sys.modules)'
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- preprocessing ---------------------------------------------------------------------------------------

CASES = [
    # (image H, W), input_size (C, H, W), interpolation, crop_pct, crop_mode
    ((37, 101), (3, 224, 224), "bicubic", 0.875, "center"),
    ((333, 250), (3, 224, 224), "bilinear", 1.0, "center"),
    ((500, 97), (3, 160, 128), "bicubic", 0.875, "center"),
    ((255, 256), (3, 97, 203), "nearest", 0.95, "center"),
    ((120, 200), (3, 128, 128), "bicubic", 1.0, None),
    ((64, 48), (3, 96, 80), "bilinear", 0.9, "squash"),
    ((64, 48), (3, 96, 80), "bicubic", 0.875, "border"),
    ((90, 70), (1, 64, 64), "bicubic", 0.875, "center"),
    ((1, 1), (3, 32, 32), "bicubic", 0.875, "center"),
]


@pytest.mark.parametrize("hw,input_size,interp,crop_pct,crop_mode", CASES)
def test_preprocess_matches_timm_eval(tmp_path, hw, input_size, interp, crop_pct, crop_mode):
    timm_data = pytest.importorskip("timm.data")
    c = input_size[0]
    mean = (0.5,) if c == 1 else (0.485, 0.456, 0.406)
    std = (0.25,) if c == 1 else (0.229, 0.224, 0.225)
    path = _save(Image.fromarray(_rgb(*hw, seed=hw[0])), tmp_path / "x.png")
    tf = timm_data.create_transform(
        input_size=input_size,
        interpolation=interp,
        mean=mean,
        std=std,
        crop_pct=crop_pct,
        crop_mode=crop_mode,
        is_training=False,
    )
    ref = tf(open_image(path, channels=c)).numpy()
    out = preprocess(path, input_size, mean, std, interp, crop_pct, crop_mode, channels=c)
    assert out.dtype == np.float32 and out.shape == ref.shape == input_size
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)


def test_preprocess_inputs_and_batch(tmp_path):
    arr = _rgb(40, 60)
    p = _save(Image.fromarray(arr), tmp_path / "a.png")
    kw = dict(input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    from_path = preprocess(p, **kw)
    np.testing.assert_array_equal(from_path, preprocess(Image.fromarray(arr), **kw))
    np.testing.assert_array_equal(from_path, preprocess(arr, **kw))
    assert from_path.min() >= -1.0 and from_path.max() <= 1.0
    batch = preprocess_batch([p, p], **kw)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1], from_path)
    assert preprocess_batch([], **kw).shape == (0, 3, 32, 32)
    gray = preprocess(p, input_size=(3, 16, 16), mean=(0.5,), std=(0.5,), channels=1)
    assert gray.shape == (1, 16, 16)
    with pytest.raises(UsageError):
        preprocess(p, input_size=(16, 16), interpolation="cubic-ish")


def test_resize_crop_geometry():
    img = Image.new("RGB", (200, 100))
    # shorter side to floor(64 / 0.875) = 73, longer int(73 * 2) = 146, then 64 x 64 center crop
    assert resize_crop(img, (64, 64), crop_pct=0.875).shape == (64, 64, 3)
    assert resize_crop(img, (64, 64), crop_pct=1.0, crop_mode="squash").shape == (64, 64, 3)


def test_load_mask(tmp_path):
    m = np.zeros((10, 20), np.uint8)
    m[2:5, 3:9] = 1  # any nonzero value counts
    p = _save(Image.fromarray(m), tmp_path / "m.png")
    fg = load_mask(p)
    assert fg.dtype == bool and fg.shape == (10, 20) and fg.sum() == 18
    small = load_mask(p, size=(5, 10))
    assert small.shape == (5, 10) and small.any() and not small[0].any()
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1, 1] = (1, 0, 0)  # converts to 0 in L, still foreground
    assert load_mask(_save(Image.fromarray(rgb), tmp_path / "c.png")).sum() == 1
    with pytest.raises(InputError, match="does not exist"):
        load_mask(tmp_path / "missing.png")
    aligned = mask_to_input(p, input_size=(8, 8), crop_pct=1.0)
    assert aligned.shape == (8, 8) and aligned.dtype == bool and aligned.any()


def test_original_size_errors(tmp_path):
    with pytest.raises(InputError):
        original_size(tmp_path / "none.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(InputError):
        original_size(bad)


def test_truncated_detected_from_bytes(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_rgb(200, 200)).save(buf, format="JPEG", quality=90)
    p = tmp_path / "tail.jpg"
    p.write_bytes(buf.getvalue()[:-2000])
    with pytest.raises(InputError, match="truncated"):
        open_image(p)
