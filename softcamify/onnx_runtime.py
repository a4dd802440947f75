"""Run a softcamify ONNX export in onnxruntime, and read its metadata — without torch.

This is the deployment path: it needs only onnxruntime and numpy (images come from
:mod:`softcamify.images`, which needs Pillow). Importing this module never imports torch, timm or
torchvision, and a test checks it.

An export written by ``softcamify export`` has one input ``input`` (float32 N×C×H×W, normalized
pixels) and two outputs, ``logits`` (N×K) and ``evidence`` (N×K×h×w, whose spatial mean is the
logits), and carries its preprocessing and class names in ``metadata_props`` (see
:data:`METADATA_KEYS`). Any other single-input ONNX image classifier can be run too when the
preprocessing is given explicitly (``mean``, ``std``, ``input_size``); its first output (or the one
named ``logits``) is read as logits, and it has no evidence maps. A graph exported with a fixed batch
size (no dynamic batch axis) is run on groups of that many images, so any number of images works.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .binary import classes_phrase as _classes_phrase
from .binary import names_fit
from .config import DATA_KEYS, resolve_data_config
from .errors import InputError, UsageError
from .io import META_KEY  # the whole SoftCAMMeta JSON (plus an "export" entry)
from .threads import tune_onnxruntime

INPUT_NAME = "input"
LOGITS_NAME = "logits"
EVIDENCE_NAME = "evidence"

# metadata_props written by softcamify export (values are strings; lists are JSON).
METADATA_KEYS = (
    META_KEY,  # the whole softcamify metadata as JSON (source, strategy, data config, conversion, ...)
    "softcamify_version",
    "format_version",
    "architecture",
    "source_kind",
    "strategy",
    "exact",  # "true" / "false"
    "num_classes",
    "class_names",  # JSON list
    "input_size",  # JSON [C, H, W]
    "mean",  # JSON list
    "std",  # JSON list
    "interpolation",
    "crop_pct",
    "crop_mode",
    "layout",
    "dynamic_spatial",  # "true" / "false"
    "outputs",
    "logits_output",  # the output holding the logits, when not 'logits' (a graph rewritten by convert model.onnx)
    "evidence_output",  # the output holding the evidence maps, when not 'evidence'
)

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _json_or_none(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return text


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict of strings (read by onnxruntime, no torch)."""
    return dict(OnnxModel(path, _metadata_only=True).properties)


