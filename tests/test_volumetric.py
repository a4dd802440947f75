"""Volume models (N-D SoftCAM): 3D classifiers — torchvision's video ResNets, MONAI's spatial_dims=3
networks — convert exactly into evidence volumes B×K×d×h×w whose mean is the logits, export to ONNX with
a 5-D evidence output, and round-trip through the softcamify .safetensors format; image models keep their
files as they were."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli

import softcamify
from softcamify.checkpoints import load_model
from softcamify.conversion import convert, inspect
from softcamify.errors import UsageError
from softcamify.heads import EvidenceHead, build_head
from softcamify.model import SoftCAMMeta

pytest.importorskip("monai")

# tiny MONAI networks: the architecture classes by name, with small widths so they build and run in well
# under a second on two CPU cores
DENSENET_ARGS = {"spatial_dims": 3, "in_channels": 1, "init_features": 8, "growth_rate": 4, "block_config": [2] * 4}
DENSENET_SIZE = (32, 64, 64)  # D, H, W: an evidence grid of 1×2×2


def _check_exact(sc, loaded, x):
    """The converted model reproduces the original, and its evidence volumes average to its logits."""
    with torch.no_grad():
        logits, maps = sc.forward_maps(x)
        ref = loaded.module(x)
    assert maps.ndim == 5 and maps.shape[:2] == logits.shape
    torch.testing.assert_close(maps.mean(dim=(2, 3, 4)), logits, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-4)
    assert sc.meta.exact and sc.meta.strategy == "linear" and sc.meta.conversion["passed"]
    assert sc.spatial_dims == 3 and sc.meta.spatial_dims == 3
    assert isinstance(sc.head.conv, torch.nn.Conv3d) and tuple(sc.head.conv.kernel_size) == (1, 1, 1)
    return logits, maps


@pytest.fixture(scope="module")
def densenet():
    torch.manual_seed(0)
    loaded = load_model("monai:DenseNet121", num_classes=3, input_size=DENSENET_SIZE, model_args=DENSENET_ARGS)
    return loaded, convert(loaded, samples=2)


def test_r3d_18_converts_exactly():
    torch.manual_seed(0)
    loaded = load_model("torchvision:r3d_18", num_classes=4, input_size=(8, 32, 32))
    # the Kinetics preprocessing of torchvision's video models, 3 channels of T×H×W clips
    assert loaded.data_config["input_size"] == [3, 8, 32, 32]
    assert loaded.data_config["mean"] == pytest.approx([0.43216, 0.394666, 0.37645])
    sc = convert(loaded, samples=2)
    x = torch.randn(2, 3, 8, 32, 32)
    _, maps = _check_exact(sc, loaded, x)
    assert list(maps.shape) == [2, 4, 1, 2, 2]
    assert sc.meta.conversion["evidence_grid"] == [1, 2, 2]
    assert sc.meta.conversion["max_abs_diff"] < 1e-5


def test_monai_densenet_converts_exactly_and_inspect_reports_3d(densenet):
    loaded, sc = densenet
    x = torch.randn(2, 1, *DENSENET_SIZE)
    _, maps = _check_exact(sc, loaded, x)
    assert list(maps.shape[2:]) == [1, 2, 2]
    report = inspect(loaded).to_dict()
    assert report["spatial_dims"] == 3 and report["exact"] and report["strategy"] == "linear"
    assert report["evidence_grid"] == [1, 2, 2] and report["input_size"] == [1, *DENSENET_SIZE]
    assert report["feature_shape"][1:] == [1, 2, 2]
    own = inspect(sc).to_dict()  # a SoftCAM model describes its own evidence volumes
    assert own["spatial_dims"] == 3 and own["evidence_grid"] == [1, 2, 2] and "d×h×w" in own["head"]


def test_monai_resnet18_converts_exactly():
    """MONAI's ResNet ends with x.view(x.size(0), -1): its 3D form converts once the probe is 5-D."""
    torch.manual_seed(0)
    loaded = load_model(
        "monai:resnet18", num_classes=2, input_size=(16, 16, 16), model_args={"spatial_dims": 3, "n_input_channels": 1}
    )
    sc = convert(loaded, samples=2)
    _check_exact(sc, loaded, torch.randn(2, 1, 16, 16, 16))


