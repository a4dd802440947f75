"""Reading any supported checkpoint safely, and writing/reading softcamify checkpoints.

- :mod:`.foreign`: other people's files — safetensors, ``.pth``/``.pt`` state dicts, timm training and
  Lightning checkpoints, EMA weights, wrapper prefixes — read as weights only unless ``trust_pickle``.
- :mod:`.loading`: :func:`load_model`, a classifier from a name, file or folder (:class:`LoadedModel`).
- :mod:`.format`: the softcamify format — ``.safetensors`` + JSON metadata (:func:`save`, :func:`load`,
  :func:`read_metadata`, the tensor checksum), rebuilt without pickle.
"""

from __future__ import annotations

from ..io import META_KEY
from .foreign import (
    load_weights_into,
    match_prefixes,
    read_safetensors,
    read_torch,
    read_weights,
    safetensors_metadata,
    unwrap_checkpoint,
)
from .format import (
    CHECKSUM_KEY,
    features_from_source,
    load,
    read_metadata,
    save,
    serialize,
    softcam_from_state,
    softcam_from_training_checkpoint,
    verify_checksum,
)
from .loading import CHECKPOINT_SUFFIXES, LoadedModel, load_model

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "CHECKSUM_KEY",
    "META_KEY",
    "LoadedModel",
    "features_from_source",
    "load",
    "load_model",
    "load_weights_into",
    "match_prefixes",
    "read_metadata",
    "read_safetensors",
    "read_torch",
    "read_weights",
    "safetensors_metadata",
    "save",
    "serialize",
    "softcam_from_state",
    "softcam_from_training_checkpoint",
    "unwrap_checkpoint",
    "verify_checksum",
]
