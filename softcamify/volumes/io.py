"""Reading volumes: ``.nii`` / ``.nii.gz`` (nibabel), ``.npy`` and ``.npz`` into a :class:`Volume`.

The array keeps the file's voxel order (no reorientation): axis 0, 1, 2 of ``Volume.array``'s spatial part
are the file's ``i, j, k``, so anything computed on it (an evidence volume) lines up with the file's affine
and can be written back in the scan's geometry. Channels come first: ``C×D×H×W`` (``C = 1`` for a scalar
volume). A 4-D NIfTI keeps its channels on the last axis (as the format does) and a 4-D ``.npy`` on the
first; both become channels-first here.

Every unusable file is an :class:`~softcamify.errors.InputError` (exit code 3) with one sentence naming it:
missing or unreadable, truncated gzip, wrong rank, an empty axis, NaN or infinite voxels, a mask of another
shape than its volume. nibabel is imported only to read or write NIfTI; without it the message names the
``softcamify[volumes]`` extra. Torch-free.
"""

from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = [
    "VOLUME_EXTENSIONS",
    "MAX_CHANNELS",
    "Volume",
    "VolumeGeometry",
    "axis_codes",
    "is_volume_file",
    "is_nifti_file",
    "volume_stem",
    "read_volume",
    "read_mask",
    "require_nibabel",
]

#: File endings read as volumes (``.nii.gz`` before ``.nii`` so the longest ending wins).
VOLUME_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".npy", ".npz")
#: More channels than this on a 4-D array is a time series or a wrong axis order, not channels.
MAX_CHANNELS = 16
#: Keys of an ``.npz`` tried for the volume's array, in order (else its only array).
NPZ_ARRAY_KEYS = ("volume", "image", "data", "arr_0")

PathLike = str | os.PathLike


def _ending(path: PathLike) -> str:
    name = os.path.basename(os.fspath(path)).lower()
    return next((e for e in VOLUME_EXTENSIONS if name.endswith(e)), "")


def is_volume_file(path: PathLike) -> bool:
    """True when ``path`` ends with one of :data:`VOLUME_EXTENSIONS` (any case) and is not hidden."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and bool(_ending(name)) and len(name) > len(_ending(name))


def is_nifti_file(path: PathLike) -> bool:
    return _ending(path) in (".nii", ".nii.gz")


def volume_stem(path: PathLike) -> str:
    """The file name without its volume ending (``case_1.nii.gz`` -> ``case_1``)."""
    name = os.path.basename(os.fspath(path))
    return name[: len(name) - len(_ending(name))] if _ending(name) else Path(name).stem


def require_nibabel(path: PathLike | None = None) -> ModuleType:
    """The nibabel module, or an :class:`InputError` naming the ``softcamify[volumes]`` extra."""
    try:
        import nibabel as nib
    except ImportError as e:
        what = f"Reading or writing NIfTI file {path}" if path is not None else "NIfTI files"
        raise InputError(
            f"{what} needs nibabel; install it with pip install 'softcamify[volumes]' (or use .npy volumes)."
        ) from e
    return nib


def axis_codes(affine: Any) -> tuple[str, str, str]:
    """The world direction (RAS+) each voxel axis points to, as nibabel's ``aff2axcodes`` gives it:
    ``('R', 'A', 'S')`` for an identity-like affine, ``('L', 'P', 'S')`` for a DICOM-like (LPS) one.

    Each axis gets the world axis its column of the affine leans on most (every world axis once)."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(a, axis=0)
    rot = a / np.where(norms > 0, norms, 1.0)
    codes: list[str] = ["?", "?", "?"]
    taken: set[int] = set()
    # strongest entries first, so a slightly oblique affine gives each voxel axis its dominant world axis
    for flat in np.argsort(-np.abs(rot), axis=None):
        world, vox = divmod(int(flat), 3)
        if codes[vox] != "?" or world in taken:
            continue
        taken.add(world)
        codes[vox] = ("R", "A", "S")[world] if rot[world, vox] >= 0 else ("L", "P", "I")[world]
    return codes[0], codes[1], codes[2]


