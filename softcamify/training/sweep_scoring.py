"""Scoring a model on a sweep's validation split: the images ``finetune`` validated on, read by ``evaluate``
through a folder of links, plus the scores that need no masks (map sparsity, flip stability).

Part of :mod:`softcamify.training.sweep` (which re-exports :func:`map_scores` and :func:`spearman`); the
module docstring there says what each score means.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = [
    "SCORE_KEYS",
    "finite_or_none",
    "spearman",
    "map_scores",
    "build_val_view",
    "val_samples",
    "score_model",
    "rule_keys",
]

# the validation scores of a run (and of the reference), in the order the tables show them
SCORE_KEYS = (
    "accuracy",
    "balanced_accuracy",
    "share_of_oracle",
    "activation_precision",
    "pointing_game",
    "sparsity",
    "stability",
)


def finite_or_none(v: Any) -> float | None:
    """``v`` as a finite float, or None (None, not a number, NaN, ±inf)."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# ----------------------------------------------------------------------------------------------------
# Map scores without masks: sparsity and flip stability
# ----------------------------------------------------------------------------------------------------


def _ranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks, ties averaged."""
    _, inv, cnt = np.unique(a, return_inverse=True, return_counts=True)
    top = np.cumsum(cnt).astype(np.float64)
    return (top - (cnt - 1) / 2.0)[inv.reshape(-1)]


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation of two arrays (flattened; ties averaged); NaN when either is constant."""
    x = _ranks(np.asarray(a, dtype=np.float64).ravel())
    y = _ranks(np.asarray(b, dtype=np.float64).ravel())
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    x -= x.mean()
    y -= y.mean()
    return float((x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum()))


