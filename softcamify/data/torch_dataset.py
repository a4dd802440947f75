"""The torch side of datasets: :class:`ImageDataset` over discovered samples and its transforms.

The eval transform is :func:`softcamify.images.preprocess_image`, so a tensor seen during training or
evaluation is bit-identical to the one the ONNX path computes for the same file. The only module of
:mod:`softcamify.data` that imports torch (the package loads it on first use of these names).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torchvision import transforms

from .. import images
from ..config import resolve_data_config
from ..errors import UsageError
from ..images import open_image
from .splits import Sample

__all__ = [
    "ImageDataset",
    "VolumeDataset",
    "EvalTransform",
    "build_transform",
    "AUGMENTATIONS",
    "MEDICAL_ROTATION_DEGREES",
]

AUGMENTATIONS = ("none", "light", "medical")
# Fundus (and dermoscopy, histology) images have no canonical orientation: the SoftCAM reference code
# (github.com/kdjoumessi/SoftCAM, configs/default.yaml) rotates by up to +-180 degrees with p=0.5, as
# here. Lower it for images with an up direction (chest X-rays: ~15-30 degrees).
MEDICAL_ROTATION_DEGREES = 180.0


class ImageDataset(torch.utils.data.Dataset):
    """A list of :class:`Sample` read with :func:`softcamify.images.open_image` and ``transform``.

    ``__getitem__`` returns ``(tensor, label, index)``; the index lets callers map outputs back to files.
    Run :func:`~softcamify.data.discover.verify_samples` first: an unreadable file raises
    :class:`~softcamify.errors.InputError` here.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        channels: int = 3,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform if transform is not None else transforms.ToTensor()
        self.channels = channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        s = self.samples[index]
        img = open_image(s.path, channels=self.channels)
        return self.transform(img), s.label, index

    @property
    def targets(self) -> list[int]:
        return [s.label for s in self.samples]


class EvalTransform:
    """The deterministic eval transform: :func:`softcamify.images.preprocess_image` as a tensor.

    Identical (bit for bit) to ``timm.data.create_transform(**data_config, is_training=False)`` and to
    the ONNX path's preprocessing. A plain class so DataLoader workers can pickle it.
    """

    def __init__(self, data_config: dict[str, Any]) -> None:
        cfg = _normalized_config(data_config)
        self.channels = cfg["channels"]
        keys = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
        self.kwargs = {k: cfg[k] for k in keys}

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = images.to_channels(img, self.channels)  # a no-op for images from open_image
        arr = images.preprocess_image(img, channels=self.channels, **self.kwargs)
        return torch.from_numpy(arr)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.__class__.__name__}({args}, channels={self.channels})"


