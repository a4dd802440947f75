"""The shipped black box (softcamify/assets) and `softcamify demo` (a fast variant of the whole pipeline)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from softcamify import demo

REPO = Path(__file__).resolve().parents[1]
ENV = {"COLUMNS": "200", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}  # small model: one thread, no OpenMP spin-waits


def test_shipped_checkpoint_is_a_small_plain_timm_state_dict():
    import timm
    from safetensors import safe_open

    info = demo.model_info()
    assert demo.MODEL_FILE.stat().st_size <= 5_000_000
    with safe_open(str(demo.MODEL_FILE), "pt") as f:
        assert not (f.metadata() or {}).get("softcamify")  # what a user brings, not a softcamify model
        keys = set(f.keys())
    model = timm.create_model(info["architecture"], pretrained=False, num_classes=len(info["class_names"]))
    assert keys == set(model.state_dict())
    assert info["class_names"] == sorted(info["class_names"])  # class folders, as discover() orders them


def test_training_script_and_demo_share_the_generator_settings():
    script = runpy.run_path(str(REPO / "scripts" / "train_demo_model.py"), run_name="not_main")
    info = demo.model_info()
    opts = demo.dataset_options(info)
    assert opts == {
        "size": script["SIZE"],
        "classes": script["CLASSES"],
        "contrast": script["CONTRAST"],
        "noise": script["NOISE"],
    }
    assert info["architecture"] == script["ARCH"]
    assert info["data_config"] == script["DATA_CONFIG"]
    assert demo.DEMO_SEED != info["dataset"]["seed"]  # the demo's images are new ones from the same distribution


def test_shipped_checkpoint_converts_exactly():
    import torch

    from softcamify.conversion import convert, inspect

    loaded = demo.load_demo_model()
    report = inspect(loaded)
    assert report.plan.exact and report.plan.strategy == "linear"
    sc = convert(loaded, samples=8)
    c = sc.meta.conversion
    assert c["exact"] and c["passed"] and c["max_abs_diff"] <= 1e-4
    assert sc.meta.class_names == demo.model_info()["class_names"]
    x = torch.randn(2, *loaded.data_config["input_size"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, maps = sc.forward_maps(x)
        assert torch.allclose(logits, loaded.module(x), atol=1e-4)
    size = demo.model_info()["data_config"]["input_size"][1]
    assert maps.shape[-2:] == (size // 32, size // 32)  # stride-32 ResNet


def test_shipped_checkpoint_accuracy_is_as_recorded(tmp_path):
    """Regenerate the training data (same seed) and score the black box on its test split."""
    from softcamify.evaluation import evaluate

    info = demo.model_info()
    d = info["dataset"]
    demo.make_demo_dataset(tmp_path / "data", n=d["n"], seed=d["seed"], info=info)
    result = evaluate(
        demo.load_demo_model(info),
        tmp_path / "data",
        split="test",
        masks=None,
        max_images=0,
        device="cpu",
        batch_size=50,
    )
    assert result.counts["images"] == info["test_images"]
    acc = result.classification["accuracy"]
    assert acc == pytest.approx(info["test_accuracy"], abs=0.01)
    assert acc >= 0.9  # a black box worth explaining: the demo's premise


def test_demo_refuses_a_non_empty_output_folder(tmp_path, cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    r = cli("demo", "--fast", "-o", out, env=ENV, timeout=120)
    assert r.returncode == 6, r.stderr
    assert "--force" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_demo_fast_end_to_end(tmp_path, cli):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "mine.txt").write_text("keep")  # --force replaces the demo's own outputs only
    r = cli("demo", "--fast", "-o", out, "--force", "--json", env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(r.stdout)
    assert (out / "mine.txt").read_text() == "keep"

    # every step ran, in order
    assert [s["key"] for s in data["steps"]] == [
        "data",
        "inspect",
        "convert",
        "finetune",
        "export",
        "explain",
        "evaluate",
        "report",
    ]
    f = data["figures"]
    assert f["conversion"]["exact"] and f["conversion"]["max_abs_diff"] <= 1e-4
    # the converted model classifies exactly as the black box
    cls = f["classification"]
    for key in ("accuracy", "balanced_accuracy"):
        assert cls["converted"][key] == cls["black_box"][key]
    assert cls["fine_tuned"]["accuracy"] is not None
    assert f["finetune"]["l1"] > 0 and len(f["finetune"]["history"]) == f["finetune"]["epochs"] >= 1
    # the finer grid: converted again at output stride 8 (approximate), 4× the black box's grid
    fine = f["conversion_finer"]
    assert fine["output_stride"] == 8 and fine["exact"] is False
    assert fine["evidence_grid"] == [4 * v for v in fine["original_grid"]]
    # the sweep: one run per λ1, the fine-tuned model is the recommended run's (or the mildest, said in a note)
    sw = f["sweep"]
    assert [r["l1"] for r in sw["runs"]] == list(demo.FAST.l1)
    assert f["finetune"]["l1"] == (sw["recommended_l1"] if sw["recommended_l1"] is not None else min(demo.FAST.l1))
    assert f["evaluation_settings"]["oracle_grid"] == fine["evidence_grid"]
    assert f["export"]["max_abs_diff_evidence"] <= 1e-4
    # localization: SoftCAM beside Grad-CAM on the black box and on SoftCAM
    loc = f["localization"]
    assert {"SoftCAM (fine-tuned)", "SoftCAM (converted)", "Grad-CAM (black box)", "Grad-CAM (on SoftCAM)"} <= set(loc)
    for m in loc.values():
        assert m["images"] >= 1 and 0.0 <= m["activation_precision"] <= 1.0
        assert m["share_of_oracle"] is not None
    # the comparison with Grad-CAM, stated in figures and words, consistent with the table
    comp = f["comparison"]
    assert comp["share_of_oracle_diff"] == pytest.approx(
        loc["SoftCAM (fine-tuned)"]["share_of_oracle"] - loc["Grad-CAM (black box)"]["share_of_oracle"]
    )
    assert ("does not localize" in comp["text"]) == (not comp["better"])

    # files
    for rel in (
        "report.html",
        "demo.json",
        "model.onnx",
        "models/converted.safetensors",
        "finetune/best.safetensors",
        "models/converted_os8.safetensors",
        "sweep/sweep.json",
        "sweep/pareto.png",
        "finetune/metrics.jsonl",
        "explain/index.html",
        "evaluate/index.html",
        "figures/panel.png",
        "data/manifest.json",
    ):
        assert (out / rel).is_file(), rel
    assert json.loads((out / "demo.json").read_text())["figures"]["classification"] == cls

    # the report: one page with every section, both accuracies, both methods, the curve, the overlays
    page = (out / "report.html").read_text(encoding="utf-8")
    for title in (
        "Summary",
        "1. Data",
        "2. Inspect",
        "3. Convert",
        "4. Sweep λ1 and fine-tune",
        "5. Export to ONNX",
        "6. Explain",
        "7. Evaluate",
        "The same steps on your own data",
    ):
        assert f"<h2>{title}</h2>" in page
    for text in (
        "black box",
        "SoftCAM (converted)",
        "SoftCAM (fine-tuned)",
        "Grad-CAM (black box)",
        "Exactness report",
        "activation precision",
        "share of oracle",
        "pointing game",
        "<svg",
        comp["text"].split(":")[0],
        'src="figures/panel.png"',
        'src="explain/overlays/',
    ):
        assert text in page, text
    for src in set(__import__("re").findall(r'src="([^"]+)"', page)):
        assert (out / src).is_file(), src


def test_update_docs_figure(tmp_path):
    from PIL import Image

    fig = tmp_path / "panel.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(fig)
    result = demo.DemoResult(
        out_dir=str(tmp_path),
        report="",
        device="cpu",
        seconds=0.0,
        steps=[],
        figures={},
        files={"figure": str(fig)},
        settings={},
    )
    dest = demo.update_docs_figure(result, tmp_path / "docs" / "images" / "demo_overlay.png")
    assert dest.read_bytes() == fig.read_bytes()


def test_readme_picture_exists():
    from PIL import Image

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "docs/images/demo_overlay.png" in readme
    with Image.open(REPO / "docs" / "images" / "demo_overlay.png") as img:
        assert img.width >= 400 and img.height >= 200


def test_force_never_clears_a_folder_no_demo_wrote(tmp_path, cli):
    out = tmp_path / "project"
    (out / "data").mkdir(parents=True)
    (out / "data" / "precious.png").write_bytes(b"x")
    r = cli("demo", "--fast", "-o", out, "--force", env=ENV, timeout=120)
    assert r.returncode == 6, r.stderr
    assert "demo.json" in r.stderr and "choose another --output." in " ".join(r.stderr.split())
    assert (out / "data" / "precious.png").read_bytes() == b"x"
    from softcamify.errors import OutputError

    with pytest.raises(OutputError, match=r"no demo\.json\); choose another out_dir\.$") as e:  # run_demo's name
        demo.run_demo(out, fast=True, force=True)
    assert e.value.param == "out_dir"
    assert (out / "data" / "precious.png").read_bytes() == b"x"


def test_demo_without_pytorch_grad_cam(tmp_path, monkeypatch):
    """The demo still runs (and says how to get the comparison) when the [baselines] extra is missing."""
    import sys

    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    notes: list[str] = []

    class Rep(demo.DemoReporter):
        def note(self, message):
            notes.append(message)

    result = demo.run_demo(tmp_path / "demo", fast=True, device="cpu", reporter=Rep())
    assert list(result.figures["localization"]) == ["SoftCAM (fine-tuned)", "SoftCAM (converted)"]
    assert any("softcamify[baselines]" in n for n in notes)
    assert (tmp_path / "demo" / "report.html").is_file()
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert summary["status"] == "done" and summary["softcamify_demo"]


def test_volume_demo_fast(tmp_path):
    """demo --3d at its fast sizes: every step runs, the report shows the tri-planar pictures, the evidence
    NIfTI has its scan's geometry."""
    pytest.importorskip("monai")
    nib = pytest.importorskip("nibabel")
    from softcamify.demo.volume import run_volume_demo
    from softcamify.volumes import read_volume

    res = run_volume_demo(tmp_path / "d3", fast=True, device="cpu")
    assert [s.key for s in res.steps] == ["data", "convert", "finetune", "explain", "evaluate"]
    assert res.figures["conversion"]["max_abs_diff"] < 1e-4 and res.figures["conversion"]["evidence_grid"] == "2×2×2"
    (entry,) = res.figures["explain"]
    lesion = entry["files"]["classes"]["lesion"]
    img = nib.load(str(tmp_path / "d3" / "explain" / lesion["evidence"]))
    scan = read_volume(entry["source"])
    assert img.shape == scan.geometry.shape == (16, 16, 16)
    np.testing.assert_allclose(img.affine, scan.geometry.affine, atol=1e-6)
    page = (tmp_path / "d3" / "report.html").read_text()
    assert lesion["triplanar"] in page and "SoftCAM" in page
