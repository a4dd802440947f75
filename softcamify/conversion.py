"""convert and inspect: the core API behind ``softcamify convert`` and ``softcamify inspect``.

Why this module is long: inspect and convert with their reports and verification, one concept; the heads
(softcamify.heads) and finer grids (softcamify.dilation) are their own modules.
"""

from __future__ import annotations

import copy
import os
from dataclasses import replace

import torch
from torch import nn
from typing_extensions import Unpack

from . import sources
from .binary import classes_phrase, names_fit, two_class
from .checkpoints import LoadedModel
from .config import with_spatial_size
from .conversion_reports import ConversionReport, InspectReport
from .dilation import dilate, output_grids
from .errors import ConversionError, UsageError, ValidationError
from .heads import HeadPlan, analyze, backbone_of
from .model import SoftCAM, SoftCAMMeta, current_versions
from .options import PREPROCESSING, LoadOptions
from .tolerance import DEFAULT_ATOL, DEFAULT_RTOL, allowed

DEFAULT_SAMPLES = 8


def _as_loaded(model: nn.Module | LoadedModel, input_size: tuple[int, ...] | None) -> LoadedModel:
    if isinstance(model, LoadedModel):
        if input_size is not None:
            cfg = with_spatial_size(dict(model.data_config), input_size)
            return replace(model, data_config=cfg, notes=list(model.notes))
        return model
    if isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(".onnx"):
        raise UsageError(
            f"{os.fspath(model)} is an ONNX file: use softcamify.convert_onnx(path, output) or "
            "softcamify.inspect_onnx(path), which rewrite the graph itself, without PyTorch."
        )
    if not isinstance(model, nn.Module):
        raise UsageError(f"convert() takes an nn.Module or a LoadedModel, not {type(model).__name__}.")
    if isinstance(model, SoftCAM):  # its own preprocessing, not a guess from the module
        cfg = dict(model.meta.data_config)
        if input_size is not None:
            cfg = with_spatial_size(cfg, input_size)
        return LoadedModel(model, dict(model.meta.source), cfg, model.class_names, None, [])
    if type(model).__name__ == "ViT" and type(model).__module__.startswith("monai."):
        raise ConversionError(
            "MONAI's ViT module returns (logits, hidden states), not logits; save its state_dict and convert it "
            "as monai:ViT with its model_args (an approximate, per-patch conversion)."
        )
    from .sources import transformers as hf

    if isinstance(model, hf.HFClassifier) or hf.is_hf_model(model):  # a ModelOutput: unwrapped to its logits
        module, source, cfg, names, notes = hf.from_module(model)
        if input_size is not None:
            cfg = with_spatial_size(cfg, input_size)
        return LoadedModel(module, source, cfg, names, None, notes)
    source = sources.module_source(model)
    kind = "timm" if source["kind"] == "timm" or hasattr(model, "pretrained_cfg") else source["kind"]
    cfg = sources.data_config(model, kind, input_size=input_size)
    return LoadedModel(model, source, cfg, None, None, sources.data_notes(model, kind, input_size))


def dilated(loaded: LoadedModel | nn.Module, output_stride: int | None) -> LoadedModel:
    """The classifier rebuilt with its stride traded for dilation (the same weights, a 2× (16) or 4× (8)
    finer last feature map), recording the constructor argument in its source so that a converted model
    rebuilds it; ``None`` or 32 return it as it is. Raises :class:`UsageError` (one sentence naming what
    it offers) for a model that cannot."""
    return dilate(_as_loaded(loaded, None), output_stride)[0]


