"""softcamify diff through the real CLI: a model against itself, gates on each side of their thresholds, JUnit,
grids of different sizes, ONNX against ONNX without torch, and the shortcut of the synthetic dataset flagged.

The shortcut models are ONNX graphs whose evidence is known by construction (no training, so the test is
deterministic and fast): both read the image's colour per 8×8 cell (a linear map of the cell's mean colour,
positive on the orange fundus); the shortcut model adds a detector of near-white pixels (all channels above
0.75: the synthetic generator's grey corner tag, never reached by the fundus) to every class's evidence.
On ``datasets synth --shortcut`` training images, where the tag sits in a class-dependent corner, that model's
evidence for each class concentrates in the class's corner; on the clean test split it equals the clean model's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from conftest import run_cli

from softcamify.errors import EXIT_GATE, EXIT_INPUT, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE

SIZE = 64
NAMES = ("bright_lesion", "healthy", "red_lesion")
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
COLOUR = [[1.0, 0.1, -0.2], [1.0, -0.1, 0.0], [0.8, 0.2, 0.1]]  # per class: weights of the cell's R, G, B


def onnx_model(path, weights, stride=8, marker_gain=0.0, names=NAMES):
    """An ONNX SoftCAM-like model: evidence = a 1×1 conv of the stride×stride cell means (+ ``marker_gain`` ×
    the cell's brightest near-white pixel above 0.75), logits = the evidence's spatial mean."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.asarray(weights, dtype=np.float32)
    k = w.shape[0]
    inits = [numpy_helper.from_array(w.reshape(k, 3, 1, 1), "W")]
    pool = {"kernel_shape": [stride, stride], "strides": [stride, stride]}
    nodes = [
        helper.make_node("AveragePool", ["input"], ["pooled"], **pool),
        helper.make_node("Conv", ["pooled", "W"], ["colour"]),
    ]
    if marker_gain:
        inits += [
            numpy_helper.from_array(np.array(STD, np.float32).reshape(1, 3, 1, 1), "std"),
            numpy_helper.from_array(np.array(MEAN, np.float32).reshape(1, 3, 1, 1), "mean"),
            numpy_helper.from_array(np.array(0.75, np.float32), "level"),
            numpy_helper.from_array(np.array(marker_gain, np.float32), "gain"),
        ]
        nodes += [
            helper.make_node("Mul", ["input", "std"], ["scaled"]),
            helper.make_node("Add", ["scaled", "mean"], ["raw"]),  # back to [0, 1] pixels
            helper.make_node("ReduceMin", ["raw"], ["grey"], axes=[1], keepdims=1),
            helper.make_node("Sub", ["grey", "level"], ["above"]),
            helper.make_node("Relu", ["above"], ["bright"]),
            helper.make_node("MaxPool", ["bright"], ["spot"], **pool),
            helper.make_node("Mul", ["spot", "gain"], ["marker"]),
            helper.make_node("Add", ["colour", "marker"], ["evidence"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["colour"], ["evidence"]))
    nodes.append(helper.make_node("ReduceMean", ["evidence"], ["logits"], axes=[2, 3], keepdims=0))
    grid = SIZE // stride
    graph = helper.make_graph(
        nodes,
        "constructed",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", k]),
            helper.make_tensor_value_info("evidence", TensorProto.FLOAT, ["batch", k, grid, grid]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    props = {
        "class_names": json.dumps(list(names)),
        "input_size": json.dumps([3, SIZE, SIZE]),
        "mean": json.dumps(MEAN),
        "std": json.dumps(STD),
        "crop_pct": "1.0",
        "interpolation": "bilinear",
    }
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """``datasets synth --shortcut``: 18 training images with a class-dependent corner tag, 6 clean test images."""
    from softcamify.data.synth import make_lesions

    root = tmp_path_factory.mktemp("diff") / "ds"
    make_lesions(root, n=30, size=SIZE, seed=3, workers=1, shortcut=True)
    return root


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return {
        "clean": onnx_model(folder / "clean.onnx", COLOUR),
        "shortcut": onnx_model(folder / "shortcut.onnx", COLOUR, marker_gain=1000.0),
        "coarse": onnx_model(folder / "coarse.onnx", COLOUR, stride=16),  # the clean model on a 4×4 grid
        "retrained": onnx_model(folder / "retrained.onnx", [COLOUR[1], COLOUR[2], [0.9, 0.0, -0.1]]),
        "four": onnx_model(folder / "four.onnx", [*COLOUR, [0.0, 0.0, 1.0]], names=(*NAMES, "other")),
    }


@pytest.fixture(scope="module")
def torch_models(tmp_path_factory):
    """A test_resnet SoftCAM model as .safetensors and its .onnx export (96 px: a 3×3 evidence grid)."""
    import timm
    import torch

    import softcamify
    from softcamify.exporters import export_onnx

    folder = tmp_path_factory.mktemp("torch")
    torch.manual_seed(0)
    original = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    sc = softcamify.convert(original, input_size=(96, 96), samples=2, class_names=list(NAMES))
    path = softcamify.save(sc, folder / "m.safetensors")
    export_onnx(sc, folder / "m.onnx", exporter="torchscript")
    return path, folder / "m.onnx"


def _diff(*args):
    return run_cli("diff", *map(str, args), "--device", "cpu")


def _json(r):
    assert r.returncode in (EXIT_OK, EXIT_GATE), r.stderr
    return json.loads(r.stdout)


def _junit(path):
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "softcamify diff"
    cases = suite.findall("testcase")
    failures = [f for tc in cases for f in tc.findall("failure")]
    assert suite.get("tests") == root.get("tests") == str(len(cases))
    assert suite.get("failures") == root.get("failures") == str(len(failures))
    assert all(tc.get("name") and tc.get("classname") and tc.get("time") for tc in cases)
    assert all(f.get("message") for f in failures)
    return cases, failures


# --------------------------------------------------------------------------------------------------------
# A model against itself, safetensors against its own ONNX export
# --------------------------------------------------------------------------------------------------------


def test_a_model_against_itself_agrees_exactly(torch_models, synth, tmp_path):
    st, _ = torch_models
    junit = tmp_path / "diff.xml"
    r = _diff(st, st, synth, "--json", "--max-flips", "0", "--min-rank-corr", "1", "--junit", junit)
    assert r.returncode == EXIT_OK, r.stderr
    data = json.loads(r.stdout)
    assert data["data"]["images"] == 6 and data["data"]["source"].startswith("test split of")
    p, a = data["predictions"], data["agreement"]
    assert p["flips"] == 0 and p["flipped"] == [] and p["max_prob_change"] == 0.0
    assert p["accuracy"]["old"] == p["accuracy"]["new"] and 0 <= p["accuracy"]["old"] <= 1
    assert a["grid"] == [3, 3] and a["topk"] == 1
    assert a["overall"]["rank_corr"] == pytest.approx(1.0, abs=1e-12)
    assert a["overall"]["topk_iou"] == 1.0 and a["overall"]["peak_shift"] == 0.0
    assert a["overall"]["sparsity_change"] == 0.0
    assert [c["class"] for c in a["per_class"]] == list(NAMES)
    loc = data["localization"]  # the synthetic dataset has masks: both sides scored, identically
    assert loc["images"] >= 1
    assert all(v["old"] == v["new"] for v in loc["metrics"].values())
    for s in data["shortcuts"]:
        assert s["old"] == s["new"]
    cases, failures = _junit(junit)
    assert [tc.get("name") for tc in cases] == ["flips <= 0", "rank_corr >= 1"] and not failures


def test_safetensors_against_its_onnx_export(torch_models, synth):
    import softcamify

    st, onnx_path = torch_models
    report = softcamify.diff(st, onnx_path, synth, device="cpu", examples=0)  # the library, as the CLI calls it
    assert report.old["backend"] == "torch" and report.new["backend"] == "onnxruntime"
    assert report.predictions["flips"] == 0 and report.predictions["max_prob_change"] < 1e-4
    assert report.agreement["overall"]["rank_corr"] > 0.99 and report.examples == []


# --------------------------------------------------------------------------------------------------------
# The shortcut: flagged on the images that carry the marker, torch never imported
# --------------------------------------------------------------------------------------------------------

_TORCH_FREE = textwrap.dedent("""
    import sys
    for name in ("torch", "timm", "torchvision"):
        sys.modules[name] = None  # any import of them now raises ImportError, as where they are not installed
    from softcamify.cli import app
    try:
        rc = app(sys.argv[1:], standalone_mode=False)  # returns the exit code of a command that exits
    finally:
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "torchvision")
                        and sys.modules[m] is not None)
        print("TORCH-MODULES", loaded, file=sys.stderr)
    sys.exit(rc if isinstance(rc, int) else 0)
""")


def _torch_free(*args):
    return subprocess.run(
        [sys.executable, "-c", _TORCH_FREE, "diff", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def _accuracy(model, synth, split):
    """The model's accuracy on a split, computed here from its own outputs (onnxruntime)."""
    from softcamify.data import discover
    from softcamify.images import open_image
    from softcamify.runtime import load

    rt = load(model)
    samples = discover(synth, min_classes=1).split(split)
    x = np.stack([rt.preprocess(open_image(s.path)) for s in samples])
    pred = rt(x)[0].argmax(1)
    return float(np.mean(pred == np.array([s.label for s in samples])))


def test_onnx_diff_flags_the_shortcut_on_marked_images_without_torch(onnx_models, synth, tmp_path):
    out, junit = tmp_path / "report", tmp_path / "diff.xml"
    args = [onnx_models["clean"], onnx_models["shortcut"], synth, "--split", "train", "--fail-on-new-shortcut"]
    r = _torch_free(*args, "--json", "-o", out, "--junit", junit, "--examples", "3")
    assert "TORCH-MODULES []" in r.stderr, r.stderr
    assert r.returncode == EXIT_GATE, r.stderr
    assert "new_shortcuts = 3.0000 is over 0" in r.stderr
    data = json.loads(r.stdout)
    s = data["settings"]
    assert s["shortcut_threshold"] == 0.5 and s["shortcut_region_cells"] == 4 and s["common_grid"] == [8, 8]
    corners = json.loads((synth / "manifest.json").read_text())["shortcut"]["corners"]
    assert data["new_shortcuts"] == list(NAMES)
    for row in data["shortcuts"]:
        old, new = row["old"], row["new"]
        assert old["images"] == new["images"] == 6
        assert not old["flagged"] and old["share"] < 0.35  # the colour evidence spreads over the fundus
        assert new["flagged"] and new["share"] > 0.9 and new["lift"] > 14  # uniform: 4/64
        # most of the region's cells lie in the corner the class's tag was drawn in
        corner = corners[row["class"]]
        vertical, horizontal = corner.split("_")
        inside = [
            (r_ < 2 if vertical == "top" else r_ >= 6) and (c < 3 if horizontal == "left" else c >= 5)
            for r_, c in new["cells"]
        ]
        assert sum(inside) >= 3, (row["class"], corner, new["cells"])
    acc = data["predictions"]["accuracy"]
    assert acc["old"] == pytest.approx(_accuracy(onnx_models["clean"], synth, "train"))
    assert acc["new"] == pytest.approx(_accuracy(onnx_models["shortcut"], synth, "train"))
    assert data["agreement"]["overall"]["rank_corr"] < 0.95
    cases, failures = _junit(junit)
    assert [tc.get("name") for tc in cases] == ["new_shortcuts <= 0"] and len(failures) == 1
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "Shortcut flags" in page and "FLAG" in page and "Most-changed images" in page
    assert page.count('src="data:image/png;base64,') == 9  # 3 images × (image, OLD, NEW), inline
    assert "http://" not in page and "https://" not in page
    assert json.loads((out / "diff.json").read_text())["shortcuts"] == data["shortcuts"]
    assert len(json.loads((out / "per_image.json").read_text())) == 18


def test_no_flag_on_the_clean_test_split(onnx_models, synth):
    r = _diff(onnx_models["clean"], onnx_models["shortcut"], synth, "--fail-on-new-shortcut", "--json")
    assert r.returncode == EXIT_OK, r.stderr
    data = json.loads(r.stdout)
    assert data["new_shortcuts"] == [] and not any(s["new"]["flagged"] for s in data["shortcuts"])
    assert data["agreement"]["overall"]["rank_corr"] == pytest.approx(1.0)  # no tag, no marker evidence


def test_terminal_report_lists_flags_and_gates(onnx_models, synth):
    r = _diff(onnx_models["clean"], onnx_models["shortcut"], synth, "--split", "train", "--max-flips", "100")
    assert r.returncode == EXIT_OK, r.stderr
    assert "shortcut flags" in r.stdout and r.stdout.count("FLAG") == 3
    assert "accuracy" in r.stdout and "rank corr" in r.stdout
    rows = [ln for ln in r.stdout.splitlines() if ln.strip("│ ").startswith("flips")]
    assert rows and "pass" in rows[0]


# --------------------------------------------------------------------------------------------------------
# Gates on each side of their thresholds
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def measured(onnx_models, synth):
    data = _json(_diff(onnx_models["clean"], onnx_models["retrained"], synth, "--split", "train", "--json"))
    return {
        "flips": data["predictions"]["flips"],
        "rank_corr": data["agreement"]["overall"]["rank_corr"],
        "topk_iou": data["agreement"]["overall"]["topk_iou"],
        "max_prob_change": data["predictions"]["max_prob_change"],
        "peak_shift": data["agreement"]["overall"]["peak_shift"],
        "accuracy_drop": data["predictions"]["accuracy"]["old"] - data["predictions"]["accuracy"]["new"],
    }


def _gate_args(m, side):
    eps = 1e-6 if side == "pass" else -1e-6
    flips = m["flips"] if side == "pass" else m["flips"] - 1
    return [
        "--max-flips",
        str(flips),
        "--min-rank-corr",
        f"{m['rank_corr'] - eps:.9f}",
        "--min-topk-iou",
        f"{m['topk_iou'] - eps:.9f}",
        "--max-prob-change",
        f"{m['max_prob_change'] + eps:.9f}",
        "--max-peak-shift",
        f"{m['peak_shift'] + eps:.9f}",
        "--max-accuracy-drop",
        f"{m['accuracy_drop'] + eps:.9f}",
    ]


def test_gates_pass_on_their_side_of_the_thresholds(onnx_models, synth, measured, tmp_path):
    assert measured["flips"] >= 1 and 0 < measured["topk_iou"] < 1 and 0 < measured["peak_shift"] < 1
    junit = tmp_path / "j.xml"
    args = [onnx_models["clean"], onnx_models["retrained"], synth, "--split", "train", "--json", "--junit", junit]
    r = _diff(*args, *_gate_args(measured, "pass"))
    assert r.returncode == EXIT_OK, r.stderr
    assert [g["passed"] for g in json.loads(r.stdout)["gates"]] == [True] * 6
    cases, failures = _junit(junit)
    assert len(cases) == 6 and not failures


def test_gates_fail_on_the_other_side(onnx_models, synth, measured, tmp_path):
    junit = tmp_path / "j.xml"
    args = [onnx_models["clean"], onnx_models["retrained"], synth, "--split", "train", "--json", "--junit", junit]
    r = _diff(*args, *_gate_args(measured, "fail"))
    assert r.returncode == EXIT_GATE, r.stderr
    assert r.stderr.startswith("error: 6 of 6 quality gates failed")
    gates = json.loads(r.stdout)["gates"]
    names = ["flips", "rank_corr", "topk_iou", "max_prob_change", "peak_shift", "accuracy_drop"]
    assert [g["metric"] for g in gates] == names
    assert not any(g["passed"] for g in gates)
    assert gates[1]["value"] == pytest.approx(measured["rank_corr"])
    assert gates[5]["value"] == pytest.approx(measured["accuracy_drop"])
    cases, failures = _junit(junit)
    assert len(cases) == 6 and len(failures) == 6


# --------------------------------------------------------------------------------------------------------
# Grids of different sizes, bad inputs
# --------------------------------------------------------------------------------------------------------


def test_different_grids_are_compared_on_the_coarser_one(onnx_models, synth):
    # the 4×4 model's evidence is exactly the 8×8 model's averaged over 2×2 cells: after resampling they agree
    data = _json(_diff(onnx_models["clean"], onnx_models["coarse"], synth, "--split", "train", "--json"))
    assert data["old"]["evidence_grid"] == [8, 8] and data["new"]["evidence_grid"] == [4, 4]
    assert data["settings"]["common_grid"] == [4, 4] and data["agreement"]["topk"] == 2
    assert any("grids differ" in n and "4×4" in n for n in data["notes"])
    assert data["predictions"]["flips"] == 0 and data["predictions"]["max_prob_change"] < 1e-5
    assert data["agreement"]["overall"]["rank_corr"] == pytest.approx(1.0, abs=1e-6)
    assert data["agreement"]["overall"]["topk_iou"] == 1.0


def test_bad_inputs(onnx_models, synth, tmp_path):
    r = _diff(onnx_models["clean"], onnx_models["four"], synth)
    assert r.returncode == EXIT_INPUT and "OLD has 3 classes and NEW 4" in r.stderr
    r = _diff(onnx_models["clean"], onnx_models["clean"], synth, "--min-rank-corr", "1.5")
    assert r.returncode == EXIT_USAGE and "--min-rank-corr must be between -1 and 1" in r.stderr
    out = tmp_path / "taken"
    out.mkdir()
    (out / "x").write_text("keep")
    r = _diff(onnx_models["clean"], onnx_models["clean"], synth, "-o", out)
    assert r.returncode == EXIT_OUTPUT and "--force" in r.stderr and (out / "x").read_text() == "keep"
    r = _diff(onnx_models["clean"], onnx_models["clean"], tmp_path / "missing")
    assert r.returncode == EXIT_INPUT and "does not exist" in r.stderr


def test_unlabelled_folder_and_csv(onnx_models, synth, tmp_path):
    images = sorted((synth / "train").rglob("*.png"))
    folder = tmp_path / "flat"
    folder.mkdir()
    for p in images:
        (folder / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    data = _json(_diff(onnx_models["clean"], onnx_models["shortcut"], folder, "--json"))
    assert data["data"]["images"] == 18 and not data["data"]["labelled"] and "accuracy" not in data["predictions"]
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in images))
    data = _json(_diff(onnx_models["clean"], onnx_models["shortcut"], csv, "--json"))
    assert data["data"]["images"] == 18 and data["data"]["labelled"]
    assert data["new_shortcuts"] == list(NAMES)


def test_volume_models_are_refused_before_any_image_is_read(tmp_path):
    """diff compares image models: a volume model is named (the folder is not even read)."""
    import torch
    from torch import nn

    import softcamify
    from softcamify.errors import UsageError

    torch.manual_seed(0)
    pool = nn.AdaptiveAvgPool3d(1)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), pool, nn.Flatten(), nn.Linear(4, 2))
    volume_model = softcamify.convert(net, input_size=(8, 8, 8))
    with pytest.raises(UsageError, match="is a volume model: diff compares image models") as err:
        softcamify.diff(volume_model, volume_model, tmp_path / "no such folder")
    assert err.value.params == ("old",)
