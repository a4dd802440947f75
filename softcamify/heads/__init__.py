"""Finding a classifier's head and converting it into a class-evidence head.

``analyze(model, input_size)`` splits the model at its last feature map, traces the head, and tries
the registered strategies (exact ones first). The result, a :class:`HeadPlan`, is what ``inspect``
reports and what ``convert`` builds from. Strategies live one per module (``linear``, ``normed``)
and register themselves in :data:`STRATEGIES`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConversionError
from . import approximate as _approximate  # noqa: F401
from . import linear as _linear  # noqa: F401  (registers the strategy)
from . import normed as _normed  # noqa: F401
from .base import STRATEGIES, Context, ModelParts, NotApplicable, Strategy, get_strategy, register
from .evidence import EvidenceHead, build_head
from .graph import (
    ACT,
    AFFINE,
    CONV,
    LINEAR,
    NORM,
    POOL,
    MethodAsModule,
    Step,
    describe,
    extract,
    find_global_pool,
    output_node,
    steps_of,
    trace,
)

__all__ = [
    "backbone_of",
    "HeadPlan",
    "ModelParts",
    "Strategy",
    "STRATEGIES",
    "EvidenceHead",
    "analyze",
    "split_model",
    "build_head",
    "register",
    "get_strategy",
    "NotApplicable",
    "Context",
]


@dataclass
class HeadPlan:
    """What ``inspect`` shows: the head as found, and how (whether) it converts."""

    feature_shape: list[int]  # [C, H, W] of the last feature map at the input size ([C, D, H, W] for volumes)
    layout: str  # "NCHW" or "NHWC" (the backbone's own layout; SoftCAM maps are always NCHW)
    num_classes: int
    head: str  # human-readable chain, e.g. "global avg pool → Linear(512→10)"
    steps: list[Step]
    pooling: str | None
    between: list[str]  # norm / dropout / flatten / activation ... between pooling and classifier
    classifier: str | None
    strategy: str | None
    exact: bool
    reason: str | None  # why no (exact) strategy applies
    tried: dict[str, str] = field(default_factory=dict)  # strategy -> why it did not fit
    split: str = "timm"

    @property
    def evidence_grid(self) -> list[int]:
        """[h, w] of the evidence maps ([d, h, w] for volumes)."""
        return list(self.feature_shape[1:])

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes."""
        return len(self.feature_shape) - 1

    @property
    def convertible(self) -> bool:
        return self.strategy is not None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = [s.to_dict() for s in self.steps]
        d["evidence_grid"] = self.evidence_grid
        d["spatial_dims"] = self.spatial_dims
        return d


# The parameters that name the cut of a model :func:`split_model` cannot split by itself.
CUT_PARAMS = ("features_layer", "classifier")


def _is_timm_model(model: nn.Module) -> bool:
    return callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None))


def _default_input(model: nn.Module) -> tuple[int, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") or (3, 224, 224)
    from ..sources import VOLUME_SIZE, first_conv_channels, spatial_dims

    channels = first_conv_channels(model) or int(size[0])
    if spatial_dims(model) == 3:
        return (channels, *VOLUME_SIZE)
    return (channels, int(size[1]), int(size[2]))


def _size_text(size: tuple[int, ...]) -> str:
    """'224×224' for an image input (C, H, W), '16×112×112' for a volume (C, D, H, W)."""
    return "×".join(str(int(v)) for v in size[1:])


def _try_trace(module: nn.Module):
    try:
        return trace(module)
    except Exception:
        return None


def split_model(
    model: nn.Module,
    input_size: tuple[int, ...] | None = None,
    features_layer: str | None = None,
    classifier: str | None = None,
) -> ModelParts:
    """Split a classifier into features and head.

    timm models split at ``forward_features`` / ``forward_head`` (token models through a patch grid);
    any other module is traced with fx and cut at its global pooling. ``features_layer`` (the module
    whose output is the last feature map) and ``classifier`` name the cut when it cannot be found.
    """
    if features_layer or classifier:
        return _split_named(model, features_layer, classifier)
    if _is_timm_model(model):
        features = MethodAsModule(model, "forward_features")
        head = MethodAsModule(model, "forward_head")
        described = steps_of(g) if (g := _try_trace(head)) is not None else []
        size = input_size or _default_input(model)
        with torch.no_grad():
            x = torch.zeros(1, *size)
            try:
                f = features(x)
            except Exception as e:
                raise ConversionError(
                    f"The backbone fails on a {_size_text(size)} input ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); pass input_size with a size the model accepts.",
                    param="input_size",
                ) from e
        if isinstance(f, torch.Tensor) and f.ndim == 3:
            return _token_parts(model, features, head, f, size, described)
        if not isinstance(f, torch.Tensor) or f.ndim != 4:
            shape = list(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise ConversionError(f"The backbone returns {shape}, not a feature map or token sequence.")
        nf = getattr(model, "num_features", None)
        layout = "NHWC" if nf is not None and f.shape[-1] == nf and f.shape[1] != nf else "NCHW"
        return ModelParts(features, head, g, "timm", layout, None, described)
    try:
        gm = trace(model)
    except Exception as e:
        raise ConversionError(
            f"{type(model).__name__} could not be traced with torch.fx ({type(e).__name__}: {str(e).splitlines()[0]}); "
            f"name the cut with {_naming_hint(model)}.",
            param=CUT_PARAMS,
        ) from e
    try:
        pool, feat = find_global_pool(gm)
        features = extract(gm, None, feat)
        head = extract(gm, feat, output_node(gm))
    except ValueError as e:
        raise ConversionError(
            f"{type(model).__name__}: {e}; name the cut with {_naming_hint(model)}.", param=CUT_PARAMS
        ) from e
    return ModelParts(features, head, head, "fx", "NCHW", None, steps_of(head))


def _naming_hint(model: nn.Module) -> str:
    """``features_layer='X' and classifier='Y'`` with the likeliest module names of this model (quoted, so a
    module called ``classifier`` is never taken for the parameter)."""
    linear = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear,)) and n]
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)) and n]
    top = [n for n, _ in model.named_children()]
    clf = linear[-1] if linear else "CLASSIFIER"
    feat = next((t for t in reversed(top) if not clf.startswith(t) and any(c.startswith(t) for c in convs)), None)
    return f"features_layer={feat or 'LAYER'!r} and classifier={clf!r}"


