"""Hugging Face transformers image classifiers: ``save_pretrained`` folders and in-memory models.

A transformers classifier returns a ``ModelOutput`` and keeps its pooling inside the base model, so
softcamify sees it through :class:`HFClassifier`: ``forward`` is the original forward's ``.logits``
(what a conversion is verified against), ``forward_features`` the base model's ``last_hidden_state``
(a feature map, or tokens for Swin and ViT) and ``forward_head`` the original pooling and classifier on
it, written out so that the head strategies read them: ResNet (average pool → Linear), ConvNeXt (mean →
LayerNorm → Linear: the pooled-norm strategy), EfficientNet (mean or max pool → Linear), Swin (token mean
→ Linear) and ViT (class token → Linear: approximate only).

Nothing is downloaded, and nothing is unpickled: a folder is rebuilt from its ``config.json`` and its
weights read from ``model.safetensors`` (or ``pytorch_model.bin`` with ``weights_only``; either may be sharded,
with its ``.index.json``). A converted
model records the config itself, so it rebuilds without the folder.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, UsageError

KIND = "transformers"
EXTRA = "pip install 'softcamify[transformers]'"

#: classifier class → attribute of its base model
SUPPORTED = {
    "ResNetForImageClassification": "resnet",
    "ConvNextForImageClassification": "convnext",
    "ConvNextV2ForImageClassification": "convnextv2",
    "EfficientNetForImageClassification": "efficientnet",
    "SwinForImageClassification": "swin",
    "ViTForImageClassification": "vit",
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: PIL resample codes of ``preprocessor_config.json`` → softcamify interpolation names
_RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bilinear"}


def require() -> Any:
    """The transformers package, or an :class:`InputError` naming the extra to install."""
    try:
        import transformers
    except ImportError:
        raise InputError(
            f"This is a Hugging Face transformers model, and transformers is not installed: {EXTRA}."
        ) from None
    return transformers


def is_hf_model(model: nn.Module) -> bool:
    """True for a transformers ``...ForImageClassification`` module (checked without importing transformers)."""
    return type(model).__module__.startswith("transformers.") and hasattr(model, "config")


def is_hf_config(config: Any) -> bool:
    """True for a transformers ``config.json`` (``architectures`` + ``model_type``), not timm's."""
    return isinstance(config, dict) and isinstance(config.get("architectures"), list) and "model_type" in config


class HFClassifier(nn.Module):
    """A transformers image classifier as softcamify reads it: logits out, features and head apart."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.arch = type(model).__name__
        if self.arch not in SUPPORTED:
            raise InputError(
                f"{self.arch} is not a transformers classifier softcamify converts "
                f"(it converts {', '.join(sorted(SUPPORTED))})."
            )
        self.base = SUPPORTED[self.arch]
        config: Any = model.config
        self.num_classes = int(config.num_labels)
        if self.base == "vit":
            self.num_prefix_tokens = 1
            ps = int(config.patch_size)
            self.patch_embed = types.SimpleNamespace(patch_size=(ps, ps))
        elif self.base == "swin":
            self.num_prefix_tokens = 0
            ps = int(config.patch_size) * 2 ** (len(config.depths) - 1)
            self.patch_embed = types.SimpleNamespace(patch_size=(ps, ps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.base)(pixel_values=x).last_hidden_state

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        m: Any = self.model
        if self.base == "resnet":
            return m.classifier(m.resnet.pooler(f))
        if self.base in ("convnext", "convnextv2"):
            return m.classifier(getattr(m, self.base).layernorm(f.mean([-2, -1])))
        if self.base == "efficientnet":
            pooled = f.mean((2, 3)) if m.config.pooling_type == "mean" else f.amax((2, 3))
            return m.classifier(m.dropout(pooled))
        if self.base == "swin":
            return m.classifier(f.mean(1))  # = AdaptiveAvgPool1d over the tokens
        return m.classifier(f[:, 0, :])  # vit: the class token


def wrap(model: nn.Module) -> HFClassifier:
    return model if isinstance(model, HFClassifier) else HFClassifier(model)


def build(name: str, num_classes: int | None, model_args: dict[str, Any] | None) -> HFClassifier:
    """A classifier of class ``name`` with random weights from the config dict in ``model_args["config"]``."""
    transformers = require()
    config = dict((model_args or {}).get("config") or {})
    if name not in SUPPORTED:
        converts = ", ".join(sorted(SUPPORTED))
        raise InputError(f"{name!r} is not a transformers classifier softcamify converts (it converts {converts}).")
    cls = getattr(transformers, name, None)
    if cls is None:
        raise InputError(f"transformers {transformers.__version__} has no {name}; upgrade transformers.")
    model_type = config.pop("model_type", None)
    try:
        cfg = transformers.AutoConfig.for_model(model_type, **config) if model_type else cls.config_class(**config)
    except (ValueError, TypeError) as e:
        raise InputError(f"The transformers config of {name} cannot be built ({str(e).splitlines()[0]}).") from None
    if num_classes is not None and num_classes != cfg.num_labels:
        cfg.num_labels = int(num_classes)
    with torch.random.fork_rng(devices=[]):
        model = cls(cfg)
    return HFClassifier(model.eval())


def config_dict(model: Any) -> dict[str, Any]:
    """The model's config as JSON (what rebuilds it), without what only the Hub or training need."""
    d = json.loads(model.config.to_json_string(use_diff=False))
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_attn_implementation_autoset"):
        d.pop(key, None)
    return d


