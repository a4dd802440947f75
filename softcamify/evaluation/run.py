"""Evaluate a SoftCAM model on a labelled dataset: classification, and explanation quality against masks.

``evaluate(model, data_dir)``, in named steps (arguments, setup, the two passes, the result):

1. **Classification** on every image of the split: accuracy, balanced accuracy, macro ROC-AUC,
   per-class sensitivity/specificity, confusion matrix, quadratic kappa with ``ordinal=True``
   (:func:`softcamify.evaluation.metrics.classification_report`). With ``original=`` the original black box is
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

Why this module is long: evaluate's steps (setup, classification, maps per method, scoring) in the order they
run; arguments, the original classifier, metrics, samples, scoring, results and the report are their own
modules.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import images as _images
from ..errors import UsageError
from ..io import check_output_dir
from ..runtime import Runtime, load, softmax
from . import arguments as _args
from . import metrics as M
from .gates import check_gate_targets, check_gates, parse_gates, write_junit
from .original import Predict, load_original, torch_predict
from .report import write_report
from .results import EvaluationResult, MethodResult, image_counts
from .samples import Item, align_mask, evaluation_samples, match_labels
from .scoring import faithfulness_metrics, localisation_metrics, reference_values
from .settings import ExplanationOptions, check_options, resolve_settings

__all__ = ["evaluate"]

# The explanation pass calls the deletion/insertion step through this module-level name, so a benchmark or a
# test can swap in its per-image form (benchmarks/evaluate_speed.py, tests/test_evaluation.py).
_faithfulness_metrics = faithfulness_metrics

Progress = Callable[[str, int, int], None]


@dataclass
class _Run:
    """What the steps of one evaluation share once the model, the data and the settings are known."""

    mm: Runtime
    root: Path
    mask_root: Path | None
    desc: str
    ds_names: list[str]
    report_names: list[str]
    items: list[Item]
    settings: dict[str, Any]
    notes: list[str]
    batch_size: int
    progress: Progress | None
    original: Any = None  # the original classifier (a torch module) with ``original=``
    orig_predict: Predict | None = None


# Long by its signature (every option of softcamify evaluate, keyword-only) and its docstring; the body is
# the named steps below (setup, gates, passes, scoring, report).
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
    batch_size: int | None = None,
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
    fail_under: str | Mapping[str, float] | None = None,
    fail_over: str | Mapping[str, float] | None = None,
    junit: str | os.PathLike | None = None,
    model_args: dict[str, Any] | None = None,
    module: str | None = None,
    class_names: Sequence[str] | None = None,
    **preprocessing: Any,
) -> EvaluationResult:
    """Classification metrics on a dataset split and explanation metrics of the true class against masks.

    Args:
        model: a SoftCAM model, softcamify ``.safetensors``, convertible checkpoint, or an ``.onnx``
            export (no baselines then: they need torch).
        data_dir: a dataset root with ``train/val/test`` class folders, or one folder of class folders.
        split: which split of a dataset root (a flat class-folder layout is used whole).
        masks: mask root mirroring ``data_dir`` (default ``data_dir/masks`` when it exists).
        baselines: pytorch-grad-cam methods, e.g. ``"gradcam,layercam,scorecam"`` (see
            :data:`softcamify.evaluation.baselines.METHODS`); computed on the same model, and on ``original``.
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
        weights, num_classes, input_size, ema, model_args, preprocessing (``mean``, ``std``, ``crop_pct``,
            ``interpolation``): as for :func:`softcamify.checkpoints.load_model` when ``model`` is converted on
            the fly (the preprocessing also overrides a converted model's).
        original_weights: weights for ``original`` given as an architecture name (a weights-only file).
        module, model_args: the original classifier's class of your own (``"package.module:Class"``) and its
            constructor arguments: they build ``model`` when it is converted on the fly, and ``original``.
        class_names: the model's class names (its count must be the model's), for the labels and reports.
        progress: called as ``progress(stage, done, total)``.
        fail_under, fail_over: quality gates (:mod:`softcamify.evaluation.gates`), e.g.
            ``"accuracy=0.95,sensitivity[malignant]=0.8"``: a metric must be at least (``fail_under``) or at
            most (``fail_over``) its threshold. They are checked before the passes (unknown metric, method or
            class: :class:`UsageError`) and judged in ``result.gates``; a failed gate raises nothing here
            (:func:`~softcamify.evaluation.gates.require_gates` does).
        junit: write the gates as a JUnit XML report there (atomically; ``force`` to overwrite).
    """
    # Longer than 80 lines only by its keyword API (one parameter per CLI option) and their documentation; the
    # work is done by the steps below, in this order (the order in which invalid arguments are reported).
    t_start = time.perf_counter()
    opts = check_options(
        ExplanationOptions(
            patch_size=patch_size,
            patch_stride=patch_stride,
            topk=topk,
            topk_threshold=topk_threshold,
            steps=steps,
            deletion_patch=deletion_patch,
            sparsity_threshold=sparsity_threshold,
            pointing_tolerance=pointing_tolerance,
            oracle_grid=oracle_grid,
            max_images=max_images,
        ),
        batch_size or 16,
    )
    gates = parse_gates(fail_under, fail_over)
    out = check_output_dir(out_dir, force=force) if out_dir is not None else None
    junit_path = _args.junit_path(junit, out, force)
    root, mask_root = _args.data_roots(data_dir, masks)
    if original_weights is not None and module is not None:
        raise UsageError(
            f"With module, original is the weights file of {module}; give it as original, not as original_weights.",
            param=("original", "original_weights"),
        )
    deferred: UsageError | None = None
    try:
        methods = _args.baseline_methods(baselines)
    except UsageError as e:  # a volume model has its own baselines (MONAI): judged once the model is known
        methods, deferred = [], e
    mm = load(
        model,
        device=device,
        trust_pickle=trust_pickle,
        weights=weights,
        num_classes=num_classes,
        input_size=input_size,
        ema=ema,
        model_args=model_args,
        module=module,
        class_names=class_names,
        **preprocessing,
    )
    if mm.volume is not None:  # a volume model: 3-D masks, MONAI baselines (evaluation/volume.py)
        result = _evaluate_volumes(mm, root, mask_root, split, baselines, original, ordinal, opts, batch_size, progress)
        check_gate_targets(gates, methods=[m.key for m in result.methods], ordinal=ordinal, original=False)
        check_gate_targets(gates, class_names=result.data["class_names"])
        return _finish(result, gates, junit_path, out, mm, force, result.data["source"])
    if deferred is not None:
        raise deferred
    keys = ["softcam", *methods, *([f"original:{m}" for m in methods] if original is not None else [])]
    check_gate_targets(gates, methods=keys, ordinal=ordinal, original=original is not None)
    if (methods or original is not None) and mm.kind != "torch":
        raise UsageError(
            "baselines and original need a PyTorch model (.safetensors), not an .onnx file.",
            param=("baselines", "original"),
        )
    run = _setup(mm, root, mask_root, split, opts, methods, batch_size or 16, progress)
    check_gate_targets(gates, class_names=run.report_names)
    if original_weights is not None and not isinstance(original, str | os.PathLike):
        raise UsageError(
            "original_weights needs original to name the architecture (e.g. resnet50).",
            param=("original_weights", "original"),
        )
    if original is not None:
        run.original = load_original(original, mm, trust_pickle, original_weights, module, model_args)
        run.orig_predict = torch_predict(run.original, mm.device)
    result = _compute(run, model, methods, ordinal, examples, opts.max_images)
    result.settings["seconds"] = time.perf_counter() - t_start
    return _finish(result, gates, junit_path, out, mm, force, run.desc)


def _finish(
    result: EvaluationResult, gates: Any, junit_path: Path | None, out: Path | None, mm: Runtime, force: bool, desc: str
) -> EvaluationResult:
    """Judge the gates; write the report and the JUnit file."""
    result.gates = check_gates(result, gates)
    if junit_path is not None:
        result.junit = str(junit_path)
    if out is not None:
        write_report(result, out, result.examples, mm, force=force)
    if junit_path is not None:
        props = {"model": result.model, "data": desc}
        write_junit(result.gates, junit_path, force=force, properties=props, seconds=result.settings["seconds"])
    return result


def _evaluate_volumes(
    mm: Runtime,
    root: Path,
    mask_root: Path | None,
    split: str,
    baselines: Any,
    original: Any,
    ordinal: bool,
    opts: ExplanationOptions,
    batch_size: int | None,
    progress: Progress | None,
) -> EvaluationResult:
    from .volume import evaluate_volumes

    if original is not None:
        raise UsageError(
            "original is not supported for a volume model yet; evaluate the original apart.", param="original"
        )
    return evaluate_volumes(
        mm,
        root,
        mask_root,
        split,
        baselines=baselines,
        ordinal=ordinal,
        max_images=opts.max_images,
        batch_size=batch_size,
        sparsity_threshold=opts.sparsity_threshold,
        pointing_tolerance=opts.pointing_tolerance,
        oracle_grid=opts.oracle_grid,
        progress=progress,
    )


# --------------------------------------------------------------------------------------------------------
# Arguments and setup
# --------------------------------------------------------------------------------------------------------


def _setup(
    mm: Runtime,
    root: Path,
    mask_root: Path | None,
    split: str,
    opts: ExplanationOptions,
    methods: list[str],
    batch_size: int,
    progress: Progress | None,
) -> _Run:
    """The images to evaluate with their model labels, and the settings (patch grid, batch sizes)."""
    notes: list[str] = []
    pairs, ds_names, desc = evaluation_samples(root, split, mask_root)
    to_model, report_names = match_labels(ds_names, mm.class_names, notes, binary=mm.num_logits == 1)
    settings = resolve_settings(mm, split, opts, methods, batch_size)
    items = [Item(p, to_model[y]) for p, y in pairs]
    return _Run(mm, root, mask_root, desc, list(ds_names), report_names, items, settings, notes, batch_size, progress)


# --------------------------------------------------------------------------------------------------------
# The two passes and the result
# --------------------------------------------------------------------------------------------------------


def _compute(
    run: _Run, model: Any, methods: list[str], ordinal: bool, examples: int, max_images: int | None
) -> EvaluationResult:
    """Classify every image, explain the annotated ones, and gather the result (nothing is written)."""
    probs, orig_probs, with_mask = _classify(run)
    y_true = np.array([it.label for it in run.items], dtype=np.int64)
    classification = M.classification_report(y_true, probs, run.report_names, ordinal=ordinal)
    orig_class = (
        M.classification_report(y_true, orig_probs, run.report_names, ordinal=ordinal)
        if orig_probs is not None
        else None
    )
    if run.settings["oracle_grid"] is None:  # one reference grid for every method of the report
        run.settings["oracle_grid"] = list(run.settings["evidence_grid"])
    annotated = [i for i, it in enumerate(run.items) if it.mask is not None]
    explained = annotated if max_images is None else annotated[:max_images]
    counts = _counts(run, with_mask, len(annotated), len(explained))
    results, explainers = _methods(run, methods)
    per_image, example_data = _explain(run, explained, probs, results, explainers, examples)
    for _, ex, _ in explainers:
        ex.close()
    return EvaluationResult(
        model=getattr(run.mm, "description", "") or str(model),
        backend=run.mm.kind,
        data={
            "data_dir": str(run.root),
            "source": run.desc,
            "masks": str(run.mask_root) if run.mask_root else None,
            "class_names": run.report_names,
            "dataset_class_names": list(run.ds_names),
        },
        counts=counts,
        classification=classification,
        original_classification=orig_class,
        methods=results,
        settings=run.settings,
        notes=run.notes,
        per_image=per_image,
        examples=example_data,
    )


def _classify(run: _Run) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Pass 1 on every image: ``(probabilities, the original's probabilities or None, images with a mask
    file)``; each image's mask, aligned to the input, is kept on its item when it has foreground."""
    mm, items, batch_size = run.mm, run.items, run.batch_size
    n = len(items)
    probs = np.zeros((n, mm.num_classes), dtype=np.float64)
    orig_probs = np.zeros_like(probs) if run.orig_predict is not None else None
    channels = mm.input_size[0]
    with_mask = 0
    for start in range(0, n, batch_size):
        chunk = items[start : start + batch_size]
        opened = [_images.open_image(it.path, channels=channels) for it in chunk]
        x = np.stack([mm.preprocess(img) for img in opened]).astype(np.float32)
        logits, maps = mm(x)
        run.settings["evidence_grid"] = [int(maps.shape[-2]), int(maps.shape[-1])]
        probs[start : start + len(chunk)] = softmax(logits)
        if run.orig_predict is not None and orig_probs is not None:
            orig_probs[start : start + len(chunk)] = run.orig_predict(x)
        if run.mask_root is not None:
            with_mask += _attach_masks(run, chunk, opened)
        if run.progress is not None:
            run.progress("classifying", min(start + batch_size, n), n)
    return probs, orig_probs, with_mask


