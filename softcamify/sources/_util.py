"""Helpers the source modules share."""

from __future__ import annotations

import difflib

from torch import nn


def suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def first_conv_channels(model: nn.Module) -> int | None:
    """Image channels read by the first convolution, when that is plausibly the input layer.

    Stems that rearrange the image first (TResNet's space-to-depth gives 48 channels) are not
    image channels: only 1–4 channels count, anything else returns None.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            return int(m.in_channels) if 1 <= m.in_channels <= 4 else None
        if isinstance(m, nn.Linear):  # e.g. patch embedding as Linear: no conv seen first
            return None
    return None


def last_linear_outputs(model: nn.Module) -> int | None:
    """Outputs of the last Linear / 1×1 conv (the classifier, in most networks)."""
    out = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            out = int(m.out_features)
        elif isinstance(m, (nn.Conv2d, nn.Conv3d)) and set(m.kernel_size) == {1}:
            out = int(m.out_channels)
    return out


def spatial_dims(model: nn.Module) -> int:
    """The number of spatial axes the model reads (2 for images, 3 for volumes and video clips), from the
    type of its first convolution or pooling layer (``Conv3d`` takes N×C×D×H×W); 2 when it has none."""
    for m in model.modules():
        if isinstance(m, (nn.Conv3d, nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.BatchNorm3d)):
            return 3
        if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.MaxPool2d, nn.AvgPool2d, nn.BatchNorm2d, nn.Linear)):
            return 2
    return 2
