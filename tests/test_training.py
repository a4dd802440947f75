"""softcamify.training: the ElasticNet loss, the training loop, checkpoints and exact resume (CPU, seconds)."""

from __future__ import annotations

import json
import math
import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import softcamify
from softcamify.conversion import as_softcam
from softcamify.errors import InputError, OutputError, UsageError
from softcamify.training import (
    FinetuneConfig,
    FinetuneInterrupted,
    Reporter,
    RunLock,
    balanced_class_weights,
    cosine_with_warmup,
    elasticnet_loss,
    finetune,
    lambda_from_paper,
    load_state,
    logit_scale,
    map_statistics,
)


def make_dataset(root: Path, n: int = 16, size: int = 32, seed: int = 0, classes=("healthy", "lesion")) -> Path:
    """Class folders of small PNGs: dark noise; the second class has a bright blob somewhere."""
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


pytestmark = pytest.mark.usefixtures("one_thread")
BASE = FinetuneConfig(
    epochs=2,
    batch_size=8,
    num_classes=2,
    input_size=(64, 64),
    workers=0,
    lr=3e-3,
    warmup_epochs=0,
    augment="light",
    l1=0.0,
    val_split=0.25,
)


def tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def strip_times(history: list[dict]) -> list[dict]:
    def clean(d):
        if isinstance(d, dict):
            return {k: clean(v) for k, v in d.items() if k not in ("time_s", "images_per_s")}
        if isinstance(d, list):
            return [clean(v) for v in d]
        return d

    return clean(history)


class SigintAt(Reporter):
    """Sends SIGINT to this process at (epoch, step); step 0 means at the end of that epoch."""

    def __init__(self, epoch: int, step: int = 0):
        self.at = (epoch, step)
        self.epoch = 0
        self.notes: list[str] = []

    def note(self, message):
        self.notes.append(message)

    def epoch_start(self, epoch, epochs, steps, done):
        self.epoch = epoch

    def step(self, step, steps, images, running):
        if (self.epoch, step) == self.at:
            os.kill(os.getpid(), signal.SIGINT)

    def epoch_end(self, record):
        if self.at == (record["epoch"], 0):
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def plain_run(data, tmp_path_factory):
    """λ1 = λ2 = 0, 4 epochs: the reference run for several tests."""
    run_dir = tmp_path_factory.mktemp("runs") / "plain"
    return finetune("test_resnet", data, run_dir, replace(BASE, epochs=4))


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """An uninterrupted 2-epoch run (the resume tests must end with exactly its weights)."""
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    result = finetune("test_resnet", data, run_dir, BASE)
    return result, load_state(run_dir / "last.pt")


# --- loss, schedule, statistics ------------------------------------------------------------------------


def test_loss_is_ce_plus_batch_wide_penalties():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(4, 3, 5, 5, generator=g, requires_grad=True)
    logits = maps.mean((2, 3))
    y = torch.tensor([0, 1, 2, 1])
    loss, ce, l1, l2 = elasticnet_loss(logits, maps, y)
    assert torch.equal(loss, F.cross_entropy(logits, y))  # λ = 0: plain cross-entropy, bit for bit
    assert torch.allclose(l1, maps.abs().mean())
    assert torch.allclose(l2, maps.pow(2).mean())
    loss, ce, l1, l2 = elasticnet_loss(logits, maps, y, l1=1e-2, l2=1e-3, scale=2.0)
    assert torch.allclose(l1, maps.abs().mean() / 2.0) and torch.allclose(l2, maps.pow(2).mean() / 4.0)
    assert torch.allclose(loss, ce + 1e-2 * l1 + 1e-3 * l2)
    loss.backward()
    # every sample is penalized (the reference code only penalizes the first one)
    assert all(maps.grad[b].abs().sum() > 0 for b in range(4))
    w = torch.tensor([1.0, 2.0, 0.5])
    assert torch.allclose(elasticnet_loss(logits, maps, y, class_weight=w)[1], F.cross_entropy(logits, y, weight=w))
    with pytest.raises(UsageError, match="scale"):
        elasticnet_loss(logits, maps, y, l1=1.0, scale=0.0)


