"""What ``inspect`` and ``convert`` report: :class:`InspectReport`, :class:`ConversionReport` (``--json`` prints
them; a converted model keeps its conversion report in its metadata)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .heads import HeadPlan
from .model import SoftCAM
from .tolerance import DEFAULT_RTOL

__all__ = ["ConversionReport", "InspectReport", "conversion_report"]


@dataclass
class ConversionReport:
    """How closely the converted model reproduces the original (fp32, on the given inputs)."""

    exact: bool
    strategy: str
    architecture: str
    num_classes: int
    evidence_grid: list[int]
    input_size: list[int]
    max_abs_diff: float
    max_rel_diff: float  # max |Δlogit| / max |logit|
    mean_abs_diff: float
    top1_agreement: float
    kl_divergence: float  # mean KL(softmax(original) || softmax(converted))
    maps_mean_diff: float  # max |mean_hw(maps) − logits| of the converted model itself
    samples: int
    calibration_images: int
    atol: float
    passed: bool
    rtol: float = DEFAULT_RTOL
    logit_scale: float = 0.0  # max |logit| of the original on the verification inputs
    logit_spread: float = 0.0  # max over classes of the original's logit range across the inputs (0: constant)
    output: str | None = None
    notes: list[str] = field(default_factory=list)
    # --output-stride: the stride asked for (None: the model as it is), the original's evidence grid, and
    # max |Δlogit| of the SoftCAM model against the dilated classifier itself (its head conversion alone)
    output_stride: int | None = None
    original_grid: list[int] | None = None
    dilated_max_abs_diff: float | None = None
    # what the converted model was compared with: "timm resnet18 rebuilt from the state dict w.pth", "the
    # module as given": exact means exact against this
    compared_with: str = "the module as given"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InspectReport:
    """What ``softcamify inspect`` prints."""

    architecture: str
    source: dict[str, Any]
    parameters: int
    data_config: dict[str, Any]
    is_softcam: bool
    num_classes: int
    class_names: list[str] | None
    plan: HeadPlan | None
    softcam: dict[str, Any] | None = None  # metadata of a softcamify checkpoint
    notes: list[str] = field(default_factory=list)
    grids: dict[int, list[int]] = field(default_factory=dict)  # evidence grid by --output-stride (32: as is)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "architecture": self.architecture,
            "source": self.source,
            "parameters": self.parameters,
            "input_size": self.data_config.get("input_size"),
            "spatial_dims": len(self.data_config.get("input_size") or (0, 0, 0)) - 1,  # 2: images, 3: volumes
            "mean": self.data_config.get("mean"),
            "std": self.data_config.get("std"),
            "interpolation": self.data_config.get("interpolation"),
            "crop_pct": self.data_config.get("crop_pct"),
            "is_softcam": self.is_softcam,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "notes": self.notes,
            "grids": {str(k): list(v) for k, v in self.grids.items()},
        }
        if self.plan is not None:
            p = self.plan.to_dict()
            d.update(
                feature_shape=p["feature_shape"],
                layout=p["layout"],
                head=p["head"],
                pooling=p["pooling"],
                between=p["between"],
                classifier=p["classifier"],
                strategy=p["strategy"],
                exact=p["exact"],
                convertible=self.plan.convertible,
                reason=p["reason"],
                tried=p["tried"],
                evidence_grid=p["evidence_grid"],
                steps=p["steps"],
            )
        if self.softcam is not None:
            sc = self.softcam
            d.update(
                strategy=sc.get("strategy"),
                exact=sc.get("exact"),
                conversion=sc.get("conversion"),
                evidence_grid=sc.get("evidence_grid"),
                history=sc.get("history"),
                layout=sc.get("layout"),
                # the same keys as for a classifier: a SoftCAM model's head is its evidence conv
                feature_shape=sc.get("feature_shape"),
                head=sc.get("head_text"),
                pooling=None,
                between=[],
                classifier="evidence head",
                convertible=True,
                reason=None,
                tried={},
                steps=[],
            )
        return d


def conversion_report(model: SoftCAM) -> ConversionReport:
    c = dict(model.meta.conversion)
    names = set(ConversionReport.__dataclass_fields__)
    return ConversionReport(**{k: v for k, v in c.items() if k in names})
