"""Speed of ``softcamify evaluate``: batched deletion/insertion vs the per-image path, measured in one run.

The shipped demo model (``softcamify.demo.load_demo_model()``, timm's test_resnet at 160 px) is converted to
SoftCAM and evaluated on a generated lesion dataset (``softcamify.data.synth.make_lesions``; every image in
the train split, so all lesion images are explained) twice per round, rounds interleaved so that load
changes on a shared machine hit both paths alike:

* **per image**: as before the batching, two ``metrics.deletion_insertion`` calls (deletion, insertion) per
  image and method, each sending its ``steps + 1`` perturbed inputs in chunks of ``--batch``;
* **batched**: ``metrics.deletion_insertion_batch`` per chunk of images: the deletion and insertion
  inputs of all images of the chunk stream through the model in full forwards of evaluate's
  ``deletion_batch_size`` (``--batch`` on a CPU, ``4 × --batch`` on a GPU);
* **batched 4×** (with ``--wide``): the same with ``4 × --batch`` inputs per forward whatever the device.

Both runs compute every metric (the per-image path is selected by replacing
``softcamify.evaluation.run._faithfulness_metrics`` with its ``batched=False`` form); the script checks that
they agree and reports seconds per ``evaluate`` call, the seconds spent in deletion/insertion, and the
ratios (the best round by default, ``--stat median``). Usage::

    python benchmarks/evaluate_speed.py --images 60 --size 160 --device cpu
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=60, help="generated lesion images (2/3 with a lesion)")
    ap.add_argument("--size", type=int, default=160, help="image side in pixels (the demo model's: 160)")
    ap.add_argument("--steps", type=int, default=20, help="deletion/insertion steps")
    ap.add_argument("--batch", type=int, default=16, help="evaluate's --batch-size")
    ap.add_argument("--baselines", default=None, help="also evaluate these post-hoc methods, e.g. gradcam")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (each: both paths)")
    ap.add_argument(
        "--stat",
        choices=("min", "median"),
        default="min",
        help="time per path over rounds: min (best round: least disturbed by other load) or median",
    )
    ap.add_argument("--wide", action="store_true", help="also time batched forwards of 4 × --batch inputs")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    import softcamify
    import softcamify.evaluation.run as E
    from softcamify.data.synth import make_lesions
    from softcamify.demo import load_demo_model

    if args.threads:
        torch.set_num_threads(args.threads)
    batched_fn = E._faithfulness_metrics
    paths = ["per_image", "batched", *(["batched_4x"] if args.wide else [])]
    spent = dict.fromkeys(paths, 0.0)

    def timed_faithfulness(path: str, predict, x, sals, targets, s, **kw):
        if path == "batched_4x":
            s = {**s, "deletion_batch_size": 4 * s["batch_size"]}
        t0 = time.perf_counter()
        try:
            return batched_fn(predict, x, sals, targets, s, **kw, batched=path != "per_image")
        finally:
            spent[path] += time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "lesions"
        make_lesions(data, n=args.images, size=args.size, seed=0, splits=(1.0, 0.0, 0.0), workers=1)
        model = softcamify.convert(load_demo_model(), samples=2)
        mm = E.load(model, device=args.device)

        def run(path: str) -> tuple[float, float, E.EvaluationResult]:
            E._faithfulness_metrics = functools.partial(timed_faithfulness, path)  # type: ignore[assignment]
            before = spent[path]
            t0 = time.perf_counter()
            try:
                res = E.evaluate(
                    mm,
                    data,
                    split="train",
                    baselines=args.baselines,
                    steps=args.steps,
                    batch_size=args.batch,
                    examples=0,
                )
            finally:
                E._faithfulness_metrics = batched_fn  # type: ignore[assignment]
            return time.perf_counter() - t0, spent[path] - before, res

        run("batched")  # warm-up (allocator, kernels)
        times: dict[str, list[float]] = {path: [] for path in paths}
        faith: dict[str, list[float]] = {path: [] for path in paths}
        results = {}
        for _ in range(args.rounds):
            for path in paths:
                total, inside, results[path] = run(path)
                times[path].append(total)
                faith[path].append(inside)

    a, b = results["per_image"], results["batched"]
    diff = 0.0
    for other in paths[1:]:
        for ma, mb in zip(a.methods, results[other].methods, strict=True):
            for ra, rb in zip(ma.records, mb.records, strict=True):
                for key in ("deletion_auc", "insertion_auc"):
                    diff = max(diff, abs(ra[key] - rb[key]))
    pick = min if args.stat == "min" else statistics.median
    t = {path: pick(v) for path, v in times.items()}
    f = {path: pick(v) for path, v in faith.items()}
    explained = b.counts["explained"]
    curves = 2 * explained * len(b.methods)
    result = {
        "images": args.images,
        "explained": explained,
        "methods": [m.key for m in b.methods],
        "size": args.size,
        "steps": args.steps,
        "batch": args.batch,
        "device": args.device,
        "deletion_batch_size": b.settings["deletion_batch_size"],
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "stat": args.stat,
        "evaluate_seconds": t,
        "deletion_insertion_seconds": f,
        "ratios": {
            "evaluate": t["per_image"] / t["batched"],
            "deletion_insertion": f["per_image"] / f["batched"],
            **(
                {
                    "evaluate_4x": t["per_image"] / t["batched_4x"],
                    "deletion_insertion_4x": f["per_image"] / f["batched_4x"],
                }
                if args.wide
                else {}
            ),
        },
        "max_abs_auc_difference": diff,
        "seconds": times,
        "deletion_insertion_seconds_all": faith,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    if str(args.device).startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"evaluate on {args.images} generated lesion images at {args.size} px ({explained} explained, "
        f"{len(b.methods)} method(s), {curves} deletion/insertion curves of {args.steps + 1} inputs), "
        f"demo model, batch {args.batch}, {args.device}, {torch.get_num_threads()} threads, "
        f"{args.stat} of {args.rounds} rounds (interleaved)"
    )
    print(
        f"  evaluate, per-image deletion/insertion:   {t['per_image']:8.2f} s "
        f"(of which deletion/insertion {f['per_image']:.2f} s)"
    )
    print(
        f"  evaluate, batched deletion/insertion:     {t['batched']:8.2f} s "
        f"(of which deletion/insertion {f['batched']:.2f} s; "
        f"{b.settings['deletion_batch_size']} per forward)"
    )
    if args.wide:
        print(
            f"  evaluate, batched, {4 * args.batch} per forward:       {t['batched_4x']:8.2f} s "
            f"(of which deletion/insertion {f['batched_4x']:.2f} s)"
        )
    print(f"  ratio evaluate per-image / batched:            {result['ratios']['evaluate']:6.2f}×")
    print(f"  ratio deletion/insertion per-image / batched:  {result['ratios']['deletion_insertion']:6.2f}×")
    if args.wide:
        r4 = result["ratios"]["deletion_insertion_4x"]
        print(f"  ratio deletion/insertion per-image / 4×:       {r4:6.2f}×")
    print(f"  max |AUC difference| between the paths:        {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
