"""Reading any supported checkpoint safely, and writing/reading softcamify checkpoints.

In: a timm name (+ weights file), ``timm:``/``torchvision:`` names, ``.safetensors``, ``.pth``/``.pt``
state dicts (also timm training checkpoints with ``state_dict``/``state_dict_ema`` and ``module.``
prefixes), Hugging Face style folders (``config.json`` + ``model.safetensors``), a fine-tuning run
folder, and — only with ``trust_pickle=True`` — pickled ``nn.Module`` files.
Out: ``.safetensors`` with the SoftCAM weights and JSON metadata (:class:`~softcamify.model.SoftCAMMeta`),
rebuilt by :func:`load` without pickle.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import sources
from .binary import names_fit
from .errors import InputError, UnsafeCheckpointError, UsageError
from .io import atomic_output

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar", ".onnx", ".pkl")
_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params")
_EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "state_dict_ema_v2", "ema", "ema_model")
_STRIP_PREFIXES = ("module.", "_orig_mod.", "model.", "net.", "network.", "backbone.")
META_KEY = "softcamify"
CHECKSUM_KEY = "tensor_sha256"  # in the softcamify metadata: SHA-256 of the tensor bytes (verified on load)


@dataclass
class LoadedModel:
    """A model ready for inspection or conversion, with what is known about where it came from."""

    module: nn.Module
    source: dict[str, Any]  # how to rebuild the architecture (kind, name, num_classes, model_args, ...)
    data_config: dict[str, Any]
    class_names: list[str] | None = None
    path: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_softcam(self) -> bool:
        from .model import SoftCAM

        return isinstance(self.module, SoftCAM)

    @property
    def architecture(self) -> str:
        return str(self.source.get("name") or self.source.get("class") or "?")


# --- reading files ----------------------------------------------------------------------------------
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
    """torch.load does not check the CRC-32 of zip members: do it, so a flipped bit is an error, not a weight."""
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
            raise InputError(f"{path} could not be unpickled ({type(e).__name__}: {str(e).splitlines()[0]}).") from None
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
                "pass --trust-pickle only if you trust where the file comes from."
            ) from None
        raise InputError(f"{path} is not a readable PyTorch checkpoint (corrupt or not a checkpoint).") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, AttributeError,
            IndexError, TypeError, struct.error, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: {first[:120]}).") from None


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
            raise UsageError(f"--ema: {path} is a plain state dict with no EMA weights; drop --ema.")
        return obj, info
    for key in ("arch", "architecture", "model_name"):
        if isinstance(obj.get(key), str):
            info["arch"] = obj[key]
            break
    _read_train_args(obj.get("args"), info)
    for key in ("class_names", "classes", "label_names"):
        if isinstance(obj.get(key), (list, tuple)) and all(isinstance(c, str) for c in obj[key]):
            info["class_names"] = list(obj[key])
    ema_key = next((k for k in _EMA_KEYS if _is_state_dict(obj.get(k))), None)
    main_key = next((k for k in _STATE_KEYS if _is_state_dict(obj.get(k))), None)
    if ema:
        if ema_key is None:
            raise UsageError(f"--ema: {path} has no EMA weights (no state_dict_ema); drop --ema.")
        return obj[ema_key], info
    if main_key is not None:
        return obj[main_key], info
    if ema_key is not None:
        notes.append(f"{path.name} holds only EMA weights ({ema_key}); using them.")
        return obj[ema_key], info
    keys = ", ".join(list(map(str, obj))[:6])
    raise InputError(f"{path} is a dict without model weights (keys: {keys}).")


def _read_train_args(args: Any, info: dict[str, Any]) -> None:
    """What timm's ``train.py`` stores in a checkpoint's ``args`` and needs to rebuild the same model: the
    constructor arguments it passed to ``create_model`` that shape the eval network (``--gp``, ``--in-chans``,
    ``--bn-eps``, ``--model-kwargs``) and the
    data config (``--img-size``/``--input-size``, ``--mean``, ``--std``, ``--crop-pct``, ``--interpolation``)."""
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
    if isinstance(args.get("bn_eps"), float | int) and not isinstance(args["bn_eps"], bool) and args["bn_eps"] > 0:
        model_args["bn_eps"] = float(args["bn_eps"])  # changes eval outputs (bn_momentum only affects training)
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
    if isinstance(args.get("interpolation"), str) and args["interpolation"] in ("bilinear", "bicubic", "nearest"):
        data["interpolation"] = args["interpolation"]
    if data:
        info["data_config"] = data


def _apply_train_data_config(cfg: dict[str, Any], train: dict[str, Any], input_size: Any) -> dict[str, Any]:
    """The model's data config with what its training run recorded (``_read_train_args``); an
    ``--input-size`` given now still wins."""
    cfg = dict(cfg)
    channels = int(cfg["input_size"][0])
    if input_size is None:
        if "input_size" in train:
            cfg["input_size"] = [channels, *train["input_size"][1:]]
        elif "img_size" in train:
            cfg["input_size"] = [channels, train["img_size"], train["img_size"]]
    for key in ("mean", "std"):
        v = train.get(key)
        if v is not None:
            cfg[key] = v if len(v) == channels else [sum(v) / len(v)] * channels
    for key in ("crop_pct", "interpolation"):
        if key in train:
            cfg[key] = train[key]
    return cfg


def read_weights(path: str | os.PathLike, ema: bool = False, trust_pickle: bool = False):
    """(state dict, info) from a weights file of any supported format."""
    p = Path(path)
    _check_file(p, "Weights file")
    if p.suffix == ".safetensors" or _looks_like_safetensors(p):
        meta = safetensors_metadata(p)
        if META_KEY in meta:
            raise UsageError(f"{p} is already a softcamify model; pass it as MODEL, not as --weights.")
        if ema:
            raise UsageError(f"--ema: {p} is a safetensors state dict with no EMA weights; drop --ema.")
        return read_safetensors(p), {"notes": []}
    obj = read_torch(p, trust_pickle)
    if isinstance(obj, nn.Module):
        return obj.state_dict(), {"notes": [f"{p.name} is a pickled {type(obj).__name__}; using its weights."]}
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
    def score(d):
        return len(model_keys.intersection(d))

    best, best_score = sd, score(sd)
    current = sd
    for _ in range(4):
        prefix = next((p for p in _STRIP_PREFIXES if current and all(k.startswith(p) for k in current)), None)
        if prefix is None:
            break
        current = {k[len(prefix):]: v for k, v in current.items()}
        if score(current) > best_score:
            best, best_score = current, score(current)
    return best


def load_weights_into(model: nn.Module, sd: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """Load a state dict, or say in one sentence why it does not fit the architecture."""
    own = model.state_dict()
    sd = match_prefixes(sd, set(own))
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    mismatched = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
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
            raise InputError(
                f"Weights {path} have their own classifier head ({replaced}), not {arch}'s: build the model in Python "
                "and pass it to softcamify.convert(), or save the whole module (torch.save(model)) and convert that "
                "file with --trust-pickle."
            )
        hint = " or --num-classes" if mismatched and not missing and not unexpected else ""
        if unexpected and not missing and all(k.lower().startswith(("aux", "auxlogits")) for k in unexpected):
            hint = " or --model-args aux_logits=True (the weights include auxiliary classifiers)"
        first = next((k for k in own if own[k].ndim == 4), None)  # the stem convolution's weight
        if first in mismatched and sd[first].shape[0] == own[first].shape[0] and sd[first].shape[1] != own[first].shape[1]:
            channels = int(sd[first].shape[1])
            hint = (f" or --model-args in_chans={channels} (the weights take {channels}-channel images)"
                    if not arch.startswith("torchvision:") else f" (the weights take {channels}-channel images)")
        raise InputError(f"Weights {path} do not fit {arch}: {'; '.join(parts)}; check the architecture name{hint}.")
    model.load_state_dict(sd, strict=False)
    bad = sources.all_finite(dict(model.state_dict()))
    if bad:
        raise InputError(f"Weights {path} contain NaN or Inf values in tensor {bad}; the checkpoint is broken.")


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


# --- loading a model --------------------------------------------------------------------------------
def _looks_like_path(spec: str) -> bool:
    if spec.startswith(sources._HUB_PREFIXES) or spec.startswith(("timm:", "torchvision:", "tv:")):
        return False
    return os.sep in spec or "/" in spec or spec.lower().endswith(CHECKPOINT_SUFFIXES) or spec.startswith(".")


def _build_named(
    kind: str,
    name: str,
    sd: dict[str, torch.Tensor] | None,
    weights_path: Path | None,
    num_classes: int | None,
    model_args: dict[str, Any] | None = None,
) -> tuple[nn.Module, int]:
    """Build an architecture by name, infer the class count from the weights, load them."""
    model = sources.build(kind, name, None if sd is not None else num_classes, model_args)
    if sd is not None:
        if num_classes is None:
            own_keys = set(model.state_dict())
            matched = match_prefixes(sd, own_keys)
            for key in sources.classifier_keys(model):
                if key in matched and matched[key].ndim >= 1:
                    num_classes = int(matched[key].shape[0])
                    break
        current = _num_outputs(model)
        if num_classes is not None and num_classes != current:
            model = sources.build(kind, name, num_classes, model_args)
        load_weights_into(model, sd, weights_path or Path("?"), f"{kind}:{name}" if kind != "timm" else name)
    model.eval()
    return model, _num_outputs(model)


def _num_outputs(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    keys = sources.classifier_keys(model)
    if keys:
        return int(dict(model.named_parameters())[keys[0]].shape[0])
    return -1


def load_model(
    spec: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    ema: bool = False,
    trust_pickle: bool = False,
    input_size: tuple[int, int] | None = None,
    model_args: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a classifier (or a softcamify model) from a name, file or folder. Never downloads.

    ``model_args`` are passed to the architecture's constructor (e.g. ``{"in_chans": 1}``,
    ``{"global_pool": "max"}``) for models given by name or by a checkpoint's ``arch``.
    """
    model_args = {k: v for k, v in (model_args or {}).items() if k != "num_classes"}
    spec_str = os.fspath(spec)
    path = Path(spec_str)
    if path.exists():
        if weights is not None:
            raise UsageError(f"--weights is for an architecture given by name, but MODEL {path} is already a file or folder.")
        if path.is_dir():
            return _load_folder(path, num_classes=num_classes, ema=ema, trust_pickle=trust_pickle, input_size=input_size,
                                model_args=model_args)
        return _load_file(path, num_classes=num_classes, ema=ema, trust_pickle=trust_pickle, input_size=input_size,
                          model_args=model_args)
    if _looks_like_path(spec_str):
        raise InputError(f"Model file {path} does not exist.")
    kind, name = sources.parse_name(spec_str)
    sd, info, wpath = None, {"notes": []}, None
    if weights is not None:
        wpath = Path(weights)
        sd, info = read_weights(wpath, ema=ema, trust_pickle=trust_pickle)
    elif ema:
        raise UsageError("--ema needs a checkpoint: pass --weights FILE or a checkpoint file as MODEL.")
    model, k = _build_named(kind, name, sd, wpath, num_classes, model_args)
    notes = list(info.get("notes", []))
    if sd is None:
        notes.append(f"{name} has random weights (no --weights given).")
    source = {"kind": kind, "name": name, "num_classes": k, "model_args": model_args}
    return LoadedModel(
        module=model,
        source=source,
        data_config=sources.data_config(model, kind, input_size=input_size),
        class_names=info.get("class_names"),
        path=str(wpath) if wpath else None,
        notes=notes,
    )


