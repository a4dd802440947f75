""":func:`run_demo`: the demo's eight steps, one function each, sharing one :class:`_Run` (output folder,
settings, reporter, and what the steps record: :class:`StepResult` s, notes, figures).

Why this module is long: the demo's eight steps, one function each, in the order they run (settings, figures,
panels and the report live in their own modules); ruff format writes each argument on its own line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import OutputError
from ..report import format_fixed as _fmt
from .figures import classification_figures, comparison, finetune_figures, localization_figures, localization_methods
from .panels import write_panels
from .report import write_report
from .results import DemoReporter, DemoResult, StepResult, SweepProgress, grid_text, pick
from .settings import (
    DEFAULT,
    DEFAULT_OUT_DIR,
    DEMO_SEED,
    FAST,
    MARKER_KEY,
    MODEL_FILE,
    OUTPUTS,
    POINTING_TOLERANCE,
    REPORT_NAME,
    SUMMARY_NAME,
    DemoSettings,
    dataset_options,
    load_demo_model,
    make_demo_dataset,
    model_info,
    pick_images,
    picks_for_panels,
)

N_STEPS = 8


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------------------------------------
# The output folder
# --------------------------------------------------------------------------------------------------------


def _is_demo_dir(out: Path) -> bool:
    """True when ``out/demo.json`` was written by a demo (the marker every run writes first)."""
    try:
        data = json.loads((out / SUMMARY_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and MARKER_KEY in data


def _prepare_out_dir(out_dir: str | os.PathLike, force: bool) -> Path:
    """A new or empty OUT_DIR; with ``force`` the outputs of an earlier demo (and only those) are removed.

    Outputs are removed only from a folder an earlier demo marked (``demo.json``): a folder that holds, say,
    a ``data/`` of its own is refused rather than cleared.
    """
    from ..io import check_output_dir, make_output_dir, write_text_atomic

    out = check_output_dir(out_dir, force=force)
    if out.is_dir() and force:
        present = [name for name in OUTPUTS if (out / name).exists() or (out / name).is_symlink()]
        if present and not _is_demo_dir(out):
            raise OutputError(
                f"{out} holds {present[0]}, which no earlier demo wrote there (no demo.json); choose another out_dir.",
                param="out_dir",
            )
        for name in present:
            p = out / name
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            except OSError as e:
                raise OutputError(f"Cannot clear {p} for a new demo run ({e.strerror or e}).") from None
    make_output_dir(out)
    # the marker first: a run interrupted half-way can be replaced with force
    write_text_atomic(out / SUMMARY_NAME, json.dumps({MARKER_KEY: __version__, "status": "running"}) + "\n")
    return out


# --------------------------------------------------------------------------------------------------------
# The steps
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What the steps share: where they write, with which settings, and what they record."""

    out: Path
    st: DemoSettings
    dev: Any
    info: dict[str, Any]
    rep: DemoReporter
    steps: list[StepResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = self.out / "data"
        self.opts = dataset_options(self.info)
        self.classes: list[str] = self.opts["classes"]

    @contextlib.contextmanager
    def step(self, key: str, title: str) -> Iterator[StepResult]:
        s = StepResult(key, title)
        self.rep.step_start(s, len(self.steps) + 1, N_STEPS)
        t0 = time.perf_counter()
        yield s
        s.seconds = time.perf_counter() - t0
        self.steps.append(s)
        self.rep.step_end(s)

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.rep.note(message)


def _step_data(r: _Run) -> dict[str, Any]:
    """1. The synthetic lesion dataset; returns its manifest."""
    opts = r.opts
    with r.step("data", "Generate a synthetic lesion dataset") as s:
        manifest = make_demo_dataset(r.data_dir, n=r.st.images, seed=DEMO_SEED, info=r.info)
        n_split = {k: sum(v.values()) for k, v in manifest["counts"].items()}
        s.summary = (
            f"{manifest['n']} images at {opts['size']} px ({n_split['train']} train / "
            f"{n_split['val']} val / {n_split['test']} test), lesion masks in data/masks"
        )
        s.details = [
            ("classes", ", ".join(r.classes)),
            (
                "generator",
                f"make_lesions(seed={DEMO_SEED}, "
                f"contrast={opts['contrast']:g}, noise={opts['noise']:g}): the black box's training "
                "distribution",
            ),
        ]
    return manifest


def _step_inspect(r: _Run) -> Any:
    """2. Load the shipped black box and inspect its head; returns the loaded model."""
    from ..conversion import inspect

    with r.step("inspect", "Inspect the black box") as s:
        loaded = load_demo_model(r.info)
        with _quiet_warnings():
            ins = inspect(loaded).to_dict()
        kind = "exact" if ins["exact"] else "approximate"
        s.summary = (
            f"{ins['architecture']} ({ins['parameters']:,} parameters): {ins['head']} → strategy "
            f"{ins['strategy']} ({kind})"
        )
        s.details = [
            ("checkpoint", f"softcamify/assets/{MODEL_FILE.name} (a plain timm state dict)"),
            ("feature map", f"{'×'.join(str(v) for v in ins['feature_shape'])} ({ins['layout']})"),
            ("head", str(ins["head"])),
            ("pooling", str(ins["pooling"])),
            ("classifier", str(ins["classifier"])),
            ("strategy", f"{ins['strategy']} ({kind})"),
            (
                "evidence grid",
                f"{'×'.join(str(v) for v in ins['evidence_grid'])} at "
                f"{'×'.join(str(v) for v in ins['input_size'][1:])} px",
            ),
        ]
    return loaded


def _step_convert(r: _Run, loaded: Any) -> tuple[Any, Path, Any]:
    """3. Convert (exact), and again at the finer output stride (approximate); returns
    (converted, its file, the finer model the sweep fine-tunes)."""
    from ..checkpoints import save
    from ..conversion import convert

    with r.step("convert", "Convert to SoftCAM and verify") as s:
        with _quiet_warnings():
            converted = convert(loaded, calibration=r.data_dir / "val")
        (r.out / "models").mkdir(exist_ok=True)
        converted_path = r.out / "models" / "converted.safetensors"
        save(converted, converted_path)
        c = converted.meta.conversion
        r.figures["conversion"] = pick(
            c,
            (
                "exact",
                "strategy",
                "max_abs_diff",
                "max_rel_diff",
                "top1_agreement",
                "kl_divergence",
                "maps_mean_diff",
                "samples",
                "calibration_images",
                "atol",
                "passed",
            ),
        )
        s.summary = (
            f"max |Δlogit| {c['max_abs_diff']:.2g} (atol {c['atol']:g}) on {c['samples']} random + "
            f"{c['calibration_images']} real images, top-1 agreement {c['top1_agreement']:.0%} → "
            f"models/{converted_path.name}"
        )
        s.details = [
            ("strategy", f"{c['strategy']} ({'exact' if c['exact'] else 'approximate'})"),
            ("max |Δlogit|", f"{c['max_abs_diff']:.3g} (atol {c['atol']:g}: {'passed' if c['passed'] else 'FAILED'})"),
            ("max relative error", f"{c['max_rel_diff']:.3g}"),
            ("top-1 agreement", f"{c['top1_agreement']:.1%}"),
            ("KL divergence", f"{c['kl_divergence']:.2g}"),
            ("|mean(maps) − logits|", f"{c['maps_mean_diff']:.2g}"),
            ("verified on", f"{c['samples']} random + {c['calibration_images']} real images"),
        ]
        finer = converted
        stride = r.st.output_stride
        if stride not in (None, 32):
            with _quiet_warnings():
                finer = convert(loaded, calibration=r.data_dir / "val", output_stride=stride)
            finer_path = r.out / "models" / f"converted_os{stride}.safetensors"
            save(finer, finer_path)
            fc = finer.meta.conversion
            r.figures["conversion_finer"] = pick(
                fc,
                (
                    "output_stride",
                    "evidence_grid",
                    "original_grid",
                    "max_abs_diff",
                    "top1_agreement",
                    "kl_divergence",
                    "dilated_max_abs_diff",
                    "exact",
                ),
            )
            s.details.append(
                (
                    f"output stride {stride}",
                    f"{grid_text(fc['evidence_grid'])} grid (from "
                    f"{grid_text(fc['original_grid'])}), approximate: top-1 agreement "
                    f"{fc['top1_agreement']:.1%}, max |Δlogit| {fc['max_abs_diff']:.2g} vs the "
                    f"black box → models/{finer_path.name}",
                )
            )
    return converted, converted_path, finer


def _step_finetune(r: _Run, finer: Any) -> Any:
    """4. Sweep λ1 on the finer model; the recommended run (or the mildest) is the fine-tuned model."""
    from ..checkpoints import load
    from ..training import FinetuneConfig
    from ..training.sweep import sweep

    st = r.st
    with r.step("finetune", "Sweep λ1 and fine-tune with the ElasticNet penalty") as s:
        cfg = FinetuneConfig(
            epochs=st.epochs,
            batch_size=st.batch_size,
            lr=st.lr,
            l2=st.l2,
            device=str(r.dev),
            workers=st.workers,
            seed=0,
            monitor="val_loss",
            augment="light",
            warmup_epochs=0.0 if st.epochs < 2 else 0.5,
        )
        with _quiet_warnings():
            sw = sweep(
                finer,
                r.data_dir,
                r.out / "sweep",
                l1=list(st.l1),
                l2=[st.l2],
                config=cfg,
                tolerance=st.tolerance,
                reporter=SweepProgress(r.rep),
            )
        chosen = sw.recommended
        if chosen is None:  # no λ kept the accuracy: the mildest one, said plainly
            chosen = min(sw.runs, key=lambda run: (run.l1, run.l2))
            r.note(
                f"No λ1 of {list(st.l1)} kept the validation accuracy within {st.tolerance:g} of the "
                f"converted model's; the demo goes on with the mildest, λ1 = {chosen.l1:g}."
            )
        run_dir = Path(chosen.run_dir)
        (r.out / "finetune").mkdir(exist_ok=True)
        for name in ("best.safetensors", "metrics.jsonl", "summary.json"):
            shutil.copyfile(run_dir / name, r.out / "finetune" / name)
        tuned = load(r.out / "finetune" / "best.safetensors").float().eval()
        for n in sw.notes:
            r.note(n)
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        r.figures.update(finetune_figures(sw, chosen, summary, st))
        picked = "recommended" if sw.recommended is not None else "no λ1 qualified; the mildest"
        s.summary = (
            f"{len(sw.runs)} runs of {st.epochs} epoch(s) (λ1 {', '.join(f'{v:g}' for v in st.l1)}) "
            f"on {summary.get('device')}: λ1 = {chosen.l1:g} {picked} (val accuracy "
            f"{_fmt(chosen.accuracy)}, share of oracle {_fmt(chosen.share_of_oracle)}) → "
            "finetune/best.safetensors"
        )
        s.details = [
            (
                f"λ1 = {run.l1:g}",
                f"val accuracy {_fmt(run.accuracy)}, share of oracle "
                f"{_fmt(run.share_of_oracle)}, pointing {_fmt(run.pointing_game)}"
                + (" · recommended" if run.recommended else "")
                + ("" if run.qualified else " · below the accuracy floor"),
            )
            for run in sw.runs
        ]
    return tuned


def _step_export(r: _Run, tuned: Any) -> Any:
    """5. ONNX export, validated in onnxruntime; returns the fine-tuned model back on the CPU."""
    from ..exporters import export_onnx

    with r.step("export", "Export to ONNX and validate in onnxruntime") as s:
        r.rep.progress(0, None, "exporting and validating")
        with _quiet_warnings():
            ex = export_onnx(tuned, r.out / "model.onnx", exporter=r.st.exporter)
        tuned = tuned.to("cpu").float().eval()
        r.figures["export"] = {
            "exporter": ex.exporter,
            "opset": ex.opset,
            "dynamic_spatial": ex.dynamic_spatial,
            "max_abs_diff_logits": ex.max_abs_diff_logits,
            "max_abs_diff_evidence": ex.max_abs_diff_evidence,
            "atol": ex.atol,
            "file_size": ex.file_size,
            "checks": ex.checks,
        }
        s.summary = (
            f"model.onnx ({ex.file_size / 1e6:.1f} MB, {ex.exporter}, opset {ex.opset}): max |Δ| "
            f"logits {ex.max_abs_diff_logits:.2g}, evidence {ex.max_abs_diff_evidence:.2g} "
            "vs PyTorch"
        )
        s.details = [
            (
                f"batch {ck['batch']} at {'×'.join(str(v) for v in ck['size'])}",
                f"max |Δ| logits {ck['max_abs_diff_logits']:.2g}, evidence {ck['max_abs_diff_evidence']:.2g}",
            )
            for ck in ex.checks
        ]
    return tuned


def _step_explain(r: _Run, manifest: dict[str, Any]) -> list[Any]:
    """6. Evidence maps of every class for a few test images, from model.onnx (onnxruntime, no torch)."""
    from ..explanations import explain

    with r.step("explain", "Explain test images with the ONNX model") as s:
        per_class = max(1, -(-r.st.explain_images // len(r.classes)))
        picks = pick_images(manifest["images"], "test", per_class, r.classes)[: r.st.explain_images]
        paths = [r.data_dir / it["path"] for it in picks]
        exps = explain(
            r.out / "model.onnx",
            paths,
            r.out / "explain",
            classes="all",
            title="softcamify demo: evidence maps from model.onnx (onnxruntime)",
            progress=lambda d, t: r.rep.progress(d, t, "images"),
        )
        right = sum(e.predicted_class == it["class"] for e, it in zip(exps, picks, strict=True))
        s.summary = (
            f"{len(exps)} test images, maps of all {len(r.classes)} classes from one onnxruntime "
            f"pass ({right}/{len(exps)} predicted correctly) → explain/index.html"
        )
    return exps


def _has_gradcam() -> bool:
    try:
        import pytorch_grad_cam  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return False
    return True


def _step_evaluate(r: _Run, converted: Any, tuned: Any, loaded: Any):
    """7. Accuracy of the black box, converted and fine-tuned; localization against Grad-CAM.
    Returns (baselines, localization methods)."""
    import torch

    from ..evaluation import evaluate

    with r.step("evaluate", "Evaluate: accuracy and localization vs Grad-CAM") as s:
        baselines = ["gradcam"] if _has_gradcam() else []
        if not baselines:
            r.note(
                "pytorch-grad-cam is not installed, so there is no Grad-CAM comparison; "
                "install it with pip install 'softcamify[baselines]' and rerun."
            )
        # pointing game with Zhang et al.'s 15 px tolerance (about half a cell of the black box's 5 × 5 grid);
        # share of oracle on ONE grid for every method: the fine-tuned model's (the finest)
        with torch.no_grad():
            grid = tuple(
                int(v) for v in tuned.forward_features(torch.zeros(1, *tuned.meta.data_config["input_size"])).shape[2:]
            )
        common = {
            "split": "test",
            "steps": r.st.eval_steps,
            "max_images": r.st.eval_max_images,
            "pointing_tolerance": POINTING_TOLERANCE,
            "batch_size": 16,
            "device": r.dev,
            "oracle_grid": grid,
        }
        with _quiet_warnings():
            before = evaluate(
                converted,
                r.data_dir,
                original=loaded.module,
                examples=0,
                progress=lambda stage, d, t: r.rep.progress(d, t, f"converted model: {stage}"),
                **common,
            )
            after = evaluate(
                tuned,
                r.data_dir,
                baselines=baselines,
                original=loaded.module,
                out_dir=r.out / "evaluate",
                examples=6,
                progress=lambda stage, d, t: r.rep.progress(d, t, f"fine-tuned model: {stage}"),
                **common,
            )
        tuned.to("cpu").eval()
        loaded.module.to("cpu")
        f = r.figures
        f["classification"] = classification_figures(before, after)
        loc_methods = localization_methods(before, after)
        f["localization"] = localization_figures(loc_methods)
        f["evaluation_settings"] = pick(
            after.settings,
            ("input_size", "evidence_grid", "oracle_grid", "patch_size", "patch_stride", "topk", "steps"),
        )
        f["comparison"] = comparison(f)
        cls, loc = f["classification"], f["localization"]
        s.summary = (
            f"accuracy on {cls['test_images']} test images: black box "
            f"{_fmt(cls['black_box']['accuracy'])}, converted {_fmt(cls['converted']['accuracy'])}, "
            f"fine-tuned {_fmt(cls['fine_tuned']['accuracy'])} → evaluate/index.html"
        )
        for label in loc:
            s.details.append(
                (
                    label,
                    f"activation precision {_fmt(loc[label].get('activation_precision'))}, "
                    f"pointing game {_fmt(loc[label].get('pointing_game'))}, "
                    f"share of oracle {_fmt(loc[label].get('share_of_oracle'))}, "
                    f"top-k precision {_fmt(loc[label].get('topk_precision'))}",
                )
            )
        if f["comparison"]:
            s.details.append(("SoftCAM vs Grad-CAM", f["comparison"]["text"]))
    return baselines, loc_methods


def _step_report(
    r: _Run, fast: bool, manifest: dict[str, Any], converted_path: Path, tuned: Any, loaded: Any, baselines: list[str]
) -> tuple[DemoResult, str | None]:
    """8. The figure (figures/panel.png) and the run's :class:`DemoResult` (the page is written after it)."""
    out, st = r.out, r.st
    with r.step("report", "Write the HTML report") as s:
        panel_rel = write_panels(
            out, picks_for_panels(manifest, r.classes, st.panels), tuned, loaded, r.data_dir, baselines
        )
        files = {
            "report": str(out / REPORT_NAME),
            "dataset": str(r.data_dir),
            "converted": str(converted_path),
            "fine_tuned": str(out / "finetune" / "best.safetensors"),
            "onnx": str(out / "model.onnx"),
            "explain": str(out / "explain" / "index.html"),
            "evaluate": str(out / "evaluate" / "index.html"),
            "figure": str(out / "figures" / "overview.png") if panel_rel else "",
        }
        settings = {
            **asdict(st),
            "fast": fast,
            "seed": DEMO_SEED,
            "dataset": r.opts,
            "model": pick(r.info, ("architecture", "test_accuracy", "dataset")),
        }
        result = DemoResult(
            out_dir=str(out),
            report=str(out / REPORT_NAME),
            device=str(r.dev),
            seconds=0.0,
            steps=r.steps,
            figures=r.figures,
            files=files,
            settings=settings,
            notes=r.notes,
        )
        s.summary = f"{REPORT_NAME} (overlays, metric tables, the fine-tuning curve)"
    return result, panel_rel


# --------------------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------------------


def run_demo(
    out_dir: str | os.PathLike = DEFAULT_OUT_DIR,
    *,
    fast: bool = False,
    device: str = "auto",
    force: bool = False,
    reporter: DemoReporter | None = None,
    settings: DemoSettings | None = None,
) -> DemoResult:
    """Run the whole pipeline on the shipped black box and a generated dataset; write ``OUT_DIR/report.html``.

    Args:
        out_dir: Output folder (new or empty; ``force`` replaces the outputs of an earlier demo there).
        fast: Tiny sizes (a few dozen images, one epoch) for tests.
        device: ``auto`` (a GPU when there is one), ``cpu``, ``cuda``, ``cuda:N``.
        reporter: Receives progress (:class:`DemoReporter`); silent when None.
        settings: Overrides :data:`DEFAULT` / :data:`FAST`.

    Returns a :class:`DemoResult` (also written as ``OUT_DIR/demo.json``).
    """
    from ..device import resolve_device
    from ..io import write_text_atomic

    t_all = time.perf_counter()
    rep = reporter or DemoReporter()
    st = settings or (FAST if fast else DEFAULT)
    dev = resolve_device(device)
    info = model_info()
    out = _prepare_out_dir(out_dir, force)
    r = _Run(out=out, st=st, dev=dev, info=info, rep=rep)

    manifest = _step_data(r)
    loaded = _step_inspect(r)
    converted, converted_path, finer = _step_convert(r, loaded)
    tuned = _step_finetune(r, finer)
    tuned = _step_export(r, tuned)
    exps = _step_explain(r, manifest)
    baselines, loc_methods = _step_evaluate(r, converted, tuned, loaded)
    result, panel_rel = _step_report(r, fast, manifest, converted_path, tuned, loaded, baselines)

    result.seconds = time.perf_counter() - t_all
    write_report(out, result, info, exps, loc_methods, panel_rel)
    write_text_atomic(out / SUMMARY_NAME, json.dumps(result.to_dict(), indent=2) + "\n", force=True)
    return result