def _split_named(model: nn.Module, features_layer: str | None, classifier: str | None) -> ModelParts:
    from ..errors import UsageError
    from .graph import HookedFeatures, module_node

    modules = dict(model.named_modules())
    for param, name in (("features_layer", features_layer), ("classifier", classifier)):
        if name is not None and name not in modules:
            close = [repr(n) for n in modules if n and (name in n or n in name)][:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UsageError(f"{param} {name!r} is not a module of {type(model).__name__}{hint}.", param=param)
    try:
        gm = trace(model)
    except Exception:
        gm = None
    if gm is not None:
        feat = module_node(gm, features_layer) if features_layer else None
        if feat is None and classifier:
            clf = module_node(gm, classifier)
            if clf is not None:
                try:
                    _, feat = find_global_pool(gm, clf)
                except ValueError:
                    feat = None
        if feat is not None:
            try:
                features = extract(gm, None, feat)
                head = extract(gm, feat, output_node(gm))
                return ModelParts(features, head, head, "fx", "NCHW", None, steps_of(head))
            except ValueError:
                pass
    if not (features_layer and classifier):
        raise UsageError(
            "This model cannot be cut automatically: pass both features_layer and classifier.", param=CUT_PARAMS
        )
    from ..sources import spatial_dims

    pool = nn.AdaptiveAvgPool3d(1) if spatial_dims(model) == 3 else nn.AdaptiveAvgPool2d(1)
    head = nn.Sequential(pool, nn.Flatten(1), modules[classifier])
    return ModelParts(
        HookedFeatures(model, features_layer),
        head,
        _try_trace(head),
        "hooked",
        "NCHW",
        None,
        steps_of(g) if (g := _try_trace(head)) is not None else [],
    )


def _token_parts(model, features, head, tokens, size, described) -> ModelParts:
    from .tokens import TokenGrid, TokenHead, head_reads_prefix, patch_size, prefix_tokens

    prefix = prefix_tokens(model, tokens.shape[1])
    patch = patch_size(model)
    n = tokens.shape[1] - prefix
    if patch is not None and (size[1] // patch[0]) * (size[2] // patch[1]) != n:
        patch = None
    if patch is None and math.isqrt(n) ** 2 != n:
        raise ConversionError(
            f"The model returns {tokens.shape[1]} tokens ({prefix} prefix), which do not form a square patch grid."
        )
    grid_head = TokenHead(head, prefix)
    info = {
        "prefix": prefix,
        "patch": list(patch) if patch else None,
        "reads_prefix": head_reads_prefix(head, torch.randn_like(tokens), prefix),
    }
    return ModelParts(
        TokenGrid(features, prefix, patch), grid_head, _try_trace(grid_head), "timm", "NHWC", info, described
    )


def _summarize(steps: list[Step]) -> tuple[str | None, list[str], str | None]:
    pooling = next((s.detail for s in steps if s.role == POOL), None)
    classifier_idx = max((i for i, s in enumerate(steps) if s.role == LINEAR), default=None)
    classifier = steps[classifier_idx].detail if classifier_idx is not None else None
    pool_idx = next((i for i, s in enumerate(steps) if s.role == POOL), -1)
    end = classifier_idx if classifier_idx is not None else len(steps)
    between = [
        s.detail
        for s in steps[pool_idx + 1 : end]
        if s.role in (NORM, ACT, CONV, AFFINE, LINEAR)
        or s.detail.startswith(("Dropout", "Flatten", "flatten", "dropout"))
    ]
    return pooling, between, classifier


def _reason(steps: list[Step], tried: dict[str, str], tokens: dict | None = None) -> str:
    if tokens is not None and tokens.get("reads_prefix"):
        return "the head reads the class token, not the average of the patch tokens"
    for s in steps:
        if s.role == POOL and s.params.get("kind") not in ("avg", "fixed"):
            return f"the head uses {s.detail}"
    for s in steps:
        if s.role in (ACT, CONV):
            return f"the head applies {s.detail} after pooling (a nonlinear pre-logits stage)"
    return "; ".join(f"{k}: {v}" for k, v in tried.items()) or "no strategy applies"


def analyze(
    model: nn.Module,
    input_size: tuple[int, ...],
    *,
    strategies: list[str] | None = None,
    features_layer: str | None = None,
    classifier: str | None = None,
) -> tuple[HeadPlan, ModelParts, nn.Module | None]:
    """Find the head, try the strategies; return the plan, the parts and the float64 evidence head.

    ``input_size`` is (C, H, W) for an image model and (C, D, H, W) for a volume model: the features
    are then N×C×D×H×W and the evidence head a 1×1×1 convolution.
    """
    model.eval()
    parts = split_model(model, input_size, features_layer, classifier)
    with torch.no_grad():
        try:
            f = parts.features(torch.zeros(1, *input_size))
        except Exception as e:
            raise ConversionError(
                f"The backbone fails on a {_size_text(input_size)} input ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); pass input_size with a size the model accepts.",
                param="input_size",
            ) from e
        if f.ndim != len(input_size) + 1 or (f.ndim == 5 and parts.layout != "NCHW"):
            raise ConversionError(
                f"The backbone returns a {f.ndim}-D tensor of shape {list(f.shape)}, not a feature map."
            )
        logits = parts.head(f)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ConversionError("The head does not return a B×K tensor of logits.")
    num_classes = logits.shape[1]
    layout = parts.layout
    depth = int(f.shape[2]) if f.ndim == 5 else None
    c, h, w = (f.shape[3], f.shape[1], f.shape[2]) if layout == "NHWC" else (f.shape[1], f.shape[-2], f.shape[-1])
    steps = parts.described or (steps_of(parts.graph) if parts.graph is not None else [])
    pooling, between, classifier = _summarize(steps)
    if parts.tokens is not None:
        pooling = "class token" if parts.tokens["reads_prefix"] else (pooling or "token average")

    head64 = copy.deepcopy(parts.graph if parts.graph is not None else parts.head).double().eval()
    graph64 = head64 if parts.graph is not None else None
    ctx = Context(head64, graph64, steps, int(c), int(h), int(w), int(num_classes), layout, parts.tokens, depth=depth)
    tried: dict[str, str] = {}
    chosen: Strategy | None = None
    evidence = None
    for strategy in STRATEGIES:
        if strategies is not None and strategy.name not in strategies:
            continue
        if strategy.exact and parts.tokens is not None and parts.tokens["reads_prefix"]:
            tried[strategy.name] = "the head reads the class token, not the average of the patch tokens"
            continue
        try:
            evidence = strategy.build(ctx)
            chosen = strategy
            break
        except NotApplicable as e:
            tried[strategy.name] = str(e)
    plan = HeadPlan(
        feature_shape=[int(c), *ctx.spatial],
        layout=layout,
        num_classes=int(num_classes),
        head=describe(steps) if steps else "(not traceable)",
        steps=steps,
        pooling=pooling,
        between=between,
        classifier=classifier,
        strategy=chosen.name if chosen else None,
        exact=bool(chosen and chosen.exact),
        reason=None if (chosen and chosen.exact) else _reason(steps, tried, parts.tokens),
        tried=tried,
        split=parts.split,
    )
    return plan, parts, evidence


def backbone_of(
    model: nn.Module,
    split: str,
    input_size: tuple[int, ...] | None = None,
    features_layer: str | None = None,
    classifier: str | None = None,
):
    """(features, traced head) as a SoftCAM model keeps them — the same code runs at convert and load time.

    timm models keep the whole model, classifier removed (``reset_classifier(0)``), called through
    ``forward_features`` (through a patch grid for token models); other models keep the fx graph cut
    at the global pool. The traced head is taken before the classifier is removed, for the
    approximate (per-position) heads that reuse it.
    """
    parts = split_model(model, input_size, features_layer, classifier)
    head = parts.graph
    if parts.split == "timm":
        try:
            model.reset_classifier(0)
        except Exception:  # pragma: no cover - a model without a working reset keeps its unused head
            pass
    return parts.features, head