@dataclass(frozen=True)
class VolumeGeometry:
    """Where a volume's voxels are: its spatial ``shape`` (file voxel order), the 4×4 voxel-to-world
    ``affine`` (RAS+ millimetres, as NIfTI stores it) and the voxel ``spacing`` in millimetres (the
    lengths of the affine's columns for NIfTI; 1.0 for ``.npy``)."""

    shape: tuple[int, int, int]
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VolumeGeometry):
            return NotImplemented
        return (
            self.shape == other.shape
            and self.spacing == other.spacing
            and np.array_equal(np.asarray(self.affine), np.asarray(other.affine))
        )

    def __hash__(self) -> int:
        return hash((self.shape, self.spacing))

    @property
    def axis_codes(self) -> tuple[str, str, str]:
        return axis_codes(self.affine)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "affine": np.asarray(self.affine, dtype=np.float64).tolist(),
            "spacing": list(self.spacing),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VolumeGeometry:
        shape = tuple(int(v) for v in d["shape"])
        spacing = tuple(float(v) for v in d.get("spacing", (1.0, 1.0, 1.0)))
        return cls(shape, np.asarray(d.get("affine", np.eye(4)), dtype=np.float64), spacing)  # type: ignore[arg-type]


@dataclass
class Volume:
    """A volume read from a file: ``array`` float32 ``C×D×H×W`` in the file's voxel order, its geometry and
    where it came from. ``original_shape`` is the array's shape as stored (before channels moved first)."""

    array: np.ndarray
    geometry: VolumeGeometry
    path: Path | None = None
    original_shape: tuple[int, ...] = ()

    @property
    def affine(self) -> np.ndarray:
        return self.geometry.affine

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.geometry.spacing

    @property
    def shape(self) -> tuple[int, int, int]:
        """The spatial shape ``D×H×W``."""
        return self.geometry.shape

    @property
    def channels(self) -> int:
        return int(self.array.shape[0])


def _spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    s = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return float(s[0]), float(s[1]), float(s[2])


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float] | None]:
    nib = require_nibabel(path)
    try:
        img = nib.load(os.fspath(path))
        data = np.asarray(img.get_fdata(dtype=np.float32))  # applies scl_slope / scl_inter
    except Exception as e:  # nibabel raises many types (ImageFileError, EOFError, OSError, zlib.error, ...)
        if _ending(path) == ".nii.gz" and _gzip_problem(path):
            raise InputError(f"Volume {path} is {_gzip_problem(path)}; copy or export it again.") from e
        if isinstance(e, (EOFError, zlib.error)):
            raise InputError(f"Volume {path} is truncated or corrupt ({_reason(e)}); copy or export it again.") from e
        raise InputError(f"Volume {path} is not a readable NIfTI file ({_reason(e)}); check the file.") from e
    affine = np.asarray(img.affine, dtype=np.float64)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    spacing = (zooms[0], zooms[1], zooms[2]) if len(zooms) == 3 else None
    return data, affine, spacing


