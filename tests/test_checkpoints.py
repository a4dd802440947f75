"""Loading every supported checkpoint kind safely."""

from __future__ import annotations

import hashlib
import json

import pytest
import timm
import torch
from conftest import run_cli
from safetensors.torch import save_file

from softcamify.checkpoints import load_model, match_prefixes, read_torch
from softcamify.errors import EXIT_INPUT, InputError, UnsafeCheckpointError, UsageError


def _model(k=5, name="test_resnet"):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=k).eval()


def _same_logits(a, b, size=(3, 64, 64)):
    x = torch.randn(2, *size)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_name_plus_safetensors_infers_the_class_count(resnet_weights):
    loaded = load_model("test_resnet", weights=resnet_weights)
    assert loaded.source == {"kind": "timm", "name": "test_resnet", "num_classes": 5, "model_args": {}}
    assert loaded.module.get_classifier().out_features == 5


def test_timm_training_checkpoint_with_ema_and_ddp_prefix(tmp_path):
    m, ema = _model(3), _model(3)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.01)
    ckpt = {
        "epoch": 3,
        "arch": "test_resnet",
        "state_dict": {f"module.{k}": v for k, v in m.state_dict().items()},
        "state_dict_ema": ema.state_dict(),
        "args": __import__("argparse").Namespace(lr=0.1),
    }
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(ckpt, path)
    plain = load_model(path)
    assert plain.architecture == "test_resnet" and _same_logits(plain.module, m)
    with_ema = load_model(path, ema=True)
    assert _same_logits(with_ema.module, ema) and not _same_logits(with_ema.module, m)


def test_ema_only_checkpoint_is_used_with_a_note(tmp_path):
    m = _model(3)
    path = tmp_path / "ema_only.pth"
    torch.save({"arch": "test_resnet", "state_dict_ema": m.state_dict()}, path)
    loaded = load_model(path)
    assert _same_logits(loaded.module, m)
    assert any("EMA" in n for n in loaded.notes)


def test_ema_flag_on_plain_state_dict_is_a_usage_error(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_model(3).state_dict(), path)
    with pytest.raises(UsageError, match=r"^ema: .* is a plain state dict with no EMA weights; drop ema\.$") as e:
        load_model("test_resnet", weights=path, ema=True)
    assert e.value.param == "ema"


def test_lightning_style_prefix_is_stripped():
    m = _model(3)
    sd = {f"model.{k}": v for k, v in m.state_dict().items()}
    assert set(match_prefixes(sd, set(m.state_dict()))) == set(m.state_dict())


