#!/usr/bin/env python
"""Train the small black-box classifier shipped with softcamify for the demo.

This is deliberately an *ordinary* training script — a timm model with global average pooling + a
linear head, cross-entropy, a plain PyTorch loop, weights saved as a timm state dict in .safetensors —
so the result is exactly the kind of checkpoint a user brings to softcamify. It is seeded and trains on
the CPU in a few minutes:

    python scripts/train_demo_model.py        # writes softcamify/assets/demo_model.safetensors (+ .json)
    python scripts/train_demo_model.py --threads 1   # on a busy machine (OpenMP threads spin-wait otherwise)

The data is the synthetic lesion dataset (`softcamify datasets synth`, softcamify.data.synth.make_lesions)
with the generator settings below; `softcamify demo` generates its data with the same settings (read from
demo_model.json) and another seed, so the demo's images come from the training distribution.
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
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms

from softcamify.data import EvalTransform, discover
from softcamify.data.synth import DEFAULT_CLASSES, make_lesions

ASSETS = Path(__file__).resolve().parents[1] / "softcamify" / "assets"
# timm's test_resnet: a 0.4 M-parameter ResNet (deep 3×3 stem, four BasicBlock stages, global average
# pooling + linear head) that learns the small red lesions in a few epochs. (regnetx_002, 2.3 M parameters,
# never separated red_lesion from healthy within 30 epochs here: its narrow grouped convolutions stall.)
ARCH = "test_resnet"
# generator settings of the training data, recorded in demo_model.json and reused by `softcamify demo`
SIZE = 160  # timm's default input size for test_resnet: a 5×5 evidence grid at stride 32
CONTRAST = 1.5  # lesions clearly visible (the generator's default 1.0 is a harder task)
NOISE = 1.0
CLASSES = list(DEFAULT_CLASSES)
# timm's own data config for test_resnet, so `softcamify convert test_resnet --weights ...` preprocesses
# exactly as in training without further options (resize to 168, center crop 160, mean/std 0.5)
DATA_CONFIG = {
    "input_size": [3, SIZE, SIZE],
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "interpolation": "bilinear",
    "crop_pct": 0.95,
    "crop_mode": "center",
}


class InMemory(torch.utils.data.Dataset):
    """Decoded images kept in memory (the dataset is small), a transform applied per access."""

    def __init__(self, samples, transform):
        self.images = [Image.open(s.path).convert("RGB") for s in samples]
        for img in self.images:
            img.load()
        self.labels = [s.label for s in samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def predict(model, loader) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    preds, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            preds.append(model(x).argmax(1))
            labels.append(y)
    return torch.cat(preds).numpy(), torch.cat(labels).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1500, help="images generated (60/20/20 split)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-seed", type=int, default=1234, help="seed of the synthetic dataset")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--output", type=Path, default=ASSETS / "demo_model.safetensors")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        make_lesions(tmp, n=args.n, size=SIZE, classes=CLASSES, seed=args.data_seed, contrast=CONTRAST, noise=NOISE)
        splits = discover(tmp)
        # the eval transform's resize, a random instead of the center crop, and flips in both directions
        # (the fundus images have no orientation)
        resized = round(SIZE / DATA_CONFIG["crop_pct"])
        train_tf = transforms.Compose(
            [
                transforms.Resize(resized, interpolation=transforms.InterpolationMode.BILINEAR),
                transforms.RandomCrop(SIZE),
                transforms.RandomHorizontalFlip(),
                transforms.RandomVerticalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(DATA_CONFIG["mean"], DATA_CONFIG["std"]),
            ]
        )
        eval_tf = EvalTransform(DATA_CONFIG)  # = timm's eval transform for DATA_CONFIG
        g = torch.Generator().manual_seed(args.seed)
        train = torch.utils.data.DataLoader(
            InMemory(splits.train, train_tf), batch_size=args.batch_size, shuffle=True, generator=g, drop_last=True
        )
        val = torch.utils.data.DataLoader(InMemory(splits.val, eval_tf), batch_size=100)
        test = torch.utils.data.DataLoader(InMemory(splits.test, eval_tf), batch_size=100)
        classes = splits.class_names

    model = timm.create_model(ARCH, pretrained=False, num_classes=len(classes))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * len(train), pct_start=0.15
    )
    best, best_epoch, best_state = -1.0, 0, None
    for epoch in range(args.epochs):
        model.train()
        t0 = time.time()
        for x, y in train:
            loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        pred, true = predict(model, val)
        acc = float((pred == true).mean())
        print(
            f"epoch {epoch + 1:2d}  loss {loss.item():.3f}  val acc {acc:.3f}  ({time.time() - t0:.0f} s)", flush=True
        )
        if acc >= best:
            best, best_epoch = acc, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    pred, true = predict(model, test)
    test_acc = float((pred == true).mean())
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(true, pred, strict=True):
        confusion[t, p] += 1

    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in best_state.items()}, str(args.output))  # float32, as timm saves it
    seconds = time.time() - start
    info = {
        "architecture": ARCH,
        "weights": args.output.name,
        "format": "timm state dict (safetensors, float32)",
        "class_names": classes,
        "data_config": DATA_CONFIG,
        "dataset": {
            "generator": "softcamify.datasets.make_lesions",
            "n": args.n,
            "size": SIZE,
            "seed": args.data_seed,
            "classes": CLASSES,
            "contrast": CONTRAST,
            "noise": NOISE,
            "splits": [0.6, 0.2, 0.2],
        },
        "training": {
            "epochs": args.epochs,
            "best_epoch": best_epoch,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "optimizer": f"AdamW lr {args.lr:g} (one-cycle), weight decay 0.05, label smoothing 0.1",
            "augmentation": f"resize to {resized}, random crop {SIZE}, horizontal and vertical flips",
            "seconds": round(seconds),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__.split("+")[0],
            "timm": timm.__version__,
        },
        "val_accuracy": round(best, 4),
        "test_accuracy": round(test_acc, 4),
        "test_images": len(true),
        "test_confusion": confusion.tolist(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    args.output.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    print(f"done in {seconds:.0f} s; {args.output} is {args.output.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
