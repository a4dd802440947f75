"""The demo's settings and its inputs: sizes of a run, the shipped black box and its synthetic dataset."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

ASSETS = Path(__file__).resolve().parent.parent / "assets"  # softcamify/assets (package data)
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
OUTPUTS = (
    "data",
    "models",
    "sweep",
    "finetune",
    "explain",
    "evaluate",
    "figures",
    "model.onnx",
    REPORT_NAME,
    SUMMARY_NAME,
)


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


DEFAULT = DemoSettings(
    images=600,
    epochs=4,
    batch_size=16,
    lr=2e-4,
    l1=(0.5, 2.0, 5.0),
    l2=0.0,
    explain_images=6,
    eval_steps=20,
    eval_max_images=None,
    panels=4,
    workers=None,
)
FAST = DemoSettings(
    images=30,
    epochs=1,
    batch_size=8,
    lr=2e-4,
    l1=(0.5, 2.0),
    l2=0.0,
    explain_images=3,
    eval_steps=4,
    eval_max_images=4,
    panels=2,
    workers=0,
)


# --------------------------------------------------------------------------------------------------------
# The shipped black box
# --------------------------------------------------------------------------------------------------------


def model_info() -> dict[str, Any]:
    """``softcamify/assets/demo_model.json``: architecture, classes, data config, dataset, accuracy."""
    try:
        return json.loads(INFO_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(
            f"The demo model's description {INFO_FILE} cannot be read ({e}); reinstall softcamify."
        ) from None


def load_demo_model(info: dict[str, Any] | None = None):
    """The shipped black box as a :class:`~softcamify.checkpoints.LoadedModel`: an ordinary timm state dict
    loaded by name + ``--weights``, exactly as a user's checkpoint, with its data config and class names."""
    import timm

    from ..checkpoints import load_model

    info = info or model_info()
    if not MODEL_FILE.is_file():
        raise InputError(f"The demo model {MODEL_FILE} is missing; reinstall softcamify.")
    if not timm.is_model(info["architecture"]):
        raise InputError(
            f"The demo model is timm's {info['architecture']}, which timm {timm.__version__} "
            "does not have; upgrade timm (pip install -U timm)."
        )
    cfg = dict(info["data_config"])
    size = tuple(int(v) for v in cfg["input_size"][1:])
    loaded = load_model(info["architecture"], weights=MODEL_FILE, input_size=size)  # type: ignore[arg-type]
    loaded.data_config = {**loaded.data_config, **cfg}
    loaded.class_names = list(info["class_names"])
    loaded.notes = [n for n in loaded.notes if "random weights" not in n]
    return loaded


# --------------------------------------------------------------------------------------------------------
# The synthetic dataset (the black box's training distribution)
# --------------------------------------------------------------------------------------------------------


def dataset_options(info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The generator settings the black box was trained with (``make_lesions`` keyword arguments)."""
    from ..data.synth import DEFAULT_CLASSES

    d = dict((info or model_info())["dataset"])
    return {
        "size": int(d["size"]),
        "classes": list(d.get("classes") or DEFAULT_CLASSES),
        "contrast": float(d.get("contrast", 1.0)),
        "noise": float(d.get("noise", 1.0)),
    }


def make_demo_dataset(
    out_dir: str | os.PathLike, n: int, seed: int = DEMO_SEED, force: bool = False, info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A synthetic lesion dataset from the black box's training distribution (same generator settings)."""
    from ..data.synth import make_lesions

    return make_lesions(out_dir, n=n, seed=seed, force=force, **dataset_options(info))


def pick_images(
    items: list[dict[str, Any]], split: str, per_class: int, classes: list[str], lesions_only: bool = False
) -> list[dict[str, Any]]:
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


def picks_for_panels(manifest: dict[str, Any], classes: list[str], n: int) -> list[dict[str, Any]]:
    """Lesion images of the test split for the image | SoftCAM | Grad-CAM figure (alternating lesion
    kinds)."""
    lesion_classes = [c for c in classes if c != "healthy"] or classes
    per = max(1, -(-n // len(lesion_classes)))
    return pick_images(manifest["images"], "test", per, lesion_classes, lesions_only=True)[:n]
