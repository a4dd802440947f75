"""Explanations: evidence maps computed (:mod:`.compute`), shown on the region the model sees
(:mod:`.view`), written as files (:mod:`.write`); ``explain`` (:mod:`.run`) joins them and :mod:`.inputs`
reads what it is given; :mod:`.volume` does it all for a volume model (evidence volumes in the scan's
geometry). No torch import."""

from .compute import (
    DEFAULT_BATCH_SIZE,
    DIVERGING_CMAP,
    POSITIVE_CMAP,
    Explanation,
    iter_explanations,
)
from .inputs import ImageSource, collect_images, parse_classes
from .run import explain
from .view import input_view
from .volume import VolumeExplanation, collect_volumes, explain_volumes
from .write import ExplanationWriter

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DIVERGING_CMAP",
    "POSITIVE_CMAP",
    "Explanation",
    "ExplanationWriter",
    "ImageSource",
    "VolumeExplanation",
    "collect_volumes",
    "explain_volumes",
    "collect_images",
    "explain",
    "input_view",
    "iter_explanations",
    "parse_classes",
]