def test_penalty_is_normalized_across_grids_classes_and_logit_scales():
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(2, 3, 4, 4, generator=g)
    logits = maps.mean((2, 3))
    y = torch.tensor([0, 2])

    def terms(m, z, s=1.0):
        return [float(t) for t in elasticnet_loss(z, m, y, 1.0, 1.0, scale=s)[2:]]

    base = terms(maps, logits)
    # the same maps on a 2× finer grid (every cell split in four): the same penalty
    finer = maps.repeat_interleave(2, 2).repeat_interleave(2, 3)
    assert terms(finer, finer.mean((2, 3))) == pytest.approx(base, rel=1e-6)
    # a 3-D grid of the same values: the same penalty
    vol = maps.unsqueeze(2).expand(-1, -1, 3, -1, -1)
    assert terms(vol, logits) == pytest.approx(base, rel=1e-6)
    # classes of zeros: the documented scaling, K / (K + extra)
    padded = torch.cat([maps, torch.zeros(2, 2, 4, 4)], 1)
    assert terms(padded, padded.mean((2, 3))) == pytest.approx([b * 3 / 5 for b in base], rel=1e-6)
    # maps and logits ×10 with the logit scale ×10: the same penalty
    assert logit_scale(10 * logits) == pytest.approx(10 * logit_scale(logits), rel=1e-6)
    s = logit_scale(logits)
    assert terms(10 * maps, 10 * logits, 10 * s) == pytest.approx(terms(maps, logits, s), rel=1e-6)
    # a shift shared by every class changes neither softmax nor the scale; constant logits read as 1
    assert logit_scale(logits + 7.0) == pytest.approx(s, rel=1e-6)
    assert logit_scale(torch.zeros(4, 3)) == 1.0
    # one-logit binary models: the scale of their two-class view (−z/2, z/2)
    z = torch.tensor([[2.0], [-4.0]])
    assert logit_scale(z) == pytest.approx(float(torch.tensor([1.0, 2.0]).pow(2).mean().sqrt()))


def test_lambda_from_paper_gives_the_papers_penalty():
    g = torch.Generator().manual_seed(2)
    maps = torch.randn(3, 2, 16, 16, generator=g)
    logits = maps.mean((2, 3))
    y = torch.tensor([0, 1, 1])
    s = logit_scale(logits)
    lam_paper = 5e-5
    ours = lambda_from_paper(lam_paper, 2, 16 * 16, s)
    _, _, l1, l2 = elasticnet_loss(logits, maps, y, ours, 0.0, scale=s)
    paper = lam_paper * maps.abs().sum((1, 2, 3)).mean()  # per-sample sum over K×h×w, batch mean
    assert float(ours * l1) == pytest.approx(float(paper), rel=1e-5)
    ours2 = lambda_from_paper(lam_paper, 2, 16 * 16, s, term="l2")
    assert float(ours2 * l2) == pytest.approx(float(lam_paper * maps.square().sum((1, 2, 3)).mean()), rel=1e-5)
    with pytest.raises(UsageError, match="term"):
        lambda_from_paper(1.0, 2, 4, 1.0, term="l3")


def test_schedule_and_statistics():
    f = cosine_with_warmup(100, 10, 0.1)
    assert f(0) < f(5) < f(9) <= 1.0
    assert f(10) == pytest.approx(1.0)
    assert f(99) == pytest.approx(0.1, abs=1e-3)
    assert all(f(i) >= f(i + 1) for i in range(10, 99))
    maps = torch.tensor([[[[0.0, 0.05], [1.0, -2.0]]]])
    near, cells, l1sum, nmaps = map_statistics(maps, 0.1).tolist()
    assert (near / cells, l1sum / nmaps) == (0.5, pytest.approx(3.05))
    assert balanced_class_weights([0, 0, 0, 1], 2) == [pytest.approx(4 / 6), 2.0]


# --- a run and its files ------------------------------------------------------------------------------