def test_hugging_face_folder(tmp_path):
    m = _model(4)
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(folder / "model.safetensors"))
    config = {
        "architecture": "test_resnet",
        "num_classes": 4,
        "label_names": ["a", "b", "c", "d"],
        "pretrained_cfg": {
            "input_size": [3, 96, 96],
            "mean": [0.1, 0.2, 0.3],
            "std": [0.5, 0.5, 0.5],
            "interpolation": "bicubic",
            "crop_pct": 1.0,
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_model(folder)
    assert loaded.class_names == ["a", "b", "c", "d"]
    assert loaded.data_config["input_size"] == [3, 96, 96]
    assert loaded.data_config["mean"] == [0.1, 0.2, 0.3]
    assert _same_logits(loaded.module, m)


def test_torchvision_weights_file(tmp_path):
    import torchvision

    m = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    path = tmp_path / "tv.pth"
    torch.save(m.state_dict(), path)
    loaded = load_model("torchvision:resnet18", weights=path)
    assert loaded.source["num_classes"] == 3
    assert _same_logits(loaded.module, m)


class _Custom(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


class _NeedsArgs(_Custom):
    def __init__(self, width):
        super().__init__()


def test_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(_model(2), path)
    with pytest.raises(UnsafeCheckpointError, match="pass trust_pickle only if you trust where the file") as e:
        load_model(path)
    assert e.value.param == "trust_pickle"
    loaded = load_model(path, trust_pickle=True)
    # a pickled timm network is recognized: converted models rebuild it by name, without the pickle
    assert loaded.source["kind"] == "timm" and loaded.source["name"] == "test_resnet"
    assert _same_logits(loaded.module, _model(2))
    # an importable class of the user's own is recorded as package.module:Class, never as the pickle's path
    torch.save(_Custom().eval(), tmp_path / "custom.pt")
    custom = load_model(tmp_path / "custom.pt", trust_pickle=True)
    assert custom.source["kind"] == "import" and custom.source["name"].endswith(":_Custom")
    assert "path" not in custom.source

    # a class softcamify cannot build without knowing its arguments: only its name, and a way out
    torch.save(_NeedsArgs(4).eval(), tmp_path / "local.pt")
    local = load_model(tmp_path / "local.pt", trust_pickle=True)
    assert local.source["kind"] == "module" and "path" not in local.source
    assert any("module='package.module:Class'" in n for n in local.notes)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "x": _Evil(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError):
        read_torch(path)
    assert not marker.exists()


def test_weights_for_another_architecture(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in _model(3, "test_efficientnet").state_dict().items()}, str(path))
    with pytest.raises(InputError, match="do not fit test_resnet"):
        load_model("test_resnet", weights=path)


def test_nan_weights_are_refused_naming_the_tensor(tmp_path):
    sd = _model(3).state_dict()
    key = next(k for k in sd if k.endswith("conv.weight") or k.endswith("conv1.weight"))
    sd[key].view(-1)[0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(InputError, match=key.replace(".", r"\.")):
        load_model("test_resnet", weights=path)


def test_weights_only_file_as_model_asks_for_the_architecture(resnet_weights):
    with pytest.raises(InputError, match="name the architecture"):
        load_model(resnet_weights)


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_files(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(InputError):
        load_model("test_resnet", weights=path)


def test_truncated_safetensors(tmp_path, resnet_weights):
    data = resnet_weights.read_bytes()
    path = tmp_path / "trunc.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="safetensors"):
        load_model("test_resnet", weights=path)


def test_unknown_names_and_hub_names():
    with pytest.raises(InputError, match="resnet18"):
        load_model("resnet19x")
    with pytest.raises(InputError, match="never downloads"):
        load_model("hf-hub:timm/resnet50.a1_in1k")
    with pytest.raises(InputError, match="does not exist"):
        load_model("missing/model.pth")


def test_a_changed_weight_byte_is_caught_by_the_checksum(tmp_path):
    """safetensors has no checksum: softcamify records the tensor bytes' SHA-256 and verifies it on load."""
    import struct

    import softcamify
    from softcamify.checkpoints import CHECKSUM_KEY, read_metadata

    torch.manual_seed(0)
    sc = softcamify.convert(timm.create_model("test_resnet", num_classes=3).eval(), input_size=(32, 32), samples=2)
    path = softcamify.save(sc, tmp_path / "m.safetensors")
    good = path.read_bytes()
    n = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8 : 8 + n])
    assert read_metadata(path)[CHECKSUM_KEY] == hashlib.sha256(good[8 + n :]).hexdigest()
    assert softcamify.save(sc, tmp_path / "again.safetensors").read_bytes() == good  # still byte-identical

    start, _ = header["head.conv.weight"]["data_offsets"]
    flipped = bytearray(good)
    flipped[8 + n + start] ^= 0x01  # the lowest mantissa bit of one weight: still a finite float
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(InputError, match="corrupt: its weights do not match the checksum"):
        softcamify.load(bad)
    r = run_cli("inspect", bad)
    assert r.returncode == EXIT_INPUT and "checksum" in r.stderr and "Traceback" not in r.stderr

    # files written before the checksum existed still load
    meta = json.loads(header["__metadata__"]["softcamify"])
    del meta[CHECKSUM_KEY]
    header["__metadata__"]["softcamify"] = json.dumps(meta, sort_keys=True)
    h = json.dumps(header).encode()
    old = tmp_path / "old.safetensors"
    old.write_bytes(struct.pack("<Q", len(h)) + h + good[8 + n :])
    torch.testing.assert_close(softcamify.load(old).state_dict(), sc.state_dict())


def test_weights_with_a_replaced_classifier_head_say_how_to_convert(tmp_path):
    """`model.fc = nn.Sequential(nn.Dropout(), nn.Linear(512, 2))`, the fine-tuning tutorials' pattern: the
    state dict alone cannot say what the weightless layers were, so the error names the head and the two
    ways that work — and the whole pickled module (with --trust-pickle) then converts exactly."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Sequential(torch.nn.Dropout(0.3), torch.nn.Linear(512, 2))
    model.eval()
    torch.save(model.state_dict(), tmp_path / "sd.pth")
    with pytest.raises(
        InputError,
        match=r"own classifier head \(fc\.1: Linear 512→2\).*softcamify\.convert\(\).*"
        r"convert that file with trust_pickle\.$",
    ):
        load_model("torchvision:resnet18", weights=tmp_path / "sd.pth")
    torch.save(model, tmp_path / "whole.pth")
    from softcamify.conversion import as_softcam

    sc, _ = as_softcam(tmp_path / "whole.pth", trust_pickle=True, input_size=(64, 64))
    assert sc.meta.exact and sc.meta.conversion["max_abs_diff"] < 1e-5
    # an unrelated mismatch keeps the generic message
    sd = model.state_dict()
    sd["layer1.0.conv1.weight"] = torch.zeros(1)
    del sd["fc.1.weight"], sd["fc.1.bias"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="do not fit torchvision:resnet18"):
        load_model("torchvision:resnet18", weights=tmp_path / "bad.pth")


def test_timm_training_checkpoint_rebuilds_the_model_its_args_describe(tmp_path):
    """timm's train.py stores its args: `--gp max`, `--img-size`, `--mean/--std`, `--crop-pct` must shape the
    rebuilt model and its preprocessing, or a max-pooled model would be converted as an average-pooled one."""
    import argparse

    from softcamify.conversion import convert

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3, global_pool="max").eval()
    args = argparse.Namespace(
        model="test_resnet",
        gp="max",
        num_classes=3,
        in_chans=None,
        model_kwargs={},
        img_size=96,
        input_size=None,
        mean=[0.2, 0.2, 0.2],
        std=[0.3, 0.3, 0.3],
        crop_pct=0.9,
        interpolation="bicubic",
        bn_eps=None,
        bn_momentum=None,
    )
    torch.save(
        {"epoch": 5, "arch": "test_resnet", "state_dict": model.state_dict(), "args": args},
        tmp_path / "model_best.pth.tar",
    )
    loaded = load_model(tmp_path / "model_best.pth.tar")
    assert loaded.source["model_args"] == {"global_pool": "max"}
    assert loaded.data_config["input_size"] == [3, 96, 96]
    assert loaded.data_config["mean"] == [0.2] * 3 and loaded.data_config["std"] == [0.3] * 3
    assert loaded.data_config["crop_pct"] == 0.9 and loaded.data_config["interpolation"] == "bicubic"
    assert any("training arguments" in n for n in loaded.notes)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(x))  # the max-pooled model, not an average-pooled one
    sc = convert(loaded, samples=2)
    assert sc.meta.strategy == "pooled" and not sc.meta.exact  # max pooling converts only approximately
    assert load_model(tmp_path / "model_best.pth.tar", input_size=(64, 64)).data_config["input_size"] == [3, 64, 64]


def test_hugging_face_folder_with_transformers_id2label(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=2)
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(
        json.dumps({"architecture": "test_resnet", "num_classes": 2, "id2label": {"0": "benign", "1": "malignant"}})
    )
    assert load_model(tmp_path).class_names == ["benign", "malignant"]


def test_weights_that_need_model_args_say_which(tmp_path):
    import torchvision

    torch.manual_seed(0)
    gray = timm.create_model("test_resnet", num_classes=2, in_chans=1)
    save_file(gray.state_dict(), str(tmp_path / "gray.safetensors"))
    with pytest.raises(InputError, match="or pass in_chans=1 in model_args") as e:
        load_model("test_resnet", weights=tmp_path / "gray.safetensors")
    assert e.value.param == "model_args"
    assert (
        load_model("test_resnet", weights=tmp_path / "gray.safetensors", model_args={"in_chans": 1}).data_config[
            "input_size"
        ][0]
        == 1
    )
    googlenet = torchvision.models.googlenet(num_classes=3, aux_logits=True, init_weights=True)
    torch.save(googlenet.state_dict(), tmp_path / "googlenet.pth")
    with pytest.raises(InputError, match="or pass aux_logits=True in model_args") as e:
        load_model("torchvision:googlenet", weights=tmp_path / "googlenet.pth")
    assert e.value.param == "model_args"


def test_timm_training_checkpoint_with_bn_eps(tmp_path):
    """`train.py --bn-eps` changes every BatchNorm's eval output: it must reach the rebuilt model."""
    import argparse

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=2, bn_eps=0.5).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.1, 2.0)
    args = argparse.Namespace(
        model="test_efficientnet",
        num_classes=2,
        bn_eps=0.5,
        bn_momentum=None,
        gp=None,
        in_chans=None,
        model_kwargs={},
        img_size=64,
    )
    torch.save({"arch": "test_efficientnet", "state_dict": model.state_dict(), "args": args}, tmp_path / "ck.pth.tar")
    loaded = load_model(tmp_path / "ck.pth.tar")
    assert loaded.source["model_args"] == {"bn_eps": 0.5}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(x))


