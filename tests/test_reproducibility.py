"""Same inputs and seed → the same results, across processes (issue 8, docs/reliability.md).

One fresh Python process runs convert (from a weights file, and from an architecture name with random
weights), export (.safetensors and .onnx) and a CPU fine-tune; this process runs the same commands. The
.safetensors files must be byte-identical, the fine-tuning runs identical (weights, best checkpoint,
metrics), and every output must record the versions of softcamify, torch and timm.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from test_hostile_inputs import _image_set, invoke, run_batch

import softcamify
from softcamify.checkpoints import read_metadata

FT = [
    "--num-classes",
    "2",
    "--input-size",
    "64",
    "-b",
    "4",
    "-j",
    "0",
    "--device",
    "cpu",
    "--lr",
    "3e-3",
    "--epochs",
    "2",
    "--seed",
    "3",
    "--l1",
    "1e-4",
    "--augment",
    "medical",
    "--json",
]
VERSIONS = {"softcamify": softcamify.__version__, "torch": torch.__version__.split("+")[0], "timm": timm.__version__}


def commands(inputs: Path, out: Path) -> list[tuple[str, list]]:
    return [
        (
            "convert_weights",
            [
                "convert",
                "test_resnet",
                "-w",
                inputs / "w.safetensors",
                "--input-size",
                "48",
                "-o",
                out / "cw.safetensors",
                "--samples",
                "3",
                "--seed",
                "5",
            ],
        ),
        (
            "convert_random",
            [
                "convert",
                "test_resnet",
                "--num-classes",
                "3",
                "--input-size",
                "32",
                "-o",
                out / "cr.safetensors",
                "--samples",
                "2",
            ],
        ),
        ("export_safetensors", ["export", inputs / "model.safetensors", "-o", out / "e.safetensors"]),
        (
            "export_onnx",
            [
                "export",
                inputs / "model.safetensors",
                "-o",
                out / "e.onnx",
                "--exporter",
                "torchscript",
                "--spatial",
                "static",
            ],
        ),
        ("finetune", ["finetune", "test_resnet", inputs / "data", "-o", out / "run", *FT]),
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    inputs, here, there = root / "inputs", root / "here", root / "there"
    for d in (inputs, here, there):
        d.mkdir()
    torch.manual_seed(0)
    sd = timm.create_model("test_resnet", num_classes=4).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(inputs / "w.safetensors"))
    rng = np.random.default_rng(0)
    _image_set(inputs / "data" / "healthy", 8, rng, False)
    _image_set(inputs / "data" / "lesion", 8, rng, True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the other process (OMP_NUM_THREADS=1)
    try:
        assert (
            invoke(
                "convert",
                "test_resnet",
                "-w",
                inputs / "w.safetensors",
                "--input-size",
                "32",
                "-o",
                inputs / "model.safetensors",
                "--samples",
                "1",
            ).code
            == 0
        )
        other = run_batch(commands(inputs, there), root / "batch")  # a fresh process
        local = {cid: invoke(*argv) for cid, argv in commands(inputs, here)}  # this one
    finally:
        torch.set_num_threads(threads)
    for results in (other, local):
        for cid, r in results.items():
            assert r.code == 0, f"{cid}: {r.stderr[-2000:]}"
    return here, there, local, other


@pytest.mark.parametrize("name", ["cw.safetensors", "cr.safetensors", "e.safetensors"])
def test_safetensors_outputs_are_byte_identical(runs, name):
    here, there, *_ = runs
    assert (here / name).read_bytes() == (there / name).read_bytes()


def test_finetuning_on_cpu_is_identical(runs):
    here, there, local, other = runs
    a, b = (
        torch.load(here / "run" / "last.pt", weights_only=True),
        torch.load(there / "run" / "last.pt", weights_only=True),
    )
    assert a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(
        torch.equal(x, y)
        for x, y in zip(a["optimizer"]["state"][0].values(), b["optimizer"]["state"][0].values(), strict=True)
    )
    best_a, best_b = load_file(here / "run" / "best.safetensors"), load_file(there / "run" / "best.safetensors")
    assert best_a.keys() == best_b.keys() and all(torch.equal(best_a[k], best_b[k]) for k in best_a)

    ra, rb = json.loads(local["finetune"].stdout), json.loads(other["finetune"].stdout)
    for key in ("best_epoch", "best_value", "epochs_completed"):
        assert ra[key] == rb[key]
    hist_a = [(h["epoch"], h["train"]["loss"], h["val"]["loss"], h["val"]["accuracy"]) for h in ra["history"]]
    hist_b = [(h["epoch"], h["train"]["loss"], h["val"]["loss"], h["val"]["accuracy"]) for h in rb["history"]]
    assert hist_a == hist_b


def _st_meta(path: Path) -> dict:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["softcamify"])


@pytest.mark.parametrize("name", ["cw.safetensors", "cr.safetensors", "e.safetensors", "run/best.safetensors"])
def test_metadata_records_versions(runs, name):
    here, *_ = runs
    assert read_metadata(here / name)["versions"] == VERSIONS
    assert _st_meta(here / name)["versions"] == VERSIONS


def test_onnx_metadata_records_versions(runs):
    from softcamify.onnx_runtime import read_onnx_metadata

    _, there, *_ = runs
    props = read_onnx_metadata(there / "e.onnx")
    meta = json.loads(props["softcamify"])
    assert props["softcamify_version"] == softcamify.__version__
    assert meta["versions"] == VERSIONS
    assert meta["export"]["softcamify"] == softcamify.__version__ and meta["export"]["torch"] == VERSIONS["torch"]


def test_finetune_history_records_the_run(runs):
    here, *_ = runs
    entry = read_metadata(here / "run" / "best.safetensors")["history"][-1]
    assert entry["kind"] == "finetune" and entry["softcamify"] == softcamify.__version__ and entry["seed"] == 3
