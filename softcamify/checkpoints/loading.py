"""Loading a classifier (or a softcamify model) from a name, a file or a folder: one :func:`load_model`.

A timm name (+ weights file), ``timm:``/``torchvision:`` names, ``.safetensors``, ``.pth``/``.pt`` state
dicts and training checkpoints, Hugging Face style folders (``config.json`` + ``model.safetensors``), a
fine-tuning run folder, and — only with ``trust_pickle=True`` — pickled ``nn.Module`` files. Never
downloads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from typing_extensions import Unpack

from .. import sources
from ..config import resolve_data_config, with_spatial_size
from ..errors import InputError, UsageError
from ..io import META_KEY
from ..options import PREPROCESSING, LoadOptions
from . import bundle as monai_bundle
from . import foreign
from .format import load, softcam_from_training_checkpoint

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar", ".onnx", ".pkl")


@dataclass
class LoadedModel:
    """A model ready for inspection or conversion, with what is known about where it came from."""

    module: nn.Module
    source: dict[str, Any]  # how to rebuild the architecture (kind, name, num_classes, model_args, ...)
    data_config: dict[str, Any]
    class_names: list[str] | None = None
    path: str | None = None
    notes: list[str] = field(default_factory=list)
    # what the module is, in words, for the conversion report ("timm resnet18 rebuilt from w.pth")
    origin: str = "the module as given"

    @property
    def is_softcam(self) -> bool:
        from ..model import SoftCAM

        return isinstance(self.module, SoftCAM)

    @property
    def architecture(self) -> str:
        return str(self.source.get("name") or self.source.get("class") or "?")


def _apply_train_data_config(cfg: dict[str, Any], train: dict[str, Any], input_size: Any) -> dict[str, Any]:
    """The model's data config with what its training run recorded (``foreign._read_train_args``),
    checked by :func:`softcamify.config.resolve_data_config`; an ``input_size`` given now still wins."""
    channels = int(cfg["input_size"][0])
    size = None
    if input_size is None:
        if "input_size" in train:
            size = [channels, *train["input_size"][1:]]
        elif "img_size" in train:
            size = [channels, train["img_size"], train["img_size"]]
    stats = {}
    for key in ("mean", "std"):  # a run's RGB statistics on a model of other channels: their average
        v = train.get(key)
        if v is not None:
            stats[key] = v if len(v) == channels else [sum(v) / len(v)] * channels
    return resolve_data_config(
        cfg,
        channels=channels,
        input_size=size,
        crop_pct=train.get("crop_pct"),
        interpolation=train.get("interpolation"),
        **stats,
    ).to_dict()


def _looks_like_path(spec: str) -> bool:
    if spec.startswith(sources._HUB_PREFIXES) or spec.lower().startswith(sources.NAME_PREFIXES):
        return False
    return os.sep in spec or "/" in spec or spec.lower().endswith(CHECKPOINT_SUFFIXES) or spec.startswith(".")


def _same_arch(recorded: str, kind: str, name: str) -> bool:
    """True when an architecture recorded in a checkpoint is the one named (``timm:x``, ``x`` alike)."""
    try:
        k2, n2 = sources.parse_name(recorded)
    except InputError:
        return False
    return n2.lower() == name.lower() and (k2 == kind or ":" not in recorded)


def _build_named(
    kind: str,
    name: str,
    sd: dict[str, torch.Tensor] | None,
    weights_path: Path | None,
    num_classes: int | None,
    model_args: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> tuple[nn.Module, int]:
    """Build an architecture by name, infer the class count from the weights, load them (what loading
    them says goes to ``notes``)."""
    model = sources.build(kind, name, None if sd is not None else num_classes, model_args)
    if sd is not None:
        if num_classes is None:
            own_keys = set(model.state_dict())
            matched = foreign.match_prefixes(sd, own_keys)
            for key in sources.classifier_keys(model):
                if key in matched and matched[key].ndim >= 1:
                    num_classes = int(matched[key].shape[0])
                    break
        current = _num_outputs(model)
        if num_classes is not None and num_classes != current:
            model = sources.build(kind, name, num_classes, model_args)
        arch = f"{kind}:{name}" if kind not in ("timm", "import") else name
        said = foreign.load_weights_into(model, sd, weights_path or Path("?"), arch)
        if notes is not None:
            notes.extend(said)
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


def load_model(spec: str | os.PathLike, **options: Unpack[LoadOptions]) -> LoadedModel:
    """Load a classifier (or a softcamify model) from a name, file or folder. Never downloads.

    ``options`` (:class:`softcamify.options.LoadOptions`): ``model_args`` are passed to the architecture's
    constructor (e.g. ``{"in_chans": 1}``, ``{"global_pool": "max"}``) for models given by name or by a
    checkpoint's ``arch``. ``module`` (``"package.module:Class"``) names a class of your own: it is imported
    (never unpickled), built with ``model_args`` and given the weights of ``spec`` (a state dict or
    checkpoint file). ``mean``, ``std``, ``crop_pct`` and ``interpolation`` override the preprocessing found
    (or guessed) for the model; a converted model records them. Where nothing says how a model's images were
    preprocessed (torchvision and pickled models, transformers folders without ``preprocessor_config.json``),
    a note says it was guessed.
    """
    given: dict[str, Any] = dict(options)
    preprocessing = {k: given.pop(k) for k in PREPROCESSING if k in given}
    return with_preprocessing(_load_model(spec, **given), **preprocessing)


def with_preprocessing(loaded: LoadedModel, **given: Any) -> LoadedModel:
    """``loaded`` with the preprocessing the user gave (``mean``, ``std``, ``crop_pct``, ``interpolation``),
    checked by :func:`softcamify.config.resolve_data_config`; notes a guessed preprocessing when none is given."""
    from ..sources.transformers import guessed_note

    given = {k: v for k, v in given.items() if v is not None}
    if given:
        cfg = resolve_data_config(loaded.data_config, channels=int(loaded.data_config["input_size"][0]), **given)
        loaded.data_config = cfg.to_dict()
        loaded.notes = [n for n in loaded.notes if "preprocessing is guessed" not in n]
        if set(PREPROCESSING) - set(given) and not loaded.is_softcam:
            rest = ", ".join(k for k in PREPROCESSING if k not in given)
            loaded.notes.append(f"The preprocessing given ({', '.join(given)}) is recorded; {rest} as found.")
        return loaded
    if not loaded.is_softcam and loaded.source.get("kind") in ("torchvision", "module"):
        if not any("preprocessing is guessed" in n for n in loaded.notes):
            loaded.notes.append(guessed_note(f"{loaded.architecture} records no preprocessing"))
    return loaded


def _load_model(
    spec: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    ema: bool = False,
    trust_pickle: bool = False,
    input_size: tuple[int, ...] | None = None,
    model_args: dict[str, Any] | None = None,
    module: str | None = None,
) -> LoadedModel:
    model_args = {k: v for k, v in (model_args or {}).items() if k != "num_classes"}
    spec_str = os.fspath(spec)
    path = Path(spec_str)
    if module is not None and _is_softcamify(path):  # it records its own backbone: module is not needed
        loaded = _load_model(
            spec, weights=weights, num_classes=num_classes, ema=ema, trust_pickle=trust_pickle, input_size=input_size
        )
        loaded.notes.append(
            f"The class {module} given is not used: {path.name} is a softcamify model, which records how to "
            "rebuild its backbone."
        )
        return loaded
    if module is not None:
        return _load_with_module(module, path, weights, num_classes, ema, trust_pickle, input_size, model_args)
    if path.exists():
        if weights is not None:
            raise UsageError(
                f"weights is for an architecture given by name, but {path} is already a file or folder.",
                param="weights",
            )
        read = _load_folder if path.is_dir() else _load_file
        return read(
            path,
            num_classes=num_classes,
            ema=ema,
            trust_pickle=trust_pickle,
            input_size=input_size,
            model_args=model_args,
        )
    if _looks_like_path(spec_str):
        raise InputError(f"Model file {path} does not exist.")
    kind, name = sources.parse_name(spec_str)
    sd, wpath = None, None
    info: dict[str, Any] = {"notes": []}
    if weights is not None:
        wpath = Path(weights)
        bundle = monai_bundle_root(wpath)
        if bundle is not None:  # a MONAI bundle's weights: its network_def is compared with the name given
            wpath = monai_bundle.weights_file(bundle) if wpath.is_dir() else wpath
            info_notes = _bundle_disagreement(bundle, kind, name, model_args)
        else:
            info_notes = []
        sd, info = foreign.read_weights(wpath, ema=ema, trust_pickle=trust_pickle)
        info.setdefault("notes", []).extend(info_notes)
    elif ema:
        raise UsageError(
            "ema needs a checkpoint: pass weights or a checkpoint file as the model.", param=("ema", "weights")
        )
    model, k = _build_named(kind, name, sd, wpath, num_classes, model_args, info.setdefault("notes", []))
    notes = list(info.get("notes", []))
    recorded = info.get("recorded_arch") or info.get("arch")
    if wpath is not None and isinstance(recorded, str) and not _same_arch(recorded, kind, name):
        notes.append(
            f"{wpath.name} records the architecture {recorded!r}, not {spec_str!r} as given; the weights fit "
            f"{spec_str}, so it was used."
        )
    if sd is None:
        notes.append(f"{name} has random weights (no --weights given).")
    source = {"kind": kind, "name": name, "num_classes": k, "model_args": model_args}
    notes += sources.data_notes(model, kind, input_size)
    return LoadedModel(
        module=model,
        source=source,
        data_config=sources.data_config(model, kind, input_size=input_size),
        class_names=info.get("class_names"),
        path=str(wpath) if wpath else None,
        notes=notes,
        origin=_origin(source, wpath),
    )


def _origin(source: dict[str, Any], weights: Path | None) -> str:
    built = sources.describe({**source, "model_args": source.get("model_args")})
    if weights is None:
        return f"{built} built with random weights"
    return f"{built} rebuilt from the state dict {weights.name}"


def _is_softcamify(path: Path) -> bool:
    """Whether ``path`` is a softcamify ``.safetensors`` model or a fine-tuning run folder holding one."""
    files = [path / "best.safetensors", path / "last.safetensors"] if path.is_dir() else [path]
    for f in files:
        if f.is_file() and (f.suffix == ".safetensors" or foreign._looks_like_safetensors(f)):
            try:
                if META_KEY in foreign.safetensors_metadata(f):
                    return True
            except InputError:  # a damaged file: the loader says so
                return False
    return False


def _load_with_module(
    module: str, path: Path, weights, num_classes, ema, trust_pickle, input_size, model_args
) -> LoadedModel:
    """A class of the user's own (``package.module:Class``, imported) with the weights of ``path``."""
    if weights is not None and path != Path(os.fspath(weights)):
        raise UsageError(
            "module takes the weights file as the model; pass it once, not also as weights.", param="weights"
        )
    sources.source_module("import").split(module)
    if not path.exists():
        if _looks_like_path(str(path)):
            raise InputError(f"Weights file {path} does not exist.")
        raise UsageError(
            f"With module, the model is the weights file of {module} (a state dict or checkpoint), not {str(path)!r}.",
            param="module",
        )
    if path.is_dir():
        raise InputError(f"With module, the model is a weights file; {path} is a folder.")
    sd, info = foreign.read_weights(path, ema=ema, trust_pickle=trust_pickle)
    notes = info.setdefault("notes", [])
    model, k = _build_named("import", module, sd, path, num_classes, model_args, notes)
    source = {"kind": "import", "name": module, "num_classes": k, "model_args": model_args}
    return LoadedModel(
        module=model,
        source=source,
        data_config=sources.data_config(model, "import", input_size=input_size),
        class_names=info.get("class_names"),
        path=str(path),
        notes=list(notes),
        origin=f"{module}({_args_text(model_args)}) built with the weights of {path.name}",
    )


