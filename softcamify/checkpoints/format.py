"""The softcamify format: a SoftCAM model as ``.safetensors`` + JSON metadata, rebuilt without pickle.

One metadata key (:data:`~softcamify.io.META_KEY`) holds the whole :class:`~softcamify.model.SoftCAMMeta`
as JSON, with the SHA-256 of the tensor bytes (:data:`CHECKSUM_KEY`) verified on every load. The same
metadata inside a fine-tuning state (``last.pt``) rebuilds the model being trained.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import sources
from ..binary import names_fit
from ..errors import InputError, UnsafeCheckpointError, UsageError
from ..io import META_KEY, atomic_output
from .foreign import (
    _is_state_dict,
    float_weights,
    match_prefixes,
    read_safetensors,
    read_torch,
    safetensors_metadata,
)

CHECKSUM_KEY = "tensor_sha256"  # in the softcamify metadata: SHA-256 of the tensor bytes (verified on load)


def read_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The softcamify metadata of a checkpoint, or None for any other safetensors file."""
    meta = safetensors_metadata(Path(path))
    raw = meta.get(META_KEY)
    if raw is None:
        return None
    try:
        if not isinstance(raw, str):
            raise ValueError
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise InputError(f"{path} has corrupt softcamify metadata (not JSON).") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} has corrupt softcamify metadata (not a JSON object).")
    return data


