"""Datasets: find them on disk, read them with torch, and generate a synthetic one.

* :mod:`~softcamify.data.collect`: the one image collector (:func:`collect_image_files`) and its rule for
  hidden files and symlinks, used by discovery, ``predict`` / ``explain`` inputs and ``convert --calibration``
* :mod:`~softcamify.data.discover`: the dataset layouts (split folders, class folders, masks beside them),
  :func:`discover`, :func:`verify_samples`, :func:`mask_path_for`, :func:`default_mask_root`
* :mod:`~softcamify.data.labels_csv`: the labels-CSV layout; :mod:`~softcamify.data.splits`: what discovery
  returns (:class:`Sample`, :class:`DatasetSplits`) and the seeded stratified split
* :mod:`~softcamify.data.torch_dataset`: :class:`ImageDataset`, :class:`VolumeDataset`, :class:`EvalTransform`,
  :func:`build_transform` (the only module here that imports torch)
* :mod:`~softcamify.data.synth` and :mod:`~softcamify.data.synth_draw`: the synthetic lesion dataset
  (``softcamify datasets synth``)

Importing this package does not import torch (the ONNX path discovers evaluation sets with it): the names of
:mod:`~softcamify.data.torch_dataset` load it on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..images import load_mask
from .collect import collect_image_files
from .discover import MASK_DIR_NAME, default_mask_root, discover, mask_path_for, verify_samples
from .splits import DEFAULT_VAL_SPLIT, SPLIT_NAMES, DatasetSplits, Sample, class_counts
from .synth import make_lesions

if TYPE_CHECKING:
    from .torch_dataset import (
        AUGMENTATIONS,
        MEDICAL_ROTATION_DEGREES,
        EvalTransform,
        ImageDataset,
        VolumeDataset,
        build_transform,
    )

__all__ = [
    "Sample",
    "DatasetSplits",
    "discover",
    "verify_samples",
    "ImageDataset",
    "VolumeDataset",
    "EvalTransform",
    "build_transform",
    "mask_path_for",
    "default_mask_root",
    "load_mask",
    "class_counts",
    "collect_image_files",
    "make_lesions",
    "AUGMENTATIONS",
    "MEDICAL_ROTATION_DEGREES",
    "SPLIT_NAMES",
    "DEFAULT_VAL_SPLIT",
    "MASK_DIR_NAME",
]

_TORCH_NAMES = (
    "ImageDataset",
    "VolumeDataset",
    "EvalTransform",
    "build_transform",
    "AUGMENTATIONS",
    "MEDICAL_ROTATION_DEGREES",
)


def __getattr__(name: str) -> Any:
    # The torch part loads on first use so that `import softcamify.data` stays torch-free.
    if name in _TORCH_NAMES:
        return getattr(importlib.import_module(f"{__name__}.torch_dataset"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
