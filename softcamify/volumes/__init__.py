"""Volumes (3D CT/MRI scans): reading, preprocessing, a synthetic dataset and writers for evidence volumes.

* :mod:`~softcamify.volumes.io`: :func:`read_volume` and :func:`read_mask` (``.nii``, ``.nii.gz`` through
  nibabel, ``.npy``, ``.npz``) into a :class:`Volume` with its :class:`VolumeGeometry` (affine, spacing, shape)
* :mod:`~softcamify.volumes.preprocess`: :class:`VolumeConfig` (target shape or spacing, intensity window or
  z-score, channels; recorded in model metadata), :func:`resample` (separable trilinear, pure numpy),
  :func:`preprocess_volume` and :func:`evidence_to_scan` (an evidence grid back into the scan's geometry)
* :mod:`~softcamify.volumes.synth3d`: the synthetic lesion volumes (``softcamify datasets synth3d``)
* :mod:`~softcamify.volumes.write`: evidence as NIfTI in the input's geometry, tri-planar PNG overlays and a
  self-contained HTML slice viewer

numpy (and Pillow for pictures) only: no torch, no scipy. nibabel is imported when a NIfTI file is read or
written; without it those calls name the ``softcamify[volumes]`` extra.
"""

from __future__ import annotations

from .io import (
    VOLUME_EXTENSIONS,
    Volume,
    VolumeGeometry,
    axis_codes,
    is_volume_file,
    read_mask,
    read_volume,
    volume_stem,
)
from .preprocess import (
    VOLUME_KEY,
    VolumeConfig,
    evidence_to_scan,
    model_volume_config,
    preprocess_volume,
    preprocessed_shape,
    resample,
    with_volume_config,
)

__all__ = [
    "VOLUME_EXTENSIONS",
    "Volume",
    "VolumeGeometry",
    "VolumeConfig",
    "axis_codes",
    "is_volume_file",
    "read_mask",
    "read_volume",
    "volume_stem",
    "evidence_to_scan",
    "preprocess_volume",
    "preprocessed_shape",
    "resample",
    "VOLUME_KEY",
    "model_volume_config",
    "with_volume_config",
]
