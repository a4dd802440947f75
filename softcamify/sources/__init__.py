"""Building a classifier from a name, with random weights, and its data config: one module per source.

``timm`` and ``torchvision`` (core dependencies), ``monai`` (the optional extra ``softcamify[monai]``) and
``import`` (a class of the user's own, ``package.module:Class``, imported, never unpickled). Each module
offers the same few functions (``build``, ``is_known``, ``names``, ``data_defaults``, ``stride_args``,
``candidates``); the functions here dispatch by kind. Nothing here downloads: models are created with
``pretrained=False`` / ``weights=None`` and weights come only from files the user names.
"""

from __future__ import annotations

import copy
import importlib
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ..config import resolve_data_config
from ..errors import InputError
from ._util import first_conv_channels, spatial_dims, suggest

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VOLUME_SIZE = (96, 96, 96)  # D, H, W of a volume model that records no size (MONAI's common patch size)
_HUB_PREFIXES = ("hf-hub:", "hf_hub:", "hf:", "http://", "https://")
KINDS = ("timm", "torchvision", "monai", "transformers", "import")  # the registry: kind -> sources.<module>
_MODULES = {
    "timm": "timm",
    "torchvision": "torchvision",
    "monai": "monai",
    "transformers": "transformers",
    "import": "imported",
}
_ALIASES = {
    "tv": "torchvision",
    "torchvision": "torchvision",
    "timm": "timm",
    "monai": "monai",
    "transformers": "transformers",
    "hf-transformers": "transformers",
}
NAME_PREFIXES = tuple(f"{a}:" for a in _ALIASES)  # names, never paths


def source_module(kind: str) -> ModuleType:
    """The module of a source kind (``timm``, ``torchvision``, ``monai``, ``import``)."""
    if kind not in _MODULES:
        raise InputError(f"Unknown model source kind {kind!r}; softcamify knows {', '.join(KINDS)}.")
    return importlib.import_module(f"{__name__}.{_MODULES[kind]}")


def parse_name(spec: str) -> tuple[str, str]:
    """'torchvision:resnet50' -> ('torchvision', 'resnet50'); 'monai:DenseNet121' -> ('monai', 'DenseNet121');
    'timm:x' or 'x' -> ('timm', 'x')."""
    if spec.startswith(_HUB_PREFIXES):
        raise InputError(
            f"{spec!r} names a model on a hub; softcamify never downloads: download it and pass the file or folder."
        )
    if ":" in spec:
        kind, name = spec.split(":", 1)
        if kind.lower() in _ALIASES:
            return _ALIASES[kind.lower()], name
        raise InputError(
            f"{spec!r}: unknown model source {kind!r}; use timm:NAME, torchvision:NAME, monai:NAME, a file path "
            "or a Hugging Face folder (a class of your own: module='package.module:Class')."
        )
    return "timm", spec


def is_known_name(spec: str) -> bool:
    try:
        kind, name = parse_name(spec)
        return bool(source_module(kind).is_known(name))
    except InputError:
        return False


def _suggest(name: str, candidates: list[str]) -> str:
    return suggest(name, candidates)


def build(kind: str, name: str, num_classes: int | None = None, model_args: dict[str, Any] | None = None) -> nn.Module:
    """A model with random weights; ``num_classes=None`` keeps the architecture's default."""
    return source_module(kind).build(name, num_classes, dict(model_args or {}))


def describe(source: dict[str, Any]) -> str:
    """'timm resnet18', 'monai DenseNet121 (spatial_dims=2, in_channels=1)', 'mypkg.nets:Net' …"""
    kind, name = source.get("kind"), source.get("name") or source.get("class") or "?"
    args = ", ".join(f"{k}={v!r}" for k, v in (source.get("model_args") or {}).items())
    text = f"{kind} {name}" if kind in _MODULES and kind != "import" else str(name)
    return f"{text} ({args})" if args else text


OUTPUT_STRIDES = (32, 16, 8)  # --output-stride: 32 is the model as it is; 16 and 8 dilate its last stage(s)


