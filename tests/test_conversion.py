"""Exact conversion of real architectures: the converted model reproduces the original logits."""

from __future__ import annotations

import math

import pytest
import timm
import torch

import softcamify
from softcamify.checkpoints import load_model
from softcamify.errors import ConversionError, InputError, UsageError, ValidationError

# every timm test_* model with a spatial feature map and an exactly decomposable head
TIMM_TEST_CNNS = [
    "test_resnet",
    "test_efficientnet",
    "test_efficientnet_gn",
    "test_efficientnet_ln",
    "test_efficientnet_evos",
    "test_byobnet",
    "test_nfnet",
    "test_convnext",
    "test_convnext2",
    "test_convnext3",
]
TORCHVISION = ["resnet18", "densenet121", "efficientnet_b0", "convnext_tiny", "mobilenet_v2"]


def _check_maps(model, size, n=2):
    x = torch.randn(n, *size)
    with torch.no_grad():
        logits, maps = model.forward_maps(x)
        assert maps.ndim == 4 and maps.shape[:2] == logits.shape
        torch.testing.assert_close(maps.mean((2, 3)), logits, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(x), logits, rtol=0, atol=0)


@pytest.mark.parametrize("name", TIMM_TEST_CNNS)
def test_timm_test_models_convert_exactly(name, tmp_path):
    torch.manual_seed(0)
    original = timm.create_model(name, pretrained=False, num_classes=5).eval()
    model = softcamify.convert(original, samples=4)
    report = model.meta.conversion
    assert report["exact"] is True
    assert report["max_abs_diff"] <= 1e-4
    assert report["top1_agreement"] == 1.0
    assert report["num_classes"] == 5
    size = tuple(model.meta.data_config["input_size"])
    _check_maps(model, size)
    # the converted model gives the original's logits on fresh inputs too
    x = torch.randn(3, *size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=1e-4, atol=1e-4)
    # save -> load gives identical outputs
    path = softcamify.save(model, tmp_path / "m.safetensors")
    again = softcamify.load(path)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_models_convert_exactly(name, tmp_path):
    torch.manual_seed(0)
    loaded = load_model(f"torchvision:{name}", num_classes=4, input_size=(64, 64))
    model = softcamify.convert(loaded, samples=2)
    report = model.meta.conversion
    assert report["exact"] and report["max_abs_diff"] <= 1e-4 and report["top1_agreement"] == 1.0
    assert model.meta.source["kind"] == "torchvision" and model.meta.source["split"] == "fx"
    _check_maps(model, (3, 64, 64))
    again = softcamify.load(softcamify.save(model, tmp_path / f"{name}.safetensors"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
        torch.testing.assert_close(model(x), loaded.module(x), rtol=1e-4, atol=1e-4)


def test_convert_does_not_modify_the_original():
    original = timm.create_model("test_resnet", num_classes=3).eval()
    before = {k: v.clone() for k, v in original.state_dict().items()}
    softcamify.convert(original, samples=1)
    after = original.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert original.get_classifier().out_features == 3


def test_input_size_override_changes_the_grid():
    loaded = load_model("test_resnet", input_size=(96, 64))
    model = softcamify.convert(loaded, samples=1)
    assert model.meta.data_config["input_size"] == [3, 96, 64]
    assert model.meta.conversion["evidence_grid"] == [3, 2]


def test_strict_refuses_an_approximate_head():
    with pytest.raises(ConversionError, match="Hardswish"):
        softcamify.convert(timm.create_model("mobilenetv3_small_050", num_classes=3), samples=1, strict=True)


def test_verification_failure_raises(monkeypatch):
    import softcamify.conversion as conv

    real = conv.compare

    def skewed(*args, **kwargs):
        out = real(*args, **kwargs)
        out["max_abs_diff"] = 1.0
        return out

    monkeypatch.setattr(conv, "compare", skewed)
    with pytest.raises(ValidationError, match="atol"):
        softcamify.convert(timm.create_model("test_resnet", num_classes=3), samples=1)


def test_convert_is_deterministic(tmp_path):
    torch.manual_seed(1)
    original = timm.create_model("test_efficientnet", num_classes=3).eval()
    a = softcamify.save(softcamify.convert(original, samples=2), tmp_path / "a.safetensors")
    b = softcamify.save(softcamify.convert(original, samples=2), tmp_path / "b.safetensors")
    assert a.read_bytes() == b.read_bytes()


def test_metadata_records_versions_and_classes(tmp_path):
    model = softcamify.convert(
        timm.create_model("test_resnet", num_classes=2), class_names=["benign", "malignant"], samples=1
    )
    path = softcamify.save(model, tmp_path / "m.safetensors")
    meta = softcamify.read_metadata(path)
    assert meta["format"] == "softcamify" and meta["format_version"] == 1
    assert meta["class_names"] == ["benign", "malignant"]
    assert set(meta["versions"]) == {"softcamify", "torch", "timm"}
    assert meta["source"]["name"] == "test_resnet"
    assert meta["conversion"]["exact"] is True
    assert softcamify.load(path).class_names == ["benign", "malignant"]


def test_a_half_precision_model_converts_in_float32():
    """convert() and inspect() copy the model to the CPU in float32 (as they would a model on a GPU)."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    half = model.half()
    assert softcamify.inspect(half, input_size=(64, 64)).plan.exact
    sc = softcamify.convert(half, input_size=(64, 64), samples=2)
    assert next(half.parameters()).dtype == torch.float16  # the user's model is left as it was
    assert next(sc.parameters()).dtype == torch.float32
    with torch.no_grad():
        # the half model's weights, read in float32: what fp16 weights mean
        torch.testing.assert_close(sc(x), model.float()(x), atol=1e-5, rtol=1e-5)
        assert (sc(x) - ref).abs().max() < 0.05  # and close to the original float32 model


def test_in_memory_models_save_a_file_that_rebuilds_the_same_network(tmp_path):
    """convert(module) records how to rebuild the backbone only when rebuilding it gives the same network."""
    import torchvision

    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    # torchvision in memory: found by its builder, rebuilt by name
    tv = torchvision.models.resnet18(num_classes=3).eval()
    sc = softcamify.convert(tv, input_size=(64, 64), samples=2)
    assert sc.meta.source["kind"] == "torchvision" and sc.meta.source["name"] == "resnet18"
    back = softcamify.load(softcamify.save(sc, tmp_path / "tv.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(back(x), sc(x))
    # timm built with a constructor argument softcamify cannot see: never rebuilt as a different network
    os16 = timm.create_model("test_resnet", num_classes=3, output_stride=16).eval()
    sc = softcamify.convert(os16, input_size=(64, 64), samples=2)
    assert sc.meta.source["kind"] == "module"
    path = softcamify.save(sc, tmp_path / "os16.safetensors")
    with pytest.raises(InputError, match=r"softcamify\.load\(path, module="):
        softcamify.load(path)
    with pytest.raises(InputError, match="is not the network it was converted from"):
        softcamify.load(path, module=timm.create_model("test_convnext", num_classes=3))
    back = softcamify.load(path, module=timm.create_model("test_resnet", num_classes=3, output_stride=16))
    with torch.no_grad():
        torch.testing.assert_close(back(x), sc(x))
        assert back.forward_maps(x)[1].shape[-2:] == (4, 4)  # stride 16 at 64 px, as converted
    # a plain timm model is still rebuilt by name
    plain = softcamify.convert(timm.create_model("test_resnet", num_classes=3).eval(), input_size=(64, 64), samples=2)
    assert plain.meta.source["kind"] == "timm" and plain.meta.source["name"] == "test_resnet"


def test_a_pickled_torchvision_module_converts_without_depending_on_its_file(tmp_path):
    import torchvision

    from softcamify.conversion import as_softcam

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=2).eval(), tmp_path / "whole.pth")
    sc, _ = as_softcam(tmp_path / "whole.pth", trust_pickle=True, input_size=(64, 64))
    path = softcamify.save(sc, tmp_path / "sc.safetensors")
    (tmp_path / "whole.pth").unlink()
    back = softcamify.load(path)  # no --trust-pickle and no pickle file needed
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(back(x), sc(x))


def test_a_named_cut_that_skips_part_of_the_network_is_not_called_exact():
    """torchvision's ViT cut at its patch embedding: the head is affine on that layer, but the layer is not
    what feeds the classifier. inspect verifies named cuts on the whole model; a constant-logit model
    (torchvision's zero-initialized ViT head) cannot be verified, and convert says so."""
    import torchvision

    from softcamify.conversion import inspect

    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(  # a small one: still a transformer between cut and head
        image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=3
    ).eval()
    zero = inspect(vit, input_size=(32, 32), features_layer="conv_proj", classifier="heads.head")
    assert not zero.plan.exact and "cannot be verified" in zero.plan.reason
    sc = softcamify.convert(vit, input_size=(32, 32), samples=4, features_layer="conv_proj", classifier="heads.head")
    assert any("do not change with the input" in n for n in sc.meta.conversion["notes"])
    torch.nn.init.normal_(vit.heads.head.weight)
    wrong = inspect(vit, input_size=(32, 32), features_layer="conv_proj", classifier="heads.head")
    assert not wrong.plan.exact and "does not reproduce the model" in wrong.plan.reason
    with pytest.raises(ValidationError):
        softcamify.convert(vit, input_size=(32, 32), samples=4, features_layer="conv_proj", classifier="heads.head")
    # a right cut is still exact
    res = timm.create_model("test_resnet", num_classes=3).eval()
    assert inspect(res, input_size=(64, 64), features_layer="layer4", classifier="fc").plan.exact


# --- finer evidence grids: --output-stride 16 / 8 ----------------------------------------------------
def _dilated_reference(spec: str, original: torch.nn.Module, stride: int) -> torch.nn.Module:
    """The original's weights in the network built with its stride traded for dilation, built here."""
    import torchvision

    if spec.startswith("torchvision:"):
        dilate = [False, stride <= 8, True]
        net = torchvision.models.resnet50(num_classes=3, replace_stride_with_dilation=dilate)
    else:
        net = timm.create_model(spec, num_classes=3, output_stride=stride)
    net.load_state_dict(original.state_dict())
    return net.eval()


# torchvision's resnet18/34 refuse dilation (BasicBlock): its Bottleneck ResNets take it
@pytest.mark.parametrize("spec", ["test_resnet", "torchvision:resnet50"])
def test_output_stride_gives_a_finer_grid_from_the_same_weights(spec, tmp_path):
    torch.manual_seed(0)
    loaded = load_model(spec, num_classes=3, input_size=(64, 64))
    before = dict(loaded.source)
    base = softcamify.inspect(loaded)
    g = base.plan.evidence_grid
    assert base.to_dict()["grids"] == {"32": g, "16": [2 * g[0], 2 * g[1]], "8": [4 * g[0], 4 * g[1]]}
    x = torch.randn(2, 3, 64, 64)
    for stride, factor in ((16, 2), (8, 4)):
        sc = softcamify.convert(loaded, output_stride=stride, samples=2)
        r = sc.meta.conversion
        assert r["evidence_grid"] == [factor * g[0], factor * g[1]] and r["original_grid"] == g
        assert r["output_stride"] == stride and r["exact"] is False and sc.meta.exact is False
        for key in ("max_abs_diff", "mean_abs_diff", "max_rel_diff", "top1_agreement", "kl_divergence"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), key
        assert 0.0 <= r["top1_agreement"] <= 1.0 and r["kl_divergence"] >= 0.0
        assert r["dilated_max_abs_diff"] <= 1e-4  # the head itself converts exactly; the rest is the dilation
        assert any("fine-tune before use" in n and f"output stride {stride}" in n for n in r["notes"])
        _check_maps(sc, (3, 64, 64))
        with torch.no_grad():
            logits, maps = sc.forward_maps(x)
            assert maps.shape[-2:] == (factor * g[0], factor * g[1])
            # the SoftCAM model is the dilated network with the original's weights
            ref = _dilated_reference(spec.removeprefix("timm:"), loaded.module, stride)
            torch.testing.assert_close(logits, ref(x), rtol=1e-4, atol=1e-4)
        assert loaded.source == before  # the caller's model and source are left as they were
        # the file records the constructor argument: load() rebuilds the dilated backbone without pickle
        path = softcamify.save(sc, tmp_path / f"os{stride}.safetensors")
        meta = softcamify.read_metadata(path)
        assert meta["conversion"]["output_stride"] == stride
        args = meta["source"]["model_args"]
        if spec.startswith("torchvision:"):
            assert args == {"replace_stride_with_dilation": [False, stride == 8, True]}
        else:
            assert args == {"output_stride": stride}
        back = softcamify.load(path)
        with torch.no_grad():
            l2, m2 = back.forward_maps(x)
        assert torch.equal(m2, maps) and torch.equal(l2, logits)
        assert softcamify.inspect(back).to_dict()["grids"] == {str(stride): r["evidence_grid"]}
        with pytest.raises(ConversionError, match=rf"output_stride {stride}.*refused under strict"):
            softcamify.convert(loaded, output_stride=stride, samples=1, strict=True)


def test_output_stride_32_is_the_model_as_it_is():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3).eval()
    sc = softcamify.convert(model, input_size=(64, 64), output_stride=32, samples=2)
    report = sc.meta.conversion
    assert sc.meta.exact and report["output_stride"] == 32 and report["evidence_grid"] == [2, 2]
    assert sc.meta.source["model_args"] == {}
    with pytest.raises(UsageError, match="output_stride must be 32.*not 4"):
        softcamify.convert(model, input_size=(64, 64), output_stride=4, samples=1)


def test_output_stride_from_an_in_memory_model_and_on_the_fly():
    from softcamify.conversion import as_softcam, dilated

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3).eval()
    d = dilated(model, 16)
    assert d.source["model_args"] == {"output_stride": 16} and d.module is not model
    with torch.no_grad():
        assert d.module.forward_features(torch.randn(1, 3, 64, 64)).shape[-2:] == (4, 4)
    sc, loaded = as_softcam("test_resnet", num_classes=3, input_size=(64, 64), output_stride=8)
    assert sc.meta.conversion["evidence_grid"] == [8, 8] and loaded.source["model_args"] == {}
    with pytest.raises(UsageError, match="already a SoftCAM model"):
        as_softcam(sc, output_stride=16)
    with pytest.raises(UsageError, match="already a SoftCAM model"):
        dilated(sc, 16)


class _SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU())
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


