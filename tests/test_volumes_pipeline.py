"""Volumes end to end through the command line: a tiny 3D MONAI DenseNet converted with its volume
preprocessing, fine-tuned on synth3d, explained (evidence NIfTI in each scan's geometry), evaluated against 3D
masks beside MONAI GradCAM / CAM, exported to ONNX and run by ``predict`` without torch; bad volumes give one
sentence and leave nothing behind."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, run_cli_torch_free

pytest.importorskip("monai")
nib = pytest.importorskip("nibabel")

# stride 8 (two dense blocks): 32³ inputs give a 4×4×4 evidence grid; a few thousand parameters
MODEL_ARGS = json.dumps(
    {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "init_features": 8,
        "growth_rate": 4,
        "block_config": [2, 2],
    }
)
WINDOW = "-200,300"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """synth3d (16 volumes of 24³, 1.5 mm voxels: 10 train, 4 val, 2 test) and a 2-epoch fine-tuning run of
    the MONAI network, converted on the way, with its volume preprocessing (recorded in best.safetensors)."""
    from softcamify.volumes.synth3d import make_volumes

    root = tmp_path_factory.mktemp("vol")
    make_volumes(root / "data", n=16, shape=(24, 24, 24), seed=0)
    r = run_cli(
        "finetune", "monai:DenseNet121", root / "data", "--model-args", MODEL_ARGS, "--input-size", "32,32,32",
        "--target-shape", "32", f"--window={WINDOW}", "-o", root / "run", "--epochs", "2", "--workers", "0",
        "--lr", "1e-3", "--json", "-q",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (root / "summary.json").write_text(r.stdout)
    return root


def test_finetune_records_the_volume_preprocessing(work):
    from softcamify.checkpoints import load_model

    summary = json.loads((work / "summary.json").read_text())
    assert summary["epochs_completed"] == 2
    assert summary["config"]["batch_size"] == 2  # the volume default
    assert summary["config"]["volume"]["window"] == [-200.0, 300.0]
    assert summary["data"]["train_images"] == 10 and summary["data"]["val_images"] == 4
    sc = load_model(work / "run" / "best.safetensors").module
    assert sc.meta.spatial_dims == 3
    vol = sc.meta.data_config["volume"]
    assert vol["target_shape"] == [32, 32, 32] and vol["window"] == [-200.0, 300.0] and vol["channels"] == 1
    assert sc.meta.data_config["input_size"] == [1, 32, 32, 32]
    assert sc.meta.history[-1]["kind"] == "finetune"


def test_explain_writes_evidence_in_the_scan_geometry(work):
    from softcamify.volumes import read_volume

    scan = work / "data" / "test" / "lesion" / sorted(p.name for p in (work / "data/test/lesion").iterdir())[0]
    out = work / "explain"
    r = run_cli("explain", work / "run" / "best.safetensors", scan, "-o", out, "-c", "all", "--json")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spatial_dims"] == 3 and manifest["volume"]["window"] == [-200.0, 300.0]
    (entry,) = manifest["volumes"]
    assert entry["evidence_grid"] == [4, 4, 4]
    # the raw grid averages to the logits
    grid = np.load(out / entry["files"]["maps"])
    np.testing.assert_allclose(grid.mean(axis=(1, 2, 3)), entry["logits"], atol=1e-5)
    vol = read_volume(scan)
    for k, name in enumerate(["healthy", "lesion"]):
        files = entry["files"]["classes"][name]
        img = nib.load(str(out / files["evidence"]))
        assert img.shape == vol.geometry.shape == (24, 24, 24)
        np.testing.assert_allclose(img.affine, vol.geometry.affine, atol=1e-6)
        ev = np.asarray(img.dataobj, dtype=np.float32)
        # the grid mapped onto the scan (same field of view): its range stays within the grid's
        assert grid[k].min() - 1e-5 <= ev.min() and ev.max() <= grid[k].max() + 1e-5
        assert (out / files["triplanar"]).stat().st_size > 1000
        assert "softcamify-slices" in (out / files["viewer"]).read_text()


def test_evaluate_reports_3d_localisation_beside_monai(work):
    r = run_cli("evaluate", work / "run" / "best.safetensors", work / "data", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["settings"]["spatial_dims"] == 3 and res["settings"]["evidence_grid"] == [4, 4, 4]
    assert res["classification"]["n"] == 2
    assert res["counts"]["annotated"] == 1 and res["counts"]["explained"] == 1  # the lesion volume
    methods = {m["key"]: m for m in res["explanation"]["methods"]}
    assert set(methods) == {"softcam", "gradcam", "cam"}
    for m in methods.values():
        ap = m["metrics"]["activation_precision"]["mean"]
        assert 0.0 <= ap <= 1.0 and m["images"] == 1
        assert m["metrics"]["topk_precision"]["mean"] is None  # a 2-D metric
        chance = m["metrics"]["chance"]["mean"]
        oracle = m["metrics"]["oracle_precision"]["mean"]
        assert 0.0 < chance < oracle <= 1.0


def test_evaluate_metrics_match_the_library(work):
    """One annotated volume's SoftCAM activation precision, recomputed from the model's maps and its mask."""
    from softcamify.data import mask_path_for
    from softcamify.evaluation import evaluate
    from softcamify.evaluation import metrics as M
    from softcamify.evaluation.volume import volume_mask
    from softcamify.runtime import load
    from softcamify.volumes import read_mask, read_volume

    res = evaluate(work / "run" / "best.safetensors", work / "data", baselines="none", device="cpu")
    row = res.per_image[0]
    rt = load(work / "run" / "best.safetensors", device="cpu")
    v = read_volume(row["path"])
    _, maps = rt(rt.preprocess(v)[None])
    mask = volume_mask(
        read_mask(mask_path_for(Path(row["path"]), work / "data", work / "data" / "masks"), v), (32,) * 3
    )
    label = rt.class_names.index(row["label"])
    want = M.activation_precision(M.upsample(maps[0, label], mask.shape), mask)
    assert row["softcam"]["activation_precision"] == pytest.approx(want, abs=1e-9)
    assert row["mask_share"] == pytest.approx(mask.mean())


@pytest.fixture(scope="module")
def onnx_model(work) -> Path:
    """best.safetensors exported to ONNX (the library's export: the command line's is covered elsewhere)."""
    import softcamify

    path = work / "m.onnx"
    softcamify.export(work / "run" / "best.safetensors", path, exporter="torchscript")
    return path


def test_convert_records_volume_options():
    """convert's --window/--target-shape on a volume model land in its data_config; on an image model they
    are refused."""
    from types import SimpleNamespace

    import torch

    from softcamify.cli._volumes import record_volume_config
    from softcamify.conversion import as_softcam
    from softcamify.errors import UsageError

    torch.manual_seed(0)
    sc, _ = as_softcam("monai:DenseNet121", input_size=(32, 32, 32), model_args=json.loads(MODEL_ARGS), strict=False)
    opts = SimpleNamespace(window=WINDOW, zscore=False, target_shape="16,32,32", target_spacing=None)
    record_volume_config(sc, opts)
    assert sc.meta.data_config["volume"]["target_shape"] == [16, 32, 32]
    assert sc.meta.data_config["input_size"] == [1, 16, 32, 32]
    image_model, _ = as_softcam("test_resnet", num_classes=2, input_size=(32, 32), strict=False)
    with pytest.raises(UsageError, match="volume models"):
        record_volume_config(image_model, opts)


def test_predict_on_onnx_without_torch(work, onnx_model):
    from softcamify.onnx_runtime import read_onnx_metadata
    from softcamify.prediction import predict

    props = read_onnx_metadata(onnx_model)
    assert props["spatial_dims"] == "3" and json.loads(props["volume"])["window"] == [-200.0, 300.0]
    scans = work / "data" / "test"
    r = run_cli_torch_free(
        "predict", onnx_model, scans, "--json", "-k", "2", block=("torch", "timm", "torchvision", "monai")
    )
    assert r.returncode == 0, r.stderr
    assert "TORCH-MODULES []" in r.stderr
    got = json.loads(r.stdout)
    assert got["backend"] == "onnxruntime" and got["preprocessing"]["volume"]["target_shape"] == [32, 32, 32]
    want = predict(work / "run" / "best.safetensors", scans, top_k=2)  # torch, the same preprocessing
    assert [p["image"] for p in got["predictions"]] == [p.image for p in want.predictions]
    assert len(got["predictions"]) == 2
    for g, w in zip(got["predictions"], want.predictions, strict=True):
        assert [e["class"] for e in g["top_k"]] == [e["class"] for e in w.top_k]
        np.testing.assert_allclose([e["logit"] for e in g["top_k"]], [e["logit"] for e in w.top_k], atol=1e-4)


def _one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 3, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_volumes_one_sentence_nothing_left(work, onnx_model, tmp_path):
    good = next((work / "data" / "test" / "healthy").iterdir())
    # NaN voxels, in a folder after a good volume: explain stops and removes what it wrote
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(good, folder / "a_good.nii.gz")
    img = nib.load(str(good))
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(folder / "b_nan.nii.gz"))
    out = tmp_path / "out"
    r = run_cli("explain", onnx_model, folder, "-o", out)  # onnxruntime: no torch to import
    _one_line_error(r, "b_nan.nii.gz", "NaN")
    assert not out.exists()
    # a truncated gzip stream (torch-free predict on the ONNX export)
    raw = gzip.decompress(good.read_bytes())
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(gzip.compress(raw)[:-200])
    r = run_cli("predict", onnx_model, trunc)
    _one_line_error(r, "trunc.nii.gz")
    # a mask of another shape than its scan: evaluate names both files, writes no report
    data_dir = tmp_path / "d"
    for cls in ("healthy", "lesion"):
        src = next((work / "data" / "test" / cls).iterdir())
        (data_dir / "test" / cls).mkdir(parents=True)
        shutil.copy(src, data_dir / "test" / cls / src.name)
        (data_dir / "masks" / "test" / cls).mkdir(parents=True)
        np.save(
            data_dir / "masks" / "test" / cls / (src.name[: -len(".nii.gz")] + ".npy"), np.ones((8, 8, 8), np.uint8)
        )
    report = tmp_path / "report"
    r = run_cli("evaluate", onnx_model, data_dir, "-o", report)
    _one_line_error(r, ".npy")
    assert not report.exists()


def test_resume_continues_a_volume_run(work, tmp_path):
    """--resume of a volume run takes its stored preprocessing and batch size and trains on."""
    from softcamify.checkpoints import load_model
    from softcamify.training import FinetuneConfig, finetune

    run = tmp_path / "run"
    shutil.copytree(work / "run", run)
    res = finetune(
        "monai:DenseNet121", work / "data", run, FinetuneConfig(resume=True, epochs=3, device="cpu", workers=0)
    )
    assert res.resumed_from == 2 and res.epochs_completed == 3
    assert res.config["batch_size"] == 2 and res.config["volume"]["window"] == [-200.0, 300.0]
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in last] == [1, 2, 3]
    assert load_model(run / "best.safetensors").module.meta.data_config["volume"]["target_shape"] == [32, 32, 32]