def stride_args(kind: str | None, model_args: dict[str, Any] | None, output_stride: int) -> dict[str, Any] | None:
    """Constructor arguments that rebuild a named network with a finer output stride, or None.

    timm builders take ``output_stride`` (ResNet & co., RegNet, EfficientNet/MobileNet, ConvNeXt …);
    torchvision's ResNet builders take ``replace_stride_with_dilation`` (16: the last stage dilated,
    8: the last two). Whether a given architecture accepts them is found by building it, not by name.
    Networks softcamify cannot rebuild by name (``kind == "module"``), MONAI's and the user's own classes
    have no such arguments.
    """
    if kind not in _MODULES:
        return None
    return source_module(kind).stride_args(dict(model_args or {}), output_stride)


def classifier_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the classifier weight(s): timm's pretrained_cfg, else the last Linear/1×1 conv."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    names = cfg.get("classifier")
    if names:
        names = [names] if isinstance(names, str) else list(names)
        keys = [f"{n}.weight" for n in names]
        params = dict(model.named_parameters())
        keys = [k for k in keys if k in params]
        if keys:
            return keys
    last = None
    for qualname, m in model.named_modules():
        if isinstance(m, nn.Linear) or (isinstance(m, (nn.Conv2d, nn.Conv3d)) and set(m.kernel_size) == {1}):
            last = f"{qualname}.weight"
    return [last] if last else []


def check_input_size(model: nn.Module, input_size: tuple[int, ...] | None) -> None:
    """Raise :class:`UsageError` when ``input_size`` (spatial: H, W or D, H, W) has another number of axes than
    the model reads (:func:`spatial_dims`)."""
    if input_size is None:
        return
    dims = spatial_dims(model)
    if len(input_size) != dims:
        from ..errors import UsageError

        want = "D,H,W (3 numbers)" if dims == 3 else "H,W (or one number)"
        raise UsageError(
            f"input_size {'×'.join(map(str, input_size))} has {len(input_size)} axes but {type(model).__name__} "
            f"reads {dims}-D inputs; give {want}.",
            param="input_size",
        )


