#!/usr/bin/env python
"""Draw docs/images/volume_triplanar.png: the tri-planar writer on a ``synth3d`` volume.

    python scripts/volume_figure.py            # writes docs/images/volume_triplanar.png (replaces it)

The evidence drawn is a stand-in computed from the volume's exact lesion mask: the mask averaged over
8×8×8-voxel cells (the grid of a stride-8 3D network), mapped back into the scan's geometry with
:func:`softcamify.volumes.evidence_to_scan` as a model's evidence grid is. It shows what the writers draw
(slices through the strongest evidence, physical aspect ratios, one colour scale for the volume) without a
trained model. Seeded: the same picture on every run. numpy, nibabel and Pillow only.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from softcamify.volumes import VolumeConfig, evidence_to_scan, read_mask, read_volume
from softcamify.volumes.synth3d import make_volumes
from softcamify.volumes.write import triplanar, write_triplanar

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "volume_triplanar.png"
SHAPE = (48, 48, 48)
CELL = 8


def block_mean(a: np.ndarray, cell: int) -> np.ndarray:
    d, h, w = (s // cell for s in a.shape)
    return a[: d * cell, : h * cell, : w * cell].reshape(d, cell, h, cell, w, cell).mean(axis=(1, 3, 5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_volumes(Path(tmp) / "data", n=4, shape=SHAPE, seed=args.seed)
        item = max(manifest["volumes"], key=lambda v: len(v["lesions"]))  # a lesion volume
        vol = read_volume(Path(tmp) / "data" / item["path"])
        mask = read_mask(Path(tmp) / "data" / item["mask"], vol)
    config = VolumeConfig(target_shape=SHAPE, window=(-1000, 400))
    grid = block_mean(mask.astype(np.float32), CELL)  # 6×6×6, the stand-in evidence grid
    evidence = evidence_to_scan(grid, vol.geometry, config)
    picture = triplanar(
        vol.array, evidence, vol.geometry, window=(-160, 240), height=224, title=f"synth3d {item['id']}"
    )
    write_triplanar(args.out, picture, force=True)
    print(f"wrote {args.out} ({picture.width}×{picture.height})")


if __name__ == "__main__":
    main()
