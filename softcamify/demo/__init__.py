"""The end-to-end demo behind ``softcamify demo`` (and ``make demo``): the whole promise in a few minutes.

:func:`run_demo` takes the small black-box classifier shipped with softcamify (an ordinary timm
``test_resnet`` state dict in ``softcamify/assets/``, trained by ``scripts/train_demo_model.py`` on the
synthetic lesion dataset) through every step a user would take with their own checkpoint::

    1. data       generate a synthetic fundus-like lesion dataset with masks (the training distribution)
    2. inspect    find the black box's pooling + classifier and the conversion strategy
    3. convert    pooling + classifier -> 1×1 evidence conv, verified against the black box (max |Δlogit|);
                  again with ``output_stride=8`` (dilated last stages: a 4× finer evidence grid, approximate)
    4. sweep      short fine-tunes over a few λ1 values of the normalized L1 penalty on the finer model,
                  scored on the validation split; the λ1 ``softcamify sweep`` recommends is the fine-tuned
                  model
    5. export     ONNX with `logits` and `evidence` outputs, validated in onnxruntime
    6. explain    evidence maps of every class for a few test images, from the ONNX file (no torch)
    7. evaluate   accuracy of the black box and of SoftCAM side by side; localization against the lesion
                  masks for SoftCAM and for Grad-CAM on the black box and on SoftCAM, on one scale (share of
                  the grid oracle, on the finest grid), with SoftCAM's difference to Grad-CAM stated plainly
    8. report     one HTML page (overlays, metric tables, the fine-tuning curve) in OUT_DIR/report.html

Nothing is downloaded; a GPU is used when there is one (``device="auto"``). ``fast=True`` shrinks every
step (a few dozen images, one epoch) for tests.

The package: :mod:`.settings` (sizes of a run, the shipped black box, its dataset), :mod:`.run` (the eight
steps), :mod:`.results` (steps, progress, the result as data), :mod:`.figures` (the evaluation's figures),
:mod:`.panels` (the image | SoftCAM | Grad-CAM figure) and :mod:`.report` (the HTML page).
"""

from __future__ import annotations

from .report import update_docs_figure
from .results import DemoReporter, DemoResult, StepResult
from .run import run_demo
from .settings import (
    ASSETS,
    DEFAULT,
    DEFAULT_OUT_DIR,
    DEMO_SEED,
    FAST,
    INFO_FILE,
    MODEL_FILE,
    DemoSettings,
    dataset_options,
    load_demo_model,
    make_demo_dataset,
    model_info,
)

__all__ = [
    "ASSETS",
    "DEFAULT",
    "DEFAULT_OUT_DIR",
    "DEMO_SEED",
    "FAST",
    "INFO_FILE",
    "MODEL_FILE",
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
