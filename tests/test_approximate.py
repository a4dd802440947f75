"""Approximate strategies on real architectures, token models, and naming the cut by hand."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import softcamify
from softcamify.checkpoints import load_model
from softcamify.errors import ConversionError, UsageError


def _roundtrip(model, tmp_path, size):
    again = softcamify.load(softcamify.save(model, tmp_path / "m.safetensors"))
    x = torch.randn(2, *size)
    with torch.no_grad():
        logits, maps = again.forward_maps(x)
        assert torch.equal(logits, model(x))
        torch.testing.assert_close(maps.mean((2, 3)), logits, rtol=0, atol=1e-5)
    return maps


@pytest.mark.parametrize(
    "name, strategy, size",
    [
        ("mobilenetv3_small_050", "prelogits", 64),
        ("ghostnet_050", "prelogits", 64),
        ("hgnetv2_b0", "prelogits", 64),
        ("vgg11", "grid", 64),  # timm's 7×7 ConvMlp (narrowed below to keep the test fast)
        ("test_mambaout", "prelogits", 64),
    ],
)
def test_approximate_strategies_report_fidelity(name, strategy, size, tmp_path):
    torch.manual_seed(0)
    model_args = {"mlp_ratio": 1 / 16} if name == "vgg11" else None
    loaded = load_model(name, num_classes=3, input_size=(size, size), model_args=model_args)
    model = softcamify.convert(loaded, samples=4)
    report = model.meta.conversion
    assert report["strategy"] == strategy and report["exact"] is False
    assert report["passed"] is True  # approximations are not held to --atol ...
    assert 0.0 <= report["top1_agreement"] <= 1.0 and report["kl_divergence"] >= 0.0
    assert report["max_abs_diff"] >= report["mean_abs_diff"] >= 0.0
    assert any("fine-tune before use" in n for n in report["notes"])  # ... but flagged
    maps = _roundtrip(model, tmp_path, (3, size, size))
    assert maps.shape[1] == 3 and maps.flatten(2).std(-1).max() > 0  # maps vary over space
    with pytest.raises(ConversionError, match="refused under strict"):
        softcamify.convert(loaded, samples=1, strict=True)


def test_other_pooling_is_approximated_per_position(tmp_path):
    loaded = load_model("test_resnet", num_classes=3, model_args={"global_pool": "avgmax"}, input_size=(64, 64))
    model = softcamify.convert(loaded, samples=2)
    assert model.meta.conversion["strategy"] == "pooled"
    assert model.meta.source["model_args"] == {"global_pool": "avgmax"}
    _roundtrip(model, tmp_path, (3, 64, 64))


def test_torchvision_vgg_flatten_head_is_a_grid_head(tmp_path):
    loaded = load_model("torchvision:vgg11", num_classes=2, input_size=(64, 64))
    model = softcamify.convert(loaded, samples=2)
    assert model.meta.conversion["strategy"] == "grid"
    _roundtrip(model, tmp_path, (3, 64, 64))


def test_average_token_heads_are_exact_and_class_token_heads_are_not(tmp_path):
    avg = softcamify.convert(load_model("test_vit2", num_classes=4), samples=2)  # fc_norm on the patch mean
    assert avg.meta.conversion["exact"] and avg.meta.conversion["strategy"] == "normed"
    assert avg.meta.conversion["evidence_grid"] == [10, 10]
    _roundtrip(avg, tmp_path, tuple(avg.meta.data_config["input_size"]))

    cls = softcamify.convert(load_model("test_vit", num_classes=4), samples=2)
    assert cls.meta.conversion["strategy"] == "tokens" and not cls.meta.conversion["exact"]


def test_swin_like_nhwc_features_convert_exactly(tmp_path):
    loaded = load_model(
        "swin_tiny_patch4_window7_224",
        num_classes=3,
        model_args={"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]},
    )
    model = softcamify.convert(loaded, samples=2)
    assert model.meta.layout == "NHWC" and model.meta.conversion["exact"]
    _roundtrip(model, tmp_path, (3, 224, 224))


class Untraceable(nn.Module):
    """A user's classifier with data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.blocks = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = self.stem(x)
        if x.sum() > -1e9:  # data-dependent branch
            x = self.blocks(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_untraceable_module_needs_named_layers():
    model = Untraceable().eval()
    with pytest.raises(ConversionError, match="name the cut with features_layer='blocks' and classifier='fc'") as e:
        softcamify.convert(model, input_size=(32, 32), samples=1)
    assert e.value.params == ("features_layer", "classifier")
    converted = softcamify.convert(model, input_size=(32, 32), samples=2, features_layer="blocks", classifier="fc")
    assert converted.meta.conversion["exact"] and converted.meta.conversion["evidence_grid"] == [16, 16]
    with pytest.raises(UsageError, match=r"^classifier 'head' is not a module of Untraceable\.$") as e:
        softcamify.convert(model, input_size=(32, 32), features_layer="blocks", classifier="head")
    assert e.value.param == "classifier"


def test_onnx_export_of_an_approximate_conversion_validates(tmp_path):
    from softcamify.exporters import export_onnx
    from softcamify.onnx_runtime import OnnxModel

    model = softcamify.convert(load_model("mobilenetv3_small_050", num_classes=3, input_size=(64, 64)), samples=2)
    report = export_onnx(model, tmp_path / "m.onnx")
    assert report.passed and report.strategy == "prelogits" and report.exact is False
    assert report.max_abs_diff_logits <= 1e-4 and report.max_abs_diff_evidence <= 1e-4
    x = torch.randn(2, 3, 64, 64)
    logits, evidence = OnnxModel(tmp_path / "m.onnx").run(x.numpy())
    with torch.no_grad():
        ref_logits, ref_maps = model.forward_maps(x)
    assert abs(logits - ref_logits.numpy()).max() <= 1e-4
    assert abs(evidence - ref_maps.numpy()).max() <= 1e-4


def test_finetuning_recovers_the_fidelity_of_an_approximate_conversion(tmp_path):
    """A class-token ViT converts only approximately; a short fine-tune on the black box's own
    decisions brings the SoftCAM model's agreement with it back up."""
    import numpy as np
    from PIL import Image

    from softcamify.images import preprocess
    from softcamify.training import FinetuneConfig, finetune

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(24):
        img = Image.fromarray((rng.random((20, 20, 3)) * 255).astype(np.uint8)).resize((160, 160), Image.BILINEAR)
        paths.append(tmp_path / f"img{i}.png")
        img.save(paths[-1])
    original = timm.create_model("test_vit", num_classes=2).eval()
    cfg = load_model("test_vit", num_classes=2).data_config
    x = torch.from_numpy(
        np.stack(
            [
                preprocess(
                    p,
                    input_size=cfg["input_size"][1:],
                    mean=cfg["mean"],
                    std=cfg["std"],
                    interpolation=cfg["interpolation"],
                    crop_pct=cfg["crop_pct"],
                )
                for p in paths
            ]
        )
    )
    with torch.no_grad():  # balance the black box's decisions, then use them as labels
        margin = original(x)[:, 1] - original(x)[:, 0]
        original.head.bias[1] -= margin.median()
        labels = original(x).argmax(1)
    for split in ("train", "val"):
        for i, p in enumerate(paths):
            d = tmp_path / "data" / split / f"c{int(labels[i])}"
            d.mkdir(parents=True, exist_ok=True)
            Image.open(p).save(d / p.name)

    model = softcamify.convert(original, samples=2)
    assert model.meta.strategy == "tokens"

    def agreement(m):
        with torch.no_grad():
            return (m(x).argmax(1) == labels).float().mean().item()

    before = agreement(model)
    config = FinetuneConfig(epochs=3, lr=1e-3, l1=0.0, augment="none", batch_size=8, monitor="val_acc", device="cpu")
    result = finetune(model, tmp_path / "data", tmp_path / "run", config)
    after = agreement(result.model)
    assert before < 0.8 and after > before + 0.2, (before, after)
