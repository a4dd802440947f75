"""λ sweep: short fine-tunes over a grid of ElasticNet strengths, scored on the validation split.

The library behind ``softcamify sweep``; the accuracy/localization trade-off of the SoftCAM paper as
one call::

    from softcamify.training.sweep import sweep
    result = sweep("model_softcam.safetensors", "data/", "sweeps/l1", l1=[0, 0.05, 0.5, 2])
    result.recommended          # the chosen run (a SweepRun) or None
    result.recommended.best_path

**What it does.** The grid is every pair of ``l1`` × ``l2`` values. First the *reference*: the starting
model (converted, no λ applied, not trained) is scored on the validation split. Then, for each pair,
:func:`softcamify.training.finetune` writes a normal run folder ``OUT/runs/<tag>/`` (tag like
``l1=0.003,l2=0``), and the run's best model is scored on the same validation split:

* accuracy and balanced accuracy: :func:`softcamify.evaluation.evaluate` on exactly the images
  ``finetune`` validated on (its train/val folders, ``val_split`` of one folder, or a labels CSV, with
  unreadable images left out as ``finetune`` does; ``evaluate`` reads them through a temporary folder of
  links, so every layout is scored the same way);
* localization, when masks exist for annotated validation images (``masks``, or ``DATA_DIR/masks``):
  the SoftCAM method's ``share_of_oracle`` (mean share of the distance from chance to the grid oracle's
  activation precision), beside its ``activation_precision`` and ``pointing_game``;
* always: map ``sparsity`` (share of evidence cells with ``|A| <`` ``config.sparsity_threshold``, the
  definition ``finetune`` logs) and flip ``stability``: the Spearman rank correlation between each
  validation image's true-class evidence map and the map of the horizontally flipped image, flipped
  back, averaged over images (1: the maps follow the content; images whose map is constant are skipped).

**The rule** (:func:`recommend`). Among runs whose validation accuracy is at least the reference
accuracy minus ``tolerance`` (``acc ≥ ref_acc − tolerance``, with a 1e-9 allowance for rounding), choose
the best localization score: ``share_of_oracle`` with masks; without masks the highest sparsity, ties
broken by the higher stability. Remaining ties (equal within 1e-9) go to the smaller λ (``l1``, then
``l2``). A run whose score could not be measured ranks below every measured one. When no run keeps the
accuracy, nothing is recommended: ``recommended`` is None, the result says so in its notes, and no
``best.safetensors`` is written.

**Outputs** in ``out_dir``: ``runs/<tag>/`` (finetune run folders), ``sweep.json`` (``to_dict()``),
``pareto.png`` (accuracy against localization, one labelled point per λ, the Pareto front connected,
the reference and the accuracy floor marked, the recommendation highlighted), ``index.html``
(self-contained: tables and the plot as an embedded PNG) and ``best.safetensors``, a byte copy of the
recommended run's best model. Every file is written atomically when all runs are done: an interrupted
or failed sweep keeps its completed run folders and writes none of these files.

**Devices.** ``devices=None`` uses ``config.device``; with ``auto``/``cuda`` and several CUDA GPUs the
runs go in parallel, one per GPU (a thread per device pulls the next λ from a queue; CUDA kernels run
without the GIL). An explicit list (``["cuda:0", "cuda:1"]``, repeats allowed to share one GPU) runs
that many at a time. Parallel runs are not bit-reproducible with ``workers=0`` (the threads share the
CPU random generator that seeds augmentation); sequential CPU runs are.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import InputError, UsageError
from .sweep_report import (
    BEST_NAME,
    INDEX_HTML,
    PARETO_PNG,
    SWEEP_JSON,
    draw_pareto,
    pct,
    write_outputs,
)
from .sweep_results import SweepInterrupted, SweepReporter, SweepResult, SweepRun
from .sweep_runs import RUNS_DIR, Runner, map_on_devices, resolve_devices, run_tag
from .sweep_scoring import build_val_view, finite_or_none, map_scores, rule_keys, spearman, val_samples

__all__ = [
    "SweepRun",
    "SweepResult",
    "SweepReporter",
    "SweepInterrupted",
    "sweep",
    "recommend",
    "pareto_front",
    "check_grid",
    "check_tolerance",
    "run_tag",
    "resolve_devices",
    "map_on_devices",
    "map_scores",
    "spearman",
    "draw_pareto",
    "RULE",
    "SWEEP_EPOCHS",
    "DEFAULT_TOLERANCE",
]

SWEEP_EPOCHS = 3  # short fine-tunes: enough to see the trade-off, not to converge
DEFAULT_TOLERANCE = 0.01
_EPS = 1e-9  # rounding allowance of the accuracy floor, and what counts as a tie

RULE = (
    "Among runs whose validation accuracy is at least the reference accuracy minus the tolerance, choose the "
    "best localization score (share_of_oracle with masks; without masks the highest sparsity, ties broken by "
    "the higher stability); remaining ties go to the smaller λ (l1, then l2). If no run keeps the accuracy, "
    "nothing is recommended."
)


# ----------------------------------------------------------------------------------------------------
# Grid, rule, Pareto front
# ----------------------------------------------------------------------------------------------------


def check_grid(name: str, values: float | Sequence[float]) -> list[float]:
    """``values`` as a list of floats: at least one, each finite and ≥ 0, no duplicates.

    Errors are :class:`UsageError` naming the parameter (``"l1 must …"``).
    """
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise UsageError(f"{name} must be a list of numbers, not {type(values).__name__}.", param=name)
    out: list[float] = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise UsageError(f"{name} must hold numbers; {v!r} is not one.", param=name) from None
        if not math.isfinite(f):
            raise UsageError(f"{name} must hold finite values; got {f:g}.", param=name)
        if f < 0:
            raise UsageError(f"{name} must hold values of 0 or more; got {f:g}.", param=name)
        if f in out:
            raise UsageError(f"{name} must not repeat a value; {f:g} appears twice.", param=name)
        out.append(f)
    if not out:
        raise UsageError(f"{name} must hold at least one value.", param=name)
    return out


def check_tolerance(tolerance: float) -> float:
    """``tolerance`` as a float: finite and ≥ 0 (a :class:`UsageError` naming it otherwise)."""
    tol = finite_or_none(tolerance)
    if tol is None or tol < 0:
        raise UsageError(f"tolerance must be a finite number of 0 or more; got {tolerance}.", param="tolerance")
    return tol


def recommend(
    runs: Sequence[Mapping[str, Any]] | Sequence[SweepRun],
    ref_accuracy: float | None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Any:
    """The run the rule recommends, or None (see the module docstring, "The rule").

    Each run is a :class:`SweepRun` or a ``sweep.json`` run entry: ``accuracy``, ``score`` (the
    localization score, higher is better), ``tiebreak`` (or None), ``l1``, ``l2``. A run qualifies when
    ``accuracy ≥ ref_accuracy − tolerance`` (1e-9 allowance); without a reference accuracy every run with
    an accuracy qualifies. Among qualifying runs the highest ``score`` wins (unmeasured scores rank last),
    then the highest ``tiebreak``, then the smaller ``l1``, then the smaller ``l2``.
    """
    floor = None if finite_or_none(ref_accuracy) is None else float(ref_accuracy) - float(tolerance) - _EPS
    qualified = [
        r
        for r in runs
        if finite_or_none(r["accuracy"]) is not None and (floor is None or finite_or_none(r["accuracy"]) >= floor)
    ]
    if not qualified:
        return None

    def key(r: Any) -> tuple:
        score, tie = finite_or_none(r.get("score")), finite_or_none(r.get("tiebreak"))
        return (
            0 if score is not None else 1,
            -round(score / _EPS) if score is not None else 0,  # equal within 1e-9: a tie
            0 if tie is not None else 1,
            -round(tie / _EPS) if tie is not None else 0,
            float(r["l1"]),
            float(r["l2"]),
        )

    return min(qualified, key=key)


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[int]:
    """Indices of the points ``(x, y)`` no other point dominates (both higher is better), sorted by x.

    A point is dominated by another at least as good in both coordinates and better in one; points with
    a missing coordinate are never on the front.
    """
    ok = [
        (i, float(x), float(y))
        for i, (x, y) in enumerate(points)
        if finite_or_none(x) is not None and finite_or_none(y) is not None
    ]
    front = []
    for i, x, y in ok:
        dominated = any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for j, x2, y2 in ok if j != i)
        if not dominated:
            front.append((x, y, i))
    return [i for _, _, i in sorted(front)]


# ----------------------------------------------------------------------------------------------------
# The sweep: its steps in order
# ----------------------------------------------------------------------------------------------------


def sweep(
    model: Any,
    data_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    l1: Sequence[float],
    l2: Sequence[float] = (0.0,),
    config: Any = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    masks: str | os.PathLike | None = None,
    devices: str | Sequence[str] | None = None,
    force: bool = False,
    max_images: int | None = None,
    reporter: SweepReporter | None = None,
) -> SweepResult:
    """Fine-tune ``model`` once per λ pair of ``l1 × l2``, score every run on the validation split, and
    recommend one by the rule (module docstring).

    Args:
        model: What :func:`softcamify.training.finetune` takes (a SoftCAM model, a convertible module or
            LoadedModel, a model spec such as a checkpoint path); converted once, then copied per run.
        data_dir: The dataset, as for ``finetune`` (``config.labels``, ``config.val_split`` apply).
        out_dir: Output folder; must be missing or empty unless ``force``.
        l1, l2: The grid values (finite, ≥ 0, no repeats, at least one each).
        config: :class:`~softcamify.training.FinetuneConfig` for every run (its ``l1``/``l2``/``force``
            are set per run; ``epochs`` None means :data:`SWEEP_EPOCHS`). ``resume`` and ``reset_head``
            are refused: the runs are compared with the starting model.
        tolerance: Accuracy a run may lose against the reference and still be recommended.
        masks: Mask root mirroring ``data_dir`` (default ``data_dir/masks`` when it exists).
        devices: See :func:`resolve_devices`.
        force: Write into a non-empty ``out_dir``; run folders and files of the same names are replaced.
        max_images: Localization metrics on at most this many annotated validation images.
        reporter: Receives progress (:class:`SweepReporter`).

    Raises :class:`UsageError`, :class:`InputError`, :class:`OutputError` (one sentence, before
    ``out_dir`` is created), the errors of ``finetune``, and :class:`SweepInterrupted` after Ctrl-C.
    """
    from ..data import default_mask_root
    from ..io import check_output_dir, make_output_dir

    t_start = time.perf_counter()
    rep = reporter or SweepReporter()
    l1s, l2s = check_grid("l1", l1), check_grid("l2", l2)
    tol = check_tolerance(tolerance)
    cfg = _sweep_config(config, l1s, l2s, max_images)
    devs = resolve_devices(devices, cfg.device)
    out = check_output_dir(out_dir, force=force)
    grid = [(a, b) for a in l1s for b in l2s]
    notes: list[str] = []
    _check_folders(data_dir, masks)
    sc = _starting_model(model, cfg, notes)
    splits, val = val_samples(sc, data_dir, cfg, notes)
    data_root = Path(data_dir) if data_dir is not None else splits.root
    mask_root = Path(masks) if masks is not None else (default_mask_root(data_dir) if data_dir is not None else None)
    # the runs get the converted model; its input size and weights are already applied
    run_cfg = replace(cfg, weights=None, input_size=None, ema=False, force=bool(force), resume=False)

    with tempfile.TemporaryDirectory(prefix="softcamify-sweep-") as tmp:
        view, view_masks, with_mask = build_val_view(Path(tmp), val, splits.class_names, data_root, mask_root)
        rep.start(_start_info(grid, devs, int(cfg.epochs), len(val), with_mask, out, splits.source))
        runner = Runner(sc, data_dir, out, cfg, run_cfg, view, view_masks, val, max_images, grid, rep)
        ref = _score_reference(runner, model, devs[0], mask_root, notes)
        rep.reference(ref)
        make_output_dir(out)
        make_output_dir(out / RUNS_DIR)
        runs = runner.run_all(devs)

    chosen, floor = _apply_rule(runs, ref["accuracy"], tol, notes)
    data = _data_info(data_dir, splits, len(val), with_mask, mask_root, ref["explained_images"])
    result = _result(out, grid, ref, runs, chosen, tol, floor, runner.with_masks, data, cfg, devs, notes)
    result.elapsed_s = time.perf_counter() - t_start
    write_outputs(result, out, force)
    rep.end(result)
    return result


def _sweep_config(config: Any, l1s: list[float], l2s: list[float], max_images: int | None) -> Any:
    """A checked copy of the sweep's FinetuneConfig (a :class:`UsageError` for what a sweep refuses)."""
    from .config import FinetuneConfig, check_config

    if max_images is not None and int(max_images) < 1:
        raise UsageError(f"max_images must be at least 1; got {max_images}.", param="max_images")
    cfg = copy.deepcopy(config) if config is not None else FinetuneConfig()
    if not isinstance(cfg, FinetuneConfig):
        raise UsageError(f"config must be a FinetuneConfig, not {type(cfg).__name__}.")
    if cfg.epochs is None:
        cfg.epochs = SWEEP_EPOCHS
    if cfg.batch_size is None:  # a sweep fine-tunes image models
        from .config import DEFAULT_BATCH_SIZE

        cfg.batch_size = DEFAULT_BATCH_SIZE
    if cfg.resume:
        raise UsageError(
            "A sweep starts new runs; resume is not supported (run finetune --resume on one run folder).",
            param="resume",
        )
    if cfg.reset_head:
        raise UsageError(
            "A sweep compares runs with the starting model, so reset_head does not apply; fine-tune once "
            "with reset_head and sweep from its best.safetensors.",
            param="reset_head",
        )
    cfg.l1, cfg.l2 = l1s[0], l2s[0]
    check_config(cfg.resolved())
    return cfg


