"""Single-logit (sigmoid) binary classifiers: the exact two-class view, and every command on such a model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from PIL import Image
from torch import nn

import softcamify
from softcamify.binary import decision_names, is_binary, names_fit, probabilities, two_class


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


# --------------------------------------------------------------------------------------------------------
# the two-class view
# --------------------------------------------------------------------------------------------------------


def test_probabilities_are_the_sigmoid_pair_and_softmax_otherwise():
    z = np.array([[2.0], [-30.0], [0.0], [700.0], [-700.0]])
    p = probabilities(z)
    assert p.shape == (5, 2)
    np.testing.assert_allclose(p[:, 1], _sigmoid(z[:, 0]), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)
    assert np.isfinite(p).all()  # no overflow at |z| = 700
    logits = np.array([[1.0, 2.0, 3.0]])
    e = np.exp(logits - 3.0)
    np.testing.assert_allclose(probabilities(logits), e / e.sum(), rtol=1e-12)


def test_two_class_maps_average_to_the_two_class_logits():
    maps = torch.randn(3, 1, 4, 5, dtype=torch.float64)
    z = maps.mean((2, 3))
    z2, maps2 = two_class(z), two_class(maps)
    assert z2.shape == (3, 2) and maps2.shape == (3, 2, 4, 5)
    torch.testing.assert_close(maps2.mean((2, 3)), z2)
    torch.testing.assert_close(maps2[:, 1], maps[:, 0] / 2)
    torch.testing.assert_close(maps2[:, 0], -maps[:, 0] / 2)
    np.testing.assert_array_equal(two_class(np.ones((2, 3))), np.ones((2, 3)))  # K ≥ 2: unchanged


def test_cross_entropy_of_the_view_is_binary_cross_entropy():
    from softcamify.training import elasticnet_loss

    z = torch.randn(16, 1, dtype=torch.float64, requires_grad=True)
    maps = z.detach()[:, :, None, None].expand(16, 1, 2, 2).clone()
    y = torch.randint(0, 2, (16,))
    loss, ce, _, _ = elasticnet_loss(z, maps, y)
    bce = F.binary_cross_entropy_with_logits(z[:, 0], y.double())
    torch.testing.assert_close(loss.double(), bce, rtol=1e-6, atol=1e-7)
    (g,) = torch.autograd.grad(loss, z)
    (g_ref,) = torch.autograd.grad(bce, z)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-7)


def test_names():
    assert is_binary(1) and not is_binary(2)
    assert decision_names(["class_0"], 1) == ["negative", "positive"]
    assert decision_names(["pneumonia"], 1) == ["not_pneumonia", "pneumonia"]
    assert decision_names(["normal", "pneumonia"], 1) == ["normal", "pneumonia"]
    assert decision_names(["a", "b", "c"], 3) == ["a", "b", "c"]
    assert names_fit(1, 1) and names_fit(1, 2) and names_fit(3, 3)
    assert not names_fit(1, 3) and not names_fit(2, 1) and not names_fit(3, 2)


# --------------------------------------------------------------------------------------------------------
# a timm black box with one logit, through every command
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def binary_setup(tmp_path_factory):
    """A timm test_resnet with one output logit (random weights, as a user's BCE checkpoint) and an easy
    two-class dataset: bright vs dark images, masks on the bright square of the 'bright' class."""
    import timm
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("binary")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=1).eval()
    save_file(model.state_dict(), str(root / "bin.safetensors"))
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 6), ("test", 6)):
        for cls in ("dark", "bright"):
            (root / "data" / split / cls).mkdir(parents=True)
            (root / "data" / "masks" / split / cls).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (48, 48, 3)).astype(np.uint8)
                mask = np.zeros((48, 48), np.uint8)
                if cls == "bright":
                    y, x = rng.integers(4, 28, 2)
                    img[y : y + 16, x : x + 16] = 255
                    mask[y : y + 16, x : x + 16] = 255
                Image.fromarray(img).save(root / "data" / split / cls / f"{i}.png")
                Image.fromarray(mask).save(root / "data" / "masks" / split / cls / f"{i}.png")
    return {"root": root, "weights": root / "bin.safetensors", "data": root / "data", "module": model}


def test_convert_is_exact_and_keeps_one_evidence_map(binary_setup, tmp_path):
    out = tmp_path / "sc.safetensors"
    r = run_cli(
        "convert",
        "test_resnet",
        "--weights",
        binary_setup["weights"],
        "--input-size",
        "48",
        "-o",
        out,
        "--class-names",
        "dark,bright",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["exact"] and report["passed"] and report["max_abs_diff"] < 1e-5 and report["num_classes"] == 1
    sc = softcamify.load(out)
    assert sc.meta.num_classes == 1 and sc.meta.class_names == ["dark", "bright"]
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        logits, maps = sc.forward_maps(x)
        torch.testing.assert_close(logits, binary_setup["module"](x), atol=1e-5, rtol=1e-5)
    assert maps.shape == (3, 1, 2, 2)
    r = run_cli(
        "convert",
        "test_resnet",
        "--weights",
        binary_setup["weights"],
        "-o",
        tmp_path / "x.safetensors",
        "--class-names",
        "a,b,c",
    )
    assert r.returncode == 2 and "3 names" in r.stderr and "one logit" in r.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_predict_torch_and_onnx_give_the_sigmoid(binary_setup, tmp_path):
    from softcamify.images import preprocess
    from softcamify.prediction import predict

    sc = softcamify.convert(
        softcamify.load_model("test_resnet", weights=binary_setup["weights"], input_size=(48, 48)),
        class_names=["dark", "bright"],
        samples=2,
    )
    path = softcamify.save(sc, tmp_path / "sc.safetensors")
    r = run_cli("export", path, "-o", tmp_path / "m.onnx")
    assert r.returncode == 0, r.stderr
    images = sorted((binary_setup["data"] / "test").rglob("*.png"))
    cfg = sc.meta.data_config
    x = np.stack(
        [
            preprocess(
                p,
                input_size=(48, 48),
                mean=cfg["mean"],
                std=cfg["std"],
                interpolation=cfg["interpolation"],
                crop_pct=cfg["crop_pct"],
            )
            for p in images
        ]
    )
    with torch.no_grad():
        z = binary_setup["module"](torch.from_numpy(x)).double().numpy()[:, 0]
    for model in (path, tmp_path / "m.onnx"):
        rep = predict(model, binary_setup["data"] / "test", top_k=5)
        assert rep.num_classes == 2
        by_image = {p.image: p for p in rep.predictions}
        for img, zi in zip(images, z, strict=True):
            top = {t["class"]: t for t in by_image[str(img)].top_k}
            assert set(top) == {"dark", "bright"}  # top-k is capped at the two classes
            assert top["bright"]["probability"] == pytest.approx(_sigmoid(zi), abs=1e-5)
            assert top["dark"]["probability"] == pytest.approx(1 - _sigmoid(zi), abs=1e-5)
            assert top["bright"]["logit"] == pytest.approx(zi, abs=1e-4)  # log-odds of the class
            assert top["dark"]["logit"] == pytest.approx(-zi, abs=1e-4)


def test_finetune_learns_with_binary_cross_entropy_and_stays_single_logit(binary_setup, tmp_path):
    from softcamify.evaluation import evaluate
    from softcamify.training import FinetuneConfig, finetune

    loaded = softcamify.load_model("test_resnet", weights=binary_setup["weights"], input_size=(48, 48))
    sc = softcamify.convert(loaded, samples=2)
    assert sc.meta.class_names == ["class_0"]
    cfg = FinetuneConfig(
        epochs=4,
        batch_size=8,
        lr=3e-3,
        l1=1e-4,
        device="cpu",
        workers=0,
        seed=0,
        warmup_epochs=0.0,
        augment="none",
        monitor="val_loss",
    )
    run = finetune(sc, binary_setup["data"], tmp_path / "run", cfg)
    tuned = softcamify.load(tmp_path / "run" / "best.safetensors")
    assert tuned.meta.num_classes == 1 and tuned.meta.class_names == ["bright", "dark"]  # the data's classes
    train = [h["train"] for h in run.history]
    assert train[-1]["accuracy"] == 1.0 and train[-1]["ce"] < 0.5 * train[0]["ce"]  # it learns the task
    # (validation lags: a random-weight network's BatchNorm statistics need more than 16 steps to settle)
    # evaluate reads the single logit exactly as fine-tuning did: the same accuracy and loss on val
    res = evaluate(tuned, binary_setup["data"], split="val", steps=2, device="cpu")
    best = run.best["val"]
    assert res.classification["class_names"] == ["bright", "dark"]
    assert res.classification["accuracy"] == pytest.approx(best["accuracy"])
    assert res.classification["roc_auc"] == pytest.approx(best["auc"])
    assert res.counts["annotated"] == 6  # the bright images' masks; the dark ones are empty


def test_finetune_names_the_negative_class_from_the_data(binary_setup, tmp_path):
    from softcamify.training import FinetuneConfig, finetune

    sc = softcamify.convert(
        softcamify.load_model("test_resnet", weights=binary_setup["weights"], input_size=(48, 48)),
        class_names=["bright"],
        samples=2,
    )
    finetune(
        sc,
        binary_setup["data"],
        tmp_path / "run",
        FinetuneConfig(epochs=1, batch_size=8, device="cpu", workers=0, seed=0, warmup_epochs=0.0),
    )
    tuned = softcamify.load(tmp_path / "run" / "best.safetensors")
    assert tuned.meta.class_names == ["dark", "bright"]  # bright stays the positive class (the logit's sign)


def test_evaluate_with_gradcam_on_a_single_logit_black_box(binary_setup, tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    from softcamify.evaluation import evaluate

    loaded = softcamify.load_model("test_resnet", weights=binary_setup["weights"], input_size=(48, 48))
    sc = softcamify.convert(loaded, class_names=["dark", "bright"], samples=2)
    res = evaluate(
        sc, binary_setup["data"], split="test", baselines="gradcam", original=loaded.module, steps=2, device="cpu"
    )
    keys = [m["key"] for m in res.method_summaries()]
    assert keys == ["softcam", "gradcam", "original:gradcam"]
    # the converted model is exact: its classification is the black box's
    assert res.classification["accuracy"] == res.original_classification["accuracy"]
    # Grad-CAM on the converted model and on the black box see the same gradients: the same maps
    s = {m["key"]: m["metrics"]["activation_precision"]["mean"] for m in res.method_summaries()}
    assert s["gradcam"] == pytest.approx(s["original:gradcam"], abs=1e-4)


def test_explain_gives_opposite_maps_for_the_two_classes(binary_setup, tmp_path):
    from softcamify.runtime import load as load_map_model

    sc = softcamify.convert(
        softcamify.load_model("test_resnet", weights=binary_setup["weights"], input_size=(48, 48)),
        class_names=["dark", "bright"],
        samples=2,
    )
    mm = load_map_model(sc, device="cpu")
    assert mm.class_names == ["dark", "bright"] and mm.num_logits == 1
    x = np.random.default_rng(1).standard_normal((2, 3, 48, 48)).astype(np.float32)
    logits, maps = mm(x)
    assert logits.shape == (2, 2) and maps.shape == (2, 2, 2, 2)
    np.testing.assert_allclose(maps[:, 0], -maps[:, 1])
    np.testing.assert_allclose(maps.mean((2, 3)), logits, rtol=1e-5, atol=1e-6)
    out = tmp_path / "ex"
    r = run_cli(
        "explain",
        softcamify.save(sc, tmp_path / "sc.safetensors"),
        binary_setup["data"] / "test" / "bright",
        "-o",
        out,
        "--classes",
        "all",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["class_names"] == ["dark", "bright"]


def test_an_original_with_the_wrong_output_is_refused(binary_setup):
    from softcamify.errors import InputError
    from softcamify.evaluation import evaluate

    sc = softcamify.convert(
        softcamify.load_model("test_resnet", weights=binary_setup["weights"], input_size=(48, 48)), samples=2
    )
    three = nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(InputError, match="returns"):
        evaluate(sc, binary_setup["data"], split="test", original=three, device="cpu", max_images=0)


def test_fidelity_reads_the_single_logit_as_a_decision(binary_setup):
    from softcamify.conversion import compare

    module = binary_setup["module"]
    sc = softcamify.convert(module, input_size=(48, 48), samples=2)
    x = torch.randn(8, 3, 48, 48, generator=torch.Generator().manual_seed(0))

    class Flipped(nn.Module):  # the opposite decision on every image
        def forward(self, x):
            return -module(x)

    same, flipped = compare(module, sc, x), compare(Flipped(), sc, x)
    assert same["top1_agreement"] == 1.0 and same["kl_divergence"] < 1e-12
    assert flipped["top1_agreement"] == 0.0 and flipped["kl_divergence"] > 0  # argmax of one column would say 1.0


def test_evaluate_a_model_named_by_its_positive_class_only(binary_setup, tmp_path):
    """One name (the positive class): the data's other folder is the negative class, as in finetune; and a
    folder of one class only still evaluates."""
    from softcamify.evaluation import evaluate

    loaded = softcamify.load_model("test_resnet", weights=binary_setup["weights"], input_size=(48, 48))
    sc = softcamify.convert(loaded, class_names=["bright"], samples=2)
    res = evaluate(sc, binary_setup["data"], split="test", steps=2, device="cpu", max_images=0)
    assert res.classification["class_names"] == ["dark", "bright"]
    assert any("dark is read as its negative class" in n for n in res.notes)
    assert res.counts["images"] == 12
    two = softcamify.convert(loaded, class_names=["dark", "bright"], samples=2)
    ref = evaluate(two, binary_setup["data"], split="test", steps=2, device="cpu", max_images=0)
    assert res.classification["accuracy"] == ref.classification["accuracy"]
    assert res.classification["roc_auc"] == pytest.approx(ref.classification["roc_auc"])
    only = tmp_path / "only"
    (only / "bright").mkdir(parents=True)
    for p in (binary_setup["data"] / "test" / "bright").glob("*.png"):
        (only / "bright" / p.name).write_bytes(p.read_bytes())
    one = evaluate(two, only, steps=2, device="cpu", max_images=0)
    assert one.counts["images"] == 6