def test_loss_falls_and_run_folder_is_complete(plain_run):
    r = plain_run
    losses = [h["train"]["loss"] for h in r.history]
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0], losses
    for h in r.history:  # λ = 0: the loss is the cross-entropy; penalties are still logged
        assert h["train"]["loss"] == pytest.approx(h["train"]["ce"]) and h["train"]["l1"] > 0
        assert {"accuracy", "balanced_accuracy", "auc", "sparsity", "map_l1", "per_class"} <= set(h["val"])
    run = Path(r.run_dir)
    assert sorted(p.name for p in run.iterdir()) == ["best.safetensors", "last.pt", "metrics.jsonl", "summary.json"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4]
    assert json.loads((run / "summary.json").read_text())["best_epoch"] == r.best_epoch
    state = torch.load(run / "last.pt", weights_only=True)  # only tensors and primitive containers
    assert state["epoch"] == 4 and state["step"] == 0 and {"model", "optimizer", "scheduler", "rng"} <= set(state)


def test_best_checkpoint_loads_and_maps_average_to_logits(plain_run):
    model = softcamify.load(plain_run.best_path)
    assert model.class_names == ["healthy", "lesion"]
    entry = model.meta.history[-1]
    assert entry["kind"] == "finetune" and entry["epoch"] == plain_run.best_epoch and entry["l1"] == 0.0
    assert entry["epochs_planned"] == 4 and entry["seed"] == 0
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        logits, maps = model.forward_maps(x)
        assert torch.allclose(maps.mean((2, 3)), logits, atol=1e-6)
        assert torch.equal(plain_run.model(x), model(x))  # result.model is the best model


def test_l1_makes_maps_sparser(plain_run, data, tmp_path):
    sparse = finetune("test_resnet", data, tmp_path / "l1", replace(BASE, epochs=4, l1=5.0))
    dense, lasso = plain_run.history[-1]["val"], sparse.history[-1]["val"]
    assert lasso["map_l1"] < 0.6 * dense["map_l1"], (lasso["map_l1"], dense["map_l1"])
    assert lasso["sparsity"] > dense["sparsity"] + 0.1, (lasso["sparsity"], dense["sparsity"])
    assert sparse.history[-1]["train"]["l1"] < plain_run.history[-1]["train"]["l1"]
    assert sparse.history[-1]["train"]["loss"] > sparse.history[-1]["train"]["ce"]


# --- determinism and resume ---------------------------------------------------------------------------


def test_resume_after_epoch_1_equals_uninterrupted_run(straight, data, tmp_path):
    result, ref = straight
    run_dir = tmp_path / "run"
    rep = SigintAt(epoch=1)
    with pytest.raises(FinetuneInterrupted) as exc:
        finetune("test_resnet", data, run_dir, BASE, reporter=rep)
    assert exc.value.exit_code == 130 and str(exc.value).endswith(": rerun it with resume to continue.")
    assert exc.value.param == "resume"  # the CLI says --resume
    assert load_state(run_dir / "last.pt")["epoch"] == 1
    assert not (run_dir / ".lock").exists()
    resumed = finetune("test_resnet", data, run_dir, replace(BASE, resume=True))
    state = load_state(run_dir / "last.pt")
    assert tensors_equal(state["model"], ref["model"])  # bit-identical weights
    assert strip_times(resumed.history) == strip_times(result.history)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert resumed.resumed_from == 1


