"""Reading other people's checkpoint files safely: the weights inside, never code.

``.safetensors`` (header validated before anything is read), ``.pth``/``.pt``/``.bin``/``.ckpt`` loaded
with ``weights_only=True`` unless the caller trusts the file (``trust_pickle``), zip members checked
against their CRC-32, and the state dict found inside plain state dicts, timm training checkpoints
(``state_dict``/``state_dict_ema`` + the ``args`` of timm's ``train.py``), Lightning checkpoints and
wrapper prefixes (DDP ``module.``, ``torch.compile``'s ``_orig_mod.``, Lightning ``model.``).
Loading those weights into an architecture says in one sentence why they do not fit when they do not.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import sources
from ..errors import InputError, UnsafeCheckpointError, UsageError
from ..io import META_KEY

_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params")
_EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "state_dict_ema_v2", "ema", "ema_model")
_STRIP_PREFIXES = ("module.", "_orig_mod.", "model.", "net.", "network.", "backbone.")


def _check_file(path: Path, what: str = "Checkpoint") -> None:
    if not path.exists():
        raise InputError(f"{what} {path} does not exist.")
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder, not a file.")
    if path.stat().st_size == 0:
        raise InputError(f"{what} {path} is empty (0 bytes).")


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file (header only), validating the header."""
    _check_file(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise InputError(f"{path} is not a safetensors file (too short for a header).")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > min(size - 8, 100 * 1024 * 1024):
            raise InputError(f"{path} is not a valid safetensors file (header length {n} does not fit the file).")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deep, integers too long
        raise InputError(f"{path} is not a valid safetensors file (its header is not JSON).") from None
    if not isinstance(header, dict):
        raise InputError(f"{path} is not a valid safetensors file (its header is not a JSON object).")
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    safetensors_metadata(path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise InputError(f"{path} is not a valid safetensors file ({str(e).splitlines()[0]}).") from None


def _verify_zip_checksums(path: Path) -> None:
    """torch.load does not check the CRC-32 of zip members: do it, so a flipped bit is an error, not a
    weight."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.compress_type != zipfile.ZIP_STORED:  # torch.save stores; never inflate (zip bombs)
                    continue
                with zf.open(info) as fh:  # raises BadZipFile at the end of a member whose CRC-32 differs
                    while fh.read(1 << 22):
                        pass
    except zipfile.BadZipFile as e:
        if "CRC" in str(e):
            raise InputError(
                f"{path} is corrupt: a checksum does not match ({str(e)[:120]}); copy or download it again."
            ) from None
        raise InputError(f"{path} is not a readable PyTorch checkpoint (a damaged zip archive).") from None
    except Exception:  # noqa: BLE001 - any other damage to the archive is reported by torch.load below
        return


def read_torch(path: Path, trust_pickle: bool = False) -> Any:
    """torch.load with ``weights_only=True`` unless the user trusts the file."""
    _check_file(path)
    _verify_zip_checksums(path)
    if trust_pickle:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            first = str(e).splitlines()[0]
            raise InputError(f"{path} could not be unpickled ({type(e).__name__}: {first}).") from None
    try:
        # torch warns on stderr about pickle protocols and the like: the error below says it in one line
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Unsupported global" in msg or "GLOBAL " in msg:
            raise UnsafeCheckpointError(
                f"{path} contains pickled Python objects that would run code when loaded; "
                "pass trust_pickle only if you trust where the file comes from.",
                param="trust_pickle",
            ) from None
        raise InputError(f"{path} is not a readable PyTorch checkpoint (corrupt or not a checkpoint).") from None
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        OSError,
        KeyError,
        AttributeError,
        IndexError,
        TypeError,
        struct.error,
        UnicodeDecodeError,
    ) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: {first[:120]})."
        ) from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_checkpoint(obj: Any, path: Path, ema: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict inside a checkpoint (plain, timm training, Lightning, ...) and what else it says."""
    info: dict[str, Any] = {}
    notes: list[str] = []
    info["notes"] = notes
    if not isinstance(obj, dict):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a state dict or training checkpoint.")
    if _is_state_dict(obj):
        if ema:
            raise UsageError(f"ema: {path} is a plain state dict with no EMA weights; drop ema.", param="ema")
        return obj, info
    for key in ("arch", "architecture", "model_name"):
        if isinstance(obj.get(key), str):
            info["arch"] = obj[key]
            break
    _read_train_args(obj.get("args"), info)
    hparams = obj.get("hyper_parameters")  # Lightning's save_hyperparameters()
    if isinstance(hparams, dict):
        for key in ("arch", "architecture", "model_name", "backbone", "model", "net", "network"):
            if isinstance(hparams.get(key), str) and hparams[key]:
                info["recorded_arch"] = hparams[key]
                break
    for key in ("class_names", "classes", "label_names"):
        if isinstance(obj.get(key), (list, tuple)) and all(isinstance(c, str) for c in obj[key]):
            info["class_names"] = list(obj[key])
    ema_key = next((k for k in _EMA_KEYS if _is_state_dict(obj.get(k))), None)
    main_key = next((k for k in _STATE_KEYS if _is_state_dict(obj.get(k))), None)
    if ema:
        if ema_key is None:
            raise UsageError(f"ema: {path} has no EMA weights (no state_dict_ema); drop ema.", param="ema")
        return obj[ema_key], info
    if main_key is not None:
        return obj[main_key], info
    if ema_key is not None:
        notes.append(f"{path.name} holds only EMA weights ({ema_key}); using them.")
        return obj[ema_key], info
    packed = next((str(k) for k in obj if str(k).endswith("_packed_params")), None)
    if packed is not None:
        raise InputError(
            f"{path} is the state dict of a quantized model ({packed}, torch.ao.quantization); softcamify needs "
            "float weights: save the model's state dict before quantizing it."
        )
    keys = ", ".join(list(map(str, obj))[:6])
    raise InputError(f"{path} is a dict without model weights (keys: {keys}).")


def _read_train_args(args: Any, info: dict[str, Any]) -> None:
    """What timm's ``train.py`` stores in a checkpoint's ``args`` and needs to rebuild the same model: the
    constructor arguments it passed to ``create_model`` that shape the eval network (``--gp``, ``--in-chans``,
    ``--bn-eps``, ``--model-kwargs``) and the data config (``--img-size``/``--input-size``, ``--mean``,
    ``--std``, ``--crop-pct``, ``--interpolation``)."""
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if not isinstance(args, dict):
        return
    if "arch" not in info and isinstance(args.get("model"), str):
        info["arch"] = args["model"]
    model_args: dict[str, Any] = {}
    if isinstance(args.get("gp"), str) and args["gp"]:
        model_args["global_pool"] = args["gp"]
    if isinstance(args.get("in_chans"), int) and args["in_chans"] > 0:
        model_args["in_chans"] = args["in_chans"]
    bn_eps = args.get("bn_eps")
    if isinstance(bn_eps, float | int) and not isinstance(bn_eps, bool) and bn_eps > 0:
        model_args["bn_eps"] = float(bn_eps)  # changes eval outputs (bn_momentum only affects training)
    if isinstance(args.get("model_kwargs"), dict):
        model_args.update({str(k): v for k, v in args["model_kwargs"].items() if k != "num_classes"})
    if model_args:
        info["model_args"] = model_args
    data: dict[str, Any] = {}
    size = args.get("input_size")
    if isinstance(size, (list, tuple)) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size):
        data["input_size"] = [int(v) for v in size]
    elif isinstance(args.get("img_size"), int) and args["img_size"] > 0:
        data["img_size"] = int(args["img_size"])
    for key in ("mean", "std"):
        v = args.get(key)
        if isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) for x in v):
            data[key] = [float(x) for x in v]
    if isinstance(args.get("crop_pct"), (int, float)) and 0 < args["crop_pct"] <= 1:
        data["crop_pct"] = float(args["crop_pct"])
    if args.get("interpolation") in ("bilinear", "bicubic", "nearest"):
        data["interpolation"] = args["interpolation"]
    if data:
        info["data_config"] = data


