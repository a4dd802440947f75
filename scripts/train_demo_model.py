#!/usr/bin/env python
"""Train the small black-box classifier shipped with softcamify for the demo.

This is deliberately an *ordinary* training script — timm model, global average pooling + linear
head, cross-entropy, plain PyTorch loop — so the result is exactly the kind of checkpoint a user
brings to softcamify. It is seeded and runs on the CPU in a few minutes:

    python scripts/train_demo_model.py            # writes softcamify/assets/demo_model.safetensors (+ .json)

The data is the synthetic lesion dataset (`softcamify datasets synth`) with the same seed the demo uses.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from softcamify.data import ImageDataset, build_transform, discover
from softcamify.datasets import make_lesions

ASSETS = Path(__file__).resolve().parents[1] / "softcamify" / "assets"
ARCH = "regnetx_002"
SIZE = 128
DATA_CONFIG = {
    "input_size": [3, SIZE, SIZE],
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "interpolation": "bilinear",
    "crop_pct": 1.0,
    "crop_mode": "center",
}


def evaluate(model, loader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y, _ in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / max(total, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1500, help="images generated (60/20/20 split)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-seed", type=int, default=1234, help="seed of the synthetic dataset")
    ap.add_argument("--output", type=Path, default=ASSETS / "demo_model.safetensors")
    args = ap.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        make_lesions(tmp, n=args.n, size=SIZE, seed=args.data_seed)
        splits = discover(tmp)
        train_tf = build_transform(DATA_CONFIG, train=True, augment="light")
        eval_tf = build_transform(DATA_CONFIG, train=False)
        g = torch.Generator().manual_seed(args.seed)
        train = DataLoader(ImageDataset(splits.train, train_tf), batch_size=32, shuffle=True, generator=g)
        val = DataLoader(ImageDataset(splits.val, eval_tf), batch_size=64)
        test = DataLoader(ImageDataset(splits.test, eval_tf), batch_size=64)

        model = timm.create_model(ARCH, pretrained=False, num_classes=len(splits.class_names))
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=args.lr, total_steps=args.epochs * len(train), pct_start=0.15
        )
        best, best_state = -1.0, None
        for epoch in range(args.epochs):
            model.train()
            for x, y, _ in train:
                loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            acc = evaluate(model, val)
            print(f"epoch {epoch + 1:2d}  loss {loss.item():.3f}  val acc {acc:.3f}", flush=True)
            if acc >= best:
                best, best_state = acc, {k: v.detach().clone() for k, v in model.state_dict().items()}
        # the shipped weights are stored in float16: evaluate exactly what is shipped
        model.load_state_dict({k: v.half().to(v.dtype) if v.is_floating_point() else v for k, v in best_state.items()})
        test_acc = evaluate(model, test)
        classes = splits.class_names

    args.output.parent.mkdir(parents=True, exist_ok=True)
    # float16 storage keeps the shipped file small; loading casts back to the model's float32
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.output))
    info = {
        "architecture": ARCH,
        "weights": args.output.name,
        "class_names": classes,
        "data_config": DATA_CONFIG,
        "dataset": {"generator": "softcamify.datasets.make_lesions", "n": args.n, "size": SIZE, "seed": args.data_seed},
        "training": {"epochs": args.epochs, "seed": args.seed, "optimizer": f"AdamW lr {args.lr:g} one-cycle, label smoothing 0.1", "batch_size": 32},
        "val_accuracy": round(best, 4),
        "test_accuracy": round(test_acc, 4),
        "test_images": len(test.dataset),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    args.output.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    print(f"done in {time.time() - start:.0f} s; {args.output} is {args.output.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