def _load_file(path: Path, *, num_classes, ema, trust_pickle, input_size, model_args=None) -> LoadedModel:
    model_args = model_args or {}
    if path.suffix.lower() == ".onnx":
        raise InputError(f"{path} is an ONNX file; this command needs a PyTorch checkpoint (predict and explain accept .onnx).")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        meta = safetensors_metadata(path)
        if META_KEY in meta:
            model = load(path, trust_pickle=trust_pickle)
            if input_size is not None:
                model.meta.data_config = {**model.meta.data_config, "input_size": [model.meta.data_config["input_size"][0], *input_size]}
            return LoadedModel(model, dict(model.meta.source), dict(model.meta.data_config), model.class_names, str(path))
        arch = meta.get("architecture") or meta.get("arch")
        sibling = path.parent / "config.json"
        if not arch and sibling.exists():
            return _load_folder(path.parent, num_classes=num_classes, ema=ema, trust_pickle=trust_pickle,
                                input_size=input_size, weights_file=path, model_args=model_args)
        if not arch:
            raise InputError(
                f"{path} holds weights only; name the architecture, e.g. softcamify convert ARCH --weights {path}."
            )
        sd, info = read_safetensors(path), {"notes": []}
    else:
        obj = read_torch(path, trust_pickle)
        if isinstance(obj, nn.Module):
            return _from_module(obj, path, input_size)
        trained = softcam_from_training_checkpoint(obj, path, ema=ema, trust_pickle=trust_pickle)
        if trained is not None:
            if input_size is not None:
                cfg = trained.meta.data_config
                trained.meta.data_config = {**cfg, "input_size": [cfg["input_size"][0], *input_size]}
            return LoadedModel(trained, dict(trained.meta.source), dict(trained.meta.data_config),
                               trained.class_names, str(path), [f"{path.name} is a softcamify fine-tuning state."])
        sd, info = unwrap_checkpoint(obj, path, ema)
        arch = info.get("arch")
        if not arch:
            raise InputError(
                f"{path} holds weights only; name the architecture, e.g. softcamify convert ARCH --weights {path}."
            )
    kind, name = sources.parse_name(str(arch))
    # the training run's constructor arguments (timm train.py's args), then the ones given now
    model_args = {**info.get("model_args", {}), **(model_args or {})}
    model, k = _build_named(kind, name, sd, path, num_classes, model_args)
    data_config = sources.data_config(model, kind, input_size=input_size)
    notes = list(info.get("notes", []))
    if info.get("model_args") or info.get("data_config"):
        data_config = _apply_train_data_config(data_config, info.get("data_config", {}), input_size)
        used = ", ".join(f"{k2}={v!r}" for k2, v in info.get("model_args", {}).items())
        notes.append(f"{path.name} records its training arguments: built with {used or 'the defaults'} and its "
                     "recorded preprocessing.")
    return LoadedModel(
        module=model,
        source={"kind": kind, "name": name, "num_classes": k, "model_args": model_args},
        data_config=data_config,
        class_names=info.get("class_names"),
        path=str(path),
        notes=notes,
    )