def test_resume_without_epochs_keeps_the_runs_plan(straight, data, tmp_path):
    """`finetune … --resume` after Ctrl-C, without repeating --epochs: the stored plan (epochs, patience)
    continues, bit-identical to the uninterrupted run; a given --epochs still changes it."""
    result, ref = straight
    run_dir = tmp_path / "run"
    with pytest.raises(FinetuneInterrupted):
        finetune("test_resnet", data, run_dir, replace(BASE, patience=5), reporter=SigintAt(epoch=1))
    rep = SigintAt(epoch=99)  # never fires: collects the notes
    resumed = finetune("test_resnet", data, run_dir, replace(BASE, epochs=None, resume=True), reporter=rep)
    assert resumed.epochs_planned == BASE.epochs and resumed.config["patience"] == 5
    assert tensors_equal(load_state(run_dir / "last.pt")["model"], ref["model"])
    assert not any("Resuming with --epochs" in n for n in rep.notes)
    longer = finetune("test_resnet", data, run_dir, replace(BASE, epochs=BASE.epochs + 1, resume=True), reporter=rep)
    assert longer.epochs_completed == BASE.epochs + 1
    assert any(f"Resuming with --epochs {BASE.epochs + 1}" in n and "stretched" in n for n in rep.notes)


def test_resume_mid_epoch_other_workers_and_amp_on_cpu_is_exact(straight, data, tmp_path):
    """Interrupted at epoch 2, step 2, with a DataLoader worker and --amp (a no-op on CPU): resuming in the
    main process ends with exactly the weights of the plain uninterrupted run."""
    _, ref = straight
    run_dir = tmp_path / "run"
    rep = SigintAt(epoch=2, step=2)
    with pytest.raises(FinetuneInterrupted, match="epoch 2, step 2/"):
        finetune("test_resnet", data, run_dir, replace(BASE, workers=1, amp=True), reporter=rep)
    assert any("--amp only applies on CUDA" in n for n in rep.notes)
    saved = load_state(run_dir / "last.pt")
    assert (saved["epoch"], saved["step"]) == (1, 2)
    rep = SigintAt(epoch=-1)
    finetune("test_resnet", data, run_dir, replace(BASE, resume=True, lr=1.0), reporter=rep)
    assert any("ignored the new --lr" in n for n in rep.notes)
    assert tensors_equal(load_state(run_dir / "last.pt")["model"], ref["model"])


def test_cuda_amp_code_path_runs_on_cpu(data, tmp_path, monkeypatch):
    """The fp16 branch (autocast + GradScaler + unscale for clipping + scaler state in last.pt), forced on CPU."""
    import softcamify.training.run as training_run

    monkeypatch.setattr(training_run, "amp_plan", lambda device, cfg: (torch.float16, None))
    cfg = replace(BASE, amp=True, amp_dtype="fp16", grad_clip=1.0, l1=1e-3, l2=1e-4)
    run_dir = tmp_path / "amp"
    with pytest.raises(FinetuneInterrupted):
        finetune("test_resnet", data, run_dir, cfg, reporter=SigintAt(epoch=1))
    scaler = load_state(run_dir / "last.pt")["scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler
    r = finetune("test_resnet", data, run_dir, replace(cfg, resume=True))
    assert r.amp == "fp16" and all(math.isfinite(h["train"]["loss"]) for h in r.history)
    assert r.history[-1]["train"]["loss"] > r.history[-1]["train"]["ce"]  # penalties in float32, added


# --- options ------------------------------------------------------------------------------------------


def test_freeze_backbone_sgd_balanced_weights_and_early_stop(data, tmp_path):
    cfg = replace(
        BASE,
        epochs=4,
        freeze_backbone=True,
        optimizer="sgd",
        class_weights="balanced",
        lr=None,
        monitor="val_acc",
        patience=1,
    )
    run_dir = tmp_path / "frozen"
    r = finetune("test_resnet", data, run_dir, cfg)
    assert r.stopped_early and r.epochs_completed == 2 and r.best_epoch == 1  # val_acc did not improve
    assert any("Stopped early after epoch 2" in n for n in r.notes)
    torch.manual_seed(0)  # finetune seeds with config.seed (0) before it builds the model
    start, _ = as_softcam("test_resnet", num_classes=2, input_size=(64, 64))
    after = load_state(run_dir / "last.pt")["model"]
    before = start.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("features."))  # BN stats too
    assert not torch.equal(after["head.conv.weight"], before["head.conv.weight"])
    assert r.data["class_weights"] == [1.0, 1.0] and r.config["lr"] == 1e-3 and r.config["weight_decay"] == 5e-4
    again = finetune("test_resnet", data, run_dir, replace(cfg, resume=True))  # nothing left to do
    assert again.epochs_completed == 2 and any("raise --patience" in n for n in again.notes)


