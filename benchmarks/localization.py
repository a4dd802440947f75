"""Localization of SoftCAM vs post-hoc maps on generated lesion data, measured in one run.

The black box is the demo's (a timm ``test_resnet`` trained on the synthetic lesion task, shipped in
``softcamify/assets``). On a freshly generated dataset from its training distribution (``make_lesions``,
seeded), every row below is scored by ``softcamify.evaluate`` on the same test images and masks:

* **CAM** (Zhou et al. 2016): for an average-pool + linear head, CAM *is* the converted SoftCAM model's
  evidence map before any fine-tuning (the classifier applied at every position), so it is the
  ``λ1 = —`` row at the native grid;
* **Grad-CAM, LayerCAM** (pytorch-grad-cam) on the black box at its native grid;
* **SoftCAM** converted at each ``--strides`` value (32: the model as it is; 16 and 8: dilated, finer
  grids) and fine-tuned for ``--epochs`` with each ``--l1`` value (the normalized penalty of
  docs/method.md).

Columns: test accuracy, activation precision, share of oracle (the distance from chance to the grid
oracle's activation precision that a method covers, on ONE reference grid for every row: the finest
evidence grid in the run) and the pointing game (15 px tolerance). Usage::

    python benchmarks/localization.py                      # the figures in docs/benchmarks.md
    python benchmarks/localization.py --images 60 --epochs 1 --l1 0,2 --strides 32   # a quick look
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

KEYS = ("activation_precision", "share_of_oracle", "pointing_game")


def _row(method: str, grid: list[int], lam: Any, accuracy: float | None, summary: dict[str, Any]) -> dict[str, Any]:
    metrics = summary["metrics"]
    return {
        "method": method,
        "grid": "×".join(str(v) for v in grid),
        "l1": lam,
        "accuracy": accuracy,
        **{k: (metrics.get(k) or {}).get("mean") for k in KEYS},
    }


def run(
    images: int,
    epochs: int,
    l1_values: list[float],
    strides: list[int],
    baselines: list[str],
    work: Path,
    device: str = "cpu",
    seed: int = 2024,
) -> dict[str, Any]:
    from softcamify.conversion import convert
    from softcamify.demo import load_demo_model, make_demo_dataset
    from softcamify.evaluation import evaluate
    from softcamify.training import FinetuneConfig, finetune

    t0 = time.perf_counter()
    data = work / "data"
    make_demo_dataset(data, n=images, seed=seed)
    black_box = load_demo_model()
    converted = {s: convert(black_box, output_stride=None if s == 32 else s) for s in strides}
    grids = {s: list(m.meta.conversion["evidence_grid"]) for s, m in converted.items()}
    finest = max(grids.values(), key=lambda g: g[0] * g[1])
    common: dict[str, Any] = {
        "split": "test",
        "pointing_tolerance": 15,
        "steps": 2,
        "examples": 0,
        "device": device,
        "oracle_grid": tuple(finest),
    }
    rows: list[dict[str, Any]] = []
    native = grids.get(32) or list(convert(black_box).meta.conversion["evidence_grid"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = evaluate(converted[strides[0]], data, baselines=baselines or None, original=black_box.module, **common)
        bb_acc = (ref.original_classification or {}).get("accuracy")
        for m in ref.methods:
            if m.model == "original":
                rows.append(_row(f"{m.label}", native, None, bb_acc, m.summary(10)))
        for s in strides:
            r = evaluate(converted[s], data, **common)
            name = "CAM (= converted SoftCAM)" if s == 32 else f"converted SoftCAM, stride {s}"
            rows.append(_row(name, grids[s], None, r.classification["accuracy"], r.methods[0].summary(10)))
            for lam in l1_values:
                cfg = FinetuneConfig(
                    epochs=epochs,
                    batch_size=16,
                    lr=2e-4,
                    l1=lam,
                    device=device,
                    workers=0,
                    seed=0,
                    monitor="val_loss",
                    warmup_epochs=0.5 if epochs > 1 else 0.0,
                )
                ft = finetune(converted[s], data, work / f"run_s{s}_l{lam:g}", cfg)
                r = evaluate(ft.model, data, **common)
                rows.append(
                    _row(f"SoftCAM, stride {s}", grids[s], lam, r.classification["accuracy"], r.methods[0].summary(10))
                )
    return {
        "images": images,
        "epochs": epochs,
        "oracle_grid": finest,
        "black_box_accuracy": bb_acc,
        "test_images": ref.counts["images"],
        "explained": ref.counts["explained"],
        "rows": rows,
        "seconds": time.perf_counter() - t0,
    }


def _fmt(v: Any) -> str:
    return "—" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def table(result: dict[str, Any]) -> str:
    head = ["method", "grid", "λ1", "accuracy", "act. precision", "share of oracle", "pointing (15 px)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        lam = "—" if r["l1"] is None else f"{r['l1']:g}"
        lines.append(
            "| " + " | ".join([r["method"], r["grid"], lam, _fmt(r["accuracy"]), *(_fmt(r[k]) for k in KEYS)]) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=600, help="generated images (60/20/20 train/val/test)")
    ap.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs per λ")
    ap.add_argument("--l1", default="0,0.5,2,5", help="comma-separated λ1 values")
    ap.add_argument("--strides", default="32,8", help="comma-separated output strides (32, 16, 8)")
    ap.add_argument("--baselines", default="gradcam,layercam", help="pytorch-grad-cam methods on the black box")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    l1 = [float(v) for v in args.l1.split(",") if v.strip()]
    strides = [int(v) for v in args.strides.split(",") if v.strip()]
    baselines = [b for b in args.baselines.split(",") if b.strip()]
    with tempfile.TemporaryDirectory(prefix="softcamify-localization-") as tmp:
        result = run(args.images, args.epochs, l1, strides, baselines, Path(tmp), device=args.device)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{result['test_images']} test images ({result['explained']} with lesions), black box accuracy "
        f"{_fmt(result['black_box_accuracy'])}; share of oracle on the {'×'.join(map(str, result['oracle_grid']))} "
        f"grid; {result['epochs']} epoch(s) per λ; {result['seconds']:.0f} s"
    )
    print(table(result))


if __name__ == "__main__":
    main()
