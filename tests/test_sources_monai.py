"""MONAI as a model source (names, state dicts, bundle folders, in-memory modules) and networks of the user's
own class (``--module package.module:Class``): converted through the CLI, compared with the *original module*
(not a rebuild), and the converted files used from another folder with the originals deleted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, run_cli_here
from PIL import Image

import softcamify
from softcamify.checkpoints import load_model
from softcamify.errors import EXIT_INPUT, InputError
from softcamify.tolerance import allowed

monai_nets = pytest.importorskip("monai.networks.nets")
# tiny models, CLI calls in this process: one intra-op thread is as fast, and immune to a busy machine
pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_DENSENET = {
    "spatial_dims": 2,
    "in_channels": 1,
    "init_features": 8,
    "growth_rate": 4,
    "block_config": [1, 1, 1, 1],
}


def _args_text(args: dict) -> str:
    return json.dumps(args)


def _assert_same(converted: torch.nn.Module, original: torch.nn.Module, channels: int = 1, size: int = 64) -> None:
    """The reloaded SoftCAM model against the user's original module, within the one tolerance rule."""
    x = torch.randn(3, channels, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = original.eval()(x), converted.eval()(x)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= allowed(float(ref.abs().max()))


def _images(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (80, 72), dtype=np.uint8), "L").save(folder / f"img{i}.png")
    return folder


