"""The options that say how an original classifier is loaded, declared once (no torch import).

``checkpoints.load_model``, ``conversion.as_softcam``, ``runtime.load_softcam`` and ``runtime.load`` all take
them as keyword arguments (``**options: Unpack[LoadOptions]``) and hand them on, so a new option is added
here and in the one function that reads it (``checkpoints.loading``), nowhere else.
"""

from __future__ import annotations

import os
from typing import Any, TypedDict

__all__ = ["LoadOptions", "PREPROCESSING"]

PREPROCESSING = ("mean", "std", "crop_pct", "interpolation")  # what a user may say of an original's preprocessing


class LoadOptions(TypedDict, total=False):
    """How to load an original classifier (all optional).

    ``weights``: a weights file for an architecture given by name; ``num_classes``: the classifier's
    outputs (default: from the weights); ``ema``: the EMA weights of a timm training checkpoint;
    ``trust_pickle``: allow pickled checkpoints (runs code from the file); ``input_size``: ``(H, W)``;
    ``model_args``: constructor arguments (``{"in_chans": 1}``); ``module``: a class of your own,
    ``"package.module:Class"`` (imported, never unpickled); ``mean``, ``std``, ``crop_pct``,
    ``interpolation``: how its images were preprocessed (recorded in a converted model).
    """

    weights: str | os.PathLike | None
    num_classes: int | None
    ema: bool
    trust_pickle: bool
    input_size: tuple[int, ...] | None  # (H, W), or (D, H, W) for a volume model
    model_args: dict[str, Any] | None
    module: str | None
    mean: Any
    std: Any
    crop_pct: float | None
    interpolation: str | None
