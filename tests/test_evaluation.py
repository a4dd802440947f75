"""evaluate: classification metrics, explanation metrics against masks, post-hoc baselines side by side."""

from __future__ import annotations

import json
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from conftest import make_lesion_model, run_cli
from PIL import Image
from torch import nn

from softcamify.errors import EXIT_INPUT, InputError, OutputError, UsageError
from softcamify.evaluation import evaluate

# --------------------------------------------------------------------------------------------------------
# A constructed case with known answers
# --------------------------------------------------------------------------------------------------------


class RedChannel(nn.Module):
    """Features = the red channel itself (a 32×32 evidence grid: no upsampling anywhere)."""

    def forward(self, x):
        return x[:, :1]


def _red_model():
    from softcamify.model import SoftCAM, SoftCAMMeta

    head = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[[[-1.0]]], [[[1.0]]]]))  # healthy: -red, lesion: +red
        head.bias.zero_()
    meta = SoftCAMMeta(
        source={"kind": "module", "class": "tests.RedChannel"},
        strategy="linear",
        exact=True,
        num_classes=2,
        class_names=["healthy", "lesion"],
        data_config={
            "input_size": [3, 32, 32],
            "mean": [0.0] * 3,
            "std": [1.0] * 3,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": "center",
        },
        head={},
    )
    return SoftCAM(RedChannel(), head, meta).eval()


SQUARE = 12  # lesion side in pixels; the mask is exactly the lesion


@pytest.fixture(scope="module")
def red_data(tmp_path_factory):
    """Flat class folders + a separate mask tree: 3 healthy, 4 lesion images (one lesion without a mask,
    one mask stored at twice the size, healthy masks empty or missing)."""
    root = tmp_path_factory.mktemp("red")
    data, masks = root / "data", root / "masks"
    for d in (data / "healthy", data / "lesion", masks / "healthy", masks / "lesion"):
        d.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (32, 32)).save(data / "healthy" / f"h{i}.png")
        if i < 2:
            Image.new("L", (32, 32)).save(masks / "healthy" / f"h{i}.png")  # empty mask
    for i, (y, x) in enumerate([(2, 3), (10, 15), (18, 4), (5, 5)]):
        img = np.zeros((32, 32, 3), np.uint8)
        img[y : y + SQUARE, x : x + SQUARE, 0] = 255
        Image.fromarray(img).save(data / "lesion" / f"l{i}.png")
        m = np.zeros((32, 32), np.uint8)
        m[y : y + SQUARE, x : x + SQUARE] = 255
        if i == 1:  # another size: resized (nearest) to the image
            Image.fromarray(m).resize((64, 64), Image.Resampling.NEAREST).save(masks / "lesion" / f"l{i}.png")
        elif i < 3:
            Image.fromarray(m).save(masks / "lesion" / f"l{i}.png")
    return data, masks


def test_constructed_case_has_known_metrics(red_data):
    data, masks = red_data
    res = evaluate(_red_model(), data, masks=masks, baselines="gradcam", topk=3, steps=8, device="cpu")
    assert res.counts == {
        "images": 7,
        "with_mask": 5,
        "annotated": 3,
        "empty_mask": 2,
        "without_mask": 2,
        "explained": 3,
    }
    c = res.classification
    assert c["accuracy"] == 1.0 and c["roc_auc"] == 1.0 and c["class_names"] == ["healthy", "lesion"]
    share = SQUARE * SQUARE / 32**2
    summaries = {s["key"]: s for s in res.method_summaries()}
    assert set(summaries) == {"softcam", "gradcam"}
    for key in ("softcam", "gradcam"):  # the lesion map equals the mask: every localisation score is perfect
        m = summaries[key]["metrics"]
        for metric in (
            "activation_precision",
            "activation_sensitivity",
            "pointing_game",
            "energy_pointing_game",
            "topk_precision",
        ):
            assert m[metric]["mean"] == pytest.approx(1.0, abs=1e-9), (key, metric)
        assert m["activation_precision"]["n"] == 3
        assert m["sparsity"]["mean"] == pytest.approx(1 - share)  # a binary map: share of zero pixels
        assert m["gini"]["mean"] == pytest.approx(1 - share)  # Gini of a binary map = 1 − area share
    s = summaries["softcam"]
    p_full = 1 / (1 + np.exp(-2 * share))  # logits ∓ mean(red) = ∓share
    assert s["deletion_curve"][0][1] == pytest.approx(p_full, abs=1e-6)
    assert s["deletion_curve"][-1][1] == pytest.approx(0.5, abs=1e-6)
    assert s["metrics"]["deletion_auc"]["mean"] < s["metrics"]["insertion_auc"]["mean"]
    assert s["metrics"]["deletion_auc"]["mean"] < p_full
    assert len(res.per_image) == 3 and all(r["correct"] for r in res.per_image)
    json.dumps(res.to_dict(), allow_nan=False)  # strict JSON