def _args_text(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def _load_file(path: Path, *, num_classes, ema, trust_pickle, input_size, model_args=None) -> LoadedModel:
    model_args = model_args or {}
    arch: Any  # a name in the file's metadata or checkpoint dict
    info: dict[str, Any]
    if path.suffix.lower() == ".onnx":
        raise InputError(
            f"{path} is an ONNX file; this command needs a PyTorch checkpoint (predict and explain accept .onnx)."
        )
    if path.suffix == ".safetensors" or foreign._looks_like_safetensors(path):
        meta = foreign.safetensors_metadata(path)
        if META_KEY in meta:
            return _softcam_loaded(load(path, trust_pickle=trust_pickle), path, input_size)
        arch = meta.get("architecture") or meta.get("arch")
        if not arch and (path.parent / "config.json").exists():
            return _load_folder(
                path.parent,
                num_classes=num_classes,
                ema=ema,
                trust_pickle=trust_pickle,
                input_size=input_size,
                weights_file=path,
                model_args=model_args,
            )
        if not arch:
            raise _weights_only(path)
        sd, info = foreign.read_safetensors(path), {"notes": []}
    else:
        obj = foreign.read_torch(path, trust_pickle)
        if isinstance(obj, nn.Module):
            return _from_module(obj, path, input_size)
        trained = softcam_from_training_checkpoint(obj, path, ema=ema, trust_pickle=trust_pickle)
        if trained is not None:
            note = f"{path.name} is a softcamify fine-tuning state."
            return _softcam_loaded(trained, path, input_size, [note])
        sd, info = foreign.unwrap_checkpoint(obj, path, ema)
        arch = info.get("arch")
        recorded = info.get("recorded_arch")
        if not arch and isinstance(recorded, str) and sources.is_known_name(recorded):
            arch = recorded  # a Lightning checkpoint's hyper_parameters name a known architecture
            info["notes"].append(f"{path.name}: the architecture {recorded!r} comes from its hyper_parameters.")
        if not arch:
            raise _weights_only(path)
    return _from_weights(path, str(arch), sd, info, num_classes, input_size, model_args)


def _weights_only(path: Path) -> InputError:
    return InputError(
        f"{path} holds weights only; name the architecture, e.g. softcamify convert ARCH --weights {path}."
    )


def _softcam_loaded(model, path: Path, input_size, notes: list[str] | None = None) -> LoadedModel:
    """A SoftCAM model read from ``path`` (its own metadata), with an ``input_size`` given now applied."""
    if input_size is not None:
        cfg = model.meta.data_config
        model.meta.data_config = with_spatial_size(cfg, input_size)
    return LoadedModel(
        model, dict(model.meta.source), dict(model.meta.data_config), model.class_names, str(path), list(notes or [])
    )


def _from_weights(
    path: Path,
    arch: str,
    sd: dict[str, torch.Tensor],
    info: dict[str, Any],
    num_classes,
    input_size,
    model_args: dict[str, Any],
) -> LoadedModel:
    """The architecture a checkpoint names, built (with its training run's arguments) and loaded."""
    kind, name = sources.parse_name(arch)
    # the training run's constructor arguments (timm train.py's args), then the ones given now
    model_args = {**info.get("model_args", {}), **(model_args or {})}
    model, k = _build_named(kind, name, sd, path, num_classes, model_args, info.setdefault("notes", []))
    data_config = sources.data_config(model, kind, input_size=input_size)
    notes = list(info.get("notes", []))
    if info.get("model_args") or info.get("data_config"):
        data_config = _apply_train_data_config(data_config, info.get("data_config", {}), input_size)
        used = ", ".join(f"{k2}={v!r}" for k2, v in info.get("model_args", {}).items())
        notes.append(
            f"{path.name} records its training arguments: built with {used or 'the defaults'} and "
            "its recorded preprocessing."
        )
    source = {"kind": kind, "name": name, "num_classes": k, "model_args": model_args}
    return LoadedModel(
        module=model,
        source=source,
        data_config=data_config,
        class_names=info.get("class_names"),
        path=str(path),
        notes=notes + sources.data_notes(model, kind, input_size),
        origin=_origin(source, path),
    )


# modules that compute on quantized (integer) tensors: no float weights to convert
_QUANTIZED_MODULES = ("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized")


def _from_module(module: nn.Module, path: Path, input_size) -> LoadedModel:
    quantized = next(
        ((n, m) for n, m in module.named_modules() if type(m).__module__.startswith(_QUANTIZED_MODULES)), None
    )
    if quantized is not None:
        raise InputError(
            f"Model {path} is quantized ({quantized[0] or 'the model'} is a "
            f"{type(quantized[1]).__module__.split('.modules')[0]}.{type(quantized[1]).__name__}); "
            "softcamify converts float models: save the model before quantizing it."
        )
    module.eval()
    bad = sources.all_finite(dict(module.state_dict()))
    if bad:
        raise InputError(f"Model {path} contains NaN or Inf values in tensor {bad}; the checkpoint is broken.")
    notes = [f"{path.name} is a pickled {type(module).__name__} (loaded with --trust-pickle)."]
    from ..sources import transformers as hf

    if hf.is_hf_model(module):  # rebuilt from its config later, without the pickle
        wrapped, source, cfg, names, more = hf.from_module(module)
        if input_size is not None:
            cfg = with_spatial_size(cfg, input_size)
        return LoadedModel(wrapped, source, cfg, names, str(path), notes + more)
    # a timm / torchvision / MONAI network or an importable class: rebuilt by name, never from the pickle
    source = sources.module_source(module)
    kind = "timm" if type(module).__module__.startswith("timm.") else source["kind"]
    if source["kind"] == "module":
        source["num_classes"] = _num_outputs(module)
        notes.append(
            f"softcamify cannot rebuild this {source['class']} by name, so a converted file could not be read "
            f"without {path.name}: save its state_dict and convert it with module='package.module:Class' "
            "and its model_args instead."
        )
    else:
        notes.append(f"It is {sources.describe(source)}: a converted model rebuilds it by name, without {path.name}.")
    data_config = sources.data_config(module, kind, input_size=input_size)
    notes += sources.data_notes(module, kind, input_size)
    return LoadedModel(module, source, data_config, None, str(path), notes, origin=f"the pickled module {path.name}")


def monai_bundle_root(path: Path) -> Path | None:
    return monai_bundle.bundle_root(path)


def _bundle_disagreement(root: Path, kind: str, name: str, model_args: dict[str, Any]) -> list[str]:
    """A note when the architecture named now is not the one the bundle's network_def describes."""
    try:
        b_name, b_args = monai_bundle.network_def(root)
    except InputError as e:
        return [f"The bundle's network_def could not be read ({e}); built {kind}:{name} as named."]
    b_args = {k: v for k, v in b_args.items() if k not in ("out_channels", "num_classes")}
    given = {k: v for k, v in model_args.items() if k in b_args}
    if kind == "monai" and name == b_name and all(b_args.get(k) == v for k, v in given.items()):
        return []
    described = sources.describe({"kind": "monai", "name": b_name, "model_args": b_args})
    return [
        f"The bundle's configs/inference.json describes {described}, but {kind}:{name} was named: built "
        f"{kind}:{name} as named; leave the name out (softcamify convert {root}) to build the bundle's network."
    ]


def _load_bundle(root: Path, *, num_classes, input_size, model_args) -> LoadedModel:
    """A MONAI bundle: the network of ``network_def`` (monai.networks.nets only) with ``models/model.pt``."""
    name, b_args = monai_bundle.network_def(root)
    classes_arg = sources.source_module("monai").classes_argument(name)
    recorded = b_args.pop(classes_arg, None)
    b_args.pop("pretrained", None)
    args = {**b_args, **(model_args or {})}
    wpath = monai_bundle.weights_file(root)
    sd, info = foreign.read_weights(wpath)  # weights_only: a bundle never needs pickle
    notes = info.setdefault("notes", [])
    k_given = num_classes or (recorded if isinstance(recorded, int) else None)
    model, k = _build_named("monai", name, sd, wpath, k_given, args, notes)
    source = {"kind": "monai", "name": name, "num_classes": k, "model_args": args}
    notes.append(f"{root.name} is a MONAI bundle: built {sources.describe(source)} from its configs/inference.json.")
    notes += sources.data_notes(model, "monai", input_size)
    return LoadedModel(
        module=model,
        source=source,
        data_config=sources.data_config(model, "monai", input_size=input_size),
        class_names=None,
        path=str(root),
        notes=list(notes),
        origin=f"{sources.describe(source)} built from the bundle's network_def with {WEIGHTS_TEXT}",
    )


WEIGHTS_TEXT = "models/model.pt"


def _load_folder(
    path: Path,
    *,
    num_classes,
    ema,
    trust_pickle,
    input_size,
    weights_file: Path | None = None,
    model_args=None,
) -> LoadedModel:
    for run_file in ("best.safetensors", "last.safetensors"):
        candidate = path / run_file
        if weights_file is None and candidate.exists() and META_KEY in foreign.safetensors_metadata(candidate):
            return _load_file(
                candidate, num_classes=num_classes, ema=ema, trust_pickle=trust_pickle, input_size=input_size
            )
    if weights_file is None and monai_bundle.bundle_root(path) == path:
        return _load_bundle(path, num_classes=num_classes, input_size=input_size, model_args=model_args)
    config_path = path / "config.json"
    if not config_path.exists():
        raise InputError(
            f"Folder {path} has no config.json (Hugging Face style), no configs/inference.json (a MONAI bundle) "
            "and no best.safetensors (a fine-tuning run)."
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{config_path} is not valid JSON.") from None
    from ..sources import transformers as hf

    if hf.is_hf_config(config):  # a transformers save_pretrained folder
        weights_file = hf.weights_of(path, weights_file)
        for f in hf.weight_files(weights_file):  # each shard of a sharded save
            foreign.read_weights(f)  # a damaged file or pickled code is refused in one sentence first
        module, source, cfg, names, notes = hf.read_folder(path, config, weights_file, num_classes)
        if input_size is not None:
            cfg = with_spatial_size(cfg, input_size)
        return LoadedModel(module, source, cfg, names, str(path), notes)
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
    sd, info = foreign.read_weights(weights_file, ema=ema, trust_pickle=trust_pickle)
    cfg_args = config.get("model_args") if isinstance(config.get("model_args"), dict) else {}
    model_args = {k: v for k, v in {**cfg_args, **(model_args or {})}.items() if k != "num_classes"}
    k_cfg = config.get("num_classes")
    kind, name = sources.parse_name(arch)
    model, k = _build_named(
        kind, name, sd, weights_file, num_classes or k_cfg, model_args, info.setdefault("notes", [])
    )
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
        origin=f"{sources.describe({'kind': kind, 'name': name, 'model_args': model_args})} rebuilt from "
        f"{weights_file.name}",
    )