def inspect(
    model: nn.Module | LoadedModel,
    input_size: tuple[int, ...] | None = None,
    features_layer: str | None = None,
    classifier: str | None = None,
) -> InspectReport:
    """Describe a model's head and whether (and how) it converts; nothing is modified.

    ``input_size`` is spatial: (H, W), or (D, H, W) for a volume model (one whose first convolution is a
    ``Conv3d``); the report's ``spatial_dims`` says which."""
    loaded = _as_loaded(model, input_size)
    module = loaded.module
    if isinstance(module, SoftCAM):
        meta = module.meta
        info = meta.to_dict()
        with torch.no_grad():
            p = next(module.parameters())
            f = module.forward_features(
                torch.zeros(1, *loaded.data_config["input_size"], device=p.device, dtype=p.dtype)
            )
        info["evidence_grid"] = [int(v) for v in f.shape[2:]]
        info["feature_shape"] = [int(v) for v in f.shape[1:]]
        info["spatial_dims"] = module.spatial_dims
        axes = "h×w" if module.spatial_dims == 2 else "d×h×w"
        info["head_text"] = (
            f"evidence head ({meta.strategy}, {int(f.shape[1])}→{meta.num_classes} per position) → "
            f"maps → mean over {axes} = logits"
        )
        stride = (meta.conversion or {}).get("output_stride") or 32
        return InspectReport(
            meta.architecture,
            dict(meta.source),
            sources.count_parameters(module),
            loaded.data_config,
            True,
            meta.num_classes,
            meta.class_names,
            None,
            info,
            loaded.notes,
            grids={int(stride): info["evidence_grid"]},
        )
    work = copy.deepcopy(module).to("cpu").float().eval()  # analysis on the CPU in float32; the model untouched
    plan, _, _ = analyze(
        work, tuple(loaded.data_config["input_size"]), features_layer=features_layer, classifier=classifier
    )
    if plan.exact and (features_layer or classifier):
        _verify_named_cut(loaded, plan, features_layer, classifier)
    names = loaded.class_names
    grids = {32: plan.evidence_grid}
    if plan.convertible and plan.spatial_dims == 2:  # dilated backbones are offered for image models
        try:
            grids = output_grids(loaded, plan.evidence_grid, features_layer, classifier)[0]
        except Exception:  # noqa: BLE001 - the finer grids are extra information: never fail inspect for them
            pass
    return InspectReport(
        loaded.architecture,
        dict(loaded.source),
        sources.count_parameters(module),
        loaded.data_config,
        False,
        plan.num_classes,
        names,
        plan,
        None,
        list(loaded.notes),
        grids,
    )


@torch.no_grad()
def compare(original: nn.Module, converted: SoftCAM, inputs: torch.Tensor, batch_size: int = 8) -> dict[str, float]:
    """Max/mean |Δlogit|, relative error, top-1 agreement and KL between two models on ``inputs``."""
    diffs, scales, agree, kls, map_diffs, refs = [], [], [], [], [], []
    for start in range(0, inputs.shape[0], batch_size):
        x = inputs[start : start + batch_size]
        ref = original(x)
        logits, maps = converted.forward_maps(x)
        map_diffs.append((maps.mean(dim=tuple(range(2, maps.ndim))) - logits).abs().max())
        d = (logits - ref).abs()
        diffs.append(d)
        scales.append(ref.abs().max())
        refs.append(ref.detach().double())
        # decisions and their distributions; a single logit decides between two classes (softcamify.binary)
        ref2, logits2 = two_class(ref.double()), two_class(logits.double())
        agree.append((logits2.argmax(1) == ref2.argmax(1)).float())
        p = torch.log_softmax(ref2, 1)
        q = torch.log_softmax(logits2, 1)
        kls.append((p.exp() * (p - q)).sum(1))
    d = torch.cat(diffs)
    scale = max(float(torch.stack(scales).max()), 1e-12)
    all_refs = torch.cat(refs)
    return {
        "max_abs_diff": float(d.max()),
        "mean_abs_diff": float(d.mean()),
        "max_rel_diff": float(d.max()) / scale,
        "top1_agreement": float(torch.cat(agree).mean()),
        "kl_divergence": float(torch.cat(kls).mean().clamp_min(0)),
        "maps_mean_diff": float(torch.stack(map_diffs).max()),
        "logit_scale": scale,
        "logit_spread": float((all_refs.max(0).values - all_refs.min(0).values).max()),
    }


