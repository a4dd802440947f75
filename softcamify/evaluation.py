"""Evaluate a SoftCAM model on a labelled dataset: classification, and explanation quality against masks.

``evaluate(model, data_dir)``:

1. **Classification** on every image of the split: accuracy, balanced accuracy, macro ROC-AUC,
   per-class sensitivity/specificity, confusion matrix, quadratic kappa with ``ordinal=True``
   (:func:`softcamify.metrics.classification_report`). With ``original=`` the original black box is
   scored on the same images, side by side.
2. **Explanations** of the *true* class on images whose mask has a foreground pixel (masks mirror the
   data folder; any nonzero pixel is foreground; lesion-free images have empty masks and count as
   "no annotation"): activation precision (also as a share of the grid oracle's, on one reference grid
   common to every method) and sensitivity, pointing game, energy pointing game, top-k patch precision
   (pooled over images, as the paper), deletion and insertion AUC (batched over images), sparsity and Gini.
   The same metrics are computed for post-hoc baselines through pytorch-grad-cam on the **same model**
   and, with ``original=``, on the original classifier's last feature map.

All maps are compared at the model's input resolution: the mask gets the image's resize + crop
(nearest), every map is upsampled bilinearly to the input size. Sparsity and Gini are computed on the
positive evidence (ReLU, min–max scaled), the form every method shares (pytorch-grad-cam returns
exactly that), so the numbers are comparable across methods. Deletion replaces the top-ranked
``patch × patch`` tiles by 0 (the dataset mean colour after normalization); insertion starts from a
blurred image and restores the top tiles; the curve reads the softmax probability of the true class.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import images as _images
from . import metrics as M
from .errors import InputError, UsageError
from .heatmaps import MapModel, input_view, load_map_model, softmax

__all__ = ["EvaluationResult", "MethodResult", "METRICS", "REFERENCES", "evaluate", "evaluation_samples",
           "write_report"]

#: metric key -> (label, higher_is_better)
METRICS: dict[str, tuple[str, bool]] = {
    "activation_precision": ("activation precision", True),
    "share_of_oracle": ("share of oracle", True),
    "activation_sensitivity": ("activation sensitivity", True),
    "pointing_game": ("pointing game", True),
    "energy_pointing_game": ("energy pointing game", True),
    "topk_precision": ("top-k patch precision", True),
    "deletion_auc": ("deletion AUC", False),
    "insertion_auc": ("insertion AUC", True),
    "sparsity": ("sparsity", True),
    "gini": ("Gini index", True),
}

_GPU_DELETION_BATCH_FACTOR = 4  # deletion/insertion inputs per forward on a GPU: this × batch_size

#: reference values of each image, the same for every method: key -> label. ``chance`` is the mask's area
#: share (what a constant map scores on activation precision), ``oracle_precision`` the activation precision
#: of the mask average-pooled to the report's common reference grid (``settings["oracle_grid"]``).
REFERENCES: dict[str, str] = {
    "oracle_precision": "oracle precision (grid oracle)",
    "chance": "chance (mask share)",
}


@dataclass
class MethodResult:
    """Per-image explanation metrics of one method (SoftCAM, or a baseline on one model)."""

    key: str
    label: str
    model: str  # "softcam" or "original"
    records: list[dict[str, Any]] = field(default_factory=list)
    topk: list[M.TopKResult] = field(default_factory=list)
    deletion: list[np.ndarray] = field(default_factory=list)
    insertion: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self, k: int) -> dict[str, Any]:
        keys = [key for key in (*METRICS, *REFERENCES) if key != "topk_precision"]
        agg = M.aggregate({key: r.get(key) for key in keys} for r in self.records)
        curve = M.pooled_topk_precision(self.topk, k) if self.topk else []
        picks = sum(min(k, t.picks) for t in self.topk)
        metrics: dict[str, Any] = {}
        for key in (*METRICS, *REFERENCES):
            if key == "topk_precision":
                metrics[key] = {"mean": curve[-1] if curve else None, "std": None, "n": picks, "pooled": True}
            else:
                metrics[key] = agg.get(key, {"mean": None, "std": None, "n": 0})
        return M.json_safe(
            {
                "key": self.key,
                "label": self.label,
                "model": self.model,
                "images": len(self.records),
                "metrics": metrics,
                "topk_curve": curve,
                "deletion_curve": _mean_curve(self.deletion),
                "insertion_curve": _mean_curve(self.insertion),
                "seconds": self.seconds,
            }
        )


def _mean_curve(curves: Sequence[np.ndarray]) -> list[list[float]] | None:
    if not curves:
        return None
    if len({c.shape for c in curves}) != 1:
        return None
    stack = np.stack(curves)
    return np.stack([stack[0, :, 0], stack[:, :, 1].mean(axis=0)], axis=1).tolist()


@dataclass
class EvaluationResult:
    """What :func:`evaluate` returns; ``to_dict()`` is the ``--json`` output."""

    model: str
    backend: str
    data: dict[str, Any]
    counts: dict[str, int]
    classification: dict[str, Any]
    original_classification: dict[str, Any] | None
    methods: list[MethodResult]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    per_image: list[dict[str, Any]] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    report: str | None = None

    def method_summaries(self) -> list[dict[str, Any]]:
        return [m.summary(int(self.settings["topk"])) for m in self.methods]

    def to_dict(self) -> dict[str, Any]:
        return M.json_safe(
            {
                "model": self.model,
                "backend": self.backend,
                "data": self.data,
                "counts": self.counts,
                "classification": self.classification,
                "original_classification": self.original_classification,
                "explanation": {"methods": self.method_summaries(), "metrics": {k: v[0] for k, v in METRICS.items()},
                                "higher_is_better": {k: v[1] for k, v in METRICS.items()},
                                "references": dict(REFERENCES)},
                "settings": self.settings,
                "notes": self.notes,
                "report": self.report,
            }
        )


# --------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Item:
    path: Path
    label: int  # model class index
    mask_path: Path | None = None
    mask: np.ndarray | None = None  # bool, input resolution, only when it has foreground


def evaluation_samples(
    data_dir: str | os.PathLike, split: str = "test", mask_root: Path | None = None
) -> tuple[list[tuple[Path, int]], list[str], str]:
    """``([(path, dataset label)], dataset class names, description)`` of the images to evaluate.

    A dataset root with ``train/``/``val/``/``test/`` gives the requested split; a folder of class
    folders is used whole (``split`` ignored). A ``masks`` folder inside a flat layout is not a class.
    """
    from .data import SPLIT_NAMES, discover

    if split not in SPLIT_NAMES:
        raise UsageError(f"--split {split!r} is not one of {', '.join(SPLIT_NAMES)}.")
    root = Path(data_dir)
    splits = discover(root, min_classes=1)  # one class: its images still score (accuracy, explanations)
    if splits.layout == "splits":
        samples = splits.split(split)
        if not samples:
            have = [s for s in SPLIT_NAMES if splits.split(s)]
            raise InputError(f"{root} has no {split} images; choose --split {' or '.join(have) or 'another split'}.")
        desc = f"{split} split of {root}"
    else:
        samples = sorted(splits.train + splits.val + splits.test, key=lambda s: str(s.path))
        desc = f"all class folders of {root}"
    names = list(splits.class_names)
    pairs = [(Path(s.path), int(s.label)) for s in samples]
    if splits.layout != "splits" and mask_root is not None:
        mr = os.path.realpath(mask_root)
        pairs = [(p, y) for p, y in pairs if not os.path.realpath(p).startswith(mr + os.sep)]
        used = sorted({y for _, y in pairs})
        if len(used) != len(names):
            remap = {old: new for new, old in enumerate(i for i in range(len(names)) if i in used)}
            names = [n for i, n in enumerate(names) if i in used]
            pairs = [(p, remap[y]) for p, y in pairs]
    if not pairs:
        raise InputError(f"{root} contains no images to evaluate.")
    return pairs, names, desc


def _label_map(
    ds_names: Sequence[str], model_names: Sequence[str], notes: list[str], binary: bool = False
) -> tuple[list[int], list[str]]:
    """Dataset label -> model class index, and the class names to report.

    Classes are matched by name (exactly, else ignoring case and surrounding spaces). Only when no name is
    shared (e.g. a model with generic ``class_0…`` names) are they matched by order, with a note; a partial
    overlap is refused, since matching the rest by order would swap classes silently.
    """
    model = list(model_names)
    if set(ds_names) <= set(model):
        return [model.index(n) for n in ds_names], model
    if (binary and len(ds_names) == 2 and model[1] in ds_names and model[0] in ("negative", f"not_{model[1]}")):
        # a single-logit model named by its positive class (softcamify.binary): the other folder is the negative
        other = next(d for d in ds_names if d != model[1])
        notes.append(f"The model names only its positive class ({model[1]}); {other} is read as its negative class.")
        return [0 if d == other else 1 for d in ds_names], [other, model[1]]

    def norm(name: str) -> str:
        return name.strip().casefold()

    folded = [norm(m) for m in model]
    if len(set(folded)) == len(folded) and all(norm(d) in folded for d in ds_names):
        notes.append("The dataset's class folders match the model's classes only when case is ignored ("
                     + ", ".join(f"{d}→{model[folded.index(norm(d))]}" for d in ds_names if d not in model) + ").")
        return [folded.index(norm(d)) for d in ds_names], model
    unknown = [d for d in ds_names if norm(d) not in folded]
    if len(unknown) < len(ds_names):
        raise InputError(
            f"The dataset's class {unknown[0]!r} is not one of the model's classes ({', '.join(model)}), while "
            "other class folders are; rename the folders to the model's class names."
        )
    if len(ds_names) == len(model):
        notes.append(
            "The dataset's class names differ from the model's; classes were matched by their order "
            f"({', '.join(f'{d}→{m}' for d, m in zip(ds_names, model, strict=True))})."
        )
        return list(range(len(ds_names))), list(ds_names)
    raise InputError(
        f"The dataset has {len(ds_names)} classes ({', '.join(ds_names)}) but the model has {len(model)} "
        f"({', '.join(model)}); evaluate on data with the model's classes."
    )


def _align_mask(mask_path: Path, img: Image.Image, cfg: dict[str, Any]) -> np.ndarray:
    """The mask with the image's eval geometry: resized to the image (nearest) if needed, then resize + crop."""
    m = _images.load_mask(mask_path, size=(img.height, img.width))
    return _images.mask_to_input(m, cfg["input_size"], cfg.get("crop_pct"), cfg.get("crop_mode"))