def _check_folders(data_dir: Any, masks: Any) -> None:
    if masks is not None and not Path(masks).is_dir():
        raise InputError(f"Mask folder {masks} does not exist or is not a folder; check masks.", param="masks")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise InputError(
            f"Dataset folder {data_dir} does not exist or is not a folder; check data_dir.", param="data_dir"
        )


def _starting_model(model: Any, cfg: Any, notes: list[str]) -> Any:
    """The converted starting model (exactly as ``convert``), on the CPU, in eval mode."""
    sc, loaded = cfg.starting_model(model)
    notes.extend(n for n in loaded.notes if n not in notes)
    return sc.cpu().eval()


def _score_reference(
    runner: Runner, model: Any, device: str, mask_root: Path | None, notes: list[str]
) -> dict[str, Any]:
    """The starting model's scores; they decide what the rule ranks by (``runner.with_masks``)."""
    ref = runner.score(runner.model, device)
    runner.model.cpu()
    with_masks = runner.with_masks = ref["explained_images"] > 0
    ref["score"], ref["tiebreak"] = rule_keys(ref, with_masks)
    ref["model"] = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    if with_masks and ref["share_of_oracle"] is None:
        notes.append("evaluate reported no share_of_oracle for SoftCAM, so runs cannot be ranked by localization.")
    if not with_masks:
        where = (
            "no mask folder"
            if mask_root is None
            else f"no validation image has a mask with foreground under {mask_root}"
        )
        notes.append(f"Localization without masks ({where}): runs are ranked by map sparsity, ties by flip stability.")
    return ref