def test_the_default_size_of_a_volume_model_is_3d():
    """No input size given: a volume model gets a D×H×W default (not the 224×224 of images)."""
    from torch import nn

    from softcamify.sources import data_config

    net = nn.Sequential(nn.Conv3d(1, 4, 3), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2))
    cfg = data_config(net, "module")
    assert len(cfg["input_size"]) == 4 and cfg["input_size"][0] == 1
    with pytest.raises(UsageError, match="D,H,W") as e:
        data_config(net, "module", input_size=(32, 32))
    assert e.value.params == ("input_size",)


def test_volume_input_size_must_have_three_axes(densenet):
    loaded, _ = densenet
    with pytest.raises(UsageError, match="3-D inputs; give D,H,W"):
        convert(loaded, input_size=(64, 64))


def test_onnx_export_of_a_volume_model_matches_pytorch(densenet, tmp_path):
    import onnx

    _, sc = densenet
    out = tmp_path / "vol.onnx"
    report = softcamify.export(sc, out)
    # validated in onnxruntime at batch 1 and 3 (and at a second size when spatially dynamic), within 1e-4
    batches = [c["batch"] for c in report.checks]
    assert batches[:2] == [1, 3]
    for c in report.checks:
        assert c["max_abs_diff_logits"] <= 1e-4 and c["max_abs_diff_evidence"] <= 1e-4
    assert report.dynamic_batch
    shapes = report.shapes
    assert shapes["input"][:2] == ["batch", 1] and len(shapes["input"]) == 5
    assert shapes["evidence"][:2] == ["batch", 3] and len(shapes["evidence"]) == 5
    assert report.dynamic_spatial  # MONAI's DenseNet takes other volume sizes: validated at a second one
    assert [c["size"] for c in report.checks][-1] == [48, 96, 128]
    assert shapes["input"][2:] == ["depth", "height", "width"]
    assert shapes["evidence"][2:] == ["evidence_depth", "evidence_height", "evidence_width"]
    props = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    assert props["spatial_dims"] == "3" and json.loads(props["input_size"]) == [1, *DENSENET_SIZE]

    # the torch-free runtime: 5-D input arrays give 5-D evidence, equal to PyTorch's
    rt = softcamify.runtime.load(out)
    assert rt.backend == "onnxruntime" and rt.input_size == (1, *DENSENET_SIZE) and rt.spatial_dims == 3
    assert rt.session.spatial_dims == 3
    x = np.random.default_rng(0).standard_normal((3, 1, *DENSENET_SIZE)).astype(np.float32)
    logits, maps = rt(x)
    with torch.no_grad():
        ref_logits, ref_maps = sc.forward_maps(torch.from_numpy(x))
    assert maps.shape == (3, 3, 1, 2, 2)
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(maps, ref_maps.numpy(), atol=1e-4)
    np.testing.assert_allclose(maps.mean(axis=(2, 3, 4)), logits, atol=1e-5)
    one_logits, _ = rt(x[0])  # one volume without its batch axis
    np.testing.assert_allclose(one_logits[0], logits[0], atol=1e-5)