def source_of(model: HFClassifier) -> dict[str, Any]:
    return {
        "kind": KIND,
        "name": model.arch,
        "num_classes": model.num_classes,
        "model_args": {"config": config_dict(model.model)},
    }


def class_names(config: Any) -> list[str] | None:
    """``id2label`` in class order, or None when it only holds transformers' ``LABEL_i`` defaults."""
    labels = config.get("id2label") if isinstance(config, dict) else getattr(config, "id2label", None)
    if not isinstance(labels, dict) or not labels:
        return None
    try:
        ordered = [str(labels[k]) for k in sorted(labels, key=int)]
    except (TypeError, ValueError):
        return None
    if all(name == f"LABEL_{i}" for i, name in enumerate(ordered)):
        return None
    return ordered


def default_data_config(model: HFClassifier) -> dict[str, Any]:
    """The preprocessing when no ``preprocessor_config.json`` says it: the config's image size, ImageNet stats."""
    size = getattr(model.model.config, "image_size", None)
    size = int(size) if isinstance(size, int) and size > 0 else 224
    channels = int(getattr(model.model.config, "num_channels", 3) or 3)
    mean = list(IMAGENET_MEAN) if channels == 3 else [sum(IMAGENET_MEAN) / 3] * channels
    std = list(IMAGENET_STD) if channels == 3 else [sum(IMAGENET_STD) / 3] * channels
    return {
        "input_size": [channels, size, size],
        "mean": mean,
        "std": std,
        "interpolation": "bilinear",
        "crop_pct": 0.875,
        "crop_mode": "center",
    }


