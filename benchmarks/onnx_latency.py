"""onnxruntime latency of a SoftCAM export vs the original classifier exported the same way.

Both models are exported in this run by the same exporter with the same dynamic axes (batch, height,
width), loaded into onnxruntime with the same session options (``--threads`` intra-op threads, one
inter-op thread, all graph optimizations) and fed the same input; timings alternate between the two
models round by round so that machine noise hits both alike. Reported: median ms per forward pass
and the ratio SoftCAM / original, plus SoftCAM when only ``logits`` is fetched (the maps are still
computed, since the logits are their mean, but not copied out).

    .venv/bin/python benchmarks/onnx_latency.py                      # resnet18, 224 px, batch 1 and 8, 2 threads
    .venv/bin/python benchmarks/onnx_latency.py --model torchvision:resnet50 --batches 1,16 --json

Random weights (nothing is downloaded); latency does not depend on the weight values.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from softcamify.checkpoints import load_model
from softcamify.conversion import convert
from softcamify.exporters import export_onnx
from softcamify.exporters.onnx import _quiet


def export_original(module: torch.nn.Module, path: Path, exporter: str, dynamic_spatial: bool, size: int) -> None:
    """The plain classifier through the same exporter and dynamic axes as the SoftCAM export."""
    x = torch.randn(2, 3, size, size)
    with _quiet(io.StringIO()), torch.no_grad():
        if exporter == "dynamo":
            dim = torch.export.Dim
            axes = {0: dim("batch", min=1), **({2: dim.DYNAMIC, 3: dim.DYNAMIC} if dynamic_spatial else {})}
            prog = torch.onnx.export(
                module,
                (x,),
                None,
                dynamo=True,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({**axes},),
                optimize=True,
            )
            prog.save(str(path))
        else:
            axes = {
                "input": {0: "batch", **({2: "height", 3: "width"} if dynamic_spatial else {})},
                "logits": {0: "batch"},
            }
            torch.onnx.export(
                module, (x,), str(path), dynamo=False, input_names=["input"], output_names=["logits"], dynamic_axes=axes
            )


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no spin-waiting: the idle sessions' threads would otherwise steal cores from the one being timed
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def measure(runs: dict, x: np.ndarray, rounds: int, per_round: int, warmup: int) -> dict[str, dict[str, float]]:
    """Per runner, over interleaved rounds (order alternates): median and best (min) wall ms per call, and
    median CPU ms per call (all threads of this process: steadier than wall time on a busy machine,
    since time spent waiting for a core is not counted; spinning is off, so it is work done)."""
    for fn in runs.values():
        for _ in range(warmup):
            fn(x)
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            fn = runs[name]
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(per_round):
                fn(x)
            wall[name].append((time.perf_counter() - t0) / per_round * 1e3)
            cpu[name].append((time.process_time() - c0) / per_round * 1e3)
    return {
        k: {"median": statistics.median(wall[k]), "min": min(wall[k]), "cpu": statistics.median(cpu[k])} for k in runs
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet18", help="timm name or torchvision:NAME (random weights)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--per-round", type=int, default=0, help="calls per round (default: ~0.3 s worth)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    loaded = load_model(args.model, input_size=(args.size, args.size))
    original = loaded.module.eval()
    softcam = convert(loaded)
    with tempfile.TemporaryDirectory() as tmp:
        sc_path, orig_path = Path(tmp) / "softcam.onnx", Path(tmp) / "original.onnx"
        report = export_onnx(softcam, sc_path, exporter=args.exporter)
        export_original(original, orig_path, report.exporter, report.dynamic_spatial, args.size)
        s_orig, s_sc = session(orig_path, args.threads), session(sc_path, args.threads)
        runs = {
            "original": lambda x: s_orig.run(["logits"], {"input": x}),
            "softcam": lambda x: s_sc.run(["logits", "evidence"], {"input": x}),
            "softcam_logits_only": lambda x: s_sc.run(["logits"], {"input": x}),
        }
        rows = []
        for batch in [int(b) for b in args.batches.split(",")]:
            x = np.random.default_rng(0).standard_normal((batch, 3, args.size, args.size)).astype(np.float32)
            ref = s_orig.run(["logits"], {"input": x})[0]
            got = s_sc.run(["logits"], {"input": x})[0]
            per_round = args.per_round or max(1, int(0.3 / max(1e-4, _once(runs["original"], x))))
            ms = measure(runs, x, args.rounds, per_round, args.warmup)
            o, sc, lo = ms["original"], ms["softcam"], ms["softcam_logits_only"]
            rows.append(
                {
                    "batch": batch,
                    "original_ms": o["median"],
                    "softcam_ms": sc["median"],
                    "softcam_logits_only_ms": lo["median"],
                    "ratio": sc["median"] / o["median"],
                    "ratio_logits_only": lo["median"] / o["median"],
                    "original_best_ms": o["min"],
                    "softcam_best_ms": sc["min"],
                    "ratio_best": sc["min"] / o["min"],
                    "ratio_best_logits_only": lo["min"] / o["min"],
                    "original_cpu_ms": o["cpu"],
                    "softcam_cpu_ms": sc["cpu"],
                    "ratio_cpu": sc["cpu"] / o["cpu"],
                    "ratio_cpu_logits_only": lo["cpu"] / o["cpu"],
                    "max_abs_diff_logits_vs_original": float(np.abs(ref - got).max()),
                }
            )
        result = {
            "model": args.model,
            "input": [3, args.size, args.size],
            "threads": args.threads,
            "exporter": report.exporter,
            "opset": report.opset,
            "dynamic_spatial": report.dynamic_spatial,
            "onnxruntime": ort.__version__,
            "torch": torch.__version__.split("+")[0],
            "rounds": args.rounds,
            "rows": rows,
            "file_mb": {"original": orig_path.stat().st_size / 1e6, "softcam": sc_path.stat().st_size / 1e6},
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{args.model} at {args.size}x{args.size}, onnxruntime {ort.__version__} CPU, {args.threads} intra-op threads, "
        f"{report.exporter} exporter (opset {report.opset}), {args.rounds} interleaved rounds"
    )
    print(
        f"{'batch':>5} | {'original':>9} {'softcam':>9} {'ratio':>6} {'logits-only':>11} | {'best ratio':>10} | "
        f"{'CPU: original':>13} {'softcam':>9} {'ratio':>6} {'logits-only':>11}"
    )
    for r in rows:
        print(
            f"{r['batch']:>5} | {r['original_ms']:>9.2f} {r['softcam_ms']:>9.2f} {r['ratio']:>6.3f} "
            f"{r['ratio_logits_only']:>11.3f} | {r['ratio_best']:>10.3f} | {r['original_cpu_ms']:>13.2f} "
            f"{r['softcam_cpu_ms']:>9.2f} {r['ratio_cpu']:>6.3f} {r['ratio_cpu_logits_only']:>11.3f}"
        )
    print(
        "(ms per forward pass: median wall time; best = fastest round; CPU = median process CPU time, all threads;"
        " logits-only: the evidence output is computed but not fetched)"
    )
    return 0


def _once(fn, x) -> float:
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