def _densenet(classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return monai_nets.DenseNet121(**{**SMALL_DENSENET, "out_channels": classes}).eval()


def _bundle(root: Path, model: torch.nn.Module, network_def: dict) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    config = {"num_classes": 3, "network_def": network_def}
    (root / "configs" / "inference.json").write_text(json.dumps(config), encoding="utf-8")
    torch.save(model.state_dict(), root / "models" / "model.pt")
    return root


def _convert(*args) -> dict:
    r = run_cli_here("convert", *args, "--input-size", "64", "--samples", "2", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _dataset(root: Path, classes: tuple[str, ...], n: int = 4, size: int = 48, mode: str = "L") -> Path:
    """A tiny image-folder dataset (a bright disc marks every class but the first)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 60, (size, size), dtype=np.uint8)
            if c:
                cy, cx = rng.integers(8, size - 8, 2)
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < 12 * c] = 240
            Image.fromarray(img if mode == "L" else np.stack([img] * 3, -1), mode).save(root / name / f"{i}.png")
    return root


# finetune's fastest settings: one epoch, one thread, no worker processes
FINETUNE_FAST = ("--epochs", "1", "-b", "4", "-j", "0", "--device", "cpu", "--val-split", "0.5", "--quiet", "--json")


def _finetune(model, data: Path, run: Path, *args) -> dict:
    """``softcamify finetune`` for one epoch; its result (``summary``) and the fine-tuned model reloaded."""
    r = run_cli_here("finetune", model, data, "-o", run, *FINETUNE_FAST, *args)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["epochs_completed"] == 1
    return result


@pytest.mark.parametrize(
    ("name", "build", "args"),
    [
        ("DenseNet121", lambda: _densenet(3), SMALL_DENSENET),
        (
            "resnet18",
            lambda: monai_nets.resnet18(spatial_dims=2, n_input_channels=1, num_classes=3),
            {"n_input_channels": 1},
        ),
        (
            "EfficientNetBN",
            lambda: monai_nets.EfficientNetBN(
                "efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=1, num_classes=3
            ),
            {"model_name": "efficientnet-b0", "in_channels": 1},
        ),
        (
            "SEResNet50",
            lambda: monai_nets.SEResNet50(spatial_dims=2, in_channels=1, num_classes=3, layers=(1, 1, 1, 1)),
            {"in_channels": 1, "layers": [1, 1, 1, 1]},
        ),
    ],
)
def test_monai_state_dicts_convert_exactly_through_the_cli(name, build, args, tmp_path):
    torch.manual_seed(0)
    original = build().eval()
    torch.save(original.state_dict(), tmp_path / "weights.pt")  # the way MONAI users save
    out = tmp_path / "sc.safetensors"
    weights = tmp_path / "weights.pt"
    report = _convert(f"monai:{name}", "--weights", weights, "--model-args", _args_text(args), "-o", out)
    assert report["exact"] is True and report["num_classes"] == 3
    assert f"monai {name}" in report["compared_with"] and "weights.pt" in report["compared_with"]
    assert any("guessed" in n and "mean 0.5" in n for n in report["notes"])
    back = softcamify.load(out)
    assert back.meta.source["kind"] == "monai" and back.meta.source["name"] == name
    assert back.meta.data_config["mean"] == [0.5] and back.meta.data_config["crop_pct"] == 1.0
    _assert_same(back, original)


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory):
    """A MONAI bundle folder converted through the CLI: (the converted file, the original module)."""
    root = tmp_path_factory.mktemp("bundle")
    original = _densenet(3)
    net_def = {"_target_": "monai.networks.nets.DenseNet121", **SMALL_DENSENET, "out_channels": "@num_classes"}
    bundle = _bundle(root / "spleen_clf", original, net_def)
    report = _convert(bundle, "-o", root / "sc.safetensors")
    assert report["exact"] is True and report["num_classes"] == 3
    assert "built from the bundle's network_def" in report["compared_with"]
    assert any("MONAI bundle" in n for n in report["notes"])
    return root / "sc.safetensors", original


def test_a_monai_bundle_converts_and_the_file_travels(bundle_file, tmp_path):
    """Moved to another folder with the bundle deleted, the file goes through explain, export, predict and
    finetune; ``--class-names`` name its classes in explain and in the exported file's metadata."""
    path, original = bundle_file
    moved = tmp_path / "elsewhere" / "model.safetensors"
    moved.parent.mkdir()
    shutil.copy(path, moved)
    shutil.rmtree(path.parent / "spleen_clf")
    back = softcamify.load(moved)
    _assert_same(back, original)
    images = _images(tmp_path / "imgs")
    (tmp_path / "labels.txt").write_text("spleen\nliver\nkidney\n", encoding="utf-8")
    r = run_cli_here(
        "explain", moved, images, "-o", tmp_path / "maps", "--device", "cpu", "--class-names", "spleen,liver,kidney"
    )
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "maps" / "manifest.json").read_text())
    assert manifest["class_names"] == ["spleen", "liver", "kidney"]
    assert any((tmp_path / "maps").rglob("*.png"))
    r = run_cli_here("export", moved, "-o", tmp_path / "m.onnx", "--class-names", tmp_path / "labels.txt")
    assert r.returncode == 0, r.stderr
    r = run_cli_here("predict", tmp_path / "m.onnx", images, "--json")
    assert r.returncode == 0, r.stderr
    preds = json.loads(r.stdout)["predictions"]
    assert [p["image"].endswith(f"img{i}.png") for i, p in enumerate(preds)] == [True, True]
    assert preds[0]["top_k"][0]["class"] in ("spleen", "liver", "kidney")  # the names the export recorded
    # fine-tuned from the moved file alone: the run's model is a MONAI DenseNet again, with the data's classes
    data = _dataset(tmp_path / "data", ("class_0", "class_1", "class_2"))
    _finetune(moved, data, tmp_path / "run")
    tuned = softcamify.load(tmp_path / "run" / "best.safetensors")
    assert tuned.meta.source["kind"] == "monai" and tuned.meta.source["name"] == "DenseNet121"
    assert tuned.meta.source["model_args"]["init_features"] == SMALL_DENSENET["init_features"]
    assert tuned(torch.zeros(2, 1, 64, 64)).shape == (2, 3)
    before = {k: v for k, v in back.state_dict().items() if v.is_floating_point()}
    assert any(not torch.equal(v, before[k]) for k, v in tuned.state_dict().items() if k in before)  # it trained


def test_bundle_network_def_disagreeing_with_the_named_architecture_says_so(tmp_path):
    original = _densenet(3)
    net_def = {"_target_": "monai.networks.nets.DenseNet121", **SMALL_DENSENET, "out_channels": 3, "dropout_prob": 0.2}
    bundle = _bundle(tmp_path / "b", original, net_def)
    loaded = load_model(
        "monai:DenseNet121", weights=bundle, model_args={**SMALL_DENSENET, "dropout_prob": 0.0}, input_size=(64, 64)
    )
    assert any("configs/inference.json describes monai DenseNet121" in n and "as named" in n for n in loaded.notes)
    same = load_model("monai:DenseNet121", weights=bundle / "models" / "model.pt", model_args=SMALL_DENSENET)
    assert not any("describes" in n for n in same.notes)  # the same network: nothing to say


