"""Classification and explanation metrics, in plain numpy (no torch: usable from the ONNX-only path).

One import for every metric: :mod:`.classification` (labels and probabilities), :mod:`.saliency` (one map
against a mask, and its complexity), :mod:`.faithfulness` (deletion/insertion through the model),
:mod:`.mapops` (resizing, normalization, blur), :mod:`.agreement` (two models' maps compared, the
fixed-region share) and :mod:`.summary` (:func:`json_safe`, :func:`aggregate`).

Classification metrics take integer labels ``y_true`` (shape N) and class probabilities ``probs``
(shape N×K, e.g. a softmax). Explanation metrics take one saliency map ``s`` (h×w, any scale and sign,
e.g. one class of a SoftCAM evidence map) and a boolean annotation mask ``m`` (H×W); the map is
upsampled to the mask size first (bilinear, ``align_corners=False``, as ``torch.nn.functional.interpolate``).

Conventions, shared by every function here:

* An **empty mask** makes a localisation score undefined: the function returns ``nan`` and the caller
  skips that image (:func:`aggregate` ignores ``nan``).
* A map with **no positive evidence** scores 0 on the mass-based localisation metrics.
* Scores for a map that is constant everywhere (no pixel singled out) are documented per function.
* :func:`json_safe` turns ``nan``/``inf`` into ``None`` and numpy values into Python ones;
  :func:`classification_report` and :func:`aggregate` already return JSON-safe dicts.

Definitions follow the SoftCAM authors' evaluation code where it exists (activation precision and
sensitivity, top-k patch precision, deletion with max-scored patches), Quantus for the Gini index and the
pointing game's tie rule, and the Score-CAM reference code for the energy-based pointing game.
"""

from __future__ import annotations

from . import agreement
from .agreement import *  # noqa: F403 - its __all__, listed once there
from .classification import (
    accuracy,
    balanced_accuracy,
    classification_report,
    confusion_matrix,
    quadratic_kappa,
    roc_auc_ovr,
    sensitivity_specificity,
)
from .faithfulness import deletion_insertion, deletion_insertion_batch
from .mapops import ResizeMode, gaussian_blur, normalize_saliency, upsample
from .saliency import (
    TopKResult,
    activation_precision,
    activation_sensitivity,
    as_grid,
    energy_pointing_game,
    gini,
    grid_oracle,
    oracle_precision,
    pointing_game,
    pooled_topk_precision,
    share_of_oracle,
    sparsity,
    topk_patch_precision,
)
from .summary import aggregate, json_safe

__all__ = [
    "ResizeMode",
    "TopKResult",
    "accuracy",
    "activation_precision",
    "activation_sensitivity",
    "aggregate",
    "as_grid",
    "balanced_accuracy",
    "classification_report",
    "confusion_matrix",
    "deletion_insertion",
    "deletion_insertion_batch",
    "energy_pointing_game",
    "gaussian_blur",
    "gini",
    "grid_oracle",
    "json_safe",
    "normalize_saliency",
    "oracle_precision",
    "pointing_game",
    "pooled_topk_precision",
    "quadratic_kappa",
    "roc_auc_ovr",
    "sensitivity_specificity",
    "share_of_oracle",
    "sparsity",
    "topk_patch_precision",
    "upsample",
]
__all__ += agreement.__all__  # the agreement metrics, listed once (in .agreement)
