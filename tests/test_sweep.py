"""softcamify.training.sweep: λ-grid fine-tunes, the recommendation rule, the Pareto plot and the CLI (CPU)."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from PIL import Image

import softcamify
from softcamify.conversion import as_softcam
from softcamify.data.synth import make_lesions
from softcamify.demo import load_demo_model
from softcamify.errors import OutputError, UsageError
from softcamify.training import FinetuneConfig
from softcamify.training.sweep import (
    SweepInterrupted,
    SweepReporter,
    check_grid,
    map_on_devices,
    pareto_front,
    recommend,
    resolve_devices,
    run_tag,
    spearman,
    sweep,
)

CFG = FinetuneConfig(epochs=1, batch_size=8, workers=0, warmup_epochs=0, lr=3e-3)
THREADS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lesions(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lesions") / "data"
    make_lesions(root, n=24, size=64, seed=0, workers=1)
    return root


@pytest.fixture(scope="module")
def start_model(tmp_path_factory):
    """The shipped demo black box converted at 64 px, in memory and as a softcamify file."""
    sc, _ = as_softcam(load_demo_model(), input_size=(64, 64))
    path = tmp_path_factory.mktemp("model") / "demo64.safetensors"
    softcamify.save(sc, path)
    return sc, path


@pytest.fixture(scope="module")
def swept(lesions, start_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    result = sweep(start_model[0], lesions, out, l1=[0.0, 1e-2], config=CFG, tolerance=0.5)
    return result, out


# ---- the real sweep ------------------------------------------------------------------------------------


def test_sweep_writes_runs_json_plot_report_and_the_recommended_model(swept):
    result, out = swept
    d = json.loads((out / "sweep.json").read_text())
    assert d == json.loads(json.dumps(result.to_dict()))
    assert [r["tag"] for r in d["runs"]] == ["l1=0,l2=0", "l1=0.01,l2=0"]
    assert d["localization"] == "share_of_oracle" and d["rule"]["tiebreak"] is None  # make_lesions writes masks
    assert d["data"]["explained_images"] > 0
    for r in d["runs"]:
        run_dir = out / "runs" / r["tag"]
        assert (run_dir / "best.safetensors").is_file() and (run_dir / "metrics.jsonl").is_file()
        assert r["share_of_oracle"] is not None and r["score"] == r["share_of_oracle"]
        assert r["activation_precision"] is not None and r["pointing_game"] is not None
        assert 0.0 <= r["sparsity"] <= 1.0 and -1.0 <= r["stability"] <= 1.0
        # scored on exactly finetune's validation images: the same accuracy as its own validation
        assert r["accuracy"] == pytest.approx(r["finetune_val"]["accuracy"], abs=1e-12)
    ref = d["reference"]
    assert ref["accuracy"] is not None and ref["score"] == ref["share_of_oracle"]

    with Image.open(out / "pareto.png") as img:
        img.load()
        assert img.format == "PNG" and img.width >= 600 and img.height >= 400
        assert len(img.convert("RGB").getcolors(1 << 16) or []) > 20  # drawn, not blank
    assert (out / "pareto.png").stat().st_size > 5000

    page = (out / "index.html").read_text()
    assert "data:image/png;base64," in page and 'src="http' not in page and "<script" not in page
    assert all(r["tag"] in page for r in d["runs"]) and "reference" in page

    rec = d["recommended"]
    assert rec is not None and result.recommended is not None and result.recommended.tag == rec["tag"]
    assert (out / "best.safetensors").read_bytes() == Path(rec["best_path"]).read_bytes()
    model = softcamify.load(out / "best.safetensors")
    logits, maps = model.forward_maps(torch.zeros(1, 3, 64, 64))
    assert torch.allclose(maps.mean((2, 3)), logits, atol=1e-5)
    assert not list(out.glob(".*.tmp"))


def test_recommendation_follows_the_rule_recomputed_from_sweep_json(swept):
    _, out = swept
    d = json.loads((out / "sweep.json").read_text())
    ref, tol = d["reference"]["accuracy"], d["tolerance"]
    again = recommend(d["runs"], ref, tol)
    assert again is not None and again["tag"] == d["recommended"]["tag"]
    for r in d["runs"]:
        assert r["qualified"] == (r["accuracy"] >= ref - tol - 1e-9)
        assert r["recommended"] == (r["tag"] == d["recommended"]["tag"])
    # by hand: the best share of oracle among qualifying runs, then the smaller λ
    ok = [r for r in d["runs"] if r["qualified"]]
    best = max(r["score"] for r in ok)
    tied = [r for r in ok if abs(r["score"] - best) <= 1e-9]
    assert min(tied, key=lambda r: (r["l1"], r["l2"]))["tag"] == d["recommended"]["tag"]


# ---- the rule, on hand-made entries -------------------------------------------------------------------


def entry(l1, acc, score, l2=0.0, tiebreak=None):
    return {"tag": run_tag(l1, l2), "l1": l1, "l2": l2, "accuracy": acc, "score": score, "tiebreak": tiebreak}


def test_rule_never_picks_a_run_below_the_accuracy_floor():
    runs = [entry(1e-2, 0.85, 0.9), entry(3e-3, 0.895, 0.5), entry(0.0, 0.91, 0.4)]
    assert recommend(runs, 0.9, 0.01)["l1"] == 3e-3  # 0.85 localizes best but lost 0.05 accuracy
    assert recommend(runs, 0.9, 0.1)["l1"] == 1e-2  # a looser tolerance admits it
    assert recommend([entry(0.0, 0.95, 0.1)], 0.96, 0.01) is not None  # 0.96 - 0.01 in floats: still on the floor


def test_rule_ties_go_to_the_smaller_lambda():
    runs = [entry(1e-2, 0.9, 0.5), entry(1e-3, 0.9, 0.5), entry(3e-3, 0.92, 0.5)]
    assert recommend(runs, 0.9, 0.01)["l1"] == 1e-3
    runs = [entry(1e-3, 0.9, 0.5, l2=1e-2), entry(1e-3, 0.9, 0.5, l2=1e-4)]
    assert recommend(runs, 0.9, 0.01)["l2"] == 1e-4
    # without masks: sparsity ties are broken by stability before λ
    runs = [entry(1e-3, 0.9, 0.5, tiebreak=0.2), entry(1e-2, 0.9, 0.5, tiebreak=0.7)]
    assert recommend(runs, 0.9, 0.01)["l1"] == 1e-2


def test_rule_recommends_nothing_when_no_run_keeps_the_accuracy():
    runs = [entry(1e-2, 0.5, 0.9), entry(1e-3, 0.7, 0.4), entry(0.0, None, 1.0)]
    assert recommend(runs, 0.9, 0.01) is None
    assert recommend([], 0.9, 0.01) is None


def test_rule_ranks_unmeasured_scores_last():
    runs = [entry(0.0, 0.9, None), entry(1e-2, 0.9, -0.3)]
    assert recommend(runs, 0.9, 0.0)["l1"] == 1e-2


def test_pareto_front():
    pts = [(0.1, 0.9), (0.5, 0.8), (0.4, 0.7), (0.9, 0.5), (None, 1.0), (0.9, 0.4)]
    assert pareto_front(pts) == [0, 1, 3]
    assert pareto_front([(0.5, 0.5), (0.5, 0.5)]) == [0, 1]  # equal points do not dominate each other


# ---- grid, tags, devices, stability --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ([], "l1 must hold at least one"),
        ([0.0, -1e-3], "l1 must hold values of 0 or more"),
        ([1e-3, 1e-3], "l1 must not repeat"),
        ([float("nan")], "l1 must hold finite"),
        (["x"], "l1 must hold numbers"),
    ],
)
def test_grid_values_are_checked_and_errors_name_the_parameter(values, fragment):
    with pytest.raises(UsageError, match=fragment) as e:
        check_grid("l1", values)
    assert e.value.param == "l1"  # sweep --l1 in the CLI


def test_grid_and_tags():
    assert check_grid("l2", 0) == [0.0]
    assert run_tag(0.003, 0) == "l1=0.003,l2=0"
    assert run_tag(3e-5, 1.0) == "l1=3e-05,l2=1"
    assert run_tag(1e-7, 0) != run_tag(1.0000001e-7, 0)  # every distinct value gets its own folder


def test_map_on_devices_one_item_per_device_at_a_time_results_in_order():
    busy: dict[str, int] = {}
    seen: list[tuple[int, str, str]] = []
    lock = threading.Lock()

    def fn(item, device):
        with lock:
            busy[device] = busy.get(device, 0) + 1
            assert busy[device] == 1, f"{device} runs two items at once"
            seen.append((item, device, threading.current_thread().name))
        time.sleep(0.01)
        with lock:
            busy[device] -= 1
        return item * 10

    assert map_on_devices(fn, list(range(7)), ["cuda:0", "cuda:1", "cuda:2"]) == [i * 10 for i in range(7)]
    assert sorted(i for i, _, _ in seen) == list(range(7))
    assert all(name.startswith("sweep-") for _, _, name in seen)
    seen.clear()
    assert map_on_devices(fn, [1, 2], ["cpu"]) == [10, 20]
    assert {name for _, _, name in seen} == {threading.current_thread().name}  # one device: this thread


def test_map_on_devices_raises_the_first_error_and_stops_handing_out_items():
    started: list[int] = []

    def fn(item, device):
        started.append(item)
        if item == 1:
            raise ValueError("run 1 failed")
        time.sleep(0.05)
        return item

    with pytest.raises(ValueError, match="run 1 failed"):
        map_on_devices(fn, list(range(20)), ["cuda:0", "cuda:1"])
    assert len(started) < 20


def test_resolve_devices():
    assert resolve_devices(None, "cpu") == ["cpu"]
    assert resolve_devices("cpu,cpu") == ["cpu", "cpu"]
    if torch.cuda.device_count() < 2:
        assert resolve_devices(None, "auto") == [str(softcamify.device.resolve_device("auto"))]
    with pytest.raises(UsageError, match="^device 'tpu:0' is not understood; use auto, cpu, cuda or cuda:N") as e:
        resolve_devices(["tpu:0"])
    assert e.value.param == "device"


def test_spearman():
    a = torch.arange(16.0).reshape(4, 4).numpy()
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(spearman(a, a * 0))
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties averaged


# ---- refusals, interruption ----------------------------------------------------------------------------


def test_refusals_before_anything_is_written(tmp_path, lesions, start_model):
    out = tmp_path / "out"
    for cfg, fragment in (
        (FinetuneConfig(resume=True), "resume is not supported"),
        (FinetuneConfig(reset_head=True), "so reset_head does not apply; fine-tune once with reset_head and"),
        (FinetuneConfig(optimizer="adam"), "^optimizer 'adam' is not one of adamw, sgd"),
    ):
        with pytest.raises(UsageError, match=fragment) as e:
            sweep(start_model[0], lesions, out, l1=[0.0], config=cfg)
        assert e.value.param in ("resume", "reset_head", "optimizer")
    with pytest.raises(UsageError, match="tolerance"):
        sweep(start_model[0], lesions, out, l1=[0.0], tolerance=-0.1)
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        sweep(start_model[0], lesions, out, l1=[0.0], config=CFG)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_interrupted_sweep_keeps_completed_runs_and_writes_no_summary(tmp_path, lesions, start_model):
    class StopAfterFirst(SweepReporter):
        def run_end(self, run):
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(SweepInterrupted, match="completed runs are kept"):
        sweep(start_model[0], lesions, out, l1=[0.0, 1.0], config=CFG, reporter=StopAfterFirst())
    assert (out / "runs" / "l1=0,l2=0" / "best.safetensors").is_file()
    assert not (out / "runs" / "l1=1,l2=0").exists()
    assert sorted(p.name for p in out.iterdir()) == ["runs"]


def test_ctrl_c_during_a_run_saves_it_and_raises_sweep_interrupted(tmp_path, lesions, start_model):
    class SigintAfterFirstEpoch(SweepReporter):
        def epoch_end(self, tag, record):
            if record["epoch"] == 1:
                os.kill(os.getpid(), signal.SIGINT)  # finetune's own handler: state saved, FinetuneInterrupted

    out = tmp_path / "out"
    with pytest.raises(SweepInterrupted, match="finetune --resume") as info:
        sweep(
            start_model[0],
            lesions,
            out,
            l1=[0.0, 1.0],
            config=replace(CFG, epochs=2),
            reporter=SigintAfterFirstEpoch(),
        )
    assert info.value.exit_code == 130
    assert (out / "runs" / "l1=0,l2=0" / "last.pt").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["runs"]


def test_parallel_devices_run_real_finetunes_in_threads(tmp_path, lesions, start_model):
    """Two workers on the CPU take the code path of one run per GPU."""
    result = sweep(
        start_model[0], lesions, tmp_path / "out", l1=[0.0, 1.0], config=CFG, devices="cpu,cpu", tolerance=1.0
    )
    assert result.devices == ["cpu", "cpu"] and [r.tag for r in result.runs] == ["l1=0,l2=0", "l1=1,l2=0"]
    assert all(r.best_path and Path(r.best_path).is_file() and r.accuracy is not None for r in result.runs)
    assert result.recommended is not None and (tmp_path / "out" / "best.safetensors").is_file()


# ---- the command line ----------------------------------------------------------------------------------


def test_cli_json_without_masks_on_a_val_split_of_one_folder(tmp_path, lesions, start_model):
    """A flat folder split by --val-split, no masks: ranked by sparsity (ties: stability); JSON on stdout."""
    out = tmp_path / "out"
    r = run_cli(
        "sweep",
        start_model[1],
        lesions / "train",
        "-o",
        out,
        "--l1",
        "0,5",
        "--epochs",
        "1",
        "--workers",
        "0",
        "-b",
        "8",
        "--warmup-epochs",
        "0",
        "--val-split",
        "0.4",
        "--tolerance",
        "0.5",
        "--device",
        "cpu",
        "--json",
        env=THREADS_ENV,
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d == json.loads((out / "sweep.json").read_text())
    assert d["localization"] == "sparsity" and d["rule"]["tiebreak"] == "stability"
    assert d["data"]["with_mask"] == 0 and any("without masks" in n for n in d["notes"])
    for run in d["runs"]:
        assert run["score"] == run["sparsity"] and run["tiebreak"] == run["stability"]
        summary = json.loads((out / "runs" / run["tag"] / "summary.json").read_text())
        assert summary["data"]["val_images"] == d["data"]["val_images"]  # the same validation split
        assert run["accuracy"] == pytest.approx(run["finetune_val"]["accuracy"], abs=1e-12)
        assert run["sparsity"] == pytest.approx(run["finetune_val"]["sparsity"], abs=1e-9)
    again = recommend(d["runs"], d["reference"]["accuracy"], d["tolerance"])
    assert (again["tag"] if again else None) == (d["recommended"]["tag"] if d["recommended"] else None)
    assert (out / "best.safetensors").is_file() == (d["recommended"] is not None)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--l1=0,-1e-3"], "l1 must hold values of 0 or more"),
        (["--l1=1e-3,0.001"], "l1 must not repeat"),
        (["--l1=0,abc"], "comma-separated list of numbers"),
        (["--l1=0", "--l2=inf"], "l2 must hold finite"),
        (["--l1=0", "--tolerance=-1"], "tolerance must be"),
    ],
)
def test_cli_bad_grid_one_sentence_exit_2_nothing_written(tmp_path, args, fragment):
    out = tmp_path / "out"
    r = run_cli("sweep", "model.safetensors", tmp_path, "-o", out, *args, env=THREADS_ENV, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in r.stderr
    assert not out.exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("args", "cli_text", "param"),
    [
        (["--l1", "0,-1"], "--l1 must hold values of 0 or more; got -1.", "l1"),
        (
            ["--l1", "0", "--tolerance", "-1"],
            "--tolerance must be a finite number of 0 or more; got -1.0.",
            "tolerance",
        ),
        (["--l1", "0", "--device", "cpu,tpu"], "--device 'tpu' is not understood", "device"),
        (["--l1", "0", "--optimizer", "adam"], "--optimizer 'adam' is not one of adamw, sgd.", "optimizer"),
    ],
)
def test_cli_names_its_flags_for_the_sweeps_parameters(tmp_path, args, cli_text, param):
    """The sweep's library errors name l1, tolerance, devices' device, config.optimizer; the CLI prints its
    flags (nothing is loaded or written before these checks)."""
    from typer.testing import CliRunner

    from softcamify.cli import app
    from softcamify.errors import EXIT_USAGE

    r = CliRunner().invoke(app, ["sweep", "test_resnet", str(tmp_path), "-o", str(tmp_path / "out"), *args])
    assert r.exit_code == EXIT_USAGE, r.output
    assert cli_text in " ".join(r.output.split())
    kwargs = {"l1": [0.0, -1.0]} if param == "l1" else {"l1": [0.0]}
    kwargs.update(
        {
            "tolerance": {"tolerance": -1.0},
            "device": {"devices": "cpu,tpu"},
            "optimizer": {"config": FinetuneConfig(optimizer="adam")},
        }.get(param, {})
    )
    with pytest.raises(UsageError, match="^" + param) as e:
        sweep("test_resnet", tmp_path, tmp_path / "out", **kwargs)
    assert e.value.param == param and "--" not in str(e.value)
    assert not (tmp_path / "out").exists()
