"""The checked arguments of ``evaluate``: the dataset and mask folders, the JUnit file, the post-hoc baseline
methods (torch-free: the baselines module is imported only when methods are asked for)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from ..io import check_output_path

__all__ = ["baseline_methods", "data_roots", "junit_path"]


def data_roots(data_dir: str | os.PathLike, masks: str | os.PathLike | None) -> tuple[Path, Path | None]:
    """The dataset folder and the mask folder (``masks``, else ``data_dir/masks`` when it mirrors it, else
    none)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"Dataset folder {root} does not exist or is not a folder; check DATA_DIR.")
    from ..data import default_mask_root

    mask_root: Path | None
    if masks is not None:
        mask_root = Path(masks)
        if not mask_root.is_dir():
            raise InputError(f"Mask folder {mask_root} does not exist or is not a folder; check masks.", param="masks")
    else:
        mask_root = default_mask_root(root)  # DATA_DIR/masks when it mirrors DATA_DIR (not a "masks" class)
    return root, mask_root


def junit_path(junit: str | os.PathLike | None, out: Path | None, force: bool) -> Path | None:
    """The JUnit file, checked; a file directly in the report folder (checked with it, perhaps not created
    yet) is fine."""
    if junit is None:
        return None
    path = Path(junit)
    if out is not None and path.parent.resolve() == out.resolve():
        return path
    return check_output_path(path, force=force)


def baseline_methods(baselines: str | Sequence[str] | None) -> list[str]:
    """The post-hoc methods asked for; pytorch-grad-cam must be installed when there are any."""
    if not baselines:  # none asked for: the baselines module (torch) is not imported, so the ONNX path stays torch-free
        return []
    from .baselines import parse_methods

    methods = parse_methods(baselines)
    if methods:
        from .baselines import require_gradcam

        require_gradcam()
    return methods
