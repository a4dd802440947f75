"""Post-hoc CAM baselines through pytorch-grad-cam (the optional extra ``softcamify[baselines]``).

The maps are computed on a model's **last feature map** (the same tensor SoftCAM's evidence conv reads):
:func:`softcam_target` wraps a SoftCAM model and :func:`original_target` the original classifier (its
backbone found with softcamify's head analysis, :func:`softcamify.heads.split_model`). Either way the
model is re-expressed as ``head(tap(features(x)))`` where ``tap`` is an identity module that
pytorch-grad-cam hooks, so no architecture-specific layer name is needed, and token-last (NHWC)
backbones are permuted to NCHW before the tap.

:class:`PostHocExplainer` computes one map per image for an explicit target class per image (never
pytorch-grad-cam's silent "first image only" behaviour: one target is passed for every image). Maps come
back as pytorch-grad-cam returns them: N×H×W float32 at the input size, ReLU'd and min–max scaled to
[0, 1] per image.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..binary import two_class
from ..errors import ConversionError, UsageError

__all__ = [
    "METHODS",
    "CamTarget",
    "PostHocExplainer",
    "method_label",
    "original_target",
    "parse_methods",
    "require_gradcam",
    "softcam_target",
]

#: method key -> (pytorch_grad_cam class name, display name)
METHODS: dict[str, tuple[str, str]] = {
    "gradcam": ("GradCAM", "Grad-CAM"),
    "gradcam++": ("GradCAMPlusPlus", "Grad-CAM++"),
    "xgradcam": ("XGradCAM", "XGrad-CAM"),
    "hirescam": ("HiResCAM", "HiResCAM"),
    "layercam": ("LayerCAM", "LayerCAM"),
    "scorecam": ("ScoreCAM", "Score-CAM"),
    "eigencam": ("EigenCAM", "Eigen-CAM"),
    "eigengradcam": ("EigenGradCAM", "EigenGrad-CAM"),
    "gradcamelementwise": ("GradCAMElementWise", "Grad-CAM element-wise"),
}
_ALIASES = {
    "gradcampp": "gradcam++",
    "gradcamplusplus": "gradcam++",
    "grad-cam": "gradcam",
    "score-cam": "scorecam",
    "layer-cam": "layercam",
    "grad-cam++": "gradcam++",
}

INSTALL_HINT = "pip install 'softcamify[baselines]'"


def require_gradcam() -> Any:
    """Import pytorch_grad_cam, or raise a one-sentence :class:`UsageError` saying how to install it."""
    try:
        import pytorch_grad_cam
    except ImportError:
        raise UsageError(
            f"Post-hoc baselines need pytorch-grad-cam, which is not installed; install it with {INSTALL_HINT}."
        ) from None
    return pytorch_grad_cam


def parse_methods(spec: str | Sequence[str] | None) -> list[str]:
    """Canonical method keys from ``"gradcam,layercam"`` (or a list); unknown names are a UsageError."""
    if spec is None:
        return []
    items = [s for s in (spec.split(",") if isinstance(spec, str) else spec)]
    out: list[str] = []
    for raw in items:
        key = str(raw).strip().lower()
        if not key:
            continue
        key = _ALIASES.get(key, key)
        if key not in METHODS:
            raise UsageError(f"baselines: unknown method {raw!r}; choose from {', '.join(METHODS)}.", param="baselines")
        if key not in out:
            out.append(key)
    return out


def method_label(key: str) -> str:
    return METHODS[key][1]


class CamTarget(nn.Module):
    """``head(tap(features(x)))``: a classifier with an identity ``tap`` on its last feature map (NCHW).

    ``detach_features=True`` starts autograd at the feature map: the gradients pytorch-grad-cam reads
    (d score / d features) are identical, but nothing is back-propagated into the backbone.
    """

    def __init__(
        self, owner: nn.Module, features: Callable, head: Callable, layout: str = "NCHW", detach_features: bool = True
    ):
        super().__init__()
        self.owner = owner
        self._features = features
        self._head = head
        self.layout = layout
        self.detach_features = detach_features
        self.tap = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self._features(x)
        if self.layout == "NHWC":
            f = f.permute(0, 3, 1, 2)
        if self.detach_features and torch.is_grad_enabled():
            f = f.detach().requires_grad_(True)
        f = self.tap(f)
        if self.layout == "NHWC":
            f = f.permute(0, 2, 3, 1)
        return two_class(self._head(f))  # a single logit as two class columns (softcamify.binary)


def softcam_target(model: nn.Module, detach_features: bool = True) -> CamTarget:
    """The SoftCAM model as ``mean_hw(evidence_conv(tap(features(x))))`` (its own logits)."""

    def head(f: torch.Tensor) -> torch.Tensor:
        return model.head(f).mean(dim=(2, 3))

    return CamTarget(model, model.forward_features, head, "NCHW", detach_features)


def original_target(model: nn.Module, input_size: Sequence[int], detach_features: bool = True) -> CamTarget:
    """The original classifier split at its last feature map (:func:`softcamify.heads.split_model`); a SoftCAM
    model as its backbone's feature map (not its evidence maps, which a generic split would find)."""
    from ..heads import split_model
    from ..model import SoftCAM

    if isinstance(model, SoftCAM):
        return softcam_target(model, detach_features)

    model.eval()
    parts = split_model(model)
    c, h, w = (int(v) for v in input_size)
    p = next(model.parameters(), None)
    x = torch.zeros(1, c, h, w, device=p.device if p is not None else "cpu")
    with torch.no_grad():
        try:
            f = parts.features(x)
        except Exception as e:
            raise ConversionError(
                f"The original model's backbone fails on a {h}×{w} input ({type(e).__name__}); check input_size.",
                param="input_size",
            ) from e
    if not isinstance(f, torch.Tensor) or f.ndim != 4:
        raise ConversionError("The original model's last feature map is not a B×C×H×W tensor; no CAM baseline for it.")
    nf = getattr(model, "num_features", None)
    layout = "NHWC" if parts.split == "timm" and nf is not None and f.shape[-1] == nf and f.shape[1] != nf else "NCHW"
    return CamTarget(model, parts.features, parts.head, layout, detach_features)


class PostHocExplainer:
    """One pytorch-grad-cam method on a :class:`CamTarget`; call with inputs and one class per image."""

    def __init__(self, target: CamTarget, method: str, batch_size: int = 16):
        gc = require_gradcam()
        key = parse_methods(method)[0]
        self.key = key
        self.label = method_label(key)
        cls = getattr(gc, METHODS[key][0])
        self.target = target
        self.cam = cls(model=target, target_layers=[target.tap])
        self.cam.batch_size = int(batch_size)  # Score-CAM's internal batch
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        self._target_cls = ClassifierOutputTarget

    @property
    def device(self) -> torch.device:
        return self.cam.device

    def __call__(self, x: Any, classes: Sequence[int]) -> np.ndarray:
        """Maps N×H×W float32 in [0, 1] for inputs N×C×H×W (numpy or tensor), class ``classes[i]`` for image i."""
        t = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x)
        if len(classes) != t.shape[0]:
            raise UsageError(f"Got {len(classes)} target classes for {t.shape[0]} images; give one per image.")
        targets = [self._target_cls(int(c)) for c in classes]
        quiet = io.StringIO()
        with torch.inference_mode(False), torch.enable_grad(), contextlib.redirect_stderr(quiet):
            out = self.cam(input_tensor=t.to(self.device), targets=targets)
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self.cam.activations_and_grads.release()

    def __enter__(self) -> PostHocExplainer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
