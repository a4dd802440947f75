"""``softcamify finetune`` through the real CLI: bad inputs, Ctrl-C, JSON output, torchrun with 2 processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import softcamify
from softcamify.training import FinetuneConfig, RunLock, finetune, load_state

ENV = {"COLUMNS": "200", "OMP_NUM_THREADS": "1"}  # tiny models: one thread, no OpenMP spin-waits
FAST = ["--num-classes", "2", "--input-size", "64", "-b", "8", "-j", "0", "--device", "cpu", "--lr", "3e-3"]


def make_dataset(root: Path, n: int = 8, size: int = 32, seed: int = 0, classes=("healthy", "lesion")) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            if c:
                cy, cx = rng.integers(6, size - 6, 2)
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < 16] = 240
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def cli(*args: str, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "softcamify", "finetune", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **ENV, **(env or {})},
    )


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def no_run_files(run_dir: Path) -> bool:
    """Nothing (half-)written: the folder is missing or empty (the lock of the "locked" case is the test's)."""
    return not run_dir.exists() or all(p.name == ".lock" for p in run_dir.iterdir())


# Each case: (setup(tmp) -> (args, run_dir)), expected exit code, fragment of the one-line message.
def _missing(tmp):
    return [tmp / "nowhere"], tmp / "run"


def _empty(tmp):
    (tmp / "empty").mkdir()
    return [tmp / "empty"], tmp / "run"


def _class_without_images(tmp):
    root = make_dataset(tmp / "d", n=4)
    (root / "other").mkdir()
    (root / "other" / "notes.txt").write_text("not an image")
    return [root], tmp / "run"


def _one_class(tmp):
    return [make_dataset(tmp / "d", n=4, classes=("healthy",))], tmp / "run"


def _val_one_class(tmp):
    make_dataset(tmp / "d" / "train", n=4)
    make_dataset(tmp / "d" / "val", n=2, classes=("healthy",))
    return [tmp / "d"], tmp / "run"


def _truncated_strict(tmp):
    root = make_dataset(tmp / "d", n=4)
    truncate(root / "lesion" / "001.png")
    return [root, "--strict-data"], tmp / "run"


def _csv_missing_files(tmp):
    root = make_dataset(tmp / "d", n=4)
    (tmp / "labels.csv").write_text(
        "path,label\nhealthy/000.png,healthy\nlesion/000.png,lesion\nlesion/404.png,lesion\n"
    )
    return [root, "--labels", tmp / "labels.csv"], tmp / "run"


def _run_exists(tmp):
    root = make_dataset(tmp / "d", n=4)
    (tmp / "run").mkdir()
    (tmp / "run" / "metrics.jsonl").write_text("")
    return [root], tmp / "run"


def _locked(tmp):
    root = make_dataset(tmp / "d", n=4)
    (tmp / "run").mkdir()
    return [root, "--force"], tmp / "run"  # the fixture holds the lock, as a running finetune would


def _bad_option(tmp):
    return [make_dataset(tmp / "d", n=4), "--monitor", "val_f1"], tmp / "run"


CASES = {
    "missing_dir": (_missing, 3, "does not exist"),
    "empty_dir": (_empty, 3, "contains no class folders"),
    "class_without_images": (_class_without_images, 3, "contains no images"),
    "one_class": (_one_class, 3, "only one class"),
    "val_one_class": (_val_one_class, 3, "validation split has only one class"),
    "truncated_strict": (_truncated_strict, 3, "truncated or corrupt"),
    "csv_missing_files": (_csv_missing_files, 3, "do not exist"),
    "run_exists": (_run_exists, 6, "pass --resume to continue it or --force to start over"),
    "locked": (_locked, 6, "in use by another finetune run"),
    "bad_option": (_bad_option, 2, "--monitor 'val_f1' is not one of val_auc, val_acc, val_loss."),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Every bad-input case through the real CLI, run side by side (each is a fresh Python process)."""
    jobs = {}
    for name, (setup, _, _) in CASES.items():
        args, run_dir = setup(tmp_path_factory.mktemp(name))
        jobs[name] = (["test_resnet", *args, "-o", run_dir, *FAST], run_dir)
    lock = RunLock(jobs["locked"][1]).acquire()
    try:
        with ThreadPoolExecutor(3) as pool:
            futures = {name: pool.submit(cli, *args) for name, (args, _) in jobs.items()}
            return {name: (f.result(), jobs[name][1]) for name, f in futures.items()}
    finally:
        lock.release()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_sentence_exit_code_nothing_written(bad_runs, case):
    proc, run_dir = bad_runs[case]
    _, code, fragment = CASES[case]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    message = " ".join(proc.stderr.split())
    assert "error:" in message and fragment in message, message
    assert "Traceback" not in proc.stderr
    if case == "run_exists":  # the earlier run is left as it was
        assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.jsonl"]
    else:
        assert no_run_files(run_dir)


def test_skips_unreadable_images_ignores_other_files_and_prints_json(tmp_path):
    root = make_dataset(tmp_path / "d", n=6)
    truncate(root / "lesion" / "002.png")
    (root / "healthy" / "README.txt").write_text("ignored")
    (root / "healthy" / ".DS_Store").write_bytes(b"\0\1")
    rng = np.random.default_rng(1)  # other formats and modes, converted to the model's 3 channels
    Image.fromarray(rng.integers(0, 60000, (40, 40)).astype(np.uint16)).save(root / "healthy" / "gray16.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 4)).astype(np.uint8), "RGBA").save(root / "lesion" / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3)).astype(np.uint8)).save(root / "lesion" / "photo.jpg")
    Image.fromarray(rng.integers(0, 255, (40, 40)).astype(np.uint8)).save(root / "healthy" / "scan.tiff")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3)).astype(np.uint8)).save(root / "healthy" / "old.bmp")
    run_dir = tmp_path / "run"
    proc = cli("test_resnet", root, "-o", run_dir, "--epochs", "1", "--json", "--augment", "medical", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert "Skipped 1 unreadable image(s)" in " ".join(proc.stderr.split())
    summary = json.loads(proc.stdout)  # stdout is exactly one JSON object
    assert summary["data"]["train_images"] + summary["data"]["val_images"] == 16
    assert summary["data"]["skipped_images"] == 1 and summary["epochs_completed"] == 1
    model = softcamify.load(summary["best_path"])
    with torch.no_grad():
        logits, maps = model.forward_maps(torch.randn(2, 3, 64, 64))
    assert torch.allclose(maps.mean((2, 3)), logits, atol=1e-6)


def test_ctrl_c_saves_state_and_exits_130(tmp_path):
    root = make_dataset(tmp_path / "d", n=8)
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "softcamify",
        "finetune",
        "test_resnet",
        str(root),
        "-o",
        str(run_dir),
        "--epochs",
        "200",
        *FAST,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV})
    deadline = time.monotonic() + 180
    while not (run_dir / "metrics.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    message = " ".join(err.split())
    assert "Interrupted" in message and "rerun it with --resume to continue" in message
    assert "softcamify finetune test_resnet" in message
    state = load_state(run_dir / "last.pt")
    assert state["epoch"] >= 1 and not list(run_dir.glob(".*.tmp")) and not (run_dir / ".lock").exists()
    # it continues from there (the library call is what the CLI runs)
    result = finetune("test_resnet", root, run_dir, FinetuneConfig(resume=True, epochs=state["epoch"] + 1, workers=0))
    assert result.epochs_completed == state["epoch"] + 1 and result.resumed_from == state["epoch"]


def test_torchrun_two_processes_gloo(tmp_path):
    root = make_dataset(tmp_path / "d", n=8)
    run_dir = tmp_path / "run"
    proc = cli(
        "test_resnet", root, "-o", run_dir, "--epochs", "2", "--nproc", "2", "--json", *FAST[:-2], "--batch-size", "4"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # only rank 0 prints
    assert summary["world_size"] == 2 and summary["epochs_completed"] == 2
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.safetensors", "last.pt", "metrics.jsonl", "summary.json"]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # one writer
    first = json.loads(lines[0])
    assert first["train"]["images"] == summary["data"]["train_images"]  # reduced over both ranks
    assert first["val"]["n"] == summary["data"]["val_images"]  # gathered from both ranks
    assert softcamify.load(run_dir / "best.safetensors").meta.history[-1]["batch_size"] == 8


# --- the same error in the CLI's words and in the library's -------------------------------------------


def _run_file(tmp: Path) -> Path:
    (tmp / "run").write_text("not a folder")
    return tmp / "run"


# (CLI arguments, the FinetuneConfig fields, the message as the CLI prints it, as the library raises it)
WORDING = {
    "lr": (["--lr", "-1"], {"lr": -1.0}, "--lr -1.0 must be positive.", "lr -1.0 must be positive."),
    "val_split": (
        ["--val-split", "1.5"],
        {"val_split": 1.5},
        "--val-split 1.5 must be at least 0 and below 1.",
        "val_split 1.5 must be at least 0 and below 1.",
    ),
    "resume_force": (
        ["--resume", "--force"],
        {"resume": True, "force": True},
        "--resume and --force contradict each other; pass one of them.",
        "resume and force contradict each other; pass one of them.",
    ),
    "run_dir": ([], {}, "is a file; --output must be a folder.", "is a file; run_dir must be a folder."),
}


@pytest.mark.parametrize("case", list(WORDING))
def test_cli_names_its_flags_where_the_library_names_python_parameters(tmp_path, case):
    """One error, two wordings: the CLI's one line names ``--val-split`` (``--output`` for the library's
    ``run_dir``), ``softcamify.finetune`` raises it with ``val_split`` and ``err.param`` to match."""
    from typer.testing import CliRunner

    from softcamify.cli import app
    from softcamify.errors import EXIT_OUTPUT, EXIT_USAGE, SoftcamifyError

    args, fields, cli_text, api_text = WORDING[case]
    run_dir = _run_file(tmp_path) if case == "run_dir" else tmp_path / "run"
    r = CliRunner().invoke(app, ["finetune", "test_resnet", str(tmp_path), "-o", str(run_dir), *FAST, *args])
    assert r.exit_code == (EXIT_OUTPUT if case == "run_dir" else EXIT_USAGE), r.output
    line = " ".join(r.output.split())
    assert cli_text in line, line
    with pytest.raises(SoftcamifyError) as e:
        softcamify.finetune("test_resnet", tmp_path, run_dir, FinetuneConfig(**fields))
    assert api_text in str(e.value) and "--" not in str(e.value)
    assert e.value.params == (tuple(fields) or ("run_dir",))


def test_model_args_hint_is_an_option_finetune_accepts(tmp_path):
    """The in_chans hint names --model-args, and finetune takes it (with the preprocessing options)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    gray = timm.create_model("test_resnet", num_classes=2, in_chans=1)
    save_file(gray.state_dict(), str(tmp_path / "gray.safetensors"))
    root = make_dataset(tmp_path / "d", n=4)
    args = ["test_resnet", root, "--weights", tmp_path / "gray.safetensors", "--epochs", "1", *FAST]
    r = cli(*args, "-o", tmp_path / "run0")
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert "in_chans=1 in --model-args" in " ".join(r.stderr.split())
    r = cli(*args, "-o", tmp_path / "run", "--model-args", "in_chans=1", "--mean", "0.3", "--std", "0.2", "--json")
    assert r.returncode == 0, r.stderr
    best = softcamify.load(json.loads(r.stdout)["best_path"])
    assert best.meta.data_config["input_size"][0] == 1
    assert best.meta.data_config["mean"] == [0.3] and best.meta.data_config["std"] == [0.2]