@pytest.mark.parametrize(
    "case",
    [
        "torchvision:resnet18",
        "torchvision:densenet121",
        "mobilenetv3_small_050",
        "custom",
        "pickled",
        "timm_os16_in_memory",
    ],
)
def test_models_without_a_finer_grid_say_so(case, tmp_path):
    torch.manual_seed(0)
    if case == "custom":
        model, words = _SmallNet().eval(), ["_SmallNet is not a timm or torchvision network"]
    elif case == "pickled":
        torch.save(_SmallNet().eval(), tmp_path / "net.pt")
        # an importable class of the user's own: recorded as package.module:Class, never as the pickle's path
        model, words = load_model(tmp_path / "net.pt", trust_pickle=True), ["_SmallNet is not a timm or torchvision"]
    elif case == "timm_os16_in_memory":  # built with an argument softcamify cannot see: not rebuilt by name
        model = timm.create_model("test_resnet", num_classes=3, output_stride=16).eval()
        words = ["not a timm"]
    else:
        model = load_model(case, num_classes=3, input_size=(64, 64))
        arg = "output_stride=16" if case == "mobilenetv3_small_050" else "replace_stride_with_dilation"
        words = [f"does not build with {arg}", "offers only its own 2×2 grid (output_stride 32)"]
    with pytest.raises(UsageError, match=r"^output_stride 16: .* cannot trade stride for dilation") as e:
        softcamify.convert(model, input_size=(64, 64), output_stride=16, samples=1)
    msg = str(e.value)
    assert all(w in msg for w in words), msg
    assert msg.count(". ") == 0 and msg.endswith(".")  # one sentence
    if case == "torchvision:resnet18":
        assert "BasicBlock" in msg
        assert softcamify.inspect(model).to_dict()["grids"] == {"32": [2, 2]}