def _apply_rule(
    runs: list[SweepRun], ref_accuracy: float | None, tol: float, notes: list[str]
) -> tuple[SweepRun | None, float | None]:
    """Mark each run ``qualified``/``recommended``/``pareto``; the chosen run and the accuracy floor."""
    chosen = recommend(runs, ref_accuracy, tol)
    floor = ref_accuracy - tol if ref_accuracy is not None else None
    for r in runs:
        r.qualified = r.accuracy is not None and (floor is None or r.accuracy >= floor - _EPS)
        r.recommended = r is chosen
    for i in pareto_front([(r.score, r.accuracy) for r in runs]):
        runs[i].pareto = True
    if chosen is None:
        notes.append(
            f"No run kept the validation accuracy within {tol:g} of the reference "
            f"({pct(ref_accuracy)}): nothing is recommended and no best.safetensors is written; "
            "try smaller λ values, more --epochs or a larger --tolerance."
        )
    return chosen, floor


def _start_info(
    grid: list[tuple[float, float]],
    devs: list[str],
    epochs: int,
    val_images: int,
    with_mask: int,
    out: Path,
    source: str,
) -> dict[str, Any]:
    """What :meth:`SweepReporter.start` receives."""
    return {
        "grid": [run_tag(a, b) for a, b in grid],
        "devices": devs,
        "epochs": epochs,
        "val_images": val_images,
        "with_mask": with_mask,
        "out_dir": str(out),
        "source": source,
    }


def _data_info(
    data_dir: Any, splits: Any, val_images: int, with_mask: int, mask_root: Path | None, explained: int
) -> dict[str, Any]:
    """``sweep.json``'s ``data``: what was scored, and how."""
    return {
        "data_dir": str(data_dir) if data_dir is not None else None,
        "source": splits.source,
        "val_images": val_images,
        "with_mask": with_mask,
        "masks": str(mask_root) if mask_root else None,
        "explained_images": explained,
        "class_names": list(splits.class_names),
        "scored_by": "evaluate on finetune's validation images (read through links), plus map_scores",
    }


def _result(
    out: Path,
    grid: list[tuple[float, float]],
    ref: dict[str, Any],
    runs: list[SweepRun],
    chosen: SweepRun | None,
    tol: float,
    floor: float | None,
    with_masks: bool,
    data: dict[str, Any],
    cfg: Any,
    devs: list[str],
    notes: list[str],
) -> SweepResult:
    metric = "share_of_oracle" if with_masks else "sparsity"
    rule = {
        "text": RULE,
        "localization": metric,
        "tiebreak": None if with_masks else "stability",
        "tolerance": tol,
        "accuracy_floor": floor,
        "reference_accuracy": ref["accuracy"],
    }
    paths = {
        "sweep_json": str(out / SWEEP_JSON),
        "pareto_png": str(out / PARETO_PNG),
        "index_html": str(out / INDEX_HTML),
        "best": str(out / BEST_NAME) if chosen is not None else None,
        "runs": str(out / RUNS_DIR),
    }
    # json_safe leaves path objects alone: a FinetuneConfig may hold a Path (labels, weights)
    config = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in cfg.to_dict().items()}
    return SweepResult(
        out_dir=str(out),
        grid=[{"tag": run_tag(a, b), "l1": a, "l2": b} for a, b in grid],
        reference=ref,
        runs=runs,
        recommended=chosen,
        rule=rule,
        tolerance=tol,
        localization=metric,
        data=data,
        config=config,
        devices=devs,
        paths=paths,
        notes=notes,
    )