# --------------------------------------------------------------------------------------------------------
# Explanation metrics of one map
# --------------------------------------------------------------------------------------------------------


def _localisation_metrics(
    saliency: np.ndarray, mask: np.ndarray, s: dict[str, Any]
) -> tuple[dict[str, Any], M.TopKResult]:
    """Mask-based and complexity metrics of one map (deletion/insertion: :func:`_faithfulness_metrics`)."""
    size = mask.shape
    up = M.upsample(saliency, size)
    norm = M.normalize_saliency(up)
    rec: dict[str, Any] = {
        "activation_precision": M.activation_precision(up, mask),
        "activation_sensitivity": M.activation_sensitivity(up, mask),
        "pointing_game": M.pointing_game(saliency, mask, tolerance_px=s["pointing_tolerance"]),
        "energy_pointing_game": M.energy_pointing_game(up, mask),
        "sparsity": M.sparsity(norm, threshold=s["sparsity_threshold"]),
        "gini": M.gini(norm),
    }
    topk = M.topk_patch_precision(
        saliency, mask, k=s["topk"], patch=s["patch_size"], stride=s["patch_stride"], threshold=s["topk_threshold"]
    )
    rec["topk_precision"] = topk.precision
    return rec, topk


def _reference(mask: np.ndarray, grid: Sequence[int]) -> dict[str, float]:
    """An image's reference values: its mask share (chance) and the grid oracle's activation precision."""
    return {"chance": float(mask.mean()), "oracle_precision": M.oracle_precision(mask, grid)}