def data_config(
    model: nn.Module,
    kind: str,
    pretrained_cfg: dict[str, Any] | None = None,
    input_size: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Preprocessing the model expects (timm's data config; the source's defaults, ImageNet's elsewhere),
    JSON-friendly. :func:`data_notes` says when it is a guess. ``input_size`` is spatial: (H, W), or
    (D, H, W) for a volume model (one whose first convolution is a ``Conv3d``)."""
    check_input_size(model, input_size)
    cfg, _ = _defaults(model, kind, pretrained_cfg)
    if spatial_dims(model) == 3:  # a volume model: D, H, W (defaults written for images do not apply)
        if len(cfg.get("input_size") or ()) != 4:
            cfg["input_size"] = (3, *VOLUME_SIZE)
        cfg["crop_pct"] = 1.0
    cfg.setdefault("input_size", (3, 224, 224))
    cfg.setdefault("interpolation", "bilinear")
    cfg.setdefault("mean", IMAGENET_MEAN)
    cfg.setdefault("std", IMAGENET_STD)
    cfg.setdefault("crop_pct", 0.875)
    cfg.setdefault("crop_mode", "center")
    channels = first_conv_channels(model) or int(cfg["input_size"][0])
    mean, std = list(cfg["mean"]), list(cfg["std"])
    if len(mean) != channels:
        mean = [sum(mean) / len(mean)] * channels
        std = [sum(std) / len(std)] * channels
    spatial = [int(v) for v in cfg["input_size"][1:]] if input_size is None else [int(v) for v in input_size]
    if input_size is not None:
        cfg["crop_pct"] = float(cfg.get("crop_pct") or 1.0)
    return resolve_data_config(
        {
            "input_size": [channels, *spatial],
            "mean": mean,
            "std": std,
            "interpolation": str(cfg.get("interpolation") or "bilinear"),
            "crop_pct": float(cfg.get("crop_pct") or 1.0),
            "crop_mode": str(cfg.get("crop_mode") or "center"),
        }
    ).to_dict()


def _defaults(model: nn.Module, kind: str, pretrained_cfg: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    if pretrained_cfg:
        kind = "timm"
    if kind not in _MODULES:
        return {}, []
    cfg, notes = source_module(kind).data_defaults(model, pretrained_cfg)
    return dict(cfg), list(notes)


def data_notes(model: nn.Module, kind: str, input_size: tuple[int, ...] | None = None) -> list[str]:
    """What a reader of the data config should know: the preprocessing of a MONAI model is a guess."""
    cfg, notes = _defaults(model, kind, None)
    spatial = list(input_size) if input_size else list((cfg.get("input_size") or (0, 224))[1:])
    size = spatial[0] if len(spatial) <= 2 else "×".join(map(str, spatial))
    return [n.format(size=size) for n in notes]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def all_finite(state_dict: dict[str, torch.Tensor]) -> str | None:
    """Name of the first floating tensor holding NaN or Inf, or None."""
    for k, v in state_dict.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all():
            return k
    return None


# --- identifying an in-memory network, and a CPU float32 view of it -----------------------------------


def module_source(model: nn.Module) -> dict[str, Any]:
    """How a saved SoftCAM model of ``model`` (an in-memory classifier) rebuilds its backbone.

    A timm model by its architecture name, a torchvision model by the builder whose network it is; each is
    rebuilt and checked (same tensors, same outputs), since constructor arguments softcamify cannot see
    (``output_stride=16``, ``head_norm_first=True``…) would otherwise rebuild a different network. Anything
    else is ``{"kind": "module"}``, which :func:`softcamify.save` refuses with a way out.
    """
    cls = f"{type(model).__module__}.{type(model).__qualname__}"
    from .transformers import HFClassifier, source_of

    if isinstance(model, HFClassifier):  # its config rebuilds it exactly
        return source_of(model)
    for candidate in _candidate_sources(model):
        if _rebuilds(model, candidate):
            return candidate
    return {"kind": "module", "class": cls}


def _candidate_sources(model: nn.Module):
    first = first_conv_channels(model)
    for kind in KINDS:
        mod = _MODULES[kind]
        if kind in ("monai", "transformers") and not type(model).__module__.startswith(f"{kind}."):
            continue  # never import monai or transformers for a model that is not one of theirs
        yield from importlib.import_module(f"{__name__}.{mod}").candidates(model, first)


def _rebuilds(model: nn.Module, source: dict[str, Any]) -> bool:
    """True when ``source`` builds a network with ``model``'s tensors that, given its weights, computes the same."""

    def rebuild():
        with torch.random.fork_rng(devices=[]):
            return build(source["kind"], source["name"], source.get("num_classes"), source.get("model_args"))

    own = model.state_dict()
    rebuilt = None
    try:
        with torch.device("meta"):  # tensors without storage: a candidate's shapes at no cost (even ViT-H)
            new = rebuild().state_dict()
    except Exception:  # noqa: BLE001 - some constructors need real tensors: build it for real
        try:
            rebuilt = rebuild()
        except Exception:  # noqa: BLE001 - a candidate that does not build is simply not the model
            return False
        new = rebuilt.state_dict()
    if own.keys() != new.keys() or any(own[k].shape != new[k].shape for k in own):
        return False
    if rebuilt is None:
        rebuilt = rebuild()
    original, _ = cpu_float32(model)
    rebuilt.load_state_dict(original.state_dict())
    rebuilt.eval()
    size = tuple(data_config(original, source["kind"])["input_size"])
    if len(size) == 4:  # a volume model (3D convolutions are slow on the CPU): 32³ tells them apart
        size = (size[0], 32, 32, 32)
    elif source["kind"] == "monai":  # fully convolutional and slow on the CPU at 224 px: 64 px tells them apart
        size = (size[0], 64, 64)
    x = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))
    training = original.training
    original.eval()  # compared in eval mode; the caller's model keeps its mode
    with torch.no_grad():
        try:
            a, b = original(x), rebuilt(x)
        except Exception:  # noqa: BLE001
            return False
        finally:
            original.train(training)
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.shape == b.shape
        and bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6))
    )


def cpu_float32(module: nn.Module) -> tuple[nn.Module, torch.device]:
    """(``module`` on the CPU in float32 — itself when it already is, else a copy —, its original device)."""
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    on_cpu_fp32 = all(
        t.device.type == "cpu" and t.dtype in (torch.float32, torch.int64, torch.bool)
        for t in [*module.parameters(), *module.buffers()]
    )
    if on_cpu_fp32:
        return module, device
    return copy.deepcopy(module).to("cpu").float(), device