def _verify_named_cut(loaded: LoadedModel, plan: HeadPlan, features_layer: str | None, classifier: str | None) -> None:
    """A cut named by the user is only as exact as the whole model says: convert on two random inputs and
    compare with the original (the head may be exact on the named layer while the layer is not what feeds it)."""
    where = features_layer or "the default features"
    try:
        sc = convert(loaded, samples=2, features_layer=features_layer, classifier=classifier)
    except ValidationError as e:
        plan.exact = False
        plan.strategy = None
        plan.reason = (
            f"the cut at {where} does not reproduce the model ({str(e).split(';')[0]}); name the "
            "layer whose output the classifier reads"
        )
        return
    c = sc.meta.conversion
    if c.get("logit_spread", 1.0) <= 1e-6 * max(c.get("logit_scale", 0.0), 1.0):
        plan.exact = False
        plan.strategy = None
        plan.reason = (
            f"the cut at {where} cannot be verified: the model's logits do not change with the input "
            "(a zero-initialized head?)"
        )


# Long by its signature and docstring; the body is the named steps below (dilate, plan, build, verify).
def convert(
    model: nn.Module | LoadedModel,
    *,
    input_size: tuple[int, ...] | None = None,
    class_names: list[str] | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    samples: int = DEFAULT_SAMPLES,
    calibration: str | os.PathLike | None = None,
    strict: bool = False,
    seed: int = 0,
    features_layer: str | None = None,
    classifier: str | None = None,
    output_stride: int | None = None,
) -> SoftCAM:
    """Replace pooling + classifier by an evidence conv initialized from the classifier, and verify it.

    A volume model (first convolution a ``Conv3d``; ``input_size`` then (D, H, W)) gets a 1×1×1 evidence
    conv: its maps are B×K×d×h×w and ``meta.spatial_dims`` is 3.

    ``output_stride`` 16 or 8 converts the same weights in a dilated backbone (:func:`dilated`), for a 2×
    or 4× finer evidence grid; verified against the original, undilated model, so it is approximate.
    The returned model's ``meta.conversion`` holds the :class:`ConversionReport`. Raises
    :class:`ConversionError` when no (exact, with ``strict``) strategy applies and
    :class:`ValidationError` when the converted logits differ from the original by more than ``atol``.
    """
    loaded = _as_loaded(model, input_size)
    original = loaded.module
    if isinstance(original, SoftCAM):
        raise UsageError("The model is already a SoftCAM model; there is nothing to convert.")
    original.eval()
    data_config = dict(loaded.data_config)
    # analysis (float64 probes) and verification run on the CPU in float32, whatever the model's device and
    # dtype; the SoftCAM model is returned on the model's device
    original, device = sources.cpu_float32(original)
    arch = loaded.architecture
    # the classifier whose head is converted: the original, or its weights in a dilated backbone
    base = loaded if original is loaded.module else replace(loaded, module=original)
    target, original_grid = dilate(base, output_stride, features_layer, classifier)
    stride = output_stride if target is not base else None
    if stride is not None and strict:
        raise ConversionError(
            f"{arch} with output_stride {stride} converts only approximately (the same weights in a "
            "dilated backbone, verified against the original, undilated model); refused under strict.",
            param=("output_stride", "strict"),
        )
    work = copy.deepcopy(target.module).eval()
    size = tuple(data_config["input_size"])
    plan, _, evidence = analyze(work, size, features_layer=features_layer, classifier=classifier)
    if evidence is None or plan.strategy is None:
        raise ConversionError(f"{arch} has no SoftCAM conversion: {plan.reason} (head: {plan.head}).")
    head_exact, exact, reason = _exactness(plan, arch, strict, stride, original_grid)
    softcam, meta = _build_softcam(
        loaded,
        target,
        work,
        plan,
        plan.strategy,
        evidence,
        class_names,
        data_config,
        exact,
        features_layer,
        classifier,
    )
    _verify(
        original,
        target,
        softcam,
        meta,
        plan,
        plan.strategy,
        arch,
        samples=samples,
        seed=seed,
        calibration=calibration,
        atol=atol,
        rtol=rtol,
        exact=exact,
        reason=reason,
        stride=stride if head_exact else None,
        output_stride=output_stride,
        original_grid=original_grid,
        compared_with=loaded.origin,
    )
    return softcam.to(device)


