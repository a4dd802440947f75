"""The SoftCAM model: backbone → class-evidence maps → spatial mean → logits.

``model(x)`` returns logits, so a converted model is a drop-in replacement; ``forward_maps(x)``
returns ``(logits, maps)`` with maps B×K×h×w, signed, bias included, ``maps.mean((2, 3)) == logits``.
A volume model (``spatial_dims == 3``: Conv3d backbones, inputs B×C×D×H×W) returns evidence volumes
B×K×d×h×w with ``maps.mean((2, 3, 4)) == logits``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ._version import __version__

FORMAT_NAME = "softcamify"
FORMAT_VERSION = 1


@dataclass
class SoftCAMMeta:
    """What a SoftCAM model knows about itself; stored as JSON in every softcamify checkpoint."""

    source: dict[str, Any]  # how to rebuild the backbone: {"kind": "timm"|"torchvision"|"module", ...}
    strategy: str
    exact: bool
    num_classes: int
    class_names: list[str]
    data_config: dict[str, Any]  # input_size [C,H,W] ([C,D,H,W] for volumes), mean, std, interpolation, crop_pct…
    head: dict[str, Any]  # evidence head spec (heads.evidence.build_head)
    layout: str = "NCHW"
    conversion: dict[str, Any] = field(default_factory=dict)  # the conversion report
    history: list[dict[str, Any]] = field(default_factory=list)  # e.g. fine-tuning runs
    versions: dict[str, str] = field(default_factory=dict)
    spatial_dims: int = 2  # 2: images (N×C×H×W), 3: volumes (N×C×D×H×W); files without the key are images

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.spatial_dims == 2:  # image files keep exactly the metadata they always had
            del d["spatial_dims"]
        d["format"] = FORMAT_NAME
        d["format_version"] = FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SoftCAMMeta:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def architecture(self) -> str:
        return str(self.source.get("name") or self.source.get("class") or "?")


def current_versions() -> dict[str, str]:
    import timm

    return {"softcamify": __version__, "torch": torch.__version__.split("+")[0], "timm": timm.__version__}


class SoftCAM(nn.Module):
    """A self-explainable classifier: evidence maps whose spatial mean is the logits."""

    def __init__(self, features: nn.Module, head: nn.Module, meta: SoftCAMMeta):
        super().__init__()
        self.features = features
        self.head = head
        self.meta = meta

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.class_names)

    @property
    def data_config(self) -> dict[str, Any]:
        return dict(self.meta.data_config)

    @property
    def spatial_dims(self) -> int:
        """2 for an image model (inputs B×C×H×W), 3 for a volume model (inputs B×C×D×H×W)."""
        return int(self.meta.spatial_dims)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if self.meta.layout == "NHWC":
            f = f.permute(0, 3, 1, 2)
        return f

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits B×K, evidence maps B×K×h×w — B×K×d×h×w for a volume model) from one forward pass."""
        maps = self.head(self.forward_features(x))
        return maps.mean(dim=(2, 3) if self.meta.spatial_dims == 2 else (2, 3, 4)), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(x)[0]

    def reset_head(self, num_classes: int, class_names: list[str] | None = None) -> None:
        """Replace the evidence conv with a freshly initialized one for ``num_classes`` classes."""
        from .heads.evidence import build_head

        spec = dict(self.head.spec() if hasattr(self.head, "spec") else self.meta.head)
        spec["num_classes"] = int(num_classes)
        ref = next(self.head.parameters())
        self.head = build_head(spec).to(device=ref.device, dtype=ref.dtype)
        self.meta = copy.deepcopy(self.meta)
        self.meta.head = spec
        self.meta.num_classes = int(num_classes)
        self.meta.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        self.meta.exact = False
        self.meta.conversion = {**self.meta.conversion, "head_reset": True}

    def extra_repr(self) -> str:
        return f"architecture={self.meta.architecture}, strategy={self.meta.strategy}, classes={self.meta.num_classes}"
