"""Single-logit binary classifiers (trained with ``BCEWithLogits``) read as exact two-class softmax models.

A model with one output logit ``z`` predicts ``p(positive) = σ(z)``. The two-class softmax model with
logits ``(−z/2, z/2)`` predicts exactly the same probabilities, ``softmax(−z/2, z/2) = (σ(−z), σ(z))``,
and its cross-entropy is exactly the binary cross-entropy of ``z``. A SoftCAM model with one evidence map
``A`` (``z = mean(A)``) therefore has the evidence maps ``(−A/2, A/2)`` for its two decision classes:
evidence for *positive* is evidence against *negative*.

softcamify keeps such a model as it is (one logit, one evidence map: what it exports to ONNX and saves)
and reads it through this two-class view wherever classes are ranked, scored, explained or trained, so
every command handles ``K = 1`` models without a special case. Class names: ``[negative, positive]``
(``--class-names healthy,disease``); a single name ``[positive]`` reads as ``[not_positive, positive]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["classes_phrase", "decision_names", "is_binary", "names_fit", "probabilities", "two_class"]


def is_binary(num_logits: int) -> bool:
    """True for a single-logit (sigmoid) model."""
    return int(num_logits) == 1


def names_fit(num_logits: int, num_names: int) -> bool:
    """Whether ``num_names`` class names suit a model with ``num_logits`` outputs (one logit: 1 or 2 names)."""
    return int(num_names) == int(num_logits) or (is_binary(num_logits) and int(num_names) == 2)


def classes_phrase(num_logits: int) -> str:
    """``"3 classes"``, or for one logit ``"one logit (a binary classifier: give 1 or 2 class names)"``."""
    if is_binary(num_logits):
        return "one logit (a binary classifier: give 1 or 2 class names, negative first)"
    return f"{int(num_logits)} classes"


def decision_names(class_names: Sequence[str], num_logits: int) -> list[str]:
    """The names of the classes a model decides between: its class names, or ``[negative, positive]``
    for a single-logit model (from two given names, one positive name, or the defaults)."""
    names = [str(n) for n in class_names]
    if not is_binary(num_logits):
        return names
    if len(names) == 2:
        return names
    if len(names) == 1 and names[0] != "class_0":
        return [f"not_{names[0]}", names[0]]
    return ["negative", "positive"]


def two_class(values: Any, num_logits: int | None = None) -> Any:
    """Logits N×1 → N×2 ``(−z/2, z/2)``, or maps N×1×h×w → N×2×h×w ``(−A/2, A/2)``; other shapes as they are.

    Works on numpy arrays and torch tensors (differentiably). ``num_logits`` defaults to ``values.shape[1]``.
    """
    k = values.shape[1] if num_logits is None else int(num_logits)
    if not is_binary(k) or values.ndim < 2 or values.shape[1] != 1:
        return values
    half = values * 0.5
    if isinstance(values, np.ndarray):
        return np.concatenate([-half, half], axis=1)
    import torch

    return torch.cat([-half, half], dim=1)


def probabilities(logits: Any) -> np.ndarray:
    """Class probabilities N×C (float64) for logits N×K: a softmax, or ``(1 − σ(z), σ(z))`` for one logit."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 1:
        z = z[None]
    z = two_class(z)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