def _exactness(
    plan: HeadPlan, arch: str, strict: bool, stride: int | None, original_grid: list[int] | None
) -> tuple[bool, bool, str | None]:
    """:func:`convert`'s (head exact, conversion exact, reason); refuses an approximate head if ``strict``."""
    if strict and not plan.exact:
        raise ConversionError(
            f"{arch} converts only approximately ({plan.strategy}: {plan.reason}); refused under strict.",
            param="strict",
        )
    head_exact = plan.exact
    exact, reason = plan.exact, plan.reason
    if stride is not None:
        grids = f"{'×'.join(map(str, plan.evidence_grid))} grid instead of {'×'.join(map(str, original_grid or []))}"
        dilation = f"output stride {stride}: the same weights in a dilated backbone, a {grids}"
        exact, reason = False, dilation if head_exact else f"{reason}; {dilation}"
    return head_exact, exact, reason


def _build_softcam(
    loaded: LoadedModel,
    target: LoadedModel,
    work: nn.Module,
    plan: HeadPlan,
    strategy: str,
    evidence: nn.Module,
    class_names: list[str] | None,
    data_config: dict,
    exact: bool,
    features_layer: str | None,
    classifier: str | None,
) -> tuple[SoftCAM, SoftCAMMeta]:
    """The SoftCAM model (``work``'s backbone up to ``plan.split``, the evidence head) and its metadata."""
    size = tuple(data_config["input_size"])
    features, _ = backbone_of(work, plan.split, size, features_layer, classifier)
    split = plan.split
    head = evidence.float()
    k = plan.num_classes
    if class_names is None:
        class_names = loaded.class_names
    if class_names is not None and not names_fit(k, len(class_names)):
        raise UsageError(
            f"class_names lists {len(class_names)} names but the model has {classes_phrase(k)}.", param="class_names"
        )
    source = dict(target.source)
    source["split"] = split
    if features_layer or classifier:
        source.update(features_layer=features_layer, classifier=classifier)
    meta = SoftCAMMeta(
        source=source,
        strategy=strategy,
        exact=exact,
        num_classes=k,
        class_names=list(class_names) if class_names else [f"class_{i}" for i in range(k)],
        data_config=data_config,
        head=head.spec(),
        layout=plan.layout,
        versions=current_versions(),
        spatial_dims=plan.spatial_dims,
    )
    return SoftCAM(features, head, meta).eval(), meta


def _verify(
    original: nn.Module,
    target: LoadedModel,
    softcam: SoftCAM,
    meta: SoftCAMMeta,
    plan: HeadPlan,
    strategy: str,
    arch: str,
    *,
    samples: int,
    seed: int,
    calibration: str | os.PathLike | None,
    atol: float,
    rtol: float,
    exact: bool,
    reason: str | None,
    stride: int | None,
    output_stride: int | None,
    original_grid: list[int] | None,
    compared_with: str = "the module as given",
) -> None:
    """Compare ``softcam`` with ``original`` on random (and calibration) inputs; store the report in ``meta``.

    ``stride``: set when the head is exact on a dilated backbone, which it must then match (``target``).
    Raises :class:`ValidationError` when either comparison fails.
    """
    data_config = meta.data_config
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, *data_config["input_size"], generator=g)
    n_cal = 0
    if calibration is not None:
        from .data.collect import calibration_images

        cal = torch.from_numpy(calibration_images(calibration, data_config))
        n_cal = cal.shape[0]
        inputs = torch.cat([inputs, cal], 0)
    stats = compare(original, softcam, inputs)
    dilated_diff = None
    if stride is not None:  # the head itself must still be exact on the dilated network
        own = compare(target.module, softcam, inputs)
        dilated_diff = own["max_abs_diff"]
        if dilated_diff > allowed(own["logit_scale"], atol, rtol):
            raise ValidationError(
                f"The converted {arch} differs from its dilated network (output_stride {stride}) by "
                f"max |Δlogit| = {dilated_diff:.3g} > atol {atol:g} + rtol {rtol:g} × logit scale "
                f"{own['logit_scale']:.3g}; nothing was written.",
                param=("output_stride", "atol", "rtol"),
            )
    report = ConversionReport(
        exact=exact,
        strategy=strategy,
        architecture=arch,
        num_classes=plan.num_classes,
        evidence_grid=plan.evidence_grid,
        input_size=list(data_config["input_size"]),
        samples=samples,
        calibration_images=n_cal,
        atol=atol,
        rtol=rtol,
        # like numpy.allclose, relative to the logit scale: float32 round-off grows with the logits
        passed=stats["max_abs_diff"] <= allowed(stats["logit_scale"], atol, rtol) if exact else True,
        output_stride=output_stride,
        original_grid=original_grid,
        dilated_max_abs_diff=dilated_diff,
        compared_with=compared_with,
        **stats,
    )
    report.notes.append(f"verified against {compared_with}.")
    # a guessed preprocessing (MONAI records none) stays visible in the file's metadata
    kind = str(target.source.get("kind"))
    report.notes += sources.data_notes(target.module, kind, tuple(int(v) for v in data_config["input_size"][1:]))
    _add_notes(report, inputs.shape[0], stats, exact, strategy, reason)
    meta.conversion = report.to_dict()
    if not report.passed:
        raise ValidationError(
            f"The converted {arch} differs from the original by max |Δlogit| = {report.max_abs_diff:.3g} "
            f"> atol {atol:g} + rtol {rtol:g} × logit scale {report.logit_scale:.3g}; "
            "nothing was written.",
            param=("atol", "rtol"),
        )