def preprocessor_data_config(pre: dict[str, Any], channels: int) -> dict[str, Any]:
    """A ``preprocessor_config.json`` as softcamify's data config (checked by ``resolve_data_config``).

    ``size`` ({height, width} is resized as it is; {shortest_edge} with ``crop_pct`` is resized and
    center-cropped), ``resample`` (PIL codes), ``rescale_factor`` and ``image_mean``/``image_std`` (folded
    together: softcamify scales images to [0, 1] first), ``crop_pct``.
    """
    from ..config import resolve_data_config

    size = pre.get("size")
    crop = pre.get("crop_size") if pre.get("do_center_crop") else None
    crop_pct: float | None = None
    mode = "center"
    if isinstance(size, int):
        size = {"shortest_edge": size}
    if isinstance(crop, dict) and "height" in crop:
        hw = [int(crop["height"]), int(crop["width"])]
        edge = size.get("shortest_edge") if isinstance(size, dict) else None
        crop_pct = min(1.0, hw[0] / int(edge)) if edge else None
    elif isinstance(size, dict) and "height" in size:
        hw = [int(size["height"]), int(size["width"])]
        mode, crop_pct = "squash", 1.0
    elif isinstance(size, dict) and "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        hw = [edge, edge]
        crop_pct = pre.get("crop_pct") if edge < 384 else 1.0  # ConvNeXt: ≥ 384 is warped without a crop
    else:
        raise InputError(f"preprocessor_config.json has a size softcamify does not read ({size!r}).")
    scale = float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0
    unit = scale * 255.0  # softcamify's images are in [0, 1]: x·scale = (x/255)·unit
    if pre.get("do_normalize", True):
        mean = [float(v) / unit for v in pre.get("image_mean", [0.5] * channels)]
        std = [float(v) / unit for v in pre.get("image_std", [0.5] * channels)]
    else:
        mean, std = [0.0] * channels, [1.0 / unit] * channels
    resample = pre.get("resample")
    interpolation = _RESAMPLE.get(resample, "bilinear") if isinstance(resample, int) else None
    return resolve_data_config(
        {"input_size": [channels, *hw], "mean": mean, "std": std},
        channels=channels,
        interpolation=interpolation or "bilinear",
        crop_pct=float(crop_pct) if crop_pct else None,
        crop_mode=mode,
    ).to_dict()


#: the weights of a ``save_pretrained`` folder, in transformers' order: one file, or the index of its shards
WEIGHTS_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
INDEX_SUFFIX = ".index.json"


def weights_of(path: Path, weights_file: Path | None) -> Path:
    """The weights file of a ``save_pretrained`` folder: one file, or the index of its shards (written by
    ``save_pretrained(max_shard_size=...)``)."""
    if weights_file is None:
        weights_file = next((path / n for n in WEIGHTS_NAMES if (path / n).exists()), None)
    if weights_file is None:
        raise InputError(
            f"Folder {path} has a transformers config.json but no model.safetensors or pytorch_model.bin "
            "(nor a sharded model.safetensors.index.json)."
        )
    return weights_file