def map_scores(
    model: Any,
    samples: Sequence[Any],
    device: Any = "cpu",
    batch_size: int = 16,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Sparsity, mean map L1 and flip stability of a SoftCAM model's maps on ``samples``.

    ``samples``: :class:`softcamify.data.Sample` list, read with the model's eval transform. ``sparsity``
    and ``map_l1`` are :func:`softcamify.training.map_statistics` over every class map (what ``finetune``
    logs as validation sparsity). ``stability`` is the mean over images of the Spearman correlation between
    the true class's map of the image and that of its horizontal mirror image, mirrored back (images whose
    map is constant do not count; ``stability_images`` says how many did).
    """
    import torch

    from ..binary import two_class
    from ..data import ImageDataset, build_transform
    from ..device import resolve_device
    from .config import DEFAULT_SPARSITY_THRESHOLD
    from .loss import map_statistics

    thr = DEFAULT_SPARSITY_THRESHOLD if threshold is None else float(threshold)
    dev = resolve_device(device)
    dc = model.meta.data_config
    ds = ImageDataset(list(samples), build_transform(dc, train=False), int(dc["input_size"][0]))
    loader = torch.utils.data.DataLoader(ds, batch_size=max(1, int(batch_size)), shuffle=False, num_workers=0)
    was_training = model.training
    model = model.to(dev).eval()
    stats = torch.zeros(4, dtype=torch.float64)
    rhos: list[float] = []
    try:
        with torch.inference_mode():
            for x, y, _ in loader:
                x = x.to(dev)
                _, maps = model.forward_maps(x)
                _, flipped = model.forward_maps(x.flip(-1))
                stats += map_statistics(maps.float(), thr).cpu()
                maps = two_class(maps.float()).cpu().numpy()  # one logit: the map of each of its two classes
                back = two_class(flipped.float()).flip(-1).cpu().numpy()
                for j, label in enumerate(y.tolist()):
                    rho = spearman(maps[j, label], back[j, label])
                    if math.isfinite(rho):
                        rhos.append(rho)
    finally:
        if was_training:
            model.train()
    s = stats.tolist()
    return {
        "sparsity": s[0] / s[1] if s[1] else None,
        "map_l1": s[2] / s[3] if s[3] else None,
        "stability": float(np.mean(rhos)) if rhos else None,
        "stability_images": len(rhos),
        "images": len(ds),
        "sparsity_threshold": thr,
    }


# ----------------------------------------------------------------------------------------------------
# The validation split, as evaluate reads it
# ----------------------------------------------------------------------------------------------------


def _safe_folder_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def _link(src: Path, dst: Path) -> None:
    try:
        os.symlink(os.path.abspath(src), dst)
    except (OSError, NotImplementedError):  # no symlinks here (Windows without privileges): a copy
        shutil.copyfile(src, dst)


def build_val_view(
    root: Path,
    samples: Sequence[Any],
    class_names: Sequence[str],
    data_root: Path | None,
    mask_root: Path | None,
) -> tuple[Path, Path | None, int]:
    """``root/val/<class>/<n>_<file>`` links to the validation images and ``root/masks/val/…`` to their
    masks, so :func:`evaluate` (``split="val"``) reads exactly these images, whatever the data layout."""
    from ..data import mask_path_for

    bad = next((n for n in class_names if not _safe_folder_name(str(n))), None)
    if bad is not None:
        raise InputError(
            f"Class name {bad!r} cannot be a folder name, which the sweep's validation scoring needs; rename the class."
        )
    masks_dir = root / "masks" if mask_root is not None else None
    with_mask = 0
    for i, s in enumerate(samples):
        src = Path(s.path)
        cls = str(class_names[s.label])
        d = root / "val" / cls
        d.mkdir(parents=True, exist_ok=True)
        _link(src, d / f"{i:06d}_{src.name}")
        if masks_dir is not None and data_root is not None:
            mp = mask_path_for(src, data_root, mask_root)
            if mp is not None:
                md = masks_dir / "val" / cls
                md.mkdir(parents=True, exist_ok=True)
                _link(mp, md / f"{i:06d}_{Path(src.name).stem}{mp.suffix}")
                with_mask += 1
    return root, (masks_dir if with_mask else None), with_mask


def val_samples(model: Any, data_dir: Any, cfg: Any, notes: list[str]):
    """The validation samples ``finetune`` uses (same discovery, same seed, the model's class order,
    unreadable images left out)."""
    from ..binary import decision_names
    from ..data import verify_samples
    from .splits import class_order, discover_splits, generic_names, model_class_names

    splits = discover_splits(data_dir, cfg)
    notes.extend(n for n in splits.notes if n not in notes)
    found = list(splits.class_names)
    stored = model_class_names(model.meta.class_names, model.meta.num_classes, found)
    names = decision_names(stored, model.meta.num_classes)
    order = class_order(names, found, cfg.labels, generic_names(stored))
    if order is not None:
        splits = discover_splits(data_dir, cfg, class_names=order)
    channels = int(model.meta.data_config["input_size"][0])
    good, bad = verify_samples(splits.val, channels=channels)
    if cfg.strict_data and bad:  # named as the sweep's caller named it (verify_samples says strict)
        raise InputError(
            f"{bad[0][1].rstrip('.')}; run without strict_data to skip unreadable images.", param="strict_data"
        )
    if bad or splits.skipped:
        notes.append(
            f"{len(bad) + len(splits.skipped)} unreadable image(s) are left out, as finetune leaves them "
            "out (--strict-data makes this an error)."
        )
    if not good:
        raise InputError(
            "There are no validation images (val folder or val_split); the sweep scores runs on them.",
            param="val_split",
        )
    return splits, good


# ----------------------------------------------------------------------------------------------------
# Scoring one model
# ----------------------------------------------------------------------------------------------------


def _softcam_summary(ev: Any) -> dict[str, Any]:
    for s in ev.method_summaries():
        if s["key"] == "softcam":
            return s
    return {"metrics": {}, "images": 0}


def _mean(metrics: Mapping[str, Any], key: str) -> float | None:
    m = metrics.get(key)
    return finite_or_none(m.get("mean")) if isinstance(m, Mapping) else None


def score_model(
    model: Any,
    view: Path,
    view_masks: Path | None,
    samples: Sequence[Any],
    device: str,
    cfg: Any,
    max_images: int | None,
) -> dict[str, Any]:
    """A model's validation scores: ``evaluate`` on the view (accuracy, localization with masks), plus
    :func:`map_scores` on ``samples`` (sparsity, map L1, flip stability)."""
    from ..evaluation import evaluate

    ev = evaluate(
        model,
        view,
        split="val",
        masks=view_masks,
        device=device,
        batch_size=int(cfg.batch_size),
        examples=0,
        max_images=max_images,
        steps=2,  # deletion/insertion curves are not part of the rule: their shortest form
    )
    metrics = _softcam_summary(ev)["metrics"]
    c = ev.classification
    out = {
        "accuracy": finite_or_none(c.get("accuracy")),
        "balanced_accuracy": finite_or_none(c.get("balanced_accuracy")),
        "share_of_oracle": _mean(metrics, "share_of_oracle"),
        "activation_precision": _mean(metrics, "activation_precision"),
        "pointing_game": _mean(metrics, "pointing_game"),
        "explained_images": int(ev.counts.get("explained", 0)),
        "images": int(ev.counts.get("images", 0)),
    }
    ms = map_scores(model, samples, device=device, batch_size=int(cfg.batch_size), threshold=cfg.sparsity_threshold)
    out.update(
        sparsity=ms["sparsity"],
        map_l1=ms["map_l1"],
        stability=ms["stability"],
        stability_images=ms["stability_images"],
    )
    return out


def rule_keys(scores: Mapping[str, Any], with_masks: bool) -> tuple[float | None, float | None]:
    """The rule's ``score`` and ``tiebreak``: share of oracle with masks, else sparsity then stability."""
    if with_masks:
        return finite_or_none(scores.get("share_of_oracle")), None
    return finite_or_none(scores.get("sparsity")), finite_or_none(scores.get("stability"))