def _gzip_problem(path: Path) -> str:
    """'' when ``path`` is a complete gzip stream, else what is wrong with it (read to the end, in chunks)."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except EOFError:
        return "truncated (its gzip stream ends early)"
    except (OSError, zlib.error) as e:
        return f"not a valid gzip file ({_reason(e)})"
    return ""


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text.rstrip(".")


def _read_numpy(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        if _ending(path) == ".npy":
            return np.load(path, allow_pickle=False), None
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            key = next((k for k in NPZ_ARRAY_KEYS if k in keys), None)
            arrays = [k for k in keys if k not in ("affine", "spacing")]
            if key is None and len(arrays) == 1:
                key = arrays[0]
            if key is None:
                raise InputError(
                    f"Volume {path} holds arrays [{', '.join(keys)}] but none named "
                    f"{', '.join(NPZ_ARRAY_KEYS)}; store the volume under one of these names."
                )
            affine = np.asarray(npz["affine"], dtype=np.float64) if "affine" in keys else None
            return np.asarray(npz[key]), affine
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"Volume {path} is not a readable numpy file ({_reason(e)}); check the file.") from e


def _to_channels_first(data: np.ndarray, path: Path, nifti: bool) -> np.ndarray:
    shape = tuple(data.shape)
    if nifti and data.ndim == 5 and shape[3] == 1:  # NIfTI vector volumes: X×Y×Z×1×C
        data = data[:, :, :, 0, :]
    if data.ndim == 3:
        data = data[None]
    elif data.ndim == 4:
        data = np.moveaxis(data, -1, 0) if nifti else data
        if data.shape[0] > MAX_CHANNELS:
            where = "last" if nifti else "first"
            raise InputError(
                f"Volume {path} has shape {shape}: {data.shape[0]} channels on its {where} axis, more than "
                f"{MAX_CHANNELS} (a time series?); give one 3-D volume per file."
            )
    else:
        raise InputError(
            f"Volume {path} has {data.ndim} axes (shape {shape}); a volume has 3 (D×H×W) or 4 (with channels)."
        )
    return data


def read_volume(path: PathLike) -> Volume:
    """Read ``path`` (``.nii``, ``.nii.gz``, ``.npy``, ``.npz``) as a float32 ``C×D×H×W`` :class:`Volume`.

    NIfTI: the data with its scaling applied (nibabel's ``get_fdata``), the header's affine
    (``img.affine``: the sform, else the qform) and voxel sizes (``header.get_zooms()``). ``.npy``: an
    identity affine and 1 mm spacing. ``.npz``: the array named ``volume``, ``image``, ``data`` or ``arr_0``
    (or its only array) and an optional 4×4 ``affine``. No reorientation: the voxel order is the file's.

    Raises :class:`InputError` (one sentence naming the file) for a missing, unreadable or truncated file, a
    rank other than 3 or 4, an empty axis, a non-numeric array, or NaN / infinite voxels.
    """
    p = Path(path)
    if not is_volume_file(p):
        raise InputError(f"{p} is not a volume file; use {', '.join(VOLUME_EXTENSIONS)}.")
    if not p.is_file():
        what = "does not exist" if not p.exists() else "is not a file"
        raise InputError(f"Volume {p} {what}; check the path.")
    if p.stat().st_size == 0:
        raise InputError(f"Volume {p} is an empty file; copy or export it again.")
    nifti = is_nifti_file(p)
    spacing: tuple[float, float, float] | None = None
    if nifti:
        data, affine, spacing = _read_nifti(p)
    else:
        data, npz_affine = _read_numpy(p)
        affine = np.eye(4) if npz_affine is None else npz_affine
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise InputError(f"Volume {p} has an affine of shape {affine.shape}; it must be a finite 4×4 matrix.")
    if data.dtype.kind not in "biuf":
        raise InputError(f"Volume {p} holds {data.dtype} values; a volume holds numbers (integers or floats).")
    original_shape = tuple(int(s) for s in data.shape)
    if data.size == 0:
        raise InputError(f"Volume {p} is empty (shape {original_shape}); every axis needs at least one voxel.")
    arr = _to_channels_first(np.asarray(data), p, nifti)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise InputError(
            f"Volume {p} has {bad} NaN or infinite voxel(s) (or values beyond float32); fill or mask them first."
        )
    spatial = (int(arr.shape[1]), int(arr.shape[2]), int(arr.shape[3]))
    geometry = VolumeGeometry(spatial, affine, spacing if spacing is not None else _spacing_of(affine))
    return Volume(arr, geometry, p, original_shape)


def read_mask(path: PathLike, like: Volume | VolumeGeometry | tuple[int, int, int] | None = None) -> np.ndarray:
    """Read a mask volume as a boolean ``D×H×W`` array (voxels above 0 are in the mask).

    ``like``: the volume (or its geometry or spatial shape) the mask belongs to; a mask of another shape is an
    :class:`InputError` naming both files. A 4-D mask must have one channel.
    """
    vol = read_volume(path)
    if vol.channels != 1:
        raise InputError(f"Mask {vol.path} has {vol.channels} channels; a mask is one 3-D volume (D×H×W).")
    shape = like.shape if isinstance(like, (Volume, VolumeGeometry)) else like
    if shape is not None and tuple(shape) != vol.shape:
        of = f" of {like.path}" if isinstance(like, Volume) and like.path is not None else ""
        raise InputError(
            f"Mask {vol.path} has shape {vol.shape} but the volume{of} has {tuple(shape)}; a mask must match its "
            "volume voxel for voxel."
        )
    return vol.array[0] > 0