def weight_files(weights_file: Path) -> list[Path]:
    """The files that hold the tensors of ``weights_file``: itself, or the shards its index names (each a
    plain file name beside the index, as ``save_pretrained`` writes them)."""
    if not weights_file.name.endswith(INDEX_SUFFIX):
        return [weights_file]
    try:
        index = json.loads(weights_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{weights_file} is not a valid shard index (JSON with a weight_map).") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise InputError(f"{weights_file} is not a valid shard index (JSON with a weight_map).")
    names = sorted({str(v) for v in weight_map.values()})
    outside = next((n for n in names if Path(n).name != n or n in (".", "..")), None)
    if outside is not None:
        raise InputError(f"{weights_file} names the shard {outside!r} outside its folder; shards lie beside the index.")
    missing = next((n for n in names if not (weights_file.parent / n).is_file()), None)
    if missing is not None:
        raise InputError(f"{weights_file} names the shard {missing}, which is not in {weights_file.parent}.")
    return [weights_file.parent / n for n in names]


def read_folder(path: Path, config: dict[str, Any], weights_file: Path, num_classes: int | None):
    """(HFClassifier with the folder's weights, source, data config, class names, notes) of a
    ``save_pretrained`` folder whose ``weights_file`` the caller has checked (safetensors, or a
    ``.bin`` that loads weights-only). Nothing is unpickled."""
    archs = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    name = next((a for a in archs if a in SUPPORTED), archs[0] if archs else "?")
    if name not in SUPPORTED:
        raise InputError(f"{path} holds a transformers {name}; softcamify converts {', '.join(sorted(SUPPORTED))}.")
    require()
    k_file = config.get("num_labels") or (len(config["id2label"]) if isinstance(config.get("id2label"), dict) else None)
    if num_classes is not None and k_file is not None and num_classes != k_file:
        raise UsageError(
            f"num_classes {num_classes} disagrees with {path / 'config.json'}, which has {k_file} labels.",
            param="num_classes",
        )
    model = _from_pretrained(name, path, weights_file)
    notes: list[str] = []
    channels = int(config.get("num_channels", 3) or 3)
    pre_path = path / "preprocessor_config.json"
    if pre_path.exists():
        try:
            pre = json.loads(pre_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(f"{pre_path} is not valid JSON.") from None
        if not isinstance(pre, dict):
            raise InputError(f"{pre_path} is not a JSON object.")
        data_config = preprocessor_data_config(pre, channels)
    else:
        data_config = default_data_config(model)
        notes.append(guessed_note(f"{path.name} has no preprocessor_config.json"))
    source = source_of(model)
    if config.get("problem_type"):
        source["problem_type"] = config["problem_type"]
    return model, source, data_config, class_names(config), notes


def _from_pretrained(name: str, path: Path, weights_file: Path) -> HFClassifier:
    """transformers' own loader on the local folder (its key renames across versions), weights only, no download."""
    import inspect

    transformers = require()
    cls = getattr(transformers, name)
    log = transformers.utils.logging
    verbosity, bars = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()  # its warnings and progress bars: missing keys are reported below, in one sentence
    log.disable_progress_bar()
    safetensors = weights_file.name.startswith("model.safetensors") or weights_file.suffix == ".safetensors"
    kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": safetensors}
    if "weights_only" in inspect.signature(cls.from_pretrained).parameters:
        kwargs["weights_only"] = True  # older versions load .bin files weights-only anyway
    try:
        model, loading = cls.from_pretrained(str(path), output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        raise InputError(f"transformers cannot read {path} ({str(e).splitlines()[0][:200]}).") from None
    finally:
        log.set_verbosity(verbosity)
        if bars:
            log.enable_progress_bar()
    missing = [k for k in loading.get("missing_keys", []) if not k.endswith("num_batches_tracked")]
    bad = list(loading.get("mismatched_keys", []))
    if missing or bad:
        what = f"{len(missing)} missing tensors (e.g. {missing[0]})" if missing else f"{len(bad)} shape mismatches"
        raise InputError(f"Weights {weights_file} do not fit the {name} of {path / 'config.json'}: {what}.")
    return HFClassifier(model.eval())


def guessed_note(why: str) -> str:
    return (
        f"{why}: the preprocessing is guessed (ImageNet mean/std, crop 0.875); "
        "if the model was trained otherwise, give them (--mean, --std, --crop-pct, --interpolation; in Python "
        "mean, std, crop_pct, interpolation)."
    )


def from_module(model: nn.Module):
    """(HFClassifier, source, data config, class names, notes) of an in-memory transformers classifier."""
    wrapped = wrap(model)
    source = source_of(wrapped)
    problem = getattr(wrapped.model.config, "problem_type", None)
    if problem:
        source["problem_type"] = problem
    data_config = default_data_config(wrapped)
    notes = [guessed_note(f"{wrapped.arch} carries no preprocessing")]
    return wrapped, source, data_config, class_names(wrapped.model.config), notes


# --- the functions every source module of softcamify.sources offers -------------------------------------


def is_known(name: str) -> bool:
    """``transformers:NAME`` names a supported classifier class (it is rebuilt from a recorded config)."""
    return name in SUPPORTED


def names() -> list[str]:
    """The transformers classifier classes softcamify converts."""
    return sorted(SUPPORTED)


def stride_args(model_args: dict[str, Any], output_stride: int) -> dict[str, Any] | None:
    """No finer grids: transformers' configs have no output-stride argument softcamify could set."""
    return None


def data_defaults(model: nn.Module, pretrained_cfg: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """The preprocessing of a transformers model without ``preprocessor_config.json``, and no note (the
    loader says when it was guessed)."""
    return (default_data_config(model) if isinstance(model, HFClassifier) else {}), []


def candidates(model: nn.Module, first_channels: int | None):
    """Sources to try for an in-memory model: none (a wrapped model records its own config)."""
    return iter(())
