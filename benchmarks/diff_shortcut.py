"""The worked example of docs/ci.md: a model fine-tuned on shortcut data against one fine-tuned on clean data.

    python benchmarks/diff_shortcut.py                       # resnet18, random init, 128 px, 600 images
    python benchmarks/diff_shortcut.py --model test_resnet --images 300 --epochs 6

Two datasets from one seed (``datasets synth``): the same images, except that in the second the *training*
images carry the class-dependent corner tag (``--shortcut``). One timm model with random weights
(``pretrained=False``, nothing downloaded) is converted to SoftCAM at output stride 16 (a finer evidence
grid) and fine-tuned twice with the same settings, once on each dataset. Then ``softcamify.diff`` compares the
clean model (OLD) with the shortcut model (NEW) on the tagged training images, where the flag must rise,
and on the clean test split, where both accuracies are read. Printed: each model's accuracy, the
fixed-region share per class and its flags, and the seconds each step took.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--output-stride", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--augment", default="none", help="none: a flip would move the tag to another class's corner")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from dataclasses import replace

    import softcamify
    from softcamify.data.synth import make_lesions
    from softcamify.training import FinetuneConfig

    cfg = FinetuneConfig(
        epochs=args.epochs,
        batch_size=16,
        input_size=(args.size, args.size),
        workers=0,
        lr=1e-3,
        warmup_epochs=0.5,
        augment=args.augment,
        device="cpu",
        seed=args.seed,
    )
    out: dict = {"model": args.model, "images": args.images, "size": args.size, "epochs": args.epochs}
    out["augment"] = args.augment
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        for name, shortcut in (("clean", False), ("shortcut", True)):
            make_lesions(root / name, n=args.images, size=args.size, seed=args.seed, shortcut=shortcut)
        loaded = softcamify.load_model(args.model, num_classes=3, input_size=(args.size, args.size))
        start = softcamify.convert(loaded, output_stride=args.output_stride)
        out["data_s"] = round(time.perf_counter() - t0, 1)
        models = {}
        for name in ("clean", "shortcut"):
            t0 = time.perf_counter()
            res = softcamify.finetune(start, root / name, root / f"run_{name}", replace(cfg))
            models[name] = res.best_path or res.last_path
            out[f"finetune_{name}_s"] = round(time.perf_counter() - t0, 1)
        for split in ("train", "test"):
            t0 = time.perf_counter()
            rep = softcamify.diff(models["clean"], models["shortcut"], root / "shortcut", split=split, device="cpu")
            out[split] = {
                "seconds": round(time.perf_counter() - t0, 1),
                "images": rep.data["images"],
                "accuracy": rep.predictions.get("accuracy"),
                "rank_corr": rep.agreement["overall"]["rank_corr"],
                "grid": rep.agreement["grid"],
                "shortcuts": [
                    {
                        "class": s["class"],
                        **{f"{side}_share": s[side]["share"] for side in ("old", "new")},
                        **{f"{side}_flagged": s[side]["flagged"] for side in ("old", "new")},
                        "new_cells": s["new"]["cells"],
                    }
                    for s in rep.shortcuts
                ],
            }
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