def read_weights(path: str | os.PathLike, ema: bool = False, trust_pickle: bool = False):
    """(state dict, info) from a weights file of any supported format."""
    p = Path(path)
    _check_file(p, "Weights file")
    if p.suffix == ".safetensors" or _looks_like_safetensors(p):
        meta = safetensors_metadata(p)
        if META_KEY in meta:
            raise UsageError(
                f"{p} is already a softcamify model; pass it as the model, not as weights.", param="weights"
            )
        if ema:
            raise UsageError(f"ema: {p} is a safetensors state dict with no EMA weights; drop ema.", param="ema")
        return read_safetensors(p), {"notes": []}
    obj = read_torch(p, trust_pickle)
    if isinstance(obj, nn.Module):
        note = f"{p.name} is a pickled {type(obj).__name__}; using its weights."
        return obj.state_dict(), {"notes": [note]}
    return unwrap_checkpoint(obj, p, ema)


def _looks_like_safetensors(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{"


def match_prefixes(sd: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes (DDP ``module.``, ``torch.compile``'s ``_orig_mod.``, Lightning ``model.``)."""
    return strip_prefixes(sd, model_keys)[0]


def strip_prefixes(sd: dict[str, torch.Tensor], model_keys: set[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(``sd`` with wrapper prefixes stripped, the keys left out because they are outside the model).

    A prefix shared by every key is stripped when that matches more of the model's keys; so is one shared
    by most keys, the rest being what a training wrapper keeps beside the model (a weighted loss's
    ``criterion.weight``, a metric's state), which is left out and returned, so that a note can list it.
    """

    def score(d):
        return len(model_keys.intersection(d))

    best, best_score, dropped = sd, score(sd), []
    current, left_out = sd, list[str]()
    for _ in range(4):
        prefix = next((p for p in _STRIP_PREFIXES if current and all(k.startswith(p) for k in current)), None)
        rest: list[str] = []
        if prefix is None:  # most keys under one prefix, a few beside it
            counts: dict[str, int] = {}
            for k in current:
                if "." in k:
                    head = k.split(".", 1)[0] + "."
                    counts[head] = counts.get(head, 0) + 1
            shared = [p for p, n in counts.items() if n * 2 > len(current)]
            if not shared:
                break
            prefix = shared[0]
            rest = [k for k in current if not k.startswith(prefix)]
            if any(k in model_keys for k in rest):  # they belong to the model as it is: not a wrapper
                break
        current = {k[len(prefix) :]: v for k, v in current.items() if k.startswith(prefix)}
        left_out = left_out + rest
        if score(current) > best_score:
            best, best_score, dropped = current, score(current), list(left_out)
    return best, dropped


def float_weights(
    sd: dict[str, torch.Tensor],
    own: dict[str, torch.Tensor],
    path: Path,
    what: str = "Weights",
) -> tuple[dict[str, torch.Tensor], int]:
    """``sd`` with the values a float model can hold faithfully, and how many tensors were dequantized.

    A quantized tensor (``torch.quantize_per_tensor``/``_per_channel``) carries its scale and zero point, so
    it is dequantized exactly. A plain integer (or bool, or complex) tensor where the model has floating-point
    weights is refused (:class:`InputError`): cast to float it would be its quantized integers, not the
    weights (int8 values in a float network give logits of 1e19, and a conversion check relative to them
    passes anything).
    """
    out, dequantized, wrong = dict(sd), 0, []
    for k, v in sd.items():
        target = own.get(k)
        if target is None or not target.is_floating_point():
            continue
        if v.is_quantized:
            out[k] = v.dequantize()
            dequantized += 1
        elif not v.is_floating_point():
            wrong.append(k)
    if wrong:
        k = wrong[0]
        more = f" (and {len(wrong) - 1} more tensors)" if len(wrong) > 1 else ""
        kind = str(sd[k].dtype).removeprefix("torch.")
        raise InputError(
            f"{what} {path} hold tensor {k} as {kind}{more} where the model has floating-point weights: they "
            "are quantized (integer) values, which softcamify cannot use as weights; dequantize the "
            "checkpoint (values × scale) first."
        )
    return out, dequantized


def load_weights_into(model: nn.Module, sd: dict[str, torch.Tensor], path: Path, arch: str) -> list[str]:
    """Load a state dict, or say in one sentence why it does not fit the architecture; returns notes."""
    own = model.state_dict()
    raw_keys = list(sd)
    sd, left_out = strip_prefixes(sd, set(own))
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    mismatched = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        scheme = key_scheme(raw_keys)
        if scheme is not None and missing:
            raise InputError(
                f"Weights {path} do not fit {arch} ({len(missing)} missing tensors, e.g. {missing[0]}): {scheme}",
                param="trust_pickle",
            )
        raise _misfit(model, sd, path, arch, missing, unexpected, mismatched)
    sd, dequantized = float_weights(sd, own, path)
    notes = []
    if left_out:
        shown = ", ".join(left_out[:5]) + (f" and {len(left_out) - 5} more" if len(left_out) > 5 else "")
        notes.append(f"{path.name} also holds {len(left_out)} tensor(s) outside the model, left out: {shown}.")
    if dequantized:
        notes.append(
            f"{path.name} holds {dequantized} quantized tensor(s); they were dequantized with the "
            "scale and zero point stored with them."
        )
    model.load_state_dict(sd, strict=False)
    bad = sources.all_finite(dict(model.state_dict()))
    if bad:
        raise InputError(f"Weights {path} contain NaN or Inf values in tensor {bad}; the checkpoint is broken.")
    return notes


def key_scheme(keys: list[str]) -> str | None:
    """The rest of a one-sentence error when the keys follow another library's naming, with what to do."""
    lower = [k.lower() for k in keys]
    if any(k.startswith(("_conv_stem.", "_blocks.")) for k in keys) or "_fc.weight" in keys:
        return (
            "its keys are named as lukemelas' EfficientNet-PyTorch names them (_conv_stem, _blocks, _fc), not as "
            "timm or torchvision do; build the model with efficientnet_pytorch (EfficientNet.from_name) and pass "
            "it to softcamify.convert(), or save it whole (torch.save(model)) and convert that file with "
            "trust_pickle."
        )
    if any(("/" in k or k.endswith(":0") or k.endswith((".kernel", "/kernel", ".moving_mean"))) for k in lower):
        return (
            "its keys are named as Keras/TensorFlow names them (kernel, moving_mean, '/'-separated layers), not "
            "as PyTorch does; load the weights into the PyTorch model in Python (transposing kernels) and pass "
            "it to softcamify.convert(), or save it whole (torch.save(model)) and convert that file with "
            "trust_pickle."
        )
    if keys and all(k.startswith("module.") for k in keys):
        return (
            "its keys carry DataParallel's module. prefix (stripped) and still do not match, so the architecture "
            "differs; check the architecture name, or save the whole module (torch.save(model.module)) and "
            "convert that file with trust_pickle."
        )
    return None


def _misfit(
    model: nn.Module,
    sd: dict[str, torch.Tensor],
    path: Path,
    arch: str,
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
) -> InputError:
    """The one-sentence error for weights that do not fit ``model``, with the option that would fix it."""
    own = model.state_dict()
    parts = []
    if mismatched:
        k = mismatched[0]
        parts.append(
            f"{len(mismatched)} shape mismatches (e.g. {k}: file {list(sd[k].shape)} vs model {list(own[k].shape)})"
        )
    if missing:
        parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
    replaced = _replaced_head(model, missing, unexpected, sd)
    if replaced:
        return InputError(
            f"Weights {path} have their own classifier head ({replaced}), not {arch}'s: build the model in "
            "Python and pass it to softcamify.convert(), or save the whole module (torch.save(model)) and "
            "convert that file with trust_pickle.",
            param="trust_pickle",
        )
    hint, param = "", None
    if mismatched and not missing and not unexpected:
        hint, param = " or num_classes", "num_classes"
    if unexpected and not missing and all(k.lower().startswith(("aux", "auxlogits")) for k in unexpected):
        hint = " or pass aux_logits=True in model_args (the weights include auxiliary classifiers)"
        param = "model_args"
    first = next((k for k in own if own[k].ndim == 4), None)  # the stem convolution's weight
    if first in mismatched and sd[first].shape[0] == own[first].shape[0]:
        channels = int(sd[first].shape[1])  # same filters, other input channels
        if channels != own[first].shape[1]:
            takes = f" (the weights take {channels}-channel images)"
            if arch.startswith("torchvision:"):
                hint, param = takes, None
            else:
                hint, param = f" or pass in_chans={channels} in model_args{takes}", "model_args"
    return InputError(
        f"Weights {path} do not fit {arch}: {'; '.join(parts)}; check the architecture name{hint}.",
        param=param,
    )


def _replaced_head(model: nn.Module, missing: list[str], unexpected: list[str], sd: dict[str, torch.Tensor]) -> str:
    """A short description of the classifier a fine-tuning script put in place of the architecture's own
    (e.g. ``fc = nn.Sequential(nn.Dropout(), nn.Linear(512, 2))``: ``fc.1.weight`` where ``fc.weight`` is
    expected), or "" when the mismatch is anything else."""
    heads = {k.rsplit(".", 1)[0] for k in sources.classifier_keys(model)}
    for head in heads:
        prefix = head + "."
        if not missing or not all(k.startswith(prefix) for k in missing):
            continue
        if not unexpected or not all(k.startswith(prefix) for k in unexpected):
            continue
        layers = []
        for k in unexpected:
            if k.endswith(".weight") and sd[k].ndim == 2:
                out_f, in_f = sd[k].shape
                layers.append(f"{k[: -len('.weight')]}: Linear {in_f}→{out_f}")
        return ", ".join(layers) or f"{len(unexpected)} tensors under {head}"
    return ""