def test_safetensors_round_trip_rebuilds_a_volume_model(densenet, tmp_path):
    from safetensors import safe_open

    _, sc = densenet
    out = tmp_path / "vol.safetensors"
    softcamify.export(sc, out)
    with safe_open(str(out), "pt") as f:
        meta = json.loads(f.metadata()["softcamify"])
    # rebuilt by source name and model args (no pickle), its dimensionality recorded
    assert meta["spatial_dims"] == 3 and meta["head"]["spatial_dims"] == 3
    assert meta["source"]["kind"] == "monai" and meta["source"]["model_args"]["spatial_dims"] == 3
    assert meta["data_config"]["input_size"] == [1, *DENSENET_SIZE]
    back = softcamify.load(out)
    assert back.spatial_dims == 3 and isinstance(back.head.conv, torch.nn.Conv3d)
    x = torch.randn(1, 1, *DENSENET_SIZE)
    with torch.no_grad():
        a, b = sc.forward_maps(x), back.forward_maps(x)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    # the torch runtime takes volumes too, and a three-number input size is D, H, W
    rt = softcamify.runtime.load(out, input_size=(32, 96, 96))
    assert rt.input_size == (1, 32, 96, 96) and rt.spatial_dims == 3 and rt.backend == "torch"
    logits, maps = rt(np.zeros((1, 1, 32, 96, 96), np.float32))
    assert maps.shape == (1, 3, 1, 3, 3)


def test_image_metadata_is_unchanged():
    """An image model's metadata and head spec have no spatial_dims key (files as before); files without
    it load as images."""
    head = EvidenceHead(8, 3)
    assert "spatial_dims" not in head.spec() and isinstance(head.conv, torch.nn.Conv2d)
    meta = SoftCAMMeta({"kind": "timm", "name": "x"}, "linear", True, 3, ["a", "b", "c"], {}, head.spec())
    d = meta.to_dict()
    assert "spatial_dims" not in d
    assert SoftCAMMeta.from_dict(d).spatial_dims == 2
    vol = build_head({**head.spec(), "spatial_dims": 3})
    assert isinstance(vol.conv, torch.nn.Conv3d) and vol.spec()["spatial_dims"] == 3


def test_normed_head_on_volumes_is_exact():
    """The pooled-statistics decomposition (LayerNorm heads) holds over three spatial axes too."""
    from torch import nn

    from softcamify.heads import analyze

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv3d(1, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.LayerNorm(6),
        nn.Linear(6, 3),
    ).eval()
    plan, parts, evidence = analyze(net, (1, 8, 8, 8))
    assert plan.strategy == "normed" and plan.exact and plan.spatial_dims == 3
    x = torch.randn(2, 1, 8, 8, 8)
    with torch.no_grad():
        f = parts.features(x).double()
        torch.testing.assert_close(evidence(f).mean(dim=(2, 3, 4)), net.double()(x.double()))


def test_cli_inspect_takes_a_volume_input_size():
    r = run_cli(
        "inspect",
        "monai:DenseNet121",
        "--model-args",
        json.dumps({**DENSENET_ARGS, "out_channels": 2}),
        "--input-size",
        "32,64,64",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["spatial_dims"] == 3 and data["input_size"] == [1, 32, 64, 64] and data["evidence_grid"] == [1, 2, 2]


def test_an_in_memory_volume_model_rebuilds_by_name(tmp_path):
    """A MONAI 3D network converted in Python is recorded as monai:DenseNet121 with spatial_dims=3 (found by
    rebuilding it), so its file loads without the module."""
    from monai.networks.nets import DenseNet121

    torch.manual_seed(0)
    net = DenseNet121(out_channels=2, **DENSENET_ARGS).eval()
    sc = softcamify.convert(net, input_size=DENSENET_SIZE, samples=2)
    source = sc.meta.source
    assert source["kind"] == "monai" and source["name"] == "DenseNet121"
    assert source["model_args"]["spatial_dims"] == 3 and source["model_args"]["block_config"] == [2, 2, 2, 2]
    softcamify.save(sc, tmp_path / "m.safetensors")
    back = softcamify.load(tmp_path / "m.safetensors")
    x = torch.randn(1, 1, *DENSENET_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(back.forward_maps(x)[1], sc.forward_maps(x)[1])
        torch.testing.assert_close(back(x), net(x), atol=1e-5, rtol=1e-4)