def _faithfulness_metrics(
    predict: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    saliencies: Sequence[np.ndarray],
    targets: Sequence[int],
    s: dict[str, Any],
    batched: bool = True,
) -> list[tuple[float, np.ndarray, float, np.ndarray]]:
    """``(deletion AUC, deletion curve, insertion AUC, insertion curve)`` of each image of ``x``.

    Batched (default): the deletion and insertion inputs of every image stream through the model together
    (:func:`softcamify.metrics.deletion_insertion_batch`), ``s["deletion_batch_size"]`` perturbed images per
    forward, every forward full. ``batched=False`` is the per-image path (two
    :func:`~softcamify.metrics.deletion_insertion` calls per image and method, ``batch_size`` inputs per
    forward, the last one of each curve partial): the same values, kept for benchmarks/evaluate_speed.py.
    """
    common = {"steps": s["steps"], "patch": s["deletion_patch"]}
    n = len(saliencies)
    if not batched:
        out = []
        for j in range(n):
            d_auc, d_curve = M.deletion_insertion(predict, x[j], saliencies[j], targets[j], baseline=0.0,
                                                  mode="deletion", batch_size=s["batch_size"], **common)
            i_auc, i_curve = M.deletion_insertion(predict, x[j], saliencies[j], targets[j], baseline="blur",
                                                  mode="insertion", batch_size=s["batch_size"], **common)
            out.append((d_auc, d_curve, i_auc, i_curve))
        return out
    res = M.deletion_insertion_batch(
        predict, [*x[:n], *x[:n]], [*saliencies, *saliencies], [*targets, *targets],
        baseline=[0.0] * n + ["blur"] * n, mode=["deletion"] * n + ["insertion"] * n,
        batch_size=s["deletion_batch_size"], **common,
    )
    return [(res[j][0], res[j][1], res[n + j][0], res[n + j][1]) for j in range(n)]


# --------------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------------


