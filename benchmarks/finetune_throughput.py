"""Images/s of ``softcamify.training.finetune`` against a plain hand-written PyTorch loop, in one run.

Both train the same SoftCAM model (same initial weights) on the same synthetic PNG dataset with the
same transforms, batch size, device and DataLoader settings (workers, pinned memory, persistent
workers), and both run a validation pass after every epoch. Two figures per method:

* **train img/s**: training images over the time spent in the training loop (loader + forward +
  loss + backward + step), i.e. the per-step overhead of finetune (ElasticNet terms, accumulators,
  progress hooks, schedule) against a bare ``CE → backward → step`` loop;
* **end-to-end img/s**: training images over the wall time of the whole call, which for finetune also
  includes dataset discovery, decoding every image once to check it, validation metrics, and writing
  ``last.pt``/``best.safetensors``/``metrics.jsonl`` each epoch (fixed per-epoch costs: they shrink
  relative to training as epochs get longer).

The runs alternate (plain, finetune, plain, finetune, …) and each method's best repeat is reported,
which damps the noise of a shared machine. Usage::

    python benchmarks/finetune_throughput.py                        # CPU, resnet18 at 128 px
    python benchmarks/finetune_throughput.py --device cuda --amp --input-size 224 --images 2048 --batch-size 64
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def make_dataset(root: Path, n_train: int, n_val: int, size: int, seed: int = 0) -> Path:
    """train/ and val/ class folders of PNGs: noise, plus a bright blob for the second class."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r2 = (size // 8) ** 2
    for split, n in (("train", n_train), ("val", n_val)):
        for c, name in enumerate(("healthy", "lesion")):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n // 2):
                img = rng.integers(0, 80, (size, size, 3)).astype(np.uint8)
                if c:
                    cy, cx = rng.integers(size // 6, size - size // 6, 2)
                    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r2] = 230
                Image.fromarray(img).save(d / f"{i:05d}.png")
    return root


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(model, data_root: Path, args, device: torch.device) -> dict:
    """What one would write by hand: CE, AdamW, the same loaders; validation pass each epoch."""
    from softcamify.data import ImageDataset, build_transform, discover
    from softcamify.training import DEFAULT_WEIGHT_DECAY

    splits = discover(data_root)
    dc = model.meta.data_config
    channels = int(dc["input_size"][0])
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    m = copy.deepcopy(model).to(device)
    channels_last = cuda
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(m.parameters(), lr=args.lr, weight_decay=DEFAULT_WEIGHT_DECAY["adamw"])
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (args.amp and cuda) else None
    kw = {"num_workers": args.workers, "pin_memory": cuda, "persistent_workers": args.workers > 0}
    n = len(splits.train)
    drop_last = n > args.batch_size and n % args.batch_size == 1
    train_loader = torch.utils.data.DataLoader(
        ImageDataset(splits.train, build_transform(dc, train=True, augment="light"), channels),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=drop_last,
        **kw,
    )
    val_loader = torch.utils.data.DataLoader(
        ImageDataset(splits.val, build_transform(dc, train=False), channels), batch_size=args.batch_size, **kw
    )
    train_time, images = 0.0, 0
    t_start = time.perf_counter()
    for _ in range(args.epochs):
        m.train()
        t0 = time.perf_counter()
        for x, y, _ in train_loader:
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            if amp is not None:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    logits = m(x)
            else:
                logits = m(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            images += y.shape[0]
        _sync(device)
        train_time += time.perf_counter() - t0
        m.eval()
        with torch.no_grad():
            for x, _, _ in val_loader:
                m(x.to(device, non_blocking=True))
        _sync(device)
    total = time.perf_counter() - t_start
    return {"train_images_per_s": images / train_time, "end_to_end_images_per_s": images / total, "images": images}


def softcamify_finetune(model, data_root: Path, run_dir: Path, args, device: torch.device) -> dict:
    from softcamify.training import FinetuneConfig, finetune

    cfg = FinetuneConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        workers=args.workers,
        device=str(device),
        lr=args.lr,
        amp=args.amp,
        force=True,
        augment="light",
    )
    t0 = time.perf_counter()
    result = finetune(model, data_root, run_dir, cfg)
    _sync(device)
    total = time.perf_counter() - t0
    images = sum(h["train"]["images"] for h in result.history)
    return {
        "train_images_per_s": result.train_images_per_s,
        "end_to_end_images_per_s": images / total,
        "images": images,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18", help="timm name (random weights; never downloads)")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--images", type=int, default=128, help="training images (two classes)")
    p.add_argument("--val-images", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (both loops)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats; the best of each is reported")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    from softcamify.conversion import as_softcam
    from softcamify.device import resolve_device

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, _ = as_softcam(args.model, num_classes=2, input_size=(args.input_size, args.input_size))
    model.meta.class_names = ["healthy", "lesion"]
    with tempfile.TemporaryDirectory(prefix="softcamify-bench-") as tmp:
        root = make_dataset(Path(tmp) / "data", args.images, args.val_images, args.input_size)
        warm = argparse.Namespace(**{**vars(args), "epochs": 1})
        plain_loop(model, root, warm, device)  # untimed: first-call kernel selection and allocator warm-up
        runs: dict[str, list[dict]] = {"plain": [], "finetune": []}
        for r in range(args.repeats):
            runs["plain"].append(plain_loop(model, root, args, device))
            runs["finetune"].append(softcamify_finetune(model, root, Path(tmp) / f"run{r}", args, device))
    best = {
        k: {m: max(run[m] for run in v) for m in ("train_images_per_s", "end_to_end_images_per_s")}
        for k, v in runs.items()
    }
    ratio_train = best["finetune"]["train_images_per_s"] / best["plain"]["train_images_per_s"]
    ratio_e2e = best["finetune"]["end_to_end_images_per_s"] / best["plain"]["end_to_end_images_per_s"]
    setup = {
        "model": args.model,
        "input_size": args.input_size,
        "train_images": args.images,
        "val_images": args.val_images,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "workers": args.workers,
        "device": str(device),
        "amp": bool(args.amp),
        "repeats": args.repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    out = {"setup": setup, "runs": runs, "best": best, "ratio_train": ratio_train, "ratio_end_to_end": ratio_e2e}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(", ".join(f"{k}={v}" for k, v in setup.items()))
    print(f"{'method':<28}{'train img/s':>14}{'end-to-end img/s':>20}")
    for k, label in (("plain", "plain PyTorch loop"), ("finetune", "softcamify finetune")):
        print(f"{label:<28}{best[k]['train_images_per_s']:>14.1f}{best[k]['end_to_end_images_per_s']:>20.1f}")
    print(f"{'ratio finetune / plain':<28}{ratio_train:>14.3f}{ratio_e2e:>20.3f}")
    if not math.isfinite(ratio_train) or ratio_train < 0.95:
        print("note: train ratio below the 0.95 target")


if __name__ == "__main__":
    main()
