"""predict: .onnx (onnxruntime, no torch) and .safetensors (torch) agree; bad inputs through the real CLI."""

from __future__ import annotations

import json
import subprocess
import warnings

import numpy as np
import pytest
from conftest import run_cli_torch_free
from PIL import Image

from softcamify.prediction import collect_images, predict

SIZE = 64


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A 4-class test_resnet SoftCAM model as .safetensors and its .onnx export."""
    import torch

    from softcamify.checkpoints import save
    from softcamify.conversion import as_softcam
    from softcamify.exporters import export_onnx

    torch.manual_seed(1)
    sc, _ = as_softcam("test_resnet", num_classes=4, input_size=(SIZE, SIZE))
    with torch.no_grad():  # spread the classes apart so the ranking is not decided by rounding
        sc.head.conv.weight.mul_(20)
    sc.meta.class_names = ["cat", "dog", "fish", "bird"]
    folder = tmp_path_factory.mktemp("models")
    save(sc, folder / "m.safetensors")
    export_onnx(sc, folder / "m.onnx", exporter="torchscript")  # fast; test_onnx_export covers dynamo
    return folder / "m.safetensors", folder / "m.onnx"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden_dir").mkdir()
    Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(root / "b.png")
    Image.fromarray(rng.integers(0, 255, (50, 70), dtype=np.uint8), "L").save(root / "a.jpg")  # grayscale
    Image.fromarray(rng.integers(0, 255, (64, 64, 4), dtype=np.uint8), "RGBA").save(root / "sub" / "c.png")
    Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)).save(root / "sub" / "deeper" / "d.bmp")
    (root / ".hidden.png").write_bytes(b"not an image")
    (root / ".hidden_dir" / "e.png").write_bytes(b"not an image")
    (root / "notes.txt").write_text("not an image")
    return root


def test_folders_are_walked_sorted_recursive_without_hidden_files(images):
    found = [p.relative_to(images).as_posix() for p in collect_images(images)]
    assert found == ["a.jpg", "b.png", "sub/c.png", "sub/deeper/d.bmp"]


def test_onnx_and_safetensors_predictions_agree(models, images):
    st, onnx_path = models
    a = predict(onnx_path, [images], top_k=4, batch_size=3)
    b = predict(st, [images], top_k=4, device="cpu")
    assert a.backend == "onnxruntime" and b.backend == "torch"
    assert a.preprocessing == b.preprocessing and a.preprocessing["input_size"] == [3, SIZE, SIZE]
    assert [p.image for p in a.predictions] == [p.image for p in b.predictions] and len(a.predictions) == 4
    for pa, pb in zip(a.predictions, b.predictions, strict=True):
        assert [e["class"] for e in pa.top_k] == [e["class"] for e in pb.top_k]
        np.testing.assert_allclose(
            [e["probability"] for e in pa.top_k], [e["probability"] for e in pb.top_k], atol=1e-4, rtol=0
        )
        assert sum(e["probability"] for e in pa.top_k) == pytest.approx(1.0)
    assert {p.label for p in a.predictions} <= {"cat", "dog", "fish", "bird"}
    # batching does not change anything; top-k truncates
    c = predict(onnx_path, images, top_k=2, batch_size=16)
    assert [p.top_k for p in c.predictions] == [p.top_k[:2] for p in a.predictions]


def test_predict_onnx_never_imports_torch(models, images):
    st, onnx_path = models
    r = run_cli_torch_free("predict", onnx_path, images, "--json", "-k", "3")
    assert r.returncode == 0, r.stderr
    assert "TORCH-MODULES []" in r.stderr
    data = json.loads(r.stdout)
    expected = predict(st, images, top_k=3, device="cpu")
    assert data["backend"] == "onnxruntime" and len(data["predictions"]) == 4
    for got, want in zip(data["predictions"], expected.predictions, strict=True):
        assert [e["class"] for e in got["top_k"]] == [e["class"] for e in want.top_k]
        assert (
            max(abs(g["probability"] - w["probability"]) for g, w in zip(got["top_k"], want.top_k, strict=True)) < 1e-4
        )


@pytest.fixture(scope="module")
def plain_onnx(tmp_path_factory):
    """An ONNX classifier not written by softcamify: no metadata, one output, fixed 32×32 input."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    path = tmp_path_factory.mktemp("plain") / "plain.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter says it is legacy
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 32, 32),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        )
    return path