@pytest.mark.parametrize(
    ("network_def", "words"),
    [
        ({"_target_": "os.system", "command": "echo pwned"}, "only networks of monai.networks.nets"),
        ({"_target_": "monai.networks.nets.DenseNet121", "out_channels": "$__import__('os')"}, "expression"),
        ({"_target_": "monai.networks.nets.DenseNet121", "act": {"_target_": "torch.nn.ReLU"}}, "literal"),
    ],
)
def test_bundle_network_def_never_runs_code(network_def, words, tmp_path):
    bundle = _bundle(tmp_path / "b", _densenet(3), network_def)
    with pytest.raises(InputError, match=words):
        load_model(bundle)


def test_in_memory_and_pickled_monai_models_record_monai_names(tmp_path):
    original = _densenet(2)
    sc = softcamify.convert(original, input_size=(64, 64), samples=2)
    assert sc.meta.source["kind"] == "monai" and sc.meta.source["name"] == "DenseNet121"
    assert sc.meta.conversion["compared_with"] == "the module as given"
    back = softcamify.load(softcamify.save(sc, tmp_path / "mem.safetensors"))  # no module= needed
    _assert_same(back, original)
    torch.save(original, tmp_path / "whole.pt")
    loaded = load_model(tmp_path / "whole.pt", trust_pickle=True, input_size=(64, 64))
    assert loaded.source["kind"] == "monai" and "path" not in loaded.source