def _default_patch(input_hw: tuple[int, int]) -> tuple[int, int]:
    """The paper's 33 px patches with stride 8 on 512 px images, scaled to the input size."""
    side = min(input_hw)
    patch = max(2, int(round(side * 33 / 512)))
    stride = max(1, int(round(patch * 8 / 33)))
    return patch, stride


def _load_original(original: Any, mm: MapModel, trust_pickle: bool, weights: Any = None) -> Any:
    import torch

    from .checkpoints import LoadedModel, load_model

    if isinstance(original, torch.nn.Module):
        module = original
    elif isinstance(original, LoadedModel):
        module = original.module
    else:
        try:
            module = load_model(original, weights=weights, trust_pickle=trust_pickle,
                                input_size=tuple(mm.input_size[1:])).module
        except InputError as e:
            if "holds weights only" not in str(e):
                raise
            raise InputError(f"--original {original} holds weights only; name its architecture: --original ARCH "
                             f"--original-weights {original}.") from None
    module = module.to(mm.device).eval()
    with torch.no_grad():
        out = module(torch.zeros(1, *mm.input_size, device=mm.device))
    # a single-logit black box reads as its two classes wherever its logits are used (softmax, baselines)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != mm.num_logits:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(
            f"The original model returns {shape}, not logits for the SoftCAM model's {mm.num_classes} classes; "
            "--original must be the classifier this model was converted from."
        )
    return module


def _torch_predict(module: Any, device: Any) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device))
        return softmax(out.float().cpu().numpy())

    return predict


