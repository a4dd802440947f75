"""The settings of an evaluation: :class:`ExplanationOptions` (what :func:`~softcamify.evaluation.evaluate`
takes for its explanation metrics), checked, and resolved for one model's input into ``result.settings``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..errors import UsageError
from ..runtime import Runtime
from . import metrics as M

__all__ = ["ExplanationOptions", "check_options", "default_patch", "resolve_settings"]

_GPU_DELETION_BATCH_FACTOR = 4  # deletion/insertion inputs per forward on a GPU: this × batch_size


@dataclass(frozen=True)
class ExplanationOptions:
    """The explanation metrics' settings, as :func:`~softcamify.evaluation.evaluate` takes them (see its
    Args for each)."""

    patch_size: int | None = None
    patch_stride: int | None = None
    topk: int = 10
    topk_threshold: float | None = None
    steps: int = 20
    deletion_patch: int | None = None
    sparsity_threshold: float = 0.01
    pointing_tolerance: int = 0
    oracle_grid: tuple[int, int] | None = None
    max_images: int | None = None


def default_patch(input_hw: tuple[int, int]) -> tuple[int, int]:
    """The paper's 33 px patches with stride 8 on 512 px images, scaled to the input size."""
    side = min(input_hw)
    patch = max(2, int(round(side * 33 / 512)))
    stride = max(1, int(round(patch * 8 / 33)))
    return patch, stride


def check_options(opts: ExplanationOptions, batch_size: int) -> ExplanationOptions:
    """``opts`` validated, with ``oracle_grid`` as two integers."""
    for name, v in (("topk", opts.topk), ("steps", opts.steps), ("batch_size", batch_size)):
        if v < 1:
            raise UsageError(f"{name} must be at least 1, got {v}.", param=name)
    if opts.max_images is not None and opts.max_images < 0:
        raise UsageError(f"max_images must be 0 or more, got {opts.max_images}.", param="max_images")
    if opts.pointing_tolerance < 0:
        raise UsageError(
            f"pointing_tolerance must be 0 or more pixels, got {opts.pointing_tolerance}.", param="pointing_tolerance"
        )
    if opts.oracle_grid is not None:
        return replace(opts, oracle_grid=M.as_grid(opts.oracle_grid, "oracle_grid"))
    return opts


def resolve_settings(
    mm: Runtime, split: str, opts: ExplanationOptions, methods: list[str], batch_size: int
) -> dict[str, Any]:
    """``result.settings``: every option with its default resolved for this model's input."""
    in_hw = (mm.input_size[1], mm.input_size[2])
    d_patch, d_stride = default_patch(in_hw)
    patch = int(opts.patch_size or d_patch)
    scaled_stride = d_stride if opts.patch_size is None else max(1, round(patch * 8 / 33))
    stride = int(opts.patch_stride or scaled_stride)
    if patch > min(in_hw):
        raise UsageError(f"patch_size {patch} is larger than the {in_hw[0]}×{in_hw[1]} input.", param="patch_size")
    grid = opts.oracle_grid
    if grid is not None and (grid[0] > in_hw[0] or grid[1] > in_hw[1]):
        raise UsageError(
            f"oracle_grid {grid[0]}×{grid[1]} is finer than the "
            f"{in_hw[0]}×{in_hw[1]} input; give at most one cell per input pixel.",
            param="oracle_grid",
        )
    # Perturbed inputs per forward in deletion/insertion: forward-only (no autograd), so a GPU takes 4× the
    # batch (fewer, fuller launches); on a CPU larger batches only spill the caches (measured 1.5× slower per
    # image at 4× on the demo model, benchmarks/evaluate_speed.py), so it keeps the batch size.
    on_gpu = mm.kind == "torch" and getattr(getattr(mm, "device", None), "type", "cpu") == "cuda"
    return {
        "split": split,
        "input_size": list(mm.input_size),
        "evidence_grid": None,
        "oracle_grid": list(grid) if grid is not None else None,
        "patch_size": patch,
        "patch_stride": stride,
        "topk": int(opts.topk),
        "topk_threshold": opts.topk_threshold,
        "steps": int(opts.steps),
        "deletion_patch": int(opts.deletion_patch or patch),
        "deletion_baseline": "0 (mean colour)",
        "insertion_baseline": "blur",
        "sparsity_threshold": float(opts.sparsity_threshold),
        "pointing_tolerance": int(opts.pointing_tolerance),
        "batch_size": int(batch_size),
        "deletion_batch_size": int(batch_size) * (_GPU_DELETION_BATCH_FACTOR if on_gpu else 1),
        "baselines": methods,
        "max_images": opts.max_images,
    }
