#!/usr/bin/env python
"""Coverage of timm's zoo: convert the smallest one or two models of every family, write docs/coverage.md.

Each model is built with random weights (never downloaded), converted on the CPU in its own
subprocess with a time limit, and reported with its head type, strategy, exactness and fidelity.

    python scripts/coverage.py                      # all families, writes docs/coverage.md
    python scripts/coverage.py --per-family 1 --timeout 60 --families resnet,convnext
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SIZE_WORDS = ["test", "atto", "femto", "pico", "nano", "tiny", "xxs", "xs", "mini", "small", "s", "b0", "050", "100"]


BIG_WORDS = ("large", "huge", "giant", "gigantic", "xlarge", "xl", "xxl", "base", "medium", "big", "l", "h", "g")


def size_rank(name: str) -> tuple:
    parts = re.split(r"[_\-.]", name)
    if any(p in BIG_WORDS for p in parts):
        return (len(SIZE_WORDS) + 1, len(name), name)
    for i, word in enumerate(SIZE_WORDS):
        if word in parts or any(p.startswith(word) and p[len(word) :].isdigit() for p in parts):
            return (i, len(name), name)
    nums = [int(n) for n in re.findall(r"\d+", name)]
    return (len(SIZE_WORDS), nums[0] if nums else 0, len(name), name)


def pick(per_family: int, families: set[str] | None) -> dict[str, list[str]]:
    import timm

    chosen = {}
    for module in sorted(timm.list_modules()):
        if families and module not in families:
            continue
        names = sorted(timm.list_models(module=module))
        if names:
            chosen[module] = sorted(names, key=size_rank)[:per_family]
    return chosen


WORKER = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
import softcamify
from softcamify.checkpoints import load_model
name = sys.argv[1]
t = time.time()
out = {"model": name}
try:
    loaded = load_model(name, num_classes=7)
    h, w = loaded.data_config["input_size"][1:]
    if max(h, w) > 256:  # try 224 px for speed; models with a fixed input size keep theirs
        small = load_model(name, num_classes=7, input_size=(224, 224))
        try:
            with torch.no_grad():
                small.module(torch.zeros(1, *small.data_config["input_size"]))
            loaded = small
        except Exception:
            pass
    report = softcamify.inspect(loaded)
    out.update(head=report.plan.head, pooling=report.plan.pooling, layout=report.plan.layout)
    model = softcamify.convert(loaded, samples=2)
    c = model.meta.conversion
    out.update(status="converted", strategy=c["strategy"], exact=c["exact"], max_abs_diff=c["max_abs_diff"],
               max_rel_diff=c["max_rel_diff"], top1_agreement=c["top1_agreement"], grid=c["evidence_grid"])
except Exception as e:
    out.update(status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:240]}")
out["seconds"] = round(time.time() - t, 1)
print("RESULT " + json.dumps(out))
"""


def run_one(name: str, timeout: float) -> dict:
    try:
        r = subprocess.run([sys.executable, "-c", WORKER, name], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": name, "status": "timeout", "reason": f"over {timeout:.0f} s on this CPU"}
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    return {"model": name, "status": "failed", "reason": f"crashed: {tail[:200]}"}


def head_class(r: dict) -> str:
    if r.get("status") != "converted":
        return "not converted"
    return {
        "linear": "avg pool + linear (exact)",
        "normed": "avg pool + norm + linear (exact)",
        "tokens": "class-token head (approximate)",
        "grid": "flatten over a grid (approximate)",
        "pooled": "other pooling (approximate)",
        "prelogits": "nonlinear pre-logits (approximate)",
        "per_position": "other head (approximate)",
    }.get(r.get("strategy"), r.get("strategy", "?"))


def write_markdown(results: dict[str, list[dict]], path: Path, seconds: float) -> None:
    import timm
    import torch

    import softcamify

    counts: Counter[str] = Counter()
    rows = []
    for family, items in results.items():
        n_names = len(timm.list_models(module=family))
        cls = head_class(items[0]) if items else "?"
        counts[cls] += n_names
        for r in items:
            diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "—"
            top1 = f"{r['top1_agreement']:.2f}" if "top1_agreement" in r else "—"
            status = (
                ("exact" if r.get("exact") else "approximate") if r.get("status") == "converted" else r.get("status")
            )
            detail = r.get("strategy") or r.get("reason", "")
            rows.append(
                f"| {family} | {n_names} | `{r['model']}` | {r.get('head', '—')} | {detail} | {status} | {diff} "
                f"| {top1} |"
            )
    converted = sum(1 for items in results.values() for r in items if r.get("status") == "converted")
    total = sum(len(items) for items in results.values())
    lines = [
        "# Coverage of timm's model zoo",
        "",
        f"Generated by `python scripts/coverage.py` with softcamify {softcamify.__version__}, "
        f"timm {timm.__version__}, torch {torch.__version__.split('+')[0]} on the CPU in {seconds / 60:.0f} min: "
        f"the smallest models of each of {len(results)} families, random weights (nothing downloaded), 7 classes, "
        "inputs at the model's default size (224 px when the default is larger and the model accepts it). "
        "`max |Δlogit|` and top-1 agreement compare the converted model with the original on 2 random inputs "
        "in float32.",
        "",
        f"**{converted} of {total} models converted.** Exact strategies reproduce the logits to float32 round-off "
        "(≤ 1e-4); approximate ones report their fidelity and need fine-tuning before use "
        "(random-weight fidelity says little about trained checkpoints).",
        "",
        "## Registered timm names by head class",
        "",
        "Each family's names are counted under the class of its smallest model.",
        "",
        "| head class | registered names |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in counts.most_common()],
        "",
        "## Per family",
        "",
        "| family | names | model tried | head | strategy / reason | result | max \\|Δlogit\\| | top-1 agreement |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-family", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=90.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--families", default=None, help="comma-separated timm module names")
    ap.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "coverage.md")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = ap.parse_args()
    families = set(args.families.split(",")) if args.families else None
    chosen = pick(args.per_family, families)
    jobs = [(f, n) for f, names in chosen.items() for n in names]
    start = time.time()
    results: dict[str, list[dict]] = {f: [] for f in chosen}
    with ThreadPoolExecutor(args.workers) as pool:
        for (family, _), r in zip(jobs, pool.map(lambda j: run_one(j[1], args.timeout), jobs), strict=True):
            results[family].append(r)
            print(
                f"{family:24s} {r['model']:40s} {r.get('status'):10s} {r.get('strategy') or r.get('reason', '')}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    write_markdown(results, args.output, time.time() - start)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
