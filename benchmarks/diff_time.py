"""Seconds for ``softcamify diff`` of two resnet50-size models on 200 images at 224 px (the issue 19 target:
under 2 minutes on 2 CPU cores).

    python benchmarks/diff_time.py                          # resnet50, 200 images, 224 px, both .safetensors
    python benchmarks/diff_time.py --format onnx            # both exported to ONNX first (not timed)
    python benchmarks/diff_time.py --images 50 --model resnet18 --threads 2

Two timm ``resnet50`` with random weights (``pretrained=False``: nothing is downloaded; different seeds, so
predictions and maps differ), converted to SoftCAM with softcamify and saved; 200 images of the synthetic
lesion dataset (``datasets synth``, with masks, so localization is scored too). The timed part is the whole
``softcamify.diff`` call: loading both models, decoding and preprocessing every image, the batched passes,
every metric and the HTML page (``-o``). Then, as a floor under the same load, the two models' bare
forward passes over the same preprocessed batches (``rt(x)``, nothing else) are timed: the difference is
what diff adds (decoding, preprocessing, metrics, report). Printed: seconds, images/s, the forward-only
seconds and the load average before and after (the machine may be shared: a busy CPU makes the figure
slower, never faster).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def _models(folder: Path, name: str, size: int, fmt: str) -> list[Path]:
    import timm
    import torch

    import softcamify

    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        original = timm.create_model(name, pretrained=False, num_classes=3).eval()
        sc = softcamify.convert(original, input_size=(size, size), samples=2)
        sc.meta.class_names = ["bright_lesion", "healthy", "red_lesion"]
        path = softcamify.save(sc, folder / f"{name}_{seed}.safetensors")
        if fmt == "onnx":
            from softcamify.exporters import export_onnx

            path = folder / f"{name}_{seed}.onnx"
            export_onnx(sc, path, exporter="torchscript")
        paths.append(path)
    return paths


def _forward_seconds(old: Path, new: Path, data: Path, batch: int) -> float:
    """Seconds of the two models' forward passes alone over the images (preprocessed beforehand, not timed)."""
    import numpy as np

    from softcamify.images import open_image
    from softcamify.prediction import collect_images
    from softcamify.runtime import load

    rts = [load(old, device="cpu"), load(new, device="cpu")]
    x = np.stack([rts[0].preprocess(open_image(p)) for p in collect_images(data)]).astype(np.float32)
    t0 = time.perf_counter()
    for start in range(0, len(x), batch):
        for rt in rts:
            rt(x[start : start + batch])
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import torch

    import softcamify
    from softcamify.data.synth import make_lesions

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # every image in train/: a folder of class folders, compared whole, with its masks under masks/train
        make_lesions(folder / "ds", n=args.images, size=args.size, seed=0, splits=(1.0, 0.0, 0.0))
        data, masks = folder / "ds" / "train", folder / "ds" / "masks" / "train"
        old, new = _models(folder, args.model, args.size, args.format)
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        report = softcamify.diff(
            old, new, data, masks=masks, batch_size=args.batch, device="cpu", out_dir=folder / "report"
        )
        seconds = time.perf_counter() - t0
        forward = _forward_seconds(old, new, data, args.batch)
        load_after = os.getloadavg()
    row = {
        "model": args.model,
        "format": args.format,
        "images": report.data["images"],
        "size": args.size,
        "seconds": round(seconds, 2),
        "forward_only_seconds": round(forward, 2),
        "images_per_s": round(report.data["images"] / seconds, 2),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in load_after],
        "flips": report.predictions["flips"],
        "rank_corr": report.agreement["overall"]["rank_corr"],
    }
    if args.json:
        print(json.dumps(row))
    else:
        print(
            f"softcamify diff, 2 × {args.model} ({args.format}), {row['images']} images at {args.size} px: "
            f"{seconds:.1f} s, {row['images_per_s']:.2f} images/s; the bare forward passes {forward:.1f} s "
            f"(torch threads {row['torch_threads']}, load average {row['load_before'][0]} → {row['load_after'][0]})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
