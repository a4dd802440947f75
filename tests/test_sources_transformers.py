"""Hugging Face transformers classifiers: save_pretrained folders and in-memory models, converted and
compared with the original transformers module (random weights, small configs, nothing downloaded)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import run_cli_here

transformers = pytest.importorskip("transformers")
# tiny models, CLI calls in this process: one intra-op thread is as fast, and immune to a busy machine
pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = {0: "benign", 1: "malignant", 2: "other"}


def _configs():
    T = transformers
    common = {"num_labels": 3, "id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}
    return {
        "resnet": (
            T.ResNetForImageClassification,
            T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], **common),
        ),
        "convnext": (
            T.ConvNextForImageClassification,
            T.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=64, **common),
        ),
        "efficientnet": (
            T.EfficientNetForImageClassification,
            T.EfficientNetConfig(image_size=64, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128, **common),
        ),
        "swin": (
            T.SwinForImageClassification,
            T.SwinConfig(image_size=64, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4, **common),
        ),
        "vit": (
            T.ViTForImageClassification,
            T.ViTConfig(
                image_size=32,
                patch_size=8,
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
                **common,
            ),
        ),
    }


def _model(name: str):
    torch.manual_seed(0)
    cls, config = _configs()[name]
    model = cls(config).eval()
    with torch.no_grad():  # a trained-looking head: logits that vary with the input
        for p in model.classifier.parameters():
            p.normal_(0, 0.5)
    return model


def _save(model, folder, preprocessor: dict | None = None, safe: bool = True):
    model.save_pretrained(folder, safe_serialization=safe)
    if preprocessor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return folder


def _reloaded_logits(path, x):
    from softcamify.checkpoints import load

    sc = load(path)
    with torch.no_grad():
        return sc, sc(x)


@pytest.mark.parametrize(
    ("name", "strategy"),
    [("resnet", "linear"), ("convnext", "normed"), ("efficientnet", "linear"), ("swin", "linear")],
)
def test_save_pretrained_folder_converts_exactly_through_the_cli(tmp_path, name, strategy):
    from softcamify.tolerance import DEFAULT_ATOL, DEFAULT_RTOL, agreement

    model = _model(name)
    folder = _save(model, tmp_path / name)
    out = tmp_path / f"{name}.safetensors"
    r = run_cli_here("convert", folder, "-o", out, "--input-size", "64", "--samples", "2", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["exact"] and report["strategy"] == strategy
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    sc, got = _reloaded_logits(out, x)
    with torch.no_grad():
        want = model(pixel_values=x).logits  # the original transformers module, not a rebuild
    assert agreement(got, want, DEFAULT_ATOL, DEFAULT_RTOL).passed
    assert sc.class_names == ["benign", "malignant", "other"]
    assert sc.meta.source["kind"] == "transformers"


def test_vit_is_approximate_and_refused_under_strict(tmp_path):
    folder = _save(_model("vit"), tmp_path / "vit")
    r = run_cli_here("convert", folder, "-o", tmp_path / "v.safetensors", "--samples", "2", "--strict")
    assert r.returncode == 4 and "Traceback" not in r.stderr
    assert "approximately" in r.stderr
    r = run_cli_here("convert", folder, "-o", tmp_path / "v.safetensors", "--samples", "2", "--json")
    assert r.returncode == 0, r.stderr
    assert not json.loads(r.stdout)["exact"]


def test_in_memory_model_output_is_unwrapped_and_labels_kept():
    import softcamify

    model = _model("convnext")
    sc = softcamify.convert(model, input_size=(64, 64), samples=2)
    assert sc.meta.exact and sc.class_names == ["benign", "malignant", "other"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(sc(x), model(pixel_values=x).logits, rtol=1e-4, atol=1e-5)


def test_preprocessor_config_becomes_the_data_config_and_problem_type_is_kept(tmp_path):
    from softcamify.checkpoints import load_model

    model = _model("resnet")
    model.config.problem_type = "multi_label_classification"
    pre = {
        "do_resize": True,
        "size": {"shortest_edge": 64},
        "crop_pct": 0.9,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.4, 0.3],
        "image_std": [0.2, 0.25, 0.3],
    }
    folder = _save(model, tmp_path / "r", pre, safe=False)  # pytorch_model.bin, read weights-only
    loaded = load_model(folder)
    cfg = loaded.data_config
    assert cfg["input_size"] == [3, 64, 64] and cfg["interpolation"] == "bicubic"
    assert cfg["crop_pct"] == pytest.approx(0.9) and cfg["crop_mode"] == "center"
    assert cfg["mean"] == pytest.approx([0.5, 0.4, 0.3]) and cfg["std"] == pytest.approx([0.2, 0.25, 0.3])
    assert loaded.source["problem_type"] == "multi_label_classification"
    assert loaded.class_names == ["benign", "malignant", "other"]
    assert not any("guessed" in n for n in loaded.notes)
    # a rescale to [0, 255] (rescale off) is folded into mean/std; {height, width} is resized as it is
    pre.update(do_rescale=False, size={"height": 48, "width": 64}, image_mean=[127.5] * 3, image_std=[127.5] * 3)
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    cfg = load_model(folder).data_config
    assert cfg["input_size"] == [3, 48, 64] and cfg["crop_mode"] == "squash"
    assert cfg["mean"] == pytest.approx([0.5] * 3) and cfg["std"] == pytest.approx([0.5] * 3)


def test_folder_without_preprocessor_says_preprocessing_was_guessed(tmp_path):
    folder = _save(_model("resnet"), tmp_path / "r")
    r = run_cli_here("inspect", folder, "--input-size", "64")
    assert r.returncode == 0, r.stderr
    assert "guessed" in r.stdout + r.stderr


def test_without_transformers_an_hf_folder_names_the_extra(tmp_path):
    folder = _save(_model("resnet"), tmp_path / "r")
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "from softcamify.cli import main\n"
        f"sys.argv = ['softcamify', 'inspect', {str(folder)!r}]\n"
        "main()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    assert "softcamify[transformers]" in r.stderr and "Traceback" not in r.stderr


def test_pickled_transformers_module_converts_and_rebuilds_without_the_pickle(tmp_path):
    model = _model("resnet")
    torch.save(model, tmp_path / "whole.pt")
    out = tmp_path / "o.safetensors"
    r = run_cli_here(
        "convert", tmp_path / "whole.pt", "--trust-pickle", "-o", out, "--input-size", "64", "--samples", "1"
    )
    assert r.returncode == 0, r.stderr
    (tmp_path / "whole.pt").unlink()  # the converted file rebuilds from the recorded transformers config
    x = torch.randn(1, 3, 64, 64)
    sc, got = _reloaded_logits(out, x)
    with torch.no_grad():
        torch.testing.assert_close(got, model(pixel_values=x).logits, rtol=1e-4, atol=1e-4)


def test_converted_folder_model_travels_predicts_and_finetunes(tmp_path):
    """A file converted from a save_pretrained folder, moved with the folder deleted: predict, explain and
    evaluate with ``--class-names`` (a count that differs from the model's is refused in one sentence), and
    finetune, whose model rebuilds from the recorded transformers config with the labels kept."""
    import shutil

    import numpy as np
    from PIL import Image

    folder = _save(_model("resnet"), tmp_path / "r", {"size": {"height": 48, "width": 48}, "resample": 2})
    out = tmp_path / "o.safetensors"
    r = run_cli_here("convert", folder, "-o", out, "--samples", "1")
    assert r.returncode == 0, r.stderr
    shutil.rmtree(folder)
    moved = tmp_path / "elsewhere" / "model.safetensors"
    moved.parent.mkdir()
    out.rename(moved)
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for c, label in enumerate(LABELS.values()):
        (data / label).mkdir(parents=True)
        for i in range(4):
            img = rng.integers(0, 60 + 60 * c, (48, 48, 3)).astype(np.uint8)
            Image.fromarray(img).save(data / label / f"{i}.png")
    image = data / "benign" / "0.png"
    r = run_cli_here("predict", moved, image, "--json", "-k", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["predictions"][0]["top_k"][0]["class"] in LABELS.values()
    r = run_cli_here("explain", moved, image, "-o", tmp_path / "maps", "--class-names", "a,b")
    assert r.returncode == 2 and "2 class names were given but the model has 3 classes." in r.stderr
    assert not (tmp_path / "maps").exists()
    # evaluate with other names: the data's folders are matched against them, and the report uses them
    (data / "benign").rename(data / "nevus")
    r = run_cli_here("evaluate", moved, data, "--class-names", "nevus,malignant,other", "--json")
    assert r.returncode == 0, r.stderr
    per_class = json.loads(r.stdout)["classification"]["per_class"]
    assert [p["name"] for p in per_class] == ["nevus", "malignant", "other"]
    assert [p["support"] for p in per_class] == [4, 4, 4]
    (data / "nevus").rename(data / "benign")
    args = ("--epochs", "1", "-b", "4", "-j", "0", "--device", "cpu", "--val-split", "0.5", "--quiet", "--json")
    r = run_cli_here("finetune", moved, data, "-o", tmp_path / "run", *args)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["epochs_completed"] == 1
    from softcamify.checkpoints import load

    tuned = load(tmp_path / "run" / "best.safetensors")
    assert tuned.meta.source["kind"] == "transformers" and tuned.class_names == list(LABELS.values())
    with torch.no_grad():
        assert tuned(torch.zeros(2, 3, 48, 48)).shape == (2, 3)


def test_sharded_save_pretrained_folder_loads_and_pickled_shards_are_refused(tmp_path):
    """``save_pretrained(max_shard_size=...)`` writes ``model.safetensors.index.json`` and shards: the folder
    converts like a single-file one; a sharded ``.bin`` whose shard holds pickled code is refused."""
    from softcamify.checkpoints import load_model
    from softcamify.errors import InputError
    from softcamify.tolerance import DEFAULT_ATOL, DEFAULT_RTOL, agreement

    model = _model("resnet")
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size=4000)
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (folder / "model.safetensors.index.json").exists()
    assert not (folder / "model.safetensors").exists()
    loaded = load_model(folder, input_size=(64, 64))
    assert loaded.source["kind"] == "transformers" and loaded.class_names == list(LABELS.values())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert agreement(loaded.module(x), model(pixel_values=x).logits, DEFAULT_ATOL, DEFAULT_RTOL).passed

    # the same tensors as pickled .bin shards: weights-only shards load, a shard with code is refused
    binned = tmp_path / "binned"
    binned.mkdir()
    (binned / "config.json").write_text((folder / "config.json").read_text())
    sd = model.state_dict()
    keys = list(sd)
    halves = {
        "pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
        "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :],
    }
    for name, part in halves.items():
        torch.save({k: sd[k] for k in part}, binned / name)
    index = {"metadata": {}, "weight_map": {k: name for name, part in halves.items() for k in part}}
    (binned / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with torch.no_grad():
        assert agreement(load_model(binned, input_size=(64, 64)).module(x), model(pixel_values=x).logits).passed
    torch.save(
        {**{k: sd[k] for k in halves["pytorch_model-00002-of-00002.bin"]}, "hook": _Pickled()},
        binned / "pytorch_model-00002-of-00002.bin",
    )
    with pytest.raises(InputError, match="pytorch_model-00002-of-00002.bin"):
        load_model(binned)
    index["weight_map"][keys[0]] = "../elsewhere.bin"
    (binned / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="outside its folder"):
        load_model(binned)


class _Pickled:
    """Any object that is not a tensor: unpickling it would run code from the file."""
