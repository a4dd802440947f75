"""timm networks by name: building (never downloading), names, data config, output stride."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import InputError, UsageError
from ._util import suggest

KIND = "timm"
EXTRA = None  # timm is a core dependency


def is_known(name: str) -> bool:
    import timm

    return bool(timm.is_model(name))


def names() -> list[str]:
    import timm

    return list(timm.list_models())


def build(name: str, num_classes: int | None, model_args: dict[str, Any]) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise InputError(f"{name!r} is neither an existing file nor a timm architecture{suggest(name, names())}.")
    if num_classes is not None:
        model_args["num_classes"] = num_classes
    try:
        return timm.create_model(name, pretrained=False, **model_args)
    except TypeError as e:
        raise UsageError(f"timm cannot build {name!r} with {model_args}: {e}.") from e


def stride_args(model_args: dict[str, Any], output_stride: int) -> dict[str, Any] | None:
    """timm builders take ``output_stride`` (ResNet & co., RegNet, EfficientNet/MobileNet, ConvNeXt …)."""
    return {**model_args, "output_stride": int(output_stride)}


def data_defaults(model: nn.Module, pretrained_cfg: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """timm's data config of the model (or of a recorded ``pretrained_cfg``)."""
    from timm.data import resolve_data_config as timm_data_config

    try:
        cfg = dict(timm_data_config(pretrained_cfg=pretrained_cfg, model=None if pretrained_cfg else model))
    except Exception:  # noqa: BLE001 - a model timm cannot describe: the generic defaults apply
        cfg = {}
    return cfg, []


def candidates(model: nn.Module, first_channels: int | None):
    """How an in-memory timm network might be rebuilt by name (each checked by rebuilding it)."""
    if hasattr(model, "pretrained_cfg") and hasattr(model, "forward_head"):
        arch = (getattr(model, "pretrained_cfg", {}) or {}).get("architecture")
        if isinstance(arch, str):
            args = {"in_chans": first_channels} if first_channels and first_channels != 3 else {}
            yield {"kind": KIND, "name": arch, "num_classes": getattr(model, "num_classes", None), "model_args": args}
