"""OnnxModel on graphs exported with a fixed batch size (``torch.onnx.export`` without ``dynamic_axes``):
real exports, real onnxruntime sessions, outputs compared with the PyTorch models they came from."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

from softcamify.errors import InputError
from softcamify.onnx_runtime import OnnxModel

SIZE = 32


def _export_fixed(module: nn.Module, path, batch: int, size: int, outputs: list[str]) -> None:
    """The TorchScript exporter with no dynamic axes: every dimension, the batch included, is fixed."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter says it is legacy
        torch.onnx.export(
            module.eval(),
            (torch.randn(batch, 3, size, size),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=outputs,
        )


def _plain() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    ).eval()


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A third-party classifier exported at batch 1 and at batch 3 (no metadata, one output)."""
    model = _plain()
    root = tmp_path_factory.mktemp("fixed")
    paths = {}
    for batch in (1, 3):
        paths[batch] = root / f"b{batch}.onnx"
        _export_fixed(model, paths[batch], batch, SIZE, ["logits"])
    return model, paths


@pytest.mark.parametrize("batch", [1, 3])
def test_fixed_batch_graph_runs_any_number_of_images(plain, batch):
    model, paths = plain
    om = OnnxModel(paths[batch], mean=[0.5], std=[0.5])
    assert om.input.shape == [batch, 3, SIZE, SIZE] and om.fixed_batch == batch
    x = np.random.default_rng(1).standard_normal((7, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    for n in (1, 2, 3, 4, 7):  # fewer, as many and more images than the graph's batch; remainders padded
        logits, evidence = om.run(x[:n])
        assert evidence is None and logits.shape == (n, 5) and logits.dtype == np.float32
        np.testing.assert_allclose(logits, want[:n], atol=1e-5, rtol=0)
    # one image without a batch axis
    np.testing.assert_allclose(om.run(x[0])[0], want[:1], atol=1e-5, rtol=0)


def test_predict_runs_a_fixed_batch_of_three_in_groups(plain, tmp_path):
    from softcamify.images import preprocess
    from softcamify.prediction import predict

    model, paths = plain
    rng = np.random.default_rng(2)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 50, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    report = predict(paths[3], tmp_path, top_k=5, batch_size=4, mean=[0.5], std=[0.25])
    assert any("exactly 3 images per run" in n for n in report.notes), report.notes
    x = np.stack(
        [preprocess(p.image, input_size=(SIZE, SIZE), mean=[0.5] * 3, std=[0.25] * 3) for p in report.predictions]
    )
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(x)).double(), dim=1).numpy()
    assert len(report.predictions) == 5
    for pred, probs in zip(report.predictions, want, strict=True):
        np.testing.assert_allclose(
            [e["probability"] for e in pred.top_k], [probs[e["index"]] for e in pred.top_k], atol=1e-6, rtol=0
        )


def test_fixed_batch_graph_still_checks_the_other_axes(plain):
    _, paths = plain
    om = OnnxModel(paths[3], mean=[0.5], std=[0.5])
    with pytest.raises(InputError, match=r"b3.onnx takes input of shape \[3, 3, 32, 32\]; .*axis 1 must be 3"):
        om.run(np.zeros((2, 1, SIZE, SIZE), np.float32))
    with pytest.raises(InputError, match="axis 3 must be 32"):
        om.run(np.zeros((4, 3, SIZE, SIZE + 1), np.float32))
    with pytest.raises(InputError, match="b3.onnx was given no images"):
        om.run(np.zeros((0, 3, SIZE, SIZE), np.float32))


def test_dynamic_batch_graph_has_no_fixed_batch(tmp_path):
    path = tmp_path / "dyn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _plain(),
            (torch.randn(1, 3, SIZE, SIZE),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
        )
    om = OnnxModel(path, mean=[0.5], std=[0.5])
    assert om.fixed_batch is None and om.run(np.zeros((5, 3, SIZE, SIZE), np.float32))[0].shape == (5, 5)


# --- a SoftCAM model exported with a fixed batch: explain and evaluate run it transparently ------------------
class _Maps(nn.Module):
    def __init__(self, sc):
        super().__init__()
        self.sc = sc

    def forward(self, input):  # noqa: A002 (the ONNX input name)
        return self.sc.forward_maps(input)


@pytest.fixture(scope="module")
def softcam_fixed(tmp_path_factory):
    """A converted test_resnet (64 px, 3 classes) and its export with a fixed batch of 2 plus softcamify metadata."""
    import timm

    import softcamify
    from softcamify.data.synth import make_lesions
    from softcamify.exporters import onnx_metadata

    root = tmp_path_factory.mktemp("softcam_fixed")
    torch.manual_seed(0)
    original = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    sc = softcamify.convert(
        original, input_size=(64, 64), samples=2, class_names=["bright_lesion", "healthy", "red_lesion"]
    ).eval()
    path = root / "fixed2.onnx"
    _export_fixed(_Maps(sc), path, 2, 64, ["logits", "evidence"])
    proto = onnx.load(str(path))
    for key, value in onnx_metadata(
        sc, exporter="torchscript", opset=proto.opset_import[0].version, dynamic_spatial=False
    ).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    make_lesions(root / "ds", n=15, size=64, seed=3, workers=1)
    return {"module": sc, "onnx": path, "data": root / "ds"}


def test_explain_with_a_fixed_batch_export_matches_pytorch(softcam_fixed, tmp_path):
    from softcamify.explanations import explain

    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(80, 100), (64, 64), (120, 90)]):  # 3 images: a padded last group of 2
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    assert OnnxModel(softcam_fixed["onnx"]).fixed_batch == 2
    res_o = explain(softcam_fixed["onnx"], tmp_path, classes="all", batch_size=16, device="cpu")
    res_t = explain(softcam_fixed["module"], tmp_path, classes="all", batch_size=16, device="cpu")
    assert len(res_o) == len(res_t) == 3
    for o, t in zip(res_o, res_t, strict=True):
        assert o.maps.shape == t.maps.shape == (3, 2, 2)
        np.testing.assert_allclose(o.maps, t.maps, atol=1e-4, rtol=0)
        np.testing.assert_allclose(o.logits, t.logits, atol=1e-4, rtol=0)


def test_evaluate_with_a_fixed_batch_export_matches_pytorch(softcam_fixed):
    from softcamify.evaluation import evaluate

    # deletion/insertion curves run the model on batches of every size, none of them 2
    kw = dict(steps=4, batch_size=3, device="cpu", examples=0)
    res_o = evaluate(softcam_fixed["onnx"], softcam_fixed["data"], **kw)
    res_t = evaluate(softcam_fixed["module"], softcam_fixed["data"], **kw)
    assert res_o.counts == res_t.counts and res_o.counts["images"] == 3
    assert res_o.classification["confusion_matrix"] == res_t.classification["confusion_matrix"]
    so = {m["key"]: m["metrics"] for m in res_o.method_summaries()}["softcam"]
    st = {m["key"]: m["metrics"] for m in res_t.method_summaries()}["softcam"]
    assert set(so) == set(st) and "deletion_auc" in so
    for metric in so:
        assert so[metric]["mean"] == pytest.approx(st[metric]["mean"], abs=1e-4, nan_ok=True), metric
