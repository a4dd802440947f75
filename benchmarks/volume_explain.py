"""Volume explanations: SoftCAM's all-class evidence volumes vs MONAI's GradCAM and CAM, measured in one run.

The same 3D network (MONAI ``DenseNet121(spatial_dims=3)`` by default, random weights: speed does not
depend on them), the same batch of volumes, the same device and process, rounds interleaved (each starting
with another method) so that load changes on a shared machine hit every method alike:

* **SoftCAM, all K classes**: the converted model's one forward pass (``forward_maps`` in inference mode)
  returns the logits and the K evidence volumes, here also upsampled (trilinear) to the input's D×H×W, as
  MONAI's methods return them.
* **MONAI GradCAM, one class** (``monai.visualize.GradCAM``, hooked on the last feature map,
  ``class_layers.relu`` for DenseNet, ``layer4`` for ResNet): a forward and a backward pass per call, one
  class per call; **all K classes**: K calls.
* **MONAI CAM, one class** (``monai.visualize.CAM`` with the classifier as ``fc_layers``: the classifier
  applied position by position in a Python loop), and **all K classes**: K calls.

Peak memory: every method is run once more in a fresh child process, after the network is built (large
blocks mmapped, so freed memory leaves the resident set), and the growth of the process's peak resident
memory (VmHWM, reset through ``/proc/self/clear_refs`` where Linux allows it; ``ru_maxrss`` otherwise) is
reported; on CUDA ``torch.cuda.max_memory_allocated``.

Reports volumes/s (the best round by default; ``--stat median``), peak memory and the ratios. Usage::

    python benchmarks/volume_explain.py --net densenet121 --classes 4 --batch 2 --size 64 --device cpu
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

METHODS = ("softcam_all", "gradcam_one", "gradcam_all", "cam_one", "cam_all")
LABELS = {
    "softcam_all": "SoftCAM evidence, all {k} classes (1 forward)",
    "gradcam_one": "MONAI GradCAM, 1 class (fwd + bwd)",
    "gradcam_all": "MONAI GradCAM, all {k} classes ({k} calls)",
    "cam_one": "MONAI CAM, 1 class",
    "cam_all": "MONAI CAM, all {k} classes ({k} calls)",
}
# the layers MONAI's docs name for its networks: the last feature map and the classifier
NETS = {
    "densenet121": ("DenseNet121", {"in_channels": 1}, "out_channels", "class_layers.relu", "class_layers.out"),
    "resnet18": ("resnet18", {"n_input_channels": 1}, "num_classes", "layer4", "fc"),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _build(args: argparse.Namespace, device: torch.device, convert: bool = True) -> dict[str, Callable[[], None]]:
    """The network, its SoftCAM conversion (unless ``convert`` is False) and one callable per method (each
    explains the whole batch)."""
    import torch.nn.functional as F
    from monai.visualize import CAM, GradCAM

    import softcamify
    from softcamify.sources import build

    name, extra, _, target_layer, fc_layer = NETS[args.net]
    torch.manual_seed(0)
    k, n, s = args.classes, args.batch, args.size
    net = build("monai", name, k, {"spatial_dims": 3, **extra}).eval()
    softcam = softcamify.convert(net, input_size=(s, s, s), samples=2).to(device).eval() if convert else None
    net = net.to(device)
    x = torch.randn(n, 1, s, s, s, device=device)
    gradcam = GradCAM(nn_module=net, target_layers=target_layer)
    cam = CAM(nn_module=net, target_layers=target_layer, fc_layers=fc_layer)

    def softcam_all() -> None:
        assert softcam is not None
        with torch.inference_mode():
            _, maps = softcam.forward_maps(x)
            volumes = F.interpolate(maps, size=(s, s, s), mode="trilinear", align_corners=False)
        assert volumes.shape == (n, k, s, s, s)

    def gradcam_one(c: int = 0) -> None:
        out = gradcam(x, class_idx=c)
        assert out.shape == (n, 1, s, s, s)

    def cam_one(c: int = 0) -> None:
        out = cam(x, class_idx=torch.full((n,), c, dtype=torch.long))
        assert out.shape == (n, 1, s, s, s)

    return {
        "softcam_all": softcam_all,
        "gradcam_one": gradcam_one,
        "gradcam_all": lambda: [gradcam_one(c) for c in range(k)] and None,
        "cam_one": cam_one,
        "cam_all": lambda: [cam_one(c) for c in range(k)] and None,
    }


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _measure_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Child mode: build everything, run ``args.measure`` once, return its peak memory growth in MiB."""
    device = torch.device(args.device)
    fns = _build(args, device, convert=args.measure == "softcam_all")
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fns[args.measure]()
        torch.cuda.synchronize(device)
        return {"peak_mib": (torch.cuda.max_memory_allocated(device) - base) / 2**20, "how": "cuda"}
    reset = False
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM (the peak resident set) to the current resident set
        reset = True
    except OSError:
        pass
    before = _status_kb("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fns[args.measure]()
    after = _status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": max(0, (after or 0) - (before or 0)) / 1024, "how": "VmHWM" if reset else "ru_maxrss"}


def _memory_in_child(args: argparse.Namespace, method: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, *sys.argv[1:], "--measure", method]
    cmd = [c for c in cmd if c != "--json"] + ["--json"]
    # large blocks always mmapped and unmapped when freed: the resident set follows what is live, so the
    # conversion's buffers freed before the measurement do not hide the method's own peak
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", choices=sorted(NETS), default="densenet121", help="MONAI network, spatial_dims=3")
    ap.add_argument("--classes", type=int, default=4, help="number of classes K")
    ap.add_argument("--batch", type=int, default=2, help="volumes per call")
    ap.add_argument("--size", type=int, default=64, help="volume side (D = H = W)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds")
    ap.add_argument("--stat", choices=("min", "median"), default="min")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--measure", choices=METHODS, help=argparse.SUPPRESS)  # child mode: one method's memory
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure:
        print(json.dumps(_measure_memory(args)))
        return 0

    device = torch.device(args.device)
    fns = _build(args, device)
    for fn in fns.values():  # warm-up (allocator, kernels, hooks)
        if fn is not fns["gradcam_all"] and fn is not fns["cam_all"]:
            fn()
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for r in range(args.rounds):
        for i in range(len(METHODS)):  # each round starts with another method: no method always runs first
            m = METHODS[(r + i) % len(METHODS)]
            times[m].append(_timed(fns[m], device))
    pick = min if args.stat == "min" else statistics.median
    n, k = args.batch, args.classes
    vps = {m: n / pick(v) for m, v in times.items()}
    ratios = {f"softcam_all_vs_{m}": vps["softcam_all"] / vps[m] for m in METHODS[1:]}
    memory = {} if args.no_memory else {m: _memory_in_child(args, m) for m in METHODS}
    result = {
        "net": f"monai {NETS[args.net][0]} (spatial_dims=3)",
        "classes": k,
        "batch": n,
        "size": [args.size] * 3,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "stat": args.stat,
        "volumes_per_s": vps,
        "ratios": ratios,
        "peak_memory_mib": {m: round(v["peak_mib"], 1) for m, v in memory.items()},
        "memory_measured_by": next(iter(memory.values()))["how"] if memory else None,
        "seconds": times,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{result['net']}, K={k} classes, batch {n}, {args.size}³ volumes, {device}, "
        f"{torch.get_num_threads()} threads, {args.stat} of {args.rounds} rounds (interleaved)"
    )
    for m in METHODS:
        mem = f"   peak +{memory[m]['peak_mib']:8.1f} MiB" if memory else ""
        print(f"  {LABELS[m].format(k=k):48s} {vps[m]:8.3f} volumes/s{mem}")
    for m in METHODS[1:]:
        print(f"  ratio SoftCAM all / {m:12s} {ratios[f'softcam_all_vs_{m}']:7.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
