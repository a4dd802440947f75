"""MONAI networks by name (``monai:DenseNet121``, ``monai:resnet18`` …): an optional extra.

Only the classes and builder functions of ``monai.networks.nets`` are ever built, with
``pretrained=False``; softcamify's ``num_classes`` goes to the argument the network has for it
(``out_channels`` for DenseNet, ``num_classes`` for ResNet, EfficientNetBN, SENet and ViT), and
``spatial_dims`` defaults to 2 (images); ``spatial_dims=3`` in the model args builds the volume network
(inputs N×C×D×H×W, evidence volumes B×K×d×h×w).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from ..errors import InputError, UsageError
from ._util import first_conv_channels, last_linear_outputs, spatial_dims, suggest

KIND = "monai"
EXTRA = "monai"
NETS_MODULE = "monai.networks.nets"

# MONAI records no preprocessing: the guess softcamify makes, said in a note wherever it is used
MEAN, STD = 0.5, 0.5
DEFAULT_SIZE = 224
VOLUME_SIZE = (96, 96, 96)  # spatial_dims=3: D, H, W (MONAI's common 96³ patch)
GUESS_NOTE = (
    "MONAI models record no preprocessing: softcamify guessed intensities scaled to [0, 1], then "
    "mean 0.5 / std 0.5 (values in [-1, 1]), no crop, {size} px; if the model was trained with other transforms "
    "(e.g. NormalizeIntensity), pass the matching mean/std and input size."
)
VOLUME_GUESS_NOTE = (
    "MONAI models record no preprocessing: a volume's intensities are changed only by the window or zscore "
    "given (none given: as stored) and it is resampled to {size} voxels unless a target shape or spacing is "
    "given; pass the transforms the model was trained with (ScaleIntensityRange: window, NormalizeIntensity: "
    "zscore, Spacing: target spacing)."
)


def _nets():
    try:
        import monai.networks.nets as nets
    except ImportError:
        raise InputError(
            "MONAI models need the monai package, which is not installed: pip install softcamify[monai]."
        ) from None
    return nets


def available() -> bool:
    try:
        _nets()
    except InputError:
        return False
    return True


def names() -> list[str]:
    nets = _nets()
    out = []
    for n in dir(nets):
        obj = getattr(nets, n)
        if n.startswith("_") or not getattr(obj, "__module__", "").startswith(NETS_MODULE):
            continue
        if (isinstance(obj, type) and issubclass(obj, nn.Module)) or inspect.isfunction(obj):
            out.append(n)
    return out


def target(name: str):
    """The class or builder function ``monai.networks.nets.<name>`` (nothing else is ever built)."""
    nets = _nets()
    obj = getattr(nets, name, None) if name.isidentifier() and not name.startswith("_") else None
    ok = obj is not None and getattr(obj, "__module__", "").startswith(NETS_MODULE)
    if not ok or not ((isinstance(obj, type) and issubclass(obj, nn.Module)) or inspect.isfunction(obj)):
        raise InputError(f"{name!r} is not a network of {NETS_MODULE}{suggest(name, names())}.")
    return obj


def is_known(name: str) -> bool:
    try:
        target(name)
    except InputError:
        return False
    return True


def _params(obj) -> tuple[set[str], bool]:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return set(), True
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    return set(sig.parameters), var_kw


def classes_argument(name: str) -> str:
    """The constructor argument holding the class count: ``out_channels`` (DenseNet) or ``num_classes``."""
    params, _ = _params(target(name))
    return "out_channels" if "out_channels" in params else "num_classes"


def build(name: str, num_classes: int | None, model_args: dict[str, Any]) -> nn.Module:
    obj = target(name)
    params, var_kw = _params(obj)
    if model_args.get("pretrained"):
        raise UsageError(
            "model_args asks for pretrained=True; softcamify never downloads: pass the weights file instead.",
            param="model_args",
        )
    if "pretrained" in params or var_kw:
        model_args["pretrained"] = False
    if "spatial_dims" in params or var_kw:
        model_args.setdefault("spatial_dims", 2)
    if name == "ViT":
        model_args.setdefault("classification", True)
    classes = classes_argument(name)
    if num_classes is not None:
        model_args[classes] = int(num_classes)
    elif classes in params and inspect.signature(obj).parameters[classes].default is inspect.Parameter.empty:
        model_args.setdefault(classes, 2)  # required by the constructor: weights given later set the real count
    if name == "ViT":
        obj = _vit_classifier()
    try:
        return obj(**model_args)
    except (TypeError, ValueError, AssertionError) as e:
        shown = {k: v for k, v in model_args.items() if k != "pretrained"}
        raise UsageError(
            f"MONAI cannot build {name} with model_args {shown}: {e}; pass its constructor arguments "
            "(e.g. spatial_dims=2,in_channels=1,out_channels=2) in model_args.",
            param="model_args",
        ) from e


def stride_args(model_args: dict[str, Any], output_stride: int) -> dict[str, Any] | None:
    return None  # MONAI's networks take no output-stride argument


def data_defaults(model: nn.Module, pretrained_cfg: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    channels = first_conv_channels(model) or 1
    spatial = VOLUME_SIZE if spatial_dims(model) == 3 else (DEFAULT_SIZE, DEFAULT_SIZE)
    cfg = {
        "input_size": (channels, *spatial),
        "mean": (MEAN,) * channels,
        "std": (STD,) * channels,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
    }
    return cfg, [VOLUME_GUESS_NOTE if len(spatial) == 3 else GUESS_NOTE]


_RESNETS = ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200")
_EFFICIENTNETS = tuple(f"efficientnet-b{i}" for i in range(9)) + ("efficientnet-l2",)


def candidates(model: nn.Module, first_channels: int | None):
    """How an in-memory MONAI network might be rebuilt by name: its class (or, for ``ResNet``, the builder
    functions) with the arguments read off its layers; each is checked by rebuilding it."""
    if not type(model).__module__.startswith(NETS_MODULE):
        return
    cls = type(model).__name__
    c = first_conv_channels(model) or 1
    k = last_linear_outputs(model)
    dims = {"spatial_dims": 3} if spatial_dims(model) == 3 else {}
    if cls == "ResNet":
        for name in _RESNETS:
            yield {"kind": KIND, "name": name, "num_classes": k, "model_args": {"n_input_channels": c, **dims}}
        return
    if not is_known(cls):
        return
    params, _ = _params(target(cls))
    args: dict[str, Any] = {"in_channels": c} if "in_channels" in params or "SE" in cls else {}
    args.update(_layer_args(model))
    args.update(dims)
    if cls == "EfficientNetBN":
        for model_name in _EFFICIENTNETS:
            yield {"kind": KIND, "name": cls, "num_classes": k, "model_args": {"model_name": model_name, **args}}
        return
    yield {"kind": KIND, "name": cls, "num_classes": k, "model_args": args}


def _layer_args(model: nn.Module) -> dict[str, Any]:
    """Constructor arguments read off a DenseNet's or SENet's layers (sizes and depths of its blocks)."""
    features = getattr(model, "features", None)
    if type(model).__name__.startswith("DenseNet") and isinstance(features, nn.Module):
        blocks: list[Any] = [m for n, m in features.named_children() if n.startswith("denseblock")]
        conv0 = getattr(features, "conv0", None)
        if not blocks or not isinstance(conv0, (nn.Conv2d, nn.Conv3d)):
            return {}
        layers = blocks[0][0].layers  # the first dense layer: norm1, relu1, conv1 (bottleneck), …, conv2
        growth = int(layers.conv2.out_channels)
        return {
            "init_features": int(conv0.out_channels),
            "growth_rate": growth,
            "block_config": [len(b) for b in blocks],
            "bn_size": int(layers.conv1.out_channels) // growth,
        }
    stages = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
    if type(model).__name__.startswith("SE") and all(isinstance(s, nn.Sequential) for s in stages):
        return {"layers": [len(s) for s in stages if isinstance(s, nn.Sequential)]}
    return {}


_VIT: type[nn.Module] | None = None


def _vit_classifier() -> type[nn.Module]:
    """MONAI's ViT as a classifier: the same parameters (state dicts load as they are), ``forward`` returning
    the logits only (MONAI returns ``(logits, hidden states)``), and timm's ``forward_features`` /
    ``forward_head`` split so the class-token head converts approximately, per patch, like timm's ViTs."""
    global _VIT
    if _VIT is None:
        from monai.networks.nets import ViT

        class ViTClassifier(ViT):
            num_prefix_tokens = 1

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                if not hasattr(self, "classification_head"):
                    raise ValueError("ViT is a classifier only with classification=True")
                patch = kwargs.get("patch_size", 16)
                patch = (patch, patch) if isinstance(patch, int) else tuple(patch)[:2]
                # what timm's patch_embed says: read by the token strategies (not a module: no extra weights)
                object.__setattr__(self, "patch_embed", type("PatchInfo", (), {"patch_size": patch})())

            def forward_features(self, x):
                x = self.patch_embedding(x)
                if hasattr(self, "cls_token"):
                    x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
                for blk in self.blocks:
                    x = blk(x)
                return self.norm(x)

            def forward_head(self, x, pre_logits: bool = False):
                return x[:, 0] if pre_logits else self.classification_head(x[:, 0])

            def forward(self, x):
                return self.forward_head(self.forward_features(x))

            def reset_classifier(self, num_classes: int = 0) -> None:
                self.classification_head = nn.Sequential()  # no layers: the identity

        _VIT = ViTClassifier
    return _VIT