def test_pointing_tolerance_counts_near_misses(tmp_path):
    """Masks drawn 4 px beside each lesion: the map's maximum (the lesion) misses them at tolerance 0, hits at 5."""
    data, masks = tmp_path / "data", tmp_path / "masks"
    for d in (data / "healthy", data / "lesion", masks / "lesion"):
        d.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(data / "healthy" / "h.png")
    for i, (y, x) in enumerate([(4, 4), (14, 10)]):
        img = np.zeros((32, 32, 3), np.uint8)
        img[y : y + 8, x : x + 8, 0] = 255
        Image.fromarray(img).save(data / "lesion" / f"l{i}.png")
        m = np.zeros((32, 32), np.uint8)
        m[y : y + 8, x + 12 : x + 14] = 255  # a 4 px gap right of the lesion (distance 5 px)
        Image.fromarray(m).save(masks / "lesion" / f"l{i}.png")
    hits = {}
    for tol in (0, 3, 5):
        res = evaluate(_red_model(), data, masks=masks, steps=2, device="cpu", pointing_tolerance=tol)
        assert res.settings["pointing_tolerance"] == tol
        hits[tol] = res.method_summaries()[0]["metrics"]["pointing_game"]["mean"]
    assert hits == {0: 0.0, 3: 0.0, 5: 1.0}
    with pytest.raises(UsageError, match=r"^pointing_tolerance must be 0 or more pixels, got -1\.$") as e:
        evaluate(_red_model(), data, masks=masks, pointing_tolerance=-1)
    assert e.value.param == "pointing_tolerance"


def test_errors_are_one_sentence(red_data, tmp_path, monkeypatch):
    data, masks = red_data
    model = _red_model()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no class folders"):
        evaluate(model, tmp_path / "empty")
    with pytest.raises(InputError, match="does not exist"):
        evaluate(model, data, masks=tmp_path / "nope")
    with pytest.raises(UsageError, match="^baselines: unknown method 'gradcan'") as e:
        evaluate(model, data, baselines="gradcan")
    assert e.value.param == "baselines"
    with pytest.raises(UsageError, match=r"^split 'holdout' is not one of train, val, test\.$") as e:
        evaluate(model, data, split="holdout")
    assert e.value.param == "split"
    bad = tmp_path / "bad" / "lesion"
    bad.mkdir(parents=True)
    (bad / "x.png").write_bytes(b"not a png at all")
    (tmp_path / "bad" / "healthy").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "bad" / "healthy" / "h.png")
    with pytest.raises(InputError, match="x.png"):
        evaluate(model, tmp_path / "bad")
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # grad-cam not installed
    with pytest.raises(UsageError, match=r"softcamify\[baselines\]"):
        evaluate(model, data, baselines="gradcam")


# --------------------------------------------------------------------------------------------------------
# A real model on the synthetic lesion dataset
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lesions(tmp_path_factory):
    return make_lesion_model(tmp_path_factory.mktemp("lesions"))


