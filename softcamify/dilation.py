"""Finer evidence grids: a classifier rebuilt with its stride traded for dilation (``output_stride`` 16 or 8).

The same weights in a network whose last stages dilate instead of striding give a 2× or 4× finer last
feature map, hence evidence grid. Which architectures offer it is measured, never listed: the network is
rebuilt with timm's ``output_stride`` or torchvision's ``replace_stride_with_dilation`` on the meta
device, and offered when it builds, takes the same weights and gives a finer grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import sources
from .checkpoints import LoadedModel
from .errors import UsageError
from .model import SoftCAM

__all__ = ["dilate", "output_grids"]


def _feature_grid(
    model: nn.Module,
    size: tuple[int, ...],
    device: str,
    features_layer: str | None = None,
    classifier: str | None = None,
) -> list[int]:
    """[h, w] of ``model``'s last feature map at ``size``, cut as convert cuts it (run on ``device``: "meta"
    computes shapes only)."""
    from .heads import split_model

    x = torch.zeros(1, *size, device=device)
    timm_like = all(callable(getattr(model, m, None)) for m in ("forward_features", "forward_head"))
    with torch.no_grad():
        if timm_like and not (features_layer or classifier):
            f = model.forward_features(x)
        else:
            f = split_model(model, tuple(size), features_layer, classifier).features(x)
    if not isinstance(f, torch.Tensor) or f.ndim != 4:
        raise ValueError("the backbone does not return a feature map")
    nf = getattr(model, "num_features", None)
    nhwc = nf is not None and f.shape[-1] == nf and f.shape[1] != nf
    return [int(f.shape[1]), int(f.shape[2])] if nhwc else [int(f.shape[2]), int(f.shape[3])]


def _built_grid(
    source: dict[str, Any],
    model_args: dict[str, Any] | None,
    size: tuple[int, ...],
    features_layer: str | None,
    classifier: str | None,
) -> tuple[list[int], dict[str, tuple[int, ...]]]:
    """(grid, tensor shapes) of ``source``'s architecture built with ``model_args``: on the meta device (no
    memory, no compute, even for large models), for real when a constructor or forward needs real tensors."""

    def build():
        with torch.random.fork_rng(devices=[]):
            return sources.build(source["kind"], source["name"], source.get("num_classes"), model_args).eval()

    def measure(model, device):
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        return _feature_grid(model, size, device, features_layer, classifier), shapes

    try:
        with torch.device("meta"):
            return measure(build(), "meta")
    except Exception:  # noqa: BLE001 - some constructors and ops need real tensors
        return measure(build(), "cpu")


def _stride_args_text(kind: str, args: dict[str, Any]) -> str:
    key = "output_stride" if kind == "timm" else "replace_stride_with_dilation"
    return f"{key}={args[key]}"


def _why_not_rebuildable(loaded: LoadedModel) -> str:
    source = loaded.source
    if source.get("kind") == "module" and source.get("path"):
        return (
            f"it comes from the pickled module {Path(source['path']).name}, whose architecture "
            "softcamify cannot rebuild with other constructor arguments"
        )
    if source.get("kind") == "module":
        return f"a {source.get('class', 'module')} is not a timm or torchvision network softcamify can rebuild by name"
    if source.get("kind") in ("monai", "import"):
        return f"a {source.get('name')} is not a timm or torchvision network softcamify can rebuild with a finer grid"
    return "softcamify rebuilds only timm and torchvision networks with a finer grid"


def _error_text(e: BaseException) -> str:
    e = e.__cause__ or e  # sources.build wraps the constructor's TypeError
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return (text[:117] + "…" if len(text) > 120 else text).rstrip(".")


def output_grids(
    loaded: LoadedModel,
    grid: list[int] | None = None,
    features_layer: str | None = None,
    classifier: str | None = None,
) -> tuple[dict[int, list[int]], dict[int, str]]:
    """The evidence grids a classifier offers, by ``output_stride``, and why it does not offer the others.

    32 is the model as it is (``grid``, its evidence grid, when known); 16 and 8 are offered when its
    architecture builds with the stride traded for dilation (:func:`softcamify.sources.stride_args`), takes
    the same weights and gives a finer grid. All of that is found by building the network on the meta
    device, never from a table of names.
    """
    source = loaded.source
    kind = source.get("kind")
    size = tuple(loaded.data_config["input_size"])
    if grid is None and kind in ("timm", "torchvision"):
        try:
            grid = _built_grid(source, source.get("model_args"), size, features_layer, classifier)[0]
        except Exception:  # noqa: BLE001 - no grid to show; the finer ones are still measured
            grid = None
    grids: dict[int, list[int]] = {32: list(grid)} if grid is not None else {}
    why: dict[int, str] = {}
    own = {k: tuple(v.shape) for k, v in loaded.module.state_dict().items()}
    for stride in sources.OUTPUT_STRIDES[1:]:
        args = sources.stride_args(kind, source.get("model_args"), stride)
        if args is None:
            why[stride] = _why_not_rebuildable(loaded)
            continue
        shown = _stride_args_text(str(kind), args)
        try:
            finer, shapes = _built_grid(source, args, size, features_layer, classifier)
        except Exception as e:  # noqa: BLE001 - an architecture that does not build with it does not offer it
            why[stride] = f"it does not build with {shown}: {_error_text(e)}"
            continue
        if shapes != own:
            why[stride] = f"its weights do not fit the network built with {shown}"
        elif finer in grids.values():
            why[stride] = f"{shown} leaves its grid at {'×'.join(map(str, finer))}"
        else:
            grids[stride] = finer
    return grids, why


def dilate(
    loaded: LoadedModel, output_stride: int | None, features_layer: str | None = None, classifier: str | None = None
) -> tuple[LoadedModel, list[int] | None]:
    """(the classifier rebuilt at ``output_stride`` with the same weights, the original's grid); the
    classifier itself and None for None or 32."""
    if output_stride is None:
        return loaded, None
    if isinstance(output_stride, bool) or output_stride not in sources.OUTPUT_STRIDES:
        raise UsageError(
            f"output_stride must be 32 (the model as it is), 16 or 8, not {output_stride!r}.", param="output_stride"
        )
    if output_stride == 32:
        return loaded, None
    if isinstance(loaded.module, SoftCAM):
        raise UsageError(
            "output_stride applies when converting a classifier; this is already a SoftCAM "
            "model, whose grid was fixed when it was converted.",
            param="output_stride",
        )
    grids, why = output_grids(loaded, None, features_layer, classifier)
    source = loaded.source
    kind = source.get("kind")
    arch = f"torchvision:{source.get('name')}" if kind == "torchvision" else loaded.architecture
    if output_stride not in grids:
        own = grids.get(32)
        if len(grids) <= 1:
            where = f"its own {'×'.join(map(str, own))} grid" if own else "its own grid"
            offers = f"it offers only {where} (output_stride 32)"
        else:
            offers = f"it offers output_stride {', '.join(map(str, grids))}"
        raise UsageError(
            f"output_stride {output_stride}: {arch} cannot trade stride for dilation "
            f"({why.get(output_stride, 'not offered')}); {offers}.",
            param="output_stride",
        )
    args = sources.stride_args(kind, source.get("model_args"), output_stride)
    with torch.random.fork_rng(devices=[]):
        model = sources.build(kind, source["name"], source.get("num_classes"), args)
    original, _ = sources.cpu_float32(loaded.module)
    model.load_state_dict(original.state_dict())
    model.eval()
    rebuilt = LoadedModel(
        model,
        {**source, "model_args": args},
        dict(loaded.data_config),
        loaded.class_names,
        loaded.path,
        list(loaded.notes),
    )
    return rebuilt, grids.get(32)