def providers_for(device: str | None) -> list[str]:
    """onnxruntime execution providers for a ``--device`` value (auto: CUDA when onnxruntime has it)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    value = (device or "auto").strip().lower()
    if value == "cpu":
        return ["CPUExecutionProvider"]
    if value == "auto":
        return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]
    if value.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise UsageError(
                f"device {device}: this onnxruntime has no CUDA provider (install onnxruntime-gpu); use device cpu.",
                param="device",
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise UsageError(f"device {device!r} is not supported for an .onnx model; use auto, cpu or cuda.", param="device")


class OnnxModel:
    """An ONNX image classifier (a softcamify export, or any classifier with explicit preprocessing).

    ``model.run(x)`` takes float32 N×C×H×W (already preprocessed) and returns ``(logits N×K,
    evidence N×K×h×w)``; ``evidence`` is ``None`` for a model without an ``evidence`` output.
    ``class_names``, ``data_config`` (input_size [C, H, W], mean, std, interpolation, crop_pct,
    crop_mode) and ``metadata`` (the softcamify metadata dict, or ``None``) describe the model.
    Keyword overrides take precedence over the file's metadata; without softcamify metadata,
    ``mean``, ``std`` and ``input_size`` are required (a static input shape gives the size).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        input_size: Sequence[int] | None = None,
        interpolation: str | None = None,
        crop_pct: float | None = None,
        crop_mode: str | None = None,
        class_names: Sequence[str] | None = None,
        device: str | None = "cpu",
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        _metadata_only: bool = False,
    ):
        self.path = Path(path)
        self._check_file()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: no warnings on stderr for a deployment run
        tune_onnxruntime(opts, intra_op_threads)  # no spinning threads on a busy machine
        if _metadata_only:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=opts, providers=list(providers or providers_for(device))
            )
        except Exception as e:  # InvalidProtobuf, InvalidGraph, Fail, NotImplemented, ...
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            if len(first) > 200:
                first = first[:200] + "…"
            raise InputError(
                f"{self.path} is not an ONNX model onnxruntime can load ({type(e).__name__}: {first})."
            ) from None
        self.properties: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map or {})
        self.metadata: dict[str, Any] | None = self._softcamify_metadata()
        if _metadata_only:
            return
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise InputError(
                f"{self.path} has {len(inputs)} inputs ({names}); softcamify runs image classifiers with one input."
            )
        self.input = inputs[0]
        if len(self.input.shape) not in (4, 5):
            raise InputError(
                f"{self.path} takes a {len(self.input.shape)}-d input; an image classifier takes N×C×H×W "
                "(a volume classifier N×C×D×H×W)."
            )
        if self.input.type not in _ORT_DTYPES:
            raise InputError(f"{self.path} takes {self.input.type} input; softcamify feeds float images.")
        self._input_dtype = _ORT_DTYPES[self.input.type]
        outputs = {o.name: o for o in self.session.get_outputs()}
        # a graph rewritten by softcamify (convert model.onnx) names its logits and evidence outputs
        named_logits = self.properties.get("logits_output")
        named_evidence = self.properties.get("evidence_output")
        if named_logits in outputs:
            self.logits_name = str(named_logits)
        else:
            self.logits_name = LOGITS_NAME if LOGITS_NAME in outputs else next(iter(outputs))
        if named_evidence in outputs:
            self.evidence_name: str | None = str(named_evidence)
        else:
            self.evidence_name = EVIDENCE_NAME if EVIDENCE_NAME in outputs else None
        try:
            self.data_config = self._data_config(mean, std, input_size, interpolation, crop_pct, crop_mode)
            self.class_names = self._class_names(class_names, outputs[self.logits_name].shape)
            self.num_logits = self._num_logits(outputs[self.logits_name].shape)
        except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as e:
            # metadata_props edited by hand or by another tool: wrong types, wrong lengths
            raise InputError(
                f"{self.path} has malformed preprocessing metadata ({type(e).__name__}: {str(e)[:120]}); "
                "re-export it with softcamify export or give mean, std and input_size.",
                param=("mean", "std", "input_size"),
            ) from None

    # --- what the file says ----------------------------------------------------------------------
    def _check_file(self) -> None:
        p = self.path
        if not p.exists():
            raise InputError(f"Model file {p} does not exist.")
        if p.is_dir():
            raise InputError(f"Model path {p} is a folder, not an .onnx file.")
        if p.stat().st_size == 0:
            raise InputError(f"Model file {p} is empty (0 bytes).")

    def _softcamify_metadata(self) -> dict[str, Any] | None:
        raw = self.properties.get(META_KEY)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, nested too deep, integers too long
            raise InputError(f"{self.path} has corrupt softcamify metadata (not JSON).") from None
        if not isinstance(data, dict):
            raise InputError(f"{self.path} has corrupt softcamify metadata (not a JSON object).")
        return data

    @property
    def is_softcam(self) -> bool:
        """True for a softcamify export (metadata present and an ``evidence`` output)."""
        return self.metadata is not None and self.evidence_name is not None

    @property
    def has_evidence(self) -> bool:
        return self.evidence_name is not None

    @property
    def architecture(self) -> str:
        if self.metadata:
            src = self.metadata.get("source") or {}
            return str(src.get("name") or src.get("class") or "?")
        return self.properties.get("architecture") or self.path.stem

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_size(self) -> tuple[int, ...]:
        """(C, H, W), or (C, D, H, W) for a volume model."""
        return tuple(int(v) for v in self.data_config["input_size"])

    @property
    def spatial_dims(self) -> int:
        """2 for an image model (N×C×H×W input), 3 for a volume model (N×C×D×H×W)."""
        return len(self.input.shape) - 2

    @property
    def dynamic_spatial(self) -> bool:
        """True when the graph accepts other spatial sizes (heights and widths, depths) than ``input_size``."""
        return not all(isinstance(d, int) for d in self.input.shape[2:])

    def require_evidence(self) -> None:
        """Raise :class:`InputError` unless the model has an ``evidence`` output (a SoftCAM export)."""
        if self.evidence_name is None:
            raise InputError(
                f"{self.path} has no 'evidence' output, so it is not a SoftCAM export; "
                "export it with softcamify export MODEL -o OUT.onnx."
            )

    def _data_config(self, mean, std, input_size, interpolation, crop_pct, crop_mode) -> dict[str, Any]:
        """The file's preprocessing (softcamify metadata, then plain metadata_props, then a static input
        shape), the given overrides on top, checked by :func:`softcamify.config.resolve_data_config`."""
        cfg: dict[str, Any] = {}
        if self.metadata is not None:
            cfg.update({k: v for k, v in (self.metadata.get("data_config") or {}).items() if k in DATA_KEYS})
        for key in DATA_KEYS:  # metadata_props written by other tools (or by hand) fill the gaps
            if cfg.get(key) is None and self.properties.get(key) is not None:
                cfg[key] = _json_or_none(self.properties[key])
        shape = list(self.input.shape)
        graph_c = shape[1] if isinstance(shape[1], int) else None
        graph_hw = shape[2:] if all(isinstance(d, int) for d in shape[2:]) else None
        if input_size is None and cfg.get("input_size") is None and graph_hw is not None:
            cfg["input_size"] = [graph_c or 3, *graph_hw]
        overrides = {
            "mean": mean,
            "std": std,
            "input_size": input_size,
            "interpolation": interpolation,
            "crop_pct": crop_pct,
            "crop_mode": crop_mode,
        }
        given = {k for k, v in overrides.items() if v is not None}
        missing = [k for k in ("mean", "std", "input_size") if cfg.get(k) is None and k not in given]
        if missing:
            raise UsageError(
                f"{self.path} has no softcamify metadata, so its preprocessing is unknown; export the model "
                f"with softcamify export, which records it, or give {', '.join(missing)}.",
                param=tuple(missing),
            )
        spatial = len(shape) - 2  # 2 for images, 3 for volumes
        if input_size is not None and len(list(input_size)) == spatial:
            overrides["input_size"] = [graph_c or int((cfg.get("input_size") or [3])[0]), *input_size]
        try:
            config = resolve_data_config(cfg, **overrides)
        except UsageError as e:
            if e.param in given:  # the user's own value
                raise
            raise InputError(f"{self.path}: its preprocessing metadata is wrong ({e}).") from None
        c, size = config.input_size[0], list(config.input_size[1:])
        if len(size) != spatial:
            raise UsageError(
                f"{self.path} takes {spatial}-D inputs; input_size {'×'.join(map(str, size))} has {len(size)} axes.",
                param="input_size",
            )
        if graph_c is not None and c != graph_c:
            raise UsageError(f"{self.path} takes {graph_c}-channel input, not {c} channels.", param="input_size")
        if graph_hw is not None and size != list(graph_hw):
            fixed, asked = "×".join(map(str, graph_hw)), "×".join(map(str, size))
            raise UsageError(
                f"{self.path} has a fixed input size {fixed}; input_size {asked} does not fit it.",
                param="input_size",
            )
        return config.to_dict()

    def _class_names(self, override: Sequence[str] | None, logits_shape: Sequence[Any]) -> list[str]:
        k = logits_shape[-1] if logits_shape and isinstance(logits_shape[-1], int) else None
        names: list[str] | None = None
        if override is not None:
            names = [str(c) for c in override]
        elif self.metadata is not None and isinstance(self.metadata.get("class_names"), list):
            names = [str(c) for c in self.metadata["class_names"]]
        elif self.properties.get("class_names"):
            parsed = _json_or_none(self.properties["class_names"])
            if isinstance(parsed, list):
                names = [str(c) for c in parsed]
        if names is None:
            if k is None:
                raise UsageError(
                    f"{self.path} does not say how many classes it has; give class_names.", param="class_names"
                )
            return [f"class_{i}" for i in range(k)]
        if k is not None and not names_fit(k, len(names)):
            raise UsageError(
                f"{len(names)} class names were given but {self.path} has {_classes_phrase(k)}.", param="class_names"
            )
        return names

    def _num_logits(self, logits_shape: Sequence[Any]) -> int:
        """Columns of the logits output (a single-logit binary model has 1 and two class names)."""
        k = logits_shape[-1] if logits_shape and isinstance(logits_shape[-1], int) else None
        if k is not None:
            return int(k)
        meta_k = (self.metadata or {}).get("num_classes")
        return (
            int(meta_k)
            if isinstance(meta_k, int) and names_fit(meta_k, len(self.class_names))
            else len(self.class_names)
        )

    # --- running ---------------------------------------------------------------------------------
    @property
    def fixed_batch(self) -> int | None:
        """The batch size the graph was exported with when it is fixed (``None`` when the batch axis is dynamic).

        Exports without dynamic axes (``torch.onnx.export`` without ``dynamic_axes``) take exactly this
        many images; :meth:`run` feeds them in chunks of that size.
        """
        n = self.input.shape[0]
        return int(n) if isinstance(n, int) and n > 0 else None

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits N×K, evidence N×K×h×w or None) as float32 for preprocessed float32 N×C×H×W input
        (a volume model: N×C×D×H×W input, evidence N×K×d×h×w).

        Any N works: a graph with a fixed batch size B is run on chunks of B images (the last one padded
        by repeating its last image), and the outputs of the padding are dropped.
        """
        x = np.asarray(x)
        rank = len(self.input.shape)
        if x.ndim == rank - 1:
            x = x[None]
        if x.ndim != rank:
            layout = "N×C×H×W" if rank == 4 else "N×C×D×H×W"
            raise InputError(f"{self.path} takes {layout} input, not an array of shape {list(x.shape)}.")
        for axis, (want, got) in enumerate(zip(self.input.shape, x.shape, strict=True)):
            if axis > 0 and isinstance(want, int) and want != got:
                raise InputError(
                    f"{self.path} takes input of shape {list(self.input.shape)}; got {list(x.shape)} "
                    f"(axis {axis} must be {want})."
                )
        x = np.ascontiguousarray(x, dtype=self._input_dtype)
        batch = self.fixed_batch
        n = x.shape[0]
        if batch is None or n == batch:
            return self._run_once(x)
        if n == 0:
            raise InputError(f"{self.path} was given no images (an input of shape {list(x.shape)}).")
        logits, evidence = [], []
        for start in range(0, n, batch):
            chunk = x[start : start + batch]
            if len(chunk) < batch:  # the graph takes exactly `batch` images: pad, then drop the extra outputs
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
            out_logits, out_evidence = self._run_once(chunk)
            keep = min(batch, n - start)
            logits.append(self._rows(out_logits, batch, keep))
            if out_evidence is not None:
                evidence.append(self._rows(out_evidence, batch, keep))
        return np.concatenate(logits), (np.concatenate(evidence) if self.evidence_name else None)

    def _rows(self, out: np.ndarray, batch: int, keep: int) -> np.ndarray:
        if out.ndim == 0 or out.shape[0] != batch:
            raise InputError(
                f"{self.path} has a fixed batch size of {batch} but returns an output of shape {list(out.shape)}, "
                "not one row per image; export it with a batch axis first."
            )
        return out[:keep]

    def _run_once(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        feed = {self.input.name: x}
        names = [self.logits_name] + ([self.evidence_name] if self.evidence_name else [])
        try:
            out = self.session.run(names, feed)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise InputError(f"onnxruntime could not run {self.path} on input {list(x.shape)}: {first}.") from None
        logits = np.asarray(out[0], dtype=np.float32)
        evidence = np.asarray(out[1], dtype=np.float32) if self.evidence_name else None
        return logits, evidence

    __call__ = run

    def __repr__(self) -> str:
        return (
            f"OnnxModel({str(self.path)!r}, architecture={self.architecture!r}, classes={self.num_classes}, "
            f"evidence={self.has_evidence})"
        )