def test_original_black_box_beside_softcam(lesions):
    res = evaluate(
        lesions["model"],
        lesions["data"],
        baselines=["gradcam"],
        original=lesions["original"],
        ordinal=True,
        steps=4,
        device="cpu",
    )
    assert res.counts["images"] == 3 and res.counts["annotated"] == 2  # test split; healthy masks are empty
    assert "quadratic_kappa" in res.classification
    # an exact conversion: the original classifies identically
    assert res.original_classification["accuracy"] == res.classification["accuracy"]
    assert res.original_classification["confusion_matrix"] == res.classification["confusion_matrix"]
    s = {m["key"]: m["metrics"] for m in res.method_summaries()}
    assert list(s) == ["softcam", "gradcam", "original:gradcam"]
    # Grad-CAM on the original's last feature map equals Grad-CAM on the same features of the SoftCAM model
    for metric in ("activation_precision", "energy_pointing_game", "gini", "deletion_auc"):
        assert s["original:gradcam"][metric]["mean"] == pytest.approx(s["gradcam"][metric]["mean"], abs=1e-4)


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def test_cli_evaluate_gradcam_side_by_side(lesions, tmp_path):
    out = tmp_path / "report"
    r = run_cli(
        "evaluate",
        lesions["model"],
        lesions["data"],
        "--baselines",
        "gradcam",
        "-o",
        out,
        "--steps",
        "4",
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr
    header = next(ln for ln in r.stdout.splitlines() if "SoftCAM" in ln and "Grad-CAM" in ln)
    assert header.index("SoftCAM") < header.index("Grad-CAM")
    assert "activation precision" in r.stdout and "deletion AUC" in r.stdout
    data = json.loads((out / "metrics.json").read_text())
    methods = {m["key"]: m for m in data["explanation"]["methods"]}
    assert set(methods) == {"softcam", "gradcam"}
    for m in methods.values():
        assert m["images"] == 2 and isinstance(m["metrics"]["activation_precision"]["mean"], float)
    parser = _Imgs()
    parser.feed((out / "index.html").read_text(encoding="utf-8"))
    assert len(parser.srcs) == 2 * 3  # per annotated example: input, SoftCAM, Grad-CAM
    assert all((out / s).is_file() for s in parser.srcs)

    r = run_cli(
        "evaluate",
        lesions["model"],
        lesions["data"],
        "--json",
        "--steps",
        "2",
        "--split",
        "val",
        "--pointing-tolerance",
        "7",
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["settings"]["pointing_tolerance"] == 7
    assert data["data"]["source"].startswith("val split")
    assert [m["key"] for m in data["explanation"]["methods"]] == ["softcam"]
    assert data["classification"]["n"] == data["counts"]["images"] == 3

    r = run_cli("evaluate", lesions["model"], tmp_path / "nothing")
    assert r.returncode == EXIT_INPUT and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_a_class_named_masks_is_not_taken_for_the_mask_tree(tmp_path):
    """DATA_DIR/masks is the default mask tree only when it mirrors DATA_DIR's folders."""
    from softcamify.data import default_mask_root

    data = tmp_path / "data"
    for cls in ("healthy", "masks"):  # a class that happens to be called "masks", holding images
        (data / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (255 * (cls == "masks"), 0, 0)).save(data / cls / f"{i}.png")
    assert default_mask_root(data) is None
    model = _red_model()
    model.meta.class_names = ["healthy", "masks"]
    res = evaluate(model, data, device="cpu", steps=2)
    assert res.counts["images"] == 4 and res.classification["accuracy"] == 1.0
    # a mirrored mask tree is found by default, in the flat and in the split layout
    (data / "masks" / "healthy").mkdir()
    assert default_mask_root(data) is None  # "masks" still holds images directly: a class
    tree = tmp_path / "flat"
    (tree / "a").mkdir(parents=True)
    (tree / "masks" / "a").mkdir(parents=True)
    assert default_mask_root(tree) == tree / "masks"
    split = tmp_path / "split"
    (split / "test" / "a").mkdir(parents=True)
    (split / "masks" / "test" / "a").mkdir(parents=True)
    assert default_mask_root(split) == split / "masks"


@pytest.mark.parametrize(
    "folders, outcome",
    [
        (("Healthy", "lesion"), "by name"),  # case differs: matched by name, not by order
        (("lesion", "zz_healthy"), "refused"),  # one shared name: the rest is not guessed by order
        (("a_normal", "b_lesion"), "by order"),  # nothing shared (e.g. generic names): by order, with a note
    ],
)
def test_dataset_classes_are_matched_to_the_models_by_name(tmp_path, folders, outcome):
    data = tmp_path / "data"
    for name in folders:
        (data / name).mkdir(parents=True)
        red = 255 * ("lesion" in name)
        for i in range(2):
            Image.new("RGB", (32, 32), (red, 0, 0)).save(data / name / f"{i}.png")
    model = _red_model()  # classes healthy, lesion
    if outcome == "refused":
        with pytest.raises(InputError, match="'zz_healthy' is not one of the model's classes"):
            evaluate(model, data, device="cpu", steps=2)
        return
    res = evaluate(model, data, device="cpu", steps=2)
    assert res.classification["accuracy"] == 1.0  # every lesion image is scored against the lesion class
    note = " ".join(res.notes)
    assert ("ignored" in note) if outcome == "by name" else ("matched by their order" in note)


def test_original_by_architecture_and_weights_file(lesions, tmp_path):
    """`--original ARCH --original-weights W`: the usual black box is a weights-only state dict."""
    from safetensors.torch import save_file

    weights = tmp_path / "black_box.safetensors"
    save_file({k: v.contiguous() for k, v in lesions["original"].state_dict().items()}, str(weights))
    r = run_cli(
        "evaluate",
        lesions["model"],
        lesions["data"],
        "--original",
        weights,
        "--steps",
        "2",
        "--max-images",
        "0",
        "--device",
        "cpu",
    )
    assert r.returncode == EXIT_INPUT and "--original-weights" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(
        "evaluate",
        lesions["model"],
        lesions["data"],
        "--original",
        "test_resnet",
        "--original-weights",
        weights,
        "--json",
        "--steps",
        "2",
        "--max-images",
        "0",
        "--device",
        "cpu",
        "--input-size",
        "64",
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    # the converted model is exact: the black box scores the same
    assert data["original_classification"]["accuracy"] == data["classification"]["accuracy"]
    with pytest.raises(UsageError, match="original_weights needs original"):
        evaluate(lesions["model"], lesions["data"], original_weights=weights, device="cpu")


def test_original_that_is_itself_a_softcam_model_is_split_at_its_backbone(lesions):
    """Grad-CAM and LayerCAM on `--original` given as a SoftCAM model hook its last feature map — the same
    as on the model itself — not the evidence maps (where the two methods coincide)."""
    pytest.importorskip("pytorch_grad_cam")
    import softcamify

    sc = softcamify.load(lesions["model"])
    res = evaluate(
        sc,
        lesions["data"],
        baselines="gradcam,layercam",
        original=softcamify.load(lesions["model"]),
        steps=2,
        device="cpu",
    )
    m = {s["key"]: s["metrics"]["activation_precision"]["mean"] for s in res.method_summaries()}
    assert m["original:gradcam"] == pytest.approx(m["gradcam"], abs=1e-6)
    assert m["original:layercam"] == pytest.approx(m["layercam"], abs=1e-6)


# --------------------------------------------------------------------------------------------------------
# Share of oracle on a common reference grid; batched deletion / insertion
# --------------------------------------------------------------------------------------------------------


def test_records_carry_chance_oracle_and_share_on_a_common_grid(red_data):
    data, masks = red_data
    share = SQUARE * SQUARE / 32**2
    res = evaluate(_red_model(), data, masks=masks, baselines="gradcam", steps=2, device="cpu")
    assert res.settings["oracle_grid"] == res.settings["evidence_grid"] == [32, 32]  # default: evidence grid
    for method in res.methods:  # the map equals the mask on its own grid: as good as the oracle
        for rec in method.records:
            assert rec["chance"] == pytest.approx(share)
            assert rec["oracle_precision"] == pytest.approx(1.0, abs=1e-12)
            assert rec["share_of_oracle"] == pytest.approx(1.0, abs=1e-9)
    s = {m["key"]: m["metrics"] for m in res.method_summaries()}
    for key in ("softcam", "gradcam"):
        assert s[key]["share_of_oracle"]["mean"] == pytest.approx(1.0, abs=1e-9)
        assert s[key]["share_of_oracle"]["n"] == 3
        assert s[key]["chance"]["mean"] == pytest.approx(share)
    row = res.per_image[0]
    assert row["oracle_precision"] == pytest.approx(1.0)
    assert row["softcam"]["share_of_oracle"] == pytest.approx(1.0)
    data_json = res.to_dict()
    assert data_json["explanation"]["higher_is_better"]["share_of_oracle"] is True
    assert set(data_json["explanation"]["references"]) == {"oracle_precision", "chance"}

    # a coarser common grid: its oracle blurs the lesion, so the exact 32×32 maps beat it (share > 1)
    coarse = evaluate(_red_model(), data, masks=masks, baselines="gradcam", steps=2, device="cpu", oracle_grid=(4, 4))
    assert coarse.settings["oracle_grid"] == [4, 4] and coarse.settings["evidence_grid"] == [32, 32]
    for method in coarse.methods:
        for rec in method.records:
            assert share < rec["oracle_precision"] < 1.0
            assert rec["share_of_oracle"] == pytest.approx((1.0 - share) / (rec["oracle_precision"] - share))
            assert rec["share_of_oracle"] > 1.0
    # every method is divided by the same per-image oracle
    ref = [r["oracle_precision"] for r in coarse.methods[0].records]
    assert [r["oracle_precision"] for r in coarse.methods[1].records] == ref

    with pytest.raises(UsageError, match="oracle_grid must be two positive integers"):
        evaluate(_red_model(), data, masks=masks, oracle_grid=(0, 4), device="cpu")
    with pytest.raises(UsageError, match="oracle_grid 64×64 is finer than"):
        evaluate(_red_model(), data, masks=masks, oracle_grid=(64, 64), device="cpu")


def test_batched_deletion_insertion_equals_the_per_image_path(lesions, monkeypatch):
    """evaluate's batched deletion/insertion gives the per-image values (a real timm model, random init)."""
    import functools

    import softcamify.evaluation.run as E

    calls: list[int] = []
    model = E.load(lesions["model"], device="cpu")
    orig_predict = model.predict_proba

    def counting(x):
        calls.append(len(x))
        return orig_predict(x)

    monkeypatch.setattr(type(model), "predict_proba", lambda self, x: counting(x))
    batched = evaluate(model, lesions["data"], split="train", steps=4, batch_size=3, device="cpu")
    n_images = batched.counts["explained"]
    assert n_images >= 3 and batched.settings["deletion_batch_size"] == 3  # on a CPU: the batch size
    # per chunk of (up to) 3 images: 2 curves × 5 inputs per image, streamed in full forwards of 3
    assert len(calls) == sum(-(-10 * min(3, n_images - i) // 3) for i in range(0, n_images, 3))
    n_batched = len(calls)
    calls.clear()
    monkeypatch.setattr(E, "_faithfulness_metrics", functools.partial(E._faithfulness_metrics, batched=False))
    single = evaluate(model, lesions["data"], split="train", steps=4, batch_size=3, device="cpu")
    assert len(calls) == n_images * 2 * 2 > n_batched  # per curve: 5 inputs in forwards of 3 and 2
    for a, b in zip(batched.methods[0].records, single.methods[0].records, strict=True):
        for key in ("deletion_auc", "insertion_auc"):
            assert a[key] == pytest.approx(b[key], abs=1e-6)
        assert a["activation_precision"] == b["activation_precision"]
    for kind in ("deletion", "insertion"):
        for ca, cb in zip(getattr(batched.methods[0], kind), getattr(single.methods[0], kind), strict=True):
            np.testing.assert_allclose(ca, cb, atol=1e-6)


def test_cli_oracle_grid_in_table_json_and_report(lesions, tmp_path):
    from typer.testing import CliRunner

    from softcamify.cli import app
    from softcamify.errors import EXIT_USAGE

    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "evaluate",
            str(lesions["model"]),
            str(lesions["data"]),
            "--json",
            "--steps",
            "2",
            "--oracle-grid",
            "2x3",
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["settings"]["oracle_grid"] == [2, 3]
    m = data["explanation"]["methods"][0]["metrics"]
    for key in ("share_of_oracle", "oracle_precision", "chance", "activation_precision"):
        assert m[key]["n"] == 2, key
    ap, ch, orc = (m[k]["mean"] for k in ("activation_precision", "chance", "oracle_precision"))
    assert 0 < ch < orc <= 1 and isinstance(m["share_of_oracle"]["mean"], float)

    out = tmp_path / "report"
    r = runner.invoke(
        app,
        [
            "evaluate",
            str(lesions["model"]),
            str(lesions["data"]),
            "--steps",
            "2",
            "--oracle-grid",
            "4",
            "-o",
            str(out),
            "--examples",
            "0",
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "share of oracle" in r.stdout and "oracle precision" in r.stdout and "4×4" in r.stdout
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "share of oracle" in html and "oracle precision" in html
    assert json.loads((out / "metrics.json").read_text())["settings"]["oracle_grid"] == [4, 4]
    per_image = json.loads((out / "per_image.json").read_text())
    assert all("share_of_oracle" in row["softcam"] and "oracle_precision" in row for row in per_image)

    r = runner.invoke(app, ["evaluate", str(lesions["model"]), str(lesions["data"]), "--oracle-grid", "0x3"])
    assert r.exit_code == EXIT_USAGE and "--oracle-grid" in r.output


def test_cli_names_the_flags_of_the_parameters_the_library_names(red_data, tmp_path):
    """`evaluate … --split holdout` says --split (evaluate(split=…) says split); the library's out_dir is
    evaluate's --output, and an existing report folder asks for --force."""
    from typer.testing import CliRunner

    from softcamify.cli import app
    from softcamify.errors import EXIT_OUTPUT, EXIT_USAGE

    data, _ = red_data
    runner = CliRunner()
    r = runner.invoke(app, ["evaluate", "test_resnet", str(data), "--baselines", "gradcan"])
    assert r.exit_code == EXIT_USAGE and "--baselines: unknown method 'gradcan'" in " ".join(r.output.split())
    (tmp_path / "report" / "old").mkdir(parents=True)
    r = runner.invoke(app, ["evaluate", "test_resnet", str(data), "-o", str(tmp_path / "report")])
    assert r.exit_code == EXIT_OUTPUT and "is not empty; pass --force to write into it." in " ".join(r.output.split())
    with pytest.raises(OutputError, match="is not empty; pass force to write into it") as e:
        evaluate("test_resnet", data, out_dir=tmp_path / "report")
    assert e.value.param == "force"
