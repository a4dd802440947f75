"""One way to run a SoftCAM model, whatever it came from: :func:`load` and the :class:`Runtime` protocol.

``predict``, ``explain``, ``evaluate`` and the demo all get their model here::

    rt = runtime.load("model.onnx")              # onnxruntime; torch is never imported
    rt = runtime.load("model.safetensors")       # PyTorch (also checkpoints, run folders, timm names,
                                                 #   converted on the fly)
    logits, maps = rt(rt.preprocess(img)[None])  # N×K, N×K×h×w float32 numpy

A runtime knows its ``class_names``, its :class:`~softcamify.config.DataConfig` (``data_config`` as a
dict, ``config`` as the checked dataclass) and ``kind`` (``"torch"`` or ``"onnx"``). A single-logit
(sigmoid) model is seen as its exact two-class equivalent (:mod:`softcamify.binary`): two class names,
logits ``(−z/2, z/2)``, maps ``(−A/2, A/2)``; :meth:`Runtime.run` returns the raw outputs.

``export`` and ``finetune`` need the PyTorch module itself: :func:`load_softcam` gives it (the same
sources as :func:`load`, an ``.onnx`` file excepted). Importing this module does not import torch.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from typing_extensions import Unpack

from .binary import classes_phrase, decision_names, names_fit, probabilities, two_class
from .config import DataConfig, resolve_data_config, with_spatial_size
from .errors import InputError, UsageError
from .options import LoadOptions

__all__ = ["Runtime", "TorchRuntime", "OnnxRuntime", "load", "load_softcam", "softmax", "is_onnx_path"]

BUILD_OPTIONS = ("weights", "num_classes", "ema")  # options that build a PyTorch model from a checkpoint


def softmax(logits: Any) -> np.ndarray:
    """Class probabilities from logits N×K (float64); a single logit column is read as a sigmoid
    (:func:`softcamify.binary.probabilities`)."""
    return probabilities(logits)


def is_onnx_path(model: Any) -> bool:
    return isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(".onnx")


class Runtime:
    """A SoftCAM model behind numpy: ``rt(x) -> (logits N×K, maps N×K×h×w)`` for x N×C×H×W float32.

    ``kind`` is ``"torch"`` or ``"onnx"`` (``backend`` its engine's name: ``torch`` / ``onnxruntime``);
    ``module`` is the torch SoftCAM module (``None`` for ONNX); ``notes`` say how the model was obtained
    (converted on the fly, a fixed batch axis ...).
    """

    kind = "abstract"
    backend = "abstract"
    module: Any = None

    def __init__(
        self,
        class_names: Sequence[str],
        config: DataConfig,
        *,
        architecture: str = "",
        description: str = "",
        num_logits: int | None = None,
        notes: Sequence[str] = (),
        volume: Any = None,
    ):
        self.num_logits = len(class_names) if num_logits is None else int(num_logits)
        self.class_names = decision_names(class_names, self.num_logits)
        self.config = config
        self.architecture = architecture
        self.description = description or architecture
        self.notes = list(notes)
        # a volume model's preprocessing (softcamify.volumes.VolumeConfig), None for an image model
        self.volume = volume if volume is not None or len(config.input_size) != 4 else _volume_config({}, config)

    @property
    def data_config(self) -> dict[str, Any]:
        return self.config.to_dict()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_size(self) -> tuple[int, ...]:
        """(C, H, W), or (C, D, H, W) for a volume model."""
        return self.config.input_size

    @property
    def spatial_dims(self) -> int:
        """2 for an image model (``rt(x)`` takes N×C×H×W, maps N×K×h×w), 3 for a volume model (N×C×D×H×W,
        evidence volumes N×K×d×h×w)."""
        return len(self.config.input_size) - 1

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The model's raw outputs for a preprocessed batch: logits N×``num_logits``, maps or ``None``."""
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, maps = self.run(x)
        if maps is None:
            raise InputError(f"{self.description} has no evidence output, so it is not a SoftCAM model.")
        return two_class(np.asarray(logits, dtype=np.float32)), two_class(np.asarray(maps, dtype=np.float32))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Softmax probabilities N×K (what deletion / insertion curves read)."""
        return softmax(self(x)[0])

    def preprocess(self, img: Any) -> np.ndarray:
        """The model's eval transform (timm-compatible) of one image: a path, a Pillow image (converted
        to the model's channels first) or a uint8 array. A volume model takes a volume file (or a
        :class:`softcamify.volumes.Volume`) and returns it ``C×D×H×W`` as its :attr:`volume` config says."""
        if self.volume is not None:
            from .volumes import Volume, preprocess_volume, read_volume

            return preprocess_volume(img if isinstance(img, Volume) else read_volume(img), self.volume)
        return self.config.preprocess(img)


class TorchRuntime(Runtime):
    """A SoftCAM ``nn.Module`` on a torch device (inference mode, float32 numpy in and out)."""

    kind = "torch"
    backend = "torch"

    def __init__(
        self,
        module: Any,
        device: Any = "auto",
        *,
        config: DataConfig | None = None,
        class_names: Sequence[str] | None = None,
        description: str = "",
        notes: Sequence[str] = (),
    ):
        from .device import resolve_device

        self.device = resolve_device(device or "auto")
        self.module = module.to(self.device).eval()
        meta = module.meta
        names = list(meta.class_names) if class_names is None else [str(c) for c in class_names]
        super().__init__(
            names,
            config or resolve_data_config(meta.data_config),
            architecture=meta.architecture,
            description=description,
            num_logits=meta.num_classes,
            notes=notes,
            volume=_volume_config(meta.data_config, config) if int(getattr(meta, "spatial_dims", 2)) == 3 else None,
        )

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            logits, maps = self.module.forward_maps(t)
            return logits.float().cpu().numpy(), maps.float().cpu().numpy()


class OnnxRuntime(Runtime):
    """An ``.onnx`` file run by :class:`softcamify.onnx_runtime.OnnxModel` (no torch involved)."""

    kind = "onnx"
    backend = "onnxruntime"

    def __init__(self, session: Any, *, notes: Sequence[str] = ()):
        self.session = session
        s = session
        super().__init__(
            s.class_names,
            resolve_data_config(s.data_config),
            architecture=s.architecture,
            description=str(s.path),
            num_logits=s.num_logits,
            notes=notes,
            volume=_onnx_volume_config(s),
        )

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self.session.run(np.ascontiguousarray(x, dtype=np.float32))


def _volume_config(data_config: Any, config: DataConfig | None) -> Any:
    """The VolumeConfig a volume model records (else: its input size, as it is; see
    :func:`softcamify.volumes.model_volume_config`)."""
    from .volumes import VOLUME_KEY, model_volume_config

    cfg = dict(data_config or {})
    if config is not None and not cfg.get(VOLUME_KEY):
        cfg["input_size"] = list(config.input_size)
    return model_volume_config(cfg)


def _onnx_volume_config(session: Any) -> Any:
    """The VolumeConfig of a volume model's ONNX export (its softcamify metadata, else its ``volume``
    property), None for an image model."""
    from .volumes import VOLUME_KEY

    if len(session.data_config["input_size"]) != 4:
        return None
    stored = ((session.metadata or {}).get("data_config") or {}).get(VOLUME_KEY)
    if stored is None:
        stored = session.properties.get(VOLUME_KEY)
    return _volume_config({VOLUME_KEY: stored} if stored else {}, resolve_data_config(session.data_config))


def _onnx_runtime(
    model: Any, device: Any, preprocessing: dict[str, Any], class_names: Sequence[str] | None, require_evidence: bool
) -> OnnxRuntime:
    from .onnx_runtime import OnnxModel

    if isinstance(model, OnnxModel):
        if any(v is not None for v in (*preprocessing.values(), class_names)):
            raise UsageError(
                "Preprocessing overrides need an .onnx path, not an already opened OnnxModel.",
                param=tuple(k for k, v in preprocessing.items() if v is not None),
            )
        session = model
    else:
        path = Path(model)
        if path.is_dir():
            raise InputError(f"Model path {path} is a folder, not an .onnx file.")
        if not path.is_file():
            raise InputError(f"Model file {path} does not exist.")
        session = OnnxModel(
            path, device=device if isinstance(device, str) else "auto", class_names=class_names, **preprocessing
        )
    if require_evidence:
        session.require_evidence()
    notes = []
    if session.metadata is None:
        notes.append(f"{session.path.name} has no softcamify metadata; the preprocessing given is used.")
    if session.fixed_batch is not None and session.fixed_batch > 1:
        notes.append(
            f"{session.path.name} takes exactly {session.fixed_batch} images per run (a fixed batch "
            "axis); images are run in groups of that size."
        )
    return OnnxRuntime(session, notes=notes)


def load(
    model: Any,
    *,
    device: Any = "auto",
    crop_mode: str | None = None,
    class_names: Sequence[str] | None = None,
    require_evidence: bool = True,
    **options: Unpack[LoadOptions],
) -> Runtime:
    """A :class:`Runtime` for ``model``, the one loader every command uses.

    ``model``: a :class:`Runtime` (returned as is); a path ending in ``.onnx`` or an opened
    :class:`~softcamify.onnx_runtime.OnnxModel` (onnxruntime, no torch); or anything :func:`load_softcam`
    takes (a SoftCAM module, softcamify ``.safetensors``, a fine-tuning checkpoint or run folder, a
    classifier checkpoint or name, converted on the fly). The ``options``
    (:class:`softcamify.options.LoadOptions`): ``weights``, ``num_classes``, ``ema`` (the EMA weights of a
    training checkpoint), ``model_args`` and ``module`` build a PyTorch model and do not apply to an ``.onnx``
    file; ``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct`` and ``crop_mode`` override the
    model's preprocessing (an ONNX file without softcamify metadata needs ``mean``, ``std`` and, unless its
    graph fixes it, ``input_size``). ``class_names`` renames the classes.
    ``require_evidence=False`` also accepts an ONNX classifier without an evidence output (``predict``).
    """
    if isinstance(model, Runtime):
        return model
    given: dict[str, Any] = {k: v for k, v in options.items() if v is not None and v is not False}
    input_size = given.get("input_size")
    preprocessing = {k: given.get(k) for k in ("mean", "std", "input_size", "interpolation", "crop_pct")}
    preprocessing["crop_mode"] = crop_mode
    onnx_mod = sys.modules.get(f"{__package__}.onnx_runtime")
    if is_onnx_path(model) or (onnx_mod is not None and isinstance(model, onnx_mod.OnnxModel)):
        builds = [k for k in ("weights", "num_classes", "ema", "model_args", "module") if given.get(k)]
        if builds:
            raise UsageError(
                f"{' and '.join(builds)} do not apply to an .onnx model; they build a PyTorch model from a checkpoint.",
                param=tuple(builds),
            )
        return _onnx_runtime(model, device, preprocessing, class_names, require_evidence)
    sc, notes = _load_sized(model, {**given, "class_names": class_names}, input_size)
    mean, std, interpolation, crop_pct = (given.get(k) for k in ("mean", "std", "interpolation", "crop_pct"))
    config = resolve_data_config(
        sc.meta.data_config, mean=mean, std=std, interpolation=interpolation, crop_pct=crop_pct, crop_mode=crop_mode
    )
    desc = os.fspath(model) if isinstance(model, (str, os.PathLike)) else ""
    return TorchRuntime(sc, device, config=config, description=desc, notes=notes)


def _load_sized(model: Any, given: dict[str, Any], input_size: Any) -> tuple[Any, list[str]]:
    """:func:`load_softcam` at ``input_size``: (H, W) or (C, H, W) for an image model, (D, H, W) or (C, D, H, W)
    for a volume model (a three-number size is an image's (C, H, W) unless the model reads volumes)."""
    if input_size is None:
        return load_softcam(model, **given)
    size = tuple(int(v) for v in input_size)
    if len(size) == 4:  # (C, D, H, W): a volume
        return load_softcam(model, **{**given, "input_size": size[1:]})
    try:
        return load_softcam(model, **{**given, "input_size": size[-2:]})
    except UsageError as e:  # a volume model given (D, H, W)
        if len(size) != 3 or "input_size" not in e.params or "-D inputs" not in str(e):
            raise
    return load_softcam(model, **{**given, "input_size": size})


def load_softcam(
    model: Any,
    *,
    strict: bool = False,
    atol: float | None = None,
    output_stride: int | None = None,
    class_names: Sequence[str] | None = None,
    **options: Unpack[LoadOptions],
) -> tuple[Any, list[str]]:
    """The PyTorch SoftCAM model (eval mode) and notes, for ``export``, ``finetune`` and :func:`load`.

    ``model``: a SoftCAM module (``input_size`` then changes a copy's data config), a fine-tuning
    checkpoint (``last.pt``) or run folder, a softcamify ``.safetensors``, or any classifier
    :func:`softcamify.conversion.as_softcam` converts on the fly (checkpoint, timm/torchvision/MONAI name,
    Hugging Face folder); ``strict``, ``atol``, ``output_stride`` and the ``options``
    (:class:`softcamify.options.LoadOptions`) go to it. ``class_names`` rename the classes (a copy's
    metadata: an export records them); their count must be the model's.
    """
    if is_onnx_path(model):
        raise InputError(
            f"model {os.fspath(model)} is an ONNX file; this needs a PyTorch model (a softcamify .safetensors, a "
            "checkpoint or an architecture name).",
            param="model",
        )
    from .conversion import DEFAULT_ATOL, as_softcam
    from .model import SoftCAM

    input_size = options.get("input_size")
    if isinstance(model, SoftCAM):
        sc = model
        if input_size is not None:
            sc = copy.copy(sc)
            sc.meta = copy.deepcopy(sc.meta)
            sc.meta.data_config = with_spatial_size(sc.meta.data_config, input_size)
        return _renamed(sc, class_names).eval(), []
    sc, loaded = as_softcam(
        model, strict=strict, atol=DEFAULT_ATOL if atol is None else atol, output_stride=output_stride, **options
    )
    notes = list(loaded.notes)
    if not loaded.is_softcam:
        notes.append(
            f"{loaded.architecture} was converted to SoftCAM on the fly ({sc.meta.strategy}, "
            f"max |Δlogit| {sc.meta.conversion.get('max_abs_diff', float('nan')):.2g})."
        )
    return _renamed(sc, class_names).eval(), notes


def _renamed(sc: Any, class_names: Sequence[str] | None) -> Any:
    """``sc`` with ``class_names`` in a copy of its metadata (``sc`` itself when none are given)."""
    if class_names is None:
        return sc
    if not names_fit(sc.meta.num_classes, len(class_names)):
        raise UsageError(
            f"{len(class_names)} class names were given but the model has {classes_phrase(sc.meta.num_classes)}.",
            param="class_names",
        )
    sc = copy.copy(sc)
    sc.meta = copy.deepcopy(sc.meta)
    sc.meta.class_names = [str(c) for c in class_names]
    return sc
