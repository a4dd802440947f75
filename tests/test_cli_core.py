"""inspect and convert through the real command line (subprocesses), including every bad input."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import timm
import torch
from conftest import run_cli
from safetensors.torch import save_file

from softcamify.errors import (
    EXIT_CONVERSION,
    EXIT_INPUT,
    EXIT_OUTPUT,
    EXIT_UNSAFE,
    EXIT_USAGE,
    EXIT_VALIDATION,
)


def _one_sentence(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert lines, "no error message"
    assert "Traceback" not in stderr
    text = " ".join(lines)
    assert text.startswith("error: ")
    return text


def test_inspect_json(resnet_weights):
    r = run_cli("inspect", "test_resnet", "--weights", resnet_weights, "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["strategy"] == "linear" and data["exact"] is True and data["convertible"] is True
    assert data["num_classes"] == 5
    assert data["input_size"] == [3, 160, 160] and data["evidence_grid"] == [5, 5]
    assert data["feature_shape"] == [96, 5, 5]
    assert data["grids"] == {"32": [5, 5], "16": [10, 10], "8": [20, 20]}  # by --output-stride
    assert data["pooling"] == "global avg pool" and data["classifier"] == "Linear(96→5)"
    assert len(data["mean"]) == 3 and data["parameters"] > 0


def test_inspect_table_for_approximate_head():
    r = run_cli("inspect", "mobilenetv3_small_050", "--input-size", "64")
    assert r.returncode == 0, r.stderr
    assert "Hardswish" in r.stdout and "approximate" in r.stdout and "prelogits" in r.stdout


def test_convert_json_and_reload(tmp_path, resnet_weights):
    out = tmp_path / "out.safetensors"
    r = run_cli("convert", "test_resnet", "--weights", resnet_weights, "-o", out, "--json", "--input-size", "96")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["exact"] is True and data["strategy"] == "linear"
    assert data["max_abs_diff"] <= 1e-4 and data["top1_agreement"] == 1.0
    assert data["num_classes"] == 5 and data["evidence_grid"] == [3, 3]
    assert data["output"] == str(out) and out.exists()
    # a softcamify model is itself accepted as MODEL
    r2 = run_cli("inspect", out, "--json")
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout)["is_softcam"] is True
    # no temporary files are left next to the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]


@pytest.mark.parametrize("name", ["resnet50", "convnext_tiny", "efficientnet_b0", "densenet121", "regnety_002"])
def test_convert_real_architectures_from_user_weights(tmp_path, name):
    torch.manual_seed(0)
    weights = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model(name).state_dict().items()}, str(weights))
    r = run_cli("convert", name, "--weights", weights, "-o", tmp_path / "out.safetensors", "--json", "--samples", "2")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["exact"] is True and data["max_abs_diff"] <= 1e-4 and data["top1_agreement"] == 1.0


def _assert_fails(r: subprocess.CompletedProcess, code: int, *words: str, out: Path | None = None):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    msg = _one_sentence(r.stderr)
    for w in words:
        assert w in msg, msg
    if out is not None:
        assert not out.exists()
        assert not list(out.parent.glob(f".{out.name}.*")), "temporary file left behind"


def test_missing_file(tmp_path):
    out = tmp_path / "o.safetensors"
    _assert_fails(
        run_cli("convert", tmp_path / "nope.pth", "-o", out), EXIT_INPUT, "nope.pth", "does not exist", out=out
    )


def test_truncated_safetensors(tmp_path, resnet_weights):
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(resnet_weights.read_bytes()[:1000])
    out = tmp_path / "o.safetensors"
    _assert_fails(run_cli("convert", "test_resnet", "-w", bad, "-o", out), EXIT_INPUT, "trunc.safetensors", out=out)


def test_corrupt_pth(tmp_path):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(os.urandom(4096))
    out = tmp_path / "o.safetensors"
    _assert_fails(run_cli("convert", "test_resnet", "-w", bad, "-o", out), EXIT_INPUT, "garbage.pth", out=out)


def test_weights_for_another_architecture(tmp_path, resnet_weights):
    out = tmp_path / "o.safetensors"
    _assert_fails(
        run_cli("convert", "test_efficientnet", "-w", resnet_weights, "-o", out), EXIT_INPUT, "do not fit", out=out
    )


def test_unknown_architecture(tmp_path):
    out = tmp_path / "o.safetensors"
    _assert_fails(run_cli("convert", "resnet5O", "-o", out), EXIT_INPUT, "resnet5O", "timm", out=out)


def test_pickle_without_trust(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "model.pt"
    torch.save(timm.create_model("test_resnet", num_classes=2), path)
    out = tmp_path / "o.safetensors"
    _assert_fails(run_cli("convert", path, "-o", out), EXIT_UNSAFE, "--trust-pickle", out=out)
    assert not marker.exists()
    r = run_cli("convert", path, "-o", out, "--trust-pickle", "--json", "--samples", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["exact"] is True


def test_existing_output_is_not_overwritten(tmp_path):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"precious")
    _assert_fails(run_cli("convert", "test_resnet", "-o", out), EXIT_OUTPUT, "--force")
    assert out.read_bytes() == b"precious"
    r = run_cli("convert", "test_resnet", "-o", out, "--force", "--samples", "1")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() != b"precious"


def test_output_folder_missing_or_a_file(tmp_path):
    _assert_fails(
        run_cli("convert", "test_resnet", "-o", tmp_path / "no" / "o.safetensors"), EXIT_OUTPUT, "does not exist"
    )
    afile = tmp_path / "file"
    afile.write_text("x")
    _assert_fails(run_cli("convert", "test_resnet", "-o", afile / "o.safetensors"), EXIT_OUTPUT, "not a folder")


@contextlib.contextmanager
def _mounted_tmpfs(path: Path, options: str):
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_read_only_output_folder(tmp_path):
    with _mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        _assert_fails(run_cli("convert", "test_resnet", "-o", ro / "o.safetensors"), EXIT_OUTPUT, "not writable")


def test_full_disk_leaves_nothing(tmp_path):
    with _mounted_tmpfs(tmp_path / "tiny", "size=64k") as tiny:
        out = tiny / "o.safetensors"
        _assert_fails(
            run_cli("convert", "test_resnet", "-o", out, "--samples", "1"), EXIT_OUTPUT, "disk is full", out=out
        )
        assert list(tiny.iterdir()) == []


def test_bad_options(tmp_path):
    _assert_fails(run_cli("convert", "test_resnet", "-o", tmp_path / "o.onnx"), EXIT_USAGE, ".safetensors")
    _assert_fails(run_cli("inspect", "test_resnet", "--input-size", "abc"), EXIT_USAGE, "--input-size")
    r = run_cli("convert", "test_resnet")  # missing -o: click's own usage error
    assert r.returncode == EXIT_USAGE


def test_strict_refuses_approximate_conversion(tmp_path):
    out = tmp_path / "o.safetensors"
    _assert_fails(
        run_cli("convert", "mobilenetv3_small_050", "--input-size", "64", "-o", out, "--strict"),
        EXIT_CONVERSION,
        "Hardswish",
        "--strict",
        out=out,
    )


def test_approximate_conversion_reports_fidelity(tmp_path):
    out = tmp_path / "o.safetensors"
    r = run_cli("convert", "mobilenetv3_small_050", "--input-size", "64", "-o", out, "--samples", "4")
    assert r.returncode == 0, r.stderr
    assert "approximate: fine-tune before use" in r.stdout
    r = run_cli("convert", "mobilenetv3_small_050", "--input-size", "64", "-o", out, "--force", "--json")
    data = json.loads(r.stdout)
    assert data["exact"] is False and data["strategy"] == "prelogits"
    for key in ("max_abs_diff", "mean_abs_diff", "top1_agreement", "kl_divergence"):
        assert isinstance(data[key], float)
    assert any("fine-tune before use" in n for n in data["notes"])


def test_atol_zero_fails_validation_and_writes_nothing(tmp_path):
    out = tmp_path / "o.safetensors"
    r = run_cli("convert", "test_convnext", "-o", out, "--atol", "0", "--rtol", "0", "--samples", "2")
    _assert_fails(r, EXIT_VALIDATION, "atol", out=out)


def test_debug_shows_the_traceback(tmp_path):
    r = run_cli("convert", tmp_path / "nope.pth", "-o", tmp_path / "o.safetensors", "--debug")
    assert r.returncode == EXIT_INPUT and "Traceback" in r.stderr


def test_convert_verifies_on_calibration_images(tmp_path):
    import numpy as np
    from PIL import Image

    cal = tmp_path / "cal"
    (cal / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((50 + i, 70, 3)) * 255).astype(np.uint8)).save(cal / "sub" / f"{i}.png")
    (cal / "notes.txt").write_text("not an image")
    out = tmp_path / "o.safetensors"
    r = run_cli(
        "convert", "test_resnet", "-o", out, "--json", "--samples", "2", "--calibration", cal, "--input-size", "64"
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["calibration_images"] == 3 and data["samples"] == 2 and data["exact"] is True
    _assert_fails(
        run_cli("convert", "test_resnet", "-o", tmp_path / "x.safetensors", "--calibration", tmp_path / "none"),
        EXIT_INPUT,
        "--calibration",
    )


def test_inspect_json_of_a_softcamify_model_has_the_classifier_keys(tmp_path):
    import softcamify

    sc = softcamify.convert(timm.create_model("test_resnet", num_classes=3).eval(), input_size=(64, 64), samples=2)
    path = softcamify.save(sc, tmp_path / "m.safetensors")
    plain = json.loads(run_cli("inspect", "test_resnet", "--json").stdout)
    r = run_cli("inspect", path, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(plain) <= set(d)  # scripts read the same keys for a classifier and a SoftCAM model
    assert d["feature_shape"] == [96, 2, 2] and d["evidence_grid"] == [2, 2] and d["is_softcam"]
    assert "linear" in d["head"] and d["convertible"]


def test_convert_with_output_stride(tmp_path, resnet_weights):
    out = tmp_path / "x.safetensors"
    r = run_cli(
        "convert",
        "test_resnet",
        "--weights",
        resnet_weights,
        "--output-stride",
        "16",
        "-o",
        out,
        "--json",
        "--input-size",
        "64",
        "--samples",
        "2",
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["output_stride"] == 16 and data["evidence_grid"] == [4, 4] and data["original_grid"] == [2, 2]
    assert data["exact"] is False and data["strategy"] == "linear"
    for key in ("max_abs_diff", "mean_abs_diff", "top1_agreement", "kl_divergence"):
        assert isinstance(data[key], float), key
    assert any("fine-tune before use" in n for n in data["notes"])
    d = json.loads(run_cli("inspect", out, "--json").stdout)
    assert d["is_softcam"] and d["evidence_grid"] == [4, 4] and d["grids"] == {"16": [4, 4]}
    strict = tmp_path / "strict.safetensors"
    _assert_fails(
        run_cli("convert", "test_resnet", "--output-stride", "8", "-o", strict, "--strict"),
        EXIT_CONVERSION,
        "--output-stride 8",
        "--strict",
        out=strict,
    )


def test_inspect_table_shows_the_grids_offered():
    r = run_cli("inspect", "test_resnet", "--input-size", "64")
    assert r.returncode == 0, r.stderr
    assert "2×2 (--output-stride 32), 4×4 (16), 8×8 (8)" in r.stdout


def test_output_stride_on_a_model_that_cannot(tmp_path):
    out = tmp_path / "o.safetensors"
    _assert_fails(
        run_cli("convert", "torchvision:densenet121", "--input-size", "64", "--output-stride", "16", "-o", out),
        EXIT_USAGE,
        "--output-stride 16",
        "torchvision:densenet121",
        "offers only its own 2×2 grid",
        out=out,
    )
    assert list(tmp_path.iterdir()) == []
    _assert_fails(
        run_cli("convert", "test_resnet", "--output-stride", "12", "-o", out),
        EXIT_USAGE,
        "--output-stride must be 32",
        out=out,
    )


def _one_sentence_error(r, code: int = 3) -> str:
    assert r.returncode == code, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    text = " ".join(r.stderr.split())
    assert text.startswith("error:") and text.count(". ") <= 2, text
    return text


def test_lukemelas_efficientnet_keys_are_named_with_what_to_do(tmp_path):
    import torch

    sd = {
        "_conv_stem.weight": torch.zeros(8, 3, 3, 3),
        "_bn0.weight": torch.ones(8),
        "_blocks.0._depthwise_conv.weight": torch.zeros(8, 1, 3, 3),
        "_fc.weight": torch.zeros(3, 8),
        "_fc.bias": torch.zeros(3),
    }
    torch.save(sd, tmp_path / "luke.pth")
    r = run_cli("convert", "efficientnet_b0", "--weights", tmp_path / "luke.pth", "-o", tmp_path / "o.safetensors")
    text = _one_sentence_error(r)
    assert "EfficientNet-PyTorch" in text and "_conv_stem" in text and "--trust-pickle" in text
    assert "check the architecture name" not in text


def test_keras_and_dataparallel_key_schemes_are_named(tmp_path):
    import timm
    import torch

    keras = {"stem_conv/kernel:0": torch.zeros(3, 3, 3, 8), "stem_bn/moving_mean:0": torch.zeros(8)}
    torch.save(keras, tmp_path / "keras.pth")
    r = run_cli("inspect", "test_resnet", "--weights", tmp_path / "keras.pth")
    assert "Keras/TensorFlow" in _one_sentence_error(r)
    other = timm.create_model("test_efficientnet", num_classes=3)
    torch.save({f"module.{k}": v for k, v in other.state_dict().items()}, tmp_path / "dp.pth")
    r = run_cli("inspect", "test_resnet", "--weights", tmp_path / "dp.pth")
    assert "DataParallel" in _one_sentence_error(r)


def test_class_names_from_a_file_in_convert(tmp_path, resnet_weights):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\nfish\nfrog\n")
    out = tmp_path / "o.safetensors"
    r = run_cli(
        "convert", "test_resnet", "--weights", resnet_weights, "-o", out, "--samples", "1", "--class-names", labels
    )
    assert r.returncode == 0, r.stderr
    from softcamify.checkpoints import load

    assert load(out).class_names == ["cat", "dog", "bird", "fish", "frog"]


def test_guessed_preprocessing_is_noted_and_given_preprocessing_recorded(tmp_path, resnet_weights):
    import torch
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "tv.pth")
    r = run_cli("inspect", "torchvision:resnet18", "--weights", tmp_path / "tv.pth", "--input-size", "64")
    assert r.returncode == 0, r.stderr
    assert "preprocessing is guessed" in " ".join(r.stdout.split())
    out = tmp_path / "o.safetensors"
    r = run_cli(
        "convert",
        "torchvision:resnet18",
        "--weights",
        tmp_path / "tv.pth",
        "-o",
        out,
        "--input-size",
        "64",
        "--samples",
        "1",
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.25",
        "--crop-pct",
        "1.0",
        "--interpolation",
        "bicubic",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert not any("guessed" in n for n in json.loads(r.stdout)["notes"])
    from softcamify.checkpoints import load

    cfg = load(out).meta.data_config
    assert cfg["mean"] == [0.5] * 3 and cfg["std"] == [0.25] * 3
    assert cfg["crop_pct"] == 1.0 and cfg["interpolation"] == "bicubic"


def test_every_command_that_loads_an_original_takes_the_model_options():
    """One declaration of the original-model options (``cli._common.ORIGINAL``), on every command that loads an
    original classifier; ``--class-names`` on every command that names classes. Read from the click commands
    typer builds (what ``--help`` lists), in this process."""
    import typer

    from softcamify.cli import app

    group = typer.main.get_command(app)
    flags = {name: {o for p in cmd.params for o in p.opts} for name, cmd in group.commands.items()}
    original = ("--module", "--model-args", "--mean", "--std", "--crop-pct", "--interpolation")
    for command in ("inspect", "convert", "export", "explain", "evaluate", "predict", "finetune", "sweep"):
        assert set(original) <= flags[command], (command, set(original) - flags[command])
    for command in ("convert", "export", "explain", "evaluate", "predict"):
        assert "--class-names" in flags[command], command