def _from_module(module: nn.Module, path: Path, input_size) -> LoadedModel:
    module.eval()
    bad = sources.all_finite(dict(module.state_dict()))
    if bad:
        raise InputError(f"Model {path} contains NaN or Inf values in tensor {bad}; the checkpoint is broken.")
    from .conversion import module_source

    notes = [f"{path.name} is a pickled {type(module).__name__} (loaded with --trust-pickle)."]
    kind = "timm" if type(module).__module__.startswith("timm.") else "module"
    source = module_source(module)  # a timm / torchvision network: rebuilt by name, no pickle needed later
    if source["kind"] == "module":
        source.update(path=str(path.resolve()), sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                      num_classes=_num_outputs(module))
    else:
        notes.append(f"It is {source['kind']}'s {source['name']}: a converted model rebuilds it by name, without "
                     f"{path.name}.")
    return LoadedModel(module, source, sources.data_config(module, kind, input_size=input_size), None, str(path), notes)


def _load_folder(
    path: Path, *, num_classes, ema, trust_pickle, input_size, weights_file: Path | None = None, model_args=None
) -> LoadedModel:
    for run_file in ("best.safetensors", "last.safetensors"):
        candidate = path / run_file
        if weights_file is None and candidate.exists() and META_KEY in safetensors_metadata(candidate):
            return _load_file(candidate, num_classes=num_classes, ema=ema, trust_pickle=trust_pickle, input_size=input_size)
    config_path = path / "config.json"
    if not config_path.exists():
        raise InputError(f"Folder {path} has no config.json (Hugging Face style) and no best.safetensors (a fine-tuning run).")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{config_path} is not valid JSON.") from None
    arch = config.get("architecture") if isinstance(config, dict) else None
    if not isinstance(arch, str):
        raise InputError(f"{config_path} does not name an 'architecture' (a timm model name).")
    if weights_file is None:
        for name in ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt"):
            if (path / name).exists():
                weights_file = path / name
                break
    if weights_file is None:
        raise InputError(f"Folder {path} has config.json but no model.safetensors or pytorch_model.bin.")
    sd, info = read_weights(weights_file, ema=ema, trust_pickle=trust_pickle)
    cfg_args = config.get("model_args") if isinstance(config.get("model_args"), dict) else {}
    model_args = {k: v for k, v in {**cfg_args, **(model_args or {})}.items() if k != "num_classes"}
    k_cfg = config.get("num_classes")
    kind, name = sources.parse_name(arch)
    model, k = _build_named(kind, name, sd, weights_file, num_classes or k_cfg, model_args)
    labels = config.get("label_names") or config.get("id2label")  # timm's save_for_hf, or transformers' style
    if isinstance(labels, dict):
        labels = [labels.get(str(i), labels.get(i, f"class_{i}")) for i in range(k)]
    class_names = [str(c) for c in labels] if isinstance(labels, list) and len(labels) == k else None
    pcfg = config.get("pretrained_cfg") if isinstance(config.get("pretrained_cfg"), dict) else None
    return LoadedModel(
        module=model,
        source={"kind": kind, "name": name, "num_classes": k, "model_args": model_args},
        data_config=sources.data_config(model, kind, pretrained_cfg=pcfg, input_size=input_size),
        class_names=class_names,
        path=str(path),
        notes=list(info.get("notes", [])),
    )