def _add_notes(
    report: ConversionReport, n_inputs: int, stats: dict, exact: bool, strategy: str, reason: str | None
) -> None:
    """The report's notes: a check that cannot fail (constant logits), an approximate conversion."""
    if n_inputs > 1 and stats["logit_spread"] <= 1e-6 * max(stats["logit_scale"], 1.0):
        report.notes.append(
            "the original's logits do not change with the input (e.g. a zero-initialized head): this check "
            "cannot tell a right conversion from a wrong one; verify with calibration images (--calibration)."
        )
    if not exact:
        report.notes.append(
            f"approximate conversion ({strategy}: {reason}); fine-tune before use "
            f"(top-1 agreement {report.top1_agreement:.1%}, max |Δlogit| {report.max_abs_diff:.3g})."
        )


def as_softcam(
    model: str | os.PathLike | nn.Module | LoadedModel,
    *,
    strict: bool = False,
    atol: float = DEFAULT_ATOL,
    output_stride: int | None = None,
    **options: Unpack[LoadOptions],
) -> tuple[SoftCAM, LoadedModel]:
    """A SoftCAM model from anything ``convert`` accepts; softcamify checkpoints are loaded as they are.

    This is what every command that needs a SoftCAM model (finetune, export, explain, evaluate) calls.
    ``options`` (:class:`softcamify.options.LoadOptions`) are :func:`softcamify.checkpoints.load_model`'s;
    for a module or :class:`LoadedModel` only ``input_size`` and the preprocessing ones apply. The converted
    model records the preprocessing.
    """
    from .checkpoints import load_model
    from .checkpoints.loading import with_preprocessing

    input_size = options.get("input_size")
    if isinstance(model, (LoadedModel, nn.Module)):
        preprocessing = {k: options.get(k) for k in PREPROCESSING}
        loaded = with_preprocessing(_as_loaded(model, input_size), **preprocessing)
    else:
        loaded = load_model(model, **options)
    if isinstance(loaded.module, SoftCAM):
        sc = loaded.module
        converted_at = (sc.meta.conversion or {}).get("output_stride") or 32
        if output_stride is not None and output_stride != converted_at:
            raise UsageError(
                f"output_stride {output_stride}: this is already a SoftCAM model, converted "
                f"at output_stride {converted_at}; convert the original classifier again to "
                "change it.",
                param="output_stride",
            )
        if input_size is not None:
            sc.meta.data_config = dict(loaded.data_config)
        return sc, loaded
    return convert(loaded, atol=atol, strict=strict, output_stride=output_stride), loaded
