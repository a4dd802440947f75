"""The end-to-end demo behind ``softcamify demo`` (and ``make demo``): the whole promise in a few minutes.

:func:`run_demo` takes the small black-box classifier shipped with softcamify (an ordinary timm
``test_resnet`` state dict in ``softcamify/assets/``, trained by ``scripts/train_demo_model.py`` on the
synthetic lesion dataset) through every step a user would take with their own checkpoint::

    1. data       generate a synthetic fundus-like lesion dataset with masks (the training distribution)
    2. inspect    find the black box's pooling + classifier and the conversion strategy
    3. convert    pooling + classifier -> 1×1 evidence conv, verified against the black box (max |Δlogit|);
                  again with ``output_stride=8`` (dilated last stages: a 4× finer evidence grid, approximate)
    4. sweep      short fine-tunes over a few λ1 values of the normalized L1 penalty on the finer model, scored
                  on the validation split; the λ1 ``softcamify sweep`` recommends is the fine-tuned model
    5. export     ONNX with `logits` and `evidence` outputs, validated in onnxruntime
    6. explain    evidence maps of every class for a few test images, from the ONNX file (no torch)
    7. evaluate   accuracy of the black box and of SoftCAM side by side; localization against the lesion
                  masks for SoftCAM and for Grad-CAM on the black box and on SoftCAM, on one scale (share of the
                  grid oracle, on the finest grid), with SoftCAM's difference to Grad-CAM stated plainly
    8. report     one HTML page (overlays, metric tables, the fine-tuning curve) in OUT_DIR/report.html

Nothing is downloaded; a GPU is used when there is one (``device="auto"``). ``fast=True`` shrinks every
step (a few dozen images, one epoch) for tests.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ._version import __version__
from .errors import InputError, OutputError
from .report import format_fixed as _fmt

__all__ = [
    "ASSETS",
    "DEFAULT_OUT_DIR",
    "DEMO_SEED",
    "DemoReporter",
    "DemoResult",
    "DemoSettings",
    "StepResult",
    "dataset_options",
    "load_demo_model",
    "make_demo_dataset",
    "model_info",
    "run_demo",
    "update_docs_figure",
]

ASSETS = Path(__file__).resolve().parent / "assets"
MODEL_FILE = ASSETS / "demo_model.safetensors"
INFO_FILE = ASSETS / "demo_model.json"
DEFAULT_OUT_DIR = "softcamify-demo"
#: Seed of the demo's dataset: the training distribution (same generator settings), other images.
DEMO_SEED = 2024
REPORT_NAME = "report.html"
SUMMARY_NAME = "demo.json"
POINTING_TOLERANCE = 15  # px, the pointing game's tolerance in the demo's evaluation (Zhang et al. 2018)
MARKER_KEY = "softcamify_demo"  # in demo.json: the folder holds a demo's outputs (--force may replace them)
#: What a demo writes into OUT_DIR (``--force`` removes exactly these before a new run).
OUTPUTS = ("data", "models", "sweep", "finetune", "explain", "evaluate", "figures", "model.onnx", REPORT_NAME, SUMMARY_NAME)


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run (:data:`DEFAULT` or :data:`FAST`)."""

    images: int  # generated images (60/20/20 train/val/test, balanced)
    epochs: int  # fine-tuning epochs of each sweep run
    batch_size: int
    lr: float  # AdamW
    l1: tuple[float, ...]  # λ1 values the sweep tries (the normalized penalty of docs/method.md)
    l2: float
    explain_images: int  # test images explained (from the ONNX export)
    eval_steps: int  # deletion / insertion steps
    eval_max_images: int | None  # explanation metrics on at most this many annotated test images
    panels: int  # lesion images in the report's image | SoftCAM | Grad-CAM figure
    workers: int | None  # DataLoader processes for fine-tuning (None: softcamify's default)
    exporter: str = "auto"  # ONNX exporter (auto: torch's dynamo exporter, TorchScript as fallback)
    output_stride: int | None = 8  # the fine-tuned model's evidence grid (None or 32: the black box's own)
    tolerance: float = 0.01  # the sweep's rule: accuracy a λ may cost against the converted model


DEFAULT = DemoSettings(images=600, epochs=4, batch_size=16, lr=2e-4, l1=(0.5, 2.0, 5.0), l2=0.0, explain_images=6,
                       eval_steps=20, eval_max_images=None, panels=4, workers=None)
FAST = DemoSettings(images=30, epochs=1, batch_size=8, lr=2e-4, l1=(0.5, 2.0), l2=0.0, explain_images=3,
                    eval_steps=4, eval_max_images=4, panels=2, workers=0)


# --------------------------------------------------------------------------------------------------------
# The shipped black box
# --------------------------------------------------------------------------------------------------------


def model_info() -> dict[str, Any]:
    """``softcamify/assets/demo_model.json``: architecture, classes, data config, dataset, accuracy."""
    try:
        return json.loads(INFO_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"The demo model's description {INFO_FILE} cannot be read ({e}); reinstall softcamify.") from None