# --- softcamify checkpoints -------------------------------------------------------------------------
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

    from .model import SoftCAM, current_versions

    if not isinstance(model, SoftCAM):
        raise UsageError("save() takes a SoftCAM model; convert the classifier first with softcamify.convert().")
    model.meta.versions = current_versions()
    model.meta.head = model.head.spec() if hasattr(model.head, "spec") else model.meta.head
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    # one metadata key only: safetensors stores the metadata map in hash order, so a single key keeps
    # the file byte-identical for identical inputs
    meta = model.meta.to_dict()
    data = to_bytes(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    # the SHA-256 of the tensor bytes, verified by load(): safetensors itself has no checksum, so a flipped
    # bit in a weight would otherwise load silently. The tensor bytes do not move when the header grows.
    meta[CHECKSUM_KEY] = hashlib.sha256(memoryview(data)[_data_offset(data) :]).hexdigest()
    return to_bytes(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})  # in memory: file errors stay OSErrors


def _data_offset(data: bytes | memoryview) -> int:
    """Where the tensor bytes of a serialized safetensors file start (after the 8-byte length and the header)."""
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
        raise InputError(f"{path} is corrupt: its weights do not match the checksum written with them; "
                         "copy it again or re-create it.")


def features_from_source(
    source: dict[str, Any],
    trust_pickle: bool = False,
    input_size: tuple[int, int, int] | None = None,
    module: nn.Module | None = None,
) -> tuple[nn.Module, nn.Module | None]:
    """Rebuild the architecture named in a checkpoint's metadata (random weights) and cut it as convert did.

    ``module``: the original classifier (any weights), for models converted from an in-memory module that
    softcamify cannot rebuild by name. Returns (features, traced head); the head is used by approximate
    (per-position) evidence heads.
    """
    import copy

    from .heads import backbone_of

    kind = source.get("kind")
    if module is not None:
        model = copy.deepcopy(module).to("cpu").float()
    elif kind == "module" and not source.get("path"):
        raise InputError(
            f"This model was converted from an in-memory {source.get('class', 'nn.Module')} that softcamify cannot "
            "rebuild by name; load it in Python with softcamify.load(path, module=<that classifier>)."
        )
    elif kind in ("timm", "torchvision"):
        model = sources.build(kind, source["name"], source.get("num_classes"), source.get("model_args") or {})
    elif kind == "module":
        p = Path(source.get("path", ""))
        if not trust_pickle:
            raise UnsafeCheckpointError(
                f"This model was converted from the pickled module {p}; rebuilding it runs code from that file, "
                "so pass --trust-pickle."
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
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and v >= 1 for v in size)):
        raise ValueError(f"input_size {size!r} is not [C, H, W]")
    if size[1] * size[2] > 89_478_485:  # Pillow's decompression-bomb limit: only exhausts memory
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
    if size[1] * size[2] / (crop or 1) ** 2 > 89_478_485:  # the resize before the crop
        raise ValueError(f"input_size {size!r} with crop_pct {crop!r} is too large")
    for key in ("interpolation", "crop_mode"):
        if not isinstance(cfg.get(key), (str, type(None))):
            raise ValueError(f"{key} {cfg.get(key)!r} is not a name")
    names, k = meta.class_names, meta.num_classes
    if not (isinstance(k, int) and k >= 1 and isinstance(names, list) and names_fit(k, len(names))
            and all(isinstance(c, str) for c in names)):
        raise ValueError(f"class_names do not list num_classes ({k!r}) names")