def test_class_mismatch_needs_reset_head(data, tmp_path):
    with pytest.raises(InputError, match="pass reset_head to re-initialize the evidence conv") as e:
        finetune("test_resnet", data, tmp_path / "a", replace(BASE, num_classes=None))
    assert e.value.param == "reset_head"
    assert not (tmp_path / "a").exists()  # nothing written before the inputs are checked
    cfg = replace(BASE, num_classes=None, reset_head=True, epochs=1, channels_last=True)
    r = finetune("test_resnet", data, tmp_path / "b", cfg)
    assert softcamify.load(r.best_path).num_classes == 2


def test_finetune_a_softcamify_model_again(plain_run, data, tmp_path):
    """A softcamify checkpoint is used as it is: its class names must match the data, its history grows."""
    r = finetune(plain_run.best_path, data, tmp_path / "again", replace(BASE, num_classes=None, epochs=1))
    history = softcamify.load(r.best_path).meta.history
    assert [h["kind"] for h in history] == ["finetune", "finetune"]
    other = make_dataset(tmp_path / "other", n=4, classes=("normal", "drusen"))
    with pytest.raises(InputError, match=r"classes \(healthy, lesion\) differ from the data's"):
        finetune(plain_run.best_path, other, tmp_path / "x", replace(BASE, num_classes=None))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"monitor": "val_f1"}, r"^monitor 'val_f1' is not one of val_auc, val_acc, val_loss\.$"),
        ({"optimizer": "adam"}, r"^optimizer 'adam' is not one of adamw, sgd\.$"),
        ({"epochs": 0}, r"^epochs 0 must be at least 1\.$"),
        ({"val_split": 1.5}, r"^val_split 1\.5 must be at least 0 and below 1\.$"),
        ({"l1": -1.0}, r"^l1 -1\.0 must be 0 or more\.$"),
        ({"resume": True, "force": True}, r"^resume and force contradict each other"),
    ],
)
def test_bad_options(data, tmp_path, change, match):
    """Named as the Python caller wrote them (the CLI renders its flags: test_cli_finetune)."""
    with pytest.raises(UsageError, match=match) as e:
        finetune("test_resnet", data, tmp_path / "run", replace(BASE, **change))
    assert e.value.params == tuple(change)
    assert not (tmp_path / "run").exists()


def test_existing_run_folder_and_lock(plain_run, data, tmp_path):
    with pytest.raises(OutputError, match="pass resume to continue it or force to start over") as e:
        finetune("test_resnet", data, plain_run.run_dir, BASE)
    assert e.value.params == ("resume", "force")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no last.pt to continue from; start a new run without resume"):
        finetune("test_resnet", data, tmp_path / "empty", replace(BASE, resume=True))
    run_dir = tmp_path / "locked"
    run_dir.mkdir()
    lock = RunLock(run_dir).acquire()  # another run holds the folder
    try:
        with pytest.raises(OutputError, match="in use by another finetune run"):
            finetune("test_resnet", data, run_dir, BASE)
    finally:
        lock.release()
    assert list(run_dir.iterdir()) == []


def test_result_is_json_ready(plain_run):
    d = plain_run.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert "model" not in d and json.loads(text)["epochs_completed"] == 4
    assert math.isfinite(d["train_images_per_s"])


def test_a_class_too_small_for_validation_is_noted(tmp_path):
    root = make_dataset(tmp_path / "data", n=8, classes=("a", "b"))
    make_dataset(tmp_path / "extra", n=1, classes=("c",))
    (tmp_path / "extra" / "c").rename(root / "c")  # one image: nothing to split off for validation
    rep = SigintAt(epoch=99)  # never fires: collects the notes
    finetune("test_resnet", root, tmp_path / "run", replace(BASE, epochs=1, num_classes=3), reporter=rep)
    assert any("Class 'c' has no validation images" in n for n in rep.notes)