def evaluate(
    model: Any,
    data_dir: str | os.PathLike,
    split: str = "test",
    masks: str | os.PathLike | None = None,
    baselines: str | Sequence[str] | None = None,
    original: Any = None,
    ordinal: bool = False,
    *,
    patch_size: int | None = None,
    patch_stride: int | None = None,
    topk: int = 10,
    topk_threshold: float | None = None,
    steps: int = 20,
    deletion_patch: int | None = None,
    sparsity_threshold: float = 0.01,
    pointing_tolerance: int = 0,
    oracle_grid: tuple[int, int] | None = None,
    max_images: int | None = None,
    batch_size: int = 16,
    device: Any = "auto",
    examples: int = 6,
    out_dir: str | os.PathLike | None = None,
    force: bool = False,
    trust_pickle: bool = False,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    input_size: tuple[int, int] | None = None,
    ema: bool = False,
    original_weights: str | os.PathLike | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> EvaluationResult:
    """Classification metrics on a dataset split and explanation metrics of the true class against masks.

    Args:
        model: a SoftCAM model, softcamify ``.safetensors``, convertible checkpoint, or an ``.onnx``
            export (no baselines then: they need torch).
        data_dir: a dataset root with ``train/val/test`` class folders, or one folder of class folders.
        split: which split of a dataset root (a flat class-folder layout is used whole).
        masks: mask root mirroring ``data_dir`` (default ``data_dir/masks`` when it exists).
        baselines: pytorch-grad-cam methods, e.g. ``"gradcam,layercam,scorecam"`` (see
            :data:`softcamify.baselines.METHODS`); computed on the same model, and on ``original``.
        original: the original classifier (checkpoint path, timm name, module or LoadedModel).
        ordinal: add quadratic kappa (ordered grades).
        patch_size, patch_stride: top-k patch grid (default: the paper's 33 px / stride 8 at 512 px,
            scaled to the input size).
        topk: k of the top-k patch precision (pooled over images).
        topk_threshold: only grid values above it are picked (the paper uses 1 on raw logit maps);
            default none, so maps of any scale (baselines are in [0, 1]) are treated alike.
        steps: deletion/insertion steps; ``deletion_patch`` their tile size (default ``patch_size``).
        pointing_tolerance: the pointing game counts a hit within this many pixels of the mask (Zhang et al.
            use 15 px at 224 px); 0 means the maximum must lie on the mask itself.
        oracle_grid: the report's common reference grid ``(rows, columns)``: each mask average-pooled to it
            is the grid oracle whose activation precision every method's ``share_of_oracle`` divides by
            (default: the evaluated model's evidence grid, ``settings["evidence_grid"]``).
        max_images: explanation metrics on at most this many annotated images (classification uses all).
        examples: annotated images shown with overlays in the HTML report.
        out_dir: write ``index.html`` (tables + example overlays), ``metrics.json`` and
            ``per_image.json`` there.
        weights, num_classes, input_size, ema: as for :func:`softcamify.checkpoints.load_model` when
            ``model`` is converted on the fly.
        original_weights: weights for ``original`` given as an architecture name (a weights-only file).
        progress: called as ``progress(stage, done, total)``.
    """
    t_start = time.perf_counter()
    for name, v in (("--topk", topk), ("--steps", steps), ("--batch-size", batch_size)):
        if v < 1:
            raise UsageError(f"{name} must be at least 1, got {v}.")
    if max_images is not None and max_images < 0:
        raise UsageError(f"--max-images must be 0 or more, got {max_images}.")
    if pointing_tolerance < 0:
        raise UsageError(f"--pointing-tolerance must be 0 or more pixels, got {pointing_tolerance}.")
    if oracle_grid is not None:
        oracle_grid = M._as_grid(oracle_grid, "oracle_grid")
    out = None
    if out_dir is not None:
        from .io import check_output_dir

        out = check_output_dir(out_dir, force=force)
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"Dataset folder {root} does not exist or is not a folder; check DATA_DIR.")
    from .data import default_mask_root, mask_path_for

    mask_root: Path | None
    if masks is not None:
        mask_root = Path(masks)
        if not mask_root.is_dir():
            raise InputError(f"Mask folder {mask_root} does not exist or is not a folder; check --masks.")
    else:
        mask_root = default_mask_root(root)  # DATA_DIR/masks when it mirrors DATA_DIR (not a "masks" class)

    from .baselines import parse_methods

    methods = parse_methods(baselines)
    if methods:
        from .baselines import require_gradcam

        require_gradcam()
    mm = load_map_model(model, device=device, trust_pickle=trust_pickle, weights=weights, num_classes=num_classes,
                        input_size=input_size, ema=ema)
    if (methods or original is not None) and mm.kind != "torch":
        raise UsageError("--baselines and --original need a PyTorch model (.safetensors), not an .onnx file.")
    notes: list[str] = []
    pairs, ds_names, desc = evaluation_samples(root, split, mask_root)
    to_model, report_names = _label_map(ds_names, mm.class_names, notes, binary=mm.num_logits == 1)
    cfg = mm.data_config
    in_hw = (mm.input_size[1], mm.input_size[2])
    d_patch, d_stride = _default_patch(in_hw)
    patch = int(patch_size or d_patch)
    stride = int(patch_stride or (d_stride if patch_size is None else max(1, round(patch * 8 / 33))))
    if patch > min(in_hw):
        raise UsageError(f"--patch-size {patch} is larger than the {in_hw[0]}×{in_hw[1]} input.")
    if oracle_grid is not None and (oracle_grid[0] > in_hw[0] or oracle_grid[1] > in_hw[1]):
        raise UsageError(f"oracle_grid {oracle_grid[0]}×{oracle_grid[1]} is finer than the "
                         f"{in_hw[0]}×{in_hw[1]} input; give at most one cell per input pixel.")
    # Perturbed inputs per forward in deletion/insertion: forward-only (no autograd), so a GPU takes 4× the
    # batch (fewer, fuller launches); on a CPU larger batches only spill the caches (measured 1.5× slower per
    # image at 4× on the demo model, benchmarks/evaluate_speed.py), so it keeps the batch size.
    on_gpu = mm.kind == "torch" and getattr(getattr(mm, "device", None), "type", "cpu") == "cuda"
    settings: dict[str, Any] = {
        "split": split,
        "input_size": list(mm.input_size),
        "evidence_grid": None,
        "oracle_grid": list(oracle_grid) if oracle_grid is not None else None,
        "patch_size": patch,
        "patch_stride": stride,
        "topk": int(topk),
        "topk_threshold": topk_threshold,
        "steps": int(steps),
        "deletion_patch": int(deletion_patch or patch),
        "deletion_baseline": "0 (mean colour)",
        "insertion_baseline": "blur",
        "sparsity_threshold": float(sparsity_threshold),
        "pointing_tolerance": int(pointing_tolerance),
        "batch_size": int(batch_size),
        "deletion_batch_size": int(batch_size) * (_GPU_DELETION_BATCH_FACTOR if on_gpu else 1),
        "baselines": methods,
        "max_images": max_images,
    }

    if original_weights is not None and not isinstance(original, str | os.PathLike):
        raise UsageError("--original-weights needs --original to name the architecture (e.g. resnet50).")
    orig_module = _load_original(original, mm, trust_pickle, original_weights) if original is not None else None

    # ---- pass 1: classification on every image; masks aligned to the input -------------------------
    items = [_Item(p, to_model[y]) for p, y in pairs]
    n = len(items)
    probs = np.zeros((n, mm.num_classes), dtype=np.float64)
    orig_probs = np.zeros_like(probs) if orig_module is not None else None
    orig_predict = _torch_predict(orig_module, mm.device) if orig_module is not None else None
    channels = mm.input_size[0]
    with_mask = 0
    for start in range(0, n, batch_size):
        chunk = items[start : start + batch_size]
        opened = [_images.open_image(it.path, channels=channels) for it in chunk]
        x = np.stack([mm.preprocess(img) for img in opened]).astype(np.float32)
        logits, maps = mm(x)
        settings["evidence_grid"] = [int(maps.shape[-2]), int(maps.shape[-1])]
        probs[start : start + len(chunk)] = softmax(logits)
        if orig_predict is not None and orig_probs is not None:
            orig_probs[start : start + len(chunk)] = orig_predict(x)
        if mask_root is not None:
            for it, img in zip(chunk, opened, strict=True):
                mp = mask_path_for(it.path, root, mask_root)
                if mp is None:
                    continue
                with_mask += 1
                it.mask_path = mp
                m = _align_mask(mp, img, cfg)
                if m.any():
                    it.mask = m
        if progress is not None:
            progress("classifying", min(start + batch_size, n), n)
    y_true = np.array([it.label for it in items], dtype=np.int64)
    classification = M.classification_report(y_true, probs, report_names, ordinal=ordinal)
    orig_class = (
        M.classification_report(y_true, orig_probs, report_names, ordinal=ordinal) if orig_probs is not None else None
    )
    if settings["oracle_grid"] is None:  # one reference grid for every method of the report
        settings["oracle_grid"] = list(settings["evidence_grid"])
    annotated = [i for i, it in enumerate(items) if it.mask is not None]
    explained = annotated if max_images is None else annotated[:max_images]
    counts = {
        "images": n,
        "with_mask": with_mask,
        "annotated": len(annotated),
        "empty_mask": with_mask - len(annotated),
        "without_mask": n - with_mask,
        "explained": len(explained),
    }
    if mask_root is None:
        notes.append("No masks (no --masks and no masks/ folder in DATA_DIR): classification metrics only.")
    elif not annotated:
        notes.append(f"No image of this split has a mask with foreground under {mask_root}: classification only.")
    if counts["without_mask"] and mask_root is not None:
        notes.append(f"{counts['without_mask']} image(s) have no mask and were evaluated for classification only.")

    # ---- pass 2: explanation metrics on annotated images ------------------------------------------------
    results = [MethodResult("softcam", "SoftCAM", "softcam")]
    explainers: list[tuple[MethodResult, Any, Callable]] = []
    if methods:
        from .baselines import PostHocExplainer, original_target, softcam_target

        for key in methods:
            ex = PostHocExplainer(softcam_target(mm.module), key, batch_size=batch_size)
            res = MethodResult(key, ex.label, "softcam")
            explainers.append((res, ex, mm.predict_proba))
            results.append(res)
        if orig_module is not None:
            for key in methods:
                ex = PostHocExplainer(original_target(orig_module, mm.input_size), key, batch_size=batch_size)
                res = MethodResult(f"original:{key}", f"{ex.label} (original)", "original")
                explainers.append((res, ex, orig_predict))
                results.append(res)
    per_image: list[dict[str, Any]] = []
    example_data: list[dict[str, Any]] = []
    n_ex = len(explained)
    for start in range(0, n_ex, batch_size):
        idx = explained[start : start + batch_size]
        chunk = [items[i] for i in idx]
        opened = [_images.open_image(it.path, channels=channels) for it in chunk]
        x = np.stack([mm.preprocess(img) for img in opened]).astype(np.float32)
        labels = [it.label for it in chunk]
        t0 = time.perf_counter()
        _, maps = mm(x)
        results[0].seconds += time.perf_counter() - t0
        post: dict[str, np.ndarray] = {}
        for res, ex, _ in explainers:
            t0 = time.perf_counter()
            post[res.key] = ex(x, labels)
            res.seconds += time.perf_counter() - t0
        rows: list[dict[str, Any]] = []
        refs: list[dict[str, float]] = []
        for j, it in enumerate(chunk):
            assert it.mask is not None
            i = idx[j]
            refs.append(_reference(it.mask, settings["oracle_grid"]))
            rows.append({
                "path": str(it.path),
                "label": report_names[it.label],
                "prediction": report_names[int(np.argmax(probs[i]))],
                "probability": float(np.max(probs[i])),
                "correct": bool(int(np.argmax(probs[i])) == it.label),
                "mask": str(it.mask_path),
                "mask_share": float(it.mask.mean()),
                "oracle_precision": refs[-1]["oracle_precision"],
            })
        for res in results:
            predict = mm.predict_proba if res.model == "softcam" else orig_predict
            assert predict is not None
            sals = [maps[j, it.label] if res.key == "softcam" else post[res.key][j]
                    for j, it in enumerate(chunk)]
            faith = _faithfulness_metrics(predict, x, sals, labels, settings)
            for j, it in enumerate(chunk):
                assert it.mask is not None
                rec, tk = _localisation_metrics(sals[j], it.mask, settings)
                d_auc, d_curve, i_auc, i_curve = faith[j]
                rec["deletion_auc"] = d_auc
                rec["insertion_auc"] = i_auc
                rec["share_of_oracle"] = M.share_of_oracle(
                    rec["activation_precision"], refs[j]["chance"], refs[j]["oracle_precision"]
                )
                rec.update(refs[j])
                res.records.append(rec)
                res.topk.append(tk)
                res.deletion.append(d_curve)
                res.insertion.append(i_curve)
                rows[j][res.key] = rec
        for j, row in enumerate(rows):
            per_image.append(M.json_safe(row))
            if len(example_data) < examples:
                example_data.append(
                    {"image": opened[j], "mask": chunk[j].mask, "label": chunk[j].label,
                     "path": chunk[j].path, "maps": maps[j], "post": {k: v[j] for k, v in post.items()},
                     "row": row}
                )
        if progress is not None:
            progress("explaining", min(start + batch_size, n_ex), n_ex)
    for _, ex, _ in explainers:
        ex.close()

    result = EvaluationResult(
        model=getattr(mm, "description", "") or str(model),
        backend=mm.kind,
        data={"data_dir": str(root), "source": desc, "masks": str(mask_root) if mask_root else None,
              "class_names": report_names, "dataset_class_names": list(ds_names)},
        counts=counts,
        classification=classification,
        original_classification=orig_class,
        methods=results,
        settings=settings,
        notes=notes,
        per_image=per_image,
    )
    result.settings["seconds"] = time.perf_counter() - t_start
    if out is not None:
        write_report(result, out, example_data, mm, force=force)
    return result