def save(model: nn.Module, path: str | os.PathLike, force: bool = False) -> Path:
    """Write a SoftCAM model as ``.safetensors`` + JSON metadata, atomically."""
    data = serialize(model)
    with atomic_output(path, force=force) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def serialize(model: nn.Module) -> bytes:
    """The bytes :func:`save` writes (to write them yourself, e.g. into an already open temporary file)."""
    from safetensors.torch import save as to_bytes

    from ..model import SoftCAM, current_versions

    if not isinstance(model, SoftCAM):
        raise UsageError("save() takes a SoftCAM model; convert the classifier first with softcamify.convert().")
    model.meta.versions = current_versions()
    spec = getattr(model.head, "spec", None)
    model.meta.head = spec() if spec is not None else model.meta.head
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    # one metadata key only: safetensors stores the metadata map in hash order, so a single key keeps
    # the file byte-identical for identical inputs
    meta = model.meta.to_dict()
    data = to_bytes(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    # the SHA-256 of the tensor bytes, verified by load(): safetensors itself has no checksum, so a flipped
    # bit in a weight would otherwise load silently. The tensor bytes do not move when the header grows.
    meta[CHECKSUM_KEY] = hashlib.sha256(memoryview(data)[_data_offset(data) :]).hexdigest()
    # in memory: file errors stay OSErrors
    return to_bytes(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def _data_offset(data: bytes | memoryview) -> int:
    """Where the tensor bytes of a serialized safetensors file start (after the 8-byte length and the
    header)."""
    return 8 + int.from_bytes(bytes(data[:8]), "little")


def verify_checksum(path: Path, meta: dict[str, Any]) -> None:
    """Compare the tensor bytes of a softcamify file with the SHA-256 in its metadata (files written before
    softcamify recorded it have none and are not checked)."""
    expected = meta.get(CHECKSUM_KEY)
    if expected is None:
        return
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            fh.seek(_data_offset(fh.read(8)))
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    except OSError as e:
        raise InputError(f"Cannot read {path} ({e.strerror or e}).") from None
    if h.hexdigest() != expected:
        raise InputError(
            f"{path} is corrupt: its weights do not match the checksum written with them; "
            "copy it again or re-create it."
        )


def features_from_source(
    source: dict[str, Any],
    trust_pickle: bool = False,
    input_size: tuple[int, ...] | None = None,
    module: nn.Module | None = None,
) -> tuple[nn.Module, nn.Module | None]:
    """Rebuild the architecture named in a checkpoint's metadata (random weights) and cut it as convert did.

    ``module``: the original classifier (any weights), for models converted from an in-memory module that
    softcamify cannot rebuild by name. Returns (features, traced head); the head is used by approximate
    (per-position) evidence heads.
    """
    import copy

    from ..heads import backbone_of

    kind = source.get("kind")
    if module is not None:
        model = copy.deepcopy(module).to("cpu").float()
    elif kind == "module" and not source.get("path"):
        raise InputError(
            f"This model was converted from an in-memory {source.get('class', 'nn.Module')} that softcamify "
            "cannot rebuild by name; load it in Python with softcamify.load(path, module=<that classifier>), "
            "or convert its state dict with module='package.module:Class' and its model_args for a file that "
            "rebuilds itself."
        )
    elif kind in sources.KINDS:  # timm, torchvision, monai, import (a class of the user's own)
        model = sources.build(kind, source["name"], source.get("num_classes"), source.get("model_args") or {})
    elif kind == "module":
        p = Path(source.get("path", ""))
        if not trust_pickle:
            raise UnsafeCheckpointError(
                f"This model was converted from the pickled module {p}; rebuilding it runs code from that "
                "file, so pass trust_pickle.",
                param="trust_pickle",
            )
        if not p.exists():
            raise InputError(f"This model needs its original pickled module {p}, which no longer exists.")
        model = read_torch(p, trust_pickle=True)
        if not isinstance(model, nn.Module):
            raise InputError(f"{p} no longer holds an nn.Module.")
    else:
        raise InputError(f"Unknown model source kind {kind!r} in softcamify metadata.")
    model.eval()
    return backbone_of(
        model, source.get("split", "timm"), input_size, source.get("features_layer"), source.get("classifier")
    )


def _check_meta(meta: Any) -> None:
    """ValueError when metadata every command relies on is malformed (a damaged or hand-edited file)."""

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    cfg = meta.data_config
    if not isinstance(cfg, dict):
        raise ValueError("data_config is not an object")
    size = cfg.get("input_size")
    dims = meta.spatial_dims
    if dims not in (2, 3) or isinstance(dims, bool):
        raise ValueError(f"spatial_dims {dims!r} is not 2 (images) or 3 (volumes)")
    shape = "[C, H, W]" if dims == 2 else "[C, D, H, W]"
    if not (isinstance(size, list) and len(size) == dims + 1 and all(isinstance(v, int) and v >= 1 for v in size)):
        raise ValueError(f"input_size {size!r} is not {shape}")
    if math.prod(size[1:]) > 89_478_485:  # Pillow's decompression-bomb limit: only exhausts memory
        raise ValueError(f"input_size {size!r} is too large")
    for key in ("mean", "std"):
        v = cfg.get(key)
        if not (isinstance(v, list) and len(v) in (1, size[0]) and all(number(x) for x in v)):
            raise ValueError(f"{key} {v!r} is not a list of {size[0]} numbers")
        if key == "std" and min(v) <= 0:
            raise ValueError(f"std {v!r} is not positive")
    crop = cfg.get("crop_pct")
    if crop is not None and not (number(crop) and 0 < crop <= 1):
        raise ValueError(f"crop_pct {crop!r} is not in (0, 1]")
    if size[-2] * size[-1] / (crop or 1) ** 2 > 89_478_485:  # the resize before the crop
        raise ValueError(f"input_size {size!r} with crop_pct {crop!r} is too large")
    for key in ("interpolation", "crop_mode"):
        if not isinstance(cfg.get(key), (str, type(None))):
            raise ValueError(f"{key} {cfg.get(key)!r} is not a name")
    names, k = meta.class_names, meta.num_classes
    if not (
        isinstance(k, int)
        and k >= 1
        and isinstance(names, list)
        and names_fit(k, len(names))
        and all(isinstance(c, str) for c in names)
    ):
        raise ValueError(f"class_names do not list num_classes ({k!r}) names")


def softcam_from_state(
    meta_dict: dict[str, Any],
    state: dict[str, torch.Tensor],
    path: Path,
    trust_pickle: bool = False,
    module: nn.Module | None = None,
):
    """Rebuild a SoftCAM model from its metadata and weights (a softcamify file or a fine-tuning
    ``last.pt``)."""
    from ..heads import build_head
    from ..model import FORMAT_VERSION, SoftCAM, SoftCAMMeta

    version = meta_dict.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(f"{path} was written by a newer softcamify (format {version}); upgrade softcamify to read it.")
    try:
        meta = SoftCAMMeta.from_dict(meta_dict)
        _check_meta(meta)
        size = tuple(meta.data_config.get("input_size") or ()) or None
        features, source_head = features_from_source(
            meta.source, trust_pickle=trust_pickle, input_size=size, module=module
        )
        head = build_head(meta.head, source_head)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise InputError(f"{path} has incomplete softcamify metadata ({type(e).__name__}: {e}).") from None
    model = SoftCAM(features, head, meta)
    own = model.state_dict()
    state = match_prefixes(state, set(own))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        counts = (
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} mis-shaped "
            f"tensors, e.g. {(missing or unexpected or mismatched)[0]}"
        )
        if module is not None:
            raise InputError(
                f"The module given to load {path} is not the network it was converted from ({counts}); pass "
                f"an instance of {meta.source.get('class') or meta.architecture} built as when it was "
                "converted."
            )
        raise InputError(f"{path} does not match its own metadata ({counts}); the file is corrupt.")
    state, _ = float_weights(state, own, path, "Model")  # a last.pt edited by a quantization tool
    model.load_state_dict(state, strict=True)
    bad = sources.all_finite(state)
    if bad:
        raise InputError(f"{path} contains NaN or Inf values in tensor {bad}; the checkpoint is broken.")
    return model.eval()


_TRAINING_META_KEYS = ("meta", "softcamify", "metadata")
_TRAINING_STATE_KEYS = ("model", "state_dict", "model_state_dict")
_TRAINING_EMA_KEYS = ("model_ema", "state_dict_ema", "ema")


def softcam_from_training_checkpoint(obj: Any, path: Path, ema: bool = False, trust_pickle: bool = False):
    """A SoftCAM model from a fine-tuning state (``last.pt``), or None when ``obj`` is not one."""
    if not isinstance(obj, dict):
        return None
    meta_raw = None
    for key in _TRAINING_META_KEYS:
        value = obj.get(key)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                continue
        if isinstance(value, dict) and {"source", "head", "data_config"} <= set(value):
            meta_raw = value
            break
    if meta_raw is None:
        return None
    keys = _TRAINING_EMA_KEYS if ema else _TRAINING_STATE_KEYS
    state = next((obj[k] for k in keys if _is_state_dict(obj.get(k))), None)
    if state is None:
        what = "EMA weights (model_ema)" if ema else "model weights (model)"
        raise InputError(f"{path} is a softcamify training checkpoint without {what}.")
    return softcam_from_state(meta_raw, state, path, trust_pickle)


def load(
    path: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    device: str | torch.device = "cpu",
    module: nn.Module | None = None,
):
    """Rebuild a SoftCAM model from a softcamify ``.safetensors`` file (no pickle involved).

    ``module``: the original classifier (an instance of its class; its weights do not matter), for a model
    converted from an in-memory network softcamify cannot rebuild by name (a custom class, or a timm model
    built with constructor arguments it cannot see).
    """
    p = Path(path)
    data = read_metadata(p)
    if data is None:
        raise InputError(f"{p} is not a softcamify model (no softcamify metadata); convert it first.")
    # NaN/Inf named by their tensor
    model = softcam_from_state(data, read_safetensors(p), p, trust_pickle, module)
    verify_checksum(p, data)  # any other changed byte
    return model.to(device).eval()