def _attach_masks(run: _Run, chunk: Sequence[Item], opened: Sequence[Any]) -> int:
    """Find each image's mask file and keep the aligned mask when it has foreground; returns the number of
    mask files found."""
    from ..data import mask_path_for

    assert run.mask_root is not None
    found = 0
    for it, img in zip(chunk, opened, strict=True):
        mp = mask_path_for(it.path, run.root, run.mask_root)
        if mp is None:
            continue
        found += 1
        it.mask_path = mp
        m = align_mask(mp, img, run.mm.data_config)
        if m.any():
            it.mask = m
    return found


def _counts(run: _Run, with_mask: int, annotated: int, explained: int) -> dict[str, int]:
    """The image counts of the result, with a note for what could not be explained."""
    return image_counts(len(run.items), with_mask, annotated, explained, run.mask_root, run.notes)


def _methods(run: _Run, methods: list[str]) -> tuple[list[MethodResult], list[tuple[MethodResult, Any, Predict]]]:
    """SoftCAM's result first, then one per post-hoc method on the SoftCAM model and on the original."""
    results = [MethodResult("softcam", "SoftCAM", "softcam")]
    explainers: list[tuple[MethodResult, Any, Predict]] = []
    if methods:
        from .baselines import PostHocExplainer, original_target, softcam_target

        mm = run.mm
        for key in methods:
            ex = PostHocExplainer(softcam_target(mm.module), key, batch_size=run.batch_size)
            res = MethodResult(key, ex.label, "softcam")
            explainers.append((res, ex, mm.predict_proba))
            results.append(res)
        if run.original is not None:
            assert run.orig_predict is not None
            for key in methods:
                target = original_target(run.original, mm.input_size)
                ex = PostHocExplainer(target, key, batch_size=run.batch_size)
                res = MethodResult(f"original:{key}", f"{ex.label} (original)", "original")
                explainers.append((res, ex, run.orig_predict))
                results.append(res)
    return results, explainers


