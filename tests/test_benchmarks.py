"""benchmarks/gpu_check.py runs end to end on the CPU (tiny sizes) and turns a failed check into exit 1."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--models",
    "test_resnet",
    "--size",
    "32",
    "--classes",
    "5",
    "--batch",
    "2",
    "--ft-model",
    "test_resnet",
    "--ft-images",
    "12",
    "--ft-size",
    "32",
    "--ft-batch",
    "4",
    "--device",
    "cpu",
]


@pytest.fixture
def gpu_check(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod.torch, "set_num_threads", lambda n: None)  # main() sets 1 thread on a CPU: not here
    return mod


def test_gpu_check_on_cpu(gpu_check, tmp_path, capsys):
    out = tmp_path / "check.json"
    assert gpu_check.main([*TINY, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "CUDA is absent" in text and "all 4 checks passed" in text
    res = json.loads(out.read_text())
    assert res["passed"] is True and res["environment"]["cuda"] is False
    by_name = {c["name"]: c for c in res["checks"]}
    assert {c["section"] for c in res["checks"]} == {"a", "b", "c", "d"}
    fp32 = by_name["test_resnet fp32 (TF32 off)"]
    assert fp32["ok"] is True and fp32["data"]["max_abs_diff"] <= fp32["data"]["tol"]
    for amp in ("bf16", "fp16"):
        row = by_name[f"test_resnet {amp} autocast"]
        assert row["ok"] is True and row["data"]["finite"]
        assert 0 < row["data"]["max_abs_diff_converted"] <= row["data"]["bound"]  # autocast really ran
    tp = [c for c in res["checks"] if c["section"] == "b"]
    assert [c["data"]["mode"] for c in tp] == ["fp32", "fp32+channels_last"]
    assert all(c["ok"] is None and c["data"]["images_per_s"]["converted"] > 0 for c in tp)  # info on a CPU
    ft = by_name["finetune test_resnet 1 epoch, amp off"]
    assert ft["ok"] is True and ft["data"]["amp"] is None and ft["data"]["train_images_per_s"] > 0
    assert ft["data"]["images"] == ft["data"]["dataset_train_images"] > 0  # one whole epoch
    assert by_name["onnxruntime CUDAExecutionProvider"]["ok"] is None


def test_gpu_check_failed_check_exits_1(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "AMP_ERROR_FACTOR", 0.0)  # no AMP error allowed at all: must fail
    monkeypatch.setattr(gpu_check, "AMP_ERROR_SLACK", 0.0)
    assert gpu_check.main([*TINY, "--skip", "b,c,d"]) == 1
    text = capsys.readouterr().out
    assert "FAILED 2 of 3 checks" in text and "(a) test_resnet bf16 autocast" in text


def test_evaluate_speed_runs_both_paths_and_they_agree(capsys):
    """benchmarks/evaluate_speed.py at a tiny size: per-image and batched deletion/insertion, same AUCs."""
    spec = importlib.util.spec_from_file_location("evaluate_speed", REPO / "benchmarks" / "evaluate_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = ["--images", "6", "--size", "48", "--steps", "2", "--batch", "2", "--rounds", "1", "--wide", "--json"]
    assert mod.main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["explained"] >= 1 and res["deletion_batch_size"] == 2
    assert set(res["ratios"]) == {"evaluate", "deletion_insertion", "evaluate_4x", "deletion_insertion_4x"}
    assert all(v > 0 for v in res["ratios"].values())
    assert res["max_abs_auc_difference"] < 1e-5


def test_localization_benchmark_scores_every_row_on_one_grid(tmp_path):
    """benchmarks/localization.py at a tiny size: black-box baselines, CAM and SoftCAM rows on one oracle grid."""
    spec = importlib.util.spec_from_file_location("localization", REPO / "benchmarks" / "localization.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.run(images=24, epochs=1, l1_values=[2.0], strides=[32, 16], baselines=["gradcam"], work=tmp_path)
    methods = [r["method"] for r in res["rows"]]
    assert methods == [
        "Grad-CAM (original)",
        "CAM (= converted SoftCAM)",
        "SoftCAM, stride 32",
        "converted SoftCAM, stride 16",
        "SoftCAM, stride 16",
    ]
    assert res["oracle_grid"] == [10, 10]  # the finest grid in the run: every row's share is on it
    assert [r["grid"] for r in res["rows"]] == ["5×5", "5×5", "5×5", "10×10", "10×10"]
    for r in res["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["activation_precision"] <= 1.0
        assert r["share_of_oracle"] is not None and r["pointing_game"] is not None
    # CAM is the converted model's map; Grad-CAM on the black box's last layer of a GAP + linear head is the
    # same map up to a positive factor per image (the class weights' gradient), so they localize alike
    assert res["rows"][1]["share_of_oracle"] == pytest.approx(res["rows"][0]["share_of_oracle"], abs=0.05)
    assert "| method | grid |" in mod.table(res)