def _normalized_config(data_config: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`softcamify.images.preprocess_image` (and ``channels``) for a timm
    data config, checked by :func:`softcamify.config.resolve_data_config` (224 px ImageNet defaults for
    what it lacks)."""
    defaults = {"input_size": (3, 224, 224), "mean": images.IMAGENET_DEFAULT_MEAN, "std": images.IMAGENET_DEFAULT_STD}
    cfg = resolve_data_config({**defaults, **{k: v for k, v in data_config.items() if v is not None}})
    if cfg.channels not in (1, 3):
        raise UsageError(f"input_size {list(cfg.input_size)} must be (C, H, W) with C = 1 or 3.", param="input_size")
    return {
        "input_size": cfg.size,
        "channels": cfg.channels,
        "mean": cfg.mean,
        "std": cfg.std,
        "interpolation": cfg.interpolation,
        "crop_pct": cfg.crop_pct or images.DEFAULT_CROP_PCT,
        "crop_mode": cfg.crop_mode,
    }


def build_transform(
    data_config: dict[str, Any],
    train: bool = False,
    augment: str = "light",
) -> Callable[[Image.Image], torch.Tensor]:
    """Transform from a timm data config (``timm.data.resolve_data_config`` keys) to a C x H x W tensor.

    Eval (``train=False``) and ``augment='none'`` give :class:`EvalTransform`. Training augmentations:

    * ``light``: RandomResizedCrop(scale 0.8-1) + horizontal flip.
    * ``medical`` (after the SoftCAM fundus setup): horizontal and vertical flips, rotation by up to
      :data:`MEDICAL_ROTATION_DEGREES` with p=0.5 (orientation-free images), colour jitter
      (brightness/contrast/saturation 0.2, hue 0.05; applied with p=0.5; brightness/contrast only for
      grayscale) and scale jitter by
      RandomResizedCrop(scale 0.87-1).

    Both end with ToTensor + Normalize with the data config's mean/std.
    """
    if augment not in AUGMENTATIONS:
        raise UsageError(f"augment {augment!r} is not one of {', '.join(AUGMENTATIONS)}.", param="augment")
    if not train or augment == "none":
        return EvalTransform(data_config)
    cfg = _normalized_config(data_config)
    size = tuple(cfg["input_size"])
    interp = transforms.InterpolationMode(cfg["interpolation"])
    tail = [transforms.ToTensor(), transforms.Normalize(mean=cfg["mean"], std=cfg["std"])]
    if augment == "light":
        tfl = [
            transforms.RandomResizedCrop(size, scale=(0.8, 1.0), interpolation=interp),
            transforms.RandomHorizontalFlip(),
        ]
    else:
        grey = cfg["channels"] == 1
        jitter = transforms.ColorJitter(0.2, 0.2, 0.0 if grey else 0.2, 0.0 if grey else 0.05)
        bilinear = transforms.InterpolationMode.BILINEAR
        tfl = [
            transforms.RandomHorizontalFlip(),
            transforms.RandomVerticalFlip(),
            transforms.RandomApply(
                [transforms.RandomRotation(MEDICAL_ROTATION_DEGREES, interpolation=bilinear)],
                p=0.5,
            ),
            transforms.RandomApply([jitter], p=0.5),
            transforms.RandomResizedCrop(size, scale=(0.87, 1.0), interpolation=interp),
        ]
    return transforms.Compose(tfl + tail)


class VolumeDataset(torch.utils.data.Dataset):
    """Volumes (:class:`Sample` paths of ``.nii``, ``.nii.gz``, ``.npy``, ``.npz``) as ``C×D×H×W`` float tensors.

    Each volume is read with :func:`softcamify.volumes.read_volume` and preprocessed with
    :func:`softcamify.volumes.preprocess_volume` under ``config`` (channels, intensity window or z-score,
    resampling: what the model's metadata records). ``train=True`` flips each spatial axis with probability
    ``flip_p`` (the only augmentation: flips keep voxel sizes and intensities; they draw from torch's
    generator, seeded per DataLoader worker). ``__getitem__`` returns ``(tensor, label, index)`` as
    :class:`ImageDataset` does. Run :func:`~softcamify.data.discover.verify_samples` first: an unreadable
    file raises :class:`~softcamify.errors.InputError` here.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        config: Any = None,
        train: bool = False,
        flip_p: float = 0.5,
        flip_axes: Sequence[int] = (0, 1, 2),
    ) -> None:
        from ..volumes import VolumeConfig

        if not 0.0 <= flip_p <= 1.0:
            raise UsageError(f"flip_p must be between 0 and 1, got {flip_p}.", param="flip_p")
        if any(a not in (0, 1, 2) for a in flip_axes):
            raise UsageError(f"flip_axes {tuple(flip_axes)} must be spatial axes 0, 1 or 2.", param="flip_axes")
        self.samples = list(samples)
        self.config = config if config is not None else VolumeConfig()
        self.train = train
        self.flip_p = float(flip_p)
        self.flip_axes = tuple(flip_axes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        from ..volumes import preprocess_volume, read_volume

        s = self.samples[index]
        x = torch.from_numpy(preprocess_volume(read_volume(s.path), self.config))
        if self.train and self.flip_p > 0:
            flips = [a + 1 for a in self.flip_axes if float(torch.rand(())) < self.flip_p]
            if flips:
                x = torch.flip(x, dims=flips)
        return x.contiguous(), s.label, index

    @property
    def targets(self) -> list[int]:
        return [s.label for s in self.samples]