def test_monai_names_without_monai_installed_name_the_extra(tmp_path):
    code = textwrap.dedent(
        """
        import runpy, sys
        sys.modules["monai"] = None  # monai not installed
        sys.argv = ["softcamify", "convert", "monai:DenseNet121", "-o", sys.argv[1]]
        runpy.run_module("softcamify", run_name="__main__")
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "o.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "NO_COLOR": "1", "COLUMNS": "200"},
    )
    assert r.returncode == EXIT_INPUT, (r.stdout, r.stderr)
    assert "pip install softcamify[monai]" in r.stderr
    assert "Traceback" not in r.stderr


OWN_NET = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, width: int = 4, num_classes: int = 2):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.body(x)), 1))
"""


def test_a_class_of_your_own_converts_with_module_and_the_file_travels(tmp_path, monkeypatch):
    """``--module`` on inspect, convert, finetune and evaluate ``--original`` (the one declaration of the
    original-model options); the converted file, moved with its weights deleted, goes through explain,
    export and predict, and names the class when its module is gone."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "my_nets.py").write_text(OWN_NET, encoding="utf-8")
    monkeypatch.syspath_prepend(str(code))  # importable, as PYTHONPATH makes it for the commands
    import my_nets

    torch.manual_seed(0)
    original = my_nets.TinyNet(width=6, num_classes=3).eval()
    torch.save(original.state_dict(), tmp_path / "tiny.pth")
    own = ("--module", "my_nets:TinyNet", "--model-args", "width=6")
    r = run_cli_here("inspect", tmp_path / "tiny.pth", *own, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["exact"] is True and json.loads(r.stdout)["source"]["kind"] == "import"
    out = tmp_path / "tiny.safetensors"
    report = _convert(tmp_path / "tiny.pth", *own, "-o", out, "--class-names", "a,b,c")
    assert report["exact"] is True and report["num_classes"] == 3
    assert report["compared_with"].startswith("my_nets:TinyNet(width=6)")
    meta = softcamify.checkpoints.read_metadata(out)
    assert meta["source"]["kind"] == "import" and meta["source"]["name"] == "my_nets:TinyNet"
    assert meta["class_names"] == ["a", "b", "c"]
    assert str(tmp_path) not in json.dumps(meta["source"])  # no path: rebuilt by importing the class
    data = _dataset(tmp_path / "data", ("a", "b", "c"), mode="RGB")
    # evaluate: the converted file beside its original, built from the state dict with --module
    r = run_cli_here("evaluate", out, data, "--original", tmp_path / "tiny.pth", *own, "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    softcam_acc = result["classification"]["accuracy"]
    assert result["original_classification"]["accuracy"] == pytest.approx(softcam_acc)  # an exact conversion
    r = run_cli_here("evaluate", out, data, "--original", tmp_path / "tiny.pth", "--original-weights", out, *own)
    assert r.returncode == 2 and "give it as --original, not as --original-weights." in r.stderr
    # the library takes the same options: export straight from the state dict, with class names
    report = softcamify.export(
        tmp_path / "tiny.pth",
        tmp_path / "lib.safetensors",
        module="my_nets:TinyNet",
        model_args={"width": 6},
        class_names=["x", "y", "z"],
        input_size=(64, 64),
    )
    assert report.exact
    lib = softcamify.checkpoints.read_metadata(tmp_path / "lib.safetensors")
    assert lib["source"]["name"] == "my_nets:TinyNet" and lib["class_names"] == ["x", "y", "z"]
    # finetune straight from the state dict: the run's model records the class, not a path
    _finetune(tmp_path / "tiny.pth", data, tmp_path / "run", *own)
    tuned = softcamify.checkpoints.read_metadata(tmp_path / "run" / "best.safetensors")
    assert tuned["source"]["name"] == "my_nets:TinyNet" and tuned["source"]["model_args"] == {"width": 6}
    moved = tmp_path / "other" / "tiny.safetensors"
    moved.parent.mkdir()
    shutil.move(out, moved)
    (tmp_path / "tiny.pth").unlink()
    images = _images(tmp_path / "imgs")
    r = run_cli_here("explain", moved, images, "-o", tmp_path / "maps", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = run_cli_here("export", moved, "-o", tmp_path / "t.onnx")
    assert r.returncode == 0, r.stderr
    r = run_cli_here("predict", tmp_path / "t.onnx", images, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["predictions"][0]["top_k"][0]["class"] in ("a", "b", "c")
    # the class's module gone (a fresh process without its folder): one sentence naming the class, no traceback
    r = run_cli("explain", moved, images, "-o", tmp_path / "maps2", "--device", "cpu")
    assert r.returncode == EXIT_INPUT, r.stderr
    assert "my_nets" in r.stderr and "PYTHONPATH" in r.stderr and "Traceback" not in r.stderr


def test_module_must_name_an_nn_module_class(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pth")
    with pytest.raises(InputError, match="not a network class"):
        load_model(tmp_path / "w.pth", module="subprocess:run", model_args={"args": "echo pwned", "shell": True})
    with pytest.raises(InputError, match="not an nn.Module class"):
        load_model(tmp_path / "w.pth", module="torch:manual_seed", model_args={"seed": 1})


def test_monai_vit_converts_approximately_and_is_refused_under_strict(tmp_path):
    """MONAI's ViT reads its class token through a Tanh head (and returns a tuple): like timm's class-token
    models it converts only approximately, per patch, and strict refuses it."""
    pytest.importorskip("einops")
    from softcamify.errors import ConversionError

    torch.manual_seed(0)
    args = {"in_channels": 1, "img_size": 64, "patch_size": 16, "spatial_dims": 2, "classification": True}
    small = {"hidden_size": 32, "mlp_dim": 64, "num_layers": 1, "num_heads": 4}
    vit = monai_nets.ViT(**args, **small, num_classes=3).eval()
    torch.save(vit.state_dict(), tmp_path / "vit.pt")
    loaded = load_model("monai:ViT", weights=tmp_path / "vit.pt", model_args={**args, **small}, input_size=(64, 64))
    assert loaded.source["num_classes"] == 3
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), vit(x)[0])  # the logits of the user's ViT
    with pytest.raises(ConversionError, match="class token.*refused under strict"):
        softcamify.convert(loaded, samples=2, strict=True)
    sc = softcamify.convert(loaded, samples=2)
    assert sc.meta.strategy == "tokens" and sc.meta.exact is False
    back = softcamify.load(softcamify.save(sc, tmp_path / "vit.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(back(x), sc(x))
        assert back.forward_maps(x)[1].shape == (2, 3, 4, 4)  # one evidence cell per 16-px patch
    with pytest.raises(ConversionError, match="save its state_dict and convert it as monai:ViT"):
        softcamify.convert(vit, input_size=(64, 64), samples=1)
