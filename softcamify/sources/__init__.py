"""Building a classifier from a name (timm or torchvision), with random weights, and its data config.

Nothing here downloads: models are created with ``pretrained=False`` / ``weights=None`` and weights
come only from files the user names.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

import torch
from torch import nn

from ..config import resolve_data_config
from ..errors import InputError, UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HUB_PREFIXES = ("hf-hub:", "hf_hub:", "hf:", "http://", "https://")


def parse_name(spec: str) -> tuple[str, str]:
    """'torchvision:resnet50' -> ('torchvision', 'resnet50'); 'timm:x' or 'x' -> ('timm', 'x')."""
    if spec.startswith(_HUB_PREFIXES):
        raise InputError(
            f"{spec!r} names a model on a hub; softcamify never downloads: download it and pass the file or folder."
        )
    if ":" in spec:
        kind, name = spec.split(":", 1)
        kind = kind.lower()
        if kind in ("tv", "torchvision"):
            return "torchvision", name
        if kind == "timm":
            return "timm", name
        if kind in ("transformers", "hf-transformers"):
            return "transformers", name
        raise InputError(f"{spec!r}: unknown model source {kind!r}; use timm:NAME, torchvision:NAME or a file path.")
    return "timm", spec


def is_known_name(spec: str) -> bool:
    try:
        kind, name = parse_name(spec)
    except InputError:
        return False
    if kind == "torchvision":
        return True
    import timm

    return timm.is_model(name)


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def build(kind: str, name: str, num_classes: int | None = None, model_args: dict[str, Any] | None = None) -> nn.Module:
    """A model with random weights; ``num_classes=None`` keeps the architecture's default."""
    model_args = dict(model_args or {})
    if kind == "transformers":  # rebuilt from the config recorded in model_args["config"]
        from .transformers import build as build_transformers

        return build_transformers(name, num_classes, model_args)
    if kind == "timm":
        import timm

        if not timm.is_model(name):
            raise InputError(
                f"{name!r} is neither an existing file nor a timm architecture{_suggest(name, timm.list_models())}."
            )
        if num_classes is not None:
            model_args["num_classes"] = num_classes
        try:
            return timm.create_model(name, pretrained=False, **model_args)
        except TypeError as e:
            raise UsageError(f"timm cannot build {name!r} with {model_args}: {e}.") from e
    if kind == "torchvision":
        import torchvision

        names = torchvision.models.list_models()
        if name not in names:
            raise InputError(f"{name!r} is not a torchvision model{_suggest(name, names)}.")
        if num_classes is not None:
            model_args["num_classes"] = num_classes
        if name.startswith(("inception", "googlenet")):
            model_args.setdefault("aux_logits", False)
            model_args.setdefault("init_weights", True)
        return torchvision.models.get_model(name, weights=None, **model_args)
    raise InputError(f"unknown model source {kind!r}")


OUTPUT_STRIDES = (32, 16, 8)  # --output-stride: 32 is the model as it is; 16 and 8 dilate its last stage(s)


def stride_args(kind: str | None, model_args: dict[str, Any] | None, output_stride: int) -> dict[str, Any] | None:
    """Constructor arguments that rebuild a named network with a finer output stride, or None.

    timm builders take ``output_stride`` (ResNet & co., RegNet, EfficientNet/MobileNet, ConvNeXt …);
    torchvision's ResNet builders take ``replace_stride_with_dilation`` (16: the last stage dilated,
    8: the last two). Whether a given architecture accepts them is found by building it, not by name.
    Networks softcamify cannot rebuild by name (``kind == "module"``) have no such arguments.
    """
    args = dict(model_args or {})
    if kind == "timm":
        args["output_stride"] = int(output_stride)
        return args
    if kind == "torchvision":
        args["replace_stride_with_dilation"] = [False, output_stride <= 8, output_stride <= 16]
        return args
    return None


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
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1)):
            last = f"{qualname}.weight"
    return [last] if last else []


def first_conv_channels(model: nn.Module) -> int | None:
    """Image channels read by the first convolution, when that is plausibly the input layer.

    Stems that rearrange the image first (TResNet's space-to-depth gives 48 channels) are not
    image channels: only 1–4 channels count, anything else returns None.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels) if 1 <= m.in_channels <= 4 else None
        if isinstance(m, nn.Linear):  # e.g. patch embedding as Linear: no conv seen first
            return None
    return None


def data_config(
    model: nn.Module,
    kind: str,
    pretrained_cfg: dict[str, Any] | None = None,
    input_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Preprocessing the model expects (timm's data config; ImageNet defaults elsewhere), JSON-friendly."""
    cfg: dict[str, Any]
    if kind == "timm" or pretrained_cfg:
        from timm.data import resolve_data_config as timm_data_config

        try:
            cfg = dict(timm_data_config(pretrained_cfg=pretrained_cfg, model=None if pretrained_cfg else model))
        except Exception:
            cfg = {}
    else:
        cfg = {}
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
    h, w = (int(cfg["input_size"][1]), int(cfg["input_size"][2])) if input_size is None else input_size
    if input_size is not None:
        cfg["crop_pct"] = float(cfg.get("crop_pct") or 1.0)
    return resolve_data_config(
        {
            "input_size": [channels, h, w],
            "mean": mean,
            "std": std,
            "interpolation": str(cfg.get("interpolation") or "bilinear"),
            "crop_pct": float(cfg.get("crop_pct") or 1.0),
            "crop_mode": str(cfg.get("crop_mode") or "center"),
        }
    ).to_dict()


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
    k = getattr(model, "num_classes", None)
    in_chans = first_conv_channels(model)
    if hasattr(model, "pretrained_cfg") and hasattr(model, "forward_head"):  # timm
        arch = (getattr(model, "pretrained_cfg", {}) or {}).get("architecture")
        if isinstance(arch, str):
            args = {"in_chans": in_chans} if in_chans and in_chans != 3 else {}
            yield {"kind": "timm", "name": arch, "num_classes": k, "model_args": args}
    module = type(model).__module__
    if module.startswith("torchvision.models"):
        import torchvision

        keys = classifier_keys(model)
        k = int(dict(model.named_parameters())[keys[0]].shape[0]) if keys else None
        for name in torchvision.models.list_models(module=torchvision.models):
            if torchvision.models.get_model_builder(name).__module__ == module:
                yield {"kind": "torchvision", "name": name, "num_classes": k, "model_args": {}}


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
