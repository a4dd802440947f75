"""Finding a classifier's head and converting it into a class-evidence head.

``analyze(model, input_size)`` splits the model at its last feature map, traces the head, and tries
the registered strategies (exact ones first). The result, a :class:`HeadPlan`, is what ``inspect``
reports and what ``convert`` builds from. Strategies live one per module (``linear``, ``normed``)
and register themselves in :data:`STRATEGIES`.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConversionError
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
    PASS,
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
    "HeadPlan", "ModelParts", "Strategy", "STRATEGIES", "EvidenceHead", "analyze", "split_model",
    "build_head", "register", "get_strategy", "NotApplicable", "Context",
]


@dataclass
class HeadPlan:
    """What ``inspect`` shows: the head as found, and how (whether) it converts."""

    feature_shape: list[int]  # [C, H, W] of the last feature map at the input size
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
        return [self.feature_shape[1], self.feature_shape[2]]

    @property
    def convertible(self) -> bool:
        return self.strategy is not None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = [s.to_dict() for s in self.steps]
        d["evidence_grid"] = self.evidence_grid
        return d


def _is_timm_model(model: nn.Module) -> bool:
    return callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None))


def split_model(model: nn.Module) -> ModelParts:
    """Split a classifier into features and head (timm's own split, else the fx graph at the global pool)."""
    if _is_timm_model(model):
        head = MethodAsModule(model, "forward_head")
        try:
            graph = trace(head)
        except Exception:
            graph = None
        return ModelParts(MethodAsModule(model, "forward_features"), head, graph, "timm")
    try:
        gm = trace(model)
    except Exception as e:
        raise ConversionError(
            f"{type(model).__name__} could not be traced with torch.fx ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "its head cannot be located automatically."
        ) from e
    try:
        pool, feat = find_global_pool(gm)
        features = extract(gm, None, feat)
        head = extract(gm, feat, output_node(gm))
    except ValueError as e:
        raise ConversionError(f"{type(model).__name__}: {e}; its head cannot be located automatically.") from e
    return ModelParts(features, head, head, "fx")


def _summarize(steps: list[Step]) -> tuple[str | None, list[str], str | None]:
    pooling = next((s.detail for s in steps if s.role == POOL), None)
    classifier_idx = max((i for i, s in enumerate(steps) if s.role == LINEAR), default=None)
    classifier = steps[classifier_idx].detail if classifier_idx is not None else None
    pool_idx = next((i for i, s in enumerate(steps) if s.role == POOL), -1)
    end = classifier_idx if classifier_idx is not None else len(steps)
    between = [
        s.detail
        for s in steps[pool_idx + 1 : end]
        if s.role in (NORM, ACT, CONV, AFFINE, LINEAR) or s.detail.startswith(("Dropout", "Flatten", "flatten", "dropout"))
    ]
    return pooling, between, classifier


def _reason(steps: list[Step], tried: dict[str, str]) -> str:
    for s in steps:
        if s.role == POOL and s.params.get("kind") not in ("avg", "fixed"):
            return f"the head uses {s.detail}"
    for s in steps:
        if s.role in (ACT, CONV):
            return f"the head applies {s.detail} after pooling (a nonlinear pre-logits stage)"
    return "; ".join(f"{k}: {v}" for k, v in tried.items()) or "no strategy applies"


@torch.no_grad()
def feature_map(parts: ModelParts, input_size: tuple[int, int, int]) -> torch.Tensor:
    x = torch.zeros(1, *input_size)
    try:
        return parts.features(x)
    except Exception as e:
        raise ConversionError(
            f"The backbone fails on a {input_size[1]}×{input_size[2]} input ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); pass --input-size with a size the model accepts."
        ) from e


def analyze(
    model: nn.Module, input_size: tuple[int, int, int], *, strategies: list[str] | None = None
) -> tuple[HeadPlan, ModelParts, nn.Module | None]:
    """Find the head, try the strategies; return the plan, the parts and the float64 evidence head."""
    model.eval()
    parts = split_model(model)
    f = feature_map(parts, input_size)
    if f.ndim != 4:
        raise ConversionError(
            f"The backbone returns a {f.ndim}-D tensor of shape {list(f.shape)}, not a B×C×H×W feature map; "
            "token (transformer) outputs are not supported yet."
        )
    with torch.no_grad():
        logits = parts.head(f)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ConversionError("The head does not return a B×K tensor of logits.")
    num_classes = logits.shape[1]
    layout = "NCHW"
    nf = getattr(model, "num_features", None)
    if parts.split == "timm" and nf is not None and f.shape[-1] == nf and f.shape[1] != nf:
        layout = "NHWC"
    c, h, w = (f.shape[3], f.shape[1], f.shape[2]) if layout == "NHWC" else tuple(f.shape[1:])
    steps = steps_of(parts.graph) if parts.graph is not None else []
    pooling, between, classifier = _summarize(steps)

    head64 = copy.deepcopy(parts.graph if parts.graph is not None else parts.head).double().eval()
    graph64 = head64 if parts.graph is not None else None
    ctx = Context(head64, graph64, steps, int(c), int(h), int(w), int(num_classes), layout)
    tried: dict[str, str] = {}
    chosen: Strategy | None = None
    evidence = None
    for strategy in STRATEGIES:
        if strategies is not None and strategy.name not in strategies:
            continue
        try:
            evidence = strategy.build(ctx)
            chosen = strategy
            break
        except NotApplicable as e:
            tried[strategy.name] = str(e)
    plan = HeadPlan(
        feature_shape=[int(c), int(h), int(w)],
        layout=layout,
        num_classes=int(num_classes),
        head=describe(steps) if steps else "(not traceable)",
        steps=steps,
        pooling=pooling,
        between=between,
        classifier=classifier,
        strategy=chosen.name if chosen else None,
        exact=bool(chosen and chosen.exact),
        reason=None if chosen else _reason(steps, tried),
        tried=tried,
        split=parts.split,
    )
    return plan, parts, evidence


def backbone_of(model: nn.Module, split: str) -> tuple[nn.Module, str]:
    """The feature extractor a SoftCAM model keeps (the same code runs at convert and at load time).

    timm models keep the whole model, classifier removed (``reset_classifier(0)``), called through
    ``forward_features``; other models keep the fx graph cut at the global pool.
    """
    if split == "timm" and _is_timm_model(model):
        try:
            model.reset_classifier(0)
        except Exception:  # pragma: no cover - a model without a working reset keeps its unused head
            pass
        return MethodAsModule(model, "forward_features"), "timm"
    return split_model(model).features, "fx"
