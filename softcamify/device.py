"""Choosing the device: ``device="auto"|"cpu"|"cuda"|"cuda:N"`` (auto: the first GPU when there is one)."""

from __future__ import annotations

import torch

from .errors import UsageError


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch.device for a ``device`` value, with a one-sentence error (``param="device"``) when it is
    unavailable."""
    if isinstance(spec, torch.device):
        return spec
    value = (spec or "auto").strip().lower()
    if value == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(value)
    except RuntimeError:
        raise UsageError(f"device {spec!r} is not understood; use auto, cpu, cuda or cuda:N.", param="device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"device {spec}: no CUDA GPU is available here; set device to cpu or auto.", param="device"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"device {spec}: only {torch.cuda.device_count()} CUDA GPU(s) are visible (cuda:0…).",
                param="device",
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError(f"device {spec}: MPS is not available here; set device to cpu or auto.", param="device")
    elif device.type != "cpu":
        raise UsageError(f"device {spec!r} is not supported; use auto, cpu, cuda or cuda:N.", param="device")
    return device