def dataset_options(info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The generator settings the black box was trained with (``make_lesions`` keyword arguments)."""
    from .datasets import DEFAULT_CLASSES

    d = dict((info or model_info())["dataset"])
    return {"size": int(d["size"]), "classes": list(d.get("classes") or DEFAULT_CLASSES),
            "contrast": float(d.get("contrast", 1.0)),
            "noise": float(d.get("noise", 1.0))}


def make_demo_dataset(out_dir: str | os.PathLike, n: int, seed: int = DEMO_SEED, force: bool = False,
                      info: dict[str, Any] | None = None) -> dict[str, Any]:
    """A synthetic lesion dataset from the black box's training distribution (same generator settings)."""
    from .datasets import make_lesions

    return make_lesions(out_dir, n=n, seed=seed, force=force, **dataset_options(info))


def load_demo_model(info: dict[str, Any] | None = None):
    """The shipped black box as a :class:`~softcamify.checkpoints.LoadedModel`: an ordinary timm state dict
    loaded by name + ``--weights``, exactly as a user's checkpoint, with its data config and class names."""
    import timm

    from .checkpoints import load_model

    info = info or model_info()
    if not MODEL_FILE.is_file():
        raise InputError(f"The demo model {MODEL_FILE} is missing; reinstall softcamify.")
    if not timm.is_model(info["architecture"]):
        raise InputError(f"The demo model is timm's {info['architecture']}, which timm {timm.__version__} does not "
                         "have; upgrade timm (pip install -U timm).")
    cfg = dict(info["data_config"])
    size = tuple(int(v) for v in cfg["input_size"][1:])
    loaded = load_model(info["architecture"], weights=MODEL_FILE, input_size=size)  # type: ignore[arg-type]
    loaded.data_config = {**loaded.data_config, **cfg}
    loaded.class_names = list(info["class_names"])
    loaded.notes = [n for n in loaded.notes if "random weights" not in n]
    return loaded


# --------------------------------------------------------------------------------------------------------
# Progress and results
# --------------------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    """One step of the demo: what it did (``summary``), key figures (``details``), how long it took."""

    key: str
    title: str
    seconds: float = 0.0
    summary: str = ""
    details: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["details"] = {k: v for k, v in self.details}
        return d


class DemoReporter:
    """Receives the demo's progress; the base class ignores it (the CLI shows rich progress and tables)."""

    def step_start(self, step: StepResult, index: int, count: int) -> None:
        pass

    def progress(self, done: int, total: int | None, text: str = "") -> None:
        pass

    def step_end(self, step: StepResult) -> None:
        pass

    def note(self, message: str) -> None:
        pass


@dataclass
class DemoResult:
    """What :func:`run_demo` returns; ``to_dict()`` is the ``--json`` output (also ``OUT_DIR/demo.json``)."""

    out_dir: str
    report: str
    device: str
    seconds: float
    steps: list[StepResult]
    figures: dict[str, Any]
    files: dict[str, str]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from .metrics import json_safe

        return json_safe({
            MARKER_KEY: __version__, "status": "done", "out_dir": self.out_dir, "report": self.report, "device": self.device, "seconds": self.seconds,
            "steps": [s.to_dict() for s in self.steps], "figures": self.figures, "files": self.files,
            "settings": self.settings, "notes": self.notes,
        })


class _SweepProgress:
    """Forwards the λ sweep's progress (softcamify.sweep.SweepReporter protocol) to the demo reporter."""

    def __init__(self, rep: DemoReporter):
        self.rep = rep
        self.index = self.total = 0
        self.tag = ""

    def start(self, info: dict[str, Any]) -> None:
        pass

    def note(self, message: str) -> None:
        self.rep.note(message)

    def reference(self, entry: dict[str, Any]) -> None:
        pass

    def run_start(self, tag: str, device: str, index: int, total: int) -> None:
        self.index, self.total, self.tag = index - 1, total, tag  # index counts from 1
        self.rep.progress(index - 1, total, f"run {index}/{total}: {tag}")

    def epoch_end(self, tag: str, record: dict[str, Any]) -> None:
        v = record["val"]
        self.rep.progress(self.index, self.total,
                          f"run {self.index + 1}/{self.total}: {tag} · epoch {record['epoch']} · "
                          f"val acc {v.get('accuracy', float('nan')):.2f}")

    def run_end(self, run: Any) -> None:
        self.rep.progress(self.index + 1, self.total, f"run {self.index + 1}/{self.total}: {run.tag} done")

    def end(self, result: Any) -> None:
        pass


def _grid(g: Any) -> str:
    return "×".join(str(int(v)) for v in g or [])


# --------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _label_width(labels: list[str], font: Any, pad: int = 8) -> int:
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return max((int(probe.textlength(line, font=font)) for lb in labels for line in lb.split("\n")), default=0) + 2 * pad


def _titled(tiles: list[Image.Image], titles: list[str], row_label: str = "", label_w: int = 0,
            tile: int = 224) -> Image.Image:
    """One row: tiles side by side, each with a title above, and a label (``label_w`` px wide) on the left."""
    font = _font(15)
    pad, title_h, line_h = 8, 24, 20
    w = label_w + len(tiles) * (tile + pad) + pad
    h = title_h + tile + pad
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    lines = row_label.split("\n") if row_label else []
    y0 = title_h + (tile - len(lines) * line_h) // 2
    for i, line in enumerate(lines):
        draw.text((pad, y0 + line_h * i), line, fill=(30, 30, 30), font=_font(15 if i else 16))
    for i, (img, title) in enumerate(zip(tiles, titles, strict=True)):
        x = label_w + pad + i * (tile + pad)
        canvas.paste(img.convert("RGB").resize((tile, tile), Image.Resampling.BICUBIC), (x, title_h))
        tw = draw.textlength(title, font=font)
        draw.text((x + max(0, (tile - tw) / 2), 4), title, fill=(20, 20, 20), font=font)
    return canvas


def _stack(rows: list[Image.Image], footer: str | None = None) -> Image.Image:
    font = _font(13)
    foot_h = 22 if footer else 0
    w = max(r.width for r in rows)
    canvas = Image.new("RGB", (w, sum(r.height for r in rows) + foot_h), (255, 255, 255))
    y = 0
    for r in rows:
        canvas.paste(r, (0, y))
        y += r.height
    if footer:
        ImageDraw.Draw(canvas).text((8, y + 3), footer, fill=(90, 90, 90), font=font)
    return canvas


# --------------------------------------------------------------------------------------------------------
# The demo
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
    from .io import check_output_dir, make_output_dir, write_text_atomic

    out = check_output_dir(out_dir, force=force)
    if out.is_dir() and force:
        present = [name for name in OUTPUTS if (out / name).exists() or (out / name).is_symlink()]
        if present and not _is_demo_dir(out):
            raise OutputError(f"{out} holds {present[0]}, which no earlier demo wrote there (no demo.json); "
                              "choose another --output folder.")
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
    # the marker first: a run interrupted half-way can be replaced with --force
    write_text_atomic(out / SUMMARY_NAME, json.dumps({MARKER_KEY: __version__, "status": "running"}) + "\n")
    return out


def _has_gradcam() -> bool:
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        return False
    return True


def _pick(items: list[dict[str, Any]], split: str, per_class: int, classes: list[str], lesions_only: bool = False):
    """The first ``per_class`` images of each class of ``split`` (manifest order), interleaved by class."""
    by_class: dict[str, list[dict[str, Any]]] = {c: [] for c in classes}
    for it in items:
        if it["split"] == split and it["class"] in by_class and (not lesions_only or it["lesions"]):
            by_class[it["class"]].append(it)
    out = []
    for j in range(per_class):
        for c in classes:
            if j < len(by_class[c]):
                out.append(by_class[c][j])
    return out


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
    import torch

    from .checkpoints import load, save
    from .conversion import convert, inspect
    from .device import resolve_device
    from .evaluation import evaluate
    from .heatmaps import explain
    from .onnx_export import export_onnx
    from .sweep import sweep
    from .training import FinetuneConfig

    t_all = time.perf_counter()
    rep = reporter or DemoReporter()
    st = settings or (FAST if fast else DEFAULT)
    dev = resolve_device(device)
    info = model_info()
    out = _prepare_out_dir(out_dir, force)
    steps: list[StepResult] = []
    notes: list[str] = []
    figures: dict[str, Any] = {}
    n_steps = 8

    @contextlib.contextmanager
    def step(key: str, title: str) -> Iterator[StepResult]:
        s = StepResult(key, title)
        rep.step_start(s, len(steps) + 1, n_steps)
        t0 = time.perf_counter()
        yield s
        s.seconds = time.perf_counter() - t0
        steps.append(s)
        rep.step_end(s)

    def note(message: str) -> None:
        notes.append(message)
        rep.note(message)

    data_dir = out / "data"
    opts = dataset_options(info)
    classes = opts["classes"]

    # 1. data ------------------------------------------------------------------------------------------
    with step("data", "Generate a synthetic lesion dataset") as s:
        manifest = make_demo_dataset(data_dir, n=st.images, seed=DEMO_SEED, info=info)
        counts = manifest["counts"]
        n_split = {k: sum(v.values()) for k, v in counts.items()}
        s.summary = (f"{manifest['n']} images at {opts['size']} px ({n_split['train']} train / {n_split['val']} val / "
                     f"{n_split['test']} test), lesion masks in data/masks")
        s.details = [("classes", ", ".join(classes)), ("generator", f"make_lesions(seed={DEMO_SEED}, "
                     f"contrast={opts['contrast']:g}, noise={opts['noise']:g}): the black box's training distribution")]

    # 2. inspect ---------------------------------------------------------------------------------------
    with step("inspect", "Inspect the black box") as s:
        loaded = load_demo_model(info)
        with _quiet_warnings():
            ins = inspect(loaded).to_dict()
        s.summary = (f"{ins['architecture']} ({ins['parameters']:,} parameters): {ins['head']} → strategy "
                     f"{ins['strategy']} ({'exact' if ins['exact'] else 'approximate'})")
        s.details = [
            ("checkpoint", f"softcamify/assets/{MODEL_FILE.name} (a plain timm state dict)"),
            ("feature map", f"{'×'.join(str(v) for v in ins['feature_shape'])} ({ins['layout']})"),
            ("head", str(ins["head"])),
            ("pooling", str(ins["pooling"])),
            ("classifier", str(ins["classifier"])),
            ("strategy", f"{ins['strategy']} ({'exact' if ins['exact'] else 'approximate'})"),
            ("evidence grid", f"{'×'.join(str(v) for v in ins['evidence_grid'])} at "
                              f"{'×'.join(str(v) for v in ins['input_size'][1:])} px"),
        ]

    # 3. convert ---------------------------------------------------------------------------------------
    with step("convert", "Convert to SoftCAM and verify") as s:
        with _quiet_warnings():
            converted = convert(loaded, calibration=data_dir / "val")
        (out / "models").mkdir(exist_ok=True)
        converted_path = out / "models" / "converted.safetensors"
        save(converted, converted_path)
        c = converted.meta.conversion
        figures["conversion"] = {k: c.get(k) for k in ("exact", "strategy", "max_abs_diff", "max_rel_diff",
                                                        "top1_agreement", "kl_divergence", "maps_mean_diff", "samples",
                                                        "calibration_images", "atol", "passed")}
        s.summary = (f"max |Δlogit| {c['max_abs_diff']:.2g} (atol {c['atol']:g}) on {c['samples']} random + "
                     f"{c['calibration_images']} real images, top-1 agreement {c['top1_agreement']:.0%} → "
                     f"models/{converted_path.name}")
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
        if st.output_stride not in (None, 32):
            with _quiet_warnings():
                finer = convert(loaded, calibration=data_dir / "val", output_stride=st.output_stride)
            finer_path = out / "models" / f"converted_os{st.output_stride}.safetensors"
            save(finer, finer_path)
            fc = finer.meta.conversion
            figures["conversion_finer"] = {k: fc.get(k) for k in (
                "output_stride", "evidence_grid", "original_grid", "max_abs_diff", "top1_agreement", "kl_divergence",
                "dilated_max_abs_diff", "exact")}
            s.details.append((f"output stride {st.output_stride}",
                              f"{_grid(fc['evidence_grid'])} grid (from {_grid(fc['original_grid'])}), approximate: "
                              f"top-1 agreement {fc['top1_agreement']:.1%}, max |Δlogit| {fc['max_abs_diff']:.2g} vs "
                              f"the black box → models/{finer_path.name}"))

    # 4. sweep + finetune -----------------------------------------------------------------------------
    with step("finetune", "Sweep λ1 and fine-tune with the ElasticNet penalty") as s:
        cfg = FinetuneConfig(epochs=st.epochs, batch_size=st.batch_size, lr=st.lr, l2=st.l2,
                             device=str(dev), workers=st.workers, seed=0, monitor="val_loss", augment="light",
                             warmup_epochs=0.0 if st.epochs < 2 else 0.5)
        with _quiet_warnings():
            sw = sweep(finer, data_dir, out / "sweep", l1=list(st.l1), l2=[st.l2], config=cfg,
                       tolerance=st.tolerance, reporter=_SweepProgress(rep))
        chosen = sw.recommended
        if chosen is None:  # no λ kept the accuracy: the mildest one, said plainly
            chosen = min(sw.runs, key=lambda r: (r.l1, r.l2))
            note(f"No λ1 of {list(st.l1)} kept the validation accuracy within {st.tolerance:g} of the converted "
                 f"model's; the demo goes on with the mildest, λ1 = {chosen.l1:g}.")
        run_dir = Path(chosen.run_dir)
        (out / "finetune").mkdir(exist_ok=True)
        for name in ("best.safetensors", "metrics.jsonl", "summary.json"):
            shutil.copyfile(run_dir / name, out / "finetune" / name)
        tuned = load(out / "finetune" / "best.safetensors").float().eval()
        for n in sw.notes:
            note(n)
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        hist = summary.get("history") or []
        figures["sweep"] = {
            "rule": sw.rule, "tolerance": sw.tolerance, "localization": sw.localization,
            "reference": sw.reference, "recommended_l1": sw.recommended.l1 if sw.recommended else None,
            "runs": [{k: r.get(k) for k in ("l1", "l2", "accuracy", "share_of_oracle", "activation_precision",
                                             "pointing_game", "sparsity", "qualified", "recommended")} for r in sw.runs],
        }
        figures["finetune"] = {
            "epochs": summary.get("epochs_completed"), "best_epoch": summary.get("best_epoch"), "l1": chosen.l1,
            "l2": st.l2, "lr": st.lr, "batch_size": st.batch_size, "device": summary.get("device"),
            "train_images_per_s": summary.get("train_images_per_s"), "logit_scale": summary.get("logit_scale"),
            "history": [{"epoch": h["epoch"], "train_loss": h["train"]["loss"], "train_ce": h["train"]["ce"],
                         "train_l1": h["train"]["l1"], "train_accuracy": h["train"]["accuracy"],
                         "val_loss": h["val"].get("loss"), "val_accuracy": h["val"].get("accuracy"),
                         "val_sparsity": h["val"].get("sparsity"), "val_map_l1": h["val"].get("map_l1")}
                        for h in hist],
        }
        picked = "recommended" if sw.recommended is not None else "no λ1 qualified; the mildest"
        s.summary = (f"{len(sw.runs)} runs of {st.epochs} epoch(s) (λ1 {', '.join(f'{v:g}' for v in st.l1)}) on "
                     f"{summary.get('device')}: λ1 = {chosen.l1:g} {picked} (val accuracy {_fmt(chosen.accuracy)}, "
                     f"share of oracle {_fmt(chosen.share_of_oracle)}) → finetune/best.safetensors")
        s.details = [(f"λ1 = {r.l1:g}", f"val accuracy {_fmt(r.accuracy)}, share of oracle {_fmt(r.share_of_oracle)}, "
                                        f"pointing {_fmt(r.pointing_game)}"
                                        + (" · recommended" if r.recommended else "")
                                        + ("" if r.qualified else " · below the accuracy floor"))
                     for r in sw.runs]

    # 5. export ----------------------------------------------------------------------------------------
    with step("export", "Export to ONNX and validate in onnxruntime") as s:
        rep.progress(0, None, "exporting and validating")
        with _quiet_warnings():
            ex = export_onnx(tuned, out / "model.onnx", exporter=st.exporter)
        tuned = tuned.to("cpu").float().eval()
        figures["export"] = {"exporter": ex.exporter, "opset": ex.opset, "dynamic_spatial": ex.dynamic_spatial,
                             "max_abs_diff_logits": ex.max_abs_diff_logits,
                             "max_abs_diff_evidence": ex.max_abs_diff_evidence, "atol": ex.atol,
                             "file_size": ex.file_size, "checks": ex.checks}
        s.summary = (f"model.onnx ({ex.file_size / 1e6:.1f} MB, {ex.exporter}, opset {ex.opset}): max |Δ| logits "
                     f"{ex.max_abs_diff_logits:.2g}, evidence {ex.max_abs_diff_evidence:.2g} vs PyTorch")
        s.details = [(f"batch {ck['batch']} at {'×'.join(str(v) for v in ck['size'])}",
                      f"max |Δ| logits {ck['max_abs_diff_logits']:.2g}, evidence {ck['max_abs_diff_evidence']:.2g}")
                     for ck in ex.checks]

    # 6. explain ---------------------------------------------------------------------------------------
    with step("explain", "Explain test images with the ONNX model") as s:
        per_class = max(1, -(-st.explain_images // len(classes)))
        picks = _pick(manifest["images"], "test", per_class, classes)[: st.explain_images]
        paths = [data_dir / it["path"] for it in picks]
        exps = explain(out / "model.onnx", paths, out / "explain", classes="all",
                       title="softcamify demo: evidence maps from model.onnx (onnxruntime)",
                       progress=lambda d, t: rep.progress(d, t, "images"))
        right = sum(e.predicted_class == it["class"] for e, it in zip(exps, picks, strict=True))
        s.summary = (f"{len(exps)} test images, maps of all {len(classes)} classes from one onnxruntime pass "
                     f"({right}/{len(exps)} predicted correctly) → explain/index.html")

    # 7. evaluate --------------------------------------------------------------------------------------
    with step("evaluate", "Evaluate: accuracy and localization vs Grad-CAM") as s:
        baselines = ["gradcam"] if _has_gradcam() else []
        if not baselines:
            note("pytorch-grad-cam is not installed, so there is no Grad-CAM comparison; "
                 "install it with pip install 'softcamify[baselines]' and rerun.")
        # pointing game with Zhang et al.'s 15 px tolerance (about half a cell of the black box's 5 × 5 grid);
        # share of oracle on ONE grid for every method: the fine-tuned model's (the finest)
        with torch.no_grad():
            grid = tuple(int(v) for v in tuned.forward_features(
                torch.zeros(1, *tuned.meta.data_config["input_size"])).shape[2:])
        common = {"split": "test", "steps": st.eval_steps, "max_images": st.eval_max_images,
                  "pointing_tolerance": POINTING_TOLERANCE, "batch_size": 16, "device": dev, "oracle_grid": grid}
        with _quiet_warnings():
            before = evaluate(converted, data_dir, original=loaded.module, examples=0,
                              progress=lambda stage, d, t: rep.progress(d, t, f"converted model: {stage}"), **common)
            after = evaluate(tuned, data_dir, baselines=baselines, original=loaded.module, out_dir=out / "evaluate",
                             examples=6, progress=lambda stage, d, t: rep.progress(d, t, f"fine-tuned model: {stage}"),
                             **common)
        tuned = tuned.to("cpu").eval()
        loaded.module.to("cpu")
        keys = ("accuracy", "balanced_accuracy", "roc_auc")
        bb = after.original_classification or {}
        figures["classification"] = {
            "test_images": after.counts["images"],
            "black_box": {k: bb.get(k) for k in keys},
            "converted": {k: before.classification.get(k) for k in keys},
            "fine_tuned": {k: after.classification.get(k) for k in keys},
        }
        loc_methods = _localization_methods(before, after)
        figures["localization"] = {
            label: {"images": m["images"], **{k: v.get("mean") for k, v in m["metrics"].items()}}
            for label, m in loc_methods
        }
        figures["evaluation_settings"] = {k: after.settings.get(k) for k in ("input_size", "evidence_grid", "oracle_grid",
                                                                            "patch_size", "patch_stride", "topk", "steps")}
        figures["comparison"] = _comparison(figures)
        cls = figures["classification"]
        s.summary = (f"accuracy on {cls['test_images']} test images: black box {_fmt(cls['black_box']['accuracy'])}, "
                     f"converted {_fmt(cls['converted']['accuracy'])}, fine-tuned {_fmt(cls['fine_tuned']['accuracy'])}"
                     " → evaluate/index.html")
        loc = figures["localization"]
        for label in loc:
            s.details.append((label, f"activation precision {_fmt(loc[label].get('activation_precision'))}, "
                                     f"pointing game {_fmt(loc[label].get('pointing_game'))}, "
                                     f"share of oracle {_fmt(loc[label].get('share_of_oracle'))}, "
                                     f"top-k precision {_fmt(loc[label].get('topk_precision'))}"))
        if figures["comparison"]:
            s.details.append(("SoftCAM vs Grad-CAM", figures["comparison"]["text"]))

    # 8. report ----------------------------------------------------------------------------------------
    with step("report", "Write the HTML report") as s:
        panel_rel = _write_panels(out, manifest, picks_for_panels(manifest, classes, st.panels), tuned,
                                  loaded, data_dir, baselines)
        files = {"report": str(out / REPORT_NAME), "dataset": str(data_dir), "converted": str(converted_path),
                 "fine_tuned": str(out / "finetune" / "best.safetensors"), "onnx": str(out / "model.onnx"),
                 "explain": str(out / "explain" / "index.html"), "evaluate": str(out / "evaluate" / "index.html"),
                 "figure": str(out / "figures" / "overview.png") if panel_rel else ""}
        result = DemoResult(out_dir=str(out), report=str(out / REPORT_NAME), device=str(dev), seconds=0.0,
                            steps=steps, figures=figures, files=files,
                            settings={**asdict(st), "fast": fast, "seed": DEMO_SEED, "dataset": opts,
                                      "model": {k: info.get(k) for k in ("architecture", "test_accuracy", "dataset")}},
                            notes=notes)
        s.summary = f"{REPORT_NAME} (overlays, metric tables, the fine-tuning curve)"
    result.seconds = time.perf_counter() - t_all
    _write_report(out, result, info, exps, loc_methods, panel_rel)
    from .io import write_text_atomic

    write_text_atomic(out / SUMMARY_NAME, json.dumps(result.to_dict(), indent=2) + "\n", force=True)
    return result


def _comparison(figures: dict[str, Any]) -> dict[str, Any] | None:
    """The fine-tuned SoftCAM against Grad-CAM on the black box, in figures and one plain sentence."""
    loc = figures.get("localization") or {}
    soft, gc = loc.get("SoftCAM (fine-tuned)"), loc.get("Grad-CAM (black box)")
    if not soft or not gc:
        return None
    cls = figures["classification"]
    d = {key: (soft.get(key) or 0.0) - (gc.get(key) or 0.0) for key in ("share_of_oracle", "pointing_game",
                                                                        "activation_precision")}
    d_acc = (cls["fine_tuned"].get("accuracy") or 0.0) - (cls["black_box"].get("accuracy") or 0.0)
    better = d["share_of_oracle"] > 0 and d["pointing_game"] >= 0
    verdict = "localizes the lesions better than" if better else "does not localize the lesions better than"
    text = (f"The fine-tuned SoftCAM {verdict} Grad-CAM on the black box: share of oracle "
            f"{_fmt(soft.get('share_of_oracle'))} vs {_fmt(gc.get('share_of_oracle'))} ({d['share_of_oracle']:+.3f}), "
            f"pointing game {_fmt(soft.get('pointing_game'))} vs {_fmt(gc.get('pointing_game'))} "
            f"({d['pointing_game']:+.3f}), at a test accuracy {d_acc:+.3f} from the black box's.")
    return {"share_of_oracle_diff": d["share_of_oracle"], "pointing_game_diff": d["pointing_game"],
            "activation_precision_diff": d["activation_precision"], "accuracy_diff": d_acc, "better": better,
            "text": text}


def _localization_methods(before: Any, after: Any) -> list[tuple[str, dict[str, Any]]]:
    """(label, method summary) for the localization table: SoftCAM fine-tuned and converted, Grad-CAM."""
    label_of = {"softcam": "SoftCAM (fine-tuned)", "gradcam": "Grad-CAM (on SoftCAM)",
                "original:gradcam": "Grad-CAM (black box)"}
    found = {label_of.get(m["key"], m["label"]): m for m in after.method_summaries()}
    for m in before.method_summaries():
        if m["key"] == "softcam":
            found["SoftCAM (converted)"] = m
    order = ["SoftCAM (fine-tuned)", "SoftCAM (converted)", "Grad-CAM (black box)", "Grad-CAM (on SoftCAM)"]
    return [(k, found[k]) for k in order if k in found and found[k]["images"]]


def picks_for_panels(manifest: dict[str, Any], classes: list[str], n: int) -> list[dict[str, Any]]:
    """Lesion images of the test split for the image | SoftCAM | Grad-CAM figure (alternating lesion kinds)."""
    lesion_classes = [c for c in classes if c != "healthy"] or classes
    per = max(1, -(-n // len(lesion_classes)))
    return _pick(manifest["images"], "test", per, lesion_classes, lesions_only=True)[:n]


def _write_panels(out: Path, manifest: dict[str, Any], picks: list[dict[str, Any]], tuned: Any, loaded: Any,
                  data_dir: Path, baselines: list[str]) -> str | None:
    """``figures/panel.png``: per lesion image, image (lesions outlined) | SoftCAM evidence | Grad-CAM."""
    import torch

    from .evaluation import _with_outline
    from .heatmaps import input_view
    from .images import open_image, preprocess_image
    from .render import overlay, scale_maps

    if not picks:
        return None
    cfg = tuned.meta.data_config
    names = list(tuned.meta.class_names)
    imgs = [open_image(data_dir / it["path"], channels=3) for it in picks]
    masks = [np.asarray(Image.open(data_dir / it["mask"])) > 0 for it in picks]
    x = np.stack([preprocess_image(im, input_size=tuple(cfg["input_size"][1:]), mean=cfg["mean"], std=cfg["std"],
                                   interpolation=cfg["interpolation"], crop_pct=cfg["crop_pct"],
                                   crop_mode=cfg.get("crop_mode"), channels=3) for im in imgs]).astype(np.float32)
    labels = [names.index(it["class"]) for it in picks]
    with torch.no_grad():
        logits, maps = tuned.forward_maps(torch.from_numpy(x))
    probs = torch.softmax(logits, 1).numpy()
    maps = maps.numpy()
    gc = None
    if baselines:
        from .baselines import PostHocExplainer, original_target

        with PostHocExplainer(original_target(loaded.module, cfg["input_size"]), "gradcam") as ex:
            gc = ex(x, labels)
    rows = []
    (out / "figures").mkdir(exist_ok=True)
    preds = [int(np.argmax(p)) for p in probs]
    labels_txt = [f"{it['class']}\npredicted:\n{names[preds[i]]}\np = {probs[i][preds[i]]:.2f}"
                  for i, it in enumerate(picks)]
    label_w = _label_width(labels_txt, _font(16))
    for i in range(len(picks)):
        view = input_view(imgs[i], cfg)
        grey = view.convert("L").convert("RGB")  # maps read better over a grey fundus than over a red one
        k = labels[i]
        scaled, _, vmax = scale_maps(maps[i])
        tiles = [_with_outline(view, masks[i], (0, 230, 0)),
                 _with_outline(overlay(grey, scaled[k], alpha=0.6, cmap="RdBu_r"), masks[i], (0, 230, 0))]
        titles = ["image (lesions outlined)", f"SoftCAM evidence: {names[k]}"]
        if gc is not None:
            tiles.append(_with_outline(overlay(grey, gc[i], alpha=0.6, cmap="inferno"), masks[i], (0, 230, 0)))
            titles.append("Grad-CAM (black box)")
        rows.append(_titled(tiles, titles, row_label=labels_txt[i], label_w=label_w))
        rows[-1].save(out / "figures" / f"panel_{i}.png")
    footer = "green: lesion masks · SoftCAM: signed evidence (red for, blue against) · Grad-CAM: [0, 1]"
    _stack(rows, footer=footer).save(out / "figures" / "panel.png")
    _stack(rows[:2], footer=footer).save(out / "figures" / "overview.png")  # the README picture (--update-docs)
    return "figures/panel.png"


def _link(href: str, text: str) -> str:
    return f'<a href="{html.escape(href, quote=True)}">{html.escape(text)}</a>'


def _write_report(out: Path, result: DemoResult, info: dict[str, Any], exps: list[Any],
                  loc_methods: list[tuple[str, dict[str, Any]]], panel_rel: str | None) -> Path:
    """``OUT_DIR/report.html``: one page with every step's result."""
    from . import report as R
    from .evaluation import metric_rows

    f = result.figures
    steps = {s.key: s for s in result.steps}
    cls = f["classification"]
    parts: list[str] = []

    # summary
    rows = []
    for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("roc_auc", "ROC-AUC")):
        rows.append([label, cls["black_box"].get(key), cls["converted"].get(key), cls["fine_tuned"].get(key)])
    conv = f["conversion"]
    exp = f["export"]
    hist = f["finetune"]["history"]
    maps_text = ""
    if hist:
        h0, h1 = hist[0], hist[-1]
        maps_text = (f" (validation maps: mean Σ|A| per map {_fmt(h0.get('val_map_l1'), 1)} after epoch 1, "
                     f"{_fmt(h1.get('val_map_l1'), 1)} after epoch {h1['epoch']}; share of near-zero cells "
                     f"{_fmt(h0.get('val_sparsity'), 2)} → {_fmt(h1.get('val_sparsity'), 2)})")
    summary = [
        R.paragraph(
            f"The black box is an ordinary timm {info['architecture']} classifier (global average pooling + linear "
            f"head) shipped with softcamify. Converted to SoftCAM it gives the same logits (max |Δlogit| "
            f"{conv['max_abs_diff']:.2g}) and, from the same forward pass, one signed evidence map per class. "
            + (f"Converted again with output stride {f['conversion_finer']['output_stride']} (dilated last stages), "
               f"its evidence grid is {_grid(f['conversion_finer']['evidence_grid'])} instead of "
               f"{_grid(f['conversion_finer']['original_grid'])} (approximate: top-1 agreement with the black box "
               f"{f['conversion_finer']['top1_agreement']:.1%} before fine-tuning). " if f.get("conversion_finer") else "")
            + f"A λ1 sweep picked λ1 = {f['finetune']['l1']:g} of the normalized L1 penalty "
            f"({'recommended by softcamify sweep' if (f.get('sweep') or {}).get('recommended_l1') is not None else 'none qualified'}); "
            f"fine-tuned for {f['finetune']['epochs']} epoch(s){maps_text}, it was exported to ONNX, where logits and "
            f"maps match PyTorch (max |Δ| evidence {exp['max_abs_diff_evidence']:.2g})."
        ),
        R.table(["test split", "black box", "SoftCAM (converted)", "SoftCAM (fine-tuned)"], rows,
                caption=f"Classification on {cls['test_images']} generated test images"),
    ]
    if loc_methods:
        keys = [("share_of_oracle", "share of oracle ↑"), ("topk_precision", "top-k patch precision ↑"),
                ("activation_precision", "activation precision ↑"),
                ("pointing_game", f"pointing game ({POINTING_TOLERANCE} px) ↑"), ("deletion_auc", "deletion AUC ↓"),
                ("insertion_auc", "insertion AUC ↑")]
        loc = f["localization"]
        summary.append(R.table(["localization (lesion images)", *[label for label, _ in loc_methods]],
                               [[name, *[loc[label].get(key) for label, _ in loc_methods]] for key, name in keys],
                               caption="Localization of the true class against the lesion masks (means; section 7 "
                                       "has all metrics)"))
    if f.get("comparison"):
        summary.append(R.paragraph(f["comparison"]["text"]))
    if panel_rel:
        summary.append(R.figure(R.image_tag(panel_rel, "image, SoftCAM evidence and Grad-CAM for lesion images"),
                                "Lesion test images: the fine-tuned SoftCAM's evidence for the true class beside "
                                "Grad-CAM on the black box (green: lesion masks)."))
    parts.append(R.section("Summary", *summary))

    # steps table
    parts.append(R.section("Steps", R.table(["step", "result", "seconds"],
                                             [[s.title, s.summary, round(s.seconds, 1)] for s in result.steps])))

    # 1 data
    s = steps["data"]
    ds = result.settings["dataset"]
    parts.append(R.section(
        "1. Data",
        R.paragraph(f"{s.summary}. Generated by softcamify.datasets.make_lesions (softcamify datasets synth) with the "
                    f"settings the black box was trained with (size {ds['size']}, contrast {ds['contrast']:g}, noise "
                    f"{ds['noise']:g}) and another seed ({result.settings['seed']}): fundus-like images whose classes "
                    "differ only by small lesions (healthy, red_lesion: dark-red dots, bright_lesion: yellowish "
                    "patches); every image has an exact lesion mask."),
    ))

    # 2 inspect + 3 convert
    parts.append(R.section("2. Inspect", R.table(["field", "value"], steps["inspect"].details)))
    parts.append(R.section(
        "3. Convert",
        R.paragraph("Global average pooling + linear classifier become a 1×1 evidence convolution initialized from "
                    "the classifier's weights; the converted model is checked against the black box before it is "
                    "saved (models/converted.safetensors)."),
        R.table(["check", "value"], steps["convert"].details, caption="Exactness report"),
    ))

    # 4 finetune
    ftf = f["finetune"]
    hist = ftf["history"]
    charts = []
    if hist:
        charts.append(R.figure(R.line_chart_svg(
            {"train loss": [h["train_loss"] for h in hist], "train CE": [h["train_ce"] for h in hist],
             "val loss": [h["val_loss"] for h in hist]}, "epoch", "loss", width=420, height=240), "Loss"))
        charts.append(R.figure(R.line_chart_svg(
            {"train accuracy": [h["train_accuracy"] for h in hist], "val accuracy": [h["val_accuracy"] for h in hist]},
            "epoch", "accuracy", width=420, height=240), "Accuracy"))
        if any(h.get("val_sparsity") is not None for h in hist):
            charts.append(R.figure(R.line_chart_svg(
                {"val map sparsity": [h.get("val_sparsity") for h in hist]}, "epoch", "share of |A| < 0.1",
                width=420, height=240), "Map sparsity (validation)"))
    ft_rows = [[h["epoch"], h["train_loss"], h["train_ce"], h["train_l1"], h["train_accuracy"], h["val_loss"],
                h["val_accuracy"], h.get("val_map_l1"), h.get("val_sparsity")] for h in hist]
    sw = f.get("sweep") or {}
    sweep_rows = [[f"{r['l1']:g}", r.get("accuracy"), r.get("share_of_oracle"), r.get("activation_precision"),
                   r.get("pointing_game"), r.get("sparsity"),
                   "recommended" if r.get("recommended") else ("" if r.get("qualified") else "below the floor")]
                  for r in sw.get("runs", [])]
    ref = sw.get("reference") or {}
    parts.append(R.section(
        "4. Sweep λ1 and fine-tune",
        R.paragraph(f"softcamify sweep fine-tuned the converted model once per λ1 and scored each run on the validation "
                    f"split (sweep/index.html, sweep/pareto.png). Rule: {(sw.get('rule') or {}).get('text', '')} "
                    f"The converted model's validation accuracy is {_fmt(ref.get('accuracy'))}, so the floor is "
                    f"{_fmt((ref.get('accuracy') or 0.0) - sw.get('tolerance', 0.0))}."),
        R.table(["λ1", "val accuracy", "share of oracle", "activation precision", "pointing game", "sparsity", ""],
                sweep_rows, caption="The sweep's runs (validation split)"),
        R.paragraph(f"CE + λ1·mean|A|/s on the evidence maps (λ1 = {ftf['l1']:g}, λ2 = {ftf['l2']:g}, s = "
                    f"{_fmt(ftf.get('logit_scale'))} the converted model's logit scale; docs/method.md), AdamW lr "
                    f"{ftf['lr']:g}, batch {ftf['batch_size']}, {ftf['epochs']} epoch(s) on {ftf['device']} "
                    f"({_fmt(ftf['train_images_per_s'], 0)} images/s); the best epoch by validation loss (CE + penalty) "
                    f"(epoch {ftf['best_epoch']}) is kept in finetune/best.safetensors."),
        *charts,
        R.table(["epoch", "train loss", "train CE", "train mean|A|/s", "train acc", "val loss", "val acc",
                 "val Σ|A| per map", "val sparsity"], ft_rows,
                caption="Per epoch (finetune/metrics.jsonl); sparsity: share of map cells with |A| < 0.1"),
    ))

    # 5 export
    parts.append(R.section(
        "5. Export to ONNX",
        R.paragraph(f"{steps['export'].summary}. Outputs logits (N×K) and evidence (N×K×h×w); class names and "
                    "preprocessing travel in the file's metadata, so onnxruntime, numpy and Pillow are all a "
                    "deployment needs."),
        R.table(["validation input", "result"], steps["export"].details, caption="onnxruntime vs PyTorch"),
    ))

    # 6 explain
    items = []
    for e in exps:
        ovs = [{"src": f"explain/{rel}", "caption": name} for name, rel in e.files.get("overlays", {}).items()]
        items.append({"title": Path(e.source).name, "image": f"explain/{e.files['image']}",
                      "prediction": e.predicted_class, "probability": e.probability,
                      "label": Path(e.source).parent.name, "overlays": ovs})
    parts.append(R.section(
        "6. Explain",
        R.paragraph("Evidence maps of every class from one forward pass of model.onnx in onnxruntime (no torch): red "
                    "is evidence for the class, blue against, one colour scale per image. Full gallery: "),
        f"<p>{_link('explain/index.html', 'explain/index.html')}</p>",
        R.gallery(items, thumb_width=200, overlay_width=120),
    ))

    # 7 evaluate
    cls_rows = [[label, cls["black_box"].get(k), cls["converted"].get(k), cls["fine_tuned"].get(k)]
                for k, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
                                 ("roc_auc", "ROC-AUC"))]
    ev_parts = [R.table(["metric", "black box", "SoftCAM (converted)", "SoftCAM (fine-tuned)"], cls_rows,
                        caption=f"Classification ({cls['test_images']} test images)")]
    if loc_methods:
        ev_parts.append(R.table(["metric", *[label for label, _ in loc_methods]],
                                metric_rows([m for _, m in loc_methods]),
                                caption="Localization of the true class against the lesion masks (mean ± std; "
                                        "top-k precision pooled over images)"))
        es = f["evaluation_settings"]
        ev_parts.append(R.paragraph(
            f"Maps compared at the {es['input_size'][1]}×{es['input_size'][2]} input (evidence grid "
            f"{'×'.join(str(v) for v in es['evidence_grid'] or [])}; share of oracle for every method on the "
            f"{_grid(es.get('oracle_grid'))} grid); top-k: k = {es['topk']}, {es['patch_size']} px "
            f"patches; deletion/insertion in {es['steps']} steps. Grad-CAM (black box) is Grad-CAM on the original "
            "classifier's last feature map; SoftCAM (converted) is the converted model before fine-tuning (on a "
            "GAP + linear head its maps are the classic CAM). Definitions: docs/metrics.md.", note=True))
        curves = {label: m["topk_curve"] for label, m in loc_methods if m.get("topk_curve")}
        if curves:
            ev_parts.append(R.figure(R.line_chart_svg(curves, "k", "precision@k", width=480, height=240),
                                     "Top-k patch precision, pooled over images"))
    ev_parts.append(f"<p>Full evaluation report (per-class metrics, confusion matrix, deletion/insertion curves, "
                    f"examples): {_link('evaluate/index.html', 'evaluate/index.html')}</p>")
    parts.append(R.section("7. Evaluate", *ev_parts))

    # your own data
    arch = info["architecture"]
    parts.append(R.section(
        "The same steps on your own data",
        "<pre>" + html.escape(
            f"softcamify inspect {arch} --weights my_model.safetensors\n"
            f"softcamify convert {arch} --weights my_model.safetensors -o softcam.safetensors --calibration data/val "
            "--output-stride 8\n"
            "softcamify sweep softcam.safetensors data/ -o sweep/ --l1 0.05,0.5,2   # recommends a λ1\n"
            "softcamify finetune softcam.safetensors data/ -o runs/l1 --l1 2 --epochs 10\n"
            "softcamify export runs/l1/best.safetensors -o model.onnx\n"
            "softcamify explain model.onnx scans/ -o heatmaps/ --classes all\n"
            f"softcamify evaluate runs/l1/best.safetensors data/ --masks data/masks --baselines gradcam "
            f"--original {arch} -o report/   # --original needs the black box: see docs/demo.md"
        ) + "</pre>",
        R.paragraph("docs/demo.md explains each step; docs/cli.md lists every option.", note=True),
    ))
    for n in result.notes:
        parts.append(R.paragraph(f"note: {n}", note=True))
    page = R.html_page(
        "softcamify demo",
        parts,
        subtitle=(f"black box: {arch} (softcamify/assets/{MODEL_FILE.name}) · device {result.device} · "
                  f"{'fast settings · ' if result.settings.get('fast') else ''}output {out}"),
        footer=f"softcamify demo, {time.strftime('%Y-%m-%d %H:%M')}, {result.seconds:.0f} s",
    )
    return R.write_report(out / REPORT_NAME, page, force=True)


def update_docs_figure(result: DemoResult, dest: str | os.PathLike | None = None) -> Path:
    """Copy the report's figure to ``docs/images/demo_overlay.png`` of a source checkout (``--update-docs``)."""
    from .errors import UsageError

    src = Path(result.files.get("figure") or "")
    if not src.is_file():
        raise OutputError("The demo wrote no figure to copy (no lesion image in the test split).")
    if dest is None:
        docs = Path(__file__).resolve().parents[1] / "docs"
        if not docs.is_dir():
            raise UsageError("--update-docs needs a source checkout of softcamify (docs/ next to the package).")
        dest = docs / "images" / "demo_overlay.png"
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest
