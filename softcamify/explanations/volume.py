"""``explain`` for a volume model: every class's evidence volume from one forward pass, written in the scan's
own geometry.

The volume counterpart of :mod:`.compute` and :mod:`.write` (the one place ``explain`` branches for volumes).
Each scan is read (:func:`softcamify.volumes.read_volume`), preprocessed as the model records
(:attr:`softcamify.runtime.Runtime.volume`), run, and its evidence grid (``K×d×h×w``) is mapped back onto the
scan (:func:`softcamify.volumes.evidence_to_scan`: the scan's shape, its affine). With an output folder::

    out_dir/maps/<name>.npy                          raw evidence grids, K×d×h×w float32
    out_dir/volumes/<name>/<k>_<class>.nii.gz        evidence of class k in the scan's geometry (overlay in
                                                     3D Slicer, ITK-SNAP, FSLeyes)
    out_dir/volumes/<name>/<k>_<class>.png           tri-planar overlay through the strongest evidence
    out_dir/volumes/<name>/<k>_<class>.html          slice viewer (self-contained)
    out_dir/manifest.json                            everything above, machine-readable

Torch-free (an ``.onnx`` export runs in onnxruntime).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..evaluation.metrics import json_safe
from ..runtime import Runtime, softmax
from .inputs import PredictionFields, parse_classes, safe_name

__all__ = [
    "DEFAULT_VOLUME_BATCH",
    "VolumeExplanation",
    "collect_volumes",
    "explain_volumes",
    "iter_volume_explanations",
]

DEFAULT_VOLUME_BATCH = 2
MAPS_FORMAT = "npy float32 K×d×h×w, signed, bias included; mean over d, h, w = logits"


@dataclass
class VolumeExplanation(PredictionFields):
    """One volume's prediction and evidence volumes (and the files written for it, if any).

    ``maps`` is the evidence grid ``K×d×h×w`` (float32, signed, bias included: its mean over d, h, w is
    ``logits``); :meth:`in_scan` maps it onto the scan. ``geometry`` is the scan's
    (:class:`softcamify.volumes.VolumeGeometry`); ``files`` holds paths relative to the output folder.
    """

    geometry: Any
    files: dict[str, Any] = field(default_factory=dict)

    @property
    def evidence_grid(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.maps.shape[1:])

    def in_scan(self) -> np.ndarray:
        """The evidence of every class in the scan's geometry: ``K×D×H×W`` float32 (the scan's shape)."""
        from ..volumes import evidence_to_scan

        return evidence_to_scan(self.maps, self.geometry).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        g = self.geometry
        return json_safe(
            {
                **self._prediction_dict(),
                "evidence_grid": list(self.evidence_grid),
                "scan": {
                    "shape": list(g.shape),
                    "spacing": [float(v) for v in g.spacing],
                    "affine": np.asarray(g.affine, dtype=np.float64).tolist(),
                },
                "classes": [self.class_names[i] for i in self.classes],
                "files": self.files,
            }
        )


def collect_volumes(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Volume files (``.nii``, ``.nii.gz``, ``.npy``, ``.npz``) from files and folders (folders: recursive,
    sorted, hidden entries skipped; the rule of :func:`softcamify.data.collect.collect_image_files`). A
    missing path, a file that is not a volume, or nothing found is an :class:`InputError`."""
    from ..data.collect import collect_image_files
    from ..volumes import VOLUME_EXTENSIONS, is_volume_file

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    exts = ", ".join(VOLUME_EXTENSIONS)
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = collect_image_files(p, volumes=True)
            if not found:
                raise InputError(f"Folder {p} contains no volumes ({exts}).")
            out.extend(found)
        elif p.is_file():
            if not is_volume_file(p):
                raise InputError(f"{p} is not a volume file (expected one of {exts}); the model reads volumes.")
            out.append(p)
        else:
            raise InputError(f"Volume {p} does not exist; check the path.")
    if not out:
        raise InputError("No volumes were given.")
    seen: set[str] = set()
    unique = []
    for p in out:  # the same file named twice (or inside a folder also given) is explained once
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _names(paths: Sequence[Path]) -> list[str]:
    from ..volumes import volume_stem

    seen: dict[str, int] = {}
    names = []
    for p in paths:
        base = safe_name(volume_stem(p))
        n = seen.get(base, 0) + 1
        seen[base] = n
        names.append(base if n == 1 else f"{base}_{n}")
    return names


def _check_outputs(logits: np.ndarray, maps: np.ndarray) -> None:
    if maps.ndim != 5 or maps.shape[:2] != logits.shape:
        raise InputError(
            f"The model returned evidence of shape {maps.shape} for logits {logits.shape}; a volume "
            "model returns N×K×d×h×w."
        )


def iter_volume_explanations(
    rt: Runtime,
    paths: Sequence[Path],
    selection: str | list[int],
    batch_size: int = DEFAULT_VOLUME_BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[VolumeExplanation, Any]]:
    """(explanation, the scan as read) for each volume file in order; volumes of one preprocessed shape run
    ``batch_size`` at a time (a target spacing gives each scan its own shape: one at a time). Nothing is
    written. ``selection`` is what :func:`parse_classes` returns."""
    from ..volumes import read_volume

    names = _names(paths)
    total, start = len(paths), 0
    while start < total:
        vols: list[Any] = []
        arrays: list[np.ndarray] = []
        while start + len(vols) < total and len(vols) < batch_size:
            v = read_volume(paths[start + len(vols)])
            a = rt.preprocess(v)
            if arrays and a.shape != arrays[0].shape:
                break  # another shape: the next batch starts with it (read again then)
            vols.append(v)
            arrays.append(a)
        logits, maps = rt(np.stack(arrays).astype(np.float32))
        _check_outputs(logits, maps)
        probs = softmax(logits)
        for j, v in enumerate(vols):
            i = start + j
            pred = int(np.argmax(probs[j]))
            if isinstance(selection, str):  # "pred" or "all"
                sel = [pred] if selection == "pred" else list(range(rt.num_classes))
            else:
                sel = list(selection)
            ex = VolumeExplanation(
                source=os.fspath(paths[i]),
                name=names[i],
                class_names=list(rt.class_names),
                logits=logits[j].astype(np.float32),
                probs=probs[j],
                maps=maps[j].astype(np.float32),
                classes=list(sel),
                geometry=v.geometry,
            )
            yield ex, v
        start += len(vols)
        if progress is not None:
            progress(start, total)


def write_volume(out: Path, ex: VolumeExplanation, volume: Any, window: Any, force: bool) -> None:
    """Write one volume's raw grid and, per selected class, its evidence NIfTI, tri-planar PNG and slice
    viewer; sets ``ex.files``."""
    from ..io import atomic_output, make_output_dir
    from ..volumes.write import write_volume_explanation

    make_output_dir(out / "maps")
    make_output_dir(out / "volumes" / ex.name)
    rel_maps = f"maps/{ex.name}.npy"
    with atomic_output(out / rel_maps, force=force) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, ex.maps)
    in_scan = ex.in_scan()
    per_class = {}
    for c in ex.classes:
        cls = ex.class_names[c]
        rel = f"volumes/{ex.name}/{c}_{safe_name(cls, 40)}"
        title = f"{Path(ex.source).name}: evidence for {cls} (logit {float(ex.logits[c]):.3g})"
        w = write_volume_explanation(out / rel, volume, in_scan[c], title=title, window=window, force=force)
        per_class[cls] = {
            "evidence": f"{rel}.nii.gz",
            "triplanar": f"{rel}.png",
            "viewer": f"{rel}.html" if w.viewer is not None else None,
        }
    ex.files = {"maps": rel_maps, "classes": per_class}


def _manifest(results: Sequence[VolumeExplanation], rt: Runtime, selection: Any) -> dict[str, Any]:
    from .._version import __version__

    return json_safe(
        {
            "softcamify_version": __version__,
            "model": rt.description,
            "backend": rt.kind,
            "spatial_dims": 3,
            "class_names": rt.class_names,
            "data_config": rt.data_config,
            "volume": rt.volume.to_dict() if rt.volume is not None else None,
            "evidence_grid": list(results[0].evidence_grid) if results else None,
            "classes": selection if isinstance(selection, str) else [rt.class_names[c] for c in selection],
            "maps_format": MAPS_FORMAT,
            "evidence_format": "NIfTI float32 in the scan's geometry (its shape and affine), signed logit evidence",
            "count": len(results),
            "volumes": [r.to_dict() for r in results],
        }
    )


def explain_volumes(
    model: Any,
    volumes: Any,
    out_dir: str | os.PathLike | None = None,
    classes: str | int | Sequence[str | int] | None = "pred",
    batch_size: int = DEFAULT_VOLUME_BATCH,
    *,
    device: Any = "auto",
    window: Sequence[float] | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[VolumeExplanation]:
    """Evidence volumes of every class for each scan (files or folders of ``.nii``, ``.nii.gz``, ``.npy``,
    ``.npz``), from one forward pass per batch; with ``out_dir`` the files of the module docs.

    ``model``: a volume model as :func:`softcamify.runtime.load` takes it (its recorded preprocessing is
    applied); ``classes``: ``"pred"``, ``"all"`` or names / indices (which classes get their files; the raw
    grids keep all); ``window``: the grey levels of the pictures (default: the model's intensity window, else
    the scan's 1st..99th percentile). A bad volume raises :class:`InputError` naming the file.
    """
    from ..errors import UsageError
    from ..io import check_output_dir
    from ..runtime import load

    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}.", param="batch_size")
    out = check_output_dir(out_dir, force=force) if out_dir is not None else None
    paths = collect_volumes(volumes)
    rt = load(model, device=device)
    if rt.volume is None:
        raise InputError(f"{rt.description or rt.architecture} is an image model; volumes need a volume model.")
    selection = parse_classes(classes, rt.class_names)
    if window is None and rt.volume.window is not None:
        window = rt.volume.window
    results = []
    for ex, vol in iter_volume_explanations(rt, paths, selection, batch_size, progress):
        if out is not None:
            write_volume(out, ex, vol, window, force)
        results.append(ex)
    if out is not None:
        import json

        from ..io import write_text_atomic

        write_text_atomic(
            out / "manifest.json", json.dumps(_manifest(results, rt, selection), indent=2) + "\n", force=force
        )
    return results