def softcam_from_state(
    meta_dict: dict[str, Any], state: dict[str, torch.Tensor], path: Path, trust_pickle: bool = False,
    module: nn.Module | None = None,
):
    """Rebuild a SoftCAM model from its metadata and weights (a softcamify file or a fine-tuning ``last.pt``)."""
    from .heads import build_head
    from .model import FORMAT_VERSION, SoftCAM, SoftCAMMeta

    version = meta_dict.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(f"{path} was written by a newer softcamify (format {version}); upgrade softcamify to read it.")
    try:
        meta = SoftCAMMeta.from_dict(meta_dict)
        _check_meta(meta)
        size = tuple(meta.data_config.get("input_size") or ()) or None
        features, source_head = features_from_source(meta.source, trust_pickle=trust_pickle, input_size=size,
                                                     module=module)
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
        example = (missing or unexpected or mismatched)[0]
        if module is not None:
            raise InputError(
                f"The module given to load {path} is not the network it was converted from ({len(missing)} missing, "
                f"{len(unexpected)} unexpected, {len(mismatched)} mis-shaped tensors, e.g. {example}); pass an instance "
                f"of {meta.source.get('class') or meta.architecture} built as when it was converted."
            )
        raise InputError(
            f"{path} does not match its own metadata ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} mis-shaped tensors, e.g. {example}); the file is corrupt."
        )
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
    model = softcam_from_state(data, read_safetensors(p), p, trust_pickle, module)  # NaN/Inf named by their tensor
    verify_checksum(p, data)  # any other changed byte
    return model.to(device).eval()
