"""How much a busy CPU slows softcamify down, as ratios from one run.

    python benchmarks/contention.py                 # every job, every thread setting
    python benchmarks/contention.py --jobs predict-onnx --hogs 2

Each job (a real ``softcamify`` command in its own process) is timed alone, then beside ``--hogs``
CPU-bound processes (default: one per core) — the situation of a shared CI runner. ``--hog torch`` (the
default) makes them other torch jobs, each with its own thread pool (as other fine-tunes or evaluations
would be); ``--hog python`` single-threaded Python loops. Printed per job and
thread setting: seconds alone, seconds beside the hogs, and their ratio. With as many hogs as cores, a
fair share of the CPU gives a ratio of about 2 (the job gets half the cores); much more than that is
time lost to threads that spin while they wait for each other.

Thread settings (softcamify.threads):

- ``library``: torch's and onnxruntime's own defaults (``SOFTCAMIFY_THREAD_DEFAULTS=0``), what softcamify
  did before;
- ``softcamify``: softcamify's defaults (waiting threads sleep: ``OMP_WAIT_POLICY=PASSIVE``, onnxruntime
  without spinning);
- ``1-thread``: softcamify's defaults with ``SOFTCAMIFY_THREADS=1``.

Jobs: ``predict-onnx`` (onnxruntime), ``evaluate`` (PyTorch maps and metrics), ``finetune`` (one epoch
with a DataLoader worker). The model is the demo's shipped black box, converted; the data are synthetic.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "library": {"SOFTCAMIFY_THREAD_DEFAULTS": "0"},
    "softcamify": {},
    "1-thread": {"SOFTCAMIFY_THREADS": "1"},
}
JOBS = ("predict-onnx", "evaluate", "finetune")


def _hog(stop, kind: str) -> None:  # pragma: no cover - runs in a child process
    """``python``: one core of pure Python; ``torch``: another torch job (matrix products on torch's
    default thread pool, as a second fine-tune or evaluation on the same machine would run)."""
    if kind == "torch":
        import torch

        a = torch.randn(384, 384)
        while not stop.is_set():
            a = torch.tanh(a @ a)
        return
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def _prepare(root: Path, images: int) -> dict[str, Path]:
    from softcamify.checkpoints import save
    from softcamify.data.synth import make_lesions
    from softcamify.demo.settings import load_demo_model
    from softcamify.exporters import export_onnx
    from softcamify.runtime import load_softcam

    sc, _ = load_softcam(load_demo_model())
    save(sc, root / "m.safetensors")
    export_onnx(sc, root / "m.onnx", exporter="torchscript")
    make_lesions(root / "data", n=images, size=96, seed=0, splits=(0.5, 0.25, 0.25), workers=1)
    return {"model": root / "m.safetensors", "onnx": root / "m.onnx", "data": root / "data"}


def _argv(job: str, paths: dict[str, Path], out: Path) -> list[str]:
    if job == "predict-onnx":
        return ["predict", str(paths["onnx"]), str(paths["data"] / "test"), "--json"]
    if job == "evaluate":
        return ["evaluate", str(paths["model"]), str(paths["data"]), "-o", str(out), "--force", "--json"]
    return [
        "finetune",
        str(paths["model"]),
        str(paths["data"]),
        "-o",
        str(out),
        "--epochs",
        "1",
        "--workers",
        "1",
        "--force",
        "--json",
    ]


def _time(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "softcamify", *argv], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"softcamify {' '.join(argv[:1])} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", nargs="+", default=list(JOBS), choices=JOBS)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--hogs", type=int, default=os.cpu_count() or 2, help="CPU-bound processes beside the job")
    p.add_argument(
        "--hog",
        choices=("python", "torch"),
        default="torch",
        help="what they run: pure Python (one core each) or torch (its own thread pool each)",
    )
    p.add_argument("--images", type=int, default=192, help="synthetic images (half for training)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = _prepare(root, args.images)
        base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "OMP_NUM_THREADS")}
        for job in args.jobs:
            cmd = _argv(job, paths, root / f"out-{job}")
            _time(cmd, base)  # warm the file cache and Python's bytecode once
            for name in args.settings:
                env = {**base, **SETTINGS[name]}
                alone = _time(cmd, env)
                ctx = mp.get_context("spawn")  # fresh processes: a forked torch (OpenMP started) may hang
                stop = ctx.Event()
                hogs = [ctx.Process(target=_hog, args=(stop, args.hog), daemon=True) for _ in range(args.hogs)]
                for h in hogs:
                    h.start()
                try:
                    time.sleep(3.0)  # the hogs are running (a spawned torch process takes a moment to start)
                    busy = _time(cmd, env)
                finally:
                    stop.set()
                    for h in hogs:
                        h.join(5)
                row = {
                    "job": job,
                    "setting": name,
                    "alone_s": round(alone, 2),
                    "busy_s": round(busy, 2),
                    "ratio": round(busy / alone, 2),
                    "hogs": args.hogs,
                    "cpus": os.cpu_count(),
                }
                rows.append(row)
                print(
                    json.dumps(row)
                    if args.json
                    else f"{job:14s} {name:11s} alone {alone:6.2f} s   beside {args.hogs} {args.hog} hogs "
                    f"{busy:6.2f} s   ratio {busy / alone:5.2f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