def test_predict_third_party_onnx_with_a_fixed_batch_of_one(images, tmp_path, cli):
    """QA: a plain torch.onnx.export (no dynamic_axes) takes exactly one image; predict runs it image by image."""
    import timm
    import torch

    from softcamify.images import preprocess

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    path = tmp_path / "plain.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter says it is legacy
        torch.onnx.export(model, (torch.randn(1, 3, SIZE, SIZE),), str(path), dynamo=False)
    r = cli("predict", path, images, "--mean", "0.5", "--std", "0.5", "--json", "-k", "3", "-b", "3")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["preprocessing"]["input_size"] == [3, SIZE, SIZE] and len(data["predictions"]) == 4
    cfg = data["preprocessing"]
    assert cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"  # what was applied, not null
    x = np.stack(
        [
            preprocess(
                p["image"],
                input_size=(SIZE, SIZE),
                mean=cfg["mean"],
                std=cfg["std"],
                interpolation=cfg["interpolation"],
                crop_pct=cfg["crop_pct"],
                crop_mode=cfg["crop_mode"],
            )
            for p in data["predictions"]
        ]
    )
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(x)).double(), dim=1).numpy()
    for got, probs in zip(data["predictions"], want, strict=True):
        ranked = [e["probability"] for e in got["top_k"]]
        assert sorted(e["index"] for e in got["top_k"]) == [0, 1, 2] and ranked == sorted(ranked, reverse=True)
        np.testing.assert_allclose(ranked, [probs[e["index"]] for e in got["top_k"]], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def ema_checkpoint(tmp_path_factory):
    """A timm training checkpoint whose EMA weights differ from its weights, and the two timm models."""
    import timm
    import torch

    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    ema = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    path = tmp_path_factory.mktemp("ema") / "checkpoint.pth.tar"
    torch.save(
        {"epoch": 3, "arch": "test_resnet", "state_dict": m.state_dict(), "state_dict_ema": ema.state_dict()}, path
    )
    return path, m, ema


def _torch_probs(model, report) -> np.ndarray:
    """Softmax of ``model`` on the images of ``report``, preprocessed as the report says."""
    import torch

    from softcamify.images import preprocess

    cfg = report["preprocessing"]
    x = np.stack(
        [
            preprocess(
                p["image"],
                input_size=cfg["input_size"][1:],
                mean=cfg["mean"],
                std=cfg["std"],
                interpolation=cfg["interpolation"],
                crop_pct=cfg["crop_pct"],
                crop_mode=cfg["crop_mode"],
            )
            for p in report["predictions"]
        ]
    )
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x)).double(), dim=1).numpy()


def _probs(report) -> np.ndarray:
    out = np.zeros((len(report["predictions"]), 3))
    for i, p in enumerate(report["predictions"]):
        for e in p["top_k"]:
            out[i, e["index"]] = e["probability"]
    return out


def test_predict_ema_weights_of_a_training_checkpoint(ema_checkpoint, images, models, cli):
    path, m, ema = ema_checkpoint
    plain = predict(path, images, top_k=3, device="cpu").to_dict()
    np.testing.assert_allclose(_probs(plain), _torch_probs(m, plain), atol=1e-5, rtol=0)
    r = cli("predict", path, images, "--ema", "--json", "-k", "3", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    with_ema = json.loads(r.stdout)
    np.testing.assert_allclose(_probs(with_ema), _torch_probs(ema, with_ema), atol=1e-5, rtol=0)
    assert np.abs(_probs(with_ema) - _probs(plain)).max() > 1e-3  # really other weights
    # an .onnx has no checkpoint to take EMA weights from
    _fails(cli("predict", models[1], images, "--ema"), 2, "--ema", ".onnx")
    _fails(cli("predict", models[1], images, "--num-classes", "4"), 2, "--num-classes", ".onnx")


def _fails(r: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == "" and "Traceback" not in r.stderr
    line = r.stderr.strip()
    assert line.startswith("error:") and "\n" not in line, line
    for w in words:
        assert w in line, (w, line)


def test_predict_bad_inputs_through_the_cli(models, images, plain_onnx, tmp_path, cli):
    _, onnx_path = models
    not_onnx = tmp_path / "fake.onnx"
    not_onnx.write_text("this is not a protobuf")
    _fails(cli("predict", not_onnx, images), 3, "fake.onnx", "not an ONNX model")
    empty = tmp_path / "empty"
    (empty / ".git").mkdir(parents=True)
    (empty / ".git" / "x.png").write_bytes(b"hidden")
    _fails(cli("predict", onnx_path, empty), 3, "contains no images")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _fails(cli("predict", onnx_path, images, broken), 3, "broken.png")
    _fails(cli("predict", onnx_path, tmp_path / "missing.jpg"), 3, "missing.jpg", "does not exist")
    _fails(cli("predict", tmp_path / "nope.onnx", images), 3, "nope.onnx", "does not exist")
    # an ONNX without softcamify metadata: a clear error, then usable with explicit preprocessing
    _fails(cli("predict", plain_onnx, images), 2, "no softcamify metadata", "--mean", "--std")
    _fails(
        cli("predict", plain_onnx, images, "--mean", "0.5", "--std", "0.5", "--input-size", "48"),
        2,
        "fixed input size 32×32",
    )
    _fails(
        cli("predict", plain_onnx, images, "--mean", "0.5", "--std", "0.5", "--class-names", "x,y"),
        2,
        "2 class names",
        "3 classes",
    )
    r = cli(
        "predict",
        plain_onnx,
        images,
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.25",
        "--class-names",
        "x,y,z",
        "--json",
        "-k",
        "1",
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["preprocessing"]["input_size"] == [3, 32, 32] and data["preprocessing"]["std"] == [0.25] * 3
    assert all(p["top_k"][0]["class"] in "xyz" for p in data["predictions"]) and len(data["predictions"]) == 4
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_predict_table_output(models, images, cli):
    _, onnx_path = models
    r = cli("predict", onnx_path, images / "b.png", "-k", "2")
    assert r.returncode == 0, r.stderr
    assert "b.png" in r.stdout and "onnxruntime" in r.stdout and "%" in r.stdout
