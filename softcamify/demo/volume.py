"""``softcamify demo --3d``: a volume model converted, fine-tuned and explained on synthetic CT volumes.

The 3D counterpart of :func:`softcamify.demo.run_demo`, in five steps and under a minute on two CPU cores::

    1. data       synth3d: CT-like volumes (Hounsfield units) with small lesions and exact masks
    2. convert    a small MONAI DenseNet (spatial_dims=3, random weights) -> 1×1×1 evidence conv, exact; the
                  volume preprocessing (CT window, target shape) recorded in the model
    3. finetune   a few epochs with the ElasticNet penalty on its evidence volumes
    4. explain    the test volumes: evidence NIfTI in each scan's geometry, tri-planar PNG, slice viewer
    5. evaluate   classification, and localisation against the 3-D lesion masks (beside MONAI GradCAM)

``OUT_DIR/report.html`` shows the tri-planar pictures and the tables. Needs MONAI (and nibabel for NIfTI).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .results import DemoReporter, DemoResult, StepResult

__all__ = ["VOLUME_DEFAULT", "VOLUME_FAST", "VolumeDemoSettings", "run_volume_demo"]

#: the demo network: MONAI's DenseNet121 class, two small dense blocks (stride 8: a 4×4×4 grid at 32³)
NET = "monai:DenseNet121"
NET_ARGS: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "init_features": 8,
    "growth_rate": 8,
    "block_config": [2, 2],
}
WINDOW = (-200.0, 300.0)  # HU: soft tissue (≈ 40) and lesions (≈ 200) apart, air (−1000) black


@dataclass(frozen=True)
class VolumeDemoSettings:
    """Sizes of one 3D demo run."""

    volumes: int  # generated volumes (60/20/20 train/val/test, balanced)
    shape: int  # voxels per side
    epochs: int
    batch_size: int  # BatchNorm wants more than the 2 volumes per step of the memory-aware default
    lr: float
    l1: float
    explain: int  # test volumes explained
    baselines: bool  # MONAI GradCAM beside SoftCAM in the evaluation
    contrast: float = 1.0  # synth3d's lesion contrast


VOLUME_DEFAULT = VolumeDemoSettings(
    volumes=40, shape=32, epochs=10, batch_size=4, lr=1e-3, l1=0.05, explain=2, baselines=True, contrast=2.0
)
VOLUME_FAST = VolumeDemoSettings(
    volumes=10, shape=16, epochs=1, batch_size=2, lr=3e-3, l1=0.05, explain=1, baselines=False
)


class _Steps:
    """Runs named steps, timing them and telling the reporter."""

    def __init__(self, rep: DemoReporter, count: int):
        self.rep, self.count, self.done = rep, count, []  # type: ignore[var-annotated]
        self.steps: list[StepResult] = []

    def run(self, key: str, title: str, fn: Callable[[StepResult], Any]) -> Any:
        step = StepResult(key, title)
        self.rep.step_start(step, len(self.steps) + 1, self.count)
        t0 = time.perf_counter()
        value = fn(step)
        step.seconds = time.perf_counter() - t0
        self.steps.append(step)
        self.rep.step_end(step)
        return value


def run_volume_demo(
    out_dir: str | os.PathLike = "softcamify-demo-3d",
    *,
    fast: bool = False,
    device: str = "auto",
    force: bool = False,
    reporter: DemoReporter | None = None,
    settings: VolumeDemoSettings | None = None,
) -> DemoResult:
    """Convert, fine-tune, explain and evaluate a 3D model on synthetic volumes; write ``out_dir/report.html``."""
    import importlib.util

    from ..io import check_output_dir, cleanup_on_failure, make_output_dir

    if importlib.util.find_spec("monai") is None:
        raise InputError("demo --3d builds a MONAI network; install monai (pip install monai).")
    st = settings or (VOLUME_FAST if fast else VOLUME_DEFAULT)
    out = check_output_dir(out_dir, force=force)
    rep = reporter or DemoReporter()
    steps = _Steps(rep, 5)
    t_start = time.perf_counter()
    with cleanup_on_failure(out):
        make_output_dir(out)
        figures = _pipeline(out, st, device, steps)
        report = _write_report(out, figures, steps.steps, force)
    return DemoResult(
        out_dir=str(out),
        report=str(report),
        device=str(figures["device"]),
        seconds=time.perf_counter() - t_start,
        steps=steps.steps,
        figures=figures,
        files={"report": str(report), "model": str(out / "run" / "best.safetensors"), "explain": str(out / "explain")},
        settings=st.__dict__ | {"net": NET, "net_args": NET_ARGS, "window": list(WINDOW)},
    )


def _pipeline(out: Path, st: VolumeDemoSettings, device: str, steps: _Steps) -> dict[str, Any]:
    import torch

    from ..checkpoints import load_model, save
    from ..conversion import convert
    from ..evaluation import evaluate
    from ..explanations import explain_volumes
    from ..training import FinetuneConfig, finetune
    from ..volumes import VolumeConfig, with_volume_config
    from ..volumes.synth3d import make_volumes

    figures: dict[str, Any] = {}
    data = out / "data"
    shape = (st.shape,) * 3

    def make_data(step: StepResult) -> None:
        make_volumes(data, n=st.volumes, shape=shape, seed=0, contrast=st.contrast)
        step.summary = f"{st.volumes} synth3d volumes of {st.shape}³ (CT-like, 1.5 mm voxels) with lesion masks"

    def do_convert(step: StepResult) -> Any:
        torch.manual_seed(0)
        net = load_model(NET, num_classes=2, input_size=shape, model_args=dict(NET_ARGS))  # type: ignore[arg-type]
        sc = convert(net, samples=2, class_names=["healthy", "lesion"])
        vc = VolumeConfig(target_shape=shape, window=WINDOW)  # type: ignore[arg-type]
        sc.meta.data_config = with_volume_config(sc.meta.data_config, vc)
        save(sc, out / "converted.safetensors")
        grid = "×".join(str(v) for v in sc.meta.conversion.get("evidence_grid") or [])
        figures["conversion"] = {"max_abs_diff": sc.meta.conversion.get("max_abs_diff"), "evidence_grid": grid}
        step.summary = (
            f"MONAI DenseNet121 (spatial_dims=3) → evidence volumes on a {grid} grid, "
            f"{'exact' if sc.meta.exact else 'approximate'} (max |Δlogit| {sc.meta.conversion['max_abs_diff']:.2g}); "
            f"window {WINDOW[0]:g}..{WINDOW[1]:g} HU recorded"
        )
        return sc

    def do_finetune(step: StepResult) -> Any:
        cfg = FinetuneConfig(
            epochs=st.epochs,
            batch_size=st.batch_size,
            lr=st.lr,
            l1=st.l1,
            workers=0,
            device=device,
            warmup_epochs=0.5,
            monitor="val_loss",  # a few validation volumes: the AUC ties at 1.0 long before the bias is learned
        )
        res = finetune(out / "converted.safetensors", data, out / "run", cfg)
        figures["finetune"] = {
            "best_epoch": res.best_epoch,
            "val": res.best and res.best.get("val"),
            "device": res.device,
        }
        figures["device"] = res.device
        val = (res.best or {}).get("val") or {}
        step.summary = (
            f"{res.epochs_completed} epoch(s) on {res.data['train_images']} volumes: val accuracy "
            f"{val.get('accuracy', float('nan')):.2f}, AUC {val.get('auc') or float('nan'):.2f}"
        )
        return res

    def do_explain(step: StepResult) -> Any:
        lesions = sorted((data / "test" / "lesion").iterdir())[: st.explain]
        results = explain_volumes(
            out / "run" / "best.safetensors", lesions, out / "explain", classes="all", device=device
        )
        figures["explain"] = [r.to_dict() for r in results]
        step.summary = f"{len(results)} test volume(s): evidence NIfTI in each scan's geometry, tri-planar PNG, viewer"
        return results

    def do_evaluate(step: StepResult) -> Any:
        res = evaluate(
            out / "run" / "best.safetensors",
            data,
            baselines="gradcam" if st.baselines else "none",
            device=device,
            out_dir=out / "evaluate",
        )
        summaries = res.method_summaries()
        figures["classification"] = {k: res.classification.get(k) for k in ("n", "accuracy", "roc_auc")}
        figures["localization"] = {
            m["label"]: {
                k: (m["metrics"].get(k) or {}).get("mean")
                for k in ("share_of_oracle", "activation_precision", "pointing_game", "energy_pointing_game")
            }
            | {"images": m["images"]}
            for m in summaries
        }
        soft = figures["localization"].get("SoftCAM", {})
        ap = soft.get("activation_precision")
        step.summary = (
            f"test accuracy {res.classification.get('accuracy', float('nan')):.2f}; SoftCAM activation precision "
            f"{ap if ap is None else round(ap, 3)} on {soft.get('images', 0)} lesion volume(s)"
        )
        return res

    steps.run("data", "Generate synthetic CT volumes", make_data)
    steps.run("convert", "Convert a 3D MONAI DenseNet", do_convert)
    steps.run("finetune", "Fine-tune on the evidence volumes", do_finetune)
    steps.run("explain", "Explain test volumes", do_explain)
    steps.run("evaluate", "Evaluate against 3-D lesion masks", do_evaluate)
    figures.setdefault("device", device)
    return figures


def _write_report(out: Path, figures: dict[str, Any], steps: list[StepResult], force: bool) -> Path:
    from .. import report as R

    rows = [[s.title, s.summary, f"{s.seconds:.1f} s"] for s in steps]
    loc = figures.get("localization") or {}
    loc_rows = [
        [label, *[m.get(k) for k in ("share_of_oracle", "activation_precision", "pointing_game")], m.get("images")]
        for label, m in loc.items()
    ]
    pictures = []
    for e in figures.get("explain") or []:
        for cls, f in e["files"]["classes"].items():
            pictures.append(
                R.figure(
                    f'<a href="explain/{f["viewer"]}"><img src="explain/{f["triplanar"]}" width="600" '
                    f'alt="tri-planar evidence"></a>',
                    f"{Path(e['source']).name}: evidence for {cls} (click: slice viewer; "
                    f"NIfTI: explain/{f['evidence']})",
                )
            )
    page = R.html_page(
        "softcamify demo --3d",
        [
            R.section("Steps", R.table(["step", "result", "time"], rows)),
            R.section("Evidence volumes", *pictures),
            R.section(
                "Localisation of the true class (test lesion volumes)",
                R.table(["method", "share of oracle", "activation precision", "pointing game", "volumes"], loc_rows),
            ),
        ],
        subtitle="a volume model converted, fine-tuned and explained on synth3d",
    )
    path = out / "report.html"
    R.write_report(path, page, force=force)
    return path
