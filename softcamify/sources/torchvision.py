"""torchvision networks by name: building (``weights=None``), names, output stride."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import InputError
from ._util import last_linear_outputs, suggest

KIND = "torchvision"
EXTRA = None  # torchvision is a core dependency


def names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models())


def is_known(name: str) -> bool:
    return True  # checked when built, with suggestions


def build(name: str, num_classes: int | None, model_args: dict[str, Any]) -> nn.Module:
    import torchvision

    known = names()
    if name not in known:
        raise InputError(f"{name!r} is not a torchvision model{suggest(name, known)}.")
    if num_classes is not None:
        model_args["num_classes"] = num_classes
    if name.startswith(("inception", "googlenet")):
        model_args.setdefault("aux_logits", False)
        model_args.setdefault("init_weights", True)
    return torchvision.models.get_model(name, weights=None, **model_args)


def stride_args(model_args: dict[str, Any], output_stride: int) -> dict[str, Any] | None:
    """torchvision's ResNet builders take ``replace_stride_with_dilation`` (16: the last stage dilated,
    8: the last two)."""
    return {**model_args, "replace_stride_with_dilation": [False, output_stride <= 8, output_stride <= 16]}


# torchvision's video classifiers (r3d_18, mc3_18, r2plus1d_18, …; N×3×T×H×W clips): the Kinetics-400
# preprocessing of their weights (16 frames of 112×112 crops)
VIDEO_SIZE = (3, 16, 112, 112)
VIDEO_MEAN = (0.43216, 0.394666, 0.37645)
VIDEO_STD = (0.22803, 0.22145, 0.216989)
VIDEO_NOTE = (
    "a torchvision video model: the preprocessing is guessed from its Kinetics-400 weights (mean "
    "0.432, 0.395, 0.376 / std 0.228, 0.221, 0.217, 3×T×H×W clips, {size}); if the model was trained otherwise, "
    "give mean, std and input_size."
)


def data_defaults(model: nn.Module, pretrained_cfg: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    if type(model).__module__.startswith("torchvision.models.video"):
        return {"input_size": VIDEO_SIZE, "mean": VIDEO_MEAN, "std": VIDEO_STD, "crop_pct": 1.0}, [VIDEO_NOTE]
    return {}, []  # torchvision's classifiers are trained with the ImageNet defaults


def candidates(model: nn.Module, first_channels: int | None):
    module = type(model).__module__
    if module.startswith("torchvision.models"):
        import torchvision

        k = last_linear_outputs(model)
        family = torchvision.models.video if module.startswith("torchvision.models.video") else torchvision.models
        for name in torchvision.models.list_models(module=family):
            if torchvision.models.get_model_builder(name).__module__ == module:
                yield {"kind": KIND, "name": name, "num_classes": k, "model_args": {}}