# --------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------


def _outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean mask (4-neighbourhood)."""
    m = mask.astype(bool)
    inner = m.copy()
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def _with_outline(img: Image.Image, mask: np.ndarray, colour: tuple[int, int, int] = (0, 200, 0)) -> Image.Image:
    big = Image.fromarray(mask.astype(np.uint8) * 255).resize(img.size, Image.Resampling.NEAREST)
    edge = _outline(np.asarray(big) > 0)
    arr = np.asarray(img.convert("RGB")).copy()
    arr[edge] = colour
    return Image.fromarray(arr)


def _fmt_metric(m: dict[str, Any] | None) -> str:
    if not m or m.get("mean") is None:
        return "—"
    mean = m["mean"]
    std = m.get("std")
    return f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"


def metric_rows(summaries: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Rows ``[metric (↑/↓), value per method…]`` for the tables (rich and HTML)."""
    rows = []
    for key, (label, up) in METRICS.items():
        rows.append([f"{label} {'↑' if up else '↓'}", *[_fmt_metric(s["metrics"].get(key)) for s in summaries]])
    for key, label in REFERENCES.items():  # reference values (per image, the same for every method)
        if any(s["metrics"].get(key) for s in summaries):
            rows.append([label, *[_fmt_metric(s["metrics"].get(key)) for s in summaries]])
    rows.append(["images", *[str(s["images"]) for s in summaries]])
    return rows