def _explain(
    run: _Run,
    explained: Sequence[int],
    probs: np.ndarray,
    results: list[MethodResult],
    explainers: Sequence[tuple[MethodResult, Any, Predict]],
    examples: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pass 2 on the annotated images: every method's metrics go to its records; returns the per-image rows
    and the report's example data."""
    mm, batch_size = run.mm, run.batch_size
    per_image: list[dict[str, Any]] = []
    example_data: list[dict[str, Any]] = []
    n_ex = len(explained)
    for start in range(0, n_ex, batch_size):
        idx = explained[start : start + batch_size]
        chunk = [run.items[i] for i in idx]
        opened = [_images.open_image(it.path, channels=mm.input_size[0]) for it in chunk]
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
        refs = [reference_values(_mask(it), run.settings["oracle_grid"]) for it in chunk]
        rows = [_image_row(it, probs[i], run.report_names, ref) for it, i, ref in zip(chunk, idx, refs, strict=True)]
        for res in results:
            sals = [maps[j, it.label] if res.key == "softcam" else post[res.key][j] for j, it in enumerate(chunk)]
            _score(run, res, x, sals, chunk, refs, rows)
        for j, row in enumerate(rows):
            per_image.append(M.json_safe(row))
            if len(example_data) < examples:
                example_data.append(
                    {
                        "image": opened[j],
                        "mask": chunk[j].mask,
                        "label": chunk[j].label,
                        "path": chunk[j].path,
                        "maps": maps[j],
                        "post": {k: v[j] for k, v in post.items()},
                        "row": row,
                    }
                )
        if run.progress is not None:
            run.progress("explaining", min(start + batch_size, n_ex), n_ex)
    return per_image, example_data


def _mask(it: Item) -> np.ndarray:
    assert it.mask is not None  # pass 2 sees annotated images only
    return it.mask


def _image_row(it: Item, p: np.ndarray, names: Sequence[str], ref: dict[str, float]) -> dict[str, Any]:
    """An image's row of ``per_image.json`` before the methods' metrics are added."""
    pred = int(np.argmax(p))
    return {
        "path": str(it.path),
        "label": names[it.label],
        "prediction": names[pred],
        "probability": float(np.max(p)),
        "correct": bool(pred == it.label),
        "mask": str(it.mask_path),
        "mask_share": float(_mask(it).mean()),
        "oracle_precision": ref["oracle_precision"],
    }


def _score(
    run: _Run,
    res: MethodResult,
    x: np.ndarray,
    sals: Sequence[np.ndarray],
    chunk: Sequence[Item],
    refs: Sequence[dict[str, float]],
    rows: Sequence[dict[str, Any]],
) -> None:
    """One method's metrics on one chunk of images, added to its records and to each image's row."""
    predict = run.mm.predict_proba if res.model == "softcam" else run.orig_predict
    assert predict is not None
    faith = _faithfulness_metrics(predict, x, sals, [it.label for it in chunk], run.settings)
    for j, it in enumerate(chunk):
        rec, tk = localisation_metrics(sals[j], _mask(it), run.settings)
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
