#!/usr/bin/env python
"""Draw docs/images/volume_triplanar.png: the tri-planar writer on a ``synth3d`` volume.

    python scripts/volume_figure.py --demo     # writes docs/images/volume_triplanar.png (replaces it)
    python scripts/volume_figure.py            # the stand-in below, without a model

``--demo`` runs ``softcamify demo --3d`` (:func:`softcamify.demo.volume.run_volume_demo`: a small 3D MONAI
DenseNet converted and fine-tuned on synth3d; needs torch and monai, about 30 s on a CPU) in a temporary
folder and keeps the tri-planar picture ``explain`` wrote for its first lesion test volume: real evidence of
a fine-tuned model, in the scan's geometry.

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
    parser.add_argument("--demo", action="store_true", help="the picture of the 3D demo's fine-tuned model")
    args = parser.parse_args()
    if args.demo:
        from_demo(args.out)
        return
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


def from_demo(out: Path) -> None:
    import shutil

    from softcamify.demo.volume import run_volume_demo

    with tempfile.TemporaryDirectory() as tmp:
        result = run_volume_demo(Path(tmp) / "demo3d", device="cpu")
        first = result.figures["explain"][0]
        rel = first["files"]["classes"]["lesion"]["triplanar"]
        shutil.copyfile(Path(tmp) / "demo3d" / "explain" / rel, out)
    loc = result.figures["localization"]["SoftCAM"]
    print(f"wrote {out} ({Path(first['source']).name}; SoftCAM share of oracle {loc['share_of_oracle']:.3f})")


if __name__ == "__main__":
    main()