def _lightning_checkpoint(path, model, **hyper_parameters):
    """A checkpoint as Lightning's Trainer.save_checkpoint writes it for a LightningModule holding ``self.model``
    and a weighted loss ``self.criterion = nn.CrossEntropyLoss(weight=...)`` (a buffer in its state dict)."""
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["criterion.weight"] = torch.tensor([1.0, 2.0, 0.5])
    torch.save(
        {
            "epoch": 4,
            "global_step": 120,
            "pytorch-lightning_version": "2.6.0",
            "state_dict": state,
            "loops": {},
            "callbacks": {},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.01}]}],
            "lr_schedulers": [],
            "hparams_name": "kwargs",
            "hyper_parameters": {"lr": 0.01, **hyper_parameters},
        },
        path,
    )
    return path


def test_lightning_checkpoint_with_a_loss_weight_loads_and_lists_the_extra_keys(tmp_path):
    m = _model(3)
    ckpt = _lightning_checkpoint(tmp_path / "epoch=4-step=120.ckpt", m, arch="test_resnet")
    loaded = load_model("test_resnet", weights=ckpt)
    assert _same_logits(loaded.module, m)
    assert any("outside the model" in n and "criterion.weight" in n for n in loaded.notes)
    assert not any("records the architecture" in n for n in loaded.notes)
    alone = load_model(ckpt)  # the architecture from its hyper_parameters
    assert alone.architecture == "test_resnet" and _same_logits(alone.module, m)


def test_lightning_hyper_parameters_naming_another_architecture_is_noted(tmp_path):
    ckpt = _lightning_checkpoint(tmp_path / "last.ckpt", _model(3), backbone="resnet18")
    r = run_cli("inspect", "test_resnet", "--weights", ckpt, "--json")
    assert r.returncode == 0, r.stderr
    assert "records the architecture 'resnet18'" in r.stdout + r.stderr
    assert "criterion.weight" in r.stdout + r.stderr
