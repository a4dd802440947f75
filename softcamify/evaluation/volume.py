"""``evaluate`` for a volume model: classification on every scan, and the localisation of the true class's
evidence against 3-D masks, beside MONAI's GradCAM and CAM on the same model (when monai is installed).

The one place :func:`softcamify.evaluation.evaluate` branches for volumes; the metrics are the image ones
(:mod:`softcamify.evaluation.metrics`, rank-generic): activation precision (and its share of the grid
oracle's), activation sensitivity, pointing game, energy pointing game, sparsity and Gini. Volumes are compared
as the model sees them: each scan preprocessed as the model records (:class:`~softcamify.volumes.VolumeConfig`),
its mask resampled to the same voxels (trilinear, then ≥ 0.5; a lesion thinner than that keeps every voxel it
touches), every map upsampled trilinearly to them. Top-k patch precision and deletion / insertion are 2-D
metrics and are left out (their rows are empty). No torch import unless baselines run.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, UsageError
from ..runtime import Runtime, softmax
from . import metrics as M
from .results import EvaluationResult, MethodResult, image_counts
from .samples import Item, evaluation_samples, match_labels

__all__ = ["VOLUME_BASELINES", "evaluate_volumes", "parse_volume_baselines", "volume_localisation"]

#: the post-hoc methods for volume models (monai.visualize): key -> label
VOLUME_BASELINES = {"gradcam": "MONAI GradCAM", "cam": "MONAI CAM"}
Progress = Callable[[str, int, int], None]


def _monai_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("monai") is not None


def parse_volume_baselines(spec: str | Sequence[str] | None, mm: Runtime, notes: list[str]) -> list[str]:
    """The MONAI methods to run: ``gradcam``, ``cam`` (``none``: no baseline). Not given: both when monai is
    installed and the model runs in torch, else none (with a note)."""
    if spec is None:
        if mm.kind != "torch":
            return []
        if not _monai_available():
            notes.append("MONAI is not installed: no GradCAM / CAM baselines (pip install monai).")
            return []
        return list(VOLUME_BASELINES)
    items = [str(s).strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    out: list[str] = []
    for key in items:
        if key in ("", "none"):
            continue
        if key not in VOLUME_BASELINES:
            raise UsageError(
                f"baselines: {key!r} is not a volume baseline; a volume model takes {', '.join(VOLUME_BASELINES)} "
                "(MONAI) or none.",
                param="baselines",
            )
        if key not in out:
            out.append(key)
    if out and mm.kind != "torch":
        raise UsageError("baselines need a PyTorch model (.safetensors), not an .onnx file.", param="baselines")
    if out and not _monai_available():
        raise UsageError("The volume baselines need MONAI; pip install monai.", param="baselines")
    return out


def volume_mask(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A scan's mask on the model's voxels (``shape``): trilinear, then ≥ 0.5; a lesion that would vanish
    keeps every voxel it touches (> 0)."""
    from ..volumes import resample

    m = np.asarray(mask, dtype=np.float32)
    if tuple(m.shape) == tuple(shape):
        return m > 0
    r = resample(m[None], shape)[0]
    out = r >= 0.5
    return out if out.any() or not m.any() else r > 0


def volume_localisation(saliency: np.ndarray, mask: np.ndarray, s: dict[str, Any]) -> dict[str, Any]:
    """The localisation and complexity metrics of one evidence volume (any grid) against a 3-D mask."""
    up = M.upsample(saliency, mask.shape)
    norm = M.normalize_saliency(up)
    ref = {"chance": float(mask.mean()), "oracle_precision": M.oracle_precision(mask, s["oracle_grid"])}
    precision = M.activation_precision(up, mask)
    return {
        "activation_precision": precision,
        "activation_sensitivity": M.activation_sensitivity(up, mask),
        "pointing_game": M.pointing_game(saliency, mask, tolerance_px=s["pointing_tolerance"]),
        "energy_pointing_game": M.energy_pointing_game(up, mask),
        "sparsity": M.sparsity(norm.reshape(1, -1), threshold=s["sparsity_threshold"]),  # the whole volume
        "gini": M.gini(norm),
        "share_of_oracle": M.share_of_oracle(precision, ref["chance"], ref["oracle_precision"]),
        **ref,
    }


class _MonaiMethod:
    """A MONAI class activation map (``gradcam`` or ``cam``) of the SoftCAM model's true class, per batch."""

    def __init__(self, key: str, module: Any):
        from monai.visualize import CAM, GradCAM

        self.key, self.module = key, module
        self.cam: Any
        if key == "gradcam":
            self.cam = GradCAM(nn_module=module, target_layers="features")
        else:  # the evidence conv at one position (a 1×1×1 conv is the classifier's linear layer)

            def fc(a: Any) -> Any:
                return module.head(a[:, :, None, None, None])[:, :, 0, 0, 0]

            # MONAI calls a callable fc_layers with the model to get the layer
            self.cam = CAM(nn_module=module, target_layers="features", fc_layers=lambda _model: fc)

    def __call__(self, x: np.ndarray, labels: Sequence[int]) -> np.ndarray:
        import torch

        device = next(self.module.parameters()).device
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
        idx = torch.tensor(list(labels), dtype=torch.long, device=device)
        with warnings.catch_warnings(), torch.enable_grad() if self.key == "gradcam" else torch.no_grad():
            warnings.simplefilter("ignore")  # the backward hook's note on inputs without gradients
            out = self.cam(t, class_idx=idx)
        return out[:, 0].detach().float().cpu().numpy()