def classification_rows(c: dict[str, Any], o: dict[str, Any] | None) -> tuple[list[str], list[list[Any]]]:
    keys = ["n", "accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity", "quadratic_kappa"]
    headers = ["metric", "SoftCAM"] + (["original"] if o is not None else [])
    rows = []
    for k in keys:
        if k not in c:
            continue
        rows.append([k.replace("_", " "), c.get(k)] + ([o.get(k)] if o is not None else []))
    return headers, rows


def write_report(
    result: EvaluationResult, out: Path, example_data: Sequence[dict[str, Any]], mm: MapModel, force: bool = False
) -> Path:
    """``index.html`` (metric tables, curves, example overlays), ``metrics.json`` and ``per_image.json``."""
    import json

    from . import report as R
    from .io import make_output_dir, write_text_atomic
    from .render import overlay, save_png, scale_maps

    make_output_dir(out)
    result.report = str(out / "index.html")
    summaries = result.method_summaries()
    c = result.classification
    names = c["class_names"]
    parts: list[str] = []
    cnt = result.counts
    parts.append(
        R.section(
            "Data",
            R.paragraph(
                f"{result.data['source']}: {cnt['images']} images; {cnt['with_mask']} with a mask file, "
                f"{cnt['annotated']} with foreground (explanation metrics on {cnt['explained']}), "
                f"{cnt['without_mask']} without a mask (classification only)."
            ),
            *[R.paragraph(note, note=True) for note in result.notes],
        )
    )
    headers, rows = classification_rows(c, result.original_classification)
    per_class = [[pc["name"], pc["support"], pc["sensitivity"], pc["specificity"], pc["precision"], pc["roc_auc"]]
                 for pc in c["per_class"]]
    cm = [[names[i], *row] for i, row in enumerate(c["confusion_matrix"])]
    parts.append(
        R.section(
            "Classification",
            R.table(headers, rows, caption="Overall"),
            R.table(["class", "support", "sensitivity", "specificity", "precision", "ROC-AUC"], per_class,
                    caption="Per class (one vs rest)"),
            R.table(["true \\ predicted", *names], cm, caption="Confusion matrix"),
        )
    )
    if summaries and summaries[0]["images"]:
        s = result.settings
        parts.append(
            R.section(
                "Explanations of the true class",
                R.table(["metric", *[m["label"] for m in summaries]], metric_rows(summaries),
                        caption="Mean ± std over annotated images (top-k precision pooled over images)"),
                R.paragraph(
                    f"Maps compared at the {s['input_size'][1]}×{s['input_size'][2]} input; top-k: k={s['topk']}, "
                    f"{s['patch_size']} px patches, stride {s['patch_stride']}, threshold {s['topk_threshold']}; "
                    f"deletion/insertion: {s['steps']} steps of {s['deletion_patch']} px tiles (deletion to the mean "
                    f"colour, insertion from a blurred image); pointing game: a hit within "
                    f"{s.get('pointing_tolerance', 0)} px of the mask; sparsity and Gini on ReLU + min–max "
                    "scaled maps; share of oracle = (activation precision − chance) / (oracle precision − "
                    "chance), chance = the mask's area share, oracle = the mask average-pooled to the common "
                    f"{'×'.join(str(v) for v in s.get('oracle_grid') or [])} grid.",
                    note=True,
                ),
                R.figure(R.line_chart_svg({m["label"]: m["topk_curve"] for m in summaries}, "k", "precision@k"),
                         "Top-k patch precision, pooled"),
                *[
                    R.figure(
                        R.line_chart_svg(
                            {m["label"]: [p[1] for p in m[f"{kind}_curve"]] for m in summaries if m[f"{kind}_curve"]},
                            "fraction of pixels " + ("removed" if kind == "deletion" else "restored"),
                            "p(true class)",
                            x_values=[p[0] for p in summaries[0][f"{kind}_curve"]],
                        ),
                        f"{kind.capitalize()} curve (mean)",
                    )
                    for kind in ("deletion", "insertion")
                    if summaries[0][f"{kind}_curve"]
                ],
            )
        )
    if example_data:
        make_output_dir(out / "examples")
        items = []
        for e_i, ex in enumerate(example_data):
            stem = f"{e_i:03d}_{Path(ex['path']).stem}"[:60]
            view = input_view(ex["image"], mm.data_config)
            mask = ex["mask"]
            files = []
            rel = f"examples/{stem}_input.png"
            save_png(_with_outline(view, mask), out / rel, force=force)
            scaled, _, vmax = scale_maps(ex["maps"])
            rel_sc = f"examples/{stem}_softcam.png"
            save_png(_with_outline(overlay(view, scaled[ex["label"]], cmap="RdBu_r"), mask), out / rel_sc, force=force)
            row = ex["row"]
            files.append({"src": rel_sc, "caption": f"SoftCAM (AP {row['softcam']['activation_precision']:.2f})"})
            for key, sal in ex["post"].items():
                rel_b = f"examples/{stem}_{key.replace(':', '_').replace('+', 'p')}.png"
                save_png(_with_outline(overlay(view, sal, cmap="inferno"), mask), out / rel_b, force=force)
                label = next(m.label for m in result.methods if m.key == key)
                ap = row[key]["activation_precision"]
                files.append({"src": rel_b, "caption": f"{label} (AP {ap:.2f})" if ap is not None else label})
            items.append(
                {"title": Path(ex["path"]).name, "image": rel, "prediction": row["prediction"],
                 "probability": row["probability"], "label": row["label"], "overlays": files,
                 "note": "green: annotation outline; SoftCAM signed (red for, blue against), baselines in [0, 1]."}
            )
        parts.append(R.section("Examples (true-class maps)", R.gallery(items, thumb_width=200, overlay_width=150)))
    page = R.html_page(
        "softcamify evaluate",
        parts,
        subtitle=f"model {result.model} ({result.backend}); {result.data['source']}",
        footer=f"evaluated in {result.settings.get('seconds', 0):.1f} s",
    )
    R.write_report(out / "index.html", page, force=force)
    data = result.to_dict()
    write_text_atomic(out / "metrics.json", json.dumps(data, indent=2) + "\n", force=force)
    write_text_atomic(out / "per_image.json", json.dumps(result.per_image, indent=2) + "\n", force=force)
    return out / "index.html"