def evaluate_volumes(
    mm: Runtime,
    root: Path,
    mask_root: Path | None,
    split: str,
    *,
    baselines: str | Sequence[str] | None = None,
    ordinal: bool = False,
    max_images: int | None = None,
    batch_size: int | None = None,
    sparsity_threshold: float = 0.01,
    pointing_tolerance: int = 0,
    oracle_grid: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> EvaluationResult:
    """Classification on every scan of the split and the true class's localisation on annotated scans (one
    pass: the maps come with the logits), for SoftCAM and the MONAI baselines (:func:`parse_volume_baselines`).

    A bad volume or mask (NaN, truncated gzip, a mask of another shape than its scan) raises
    :class:`InputError` naming the file.
    """
    from ..data import mask_path_for
    from ..volumes import read_mask, read_volume

    assert mm.volume is not None
    t_start = time.perf_counter()
    notes: list[str] = []
    methods = parse_volume_baselines(baselines, mm, notes)
    bs = int(batch_size or 2)
    pairs, ds_names, desc = evaluation_samples(root, split, mask_root, volumes=True)
    to_model, report_names = match_labels(ds_names, mm.class_names, notes, binary=mm.num_logits == 1)
    items = [Item(p, to_model[y]) for p, y in pairs]
    settings: dict[str, Any] = {
        "split": split,
        "spatial_dims": 3,
        "input_size": list(mm.input_size),
        "volume": mm.volume.to_dict(),
        "evidence_grid": None,
        "oracle_grid": [int(v) for v in oracle_grid] if oracle_grid is not None else None,
        "topk": 10,  # (unused: top-k patch precision is a 2-D metric)
        "sparsity_threshold": float(sparsity_threshold),
        "pointing_tolerance": int(pointing_tolerance),
        "batch_size": bs,
        "baselines": methods,
        "max_images": max_images,
        "compared_at": "the model's voxels (scans preprocessed as recorded, masks resampled to them)",
    }
    results = [MethodResult("softcam", "SoftCAM", "softcam")]
    explainers = []
    for key in methods:
        explainers.append((MethodResult(key, VOLUME_BASELINES[key], "softcam"), _MonaiMethod(key, mm.module)))
        results.append(explainers[-1][0])
    n = len(items)
    probs = np.zeros((n, mm.num_classes), dtype=np.float64)
    per_image: list[dict[str, Any]] = []
    with_mask = annotated = explained = 0
    for start in range(0, n, bs):
        chunk = items[start : start + bs]
        vols = [read_volume(it.path) for it in chunk]
        x = np.stack([mm.preprocess(v) for v in vols]).astype(np.float32)
        t0 = time.perf_counter()
        logits, maps = mm(x)
        results[0].seconds += time.perf_counter() - t0
        if maps.ndim != 5:
            raise InputError(f"The model returned evidence of shape {maps.shape}; a volume model returns N×K×d×h×w.")
        settings["evidence_grid"] = [int(v) for v in maps.shape[2:]]
        if settings["oracle_grid"] is None:
            settings["oracle_grid"] = list(settings["evidence_grid"])
        probs[start : start + len(chunk)] = softmax(logits)
        todo = []  # (j, mask on the model's voxels) of the annotated scans to explain here
        for j, (it, v) in enumerate(zip(chunk, vols, strict=True)):
            mp = mask_path_for(it.path, root, mask_root) if mask_root is not None else None
            if mp is None:
                continue
            with_mask += 1
            it.mask_path = mp
            m = read_mask(mp, v)
            if not m.any():
                continue
            annotated += 1
            if max_images is None or explained < max_images:
                explained += 1
                todo.append((j, volume_mask(m, x.shape[2:])))
        if todo:
            sub = x[[j for j, _ in todo]]
            labels = [chunk[j].label for j, _ in todo]
            post = {}
            for res, ex in explainers:
                t0 = time.perf_counter()
                post[res.key] = ex(sub, labels)
                res.seconds += time.perf_counter() - t0
            for r, (j, mask) in enumerate(todo):
                it, p = chunk[j], probs[start + j]
                pred = int(np.argmax(p))
                row: dict[str, Any] = {
                    "path": str(it.path),
                    "label": report_names[it.label],
                    "prediction": report_names[pred],
                    "probability": float(np.max(p)),
                    "correct": bool(pred == it.label),
                    "mask": str(it.mask_path),
                    "mask_share": float(mask.mean()),
                }
                for res in results:
                    sal = maps[j, it.label] if res.key == "softcam" else post[res.key][r]
                    rec = volume_localisation(sal, mask, settings)
                    row["oracle_precision"] = rec["oracle_precision"]
                    res.records.append(rec)
                    row[res.key] = rec
                per_image.append(M.json_safe(row))
        if progress is not None:
            progress("evaluating", min(start + bs, n), n)
    y_true = np.array([it.label for it in items], dtype=np.int64)
    counts = image_counts(n, with_mask, annotated, explained, mask_root, notes, unit="volume")
    notes.append("Volumes: top-k patch precision and deletion/insertion are 2-D metrics and are not computed.")
    settings["seconds"] = time.perf_counter() - t_start
    return EvaluationResult(
        model=mm.description or mm.architecture,
        backend=mm.kind,
        data={
            "data_dir": str(root),
            "source": desc,
            "masks": str(mask_root) if mask_root else None,
            "class_names": report_names,
            "dataset_class_names": list(ds_names),
        },
        counts=counts,
        classification=M.classification_report(y_true, probs, report_names, ordinal=ordinal),
        original_classification=None,
        methods=results,
        settings=settings,
        notes=notes,
        per_image=per_image,
        examples=[],
    )
